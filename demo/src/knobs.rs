//! What a saga's input can ask of the example workers, to show each path of the orchestrator.

use std::time::Duration;

use saga_worker::{Context, StepError};
use serde::Deserialize;

/// Optional members of a saga input (`"knobs": { ... }`); all absent = every step succeeds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// The step that fails for good (a non-retryable error).
    pub fail: Option<String>,
    /// The step that fails retryably on its first `flaky_attempts` attempts.
    pub flaky: Option<String>,
    #[serde(default = "one")]
    pub flaky_attempts: u32,
    /// The step whose worker never answers in time (it gives up after the deadline: a late reply).
    pub hang: Option<String>,
    /// The step whose compensation fails for good (the saga ends `suspended`).
    pub fail_compensation: Option<String>,
}

fn one() -> u32 {
    1
}

impl Knobs {
    /// What the knobs make of this command before the handler does its work: `Err` to fail it;
    /// for a hang, waits past the command's deadline first.
    pub async fn apply(&self, ctx: &Context, code: &str) -> Result<(), StepError> {
        let step = Some(ctx.step());
        if ctx.is_compensation() {
            if self.fail_compensation.as_deref() == step {
                return Err(StepError::permanent(
                    "compensation_refused",
                    format!("{} cannot be undone automatically", ctx.step()),
                ));
            }
            return Ok(());
        }
        if self.hang.as_deref() == step {
            // Answers only after the orchestrator stopped waiting: the reply is ignored as late,
            // and the attempt counts as timed out (an `ok` here would still count as success).
            tracing::info!("hanging past the deadline");
            tokio::time::sleep(ctx.time_left() + Duration::from_millis(200)).await;
            return Err(StepError::retryable(
                "gave_up",
                format!("{} hung past its deadline", ctx.step()),
            ));
        }
        if self.fail.as_deref() == step {
            return Err(StepError::permanent(
                code,
                format!("{} refused", ctx.step()),
            ));
        }
        if self.flaky.as_deref() == step && ctx.attempt() <= self.flaky_attempts {
            return Err(StepError::retryable(
                "service_unavailable",
                format!("{} is busy (attempt {})", ctx.step(), ctx.attempt()),
            ));
        }
        Ok(())
    }
}
