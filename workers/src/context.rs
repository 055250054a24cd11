//! What a handler knows about the command it serves, besides its typed input.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_wire::{Command, CommandKind, StepError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

/// The command a handler is serving: which saga, step and attempt, its idempotency key, the
/// outputs of earlier steps. Cheap to clone (shared).
///
/// Built by the worker for each command; [`Context::new`] builds one from a [`Command`] for tests
/// of a handler.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    command: Command,
    redelivered: bool,
}

impl Context {
    /// A context for `command`, as if it were delivered for the first time. Meant for unit tests
    /// of handlers; the worker builds its own.
    pub fn new(command: Command) -> Context {
        Context::delivered(command, false)
    }

    pub(crate) fn delivered(command: Command, redelivered: bool) -> Context {
        Context {
            inner: Arc::new(Inner {
                command,
                redelivered,
            }),
        }
    }

    /// The whole command, as it came.
    pub fn command(&self) -> &Command {
        &self.inner.command
    }

    pub fn saga_id(&self) -> Uuid {
        self.inner.command.saga_id
    }

    /// This command's id (each attempt has its own).
    pub fn command_id(&self) -> Uuid {
        self.inner.command.command_id
    }

    /// The step's name in the saga's definition (`reserve_inventory`).
    pub fn step(&self) -> &str {
        &self.inner.command.step
    }

    /// The task (or compensation) name the command was sent for (`inventory.reserve`).
    pub fn task(&self) -> &str {
        &self.inner.command.task
    }

    pub fn kind(&self) -> CommandKind {
        self.inner.command.kind
    }

    /// Whether this command undoes a step (`kind: compensate`).
    pub fn is_compensation(&self) -> bool {
        self.inner.command.kind == CommandKind::Compensate
    }

    /// The attempt's number, from 1 for each step and kind.
    pub fn attempt(&self) -> u32 {
        self.inner.command.attempt
    }

    /// The same for every attempt of this saga, step and kind: a side effect already done under
    /// this key must not be repeated (see [`crate::idempotency`]).
    pub fn idempotency_key(&self) -> &str {
        &self.inner.command.idempotency_key
    }

    /// On a compensation, the idempotency key of the `do` it undoes — the handle on what to undo
    /// even when the orchestrator never heard the `do`'s reply. `None` on a `do`.
    pub fn compensates(&self) -> Option<&str> {
        self.inner.command.compensates.as_deref()
    }

    /// When the orchestrator stops waiting for this attempt's reply.
    pub fn deadline(&self) -> DateTime<Utc> {
        self.inner.command.deadline
    }

    /// Time left until [`Context::deadline`] by this machine's clock (zero once it has passed).
    /// A reply after the deadline is ignored: the attempt counts as timed out.
    pub fn time_left(&self) -> Duration {
        (self.inner.command.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the broker delivered this command before (to this or another worker) without it
    /// being acknowledged: its side effect may already be done.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The saga's input, untyped (the handler's typed input is parsed from it).
    pub fn input(&self) -> &Value {
        &self.inner.command.input
    }

    /// The outputs of the steps that succeeded so far, `{ step name: output }`; on a compensation
    /// it includes the step's own output when there is one.
    pub fn results(&self) -> &Value {
        &self.inner.command.results
    }

    /// The output of the earlier step `step`, parsed. An error (not retryable: the saga's data
    /// will not change) when the step has no output or it does not parse as `T`.
    pub fn result<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        self.maybe_result(step)?.ok_or_else(|| {
            StepError::permanent(
                "missing_result",
                format!("the command carries no result of step `{step}`"),
            )
        })
    }

    /// Like [`Context::result`], but `None` when the step has no output (for instance a
    /// compensation of a step whose attempt timed out).
    pub fn maybe_result<T: DeserializeOwned>(&self, step: &str) -> Result<Option<T>, StepError> {
        match self.results().get(step) {
            None => Ok(None),
            Some(value) => serde_path_to_error::deserialize(value)
                .map(Some)
                .map_err(|e| {
                    StepError::permanent(
                        "invalid_result",
                        format!("the result of step `{step}` does not parse: {e}"),
                    )
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn command(results: Value) -> Command {
        Command {
            command_id: Uuid::nil(),
            saga_id: Uuid::nil(),
            step: "release".into(),
            task: "inventory.release".into(),
            kind: CommandKind::Compensate,
            attempt: 2,
            idempotency_key: "k/release/compensate".into(),
            compensates: Some("k/release/do".into()),
            deadline: Utc::now() + chrono::Duration::seconds(30),
            input: json!({}),
            results,
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Reservation {
        id: u32,
    }

    #[test]
    fn results_parse_or_say_why_not() {
        let ctx = Context::new(command(json!({
            "reserve": { "id": 7 },
            "broken": { "id": "seven" },
        })));
        assert!(ctx.is_compensation());
        assert_eq!(ctx.compensates(), Some("k/release/do"));
        assert!(ctx.time_left() > Duration::from_secs(20));
        assert_eq!(
            ctx.result::<Reservation>("reserve"),
            Ok(Reservation { id: 7 })
        );
        assert_eq!(ctx.maybe_result::<Reservation>("nothing"), Ok(None));
        let missing = ctx.result::<Reservation>("nothing").expect_err("missing");
        assert_eq!(
            (missing.code.as_str(), missing.retryable),
            ("missing_result", false)
        );
        let broken = ctx.result::<Reservation>("broken").expect_err("broken");
        assert_eq!(broken.code, "invalid_result");
        assert!(broken.message.contains("id"), "{}", broken.message);
    }
}
