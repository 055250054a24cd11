//! The saga status of PROTOCOL.md §2, rendered from the machine's state. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::definition::{Action, Definition, TaskSpec};
use crate::machine::{CommandFate, Failure, Saga, SagaState, StepState};
use saga_wire::{CommandKind, StepError, task_queue};

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
    /// The broker's view of the task queue named by [`stuck_task`], when it was asked.
    pub queue: Option<QueueState>,
    pub with_steps: bool,
}

/// A task queue as the broker sees it (a passive declare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    Present { messages: u32, consumers: u32 },
    Missing,
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

/// Why a saga is stuck: what it waits for, in the terms the reason is written in.
#[derive(Debug, Clone, PartialEq)]
enum Diagnosis<'a> {
    /// A compensation failed for good.
    CompensationFailed {
        step: &'a str,
        task: Option<&'a str>,
        attempts: u32,
        error: Option<&'a StepError>,
    },
    /// A command was never handed to the broker.
    Unpublished { since: DateTime<Utc> },
    AwaitOverdue {
        step: &'a str,
        event: &'a str,
        until: DateTime<Utc>,
    },
    CommandOverdue {
        step: &'a str,
        task: &'a str,
        kind: CommandKind,
        attempt: u32,
        until: DateTime<Utc>,
    },
    RetryOverdue {
        step: &'a str,
        task: &'a str,
        until: DateTime<Utc>,
    },
}

impl<'a> Diagnosis<'a> {
    /// The task whose queue the saga waits on, if it waits on one.
    fn task(&self) -> Option<&'a str> {
        match self {
            // The worker answered: its queue is not the question.
            Diagnosis::CompensationFailed { error: Some(_), .. } => None,
            Diagnosis::CompensationFailed { task, .. } => *task,
            Diagnosis::CommandOverdue { task, .. } | Diagnosis::RetryOverdue { task, .. } => {
                Some(task)
            }
            Diagnosis::Unpublished { .. } | Diagnosis::AwaitOverdue { .. } => None,
        }
    }

    fn describe(&self, queue: Option<QueueState>) -> String {
        let reason = match self {
            Diagnosis::CompensationFailed {
                step,
                attempts,
                error,
                ..
            } => {
                let why = error.map_or_else(
                    || "no reply".to_owned(),
                    |e| format!("{}: {}", e.code, e.message),
                );
                format!(
                    "compensation of {step} failed after {} ({why}); an operator must retry, skip or terminate",
                    count(*attempts, "attempt")
                )
            }
            Diagnosis::Unpublished { since } => format!(
                "a command has waited in the outbox since {since} and could not be published (is RabbitMQ reachable?)"
            ),
            Diagnosis::AwaitOverdue { step, event, until } => format!(
                "waiting for the event {event} (step {step}); its deadline {until} passed without a timeout firing"
            ),
            Diagnosis::CommandOverdue {
                step,
                task,
                kind,
                attempt,
                until,
            } => format!(
                "command {task} for {step} ({}, attempt {attempt}) has had no reply and no timeout since its deadline {until}",
                kind.as_str()
            ),
            Diagnosis::RetryOverdue { step, until, .. } => format!(
                "the retry of {step} due at {until} has not run (is an orchestrator process running?)"
            ),
        };
        match (self.task(), queue) {
            (Some(task), Some(q)) => format!("{reason}; {}", describe_queue(task, q)),
            _ => reason,
        }
    }
}

/// What the broker says of a task's queue, in words.
fn describe_queue(task: &str, queue: QueueState) -> String {
    let name = task_queue(task);
    match queue {
        QueueState::Missing => format!("queue {name} does not exist"),
        QueueState::Present {
            messages,
            consumers: 0,
        } => format!(
            "queue {name} has no consumer ({} waiting)",
            count(messages, "message")
        ),
        QueueState::Present {
            messages,
            consumers,
        } => format!(
            "queue {name} has {} and {} waiting",
            count(consumers, "consumer"),
            count(messages, "message")
        ),
    }
}

