//! Unit tests of the machine: every saga state × input pair of the transition table in `mod.rs`,
//! and the scenarios of PROTOCOL.md §2–§4, each driven by feeding the machine's own effects back.
//!
//! [`Driver`] plays the shell: it keeps the saga, arms and disarms timers as the effects say (an
//! attempt timer for every dispatched command, as the outbox relay would at publish), and checks
//! on every decision what must hold whatever the input: history `seq` grows by one per entry,
//! `revision` grows by one exactly when the visible status changed, nothing is dispatched from a
//! terminal saga and nothing forward after leaving the forward path, commands carry the right
//! keys and results. `proptests.rs` drives it with random inputs.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use saga_wire::{CommandKind, StepError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::definition::{Action, Definition, parse_definition};

// ----- building definitions ------------------------------------------------------------------

pub(super) const SAGA_ID: Uuid = Uuid::from_u128(0x5a6a);

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid time")
}

pub(crate) fn definition(doc: Value) -> Definition {
    parse_definition(&doc).expect("a valid definition")
}

/// A definition named `test` with these steps.
pub(crate) fn saga_of(steps: Vec<Value>) -> Definition {
    definition(json!({ "name": "test", "steps": steps }))
}

/// A task step `name` (task `name.do`, compensation `name.undo` when `compensate`), 10s per
/// attempt, 3 forward attempts (backoff 1s, 2s, …), 2 compensation attempts.
pub(crate) fn task(name: &str, compensate: bool) -> Value {
    let mut t = json!({
        "name": name,
        "task": format!("{name}.do"),
        "timeout": "10s",
        "retry": { "max_attempts": 3, "initial_backoff": "1s", "multiplier": 2.0, "max_backoff": "10s" },
        "compensation_retry": { "max_attempts": 2, "initial_backoff": "1s", "multiplier": 2.0, "max_backoff": "10s" },
    });
    if compensate {
        t["compensate"] = json!(format!("{name}.undo"));
    }
    t
}

pub(crate) fn with_attempts(mut t: Value, forward: u32, compensation: u32) -> Value {
    t["retry"]["max_attempts"] = json!(forward);
    t["compensation_retry"]["max_attempts"] = json!(compensation);
    t
}

pub(crate) fn await_step(name: &str, event: &str) -> Value {
    json!({ "name": name, "await": event, "timeout": "1h" })
}

