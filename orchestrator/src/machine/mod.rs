//! The pure saga state machine: `decide(saga, definition, input, now, ids) -> Decision`.
//!
//! No I/O, no clock, no randomness: time and fresh ids are passed in, and everything the world
//! must do is returned as [`Effect`]s and history [`Entry`]s for the shell to perform in the same
//! transaction as the new state. It must never panic on any input: every state × input pair has
//! an outcome, and inputs that make no sense now are recorded (or ignored), not errors.
//!
//! Transition table (saga states across, inputs down; "—" = ignored, nothing recorded):
//!
//! | input              | running                         | compensating                      | suspended                 | terminal            |
//! |--------------------|---------------------------------|-----------------------------------|---------------------------|---------------------|
//! | Start              | dispatch first stage            | —                                 | —                         | —                   |
//! | Reply (awaited)    | step succeeds / retries / fails | settle the step, go on compensating | settle (an out command) | `reply_ignored`     |
//! | Reply (not awaited)| ok for an earlier attempt of a running step = success; else `reply_ignored` (duplicate, late, unexpected) | same | same | same |
//! | MalformedReply     | `reply_ignored` malformed       | same                              | same                      | same                |
//! | AttemptTimedOut    | retry or fail the step          | retry a compensation or fail it   | settle                    | —                   |
//! | BackoffElapsed     | next attempt                    | next compensation attempt         | —                         | —                   |
//! | AwaitLapsed        | fail the step, compensate       | —                                 | —                         | —                   |
//! | DeadlinePassed     | compensate (`deadline_exceeded`)| —                                 | —                         | —                   |
//! | Signal             | deliver / keep early / refuse   | refuse                            | refuse                    | refuse              |
//! | Cancel             | compensate (`cancelled`)        | refuse                            | refuse                    | refuse              |
//! | Retry, Skip        | refuse                          | refuse                            | re-dispatch / skip        | refuse              |
//! | Terminate          | terminate                       | terminate                         | terminate                 | refuse              |
//!
//! Forward: stages run in order, a group's members at once; a step's attempts are retried by its
//! policy on retryable errors and timeouts. Leaving the forward path (a failure for good, a
//! cancel, the deadline) stops new forward work; commands still out are awaited; then every step
//! that succeeded or whose last attempt timed out is compensated, stage by stage in reverse.

mod effects;
#[cfg(test)]
mod proptests;
mod state;
#[cfg(test)]
pub(crate) mod tests;

use chrono::{DateTime, Utc};
use saga_wire::{CommandKind, StepError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

pub use effects::*;
pub use state::*;

use crate::definition::{Action, Definition, LeafRef, RetryPolicy, TaskSpec};

/// The machine's answer to one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub saga: Saga,
    pub effects: Vec<Effect>,
    pub history: Vec<Entry>,
    pub verdict: Verdict,
}

/// Applies `input` to `saga` (which must have been made from `definition`).
pub fn decide(
    saga: &Saga,
    definition: &Definition,
    input: Input,
    now: DateTime<Utc>,
    ids: &mut dyn FnMut() -> Uuid,
) -> Decision {
    let mut run = Run {
        saga: saga.clone(),
        leaves: definition.leaves().collect(),
        definition,
        now,
        ids,
        effects: Vec::new(),
        history: Vec::new(),
        verdict: Verdict::Accepted,
    };
    run.apply(input);
    run.finish(saga)
}

/// The idempotency key of every attempt of one saga, step and kind.
pub fn idempotency_key(saga: Uuid, step: &str, kind: CommandKind) -> String {
    format!("{saga}/{step}/{}", kind.as_str())
}

struct Run<'a> {
    saga: Saga,
    definition: &'a Definition,
    leaves: Vec<LeafRef<'a>>,
    now: DateTime<Utc>,
    ids: &'a mut dyn FnMut() -> Uuid,
    effects: Vec<Effect>,
    history: Vec<Entry>,
    verdict: Verdict,
}

/// A history entry under construction.
struct Rec {
    kind: &'static str,
    step: Option<usize>,
    attempt: Option<u32>,
    command_id: Option<Uuid>,
    actor: Option<String>,
    reason: Option<String>,
    data: Value,
}

