//! The messages of the orchestrator's RabbitMQ contract (PROTOCOL.md §3), as plain serde types.
//!
//! Shared by the orchestrator and the worker SDK so that neither can drift from the other, and
//! kept free of any I/O dependency so that a worker does not pull in sqlx or axum.
#![forbid(unsafe_code)]

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Exchange the orchestrator publishes commands to (direct, routing key = task name).
pub const COMMANDS_EXCHANGE: &str = "saga.commands";
/// Queue replies are published to, through the default exchange.
pub const REPLIES_QUEUE: &str = "saga.replies";
/// Dead-letter queue for replies the orchestrator cannot use.
pub const REPLIES_DLQ: &str = "saga.replies.dlq";
/// Queue of start messages.
pub const START_QUEUE: &str = "saga.start";
/// Dead-letter queue for start messages that cannot start a saga.
pub const START_DLQ: &str = "saga.start.dlq";
/// Topic exchange of external events (routing key = event name).
pub const EVENTS_EXCHANGE: &str = "saga.events";
/// The orchestrator's queue on `saga.events`, bound with `#`.
pub const EVENTS_INBOX: &str = "saga.events.inbox";
/// Dead-letter queue for events that are refused.
pub const EVENTS_DLQ: &str = "saga.events.dlq";
/// Topic exchange of lifecycle events (routing key = `{definition}.{state}`).
pub const LIFECYCLE_EXCHANGE: &str = "saga.lifecycle";
/// Header that carries the reason of a dead-lettered message.
pub const ERROR_HEADER: &str = "x-saga-error";

/// The queue that holds the commands of task (or compensation) `task`.
pub fn task_queue(task: &str) -> String {
    format!("saga.task.{task}")
}

/// Whether a command asks to do a step or to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Do,
    Compensate,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Do => "do",
            CommandKind::Compensate => "compensate",
        }
    }
}

/// A command, orchestrator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: Uuid,
    pub saga_id: Uuid,
    pub step: String,
    pub task: String,
    pub kind: CommandKind,
    pub attempt: u32,
    pub idempotency_key: String,
    pub compensates: Option<String>,
    /// When the orchestrator stops waiting for the reply: publish time plus the step's timeout.
    pub deadline: DateTime<Utc>,
    pub input: Value,
    pub results: Value,
}

/// The error a worker reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

impl StepError {
    /// An error that retrying cannot fix: the step ends at once (a compensation suspends the saga).
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// An error worth another attempt, under the step's retry policy.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "{} ({kind}): {}", self.code, self.message)
    }
}

impl std::error::Error for StepError {}

/// A reply, worker → orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReplyBody {
    Ok {
        #[serde(default)]
        output: Value,
    },
    Error {
        error: StepError,
    },
}

/// A reply with the command it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub command_id: Uuid,
    #[serde(flatten)]
    pub body: ReplyBody,
}

impl Reply {
    pub fn ok(command_id: Uuid, output: Value) -> Self {
        Reply {
            command_id,
            body: ReplyBody::Ok { output },
        }
    }

    pub fn error(command_id: Uuid, error: StepError) -> Self {
        Reply {
            command_id,
            body: ReplyBody::Error { error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_parse_as_the_protocol_writes_them() {
        let id = Uuid::nil();
        let ok: Reply =
            serde_json::from_value(json!({"command_id": id, "status": "ok"})).expect("ok reply");
        assert_eq!(ok, Reply::ok(id, Value::Null));
        let err: Reply = serde_json::from_value(json!({
            "command_id": id, "status": "error", "error": {"code": "c", "message": "m"}
        }))
        .expect("error reply");
        assert_eq!(
            err,
            Reply::error(
                id,
                StepError {
                    code: "c".into(),
                    message: "m".into(),
                    retryable: false
                }
            )
        );
        let round = serde_json::to_value(&err).expect("serialise");
        assert_eq!(round["status"], "error");
        assert_eq!(round["error"]["retryable"], false);
    }

    #[test]
    fn replies_that_break_the_shape_are_refused() {
        for bad in [
            json!({"status": "ok"}),
            json!({"command_id": Uuid::nil(), "status": "maybe"}),
            json!({"command_id": Uuid::nil(), "status": "error"}),
            json!({"command_id": "nope", "status": "ok"}),
        ] {
            assert!(
                serde_json::from_value::<Reply>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