pub(super) fn group(name: &str, members: Vec<Value>) -> Value {
    json!({ "name": name, "parallel": members })
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn err(code: &str, retryable: bool) -> Outcome {
    Outcome::Error(StepError {
        code: code.into(),
        message: format!("{code} happened"),
        retryable,
    })
}

// ----- the driver ----------------------------------------------------------------------------

/// Plays the shell around the machine: one saga, its timers, every command and history entry.
#[derive(Debug, Clone)]
pub(crate) struct Driver {
    pub def: Definition,
    pub saga: Saga,
    pub now: DateTime<Utc>,
    next_id: u128,
    /// Every history entry written, oldest first.
    pub history: Vec<Entry>,
    /// Every command dispatched, oldest first.
    pub dispatched: Vec<Dispatch>,
    /// Armed timers, in the order they were armed, with when they fire.
    pub timers: Vec<(Timer, DateTime<Utc>)>,
    /// Every lifecycle event published.
    pub lifecycle: Vec<SagaState>,
    /// The last decision's effects, history and verdict.
    pub effects: Vec<Effect>,
    pub entries: Vec<Entry>,
    pub verdict: Verdict,
}

impl Driver {
    /// A saga of `def`, started at [`t0`].
    pub fn new(def: Definition) -> Self {
        let saga = Saga::new(SAGA_ID, &def, 1, json!({ "order": 1 }), t0());
        let mut d = Driver {
            def,
            saga,
            now: t0(),
            next_id: 0,
            history: Vec::new(),
            dispatched: Vec::new(),
            timers: Vec::new(),
            lifecycle: Vec::new(),
            effects: Vec::new(),
            entries: Vec::new(),
            verdict: Verdict::Accepted,
        };
        let verdict = d.feed(Input::Start {
            actor: "anonymous".into(),
        });
        assert_eq!(verdict, Verdict::Accepted);
        d
    }

    /// Applies one input at `now`, checks the decision, and performs its effects.
    pub fn feed(&mut self, input: Input) -> Verdict {
        let before = self.saga.clone();
        let mut next = self.next_id;
        let mut ids = || {
            next += 1;
            Uuid::from_u128(next)
        };
        let decision = decide(&before, &self.def, input, self.now, &mut ids);
        self.next_id = next;
        check_decision(&self.def, &before, &decision, self.now, &self.history);
        for effect in &decision.effects {
            match effect {
                Effect::Dispatch(c) => {
                    self.dispatched.push(c.clone());
                    // The relay arms the attempt's timer when it publishes the command.
                    let at = self.now + chrono::Duration::from_std(c.timeout).expect("short");
                    self.arm(
                        Timer::Attempt {
                            command_id: c.command_id,
                        },
                        at,
                    );
                }
                Effect::Schedule { timer, at } => self.arm(timer.clone(), *at),
                Effect::Cancel(timer) => self.timers.retain(|(t, _)| t != timer),
                Effect::CancelAll => self.timers.clear(),
                Effect::Lifecycle(state) => self.lifecycle.push(*state),
            }
        }
        self.history.extend(decision.history.iter().cloned());
        self.saga = decision.saga;
        self.effects = decision.effects;
        self.entries = decision.history;
        self.verdict = decision.verdict.clone();
        decision.verdict
    }

    fn arm(&mut self, timer: Timer, at: DateTime<Utc>) {
        self.timers.retain(|(t, _)| *t != timer);
        self.timers.push((timer, at));
    }

    pub fn tick(&mut self, by: Duration) {
        self.now += chrono::Duration::from_std(by).expect("short");
    }

    pub fn armed(&self, timer: &Timer) -> Option<DateTime<Utc>> {
        self.timers
            .iter()
            .find(|(t, _)| t == timer)
            .map(|(_, at)| *at)
    }

    /// Fires an armed timer the way the scanner does: at its time (or now, if later), taking it
    /// off the table in the same go.
    pub fn fire(&mut self, timer: &Timer) -> Verdict {
        let at = self
            .armed(timer)
            .unwrap_or_else(|| panic!("{timer:?} is not armed; armed: {:?}", self.timers));
        self.now = self.now.max(at);
        self.timers.retain(|(t, _)| t != timer);
        self.feed(timer_input(timer))
    }

    /// Feeds the input of a timer whether or not it is armed (a stale timer).
    pub fn fire_stale(&mut self, timer: &Timer) -> Verdict {
        self.feed(timer_input(timer))
    }

    pub fn reply(&mut self, command_id: Uuid, outcome: Outcome) -> Verdict {
        self.feed(Input::Reply {
            command_id,
            outcome,
        })
    }

    pub fn ok(&mut self, command_id: Uuid, output: Value) -> Verdict {
        self.reply(command_id, Outcome::Ok(output))
    }

    pub fn fail(&mut self, command_id: Uuid, code: &str, retryable: bool) -> Verdict {
        self.reply(command_id, err(code, retryable))
    }

    pub fn signal(&mut self, event: &str, payload: Value) -> Verdict {
        self.feed(Input::Signal {
            event: event.into(),
            payload,
            actor: "alice".into(),
        })
    }

    pub fn cancel(&mut self) -> Verdict {
        self.feed(Input::Cancel {
            actor: "alice".into(),
            reason: Some("changed my mind".into()),
        })
    }

    pub fn retry(&mut self) -> Verdict {
        self.feed(Input::Retry {
            actor: "ops".into(),
            reason: Some("the bank is back".into()),
        })
    }

    pub fn skip(&mut self) -> Verdict {
        self.feed(Input::Skip {
            actor: "ops".into(),
            reason: "refunded by hand".into(),
        })
    }

    pub fn terminate(&mut self) -> Verdict {
        self.feed(Input::Terminate {
            actor: "ops".into(),
            reason: "give up".into(),
        })
    }

    pub fn idx(&self, name: &str) -> usize {
        self.def
            .leaves()
            .position(|l| l.leaf.name == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }

    pub fn step(&self, name: &str) -> &Step {
        &self.saga.steps[self.idx(name)]
    }

    pub fn state_of(&self, name: &str) -> StepState {
        self.step(name).state
    }

    /// The command of `step`'s attempt `attempt` of `kind`.
    pub fn command(&self, step: &str, kind: CommandKind, attempt: u32) -> &Dispatch {
        self.dispatched
            .iter()
            .find(|c| c.step_name == step && c.kind == kind && c.attempt == attempt)
            .unwrap_or_else(|| panic!("no {} attempt {attempt} of {step}", kind.as_str()))
    }

    pub fn do_id(&self, step: &str, attempt: u32) -> Uuid {
        self.command(step, CommandKind::Do, attempt).command_id
    }

    pub fn comp_id(&self, step: &str, attempt: u32) -> Uuid {
        self.command(step, CommandKind::Compensate, attempt)
            .command_id
    }

    /// The command `step` awaits now.
    pub fn out(&self, step: &str) -> Uuid {
        self.step(step)
            .out
            .unwrap_or_else(|| panic!("{step} has no command out"))
    }

    /// The last decision's history kinds.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.kind).collect()
    }

    /// The last decision's entry of `kind`.
    pub fn entry(&self, kind: &str) -> &Entry {
        self.entries
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {:?}", self.kinds()))
    }

    /// The last decision's dispatched commands.
    pub fn sent(&self) -> Vec<&Dispatch> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Dispatch(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The last decision's dispatched commands as `(step, kind, attempt)`.
    pub fn sent_brief(&self) -> Vec<(String, CommandKind, u32)> {
        self.sent()
            .iter()
            .map(|c| (c.step_name.clone(), c.kind, c.attempt))
            .collect()
    }

    pub fn step_states(&self) -> Vec<StepState> {
        self.saga.steps.iter().map(|s| s.state).collect()
    }
}

pub(super) fn timer_input(timer: &Timer) -> Input {
    match timer {
        Timer::Attempt { command_id } => Input::AttemptTimedOut {
            command_id: *command_id,
        },
        Timer::Backoff { step } => Input::BackoffElapsed { step: *step },
        Timer::AwaitDeadline { step } => Input::AwaitLapsed { step: *step },
        Timer::SagaDeadline => Input::DeadlinePassed,
    }
}

/// What the status shows of a saga (PROTOCOL.md §2): `revision` must grow exactly when it changes.
fn view(saga: &Saga) -> Value {
    json!({
        "state": saga.state.as_str(),
        "failure": saga.failure.as_ref().map(|f| json!([f.step, f.code, f.message, f.at])),
        "output": saga.output,
        "deadline": saga.deadline,
        "steps": saga.steps.iter().map(|s| json!([
            s.state, s.attempts, s.output, s.error, s.started_at, s.finished_at,
        ])).collect::<Vec<_>>(),
    })
}

const KINDS: &[&str] = &[
    "saga_started",
    "command_dispatched",
    "reply_received",
    "reply_ignored",
    "attempt_timed_out",
    "retry_scheduled",
    "step_succeeded",
    "step_failed",
    "signal_received",
    "signal_ignored",
    "deadline_passed",
    "compensation_started",
    "step_compensated",
    "compensation_failed",
    "saga_completed",
    "saga_compensated",
    "saga_suspended",
    "saga_terminated",
    "cancel_requested",
    "operator_retry",
    "operator_skip",
    "operator_terminate",
];

/// What holds for every decision, whatever the input.
pub(super) fn check_decision(
    def: &Definition,
    before: &Saga,
    d: &Decision,
    now: DateTime<Utc>,
    past: &[Entry],
) {
    let after = &d.saga;
    let leaves: Vec<_> = def.leaves().collect();

    // History: seq grows by one per entry; entries are of the known kinds.
    for (k, e) in d.history.iter().enumerate() {
        assert_eq!(e.seq, before.history_seq + k as i64 + 1, "history seq");
        assert_eq!(e.at, now);
        assert!(KINDS.contains(&e.kind), "unknown history kind {}", e.kind);
        if let Some(reason) = &e.reason
            && matches!(e.kind, "reply_ignored" | "signal_ignored")
        {
            assert!(
                ["duplicate", "late", "malformed", "unexpected"].contains(&reason.as_str()),
                "reason {reason}"
            );
        }
    }
    assert_eq!(
        after.history_seq,
        before.history_seq + d.history.len() as i64
    );

    // Revision: one more exactly when the visible status changed.
    let changed = view(before) != view(after);
    assert_eq!(
        after.revision,
        before.revision + i64::from(changed),
        "revision vs visible change ({before:?} -> {after:?})"
    );
    if changed {
        assert_eq!(after.updated_at, now);
    } else {
        assert_eq!(after.updated_at, before.updated_at);
    }

    if d.verdict != Verdict::Accepted {
        assert!(!changed, "a {:?} input changed the status", d.verdict);
        assert!(d.effects.is_empty(), "a {:?} input had effects", d.verdict);
    }
    if before.state.is_terminal() {
        assert_eq!(after.state, before.state, "a terminal saga moved");
        assert!(!changed);
        assert!(
            d.effects.is_empty(),
            "effects from a terminal saga: {:?}",
            d.effects
        );
    }

    // The first cause stays; a failure is there exactly when the saga left the forward path.
    if before.failure.is_some() {
        assert_eq!(after.failure, before.failure, "the first cause must stay");
    }
    let off_path = !matches!(after.state, SagaState::Running | SagaState::Completed);
    assert_eq!(
        after.failure.is_some(),
        off_path,
        "failure vs state {:?}",
        after.state
    );
    assert_eq!(after.output.is_some(), after.state == SagaState::Completed);

    // Lifecycle events: one when the saga enters a terminal state or `suspended`.
    let lifecycle: Vec<SagaState> = d
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Lifecycle(s) => Some(*s),
            _ => None,
        })
        .collect();
    let announced = after.state != before.state
        && (after.state.is_terminal() || after.state == SagaState::Suspended);
    if announced {
        assert_eq!(lifecycle, vec![after.state]);
    } else {
        assert!(
            lifecycle.is_empty(),
            "lifecycle {lifecycle:?} without a change"
        );
    }

    // Commands.
    for e in &d.effects {
        let Effect::Dispatch(c) = e else { continue };
        match c.kind {
            CommandKind::Do => assert!(
                before.state == SagaState::Running && after.state == SagaState::Running,
                "a do command from a saga off the forward path: {c:?}"
            ),
            CommandKind::Compensate => assert_eq!(after.state, SagaState::Compensating),
        }
        let leaf = leaves[c.step];
        let Action::Task(spec) = &leaf.leaf.action else {
            panic!("a command for the await {}", leaf.leaf.name)
        };
        assert_eq!(c.step_name, leaf.leaf.name);
        let do_key = format!("{}/{}/do", after.id, c.step_name);
        match c.kind {
            CommandKind::Do => {
                assert_eq!(c.task, spec.task);
                assert_eq!(c.idempotency_key, do_key);
                assert_eq!(c.compensates, None);
                assert_eq!(c.attempt, after.steps[c.step].attempts);
            }
            CommandKind::Compensate => {
                assert_eq!(Some(&c.task), spec.compensate.as_ref());
                assert_eq!(
                    c.idempotency_key,
                    format!("{}/{}/compensate", after.id, c.step_name)
                );
                assert_eq!(c.compensates, Some(do_key));
                assert_eq!(c.attempt, after.steps[c.step].comp_attempts);
                // The step's own output goes along, when it has one.
                assert_eq!(
                    c.results.get(&c.step_name),
                    after.steps[c.step].output.as_ref()
                );
            }
        }
        assert_eq!(
            c.idempotency_key,
            idempotency_key(after.id, &c.step_name, c.kind)
        );
        assert_eq!(c.timeout, spec.timeout);
        assert_eq!(c.input, after.input);
        // Results: the outputs of the steps that had succeeded, never a group's own name.
        let results = c.results.as_object().expect("results are an object");
        for (i, s) in before.steps.iter().enumerate() {
            if let Some(out) = &s.output {
                assert_eq!(results.get(&leaves[i].leaf.name), Some(out));
            }
        }
        for (name, value) in results {
            let i = leaves
                .iter()
                .position(|l| l.leaf.name == *name)
                .expect("results hold step names");
            assert_eq!(after.steps[i].output.as_ref(), Some(value));
        }
        let rec = after.steps[c.step]
            .commands
            .iter()
            .find(|r| r.id == c.command_id)
            .expect("the command is recorded");
        assert_eq!((rec.kind, rec.attempt), (c.kind, c.attempt));
        assert!(
            d.history.iter().any(|e| e.kind == "command_dispatched"
                && e.command_id == Some(c.command_id)
                && e.attempt == Some(c.attempt)
                && e.step.as_deref() == Some(c.step_name.as_str())),
            "no command_dispatched entry for {c:?}"
        );
        assert!(
            !past.iter().any(|e| e.command_id == Some(c.command_id)),
            "a command id was reused"
        );
    }

    // Step bookkeeping.
    for (i, s) in after.steps.iter().enumerate() {
        let count = |k| s.commands.iter().filter(|c| c.kind == k).count() as u32;
        assert_eq!(s.attempts, count(CommandKind::Do));
        assert_eq!(s.comp_attempts, count(CommandKind::Compensate));
        if let Some(out) = s.out {
            let c = s
                .commands
                .iter()
                .find(|c| c.id == out)
                .expect("out is recorded");
            assert_eq!(c.fate, CommandFate::Out);
            assert!(
                s.retry_at.is_none(),
                "a retry pending while a command is out"
            );
        }
        if after.state != SagaState::Terminated {
            let out = s
                .commands
                .iter()
                .filter(|c| c.fate == CommandFate::Out)
                .count();
            assert!(out <= 1, "step {i} has {out} commands out");
            assert_eq!(out == 1, s.out.is_some(), "step {i}: fate Out vs out");
        }
        if matches!(leaves[i].leaf.action, Action::Await { .. }) {
            assert_eq!(s.attempts, 0);
            assert!(s.commands.is_empty());
        }
    }
    if after.state.is_terminal() || after.state == SagaState::Suspended {
        assert!(after.wait_until.is_none());
        for s in &after.steps {
            assert!(
                s.out.is_none() && s.retry_at.is_none(),
                "{:?} still waits",
                after.state
            );
        }
    }
    if after.state.is_terminal() && !before.state.is_terminal() {
        assert!(d.effects.contains(&Effect::CancelAll));
    }
    if after.state == SagaState::Suspended {
        assert!(
            after
                .steps
                .iter()
                .any(|s| s.state == StepState::CompensationFailed)
        );
    }
    if after.state == SagaState::Running {
        for s in &after.steps {
            assert!(
                matches!(
                    s.state,
                    StepState::Pending | StepState::Running | StepState::Succeeded
                ),
                "a running saga with a step {:?}",
                s.state
            );
        }
    }
}

// ----- definitions used below ----------------------------------------------------------------

/// reserve → charge → signed (await `buyer_signed`) → confirm (no compensation).
fn order() -> Definition {
    saga_of(vec![
        task("reserve", true),
        with_attempts(task("charge", true), 2, 2),
        await_step("signed", "buyer_signed"),
        task("confirm", false),
    ])
}

/// a → [b, c] → d, all with compensations.
fn grouped() -> Definition {
    saga_of(vec![
        task("a", true),
        group("bc", vec![task("b", true), task("c", true)]),
        task("d", true),
    ])
}

use CommandKind::{Compensate, Do};
use SagaState as S;
use StepState as St;

fn brief(step: &str, kind: CommandKind, attempt: u32) -> (String, CommandKind, u32) {
    (step.to_owned(), kind, attempt)
}

// ----- the transition table ------------------------------------------------------------------

/// A saga of [`order`] in `state`.
fn order_in(state: SagaState) -> Driver {
    let mut d = Driver::new(order());
    match state {
        // reserve's first attempt is out.
        S::Running => {}
        // Cancelled while charge's first attempt is out.
        S::Compensating => {
            d.ok(d.do_id("reserve", 1), json!({ "r": 1 }));
            d.cancel();
        }
        // charge declined; reserve's release failed for good.
        S::Suspended => {
            d.ok(d.do_id("reserve", 1), json!({ "r": 1 }));
            d.fail(d.do_id("charge", 1), "card_declined", false);
            d.fail(d.comp_id("reserve", 1), "release_refused", false);
        }
        S::Completed => {
            d.ok(d.do_id("reserve", 1), json!({ "r": 1 }));
            d.ok(d.do_id("charge", 1), json!({ "c": 1 }));
            d.signal("buyer_signed", json!("yes"));
            d.ok(d.do_id("confirm", 1), json!(null));
        }
        S::Compensated => {
            d.ok(d.do_id("reserve", 1), json!({ "r": 1 }));
            d.fail(d.do_id("charge", 1), "card_declined", false);
            d.ok(d.comp_id("reserve", 1), json!(null));
        }
        S::Terminated => {
            d.terminate();
        }
    }
    assert_eq!(d.saga.state, state);
    d
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    /// Accepted.
    A,
    /// Ignored.
    I,
    /// Refused.
    R,
}