impl Rec {
    fn new(kind: &'static str) -> Self {
        Rec {
            kind,
            step: None,
            attempt: None,
            command_id: None,
            actor: None,
            reason: None,
            data: Value::Null,
        }
    }
    fn step(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
    }
    fn command(mut self, c: &CommandRecord) -> Self {
        self.attempt = Some(c.attempt);
        self.command_id = Some(c.id);
        self
    }
    fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }
    fn actor(mut self, actor: &str) -> Self {
        self.actor = Some(actor.to_owned());
        self
    }
    fn reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }
    fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

impl Run<'_> {
    fn apply(&mut self, input: Input) {
        use SagaState::*;
        let state = self.saga.state;
        match (state, input) {
            (Running, Input::Start { actor }) if self.saga.history_seq == 0 => self.start(&actor),
            (
                Running | Compensating | Suspended | Completed | Compensated | Terminated,
                Input::Start { .. },
            ) => {
                self.verdict = Verdict::Ignored;
            }
            (
                _,
                Input::Reply {
                    command_id,
                    outcome,
                },
            ) => self.reply(command_id, outcome),
            (_, Input::MalformedReply { command_id, reason }) => {
                self.ignore_reply(command_id, "malformed", json!({ "error": reason }));
            }
            (Running | Compensating | Suspended, Input::AttemptTimedOut { command_id }) => {
                self.attempt_timed_out(command_id);
            }
            (Completed | Compensated | Terminated, Input::AttemptTimedOut { .. }) => {
                self.verdict = Verdict::Ignored;
            }
            (Running | Compensating, Input::BackoffElapsed { step }) => self.backoff_elapsed(step),
            (Suspended | Completed | Compensated | Terminated, Input::BackoffElapsed { .. }) => {
                self.verdict = Verdict::Ignored;
            }
            (Running, Input::AwaitLapsed { step }) => self.await_lapsed(step),
            (
                Compensating | Suspended | Completed | Compensated | Terminated,
                Input::AwaitLapsed { .. },
            ) => {
                self.verdict = Verdict::Ignored;
            }
            (Running, Input::DeadlinePassed) => {
                self.record(Rec::new("deadline_passed"));
                let step = self.first_running_step();
                self.leave_forward(
                    step,
                    "deadline_exceeded",
                    "the saga's deadline passed".into(),
                );
            }
            (
                Compensating | Suspended | Completed | Compensated | Terminated,
                Input::DeadlinePassed,
            ) => {
                self.verdict = Verdict::Ignored;
            }
            (
                Running,
                Input::Signal {
                    event,
                    payload,
                    actor,
                },
            ) => self.signal(event, payload, &actor),
            (
                Compensating | Suspended | Completed | Compensated | Terminated,
                Input::Signal { event, actor, .. },
            ) => {
                let reason = self.spent_signal(&event).unwrap_or("unexpected");
                self.refuse_signal(
                    &event,
                    &actor,
                    reason,
                    format!("the saga is {}", state.as_str()),
                );
            }
            (Running, Input::Cancel { actor, reason }) => {
                self.record(
                    Rec::new("cancel_requested")
                        .actor(&actor)
                        .reason(reason.clone()),
                );
                let step = self.first_running_step();
                let message = reason.unwrap_or_else(|| "cancelled".into());
                self.leave_forward(step, "cancelled", message);
            }
            (
                Compensating | Suspended | Completed | Compensated | Terminated,
                Input::Cancel { .. },
            ) => {
                self.refuse(format!(
                    "only a running saga can be cancelled; this one is {}",
                    state.as_str()
                ));
            }
            (Suspended, Input::Retry { actor, reason }) => self.operator_retry(&actor, reason),
            (Suspended, Input::Skip { actor, reason }) => self.operator_skip(&actor, reason),
            (
                Running | Compensating | Completed | Compensated | Terminated,
                Input::Retry { .. } | Input::Skip { .. },
            ) => {
                self.refuse(format!(
                    "only a suspended saga can be retried or skipped; this one is {}",
                    state.as_str()
                ));
            }
            (Running | Compensating | Suspended, Input::Terminate { actor, reason }) => {
                self.terminate(&actor, reason);
            }
            (Completed | Compensated | Terminated, Input::Terminate { .. }) => {
                self.refuse(format!("the saga is already {}", state.as_str()));
            }
        }
        if self.verdict == Verdict::Accepted {
            self.advance();
        }
    }

    fn finish(mut self, before: &Saga) -> Decision {
        let saga = &mut self.saga;
        saga.wait_until = if saga.state.is_terminal() || saga.state == SagaState::Suspended {
            None
        } else {
            saga.steps
                .iter()
                .filter_map(|s| match (s.wait_until, s.retry_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                })
                .min()
        };
        if visible(saga) != visible(before) {
            saga.revision += 1;
            saga.updated_at = self.now;
        }
        Decision {
            saga: self.saga,
            effects: self.effects,
            history: self.history,
            verdict: self.verdict,
        }
    }

    // ----- helpers -------------------------------------------------------------------------

    fn record(&mut self, rec: Rec) {
        self.saga.history_seq += 1;
        let step = rec.step.map(|i| self.leaves[i].leaf.name.clone());
        self.history.push(Entry {
            seq: self.saga.history_seq,
            at: self.now,
            kind: rec.kind,
            step,
            attempt: rec.attempt,
            command_id: rec.command_id,
            actor: rec.actor,
            reason: rec.reason,
            data: rec.data,
        });
    }

    fn refuse(&mut self, reason: String) {
        self.verdict = Verdict::Refused { reason };
    }

    fn task(&self, step: usize) -> Option<&TaskSpec> {
        match &self.leaves[step].leaf.action {
            Action::Task(t) => Some(t),
            Action::Await { .. } => None,
        }
    }

    fn step_name(&self, step: usize) -> String {
        self.leaves[step].leaf.name.clone()
    }

    fn stage_of(&self, step: usize) -> usize {
        self.leaves[step].stage
    }

    fn steps_of_stage(&self, stage: usize) -> Vec<usize> {
        (0..self.leaves.len())
            .filter(|&i| self.leaves[i].stage == stage)
            .collect()
    }

    fn first_running_step(&self) -> Option<usize> {
        self.saga
            .steps
            .iter()
            .position(|s| s.state == StepState::Running)
    }

    fn find_command(&self, command_id: Uuid) -> Option<(usize, usize)> {
        self.saga.steps.iter().enumerate().find_map(|(i, s)| {
            s.commands
                .iter()
                .position(|c| c.id == command_id)
                .map(|j| (i, j))
        })
    }

    fn results(&self) -> Value {
        let mut map = Map::new();
        for (i, s) in self.saga.steps.iter().enumerate() {
            if let Some(out) = &s.output {
                map.insert(self.step_name(i), out.clone());
            }
        }
        Value::Object(map)
    }

    fn policy(&self, step: usize, kind: CommandKind) -> RetryPolicy {
        match (self.task(step), kind) {
            (Some(t), CommandKind::Do) => t.retry.clone(),
            (Some(t), CommandKind::Compensate) => t.compensation_retry.clone(),
            (None, _) => RetryPolicy::DEFAULT_FORWARD,
        }
    }

    /// Sends the next attempt of `kind` for `step` (a task step).
    fn dispatch(&mut self, step: usize, kind: CommandKind) {
        let Some(spec) = self.task(step).cloned() else {
            return;
        };
        let task = match kind {
            CommandKind::Do => spec.task.clone(),
            CommandKind::Compensate => match &spec.compensate {
                Some(c) => c.clone(),
                None => return,
            },
        };
        let name = self.step_name(step);
        let command_id = (self.ids)();
        let results = self.results();
        let s = &mut self.saga.steps[step];
        let attempt = match kind {
            CommandKind::Do => {
                s.attempts += 1;
                s.attempts
            }
            CommandKind::Compensate => {
                s.comp_attempts += 1;
                s.comp_attempts
            }
        };
        s.commands.push(CommandRecord {
            id: command_id,
            kind,
            attempt,
            fate: CommandFate::Out,
        });
        s.out = Some(command_id);
        s.retry_at = None;
        s.wait_until = chrono::Duration::from_std(spec.timeout)
            .ok()
            .and_then(|d| self.now.checked_add_signed(d));
        s.started_at.get_or_insert(self.now);
        let compensates = match kind {
            CommandKind::Do => None,
            CommandKind::Compensate => Some(idempotency_key(self.saga.id, &name, CommandKind::Do)),
        };
        self.effects.push(Effect::Dispatch(Dispatch {
            command_id,
            step,
            step_name: name.clone(),
            task: task.clone(),
            kind,
            attempt,
            idempotency_key: idempotency_key(self.saga.id, &name, kind),
            compensates,
            timeout: spec.timeout,
            input: self.saga.input.clone(),
            results,
        }));
        let rec = CommandRecord {
            id: command_id,
            kind,
            attempt,
            fate: CommandFate::Out,
        };
        self.record(
            Rec::new("command_dispatched")
                .step(step)
                .command(&rec)
                .data(json!({ "task": task, "kind": kind.as_str() })),
        );
    }

    /// Schedules the next attempt of `kind` after the policy's backoff, if attempts remain.
    /// Returns false when the budget is spent.
    fn schedule_retry(&mut self, step: usize, kind: CommandKind) -> bool {
        let policy = self.policy(step, kind);
        let s = &self.saga.steps[step];
        let (used, next) = match kind {
            CommandKind::Do => (s.attempts, s.attempts + 1),
            CommandKind::Compensate => (s.comp_attempts - s.comp_budget_from, s.comp_attempts + 1),
        };
        if used >= policy.max_attempts {
            return false;
        }
        let wait = policy.backoff_before(used + 1);
        let at = chrono::Duration::from_std(wait)
            .ok()
            .and_then(|d| self.now.checked_add_signed(d))
            .unwrap_or(self.now);
        let s = &mut self.saga.steps[step];
        s.retry_at = Some(at);
        s.wait_until = None;
        self.effects.push(Effect::Schedule {
            timer: Timer::Backoff { step },
            at,
        });
        self.record(
            Rec::new("retry_scheduled")
                .step(step)
                .attempt(next)
                .data(json!({
                    "kind": kind.as_str(),
                    "at": at,
                    "backoff": humantime::format_duration(wait).to_string(),
                })),
        );
        true
    }

    fn settle_command(&mut self, step: usize, idx: usize, fate: CommandFate) -> CommandRecord {
        let s = &mut self.saga.steps[step];
        s.commands[idx].fate = fate;
        let c = s.commands[idx].clone();
        if s.out == Some(c.id) {
            s.out = None;
            s.wait_until = None;
        }
        self.effects
            .push(Effect::Cancel(Timer::Attempt { command_id: c.id }));
        c
    }

    /// Drops whatever the step still waits for (a newer attempt out, a retry pending).
    fn stop_waiting(&mut self, step: usize) {
        let s = &mut self.saga.steps[step];
        if let Some(out) = s.out.take()
            && let Some(c) = s.commands.iter_mut().find(|c| c.id == out)
        {
            c.fate = CommandFate::Superseded;
            self.effects
                .push(Effect::Cancel(Timer::Attempt { command_id: out }));
        }
        if s.retry_at.take().is_some() {
            self.effects.push(Effect::Cancel(Timer::Backoff { step }));
        }
        s.wait_until = None;
    }

    fn step_succeeded(&mut self, step: usize, output: Value) {
        self.stop_waiting(step);
        let s = &mut self.saga.steps[step];
        s.state = StepState::Succeeded;
        s.output = Some(output.clone());
        s.finished_at = Some(self.now);
        self.record(
            Rec::new("step_succeeded")
                .step(step)
                .data(json!({ "output": output })),
        );
    }

    /// The step failed for good, with `code`; leaves the forward path if the saga was on it.
    fn step_failed(&mut self, step: usize, state: StepState, code: &str, message: String) {
        self.stop_waiting(step);
        let s = &mut self.saga.steps[step];
        s.state = state;
        s.finished_at = Some(self.now);
        self.record(
            Rec::new("step_failed")
                .step(step)
                .data(json!({ "code": code, "message": message })),
        );
        if self.saga.state == SagaState::Running {
            self.leave_forward(Some(step), code, message);
        }
    }

    /// Stops going forward: records why, and settles what will not run again.
    fn leave_forward(&mut self, step: Option<usize>, code: &str, message: String) {
        if self.saga.failure.is_none() {
            self.saga.failure = Some(Failure {
                step: step.map(|i| self.step_name(i)),
                code: code.to_owned(),
                message,
                at: self.now,
            });
        }
        self.saga.state = SagaState::Compensating;
        if self.saga.deadline.is_some() {
            self.effects.push(Effect::Cancel(Timer::SagaDeadline));
        }
        for i in 0..self.saga.steps.len() {
            let s = &mut self.saga.steps[i];
            if s.state != StepState::Running || s.out.is_some() {
                continue;
            }
            match self.leaves[i].leaf.action {
                Action::Await { .. } => {
                    s.state = StepState::Skipped;
                    s.wait_until = None;
                    s.finished_at = Some(self.now);
                    self.effects
                        .push(Effect::Cancel(Timer::AwaitDeadline { step: i }));
                }
                Action::Task(_) => {
                    // A retry was waiting: the step ends with its last attempt's outcome.
                    s.state = if s.last_timed_out {
                        StepState::TimedOut
                    } else {
                        StepState::Failed
                    };
                    s.retry_at = None;
                    s.finished_at = Some(self.now);
                    let (code, message) = match (&s.error, s.last_timed_out) {
                        (Some(e), false) => (e.code.clone(), e.message.clone()),
                        _ => (
                            "timed_out".to_owned(),
                            "its last attempt ran out of time".to_owned(),
                        ),
                    };
                    self.effects
                        .push(Effect::Cancel(Timer::Backoff { step: i }));
                    self.record(Rec::new("step_failed").step(i).data(json!({
                        "code": code,
                        "message": message,
                        "retry_cancelled": true,
                    })));
                }
            }
        }
        self.record(Rec::new("compensation_started").data(json!({ "cause": code })));
    }

    // ----- inputs ------------------------------------------------------------------------------

    fn start(&mut self, actor: &str) {
        let deadline = self
            .definition
            .timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .and_then(|d| self.saga.created_at.checked_add_signed(d));
        self.saga.deadline = deadline;
        self.record(Rec::new("saga_started").actor(actor).data(json!({
            "definition": self.saga.definition,
            "version": self.saga.version,
        })));
        if let Some(at) = deadline {
            self.effects.push(Effect::Schedule {
                timer: Timer::SagaDeadline,
                at,
            });
        }
    }

    fn ignore_reply(&mut self, command_id: Uuid, reason: &str, data: Value) {
        self.verdict = Verdict::Ignored;
        let Some((step, idx)) = self.find_command(command_id) else {
            return;
        };
        let c = self.saga.steps[step].commands[idx].clone();
        let mut data = data;
        if let Value::Object(m) = &mut data {
            m.insert("kind".into(), json!(c.kind.as_str()));
        }
        self.record(
            Rec::new("reply_ignored")
                .step(step)
                .command(&c)
                .reason(Some(reason.to_owned()))
                .data(data),
        );
    }

    fn reply(&mut self, command_id: Uuid, outcome: Outcome) {
        let summary = match &outcome {
            Outcome::Ok(output) => json!({ "status": "ok", "output": output }),
            Outcome::Error(e) => json!({ "status": "error", "error": e }),
        };
        let Some((step, idx)) = self.find_command(command_id) else {
            // Not a command of this saga: nothing to record it against.
            self.verdict = Verdict::Ignored;
            return;
        };
        let c = self.saga.steps[step].commands[idx].clone();
        let s = &self.saga.steps[step];
        let awaited = s.out == Some(c.id);
        let live = !self.saga.state.is_terminal();
        let deciding = live
            && match c.kind {
                CommandKind::Do => s.state == StepState::Running,
                CommandKind::Compensate => s.state == StepState::Compensating,
            };
        let reason = match c.fate {
            CommandFate::Replied => Some("duplicate"),
            _ if !deciding => Some(match c.fate {
                CommandFate::TimedOut => "late",
                _ if s
                    .commands
                    .iter()
                    .any(|o| o.kind == c.kind && o.attempt > c.attempt) =>
                {
                    "late"
                }
                _ => "unexpected",
            }),
            // An ok for an earlier attempt of a step still deciding counts as its success.
            _ if awaited || matches!(outcome, Outcome::Ok(_)) => None,
            _ => Some("late"),
        };
        if let Some(reason) = reason {
            // From now on a copy of this reply is a duplicate.
            self.saga.steps[step].commands[idx].fate = CommandFate::Replied;
            self.ignore_reply(command_id, reason, summary);
            return;
        }
        let c = self.settle_command(step, idx, CommandFate::Replied);
        self.record(
            Rec::new("reply_received")
                .step(step)
                .command(&c)
                .data(summary),
        );
        match (c.kind, outcome) {
            (CommandKind::Do, Outcome::Ok(output)) => self.step_succeeded(step, output),
            (CommandKind::Do, Outcome::Error(e)) => {
                let s = &mut self.saga.steps[step];
                s.error = Some(e.clone());
                s.last_timed_out = false;
                let retried = e.retryable
                    && self.saga.state == SagaState::Running
                    && self.schedule_retry(step, CommandKind::Do);
                if !retried {
                    self.step_failed(step, StepState::Failed, &e.code, e.message.clone());
                }
            }
            (CommandKind::Compensate, Outcome::Ok(_)) => {
                self.stop_waiting(step);
                let s = &mut self.saga.steps[step];
                s.state = StepState::Compensated;
                s.finished_at = Some(self.now);
                self.record(Rec::new("step_compensated").step(step).command(&c));
            }
            (CommandKind::Compensate, Outcome::Error(e)) => {
                self.saga.steps[step].error = Some(e.clone());
                if !(e.retryable && self.schedule_retry(step, CommandKind::Compensate)) {
                    self.compensation_failed(step, &c, &e);
                }
            }
        }
    }

    fn compensation_failed(&mut self, step: usize, c: &CommandRecord, e: &StepError) {
        self.stop_waiting(step);
        let s = &mut self.saga.steps[step];
        s.state = StepState::CompensationFailed;
        s.finished_at = Some(self.now);
        self.record(
            Rec::new("compensation_failed")
                .step(step)
                .command(c)
                .data(json!({ "code": e.code, "message": e.message })),
        );
    }

    fn attempt_timed_out(&mut self, command_id: Uuid) {
        let Some((step, idx)) = self.find_command(command_id) else {
            self.verdict = Verdict::Ignored;
            return;
        };
        if self.saga.steps[step].out != Some(command_id) {
            // Its reply came first, or a newer attempt replaced it: a stale timer.
            self.verdict = Verdict::Ignored;
            return;
        }
        let c = self.settle_command(step, idx, CommandFate::TimedOut);
        self.record(
            Rec::new("attempt_timed_out")
                .step(step)
                .command(&c)
                .data(json!({ "kind": c.kind.as_str() })),
        );
        match c.kind {
            CommandKind::Do => {
                self.saga.steps[step].last_timed_out = true;
                let retried = self.saga.state == SagaState::Running
                    && self.schedule_retry(step, CommandKind::Do);
                if !retried {
                    let message = format!("attempt {} ran out of time", c.attempt);
                    self.step_failed(step, StepState::TimedOut, "timed_out", message);
                }
            }
            CommandKind::Compensate => {
                if !self.schedule_retry(step, CommandKind::Compensate) {
                    let e = StepError {
                        code: "timed_out".into(),
                        message: format!("compensation attempt {} ran out of time", c.attempt),
                        retryable: true,
                    };
                    self.compensation_failed(step, &c, &e);
                }
            }
        }
    }

    fn backoff_elapsed(&mut self, step: usize) {
        let Some(s) = self.saga.steps.get(step) else {
            self.verdict = Verdict::Ignored;
            return;
        };
        if s.retry_at.is_none() || s.out.is_some() {
            self.verdict = Verdict::Ignored;
            return;
        }
        match s.state {
            StepState::Running if self.saga.state == SagaState::Running => {
                self.dispatch(step, CommandKind::Do);
            }
            StepState::Compensating => self.dispatch(step, CommandKind::Compensate),
            _ => self.verdict = Verdict::Ignored,
        }
    }

    fn await_lapsed(&mut self, step: usize) {
        let waiting = self.saga.steps.get(step).map(|s| s.state) == Some(StepState::Running)
            && matches!(self.leaves[step].leaf.action, Action::Await { .. });
        if !waiting {
            self.verdict = Verdict::Ignored;
            return;
        }
        self.saga.steps[step].wait_until = None;
        let message = "the await's deadline passed before its event came".to_owned();
        self.step_failed(step, StepState::TimedOut, "timed_out", message);
    }

    fn refuse_signal(&mut self, event: &str, actor: &str, reason: &str, words: String) {
        self.record(
            Rec::new("signal_ignored")
                .actor(actor)
                .reason(Some(reason.to_owned()))
                .data(json!({ "event": event, "detail": words })),
        );
        self.refuse(words);
    }

    /// What the awaits naming `event` say of a signal for it once the saga has stopped going
    /// forward: `late` if one of them lapsed, `duplicate` if the event was delivered (or kept
    /// early). PROTOCOL.md §2 defines these reasons whatever the saga's state.
    fn spent_signal(&self, event: &str) -> Option<&'static str> {
        let awaits: Vec<&Step> = (0..self.leaves.len())
            .filter(|&i| {
                matches!(&self.leaves[i].leaf.action, Action::Await { event: e, .. } if e == event)
            })
            .map(|i| &self.saga.steps[i])
            .collect();
        let delivered = awaits.iter().any(|s| s.output.is_some());
        if awaits.iter().any(|s| s.state == StepState::TimedOut) {
            Some("late")
        } else if delivered || self.saga.early_signals.contains_key(event) {
            Some("duplicate")
        } else {
            None
        }
    }

    fn signal(&mut self, event: String, payload: Value, actor: &str) {
        let awaits: Vec<usize> = (0..self.leaves.len())
            .filter(|&i| matches!(&self.leaves[i].leaf.action, Action::Await { event: e, .. } if *e == event))
            .collect();
        if awaits.is_empty() {
            let words = format!(
                "no await step of `{}` names the event `{event}`",
                self.saga.definition
            );
            return self.refuse_signal(&event, actor, "unexpected", words);
        }
        let waiting = awaits.iter().copied().find(|&i| {
            matches!(
                self.saga.steps[i].state,
                StepState::Running | StepState::Pending
            )
        });
        let Some(step) = waiting else {
            let lapsed = awaits
                .iter()
                .any(|&i| self.saga.steps[i].state == StepState::TimedOut);
            let (reason, words) = if lapsed {
                ("late", format!("the await for `{event}` has lapsed"))
            } else {
                ("duplicate", format!("`{event}` was already delivered"))
            };
            return self.refuse_signal(&event, actor, reason, words);
        };
        if self.saga.steps[step].state == StepState::Pending {
            if self.saga.early_signals.contains_key(&event) {
                let words = format!("`{event}` was already delivered");
                return self.refuse_signal(&event, actor, "duplicate", words);
            }
            self.record(
                Rec::new("signal_received")
                    .step(step)
                    .actor(actor)
                    .data(json!({ "event": event, "payload": payload, "early": true })),
            );
            self.saga.early_signals.insert(event, payload);
            return;
        }
        self.record(
            Rec::new("signal_received")
                .step(step)
                .actor(actor)
                .data(json!({ "event": event, "payload": payload, "early": false })),
        );
        self.effects
            .push(Effect::Cancel(Timer::AwaitDeadline { step }));
        self.step_succeeded(step, payload);
    }

    fn operator_retry(&mut self, actor: &str, reason: Option<String>) {
        self.record(Rec::new("operator_retry").actor(actor).reason(reason));
        self.saga.state = SagaState::Compensating;
        for i in 0..self.saga.steps.len() {
            if self.saga.steps[i].state == StepState::CompensationFailed {
                let s = &mut self.saga.steps[i];
                s.state = StepState::Compensating;
                s.finished_at = None;
                s.comp_budget_from = s.comp_attempts;
                self.dispatch(i, CommandKind::Compensate);
            }
        }
    }

    fn operator_skip(&mut self, actor: &str, reason: String) {
        self.record(Rec::new("operator_skip").actor(actor).reason(Some(reason)));
        self.saga.state = SagaState::Compensating;
        for s in &mut self.saga.steps {
            if s.state == StepState::CompensationFailed {
                s.state = StepState::Skipped;
                s.finished_at = Some(self.now);
            }
        }
    }

    fn terminate(&mut self, actor: &str, reason: String) {
        self.record(
            Rec::new("operator_terminate")
                .actor(actor)
                .reason(Some(reason.clone())),
        );
        if self.saga.failure.is_none() {
            self.saga.failure = Some(Failure {
                step: None,
                code: "terminated".into(),
                message: reason,
                at: self.now,
            });
        }
        for s in &mut self.saga.steps {
            s.out = None;
            s.retry_at = None;
            s.wait_until = None;
        }
        self.end(SagaState::Terminated, "saga_terminated");
    }

    fn end(&mut self, state: SagaState, kind: &'static str) {
        self.saga.state = state;
        self.effects.push(Effect::CancelAll);
        self.effects.push(Effect::Lifecycle(state));
        self.record(Rec::new(kind));
    }

    // ----- driving -------------------------------------------------------------------------

    /// Moves the saga on as far as it can go without a new input.
    fn advance(&mut self) {
        loop {
            let progressed = match self.saga.state {
                SagaState::Running => self.advance_forward(),
                SagaState::Compensating => self.advance_compensation(),
                SagaState::Suspended
                | SagaState::Completed
                | SagaState::Compensated
                | SagaState::Terminated => false,
            };
            if !progressed {
                return;
            }
        }
    }

    /// Starts the current stage's pending steps, or completes the saga. True if it did something
    /// that may let it go further.
    fn advance_forward(&mut self) -> bool {
        let current = (0..self.saga.steps.len())
            .find(|&i| self.saga.steps[i].state != StepState::Succeeded)
            .map(|i| self.stage_of(i));
        let Some(stage) = current else {
            let output = self.results();
            self.saga.output = Some(output);
            self.end(SagaState::Completed, "saga_completed");
            return false;
        };
        let mut progressed = false;
        for i in self.steps_of_stage(stage) {
            if self.saga.steps[i].state != StepState::Pending {
                continue;
            }
            match self.leaves[i].leaf.action.clone() {
                Action::Task(_) => {
                    self.saga.steps[i].state = StepState::Running;
                    self.dispatch(i, CommandKind::Do);
                }
                Action::Await { event, timeout } => {
                    let s = &mut self.saga.steps[i];
                    s.state = StepState::Running;
                    s.started_at = Some(self.now);
                    if let Some(payload) = self.saga.early_signals.remove(&event) {
                        self.step_succeeded(i, payload);
                        progressed = true;
                    } else {
                        let at = chrono::Duration::from_std(timeout)
                            .ok()
                            .and_then(|d| self.now.checked_add_signed(d))
                            .unwrap_or(DateTime::<Utc>::MAX_UTC);
                        s.wait_until = Some(at);
                        self.effects.push(Effect::Schedule {
                            timer: Timer::AwaitDeadline { step: i },
                            at,
                        });
                    }
                }
            }
        }
        progressed
    }

    fn needs_compensation(&self, step: usize) -> bool {
        let s = &self.saga.steps[step];
        let has_compensate = self.task(step).is_some_and(|t| t.compensate.is_some());
        has_compensate && matches!(s.state, StepState::Succeeded | StepState::TimedOut)
    }

    /// Compensates the latest stage that needs it, once nothing is out; suspends or ends.
    fn advance_compensation(&mut self) -> bool {
        let busy = self
            .saga
            .steps
            .iter()
            .any(|s| s.out.is_some() || s.retry_at.is_some());
        if busy {
            return false;
        }
        let stages = self.leaves.last().map_or(0, |l| l.stage + 1);
        for stage in (0..stages).rev() {
            let members = self.steps_of_stage(stage);
            if members
                .iter()
                .any(|&i| self.saga.steps[i].state == StepState::CompensationFailed)
            {
                let first = members
                    .iter()
                    .copied()
                    .find(|&i| self.saga.steps[i].state == StepState::CompensationFailed);
                self.saga.state = SagaState::Suspended;
                self.effects.push(Effect::Lifecycle(SagaState::Suspended));
                let mut rec = Rec::new("saga_suspended");
                if let Some(i) = first {
                    rec = rec.step(i);
                }
                self.record(rec);
                return false;
            }
            let due: Vec<usize> = members
                .into_iter()
                .filter(|&i| self.needs_compensation(i))
                .collect();
            if !due.is_empty() {
                for i in due {
                    self.saga.steps[i].state = StepState::Compensating;
                    self.dispatch(i, CommandKind::Compensate);
                }
                return false;
            }
        }
        self.end(SagaState::Compensated, "saga_compensated");
        false
    }
}

/// The part of a saga that its status shows; `revision` grows when it changes.
fn visible(saga: &Saga) -> impl PartialEq + '_ {
    (
        saga.state,
        &saga.failure,
        &saga.output,
        saga.steps
            .iter()
            .map(|s| {
                (
                    s.state,
                    s.attempts,
                    &s.output,
                    &s.error,
                    s.started_at,
                    s.finished_at,
                )
            })
            .collect::<Vec<_>>(),
    )
}
