//! Property tests of the machine: random definitions (1–6 stages, groups, awaits, steps without
//! compensation, small retry budgets) under random interleavings of every input — replies of
//! every kind to any command ever sent (duplicates, late and reordered ones included), any armed
//! timer firing, stale timers, signals, cancels, deadlines and operator actions — then driven to
//! quiescence. Whatever happens, the saga ends terminal or suspended (terminal after skips),
//! never compensates a step twice nor one that reported failure, compensates stage by stage in
//! reverse, sends nothing forward once off the forward path and nothing at all once terminal,
//! and keeps `revision` and history `seq` honest (see `tests::check_decision`, run on every
//! decision).

use std::collections::BTreeSet;

use proptest::prelude::*;
use saga_wire::{CommandKind, StepError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::tests::{Driver, await_step, definition, group, task, with_attempts};
use super::*;
use crate::definition::{Action, Definition};

// ----- random definitions --------------------------------------------------------------------

#[derive(Debug, Clone)]
enum LeafSpec {
    Task {
        compensate: bool,
        attempts: u32,
        comp_attempts: u32,
    },
    Await {
        event: u8,
    },
}

#[derive(Debug, Clone)]
enum StageSpec {
    Single(LeafSpec),
    Group(Vec<LeafSpec>),
}

#[derive(Debug, Clone)]
struct DefSpec {
    stages: Vec<StageSpec>,
    deadline: bool,
}

fn leaf_spec() -> impl Strategy<Value = LeafSpec> {
    prop_oneof![
        4 => (any::<bool>(), 1..=3u32, 1..=3u32).prop_map(|(compensate, attempts, comp_attempts)| {
            LeafSpec::Task { compensate, attempts, comp_attempts }
        }),
        1 => (0..3u8).prop_map(|event| LeafSpec::Await { event }),
    ]
}

fn stage_spec() -> impl Strategy<Value = StageSpec> {
    prop_oneof![
        3 => leaf_spec().prop_map(StageSpec::Single),
        1 => prop::collection::vec(leaf_spec(), 1..=3).prop_map(StageSpec::Group),
    ]
}

fn def_spec() -> impl Strategy<Value = DefSpec> {
    (prop::collection::vec(stage_spec(), 1..=6), any::<bool>())
        .prop_map(|(stages, deadline)| DefSpec { stages, deadline })
}

fn build(spec: &DefSpec) -> Definition {
    let mut n = 0;
    let mut leaf = |l: &LeafSpec| {
        n += 1;
        let name = format!("s{n}");
        match l {
            LeafSpec::Task {
                compensate,
                attempts,
                comp_attempts,
            } => with_attempts(task(&name, *compensate), *attempts, *comp_attempts),
            LeafSpec::Await { event } => await_step(&name, &format!("e{event}")),
        }
    };
    let steps: Vec<Value> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            StageSpec::Single(l) => leaf(l),
            StageSpec::Group(members) => {
                group(&format!("g{i}"), members.iter().map(&mut leaf).collect())
            }
        })
        .collect();
    let timeout = if spec.deadline {
        json!("5m")
    } else {
        json!(null)
    };
    definition(json!({ "name": "random", "timeout": timeout, "steps": steps }))
}

// ----- random inputs -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Reply {
    Ok,
    Retryable,
    Fatal,
}

impl Reply {
    fn outcome(self, n: usize) -> Outcome {
        let error = |code: &str, retryable| {
            Outcome::Error(StepError {
                code: code.into(),
                message: format!("reply {n}"),
                retryable,
            })
        };
        match self {
            Reply::Ok => Outcome::Ok(json!({ "n": n })),
            Reply::Retryable => error("busy", true),
            Reply::Fatal => error("refused", false),
        }
    }
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![3 => Just(Reply::Ok), 2 => Just(Reply::Retryable), 1 => Just(Reply::Fatal)]
}