fn input_named(name: &str, d: &Driver) -> Input {
    let last = d.dispatched.last().expect("something was sent").command_id;
    match name {
        "Start" => Input::Start {
            actor: "anonymous".into(),
        },
        // The newest command: the awaited one while the saga runs or compensates.
        "Reply" => Input::Reply {
            command_id: last,
            outcome: Outcome::Ok(json!({ "x": 1 })),
        },
        "Reply(unknown)" => Input::Reply {
            command_id: Uuid::from_u128(u128::MAX),
            outcome: Outcome::Ok(json!(null)),
        },
        "MalformedReply" => Input::MalformedReply {
            command_id: last,
            reason: "no status".into(),
        },
        "AttemptTimedOut" => Input::AttemptTimedOut { command_id: last },
        "BackoffElapsed" => Input::BackoffElapsed { step: 0 },
        "AwaitLapsed" => Input::AwaitLapsed { step: 2 },
        "DeadlinePassed" => Input::DeadlinePassed,
        "Signal" => Input::Signal {
            event: "buyer_signed".into(),
            payload: json!(1),
            actor: "alice".into(),
        },
        "Cancel" => Input::Cancel {
            actor: "alice".into(),
            reason: None,
        },
        "Retry" => Input::Retry {
            actor: "ops".into(),
            reason: None,
        },
        "Skip" => Input::Skip {
            actor: "ops".into(),
            reason: "by hand".into(),
        },
        "Terminate" => Input::Terminate {
            actor: "ops".into(),
            reason: "stop".into(),
        },
        other => panic!("no input {other}"),
    }
}

/// What one input does to a saga in one state: the verdict, the state after, what is recorded.
type Outcomes = [(V, SagaState, &'static [&'static str]); 6];

/// Every saga state × input pair: the verdict, the state after, and what is recorded.
#[test]
fn transition_table() {
    #[rustfmt::skip]
    let table: &[(&str, Outcomes)] = &[
        // input            running / compensating / suspended / completed / compensated / terminated
        ("Start", [
            (V::I, S::Running, &[]), (V::I, S::Compensating, &[]), (V::I, S::Suspended, &[]),
            (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]), (V::I, S::Terminated, &[])]),
        ("Reply", [
            (V::A, S::Running, &["reply_received", "step_succeeded", "command_dispatched"]),
            (V::A, S::Compensating, &["reply_received", "step_succeeded", "command_dispatched"]),
            (V::I, S::Suspended, &["reply_ignored"]),
            (V::I, S::Completed, &["reply_ignored"]),
            (V::I, S::Compensated, &["reply_ignored"]),
            (V::I, S::Terminated, &["reply_ignored"])]),
        ("Reply(unknown)", [
            (V::I, S::Running, &[]), (V::I, S::Compensating, &[]), (V::I, S::Suspended, &[]),
            (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]), (V::I, S::Terminated, &[])]),
        ("MalformedReply", [
            (V::I, S::Running, &["reply_ignored"]), (V::I, S::Compensating, &["reply_ignored"]),
            (V::I, S::Suspended, &["reply_ignored"]), (V::I, S::Completed, &["reply_ignored"]),
            (V::I, S::Compensated, &["reply_ignored"]), (V::I, S::Terminated, &["reply_ignored"])]),
        ("AttemptTimedOut", [
            (V::A, S::Running, &["attempt_timed_out", "retry_scheduled"]),
            // A do still out after a cancel is not retried: it ends timed_out and is compensated.
            (V::A, S::Compensating, &["attempt_timed_out", "step_failed", "command_dispatched"]),
            (V::I, S::Suspended, &[]), (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]),
            (V::I, S::Terminated, &[])]),
        // No retry is pending in any of these sagas: the timer is stale.
        ("BackoffElapsed", [
            (V::I, S::Running, &[]), (V::I, S::Compensating, &[]), (V::I, S::Suspended, &[]),
            (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]), (V::I, S::Terminated, &[])]),
        // The await is not waiting in any of these sagas.
        ("AwaitLapsed", [
            (V::I, S::Running, &[]), (V::I, S::Compensating, &[]), (V::I, S::Suspended, &[]),
            (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]), (V::I, S::Terminated, &[])]),
        ("DeadlinePassed", [
            (V::A, S::Compensating, &["deadline_passed", "compensation_started"]),
            (V::I, S::Compensating, &[]), (V::I, S::Suspended, &[]),
            (V::I, S::Completed, &[]), (V::I, S::Compensated, &[]), (V::I, S::Terminated, &[])]),
        ("Signal", [
            (V::A, S::Running, &["signal_received"]),
            (V::R, S::Compensating, &["signal_ignored"]), (V::R, S::Suspended, &["signal_ignored"]),
            // Completed: the await had its event.
            (V::R, S::Completed, &["signal_ignored"]), (V::R, S::Compensated, &["signal_ignored"]),
            (V::R, S::Terminated, &["signal_ignored"])]),
        ("Cancel", [
            (V::A, S::Compensating, &["cancel_requested", "compensation_started"]),
            (V::R, S::Compensating, &[]), (V::R, S::Suspended, &[]),
            (V::R, S::Completed, &[]), (V::R, S::Compensated, &[]), (V::R, S::Terminated, &[])]),
        ("Retry", [
            (V::R, S::Running, &[]), (V::R, S::Compensating, &[]),
            (V::A, S::Compensating, &["operator_retry", "command_dispatched"]),
            (V::R, S::Completed, &[]), (V::R, S::Compensated, &[]), (V::R, S::Terminated, &[])]),
        ("Skip", [
            (V::R, S::Running, &[]), (V::R, S::Compensating, &[]),
            (V::A, S::Compensated, &["operator_skip", "saga_compensated"]),
            (V::R, S::Completed, &[]), (V::R, S::Compensated, &[]), (V::R, S::Terminated, &[])]),
        ("Terminate", [
            (V::A, S::Terminated, &["operator_terminate", "saga_terminated"]),
            (V::A, S::Terminated, &["operator_terminate", "saga_terminated"]),
            (V::A, S::Terminated, &["operator_terminate", "saga_terminated"]),
            (V::R, S::Completed, &[]), (V::R, S::Compensated, &[]), (V::R, S::Terminated, &[])]),
    ];
    for (name, row) in table {
        for (state, (verdict, after, kinds)) in SagaState::ALL.into_iter().zip(row) {
            let mut d = order_in(state);
            let before = d.saga.clone();
            let got = d.feed(input_named(name, &d));
            let got = match got {
                Verdict::Accepted => V::A,
                Verdict::Ignored => V::I,
                Verdict::Refused { .. } => V::R,
            };
            let at = format!("{name} in {}", state.as_str());
            assert_eq!(got, *verdict, "verdict of {at}");
            assert_eq!(d.saga.state, *after, "state after {at}");
            assert_eq!(d.kinds(), *kinds, "history of {at}");
            if *verdict != V::A {
                assert_eq!(d.saga.revision, before.revision, "revision after {at}");
                let mut same = before.clone();
                same.history_seq = d.saga.history_seq;
                // Only the fate of a command may change (a reply came for it).
                same.steps = d.saga.steps.clone();
                assert_eq!(d.saga, same, "{at} changed the saga");
                assert_eq!(view(&d.saga), view(&before));
            }
        }
    }
}

#[test]
fn ignored_and_refused_entries_say_why() {
    // A reply to a command of a terminated saga that was still out: nothing awaits it.
    let mut d = order_in(S::Terminated);
    d.ok(d.do_id("reserve", 1), json!(1));
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("unexpected")
    );
    // The second reply to it is a duplicate.
    d.ok(d.do_id("reserve", 1), json!(1));
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );

    for state in [S::Suspended, S::Completed, S::Compensated] {
        let mut d = order_in(state);
        let last = d.dispatched.last().expect("sent").command_id;
        d.ok(last, json!(1));
        let e = d.entry("reply_ignored");
        assert_eq!(e.reason.as_deref(), Some("duplicate"), "in {state:?}");
        assert_eq!(e.command_id, Some(last));
    }

    let mut d = order_in(S::Running);
    let id = d.do_id("reserve", 1);
    d.feed(Input::MalformedReply {
        command_id: id,
        reason: "no status".into(),
    });
    let e = d.entry("reply_ignored");
    assert_eq!(e.reason.as_deref(), Some("malformed"));
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("reserve"), Some(1), Some(id))
    );
    assert_eq!(e.data["error"], "no status");
    assert_eq!(e.data["kind"], "do");
    // The attempt is still awaited: its good reply counts.
    assert_eq!(d.ok(id, json!({ "r": 1 })), Verdict::Accepted);
    assert_eq!(d.state_of("reserve"), St::Succeeded);

    // Refused signals are recorded with the actor and why.
    let mut d = order_in(S::Compensating);
    let v = d.signal("buyer_signed", json!(1));
    assert!(matches!(v, Verdict::Refused { .. }));
    let e = d.entry("signal_ignored");
    assert_eq!(e.actor.as_deref(), Some("alice"));
    assert_eq!(e.reason.as_deref(), Some("unexpected"));
    assert_eq!(e.data["event"], "buyer_signed");

    // A signal to a completed saga whose await had it: already delivered.
    let mut d = order_in(S::Completed);
    d.signal("buyer_signed", json!(1));
    assert_eq!(
        d.entry("signal_ignored").reason.as_deref(),
        Some("duplicate")
    );

    // Refused operator actions and cancels change nothing and record nothing.
    for state in SagaState::ALL {
        let mut d = order_in(state);
        let before = d.saga.clone();
        if state != S::Running {
            assert!(matches!(d.cancel(), Verdict::Refused { .. }));
        }
        if state != S::Suspended {
            assert!(matches!(d.retry(), Verdict::Refused { .. }));
            assert!(matches!(d.skip(), Verdict::Refused { .. }));
        }
        if state.is_terminal() {
            assert!(matches!(d.terminate(), Verdict::Refused { .. }));
        }
        assert_eq!(d.saga, before);
    }
}

