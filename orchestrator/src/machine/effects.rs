//! What the machine asks the shell to do, and what it tells it about an input.

use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_wire::CommandKind;
use serde_json::Value;
use uuid::Uuid;

use super::state::SagaState;

/// An input the machine understands. The shell turns HTTP requests, AMQP messages and due timers
/// into these.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start {
        actor: String,
    },
    Reply {
        command_id: Uuid,
        outcome: Outcome,
    },
    /// A reply for a known command that could not be used (dead-lettered by the shell).
    MalformedReply {
        command_id: Uuid,
        reason: String,
    },
    AttemptTimedOut {
        command_id: Uuid,
    },
    BackoffElapsed {
        step: usize,
    },
    AwaitLapsed {
        step: usize,
    },
    DeadlinePassed,
    Signal {
        event: String,
        payload: Value,
        actor: String,
    },
    Cancel {
        actor: String,
        reason: Option<String>,
    },
    Retry {
        actor: String,
        reason: Option<String>,
    },
    Skip {
        actor: String,
        reason: String,
    },
    Terminate {
        actor: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok(Value),
    Error(saga_wire::StepError),
}

/// A timer the machine arms or disarms. Attempt timers are armed by the outbox relay when it
/// publishes the command (an attempt's clock starts at publish); the machine only disarms them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer {
    Attempt { command_id: Uuid },
    Backoff { step: usize },
    AwaitDeadline { step: usize },
    SagaDeadline,
}

/// A command to publish through the outbox. Its `deadline` is set when it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub command_id: Uuid,
    pub step: usize,
    pub step_name: String,
    pub task: String,
    pub kind: CommandKind,
    pub attempt: u32,
    pub idempotency_key: String,
    pub compensates: Option<String>,
    pub timeout: Duration,
    pub input: Value,
    pub results: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Dispatch(Dispatch),
    Schedule {
        timer: Timer,
        at: DateTime<Utc>,
    },
    Cancel(Timer),
    /// Disarm every timer of the saga (it ended).
    CancelAll,
    /// Publish the saga's status to `saga.lifecycle` (it entered `state`).
    Lifecycle(SagaState),
}

/// One history entry, as PROTOCOL.md §2 describes it (`seq` and `at` are set by the machine).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: &'static str,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    pub command_id: Option<Uuid>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub data: Value,
}

/// What became of an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It changed the saga (or was recorded and kept, like an early signal).
    Accepted,
    /// It was recorded and changed nothing (a late or duplicate reply, a stale timer).
    Ignored,
    /// It was refused; `reason` says why in words. Refused signals are still recorded.
    Refused { reason: String },
}
