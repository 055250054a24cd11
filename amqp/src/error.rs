//! A broker operation that failed.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use thiserror::Error;

/// A broker operation that failed, named by what it was doing ("declaring the queue X").
/// Callers wrap it in their own error with `#[from]`.
#[derive(Debug, Error)]
pub enum AmqpError {
    #[error("RabbitMQ refused {what}: {source}")]
    Amqp {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ did not answer {0} in time")]
    Timeout(String),
}

impl AmqpError {
    /// Whether the broker refused the operation (a soft error: it closes the channel, the
    /// connection stays up), as opposed to the connection failing or not answering. A refusal
    /// comes again on a retry: someone must act.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AmqpError::Amqp { source, .. } if source.is_amqp_soft_error())
    }

    /// Whether the broker answered 404 NOT_FOUND: what was named (a queue, in a passive declare)
    /// does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            AmqpError::Amqp { source, .. }
                if matches!(source.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        )
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPHardError};

    use super::*;

    fn refused(kind: AMQPErrorKind) -> AmqpError {
        AmqpError::Amqp {
            what: "checking that saga.task.t exists".into(),
            source: ErrorKind::ProtocolError(AMQPError::new(kind, "refused".into())).into(),
        }
    }

    #[test]
    fn a_missing_queue_is_a_refusal_and_not_found() {
        let e = refused(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND));
        assert!(e.is_refusal());
        assert!(e.is_not_found());
    }

    #[test]
    fn another_soft_error_is_a_refusal_but_not_not_found() {
        let e = refused(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED));
        assert!(e.is_refusal());
        assert!(!e.is_not_found());
    }

    #[test]
    fn a_broken_connection_or_a_timeout_is_no_refusal() {
        let hard = refused(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert!(!hard.is_refusal());
        assert!(!hard.is_not_found());
        let timeout = AmqpError::Timeout("connecting".into());
        assert!(!timeout.is_refusal());
        assert!(!timeout.is_not_found());
    }

    #[test]
    fn messages_name_the_operation() {
        assert_eq!(
            AmqpError::Timeout("connecting".into()).to_string(),
            "RabbitMQ did not answer connecting in time"
        );
        let e = refused(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND));
        assert!(
            e.to_string()
                .starts_with("RabbitMQ refused checking that saga.task.t exists: "),
            "{e}"
        );
    }
}