// ----- forward path ----------------------------------------------------------------------------

#[test]
fn happy_path() {
    let mut d = Driver::new(saga_of(vec![
        task("reserve", true),
        task("charge", true),
        task("confirm", false),
    ]));
    assert_eq!(d.saga.revision, 1);
    assert_eq!(d.saga.state, S::Running);
    assert_eq!(d.kinds(), ["saga_started", "command_dispatched"]);
    assert_eq!(d.history[0].actor.as_deref(), Some("anonymous"));
    assert_eq!(
        d.history[0].data,
        json!({ "definition": "test", "version": 1 })
    );
    assert_eq!(d.saga.deadline, None);
    let c = d.sent()[0].clone();
    assert_eq!(
        (
            c.step,
            c.step_name.as_str(),
            c.task.as_str(),
            c.kind,
            c.attempt
        ),
        (0, "reserve", "reserve.do", Do, 1)
    );
    assert_eq!(c.idempotency_key, format!("{SAGA_ID}/reserve/do"));
    assert_eq!(c.compensates, None);
    assert_eq!(c.results, json!({}));
    assert_eq!(c.input, json!({ "order": 1 }));
    assert_eq!(c.timeout, secs(10));
    let e = d.entry("command_dispatched");
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("reserve"), Some(1), Some(c.command_id))
    );
    assert_eq!(e.data, json!({ "task": "reserve.do", "kind": "do" }));
    assert_eq!(d.step_states(), [St::Running, St::Pending, St::Pending]);
    assert_eq!(d.step("reserve").attempts, 1);
    assert_eq!(d.step("reserve").started_at, Some(t0()));
    assert_eq!(d.step("charge").started_at, None);
    let attempt = Timer::Attempt {
        command_id: c.command_id,
    };
    assert_eq!(
        d.armed(&attempt),
        Some(t0() + chrono::Duration::seconds(10))
    );
    assert_eq!(
        d.saga.wait_until,
        Some(t0() + chrono::Duration::seconds(10))
    );

    d.tick(secs(1));
    assert_eq!(
        d.ok(c.command_id, json!({ "reservation": 7 })),
        Verdict::Accepted
    );
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_succeeded", "command_dispatched"]
    );
    let e = d.entry("reply_received");
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("reserve"), Some(1), Some(c.command_id))
    );
    assert_eq!(
        d.entry("step_succeeded").data["output"],
        json!({ "reservation": 7 })
    );
    assert!(d.effects.contains(&Effect::Cancel(attempt.clone())));
    assert_eq!(d.armed(&attempt), None);
    assert_eq!(d.saga.revision, 2);
    assert_eq!(d.step("reserve").finished_at, Some(d.now));
    assert_eq!(d.step("reserve").output, Some(json!({ "reservation": 7 })));
    let charge = d.sent()[0].clone();
    assert_eq!((charge.step_name.as_str(), charge.attempt), ("charge", 1));
    assert_eq!(charge.results, json!({ "reserve": { "reservation": 7 } }));

    d.ok(charge.command_id, json!({ "payment": "p1" }));
    assert_eq!(d.saga.revision, 3);
    let confirm = d.sent()[0].clone();
    assert_eq!(confirm.step_name, "confirm");
    assert_eq!(
        confirm.results,
        json!({ "reserve": { "reservation": 7 }, "charge": { "payment": "p1" } })
    );

    d.ok(confirm.command_id, json!(null));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_succeeded", "saga_completed"]
    );
    assert_eq!(d.saga.state, S::Completed);
    assert_eq!(d.saga.revision, 4);
    assert_eq!(
        d.saga.output,
        Some(
            json!({ "reserve": { "reservation": 7 }, "charge": { "payment": "p1" }, "confirm": null })
        )
    );
    assert_eq!(d.saga.failure, None);
    assert_eq!(d.lifecycle, [S::Completed]);
    assert!(d.effects.contains(&Effect::CancelAll));
    assert!(d.timers.is_empty());
    assert_eq!(d.step_states(), [St::Succeeded; 3]);
    assert_eq!(d.saga.wait_until, None);
    let seqs: Vec<i64> = d.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=d.history.len() as i64).collect::<Vec<_>>());
}

#[test]
fn retryable_error_then_success() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", false)]));
    let first = d.do_id("a", 1);
    assert_eq!(d.fail(first, "busy", true), Verdict::Accepted);
    assert_eq!(d.kinds(), ["reply_received", "retry_scheduled"]);
    let e = d.entry("retry_scheduled");
    assert_eq!((e.step.as_deref(), e.attempt), (Some("a"), Some(2)));
    assert_eq!(e.data["kind"], "do");
    assert_eq!(e.data["backoff"], "1s");
    assert_eq!(d.state_of("a"), St::Running);
    assert_eq!(d.step("a").attempts, 1);
    assert_eq!(
        d.step("a").error.as_ref().map(|e| e.code.as_str()),
        Some("busy")
    );
    // The error is visible: a new revision.
    assert_eq!(d.saga.revision, 2);
    let backoff = Timer::Backoff { step: 0 };
    assert_eq!(d.armed(&backoff), Some(t0() + chrono::Duration::seconds(1)));
    assert_eq!(d.saga.wait_until, Some(t0() + chrono::Duration::seconds(1)));

    assert_eq!(d.fire(&backoff), Verdict::Accepted);
    assert_eq!(d.kinds(), ["command_dispatched"]);
    assert_eq!(d.sent_brief(), [brief("a", Do, 2)]);
    assert_eq!(d.step("a").attempts, 2);
    assert_eq!(d.saga.revision, 3);
    assert_eq!(
        d.command("a", Do, 2).idempotency_key,
        d.command("a", Do, 1).idempotency_key
    );

    // The second backoff doubles.
    d.fail(d.do_id("a", 2), "busy", true);
    assert_eq!(d.entry("retry_scheduled").data["backoff"], "2s");
    assert_eq!(d.entry("retry_scheduled").attempt, Some(3));
    assert_eq!(
        d.armed(&backoff),
        Some(d.now + chrono::Duration::seconds(2))
    );
    d.fire(&backoff);
    d.ok(d.do_id("a", 3), json!("done"));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_succeeded", "command_dispatched"]
    );
    assert_eq!(d.state_of("a"), St::Succeeded);
    assert_eq!(d.step("a").attempts, 3);
    // The last error reply stays as the step's error.
    assert_eq!(
        d.step("a").error.as_ref().map(|e| e.code.as_str()),
        Some("busy")
    );
}

#[test]
fn retries_spent_on_errors_fail_the_step() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        with_attempts(task("b", true), 2, 2),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    d.fail(d.do_id("b", 1), "busy", true);
    d.fire(&Timer::Backoff { step: 1 });
    d.fail(d.do_id("b", 2), "still_busy", true);
    assert_eq!(
        d.kinds(),
        [
            "reply_received",
            "step_failed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.state_of("b"), St::Failed);
    let f = d.saga.failure.clone().expect("failed");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("b"), "still_busy")
    );
    // b said it did nothing: only a is compensated.
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
}

#[test]
fn non_retryable_failure_compensates_earlier_steps_in_reverse() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        task("b", true),
        task("c", true),
        task("d", true),
    ]));
    d.ok(d.do_id("a", 1), json!({ "a": 1 }));
    d.ok(d.do_id("b", 1), json!({ "b": 1 }));
    d.tick(secs(3));
    let rev = d.saga.revision;
    assert_eq!(
        d.fail(d.do_id("c", 1), "card_declined", false),
        Verdict::Accepted
    );
    assert_eq!(
        d.kinds(),
        [
            "reply_received",
            "step_failed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.saga.revision, rev + 1);
    assert_eq!(d.saga.state, S::Compensating);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("c"), "card_declined")
    );
    assert_eq!(f.message, "card_declined happened");
    assert_eq!(f.at, d.now);
    assert_eq!(d.entry("step_failed").step.as_deref(), Some("c"));
    assert_eq!(d.entry("step_failed").data["code"], "card_declined");
    assert_eq!(
        d.entry("compensation_started").data["cause"],
        "card_declined"
    );
    assert_eq!(d.state_of("c"), St::Failed);
    let error = d.step("c").error.clone().expect("c's error");
    assert_eq!(
        (error.code.as_str(), error.retryable),
        ("card_declined", false)
    );
    assert_eq!(d.state_of("d"), St::Pending);

    let undo_b = d.sent()[0].clone();
    assert_eq!(
        (undo_b.step_name.as_str(), undo_b.task.as_str()),
        ("b", "b.undo")
    );
    assert_eq!((undo_b.kind, undo_b.attempt), (Compensate, 1));
    assert_eq!(undo_b.idempotency_key, format!("{SAGA_ID}/b/compensate"));
    assert_eq!(
        undo_b.compensates.as_ref(),
        Some(&d.command("b", Do, 1).idempotency_key)
    );
    assert_eq!(undo_b.results, json!({ "a": { "a": 1 }, "b": { "b": 1 } }));
    assert_eq!(d.state_of("b"), St::Compensating);
    assert_eq!(d.step("b").attempts, 1, "compensations are not counted");
    assert_eq!(d.step("b").comp_attempts, 1);

    d.ok(undo_b.command_id, json!(null));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_compensated", "command_dispatched"]
    );
    let e = d.entry("step_compensated");
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("b"), Some(1), Some(undo_b.command_id))
    );
    assert_eq!(d.state_of("b"), St::Compensated);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);

    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_compensated", "saga_compensated"]
    );
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(d.lifecycle, [S::Compensated]);
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Compensated, St::Failed, St::Pending]
    );
    assert!(d.timers.is_empty());
    // c was never compensated.
    assert!(
        !d.dispatched
            .iter()
            .any(|c| c.step_name == "c" && c.kind == Compensate)
    );
    assert_eq!(d.saga.output, None);
}

#[test]
fn first_step_failing_compensates_nothing() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    d.fail(d.do_id("a", 1), "nope", false);
    assert_eq!(
        d.kinds(),
        [
            "reply_received",
            "step_failed",
            "compensation_started",
            "saga_compensated"
        ]
    );
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(d.step_states(), [St::Failed, St::Pending]);
}