#[derive(Debug, Clone)]
enum Act {
    /// A reply to any command ever sent (`pick` modulo their number).
    Reply {
        pick: usize,
        reply: Reply,
    },
    Malformed {
        pick: usize,
    },
    /// Any armed timer fires.
    Fire {
        pick: usize,
    },
    /// A timer input nobody armed (or that was disarmed).
    StaleAttempt {
        pick: usize,
    },
    StaleBackoff {
        step: usize,
    },
    StaleLapse {
        step: usize,
    },
    /// `e0`–`e2` are awaited by some definitions; `e3` by none.
    Signal {
        event: u8,
    },
    Deadline,
    Cancel,
    Retry,
    Skip,
    Terminate,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        12 => (any::<usize>(), reply()).prop_map(|(pick, reply)| Act::Reply { pick, reply }),
        1 => any::<usize>().prop_map(|pick| Act::Malformed { pick }),
        8 => any::<usize>().prop_map(|pick| Act::Fire { pick }),
        1 => any::<usize>().prop_map(|pick| Act::StaleAttempt { pick }),
        1 => (0..20usize).prop_map(|step| Act::StaleBackoff { step }),
        1 => (0..20usize).prop_map(|step| Act::StaleLapse { step }),
        3 => (0..4u8).prop_map(|event| Act::Signal { event }),
        1 => Just(Act::Deadline),
        1 => Just(Act::Cancel),
        1 => Just(Act::Retry),
        1 => Just(Act::Skip),
        1 => Just(Act::Terminate),
    ]
}

/// How the test settles the saga once the random inputs are spent.
#[derive(Debug, Clone)]
struct Settle {
    /// Replies to what is still out, in turn.
    replies: Vec<Reply>,
    /// Whether waiting awaits get their signal (else they lapse).
    signal_awaits: bool,
    /// Whether the operator acts on a suspended saga while settling (else only afterwards, by
    /// skipping).
    operator: bool,
    /// Operator retries before skipping.
    retries: u8,
}

fn settle() -> impl Strategy<Value = Settle> {
    (
        prop::collection::vec(reply(), 1..6),
        any::<bool>(),
        any::<bool>(),
        0..3u8,
    )
        .prop_map(|(replies, signal_awaits, operator, retries)| Settle {
            replies,
            signal_awaits,
            operator,
            retries,
        })
}

// ----- the run ---------------------------------------------------------------------------------

/// A driver plus the checks that span decisions.
struct Run {
    d: Driver,
    /// Stage of each step.
    stages: Vec<usize>,
    /// Stages whose compensation started, in order.
    compensated_stages: Vec<usize>,
    replies: usize,
}

impl Run {
    fn new(def: Definition) -> Self {
        let stages = def.leaves().map(|l| l.stage).collect();
        let mut run = Run {
            d: Driver::new(def),
            stages,
            compensated_stages: Vec::new(),
            replies: 0,
        };
        run.check_between(
            &Input::Start {
                actor: "anonymous".into(),
            },
            None,
        );
        run
    }

    fn feed(&mut self, input: Input) {
        let before = self.d.saga.clone();
        self.d.feed(input.clone());
        self.check_between(&input, Some(&before));
    }

    fn has_compensate(&self, step: usize) -> bool {
        let leaf = self.d.def.leaves().nth(step).expect("a step");
        matches!(&leaf.leaf.action, Action::Task(t) if t.compensate.is_some())
    }

    /// Whether the step must be compensated once the saga rolls back: it succeeded, or its last
    /// attempt ran out of time. Judged from the history and the commands, not the step's state.
    fn owes_compensation(&self, step: usize) -> bool {
        if !self.has_compensate(step) {
            return false;
        }
        let name = self
            .d
            .def
            .leaves()
            .nth(step)
            .expect("a step")
            .leaf
            .name
            .clone();
        let succeeded = self
            .d
            .history
            .iter()
            .any(|e| e.kind == "step_succeeded" && e.step.as_deref() == Some(name.as_str()));
        // A late reply may come after the timeout: the history, not the command's fate, says.
        let last_timed_out = self.d.saga.steps[step]
            .commands
            .iter()
            .filter(|c| c.kind == CommandKind::Do)
            .max_by_key(|c| c.attempt)
            .is_some_and(|c| {
                self.d
                    .history
                    .iter()
                    .any(|e| e.kind == "attempt_timed_out" && e.command_id == Some(c.id))
            });
        succeeded || last_timed_out
    }

