//! The saga status of PROTOCOL.md §2, rendered from the machine's state. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::definition::{Action, Definition};
use crate::machine::{CommandFate, Failure, Saga, SagaState, StepState};
use saga_wire::StepError;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaStatus {
    pub id: Uuid,
    pub definition: String,
    pub version: i32,
    pub revision: i64,
    pub state: SagaState,
    pub input: Value,
    pub output: Option<Value>,
    pub failure: Option<Failure>,
    /// Absent in list items ("status without steps").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepStatus>>,
    pub stuck: bool,
    pub stuck_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStatus {
    pub name: String,
    pub group: Option<String>,
    pub state: StepState,
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What the status needs to know beyond the saga itself.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub now: DateTime<Utc>,
    pub stuck_after: Duration,
    /// Since when the saga has had a message in the outbox that was never published, if it has.
    pub unpublished_since: Option<DateTime<Utc>>,
    pub with_steps: bool,
}

pub fn render(saga: &Saga, def: &Definition, view: View) -> SagaStatus {
    let stuck_reason = stuck_reason(saga, def, &view);
    let steps = view.with_steps.then(|| {
        def.leaves()
            .zip(&saga.steps)
            .map(|(l, s)| StepStatus {
                name: l.leaf.name.clone(),
                group: l.group.map(str::to_owned),
                state: s.state,
                attempts: s.attempts,
                output: s.output.clone(),
                error: s.error.clone(),
                started_at: s.started_at,
                finished_at: s.finished_at,
            })
            .collect()
    });
    SagaStatus {
        id: saga.id,
        definition: saga.definition.clone(),
        version: saga.version,
        revision: saga.revision,
        state: saga.state,
        input: saga.input.clone(),
        output: saga.output.clone(),
        failure: saga.failure.clone(),
        steps,
        stuck: stuck_reason.is_some(),
        stuck_reason,
        created_at: saga.created_at,
        updated_at: saga.updated_at,
        deadline: saga.deadline,
    }
}

/// Why the saga is stuck, in words; None when it is not.
fn stuck_reason(saga: &Saga, def: &Definition, view: &View) -> Option<String> {
    let leaves: Vec<_> = def.leaves().collect();
    match saga.state {
        SagaState::Suspended => {
            let (i, s) = saga
                .steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.state == StepState::CompensationFailed)?;
            let why = s.error.as_ref().map_or_else(
                || "no reply".to_owned(),
                |e| format!("{}: {}", e.code, e.message),
            );
            Some(format!(
                "compensation of {} failed after {} attempts ({why}); an operator must retry, skip or terminate",
                leaves.get(i).map_or("?", |l| l.leaf.name.as_str()),
                s.comp_attempts,
            ))
        }
        SagaState::Running | SagaState::Compensating => {
            let wait_until = saga.wait_until?;
            let threshold = chrono::Duration::from_std(view.stuck_after).ok()?;
            if view.now <= wait_until.checked_add_signed(threshold)? {
                return None;
            }
            if let Some(since) = view.unpublished_since {
                return Some(format!(
                    "a command has waited in the outbox since {since} and could not be published (is RabbitMQ reachable?)"
                ));
            }
            let (i, s) = saga.steps.iter().enumerate().find(|(_, s)| {
                s.wait_until == Some(wait_until) || s.retry_at == Some(wait_until)
            })?;
            let name = leaves.get(i).map_or("?", |l| l.leaf.name.as_str());
            let reason = match (&leaves.get(i)?.leaf.action, s.out) {
                (Action::Await { event, .. }, _) => {
                    format!(
                        "waiting for the event {event} (step {name}); its deadline {wait_until} passed without a timeout firing"
                    )
                }
                (Action::Task(t), Some(out)) => {
                    let c = s
                        .commands
                        .iter()
                        .find(|c| c.id == out && c.fate == CommandFate::Out)?;
                    format!(
                        "command {} for {name} ({}, attempt {}) has had no reply and no timeout since its deadline {wait_until}",
                        t.task,
                        c.kind.as_str(),
                        c.attempt
                    )
                }
                (Action::Task(_), None) => {
                    format!(
                        "the retry of {name} due at {wait_until} has not run (is an orchestrator process running?)"
                    )
                }
            };
            Some(reason)
        }
        SagaState::Completed | SagaState::Compensated | SagaState::Terminated => None,
    }
}