#[test]
fn timeouts_retry_then_the_timed_out_step_is_compensated() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        with_attempts(task("b", true), 2, 2),
    ]));
    d.ok(d.do_id("a", 1), json!({ "a": 1 }));
    let b1 = d.do_id("b", 1);
    let rev = d.saga.revision;
    assert_eq!(
        d.fire(&Timer::Attempt { command_id: b1 }),
        Verdict::Accepted
    );
    assert_eq!(d.kinds(), ["attempt_timed_out", "retry_scheduled"]);
    let e = d.entry("attempt_timed_out");
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("b"), Some(1), Some(b1))
    );
    assert_eq!(e.data["kind"], "do");
    assert_eq!(d.entry("retry_scheduled").attempt, Some(2));
    assert_eq!(d.state_of("b"), St::Running);
    // Nothing visible changed (still running, one attempt, no error): no new revision.
    assert_eq!(d.saga.revision, rev);

    d.fire(&Timer::Backoff { step: 1 });
    let b2 = d.do_id("b", 2);
    d.fire(&Timer::Attempt { command_id: b2 });
    assert_eq!(
        d.kinds(),
        [
            "attempt_timed_out",
            "step_failed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    // b timed out (and is being compensated at once).
    assert_eq!(d.entry("step_failed").data["code"], "timed_out");
    assert!(d.step("b").last_timed_out);
    assert_eq!(d.state_of("b"), St::Compensating);
    assert_eq!(d.step("b").error, None);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("b"), "timed_out")
    );
    // Its outcome is unknown: b is compensated, with its do's key and no output of its own.
    let undo_b = d.sent()[0].clone();
    assert_eq!((undo_b.step_name.as_str(), undo_b.kind), ("b", Compensate));
    assert_eq!(undo_b.compensates, Some(format!("{SAGA_ID}/b/do")));
    assert_eq!(undo_b.results, json!({ "a": { "a": 1 } }));

    d.ok(undo_b.command_id, json!(null));
    assert_eq!(d.state_of("b"), St::Compensated);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
}

#[test]
fn a_step_without_compensation_stays_succeeded() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        task("log", false),
        task("b", true),
        task("c", true),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    d.ok(d.do_id("log", 1), json!(2));
    d.ok(d.do_id("b", 1), json!(3));
    d.fail(d.do_id("c", 1), "no", false);
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
    d.ok(d.comp_id("b", 1), json!(null));
    // log has nothing to undo: straight to a.
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Succeeded, St::Compensated, St::Failed]
    );
}

// ----- cancel and deadline ---------------------------------------------------------------------

#[test]
fn cancel_while_a_command_is_out_awaits_it_then_compensates_it() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        task("b", true),
        task("c", true),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    let b1 = d.do_id("b", 1);
    d.tick(secs(2));
    assert_eq!(d.cancel(), Verdict::Accepted);
    assert_eq!(d.kinds(), ["cancel_requested", "compensation_started"]);
    let e = d.entry("cancel_requested");
    assert_eq!(e.actor.as_deref(), Some("alice"));
    assert_eq!(e.reason.as_deref(), Some("changed my mind"));
    assert_eq!(d.entry("compensation_started").data["cause"], "cancelled");
    assert!(d.sent().is_empty(), "nothing is compensated while b is out");
    assert_eq!(d.saga.state, S::Compensating);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("b"), "cancelled")
    );
    assert_eq!(f.message, "changed my mind");
    assert_eq!(d.state_of("b"), St::Running);
    assert!(d.armed(&Timer::Attempt { command_id: b1 }).is_some());

    // b's ok comes: b succeeded and is compensated first, then a.
    assert_eq!(d.ok(b1, json!(2)), Verdict::Accepted);
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_succeeded", "command_dispatched"]
    );
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
    d.ok(d.comp_id("b", 1), json!(null));
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Compensated, St::Pending]
    );
    // The failure says cancelled, whatever came after.
    assert_eq!(
        d.saga.failure.as_ref().map(|f| f.code.as_str()),
        Some("cancelled")
    );
}

#[test]
fn cancel_while_a_command_is_out_and_it_fails() {
    for retryable in [false, true] {
        let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
        d.ok(d.do_id("a", 1), json!(1));
        d.cancel();
        // Off the forward path a retryable error is not retried: b ends failed, not compensated.
        d.fail(d.do_id("b", 1), "declined", retryable);
        assert_eq!(
            d.kinds(),
            ["reply_received", "step_failed", "command_dispatched"]
        );
        assert_eq!(d.state_of("b"), St::Failed);
        assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
        assert_eq!(
            d.saga.failure.as_ref().map(|f| f.code.as_str()),
            Some("cancelled")
        );
        d.ok(d.comp_id("a", 1), json!(null));
        assert_eq!(d.saga.state, S::Compensated);
        assert_eq!(d.step_states(), [St::Compensated, St::Failed]);
    }
}

#[test]
fn cancel_while_a_command_is_out_and_it_times_out() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    d.ok(d.do_id("a", 1), json!(1));
    d.cancel();
    let b1 = d.do_id("b", 1);
    d.fire(&Timer::Attempt { command_id: b1 });
    // Not retried: b timed out and is compensated.
    assert_eq!(
        d.kinds(),
        ["attempt_timed_out", "step_failed", "command_dispatched"]
    );
    assert_eq!(d.entry("step_failed").data["code"], "timed_out");
    assert_eq!(d.step("b").attempts, 1);
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
}

#[test]
fn cancel_while_a_retry_is_pending_ends_the_step_by_its_last_outcome() {
    // After an error: failed, not compensated.
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    d.ok(d.do_id("a", 1), json!(1));
    d.fail(d.do_id("b", 1), "busy", true);
    let backoff = Timer::Backoff { step: 1 };
    assert!(d.armed(&backoff).is_some());
    d.cancel();
    assert_eq!(
        d.kinds(),
        [
            "cancel_requested",
            "step_failed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.state_of("b"), St::Failed);
    assert_eq!(d.step("b").finished_at, Some(d.now));
    assert!(d.effects.contains(&Effect::Cancel(backoff.clone())));
    assert_eq!(d.armed(&backoff), None);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("b"), "cancelled")
    );
    // A stale backoff changes nothing.
    assert_eq!(d.fire_stale(&backoff), Verdict::Ignored);
    assert!(d.entries.is_empty());

    // After a timeout: timed out, and compensated.
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    d.ok(d.do_id("a", 1), json!(1));
    let b1 = d.do_id("b", 1);
    d.fire(&Timer::Attempt { command_id: b1 });
    d.cancel();
    assert_eq!(
        d.kinds(),
        [
            "cancel_requested",
            "step_failed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
    assert_eq!(d.step("b").finished_at, Some(d.now));
    // b1's ok now comes: too late, b is being compensated.
    assert_eq!(d.ok(b1, json!(1)), Verdict::Ignored);
    assert_eq!(d.entry("reply_ignored").reason.as_deref(), Some("late"));
    d.ok(d.comp_id("b", 1), json!(null));
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
}

#[test]
fn a_step_timed_out_without_compensation_shows_timed_out() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", false)]));
    d.ok(d.do_id("a", 1), json!(1));
    d.fire(&Timer::Attempt {
        command_id: d.do_id("b", 1),
    });
    d.cancel();
    assert_eq!(d.state_of("b"), St::TimedOut);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);

    // In a group: the member waiting for its retry after a timeout is compensated with the rest.
    let mut d = Driver::new(grouped());
    d.ok(d.do_id("a", 1), json!(1));
    d.fire(&Timer::Attempt {
        command_id: d.do_id("c", 1),
    });
    d.fail(d.do_id("b", 1), "no", false);
    assert_eq!(d.saga.failure.as_ref().map(|f| f.code.as_str()), Some("no"));
    assert_eq!(d.sent_brief(), [brief("c", Compensate, 1)]);
    assert_eq!(d.state_of("b"), St::Failed);
}

#[test]
fn deadline_passing_compensates() {
    let mut d = Driver::new(definition(json!({
        "name": "test",
        "timeout": "1m",
        "steps": [task("a", true), task("b", true)],
    })));
    let deadline = t0() + chrono::Duration::seconds(60);
    assert_eq!(d.saga.deadline, Some(deadline));
    assert_eq!(d.armed(&Timer::SagaDeadline), Some(deadline));
    d.ok(d.do_id("a", 1), json!(1));
    let b1 = d.do_id("b", 1);
    // b's attempt timer (10s) has not fired; the deadline does.
    d.tick(secs(55));
    assert_eq!(d.fire(&Timer::SagaDeadline), Verdict::Accepted);
    assert_eq!(d.now, deadline);
    assert_eq!(d.kinds(), ["deadline_passed", "compensation_started"]);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("b"), "deadline_exceeded")
    );
    assert_eq!(d.saga.state, S::Compensating);
    // b is still awaited; the deadline never cuts compensation short.
    d.ok(b1, json!(2));
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
    d.tick(secs(3600));
    assert_eq!(d.feed(Input::DeadlinePassed), Verdict::Ignored);
    d.ok(d.comp_id("b", 1), json!(null));
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(
        d.saga.failure.as_ref().map(|f| f.code.as_str()),
        Some("deadline_exceeded")
    );
}

#[test]
fn deadline_timer_is_disarmed_when_the_saga_ends_or_leaves_the_forward_path() {
    let def = definition(json!({ "name": "test", "timeout": "1h", "steps": [task("a", true)] }));
    let mut d = Driver::new(def.clone());
    d.ok(d.do_id("a", 1), json!(1));
    assert_eq!(d.saga.state, S::Completed);
    assert_eq!(d.armed(&Timer::SagaDeadline), None);

    let mut d = Driver::new(def);
    d.cancel();
    assert!(d.effects.contains(&Effect::Cancel(Timer::SagaDeadline)));
    assert_eq!(d.armed(&Timer::SagaDeadline), None);
}

#[test]
fn deadline_while_an_await_waits_skips_it() {
    let mut d = Driver::new(definition(json!({
        "name": "test",
        "timeout": "10m",
        "steps": [task("a", true), await_step("w", "go"), task("b", true)],
    })));
    d.ok(d.do_id("a", 1), json!(1));
    let lapse = Timer::AwaitDeadline { step: 1 };
    assert!(d.armed(&lapse).is_some());
    d.fire(&Timer::SagaDeadline);
    assert_eq!(
        d.kinds(),
        [
            "deadline_passed",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.state_of("w"), St::Skipped);
    assert_eq!(d.armed(&lapse), None);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("w"), "deadline_exceeded")
    );
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    // The await's timer, were it to fire anyway, changes nothing.
    assert_eq!(d.fire_stale(&lapse), Verdict::Ignored);
}

