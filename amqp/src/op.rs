//! Broker operations under a deadline: one operation, a publisher confirm, the channels and
//! consumers both sides open the same way.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer, PublisherConfirm};
use tokio::time::Instant;

use crate::AmqpError;

/// How long one broker operation (connect, open a channel, declare, publish, ack) may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publisher confirm may take.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a broker operation with [`OP_TIMEOUT`], naming it in the error.
pub async fn timed<T>(
    what: impl Into<String>,
    op: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, AmqpError> {
    let Ok(done) = tokio::time::timeout(OP_TIMEOUT, op).await else {
        return Err(AmqpError::Timeout(what.into()));
    };
    done.map_err(|source| AmqpError::Amqp {
        what: what.into(),
        source,
    })
}

/// Waits [`CONFIRM_TIMEOUT`] for the broker's confirm of the publish `what`. What the
/// confirmation means (routed, returned unroutable, nacked) is the caller's to decide.
pub async fn confirmed(
    what: impl Into<String>,
    confirm: PublisherConfirm,
) -> Result<Confirmation, AmqpError> {
    confirmed_by(Instant::now() + CONFIRM_TIMEOUT, what, confirm).await
}

/// [`confirmed`] with a deadline of the caller's: one for a whole batch of pipelined publishes.
/// A timeout is [`AmqpError::Timeout`] of "the confirm of `what`".
pub async fn confirmed_by(
    deadline: Instant,
    what: impl Into<String>,
    confirm: PublisherConfirm,
) -> Result<Confirmation, AmqpError> {
    let Ok(confirmation) = tokio::time::timeout_at(deadline, confirm).await else {
        let what = what.into();
        return Err(AmqpError::Timeout(format!("the confirm of {what}")));
    };
    confirmation.map_err(|source| AmqpError::Amqp {
        what: what.into(),
        source,
    })
}

/// Publishes `payload` straight to `queue` (through the default exchange, `mandatory`: the broker
/// returns it with the confirm when the queue does not exist), then waits for the confirm.
/// `what` names the publish in errors; the confirmation is the caller's to judge.
pub async fn publish_to_queue(
    ch: &Channel,
    what: &str,
    queue: ShortString,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<Confirmation, AmqpError> {
    let confirm = timed(
        what,
        ch.basic_publish(
            "".into(),
            queue,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties,
        ),
    )
    .await?;
    confirmed(what, confirm).await
}

/// Opens a channel with publisher confirms on.
pub async fn confirming_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "enabling publisher confirms",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(ch)
}

/// Consumes `queue` on `ch` with manual acknowledgements and at most `prefetch` deliveries
/// unacknowledged.
pub async fn consume(ch: &Channel, queue: &str, prefetch: u16) -> Result<Consumer, AmqpError> {
    timed(
        format!("setting the prefetch of {queue}"),
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    timed(
        format!("consuming {queue}"),
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}