    fn check_between(&mut self, input: &Input, before: Option<&Saga>) {
        let d = &self.d;
        let saga = &d.saga;
        let kinds = d.kinds();
        let steps = saga.steps.len();

        // Only the operator moves a suspended saga.
        if let Some(before) = before
            && before.state == SagaState::Suspended
            && saga.state != SagaState::Suspended
        {
            assert!(
                matches!(
                    input,
                    Input::Retry { .. } | Input::Skip { .. } | Input::Terminate { .. }
                ),
                "{input:?} moved a suspended saga"
            );
        }

        // Forward commands: a stage starts only once every earlier one succeeded.
        for c in d.sent() {
            if c.kind == CommandKind::Do && c.attempt == 1 {
                for (i, s) in saga.steps.iter().enumerate() {
                    if self.stages[i] < self.stages[c.step] {
                        assert_eq!(
                            s.state,
                            StepState::Succeeded,
                            "{} started early",
                            c.step_name
                        );
                    }
                }
            }
        }

        // Compensation: only what is owed, a stage's members at once, stages in reverse order.
        let first: BTreeSet<usize> = d
            .sent()
            .iter()
            .filter(|c| c.kind == CommandKind::Compensate && c.attempt == 1)
            .map(|c| c.step)
            .collect();
        for &i in &first {
            assert!(
                self.owes_compensation(i),
                "step {i} compensated without owing it"
            );
        }
        if !first.is_empty() {
            let stage: BTreeSet<usize> = first.iter().map(|&i| self.stages[i]).collect();
            assert_eq!(stage.len(), 1, "compensations of two stages at once");
            let stage = *stage.first().expect("one stage");
            if let Some(&last) = self.compensated_stages.last() {
                assert!(stage < last, "stage {stage} compensated after stage {last}");
            }
            self.compensated_stages.push(stage);
            let owed: BTreeSet<usize> = (0..steps)
                .filter(|&i| self.stages[i] == stage && self.owes_compensation(i))
                .collect();
            assert_eq!(first, owed, "a stage's members are compensated at once");
            for i in 0..steps {
                if self.stages[i] > stage && self.owes_compensation(i) {
                    assert!(
                        matches!(
                            saga.steps[i].state,
                            StepState::Compensated | StepState::Skipped
                        ),
                        "stage {stage} compensated before step {i} of a later stage"
                    );
                }
            }
        }
        for i in 0..steps {
            let compensated = d
                .history
                .iter()
                .filter(|e| {
                    e.kind == "step_compensated"
                        && e.step.as_deref() == d.def.leaves().nth(i).map(|l| l.leaf.name.as_str())
                })
                .count();
            assert!(compensated <= 1, "step {i} compensated {compensated} times");
            let first_comp = saga.steps[i]
                .commands
                .iter()
                .filter(|c| c.kind == CommandKind::Compensate && c.attempt == 1)
                .count();
            assert!(first_comp <= 1);
        }
        let started = d
            .history
            .iter()
            .filter(|e| e.kind == "compensation_started")
            .count();
        assert!(started <= 1, "compensation started {started} times");
        if started == 1 {
            let at = d
                .history
                .iter()
                .position(|e| e.kind == "compensation_started")
                .expect("there");
            let forward_after = d.history[at..]
                .iter()
                .any(|e| e.kind == "command_dispatched" && e.data["kind"] == "do");
            assert!(
                !forward_after,
                "a do command after the saga left the forward path"
            );
        }
        assert!(
            !kinds.contains(&"saga_started") || before.is_none(),
            "started twice"
        );

        // Timers agree with what the saga waits for.
        let armed_attempts: BTreeSet<Uuid> = d
            .timers
            .iter()
            .filter_map(|(t, _)| match t {
                Timer::Attempt { command_id } => Some(*command_id),
                _ => None,
            })
            .collect();
        if saga.state.is_terminal() {
            assert!(
                d.timers.is_empty(),
                "timers left on a {:?} saga: {:?}",
                saga.state,
                d.timers
            );
        } else {
            let out: BTreeSet<Uuid> = saga.steps.iter().filter_map(|s| s.out).collect();
            assert_eq!(armed_attempts, out, "attempt timers vs commands out");
            for (i, s) in saga.steps.iter().enumerate() {
                if let Some(at) = s.retry_at {
                    assert_eq!(d.armed(&Timer::Backoff { step: i }), Some(at));
                }
                let waits = s.state == StepState::Running
                    && matches!(
                        d.def.leaves().nth(i).map(|l| &l.leaf.action),
                        Some(Action::Await { .. })
                    );
                if waits {
                    assert_eq!(d.armed(&Timer::AwaitDeadline { step: i }), s.wait_until);
                    assert!(s.wait_until.is_some());
                }
            }
            let deadline_armed = d.armed(&Timer::SagaDeadline).is_some();
            assert_eq!(
                deadline_armed,
                saga.state == SagaState::Running && saga.deadline.is_some(),
                "saga deadline timer in {:?}",
                saga.state
            );
        }

        // A live saga always waits for something that will come: a reply, a retry, a signal.
        if matches!(saga.state, SagaState::Running | SagaState::Compensating) {
            let waiting = saga.steps.iter().any(|s| {
                s.out.is_some()
                    || s.retry_at.is_some()
                    || (s.state == StepState::Running && s.wait_until.is_some())
            });
            assert!(
                waiting,
                "a {:?} saga waits for nothing: {saga:?}",
                saga.state
            );
        }

        // How it ended.
        match saga.state {
            SagaState::Completed => {
                assert!(saga.steps.iter().all(|s| s.state == StepState::Succeeded));
                let output = saga
                    .output
                    .as_ref()
                    .and_then(Value::as_object)
                    .expect("an output");
                assert_eq!(output.len(), steps);
            }
            SagaState::Compensated => {
                for (i, s) in saga.steps.iter().enumerate() {
                    if self.owes_compensation(i) {
                        assert!(
                            matches!(s.state, StepState::Compensated | StepState::Skipped),
                            "step {i} owed compensation but is {:?}",
                            s.state
                        );
                    } else {
                        assert_eq!(s.comp_attempts, 0, "step {i} compensated without owing it");
                        assert!(
                            matches!(
                                s.state,
                                StepState::Pending
                                    | StepState::Succeeded
                                    | StepState::Failed
                                    | StepState::TimedOut
                                    | StepState::Skipped
                            ),
                            "step {i} ended {:?}",
                            s.state
                        );
                    }
                    assert_ne!(s.state, StepState::Running);
                }
            }
            _ => {}
        }
    }