// ----- compensation failures and the operator --------------------------------------------------

/// a and b succeeded, c failed; b's compensation is out.
fn compensating_b() -> Driver {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        task("b", true),
        task("c", true),
    ]));
    d.ok(d.do_id("a", 1), json!({ "a": 1 }));
    d.ok(d.do_id("b", 1), json!({ "b": 1 }));
    d.fail(d.do_id("c", 1), "declined", false);
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 1)]);
    d
}

#[test]
fn compensation_retries_then_suspends() {
    let mut d = compensating_b();
    d.fail(d.comp_id("b", 1), "bank_down", true);
    assert_eq!(d.kinds(), ["reply_received", "retry_scheduled"]);
    let e = d.entry("retry_scheduled");
    assert_eq!((e.step.as_deref(), e.attempt), (Some("b"), Some(2)));
    assert_eq!(e.data["kind"], "compensate");
    assert_eq!(d.state_of("b"), St::Compensating);
    assert_eq!(
        d.step("b").error.as_ref().map(|e| e.code.as_str()),
        Some("bank_down")
    );
    d.fire(&Timer::Backoff { step: 1 });
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 2)]);
    assert_eq!(
        d.command("b", Compensate, 2).idempotency_key,
        d.command("b", Compensate, 1).idempotency_key
    );
    // The budget (2) is spent.
    d.fail(d.comp_id("b", 2), "bank_down", true);
    assert_eq!(
        d.kinds(),
        ["reply_received", "compensation_failed", "saga_suspended"]
    );
    let e = d.entry("compensation_failed");
    assert_eq!((e.step.as_deref(), e.attempt), (Some("b"), Some(2)));
    assert_eq!(e.data["code"], "bank_down");
    assert_eq!(d.entry("saga_suspended").step.as_deref(), Some("b"));
    assert_eq!(d.saga.state, S::Suspended);
    assert_eq!(d.state_of("b"), St::CompensationFailed);
    assert_eq!(d.state_of("a"), St::Succeeded, "a waits for the operator");
    assert_eq!(d.lifecycle, [S::Suspended]);
    assert_eq!(d.saga.wait_until, None);
    // The first cause stays.
    assert_eq!(
        d.saga.failure.as_ref().map(|f| f.code.as_str()),
        Some("declined")
    );
}

#[test]
fn compensation_timeouts_count_as_attempts() {
    let mut d = compensating_b();
    d.fire(&Timer::Attempt {
        command_id: d.comp_id("b", 1),
    });
    assert_eq!(d.kinds(), ["attempt_timed_out", "retry_scheduled"]);
    assert_eq!(d.entry("attempt_timed_out").data["kind"], "compensate");
    d.fire(&Timer::Backoff { step: 1 });
    d.fire(&Timer::Attempt {
        command_id: d.comp_id("b", 2),
    });
    assert_eq!(
        d.kinds(),
        ["attempt_timed_out", "compensation_failed", "saga_suspended"]
    );
    assert_eq!(d.entry("compensation_failed").data["code"], "timed_out");
}

#[test]
fn a_non_retryable_compensation_error_suspends_at_once() {
    let mut d = compensating_b();
    d.fail(d.comp_id("b", 1), "refused", false);
    assert_eq!(
        d.kinds(),
        ["reply_received", "compensation_failed", "saga_suspended"]
    );
    assert_eq!(d.saga.state, S::Suspended);
    assert_eq!(d.step("b").comp_attempts, 1);
}

#[test]
fn an_ok_for_an_earlier_compensation_attempt_counts() {
    let mut d = compensating_b();
    let u1 = d.comp_id("b", 1);
    d.fire(&Timer::Attempt { command_id: u1 });
    // The retry is pending: u1's error is late, its ok counts.
    assert_eq!(d.fail(u1, "x", false), Verdict::Ignored);
    assert_eq!(d.entry("reply_ignored").reason.as_deref(), Some("late"));
    assert_eq!(d.state_of("b"), St::Compensating);

    let mut d = compensating_b();
    let u1 = d.comp_id("b", 1);
    d.fire(&Timer::Attempt { command_id: u1 });
    d.fire(&Timer::Backoff { step: 1 });
    let u2 = d.comp_id("b", 2);
    assert_eq!(d.ok(u1, json!(null)), Verdict::Accepted);
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_compensated", "command_dispatched"]
    );
    assert_eq!(d.state_of("b"), St::Compensated);
    assert_eq!(d.armed(&Timer::Attempt { command_id: u2 }), None);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    // u2's reply now changes nothing.
    assert_eq!(d.ok(u2, json!(null)), Verdict::Ignored);
}

/// [`compensating_b`], suspended on b's second failed attempt.
fn suspended_on_b() -> Driver {
    let mut d = compensating_b();
    d.fail(d.comp_id("b", 1), "bank_down", true);
    d.fire(&Timer::Backoff { step: 1 });
    d.fail(d.comp_id("b", 2), "bank_down", true);
    assert_eq!(d.saga.state, S::Suspended);
    d
}

#[test]
fn operator_retry_grants_a_fresh_budget_and_attempts_keep_counting() {
    let mut d = suspended_on_b();
    let rev = d.saga.revision;
    assert_eq!(d.retry(), Verdict::Accepted);
    assert_eq!(d.kinds(), ["operator_retry", "command_dispatched"]);
    let e = d.entry("operator_retry");
    assert_eq!(e.actor.as_deref(), Some("ops"));
    assert_eq!(e.reason.as_deref(), Some("the bank is back"));
    assert_eq!(d.saga.state, S::Compensating);
    assert_eq!(d.saga.revision, rev + 1);
    assert_eq!(d.state_of("b"), St::Compensating);
    assert_eq!(d.step("b").finished_at, None);
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 3)]);
    assert_eq!(
        d.sent()[0].results,
        json!({ "a": { "a": 1 }, "b": { "b": 1 } })
    );
    // A fresh budget of two: one retry again.
    d.fail(d.comp_id("b", 3), "bank_down", true);
    assert_eq!(d.kinds(), ["reply_received", "retry_scheduled"]);
    assert_eq!(d.entry("retry_scheduled").attempt, Some(4));
    assert_eq!(d.entry("retry_scheduled").data["backoff"], "1s");
    d.fire(&Timer::Backoff { step: 1 });
    d.fail(d.comp_id("b", 4), "bank_down", true);
    assert_eq!(d.saga.state, S::Suspended);
    assert_eq!(d.lifecycle, [S::Suspended, S::Suspended]);
    // And again; this time it works and compensation goes on with a.
    d.retry();
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 5)]);
    d.ok(d.comp_id("b", 5), json!(null));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_compensated", "command_dispatched"]
    );
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Compensated, St::Failed]
    );
    // Replies to the attempts before the retry change nothing.
    assert_eq!(d.ok(d.comp_id("b", 2), json!(null)), Verdict::Ignored);
}

#[test]
fn operator_skip_goes_on_compensating_earlier_stages() {
    let mut d = suspended_on_b();
    assert_eq!(d.skip(), Verdict::Accepted);
    assert_eq!(d.kinds(), ["operator_skip", "command_dispatched"]);
    let e = d.entry("operator_skip");
    assert_eq!(e.actor.as_deref(), Some("ops"));
    assert_eq!(e.reason.as_deref(), Some("refunded by hand"));
    assert_eq!(d.state_of("b"), St::Skipped);
    assert_eq!(d.step("b").finished_at, Some(d.now));
    assert_eq!(d.saga.state, S::Compensating);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    // a fails too: suspended again, skipped again, and the saga ends compensated.
    d.fail(d.comp_id("a", 1), "no", false);
    assert_eq!(d.saga.state, S::Suspended);
    d.skip();
    assert_eq!(d.kinds(), ["operator_skip", "saga_compensated"]);
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(d.step_states(), [St::Skipped, St::Skipped, St::Failed]);
    assert_eq!(d.lifecycle, [S::Suspended, S::Suspended, S::Compensated]);
}

#[test]
fn terminate_from_running_compensating_and_suspended() {
    // Running: the failure says terminated, the reason is the message.
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    d.ok(d.do_id("a", 1), json!(1));
    let b1 = d.do_id("b", 1);
    assert_eq!(d.terminate(), Verdict::Accepted);
    assert_eq!(d.kinds(), ["operator_terminate", "saga_terminated"]);
    let e = d.entry("operator_terminate");
    assert_eq!(
        (e.actor.as_deref(), e.reason.as_deref()),
        (Some("ops"), Some("give up"))
    );
    assert_eq!(d.saga.state, S::Terminated);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step, f.code.as_str(), f.message.as_str()),
        (None, "terminated", "give up")
    );
    assert!(d.sent().is_empty(), "no compensation");
    assert!(d.effects.contains(&Effect::CancelAll));
    assert!(d.timers.is_empty());
    assert_eq!(d.lifecycle, [S::Terminated]);
    assert_eq!(d.saga.wait_until, None);
    // b's reply comes after the end.
    assert_eq!(d.ok(b1, json!(1)), Verdict::Ignored);
    assert_eq!(d.kinds(), ["reply_ignored"]);

    // Compensating: the first cause stays.
    let mut d = compensating_b();
    d.terminate();
    assert_eq!(d.saga.state, S::Terminated);
    assert_eq!(
        d.saga.failure.as_ref().map(|f| f.code.as_str()),
        Some("declined")
    );
    assert!(d.sent().is_empty());

    // Suspended.
    let mut d = suspended_on_b();
    d.terminate();
    assert_eq!(d.saga.state, S::Terminated);
    assert_eq!(
        d.saga.failure.as_ref().map(|f| f.code.as_str()),
        Some("declined")
    );
    assert_eq!(d.lifecycle, [S::Suspended, S::Terminated]);
    // Terminal: refused.
    assert!(matches!(d.terminate(), Verdict::Refused { .. }));
    assert!(d.entries.is_empty());
}

// ----- replies that are not awaited ------------------------------------------------------------

