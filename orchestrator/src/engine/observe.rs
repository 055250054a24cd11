//! What a transition tells the metrics, read off the machine's decision and the saga before it:
//! pure, so that each figure is tested without a database.

use crate::definition::{Action, Definition};
use crate::machine::{CommandFate, Decision, Effect, Input, Outcome, Saga, StepState};
use chrono::{DateTime, Utc};
use saga_wire::CommandKind;
use uuid::Uuid;

/// The figures of one transition.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Observed {
    /// Attempts that ended: `(task, kind, outcome)`, outcome one of ok, error, retryable,
    /// timed_out.
    pub(super) attempts: Vec<(String, &'static str, &'static str)>,
    /// Steps whose forward part ended: `(task, state, seconds since its first dispatch)`.
    pub(super) steps: Vec<(String, &'static str, f64)>,
    /// The saga ended: `(state, seconds since it started)`.
    pub(super) saga: Option<(&'static str, f64)>,
}

/// A reply's command and the outcome it reports, for [`observe`] (taken before the input goes
/// to the machine).
pub(super) fn reply_outcome(input: &Input) -> Option<(Uuid, &'static str)> {
    let Input::Reply {
        command_id,
        outcome,
    } = input
    else {
        return None;
    };
    let outcome = match outcome {
        Outcome::Ok(_) => "ok",
        Outcome::Error(e) if e.retryable => "retryable",
        Outcome::Error(_) => "error",
    };
    Some((*command_id, outcome))
}

pub(super) fn observe(
    before: &Saga,
    reply: Option<(Uuid, &'static str)>,
    decision: &Decision,
    def: &Definition,
) -> Observed {
    let after = &decision.saga;
    let mut observed = Observed::default();
    // An attempt ends when its command stops being out: replied to or timed out (one superseded
    // by another attempt's reply did not end by itself; a late reply ends nothing again).
    for (i, (was, is)) in before.steps.iter().zip(&after.steps).enumerate() {
        for c in was.commands.iter().filter(|c| c.fate == CommandFate::Out) {
            let Some(now) = is.commands.iter().find(|n| n.id == c.id) else {
                continue;
            };
            let outcome = match (now.fate, reply) {
                (CommandFate::TimedOut, _) => "timed_out",
                (CommandFate::Replied, Some((command, outcome))) if command == c.id => outcome,
                _ => continue,
            };
            if let Some(task) = task_of(def, i, c.kind) {
                observed.attempts.push((task, c.kind.as_str(), outcome));
            }
        }
    }
    for (i, (was, is)) in before.steps.iter().zip(&after.steps).enumerate() {
        let state = match is.state {
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::TimedOut => "timed_out",
            _ => continue,
        };
        let (Some(started), Some(finished)) = (is.started_at, is.finished_at) else {
            continue;
        };
        if was.finished_at == is.finished_at {
            continue;
        }
        if let Some(task) = task_of(def, i, CommandKind::Do) {
            observed
                .steps
                .push((task, state, seconds(started, finished)));
        }
    }
    observed.saga = decision.effects.iter().find_map(|e| match e {
        Effect::Lifecycle(state) if state.is_terminal() => {
            Some((state.as_str(), seconds(after.created_at, after.updated_at)))
        }
        _ => None,
    });
    observed
}

/// The task that the `i`th step runs for a command of `kind`.
fn task_of(def: &Definition, i: usize, kind: CommandKind) -> Option<String> {
    let Action::Task(spec) = &def.leaves().nth(i)?.leaf.action else {
        return None;
    };
    match kind {
        CommandKind::Do => Some(spec.task.clone()),
        CommandKind::Compensate => spec.compensate.clone(),
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::definition::parse_definition;
    use crate::machine::{self, Effect, SagaState};
    use saga_wire::StepError;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
            .single()
            .expect("a time")
    }

    fn def() -> Definition {
        parse_definition(&json!({
            "name": "order",
            "steps": [
                { "name": "reserve", "task": "stock.reserve", "compensate": "stock.release" },
                { "name": "charge", "task": "card.charge",
                  "retry": { "max_attempts": 2, "initial_backoff": "1s" } }
            ]
        }))
        .expect("a definition")
    }

    /// Applies `input` at `ms`, returning the decision and what it tells the metrics.
    fn step(saga: &Saga, def: &Definition, input: Input, ms: i64) -> (Decision, Observed) {
        let reply = reply_outcome(&input);
        let decision = machine::decide(saga, def, input, at(ms), &mut Uuid::now_v7);
        let observed = observe(saga, reply, &decision, def);
        (decision, observed)
    }

    fn out(saga: &Saga) -> Uuid {
        saga.steps
            .iter()
            .find_map(|s| s.out)
            .expect("a command is out")
    }

    fn reply(saga: &Saga, outcome: Outcome) -> Input {
        Input::Reply {
            command_id: out(saga),
            outcome,
        }
    }

    fn error(retryable: bool) -> Outcome {
        Outcome::Error(StepError {
            code: "declined".into(),
            message: "no".into(),
            retryable,
        })
    }

    #[test]
    fn attempts_steps_and_the_saga_are_observed_as_they_end() {
        let def = def();
        let fresh = Saga::new(Uuid::from_u128(1), &def, 1, json!({}), at(0));
        let start = Input::Start {
            actor: "test".into(),
        };
        let (d, o) = step(&fresh, &def, start, 0);
        assert_eq!(o, Observed::default(), "a start ends nothing");

        let (d, o) = step(&d.saga, &def, reply(&d.saga, Outcome::Ok(json!({}))), 250);
        assert_eq!(o.attempts, vec![("stock.reserve".into(), "do", "ok")]);
        assert_eq!(o.steps, vec![("stock.reserve".into(), "succeeded", 0.25)]);
        assert_eq!(o.saga, None);

        let (d, o) = step(&d.saga, &def, reply(&d.saga, error(true)), 400);
        assert_eq!(o.attempts, vec![("card.charge".into(), "do", "retryable")]);
        assert!(o.steps.is_empty(), "a retry is coming: the step goes on");

        let (d, _) = step(&d.saga, &def, Input::BackoffElapsed { step: 1 }, 1400);
        let (d, o) = step(&d.saga, &def, reply(&d.saga, error(false)), 1500);
        assert_eq!(o.attempts, vec![("card.charge".into(), "do", "error")]);
        assert_eq!(o.steps, vec![("card.charge".into(), "failed", 1.25)]);
        assert!(d.effects.iter().any(|e| matches!(e, Effect::Dispatch(_))));

        let (d, o) = step(&d.saga, &def, reply(&d.saga, Outcome::Ok(json!({}))), 2000);
        assert_eq!(
            o.attempts,
            vec![("stock.release".into(), "compensate", "ok")]
        );
        assert!(o.steps.is_empty(), "a compensation is not a forward step");
        assert_eq!(d.saga.state, SagaState::Compensated);
        assert_eq!(o.saga, Some(("compensated", 2.0)));
    }

    #[test]
    fn a_timed_out_attempt_is_observed_and_a_duplicate_reply_is_not() {
        let def = def();
        let fresh = Saga::new(Uuid::from_u128(2), &def, 1, json!({}), at(0));
        let (d, _) = step(&fresh, &def, Input::Start { actor: "t".into() }, 0);
        let first = out(&d.saga);
        let (d, o) = step(
            &d.saga,
            &def,
            Input::AttemptTimedOut { command_id: first },
            Duration::from_secs(30).as_millis() as i64,
        );
        assert_eq!(
            o.attempts,
            vec![("stock.reserve".into(), "do", "timed_out")]
        );
        // The late reply of the timed-out attempt ends no attempt.
        let late = Input::Reply {
            command_id: first,
            outcome: Outcome::Ok(json!({})),
        };
        let (_, o) = step(&d.saga, &def, late, 31_000);
        assert!(o.attempts.is_empty(), "{o:?}");
    }
}