    fn pick_command(&self, pick: usize) -> Option<Uuid> {
        let n = self.d.dispatched.len();
        (n > 0).then(|| self.d.dispatched[pick % n].command_id)
    }

    fn apply(&mut self, act: &Act) {
        let input = match *act {
            Act::Reply { pick, reply } => {
                let Some(command_id) = self.pick_command(pick) else {
                    return;
                };
                self.replies += 1;
                Input::Reply {
                    command_id,
                    outcome: reply.outcome(self.replies),
                }
            }
            Act::Malformed { pick } => {
                let Some(command_id) = self.pick_command(pick) else {
                    return;
                };
                Input::MalformedReply {
                    command_id,
                    reason: "no status".into(),
                }
            }
            Act::Fire { pick } => {
                if self.d.timers.is_empty() {
                    return;
                }
                let timer = self.d.timers[pick % self.d.timers.len()].0.clone();
                return self.fire(&timer);
            }
            Act::StaleAttempt { pick } => {
                let Some(command_id) = self.pick_command(pick) else {
                    return;
                };
                Input::AttemptTimedOut { command_id }
            }
            Act::StaleBackoff { step } => Input::BackoffElapsed { step },
            Act::StaleLapse { step } => Input::AwaitLapsed { step },
            Act::Signal { event } => Input::Signal {
                event: format!("e{event}"),
                payload: json!({ "event": event }),
                actor: "alice".into(),
            },
            Act::Deadline => Input::DeadlinePassed,
            Act::Cancel => Input::Cancel {
                actor: "alice".into(),
                reason: None,
            },
            Act::Retry => Input::Retry {
                actor: "ops".into(),
                reason: None,
            },
            Act::Skip => Input::Skip {
                actor: "ops".into(),
                reason: "skip".into(),
            },
            Act::Terminate => Input::Terminate {
                actor: "ops".into(),
                reason: "stop".into(),
            },
        };
        self.feed(input);
    }

    fn fire(&mut self, timer: &Timer) {
        let before = self.d.saga.clone();
        self.d.fire(timer);
        self.check_between(&super::tests::timer_input(timer), Some(&before));
    }

    /// Answers what is out, signals or lets awaits lapse, fires timers, until the saga is terminal
    /// or suspended (and, with `operator`, acts on a suspended saga until it is terminal).
    fn settle(&mut self, how: &Settle, operator: bool) {
        let mut retries = how.retries;
        let mut k = 0;
        for _ in 0..10_000 {
            match self.d.saga.state {
                s if s.is_terminal() => return,
                SagaState::Suspended if !operator => return,
                SagaState::Suspended if retries > 0 => {
                    retries -= 1;
                    self.feed(Input::Retry {
                        actor: "ops".into(),
                        reason: None,
                    });
                    continue;
                }
                SagaState::Suspended => {
                    self.feed(Input::Skip {
                        actor: "ops".into(),
                        reason: "settle".into(),
                    });
                    continue;
                }
                _ => {}
            }
            if let Some(id) = self.d.saga.steps.iter().find_map(|s| s.out) {
                let reply = how.replies[k % how.replies.len()];
                k += 1;
                self.replies += 1;
                self.feed(Input::Reply {
                    command_id: id,
                    outcome: reply.outcome(self.replies),
                });
                continue;
            }
            let waiting = self
                .d
                .def
                .leaves()
                .enumerate()
                .find_map(|(i, l)| match &l.leaf.action {
                    Action::Await { event, .. }
                        if self.d.saga.steps[i].state == StepState::Running =>
                    {
                        Some(event.clone())
                    }
                    _ => None,
                });
            if let (true, Some(event)) = (how.signal_awaits, waiting) {
                self.feed(Input::Signal {
                    event,
                    payload: json!("settled"),
                    actor: "alice".into(),
                });
                continue;
            }
            let next = self
                .d
                .timers
                .iter()
                .min_by_key(|(_, at)| *at)
                .map(|(t, _)| t.clone());
            match next {
                Some(timer) => self.fire(&timer),
                None => panic!(
                    "a {:?} saga with nothing to wait for: {:?}",
                    self.d.saga.state, self.d.saga
                ),
            }
        }
        panic!("the saga did not settle: {:?}", self.d.saga);
    }
}