#[test]
fn a_duplicate_reply_is_ignored() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    let a1 = d.do_id("a", 1);
    d.ok(a1, json!(1));
    let rev = d.saga.revision;
    let saga = d.saga.clone();
    assert_eq!(d.ok(a1, json!(1)), Verdict::Ignored);
    assert_eq!(d.kinds(), ["reply_ignored"]);
    let e = d.entry("reply_ignored");
    assert_eq!(e.reason.as_deref(), Some("duplicate"));
    assert_eq!(
        (e.step.as_deref(), e.attempt, e.command_id),
        (Some("a"), Some(1), Some(a1))
    );
    assert_eq!(e.data["status"], "ok");
    assert_eq!(d.saga.revision, rev);
    assert!(d.effects.is_empty());
    assert_eq!(d.saga.steps, saga.steps);
    // An error for it after the fact is a duplicate as well.
    assert_eq!(d.fail(a1, "oops", false), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(d.state_of("a"), St::Succeeded);
}

#[test]
fn a_late_error_for_a_timed_out_attempt_is_ignored() {
    let mut d = Driver::new(saga_of(vec![task("a", true)]));
    let a1 = d.do_id("a", 1);
    d.fire(&Timer::Attempt { command_id: a1 });
    // While the retry is pending.
    assert_eq!(d.fail(a1, "boom", false), Verdict::Ignored);
    assert_eq!(d.entry("reply_ignored").reason.as_deref(), Some("late"));
    assert_eq!(d.state_of("a"), St::Running);
    // And while the next attempt is out.
    d.fire(&Timer::Backoff { step: 0 });
    let a2 = d.do_id("a", 2);
    // A second copy of the same reply: that command already had its reply.
    assert_eq!(d.fail(a1, "boom", false), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(d.out("a"), a2);
    assert_eq!(d.step("a").error, None);
    d.ok(a2, json!(1));
    assert_eq!(d.saga.state, S::Completed);
}

#[test]
fn an_ok_for_an_earlier_attempt_counts_as_success() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    let a1 = d.do_id("a", 1);
    d.fire(&Timer::Attempt { command_id: a1 });
    d.fire(&Timer::Backoff { step: 0 });
    let a2 = d.do_id("a", 2);
    assert_eq!(d.ok(a1, json!("first")), Verdict::Accepted);
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_succeeded", "command_dispatched"]
    );
    assert_eq!(d.entry("reply_received").attempt, Some(1));
    assert_eq!(d.step("a").output, Some(json!("first")));
    assert_eq!(d.step("a").attempts, 2);
    // a2 is no longer awaited: its timer is off, its reply changes nothing.
    assert_eq!(d.armed(&Timer::Attempt { command_id: a2 }), None);
    assert_eq!(d.ok(a2, json!("second")), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("unexpected")
    );
    assert_eq!(d.step("a").output, Some(json!("first")));
    assert_eq!(d.fail(a2, "x", false), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(
        d.fire_stale(&Timer::Attempt { command_id: a2 }),
        Verdict::Ignored
    );
}

#[test]
fn an_ok_for_a_timed_out_attempt_while_its_retry_waits_counts() {
    let mut d = Driver::new(saga_of(vec![task("a", true), task("b", true)]));
    let a1 = d.do_id("a", 1);
    d.fire(&Timer::Attempt { command_id: a1 });
    let backoff = Timer::Backoff { step: 0 };
    assert!(d.armed(&backoff).is_some());
    assert_eq!(d.ok(a1, json!(1)), Verdict::Accepted);
    assert_eq!(d.state_of("a"), St::Succeeded);
    assert_eq!(d.armed(&backoff), None, "the retry is called off");
    assert_eq!(d.sent_brief(), [brief("b", Do, 1)]);
    assert_eq!(d.fire_stale(&backoff), Verdict::Ignored);
    assert_eq!(d.step("a").attempts, 1);
}

#[test]
fn a_redelivered_error_of_an_earlier_attempt_is_a_duplicate() {
    let mut d = Driver::new(saga_of(vec![task("a", true)]));
    let a1 = d.do_id("a", 1);
    d.fail(a1, "busy", true);
    d.fire(&Timer::Backoff { step: 0 });
    // A redelivered error reply of attempt 1: its reply had come already.
    assert_eq!(d.fail(a1, "busy", true), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(d.state_of("a"), St::Running);
}

#[test]
fn stale_timers_are_ignored() {
    let mut d = Driver::new(saga_of(vec![task("a", true), await_step("w", "go")]));
    let a1 = d.do_id("a", 1);
    d.ok(a1, json!(1));
    let saga = d.saga.clone();
    for timer in [
        Timer::Attempt { command_id: a1 },
        Timer::Attempt {
            command_id: Uuid::from_u128(999_999),
        },
        Timer::Backoff { step: 0 },
        Timer::Backoff { step: 1 },
        Timer::Backoff { step: 77 },
        Timer::AwaitDeadline { step: 0 },
        Timer::AwaitDeadline { step: 77 },
    ] {
        assert_eq!(d.fire_stale(&timer), Verdict::Ignored, "{timer:?}");
        assert!(d.entries.is_empty());
        assert!(d.effects.is_empty());
        assert_eq!(d.saga, saga);
    }
}

#[test]
fn a_reply_after_the_saga_ended_is_ignored() {
    let mut d = Driver::new(saga_of(vec![task("a", true)]));
    let a1 = d.do_id("a", 1);
    d.fire(&Timer::Attempt { command_id: a1 });
    d.fire(&Timer::Backoff { step: 0 });
    let a2 = d.do_id("a", 2);
    d.ok(a2, json!(2));
    assert_eq!(d.saga.state, S::Completed);
    let saga = d.saga.clone();
    assert_eq!(d.ok(a1, json!(1)), Verdict::Ignored);
    assert_eq!(d.entry("reply_ignored").reason.as_deref(), Some("late"));
    assert_eq!(d.ok(a2, json!(2)), Verdict::Ignored);
    assert_eq!(
        d.entry("reply_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(d.saga.revision, saga.revision);
    assert_eq!(d.saga.output, saga.output);
}

// ----- awaits ----------------------------------------------------------------------------------

fn with_await() -> Definition {
    saga_of(vec![
        task("a", true),
        await_step("w", "go"),
        task("b", true),
    ])
}

#[test]
fn a_signal_while_waiting_completes_the_await() {
    let mut d = Driver::new(with_await());
    d.tick(secs(1));
    d.ok(d.do_id("a", 1), json!({ "a": 1 }));
    assert_eq!(d.kinds(), ["reply_received", "step_succeeded"]);
    assert!(d.sent().is_empty());
    assert_eq!(d.state_of("w"), St::Running);
    assert_eq!(d.step("w").started_at, Some(d.now));
    assert_eq!(d.step("w").attempts, 0);
    let lapse = Timer::AwaitDeadline { step: 1 };
    assert_eq!(d.armed(&lapse), Some(d.now + chrono::Duration::hours(1)));
    assert_eq!(d.saga.wait_until, Some(d.now + chrono::Duration::hours(1)));

    d.tick(secs(60));
    let rev = d.saga.revision;
    assert_eq!(d.signal("go", json!({ "signed": true })), Verdict::Accepted);
    assert_eq!(
        d.kinds(),
        ["signal_received", "step_succeeded", "command_dispatched"]
    );
    let e = d.entry("signal_received");
    assert_eq!(e.step.as_deref(), Some("w"));
    assert_eq!(e.actor.as_deref(), Some("alice"));
    assert_eq!(e.data["event"], "go");
    assert_eq!(e.data["early"], false);
    assert_eq!(d.saga.revision, rev + 1);
    assert_eq!(d.step("w").output, Some(json!({ "signed": true })));
    assert_eq!(d.armed(&lapse), None);
    assert_eq!(
        d.sent()[0].results,
        json!({ "a": { "a": 1 }, "w": { "signed": true } })
    );
    // Twice: already delivered.
    let v = d.signal("go", json!(2));
    assert!(matches!(v, Verdict::Refused { .. }));
    assert_eq!(
        d.entry("signal_ignored").reason.as_deref(),
        Some("duplicate")
    );
    assert_eq!(d.step("w").output, Some(json!({ "signed": true })));
    assert_eq!(d.saga.revision, rev + 1);
    // An await is never compensated.
    d.fail(d.do_id("b", 1), "no", false);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Succeeded, St::Failed]
    );
}

#[test]
fn an_early_signal_is_kept_and_consumed_when_reached() {
    let mut d = Driver::new(with_await());
    let rev = d.saga.revision;
    assert_eq!(d.signal("go", json!("early")), Verdict::Accepted);
    assert_eq!(d.kinds(), ["signal_received"]);
    assert_eq!(d.entry("signal_received").data["early"], true);
    assert_eq!(d.entry("signal_received").step.as_deref(), Some("w"));
    assert_eq!(d.saga.revision, rev, "nothing visible changed");
    assert_eq!(d.state_of("w"), St::Pending);
    // A second one before it is reached: a duplicate.
    assert!(matches!(
        d.signal("go", json!("again")),
        Verdict::Refused { .. }
    ));
    assert_eq!(
        d.entry("signal_ignored").reason.as_deref(),
        Some("duplicate")
    );

    d.ok(d.do_id("a", 1), json!(1));
    assert_eq!(
        d.kinds(),
        [
            "reply_received",
            "step_succeeded",
            "step_succeeded",
            "command_dispatched"
        ]
    );
    assert_eq!(d.state_of("w"), St::Succeeded);
    assert_eq!(d.step("w").output, Some(json!("early")));
    assert_eq!(d.armed(&Timer::AwaitDeadline { step: 1 }), None);
    assert!(
        !d.effects
            .iter()
            .any(|e| matches!(e, Effect::Schedule { .. }))
    );
    assert_eq!(d.sent_brief(), [brief("b", Do, 1)]);
    assert!(d.saga.early_signals.is_empty());
    assert!(matches!(d.signal("go", json!(3)), Verdict::Refused { .. }));
    assert_eq!(
        d.entry("signal_ignored").reason.as_deref(),
        Some("duplicate")
    );
}

#[test]
fn early_signals_for_consecutive_awaits_complete_the_saga() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        await_step("w1", "one"),
        await_step("w2", "two"),
    ]));
    d.signal("two", json!(2));
    d.signal("one", json!(1));
    d.ok(d.do_id("a", 1), json!(0));
    assert_eq!(d.saga.state, S::Completed);
    assert_eq!(d.saga.output, Some(json!({ "a": 0, "w1": 1, "w2": 2 })));
}