/// `1 attempt`, `2 attempts`.
fn count(n: u32, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// The task whose queue a stuck saga waits on: the shell asks the broker about that queue and
/// hands the answer back in [`View::queue`]. None when the saga is not stuck or waits on no queue.
pub fn stuck_task<'a>(saga: &'a Saga, def: &'a Definition, view: &View) -> Option<&'a str> {
    diagnose(saga, def, view)?.task()
}

fn stuck_reason(saga: &Saga, def: &Definition, view: &View) -> Option<String> {
    diagnose(saga, def, view).map(|d| d.describe(view.queue))
}

/// Why the saga is stuck; None when it is not.
fn diagnose<'a>(saga: &'a Saga, def: &'a Definition, view: &View) -> Option<Diagnosis<'a>> {
    let leaves: Vec<_> = def.leaves().collect();
    let spec = |i: usize| {
        leaves
            .get(i)
            .map(|l| (l.leaf.name.as_str(), &l.leaf.action))
    };
    match saga.state {
        SagaState::Suspended => {
            let (i, s) = saga
                .steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.state == StepState::CompensationFailed)?;
            let (step, action) = spec(i)?;
            let task = match action {
                Action::Task(t) => t.compensate.as_deref(),
                Action::Await { .. } => None,
            };
            Some(Diagnosis::CompensationFailed {
                step,
                task,
                attempts: s.comp_attempts,
                error: s.error.as_ref(),
            })
        }
        SagaState::Running | SagaState::Compensating => {
            let until = saga.wait_until?;
            let threshold = chrono::Duration::from_std(view.stuck_after).ok()?;
            if view.now <= until.checked_add_signed(threshold)? {
                return None;
            }
            if let Some(since) = view.unpublished_since {
                return Some(Diagnosis::Unpublished { since });
            }
            let (i, s) = saga
                .steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.wait_until == Some(until) || s.retry_at == Some(until))?;
            let (step, action) = spec(i)?;
            let task_of = |t: &'a TaskSpec, kind: CommandKind| match kind {
                CommandKind::Do => Some(t.task.as_str()),
                CommandKind::Compensate => t.compensate.as_deref(),
            };
            match (action, s.out) {
                (Action::Await { event, .. }, _) => {
                    Some(Diagnosis::AwaitOverdue { step, event, until })
                }
                (Action::Task(t), Some(out)) => {
                    let c = s
                        .commands
                        .iter()
                        .find(|c| c.id == out && c.fate == CommandFate::Out)?;
                    Some(Diagnosis::CommandOverdue {
                        step,
                        task: task_of(t, c.kind)?,
                        kind: c.kind,
                        attempt: c.attempt,
                        until,
                    })
                }
                (Action::Task(t), None) => {
                    let kind = match s.state {
                        StepState::Compensating => CommandKind::Compensate,
                        _ => CommandKind::Do,
                    };
                    Some(Diagnosis::RetryOverdue {
                        step,
                        task: task_of(t, kind)?,
                        until,
                    })
                }
            }
        }
        SagaState::Completed | SagaState::Compensated | SagaState::Terminated => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use saga_wire::CommandKind;
    use serde_json::json;

    use super::*;
    use crate::machine::Timer;
    use crate::machine::tests::{Driver, await_step, saga_of, task, with_attempts};

    const STUCK_AFTER: Duration = Duration::from_secs(300);

    fn view(d: &Driver, queue: Option<QueueState>) -> View {
        View {
            now: d.now,
            stuck_after: STUCK_AFTER,
            unpublished_since: None,
            queue,
            with_steps: false,
        }
    }

    fn reason(d: &Driver, queue: Option<QueueState>) -> Option<String> {
        render(&d.saga, &d.def, view(d, queue)).stuck_reason
    }

    /// Past the current wait by more than the stuck threshold, without any timer firing.
    fn overdue(d: &mut Driver) {
        let until = d.saga.wait_until.expect("the saga waits");
        d.now = until + chrono::Duration::from_std(STUCK_AFTER).expect("short");
        d.tick(Duration::from_secs(1));
    }

    const NO_CONSUMER: QueueState = QueueState::Present {
        messages: 3,
        consumers: 0,
    };

    /// A saga of `reserve` (one attempt each way) then `charge`, which fails: `reserve`'s
    /// compensation is out.
    fn compensating() -> Driver {
        let mut d = Driver::new(saga_of(vec![
            with_attempts(task("reserve", true), 1, 1),
            task("charge", false),
        ]));
        let reserve = d.out("reserve");
        d.ok(reserve, json!({}));
        let charge = d.out("charge");
        d.fail(charge, "card_declined", false);
        d
    }

    #[test]
    fn a_compensation_refused_by_its_worker_says_why_and_not_the_queue() {
        let mut d = compensating();
        let undo = d.out("reserve");
        d.fail(undo, "warehouse_down", false);
        assert_eq!(d.saga.state, SagaState::Suspended);
        assert_eq!(stuck_task(&d.saga, &d.def, &view(&d, None)), None);
        let expected = "compensation of reserve failed after 1 attempt (warehouse_down: warehouse_down happened); an operator must retry, skip or terminate";
        assert_eq!(reason(&d, None).as_deref(), Some(expected));
        assert_eq!(reason(&d, Some(NO_CONSUMER)).as_deref(), Some(expected));
    }

    #[test]
    fn a_compensation_nobody_answered_names_its_queue() {
        let mut d = compensating();
        let undo = d.out("reserve");
        d.fire(&Timer::Attempt { command_id: undo });
        assert_eq!(d.saga.state, SagaState::Suspended);
        assert_eq!(
            stuck_task(&d.saga, &d.def, &view(&d, None)),
            Some("reserve.undo")
        );
        assert_eq!(
            reason(&d, None).as_deref(),
            Some(
                "compensation of reserve failed after 1 attempt (no reply); an operator must retry, skip or terminate"
            )
        );
        let with_queue = reason(&d, Some(NO_CONSUMER)).expect("stuck");
        assert!(
            with_queue
                .ends_with("; queue saga.task.reserve.undo has no consumer (3 messages waiting)"),
            "{with_queue}"
        );
        let missing = reason(&d, Some(QueueState::Missing)).expect("stuck");
        assert!(
            missing.ends_with("; queue saga.task.reserve.undo does not exist"),
            "{missing}"
        );
        let one = reason(
            &d,
            Some(QueueState::Present {
                messages: 1,
                consumers: 1,
            }),
        )
        .expect("stuck");
        assert!(
            one.ends_with("has 1 consumer and 1 message waiting"),
            "{one}"
        );
    }

    #[test]
    fn a_command_without_reply_past_its_deadline_names_the_task_queue() {
        let mut d = Driver::new(saga_of(vec![task("reserve", true)]));
        assert_eq!(reason(&d, Some(NO_CONSUMER)), None, "within its deadline");
        assert_eq!(stuck_task(&d.saga, &d.def, &view(&d, None)), None);
        overdue(&mut d);
        assert_eq!(
            stuck_task(&d.saga, &d.def, &view(&d, None)),
            Some("reserve.do")
        );
        let r = reason(
            &d,
            Some(QueueState::Present {
                messages: 0,
                consumers: 2,
            }),
        )
        .expect("stuck");
        assert!(
            r.starts_with("command reserve.do for reserve (do, attempt 1) has had no reply and no timeout since its deadline"),
            "{r}"
        );
        assert!(
            r.ends_with("; queue saga.task.reserve.do has 2 consumers and 0 messages waiting"),
            "{r}"
        );
    }

    #[test]
    fn an_overdue_compensation_command_names_the_compensation_queue() {
        let mut d = Driver::new(saga_of(vec![task("reserve", true), task("charge", false)]));
        let reserve = d.out("reserve");
        d.ok(reserve, json!({}));
        let charge = d.out("charge");
        d.fail(charge, "card_declined", false);
        assert_eq!(d.saga.state, SagaState::Compensating);
        overdue(&mut d);
        assert_eq!(
            stuck_task(&d.saga, &d.def, &view(&d, None)),
            Some("reserve.undo")
        );
        let r = reason(&d, None).expect("stuck");
        assert!(
            r.starts_with("command reserve.undo for reserve (compensate, attempt 1)"),
            "{r}"
        );
        assert_eq!(
            d.command("reserve", CommandKind::Compensate, 1).task,
            "reserve.undo"
        );
    }

    #[test]
    fn an_overdue_retry_and_an_overdue_await_say_so() {
        let mut d = Driver::new(saga_of(vec![task("reserve", true)]));
        let first = d.out("reserve");
        d.fail(first, "busy", true);
        assert!(d.saga.steps[0].retry_at.is_some());
        overdue(&mut d);
        let r = reason(&d, Some(NO_CONSUMER)).expect("stuck");
        assert!(r.starts_with("the retry of reserve due at"), "{r}");
        assert!(
            r.contains("queue saga.task.reserve.do has no consumer"),
            "{r}"
        );

        let mut d = Driver::new(saga_of(vec![await_step("signed", "buyer_signed")]));
        overdue(&mut d);
        assert_eq!(stuck_task(&d.saga, &d.def, &view(&d, None)), None);
        let r = reason(&d, Some(NO_CONSUMER)).expect("stuck");
        assert!(
            r.starts_with("waiting for the event buyer_signed (step signed)"),
            "{r}"
        );
        assert!(!r.contains("queue"), "an await waits on no queue: {r}");
    }

    #[test]
    fn an_unpublished_command_is_blamed_on_the_broker() {
        let mut d = Driver::new(saga_of(vec![task("reserve", true)]));
        let since = d.now;
        overdue(&mut d);
        let mut v = view(&d, Some(NO_CONSUMER));
        v.unpublished_since = Some(since);
        let r = render(&d.saga, &d.def, v).stuck_reason.expect("stuck");
        assert!(
            r.starts_with("a command has waited in the outbox since"),
            "{r}"
        );
        assert!(!r.contains("queue saga.task"), "{r}");
    }

    #[test]
    fn terminal_sagas_are_never_stuck() {
        let mut d = Driver::new(saga_of(vec![task("reserve", true)]));
        let reserve = d.out("reserve");
        d.ok(reserve, json!({}));
        assert_eq!(d.saga.state, SagaState::Completed);
        d.tick(Duration::from_secs(86_400));
        let s = render(&d.saga, &d.def, view(&d, Some(NO_CONSUMER)));
        assert!(!s.stuck);
        assert_eq!(s.stuck_reason, None);
    }
}