fn run(spec: &DefSpec, acts: &[Act], how: &Settle) -> Run {
    let mut run = Run::new(build(spec));
    for act in acts {
        run.apply(act);
    }
    run.settle(how, how.operator);
    let state = run.d.saga.state;
    assert!(
        state.is_terminal() || (state == SagaState::Suspended && !how.operator),
        "settled in {state:?}"
    );
    if state == SagaState::Suspended {
        // Skips alone bring it to an end.
        let skips_only = Settle {
            retries: 0,
            ..how.clone()
        };
        run.settle(&skips_only, true);
        assert!(run.d.saga.state.is_terminal());
    }
    // Nothing moves a terminal saga any more.
    let end = run.d.saga.clone();
    for act in acts.iter().take(10) {
        run.apply(act);
    }
    assert_eq!(run.d.saga.state, end.state);
    assert_eq!(run.d.saga.revision, end.revision);
    run
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_end_well(
        spec in def_spec(),
        acts in prop::collection::vec(act(), 0..80),
        how in settle(),
    ) {
        run(&spec, &acts, &how);
    }

    /// Replies only, answered in any order, with duplicates: the common case, more densely.
    #[test]
    fn random_replies_end_well(
        spec in def_spec(),
        acts in prop::collection::vec(
            prop_oneof![
                3 => (any::<usize>(), reply()).prop_map(|(pick, reply)| Act::Reply { pick, reply }),
                1 => any::<usize>().prop_map(|pick| Act::Fire { pick }),
                1 => (0..3u8).prop_map(|event| Act::Signal { event }),
            ],
            0..60,
        ),
        how in settle(),
    ) {
        run(&spec, &acts, &how);
    }
}

/// The whole history of a random run reads as PROTOCOL.md describes it.
#[test]
fn histories_are_well_formed() {
    let spec = DefSpec {
        stages: vec![
            StageSpec::Single(LeafSpec::Task {
                compensate: true,
                attempts: 2,
                comp_attempts: 2,
            }),
            StageSpec::Group(vec![
                LeafSpec::Task {
                    compensate: true,
                    attempts: 1,
                    comp_attempts: 1,
                },
                LeafSpec::Await { event: 0 },
            ]),
            StageSpec::Single(LeafSpec::Task {
                compensate: false,
                attempts: 1,
                comp_attempts: 1,
            }),
        ],
        deadline: true,
    };
    let how = Settle {
        replies: vec![Reply::Retryable, Reply::Ok, Reply::Fatal],
        signal_awaits: false,
        operator: true,
        retries: 1,
    };
    let run = run(
        &spec,
        &[
            Act::Signal { event: 0 },
            Act::Reply {
                pick: 0,
                reply: Reply::Ok,
            },
        ],
        &how,
    );
    let h = &run.d.history;
    assert_eq!(h[0].kind, "saga_started");
    assert!(run.d.saga.state.is_terminal());
    // One end, and after it only ignored inputs.
    let ends: Vec<usize> = (0..h.len())
        .filter(|&k| {
            matches!(
                h[k].kind,
                "saga_completed" | "saga_compensated" | "saga_terminated"
            )
        })
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert!(
        h[ends[0] + 1..]
            .iter()
            .all(|e| matches!(e.kind, "reply_ignored" | "signal_ignored"))
    );
    for (k, e) in h.iter().enumerate() {
        assert_eq!(e.seq, k as i64 + 1);
        if e.kind == "attempt_timed_out" {
            // Followed by a retry or the step's end.
            let next = h.get(k + 1).map(|e| e.kind);
            assert!(
                matches!(
                    next,
                    Some("retry_scheduled" | "step_failed" | "compensation_failed")
                ),
                "{next:?}"
            );
        }
    }
}