#[test]
fn a_signal_for_an_unknown_event_is_unexpected() {
    let mut d = Driver::new(with_await());
    let saga = d.saga.clone();
    let v = d.signal("nobody_waits", json!(1));
    assert!(matches!(v, Verdict::Refused { .. }));
    assert_eq!(d.kinds(), ["signal_ignored"]);
    assert_eq!(
        d.entry("signal_ignored").reason.as_deref(),
        Some("unexpected")
    );
    assert_eq!(d.entry("signal_ignored").data["event"], "nobody_waits");
    assert!(d.saga.early_signals.is_empty());
    assert_eq!(d.saga.revision, saga.revision);
}

#[test]
fn an_await_lapsing_compensates_the_saga() {
    let mut d = Driver::new(with_await());
    d.ok(d.do_id("a", 1), json!(1));
    let lapse = Timer::AwaitDeadline { step: 1 };
    assert_eq!(d.fire(&lapse), Verdict::Accepted);
    assert_eq!(
        d.kinds(),
        ["step_failed", "compensation_started", "command_dispatched"]
    );
    assert_eq!(d.entry("step_failed").step.as_deref(), Some("w"));
    assert_eq!(d.state_of("w"), St::TimedOut);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("w"), "timed_out")
    );
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    // Its signal now comes too late.
    assert!(matches!(d.signal("go", json!(1)), Verdict::Refused { .. }));
    assert_eq!(d.entry("signal_ignored").reason.as_deref(), Some("late"));
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert!(matches!(d.signal("go", json!(1)), Verdict::Refused { .. }));
    assert_eq!(d.entry("signal_ignored").reason.as_deref(), Some("late"));
}

#[test]
fn leaving_the_forward_path_skips_a_waiting_await() {
    let mut d = Driver::new(with_await());
    d.ok(d.do_id("a", 1), json!(1));
    d.cancel();
    assert_eq!(
        d.kinds(),
        [
            "cancel_requested",
            "compensation_started",
            "command_dispatched"
        ]
    );
    assert_eq!(d.state_of("w"), St::Skipped);
    assert_eq!(d.step("w").finished_at, Some(d.now));
    assert_eq!(d.armed(&Timer::AwaitDeadline { step: 1 }), None);
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("w"), "cancelled")
    );
    assert_eq!(d.state_of("b"), St::Pending);
}

// ----- parallel groups -------------------------------------------------------------------------

#[test]
fn a_group_runs_its_members_at_once_and_succeeds_when_all_do() {
    let mut d = Driver::new(grouped());
    d.ok(d.do_id("a", 1), json!({ "a": 1 }));
    assert_eq!(
        d.kinds(),
        [
            "reply_received",
            "step_succeeded",
            "command_dispatched",
            "command_dispatched"
        ]
    );
    assert_eq!(d.sent_brief(), [brief("b", Do, 1), brief("c", Do, 1)]);
    for c in d.sent() {
        assert_eq!(c.results, json!({ "a": { "a": 1 } }));
    }
    d.ok(d.do_id("c", 1), json!({ "c": 1 }));
    assert!(d.sent().is_empty(), "b is still out");
    assert_eq!(d.state_of("c"), St::Succeeded);
    d.fail(d.do_id("b", 1), "busy", true);
    d.fire(&Timer::Backoff { step: 1 });
    assert_eq!(d.sent_brief(), [brief("b", Do, 2)]);
    d.ok(d.do_id("b", 2), json!({ "b": 1 }));
    assert_eq!(d.sent_brief(), [brief("d", Do, 1)]);
    assert_eq!(
        d.sent()[0].results,
        json!({ "a": { "a": 1 }, "b": { "b": 1 }, "c": { "c": 1 } })
    );
    d.ok(d.do_id("d", 1), json!(null));
    assert_eq!(d.saga.state, S::Completed);
    let output = d.saga.output.clone().expect("an output");
    assert!(output.get("bc").is_none(), "a group's name is never a key");
    assert_eq!(output.as_object().map(|o| o.len()), Some(4));
}

#[test]
fn a_member_failing_while_another_is_out_awaits_it_then_compensates() {
    // The other member succeeds: it is compensated, then a.
    let mut d = Driver::new(grouped());
    d.ok(d.do_id("a", 1), json!(1));
    d.fail(d.do_id("b", 1), "no", false);
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_failed", "compensation_started"]
    );
    assert!(d.sent().is_empty());
    assert_eq!(d.state_of("c"), St::Running);
    d.ok(d.do_id("c", 1), json!(3));
    assert_eq!(d.sent_brief(), [brief("c", Compensate, 1)]);
    d.ok(d.comp_id("c", 1), json!(null));
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(
        d.step_states(),
        [St::Compensated, St::Failed, St::Compensated, St::Pending]
    );

    // The other member was waiting for its retry: it ends failed, not compensated.
    let mut d = Driver::new(grouped());
    d.ok(d.do_id("a", 1), json!(1));
    d.fail(d.do_id("c", 1), "busy", true);
    d.fail(d.do_id("b", 1), "no", false);
    assert_eq!(d.state_of("c"), St::Failed);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    assert_eq!(d.armed(&Timer::Backoff { step: 2 }), None);
}

#[test]
fn a_group_is_compensated_members_at_once_in_reverse_stage_order() {
    let mut d = Driver::new(saga_of(vec![
        group("g1", vec![task("a", true), task("b", true)]),
        group(
            "g2",
            vec![task("c", true), task("x", false), task("e", true)],
        ),
        task("f", true),
    ]));
    d.ok(d.do_id("b", 1), json!("b"));
    d.ok(d.do_id("a", 1), json!("a"));
    assert_eq!(
        d.sent_brief(),
        [brief("c", Do, 1), brief("x", Do, 1), brief("e", Do, 1)]
    );
    d.ok(d.do_id("e", 1), json!("e"));
    d.ok(d.do_id("x", 1), json!("x"));
    d.ok(d.do_id("c", 1), json!("c"));
    d.fail(d.do_id("f", 1), "no", false);
    assert_eq!(
        d.sent_brief(),
        [brief("c", Compensate, 1), brief("e", Compensate, 1)]
    );
    d.ok(d.comp_id("e", 1), json!(null));
    assert!(d.sent().is_empty(), "c is still being compensated");
    d.ok(d.comp_id("c", 1), json!(null));
    assert_eq!(
        d.sent_brief(),
        [brief("a", Compensate, 1), brief("b", Compensate, 1)]
    );
    d.ok(d.comp_id("b", 1), json!(null));
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(d.state_of("x"), St::Succeeded);
}

#[test]
fn a_group_member_failing_its_compensation_suspends_after_the_others() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        group("g", vec![task("b", true), task("c", true)]),
        task("f", true),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    d.ok(d.do_id("b", 1), json!(1));
    d.ok(d.do_id("c", 1), json!(1));
    d.fail(d.do_id("f", 1), "no", false);
    d.fail(d.comp_id("b", 1), "refused", false);
    assert_eq!(d.kinds(), ["reply_received", "compensation_failed"]);
    assert_eq!(
        d.saga.state,
        S::Compensating,
        "c's compensation is still out"
    );
    d.ok(d.comp_id("c", 1), json!(null));
    assert_eq!(
        d.kinds(),
        ["reply_received", "step_compensated", "saga_suspended"]
    );
    assert_eq!(d.saga.state, S::Suspended);
    // Retry re-sends only b's compensation.
    d.retry();
    assert_eq!(d.sent_brief(), [brief("b", Compensate, 2)]);
    d.ok(d.comp_id("b", 2), json!(null));
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
}

#[test]
fn cancel_during_a_group() {
    let mut d = Driver::new(grouped());
    d.ok(d.do_id("a", 1), json!(1));
    d.ok(d.do_id("b", 1), json!(2));
    d.cancel();
    assert!(d.sent().is_empty(), "c is out");
    let f = d.saga.failure.clone().expect("a failure");
    assert_eq!(
        (f.step.as_deref(), f.code.as_str()),
        (Some("c"), "cancelled")
    );
    d.ok(d.do_id("c", 1), json!(3));
    assert_eq!(
        d.sent_brief(),
        [brief("b", Compensate, 1), brief("c", Compensate, 1)]
    );
    d.ok(d.comp_id("c", 1), json!(null));
    d.ok(d.comp_id("b", 1), json!(null));
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
    d.ok(d.comp_id("a", 1), json!(null));
    assert_eq!(d.saga.state, S::Compensated);
    assert_eq!(d.state_of("d"), St::Pending);
}

#[test]
fn a_group_with_an_await_member() {
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        group("g", vec![task("b", true), await_step("w", "go")]),
        task("c", true),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    assert_eq!(d.sent_brief(), [brief("b", Do, 1)]);
    assert!(d.armed(&Timer::AwaitDeadline { step: 2 }).is_some());
    d.signal("go", json!("w"));
    assert!(d.sent().is_empty(), "b is still out");
    d.ok(d.do_id("b", 1), json!("b"));
    assert_eq!(d.sent_brief(), [brief("c", Do, 1)]);

    // The task fails: the waiting await is skipped, nothing of the group is compensated.
    let mut d = Driver::new(saga_of(vec![
        task("a", true),
        group("g", vec![task("b", true), await_step("w", "go")]),
    ]));
    d.ok(d.do_id("a", 1), json!(1));
    d.fail(d.do_id("b", 1), "no", false);
    assert_eq!(d.state_of("w"), St::Skipped);
    assert_eq!(d.sent_brief(), [brief("a", Compensate, 1)]);
}

#[test]
fn start_is_applied_once() {
    let mut d = Driver::new(saga_of(vec![task("a", true)]));
    let saga = d.saga.clone();
    assert_eq!(
        d.feed(Input::Start {
            actor: "amqp".into()
        }),
        Verdict::Ignored
    );
    assert_eq!(d.saga, saga);
    assert!(d.entries.is_empty());
}

#[test]
fn a_saga_starting_with_an_await_waits() {
    let mut d = Driver::new(saga_of(vec![await_step("w", "go"), task("a", false)]));
    assert_eq!(d.kinds(), ["saga_started"]);
    assert_eq!(d.state_of("w"), St::Running);
    assert_eq!(d.saga.revision, 1);
    d.signal("go", json!(1));
    assert_eq!(d.sent_brief(), [brief("a", Do, 1)]);
}
