//! The seeds' house closing, end to end: await steps and parallel groups (PROTOCOL §1), signals,
//! step states and history (§2), start, event and lifecycle messages (§3), and how a group is
//! compensated (§4).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use saga_e2e::http::{rfc3339, step};
use saga_e2e::worker::{CommandSeen, echo, echo_holding, echo_output, one, order_of};
use saga_e2e::{Behaviour, Gate, TestEnv, Worker, assert_problem, kinds_of};
use serde_json::{Value, json};

use crate::{SOON, assert_ends_with, entries, env, index_of, strs, task_step, tasks_of};

/// Where a step sits: its name, its group, and whether it is a task (else an await).
type Layout = [(&'static str, Option<&'static str>, bool)];

/// Every task and compensation name of [`escrow`].
const ESCROW_TASKS: [&str; 4] = [
    "escrow.open",
    "escrow.close",
    "title.transfer",
    "title.revert",
];

const ESCROW: &Layout = &[
    ("open_escrow", None, true),
    ("buyer_signature", Some("signatures"), false),
    ("seller_signature", Some("signatures"), false),
    ("funds", None, false),
    ("transfer_title", None, true),
];

/// The escrow has opened and both signatures wait: "a group's members run at once".
const AT_THE_SIGNATURES: &str = "succeeded running running pending pending";
/// The buyer has signed, the seller's signature still waits.
const BUYER_SIGNED: &str = "succeeded succeeded running pending pending";

/// An `escrow`-like definition (the seeds' house closing): open the escrow, wait for both
/// signatures at once (the buyer's for an hour, the seller's for `seller_timeout`), wait for the
/// funds, transfer the title.
fn escrow(seller_timeout: &str) -> Value {
    json!({
        "name": "escrow",
        "input_schema": {
            "type": "object",
            "required": ["property", "price_cents"],
            "properties": {
                "property": { "type": "string" },
                "price_cents": { "type": "integer", "minimum": 1 }
            }
        },
        "steps": [
            { "name": "open_escrow", "task": "escrow.open", "compensate": "escrow.close",
              "timeout": "10s" },
            { "name": "signatures", "parallel": [
                { "name": "buyer_signature", "await": "buyer_signed", "timeout": "1h" },
                { "name": "seller_signature", "await": "seller_signed", "timeout": seller_timeout }
            ] },
            { "name": "funds", "await": "funds_deposited", "timeout": "1h" },
            { "name": "transfer_title", "task": "title.transfer", "compensate": "title.revert",
              "timeout": "10s" }
        ]
    })
}

fn closing() -> Value {
    json!({ "property": "12 Elm Street", "price_cents": 45_000_000 })
}

fn signature(event: &str) -> Value {
    json!({ "event": event, "signed_at": "2026-03-01T10:00:00Z" })
}

fn funds() -> Value {
    json!({ "amount_cents": 45_000_000, "bank": "First Savings" })
}

/// The await step that waits for `event`.
fn await_of(event: &str) -> &'static str {
    match event {
        "buyer_signed" => "buyer_signature",
        "seller_signed" => "seller_signature",
        "funds_deposited" => "funds",
        other => panic!("no await of the escrow waits for {other}"),
    }
}

/// An orchestrator with [`escrow`] registered and a worker on its tasks.
async fn escrow_env(
    seller_timeout: &str,
    script: impl Fn(&CommandSeen) -> Behaviour + Send + Sync + 'static,
) -> (TestEnv, Worker) {
    let env = env().await;
    env.register_new(&escrow(seller_timeout)).await;
    let worker = Worker::start(&env, &ESCROW_TASKS, script).await;
    (env, worker)
}

/// Starts an escrow and waits until both signatures wait.
async fn start_at_the_signatures(env: &TestEnv) -> String {
    let id = env.start("escrow", closing()).await;
    wait_steps(env, &id, ESCROW, AT_THE_SIGNATURES).await;
    id
}

/// The states of a status's steps, in order.
fn step_states(s: &Value) -> Vec<String> {
    s["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {s:#}"))
        .iter()
        .map(|st| st["state"].as_str().unwrap_or("<no state>").to_owned())
        .collect()
}

/// Asserts a status's steps exactly, given their states (space-separated, in order): "`steps`
/// lists every task and await step from the start, in definition order, flat: a group's members
/// carry the group's name in `group`"; "`attempts` counts `do` commands sent for the step
/// (compensations are not counted; awaits: 0)" — here one per task reached.
#[track_caller]
fn assert_steps(s: &Value, layout: &Layout, states: &str) {
    let got: Vec<Value> = s["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {s:#}"))
        .iter()
        .map(|st| json!([st["name"], st["group"], st["state"], st["attempts"]]))
        .collect();
    let want: Vec<Value> = layout
        .iter()
        .zip(states.split_whitespace())
        .map(|((name, group, task), state)| {
            json!([name, group, state, i64::from(*task && state != "pending")])
        })
        .collect();
    assert_eq!(got, want, "{s:#}");
}

/// Waits until the saga's steps are in `states`, then asserts them fully ([`assert_steps`]).
async fn wait_steps(env: &TestEnv, id: &str, layout: &Layout, states: &str) -> Value {
    let want: Vec<&str> = states.split_whitespace().collect();
    let s = env
        .wait_until(id, SOON, &format!("steps {states}"), |s| {
            step_states(s) == want
        })
        .await;
    assert_steps(&s, layout, states);
    s
}

/// Waits until the saga leaves the forward path and asserts it is `compensating` then.
async fn wait_compensating(env: &TestEnv, id: &str) -> Value {
    let s = env
        .wait_until(id, SOON, "off the forward path", |s| {
            s["state"] != "running"
        })
        .await;
    assert_eq!(s["state"], "compensating", "{s:#}");
    s
}

/// Sends a signal over HTTP that must be refused: 409 (a problem), nothing changes (the same
/// revision: "a reply or signal that is ignored changes nothing"), and "A refused signal for an
/// existing saga … is recorded as `signal_ignored`" with `reason` and the token's name.
async fn assert_signal_refused(env: &TestEnv, id: &str, event: &str, reason: &str) {
    let before = env.status(id).await;
    let ignored_before = entries(&env.history(id).await, "signal_ignored", None).len();
    let raw = env.signal(id, event, &json!({ "again": event })).await;
    assert_problem(&raw, StatusCode::CONFLICT);
    let after = env.status(id).await;
    assert_eq!(
        after["revision"], before["revision"],
        "a refused {event} changed the saga: {after:#}"
    );
    assert_last_ignored(env, id, ignored_before + 1, reason, "anonymous").await;
}

/// Asserts the saga's history has `count` `signal_ignored` entries, the last with `reason` and
/// `actor`.
async fn assert_last_ignored(env: &TestEnv, id: &str, count: usize, reason: &str, actor: &str) {
    let history = env.history(id).await;
    let ignored = entries(&history, "signal_ignored", None);
    assert_eq!(ignored.len(), count, "{:?}", kinds_of(&history));
    let last = ignored[count - 1];
    assert_eq!(
        (&last["reason"], &last["actor"]),
        (&json!(reason), &json!(actor)),
        "{last:#}"
    );
}

/// Asserts the worker's commands come in `phases`: each phase a set of `step:kind` (the members
/// of a group go out at once, in whatever order they arrive), the phases in order.
#[track_caller]
fn assert_phases(cs: &[CommandSeen], phases: &[&[&str]]) {
    let order = order_of(cs);
    let mut at = 0;
    for phase in phases {
        let want: BTreeSet<&str> = phase.iter().copied().collect();
        let got: BTreeSet<&str> = order
            .iter()
            .skip(at)
            .take(phase.len())
            .map(String::as_str)
            .collect();
        assert_eq!(got, want, "commands {order:?} not in phases {phases:?}");
        at += phase.len();
    }
    assert_eq!(
        at,
        order.len(),
        "commands {order:?} beyond phases {phases:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escrow_completes_with_signatures_by_http_and_funds_by_message() {
    let (env, worker) = escrow_env("1h", echo).await;
    let amqp = env.amqp().await;
    // A downstream consumer: its own queue, bound to `saga.lifecycle` with `escrow.#`.
    let lifecycle = amqp.bind_private_queue("saga.lifecycle", "escrow.#").await;

    let mut completed = Vec::new();
    for order in [
        ["buyer_signed", "seller_signed"],
        ["seller_signed", "buyer_signed"],
    ] {
        let id = start_at_the_signatures(&env).await;
        env.signal_accepted(&id, order[0], &signature(order[0]))
            .await;
        // The group succeeds when all its members succeed: one is not enough.
        let one_signed = if order[0] == "buyer_signed" {
            BUYER_SIGNED
        } else {
            "succeeded running succeeded pending pending"
        };
        let s = wait_steps(&env, &id, ESCROW, one_signed).await;
        assert_eq!(s["state"], "running", "{s:#}");
        assert_eq!(
            step(&s, await_of(order[0]))["output"],
            signature(order[0]),
            "{s:#}"
        );
        env.signal_accepted(&id, order[1], &signature(order[1]))
            .await;
        wait_steps(
            &env,
            &id,
            ESCROW,
            "succeeded succeeded succeeded running pending",
        )
        .await;

        // The funds come by message: routing key = event name, correlation_id = saga id, body =
        // the whole payload.
        amqp.publish_event("funds_deposited", Some(&id), funds().to_string().as_bytes())
            .await;
        let s = env.wait_state(&id, &["completed"], SOON).await;
        assert_steps(&s, ESCROW, &["succeeded"; 5].join(" "));
        assert_eq!(s["failure"], Value::Null, "{s:#}");
        // "The signal's payload becomes the step's output"; "`output` is `{ step name: output }`
        // once `completed`"; "A group's own name is never a key of `results` or `output`."
        let output = json!({
            "open_escrow": echo_output("open_escrow"),
            "buyer_signature": signature("buyer_signed"),
            "seller_signature": signature("seller_signed"),
            "funds": funds(),
            "transfer_title": echo_output("transfer_title"),
        });
        assert_eq!(s["output"], output, "{s:#}");
        for (name, _, _) in ESCROW {
            let st = step(&s, name);
            assert_eq!(st["output"], output[name], "{s:#}");
            assert_eq!(st["error"], Value::Null, "{s:#}");
            assert!(
                st["started_at"].is_string() && st["finished_at"].is_string(),
                "{s:#}"
            );
        }

        // The title transfer sees every output so far, the signals' payloads among them.
        let cs = worker.ledger.of_saga(&id);
        assert_eq!(
            order_of(&cs),
            ["open_escrow:do", "transfer_title:do"],
            "{cs:#?}"
        );
        let mut results = output.clone();
        results
            .as_object_mut()
            .expect("an object")
            .remove("transfer_title");
        let transfer = one(&cs, "transfer_title", "do");
        assert_eq!(transfer.results, results, "{transfer:#?}");
        assert_eq!(transfer.input, closing(), "{transfer:#?}");

        // History: each signal received for its await (by the token's name over HTTP, `amqp` by
        // message), then the await succeeded.
        let history = env.history(&id).await;
        let kinds = kinds_of(&history);
        let received: Vec<Value> = entries(&history, "signal_received", None)
            .iter()
            .map(|e| json!([e["step"], e["actor"]]))
            .collect();
        assert_eq!(
            received,
            [
                json!([await_of(order[0]), "anonymous"]),
                json!([await_of(order[1]), "anonymous"]),
                json!(["funds", "amqp"]),
            ],
            "{kinds:?}"
        );
        for name in ["buyer_signature", "seller_signature", "funds"] {
            assert!(
                index_of(&history, "signal_received", Some(name))
                    < index_of(&history, "step_succeeded", Some(name)),
                "{kinds:?}"
            );
        }
        assert!(
            index_of(&history, "step_succeeded", Some("funds"))
                < index_of(&history, "command_dispatched", Some("transfer_title")),
            "{kinds:?}"
        );
        assert!(
            entries(&history, "signal_ignored", None).is_empty(),
            "{kinds:?}"
        );
        assert_ends_with(&history, "saga_completed");
        completed.push(s);
    }

    // "Each time a saga enters `completed` … the orchestrator publishes its status (less `steps`)
    // to `saga.lifecycle`, routing key `{definition}.{state}`".
    let ids: Vec<&str> = completed
        .iter()
        .map(|s| s["id"].as_str().expect("an id"))
        .collect();
    let seen = amqp
        .take_lifecycle(
            &lifecycle,
            &[(ids[0], "completed"), (ids[1], "completed")],
            SOON,
        )
        .await;
    for (m, s) in seen.iter().zip(&completed) {
        m.assert_lifecycle_of(s);
    }
    assert_ne!(
        seen[0].message_id(),
        seen[1].message_id(),
        "message_id unique per event"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_signature_fails_the_group_and_the_escrow_is_compensated() {
    // The escrow's closing is held, to see the sagas while they compensate.
    let gate = Gate::new();
    let (env, worker) = escrow_env("2s", echo_holding("escrow.close", &gate)).await;
    let amqp = env.amqp().await;
    let lifecycle = amqp.bind_private_queue("saga.lifecycle", "#").await;
    // Nobody signs `unsigned`; in `half`, the buyer signs and the seller never does.
    let unsigned = start_at_the_signatures(&env).await;
    let half = start_at_the_signatures(&env).await;
    env.signal_accepted(&half, "buyer_signed", &signature("buyer_signed"))
        .await;

    for (id, buyer) in [(&unsigned, "skipped"), (&half, "succeeded")] {
        // The seller's await runs out of time: "`compensating` (from the moment it leaves the
        // forward path …)"; "an await that was waiting becomes `skipped`"; the escrow's closing
        // is out.
        let states = format!("compensating {buyer} timed_out pending pending");
        wait_steps(&env, id, ESCROW, &states).await;
        assert_eq!(env.status(id).await["state"], "compensating");
        // "refused with 409 … when its await has lapsed, or when the saga is not `running`";
        // "`late` (… the await had lapsed)".
        assert_signal_refused(&env, id, "seller_signed", "late").await;
    }
    // The buyer's await was skipped: "`unexpected` (… the saga or step had moved on …)".
    assert_signal_refused(&env, &unsigned, "buyer_signed", "unexpected").await;
    // The buyer's signature was delivered: "`duplicate` (… that event was already delivered)".
    assert_signal_refused(&env, &half, "buyer_signed", "duplicate").await;

    gate.open();
    let mut compensated = Vec::new();
    for (id, buyer) in [(&unsigned, "skipped"), (&half, "succeeded")] {
        let s = env.wait_state(id, &["compensated"], SOON).await;
        // "A succeeded step without a `compensate` stays `succeeded` after a rollback"; "steps
        // never reached stay `pending`".
        let states = format!("compensated {buyer} timed_out pending pending");
        assert_steps(&s, ESCROW, &states);
        // "`timed_out` (a step's attempts or an await ran out of time)".
        let failure = &s["failure"];
        assert_eq!(failure["step"], "seller_signature", "{s:#}");
        assert_eq!(failure["code"], "timed_out", "{s:#}");
        assert!(
            failure["message"].is_string() && failure["at"].is_string(),
            "{s:#}"
        );
        assert_eq!(s["output"], Value::Null, "{s:#}");
        let seller = step(&s, "seller_signature");
        assert_eq!(seller["output"], Value::Null, "{s:#}");
        assert_eq!(seller["error"], Value::Null, "no error reply: {s:#}");
        // "`timeout` (required) is how long it waits from the moment the step is reached".
        let waited = rfc3339(&seller["finished_at"]) - rfc3339(&seller["started_at"]);
        assert!(
            (2_000..6_000).contains(&waited.num_milliseconds()),
            "the seller's 2s await lapsed after {waited}: {s:#}"
        );
        let mut results = json!({ "open_escrow": echo_output("open_escrow") });
        if buyer == "succeeded" {
            assert_eq!(
                step(&s, "buyer_signature")["output"],
                signature("buyer_signed"),
                "{s:#}"
            );
            results["buyer_signature"] = signature("buyer_signed");
        }

        // Only the escrow is undone: `compensates` is its `do`'s key, `results` has its output.
        let cs = worker.ledger.of_saga(id);
        assert_eq!(
            order_of(&cs),
            ["open_escrow:do", "open_escrow:compensate"],
            "{cs:#?}"
        );
        let close = one(&cs, "open_escrow", "compensate");
        assert_eq!(close.task, "escrow.close", "{close:#?}");
        assert_eq!(
            close.compensates.as_deref(),
            Some(one(&cs, "open_escrow", "do").idempotency_key.as_str()),
            "{close:#?}"
        );
        assert_eq!(close.results, results, "{close:#?}");

        let history = env.history(id).await;
        let kinds = kinds_of(&history);
        let opened = &history[index_of(&history, "step_succeeded", Some("open_escrow"))];
        assert!(
            rfc3339(&seller["started_at"]) >= rfc3339(&opened["at"]),
            "the await is reached once the escrow opened: {opened:#} {s:#}"
        );
        let failed = index_of(&history, "step_failed", Some("seller_signature"));
        let started = index_of(&history, "compensation_started", None);
        let undone = index_of(&history, "step_compensated", Some("open_escrow"));
        assert!(failed < started && started < undone, "{kinds:?}");
        assert_eq!(
            entries(&history, "step_compensated", None).len(),
            1,
            "{kinds:?}"
        );
        assert_ends_with(&history, "saga_compensated");
        compensated.push(s);
    }

    // The lifecycle consumer hears of both: `escrow.compensated`.
    let seen = amqp
        .take_lifecycle(
            &lifecycle,
            &[(&unsigned, "compensated"), (&half, "compensated")],
            SOON,
        )
        .await;
    for (m, s) in seen.iter().zip(&compensated) {
        m.assert_lifecycle_of(s);
    }

    // A late signature, once it is all over: still `late`; by message, it is dead-lettered and
    // recorded the same way, by `amqp`.
    assert_signal_refused(&env, &unsigned, "seller_signed", "late").await;
    let late = amqp
        .publish_event(
            "seller_signed",
            Some(&half),
            signature("seller_signed").to_string().as_bytes(),
        )
        .await;
    amqp.take_dead_letters("saga.events.dlq", &[late], SOON)
        .await;
    assert_last_ignored(&env, &half, 3, "late", "amqp").await;
    assert_eq!(
        env.status(&half).await,
        compensated[1],
        "a refused event changes nothing"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_signals_are_kept_until_the_escrow_gets_there() {
    let opening = Gate::new();
    let transfer = Gate::new();
    let (o, t) = (opening.clone(), transfer.clone());
    let (env, worker) = escrow_env("1h", move |c| match c.task.as_str() {
        "escrow.open" => Behaviour::after_gate(&o, echo(c)),
        "title.transfer" => Behaviour::after_gate(&t, echo(c)),
        _ => echo(c),
    })
    .await;
    let id = env.start("escrow", closing()).await;
    worker
        .ledger
        .wait_for("the escrow's opening", SOON, |cs| !cs.is_empty())
        .await;

    // Before the group: "accepted (202) when the event is named by an await … that the saga has
    // not reached yet — an early signal is kept".
    env.signal_accepted(&id, "buyer_signed", &signature("buyer_signed"))
        .await;
    assert_steps(
        &env.status(&id).await,
        ESCROW,
        "running pending pending pending pending",
    );
    assert_signal_refused(&env, &id, "buyer_signed", "duplicate").await;

    // The group is reached: the kept signature is consumed at once, the seller's await waits.
    opening.open();
    let s = wait_steps(&env, &id, ESCROW, BUYER_SIGNED).await;
    assert_eq!(
        step(&s, "buyer_signature")["output"],
        signature("buyer_signed"),
        "{s:#}"
    );

    // At the group, the funds come early: kept for `funds`, which is not reached yet.
    env.signal_accepted(&id, "funds_deposited", &funds()).await;
    assert_steps(&env.status(&id).await, ESCROW, BUYER_SIGNED);
    assert_signal_refused(&env, &id, "funds_deposited", "duplicate").await;

    // The seller signs: the group succeeds, `funds` succeeds at once with the kept payload and
    // the title transfer goes out.
    env.signal_accepted(&id, "seller_signed", &signature("seller_signed"))
        .await;
    let s = wait_steps(
        &env,
        &id,
        ESCROW,
        "succeeded succeeded succeeded succeeded running",
    )
    .await;
    let funds_step = step(&s, "funds");
    assert_eq!(funds_step["output"], funds(), "{s:#}");
    assert!(
        funds_step["started_at"].is_string() && funds_step["finished_at"].is_string(),
        "{s:#}"
    );
    // Consumed, the event stays delivered: "refused with 409 when … that event was already
    // delivered to the saga".
    assert_signal_refused(&env, &id, "funds_deposited", "duplicate").await;

    transfer.open();
    let s = env.wait_state(&id, &["completed"], SOON).await;
    assert_steps(&s, ESCROW, &["succeeded"; 5].join(" "));
    assert_eq!(s["output"]["buyer_signature"], signature("buyer_signed"));
    assert_eq!(
        s["output"]["funds"],
        funds(),
        "the first delivery's payload"
    );
    let cs = worker.ledger.of_saga(&id);
    assert_eq!(one(&cs, "transfer_title", "do").results["funds"], funds());
    // Completed, the saga still knows the event was delivered.
    assert_signal_refused(&env, &id, "funds_deposited", "duplicate").await;

    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    let received: Vec<Value> = entries(&history, "signal_received", None)
        .iter()
        .map(|e| e["step"].clone())
        .collect();
    assert_eq!(
        received,
        [
            json!("buyer_signature"),
            json!("funds"),
            json!("seller_signature")
        ],
        "{kinds:?}"
    );
    let reasons: Vec<&str> = entries(&history, "signal_ignored", None)
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["duplicate"; 4], "{kinds:?}");
    // The early funds were consumed only after both signatures.
    assert!(
        index_of(&history, "step_succeeded", Some("seller_signature"))
            < index_of(&history, "step_succeeded", Some("funds")),
        "{kinds:?}"
    );
    worker.ledger.assert_clean();
}

/// A closing with two groups of tasks, `paperwork` and `checks`, between `open` and `record`.
const CLOSING: &Layout = &[
    ("open", None, true),
    ("inspect", Some("paperwork"), true),
    ("appraise", Some("paperwork"), true),
    ("title_search", Some("checks"), true),
    ("lien_search", Some("checks"), true),
    ("record", None, true),
];

/// Both checks are out.
const AT_THE_CHECKS: &str = "succeeded succeeded succeeded running running pending";

/// The definition of [`CLOSING`], each step a [`task_step`].
fn closing_with_checks() -> Value {
    let step_of = |(name, _, _): &(&str, Option<&str>, bool)| task_step(name, "10s");
    json!({
        "name": "closing",
        "steps": [
            step_of(&CLOSING[0]),
            { "name": "paperwork", "parallel": [ step_of(&CLOSING[1]), step_of(&CLOSING[2]) ] },
            { "name": "checks", "parallel": [ step_of(&CLOSING[3]), step_of(&CLOSING[4]) ] },
            step_of(&CLOSING[5])
        ]
    })
}

/// A closing saga held at its checks: `lien_search` answers `lien_reply` once the `lien` gate
/// opens, `title_search` answers ok once the `title` gate opens, and the compensations of
/// `held_undos` wait for the `undo` gate.
struct AtTheChecks {
    env: TestEnv,
    worker: Worker,
    id: String,
    lien: Gate,
    title: Gate,
    undo: Gate,
    held_undos: [&'static str; 2],
}

impl AtTheChecks {
    async fn start(lien_reply: Behaviour, held_undos: [&'static str; 2]) -> AtTheChecks {
        let env = env().await;
        env.register_new(&closing_with_checks()).await;
        let names: Vec<&str> = CLOSING.iter().map(|(name, _, _)| *name).collect();
        let (lien, title, undo) = (Gate::new(), Gate::new(), Gate::new());
        let (l, t, u) = (lien.clone(), title.clone(), undo.clone());
        let worker = Worker::start(&env, &strs(&tasks_of(&names)), move |c| {
            if c.task == "t.lien_search" {
                Behaviour::after_gate(&l, lien_reply.clone())
            } else if c.task == "t.title_search" {
                Behaviour::after_gate(&t, echo(c))
            } else if c.is_compensate() && held_undos.contains(&c.step.as_str()) {
                Behaviour::after_gate(&u, echo(c))
            } else {
                echo(c)
            }
        })
        .await;
        let id = env.start("closing", json!({})).await;
        // "a group's members run at once": both checks are out before either replies.
        let cs = worker
            .ledger
            .wait_for("both checks out", SOON, |cs| {
                cs.iter().filter(|c| c.step.ends_with("_search")).count() == 2
            })
            .await;
        wait_steps(&env, &id, CLOSING, AT_THE_CHECKS).await;
        // Each member's command carries what succeeded before its group, not its sibling's output.
        let open = json!({ "open": echo_output("open") });
        let paperwork = json!({
            "open": echo_output("open"),
            "inspect": echo_output("inspect"),
            "appraise": echo_output("appraise"),
        });
        for (name, results) in [
            ("inspect", &open),
            ("appraise", &open),
            ("title_search", &paperwork),
            ("lien_search", &paperwork),
        ] {
            assert_eq!(&one(&cs, name, "do").results, results, "{cs:#?}");
        }
        AtTheChecks {
            env,
            worker,
            id,
            lien,
            title,
            undo,
            held_undos,
        }
    }

    /// "A command still out is awaited until its reply or its deadline. Then the saga
    /// compensates": nothing changes for a while, and no compensation went out.
    async fn assert_nothing_compensated_yet(&self) {
        self.env
            .assert_quiet(&self.id, Duration::from_millis(700))
            .await;
        let cs = self.worker.ledger.of_saga(&self.id);
        assert!(
            cs.iter().all(CommandSeen::is_do),
            "nothing is compensated while a member is out: {cs:#?}"
        );
    }

    /// Opens the `title` gate; waits until the compensations of `held_undos` are out (held) and
    /// asserts the steps then (`held`); opens the `undo` gate and waits until the saga is
    /// `compensated` with its steps in `done`.
    async fn title_replies_then_compensate(&self, held: &str, done: &str) -> Value {
        self.title.open();
        let steps = self.held_undos;
        self.worker
            .ledger
            .wait_for(&format!("compensations of {steps:?}"), SOON, |cs| {
                cs.iter()
                    .filter(|c| c.is_compensate() && steps.contains(&c.step.as_str()))
                    .count()
                    == 2
            })
            .await;
        assert_steps(&self.env.status(&self.id).await, CLOSING, held);
        self.undo.open();
        let s = self.env.wait_state(&self.id, &["compensated"], SOON).await;
        assert_steps(&s, CLOSING, done);
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_member_of_a_task_group_waits_for_its_sibling_then_groups_compensate_in_reverse() {
    let lien_found = Behaviour::error("lien_found", "a lien on the title", false);
    let at = AtTheChecks::start(lien_found, ["inspect", "appraise"]).await;
    let (env, id) = (&at.env, &at.id);

    // One member fails for good while the other is still out: the saga leaves the forward path
    // at once and waits for the command still out.
    at.lien.open();
    let s = wait_compensating(env, id).await;
    assert_steps(
        &s,
        CLOSING,
        "succeeded succeeded succeeded running failed pending",
    );
    assert_eq!(
        step(&s, "lien_search")["error"],
        json!({ "code": "lien_found", "message": "a lien on the title", "retryable": false }),
        "{s:#}"
    );
    assert_eq!(s["failure"]["step"], "lien_search", "{s:#}");
    assert_eq!(s["failure"]["code"], "lien_found", "{s:#}");
    assert_eq!(s["failure"]["message"], "a lien on the title", "{s:#}");
    at.assert_nothing_compensated_yet().await;

    // The sibling's reply comes (ok): it is compensated first, then the earlier group's members
    // at once (both out before either replies), then the first step.
    let s = at
        .title_replies_then_compensate(
            "succeeded compensating compensating compensated failed pending",
            "compensated compensated compensated compensated failed pending",
        )
        .await;
    assert_eq!(
        (&s["failure"]["step"], &s["failure"]["code"]),
        (&json!("lien_search"), &json!("lien_found")),
        "the first cause stays: {s:#}"
    );

    // "in reverse order, a group's members at once"; "A step that ended with an error reply is
    // not compensated".
    assert_phases(
        &at.worker.ledger.of_saga(id),
        &[
            &["open:do"],
            &["inspect:do", "appraise:do"],
            &["title_search:do", "lien_search:do"],
            &["title_search:compensate"],
            &["inspect:compensate", "appraise:compensate"],
            &["open:compensate"],
        ],
    );
    let history = env.history(id).await;
    let kinds = kinds_of(&history);
    let failed = index_of(&history, "step_failed", Some("lien_search"));
    let started = index_of(&history, "compensation_started", None);
    let title_reply = index_of(&history, "reply_received", Some("title_search"));
    let title_undone = index_of(&history, "step_compensated", Some("title_search"));
    let open_undone = index_of(&history, "step_compensated", Some("open"));
    assert!(failed < started, "{kinds:?}");
    assert!(
        failed < title_reply && title_reply < title_undone,
        "{kinds:?}"
    );
    for name in ["inspect", "appraise"] {
        let undone = index_of(&history, "step_compensated", Some(name));
        assert!(title_undone < undone && undone < open_undone, "{kinds:?}");
    }
    assert!(
        entries(&history, "step_compensated", Some("lien_search")).is_empty(),
        "{kinds:?}"
    );
    assert_ends_with(&history, "saga_compensated");
    at.worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_task_group_awaits_both_members_then_compensates_them_at_once() {
    let lien_clear = Behaviour::ok(echo_output("lien_search"));
    let at = AtTheChecks::start(lien_clear, ["title_search", "lien_search"]).await;
    let (env, id) = (&at.env, &at.id);

    let raw = env.cancel(id, Some("the buyer walked away")).await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = wait_compensating(env, id).await;
    assert_steps(&s, CLOSING, AT_THE_CHECKS);
    // "`cancelled` … (step = the one running then, or null)": two run; either may be named.
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    assert!(
        [json!("title_search"), json!("lien_search"), Value::Null].contains(&s["failure"]["step"]),
        "{s:#}"
    );

    // One member's reply comes: the other is still out, so nothing is compensated yet.
    at.lien.open();
    wait_steps(
        env,
        id,
        CLOSING,
        "succeeded succeeded succeeded running succeeded pending",
    )
    .await;
    at.assert_nothing_compensated_yet().await;

    // The other's reply comes: both members are compensated at once, then the earlier steps.
    let s = at
        .title_replies_then_compensate(
            "succeeded succeeded succeeded compensating compensating pending",
            "compensated compensated compensated compensated compensated pending",
        )
        .await;
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    assert_phases(
        &at.worker.ledger.of_saga(id),
        &[
            &["open:do"],
            &["inspect:do", "appraise:do"],
            &["title_search:do", "lien_search:do"],
            &["title_search:compensate", "lien_search:compensate"],
            &["inspect:compensate", "appraise:compensate"],
            &["open:compensate"],
        ],
    );
    let history = env.history(id).await;
    let cancels = entries(&history, "cancel_requested", None);
    assert_eq!(cancels.len(), 1, "{:?}", kinds_of(&history));
    assert_eq!(
        (&cancels[0]["actor"], &cancels[0]["reason"]),
        (&json!("anonymous"), &json!("the buyer walked away")),
        "{:#}",
        cancels[0]
    );
    assert_ends_with(&history, "saga_compensated");
    at.worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_signatures_skips_the_waiting_await() {
    let (env, worker) = escrow_env("1h", echo).await;
    let id = start_at_the_signatures(&env).await;
    env.signal_accepted(&id, "buyer_signed", &signature("buyer_signed"))
        .await;
    wait_steps(&env, &id, ESCROW, BUYER_SIGNED).await;

    let raw = env.cancel(&id, Some("the seller withdrew")).await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    // "When the saga leaves the forward path, an await that was waiting becomes `skipped`".
    assert_steps(&s, ESCROW, "compensated succeeded skipped pending pending");
    // "`cancelled` … (step = the one running then …)".
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    assert_eq!(s["failure"]["step"], "seller_signature", "{s:#}");
    assert_eq!(
        order_of(&worker.ledger.of_saga(&id)),
        ["open_escrow:do", "open_escrow:compensate"]
    );
    // The seller signs after all: the saga and the step had moved on.
    assert_signal_refused(&env, &id, "seller_signed", "unexpected").await;
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_await_beside_a_task_waits_for_the_task_then_compensates_it() {
    // A group of a task and an await: the inspection runs while the buyer has 1s to sign.
    const INSPECTED: &Layout = &[
        ("open", None, true),
        ("inspect", Some("inspection"), true),
        ("buyer_signature", Some("inspection"), false),
        ("record", None, true),
    ];
    let env = env().await;
    env.register_new(&json!({
        "name": "inspected",
        "steps": [
            task_step("open", "10s"),
            { "name": "inspection", "parallel": [
                task_step("inspect", "10s"),
                { "name": "buyer_signature", "await": "buyer_signed", "timeout": "1s" } ] },
            task_step("record", "10s")
        ]
    }))
    .await;
    let names = ["open", "inspect", "record"];
    let gate = Gate::new();
    let worker = Worker::start(
        &env,
        &strs(&tasks_of(&names)),
        echo_holding("t.inspect", &gate),
    )
    .await;
    let id = env.start("inspected", json!({})).await;

    // The await lapses while the inspection is out: the saga leaves the forward path and waits.
    let s = wait_compensating(&env, &id).await;
    assert_steps(&s, INSPECTED, "succeeded running timed_out pending");
    assert_eq!(
        (&s["failure"]["step"], &s["failure"]["code"]),
        (&json!("buyer_signature"), &json!("timed_out")),
        "{s:#}"
    );
    env.assert_quiet(&id, Duration::from_millis(700)).await;
    assert!(
        worker.ledger.of_saga(&id).iter().all(CommandSeen::is_do),
        "nothing is compensated while the inspection is out"
    );

    // The inspection succeeds after all: it is compensated, then the opening.
    gate.open();
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    assert_steps(&s, INSPECTED, "compensated compensated timed_out pending");
    assert_eq!(
        s["failure"]["code"], "timed_out",
        "the first cause stays: {s:#}"
    );
    assert_phases(
        &worker.ledger.of_saga(&id),
        &[
            &["open:do"],
            &["inspect:do"],
            &["inspect:compensate"],
            &["open:compensate"],
        ],
    );
    assert_ends_with(&env.history(&id).await, "saga_compensated");
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_messages_that_cannot_start_an_escrow_are_dead_lettered() {
    let env = env().await;
    env.register_new(&escrow("1h")).await;
    let amqp = env.amqp().await;
    // Each bad body breaks one thing of a good one; `version` is optional (the latest).
    let start = |definition: &str, version: Option<i64>, input: Value| {
        let mut body = json!({ "definition": definition, "input": input });
        if let Some(v) = version {
            body["version"] = json!(v);
        }
        body.to_string().into_bytes()
    };
    // "One that cannot start a saga (not JSON, unknown definition, input that breaks the schema)
    // is dead-lettered to `saga.start.dlq`": and an unknown version, an input that is no object.
    let bodies = [
        b"<closing property='12 Elm Street'/>".to_vec(),
        start("house_sale", None, closing()),
        start("escrow", Some(7), closing()),
        start(
            "escrow",
            None,
            json!({ "property": "12 Elm Street", "price_cents": 0 }),
        ),
        start("escrow", None, json!(["12 Elm Street"])),
    ];
    let mut bad = Vec::new();
    for body in &bodies {
        bad.push(amqp.publish_start(body, None).await);
    }
    amqp.take_dead_letters("saga.start.dlq", &bad, SOON).await;

    // A good one, twice with the same `message_id` (the idempotency key): one saga, started by
    // `amqp`.
    let good = start("escrow", None, closing());
    for _ in 0..2 {
        amqp.publish_start(&good, Some("closing-12-elm-street"))
            .await;
    }
    let sentinel = amqp.publish_start(b"not json", None).await;
    amqp.take_dead_letters("saga.start.dlq", &[sentinel], SOON)
        .await;
    let listed = env.wait_listed("definition=escrow", 1, SOON).await;
    assert_eq!(listed.len(), 1, "one saga per message_id: {listed:#?}");
    let id = listed[0]["id"].as_str().expect("an id");
    let s = env.status(id).await;
    assert_eq!(
        (&s["definition"], &s["version"], &s["input"], &s["state"]),
        (&json!("escrow"), &json!(1), &closing(), &json!("running")),
        "{s:#}"
    );
    let history = env.history(id).await;
    assert_eq!(history[0]["kind"], "saga_started", "{history:#?}");
    assert_eq!(history[0]["actor"], "amqp", "{:#}", history[0]);
    assert_eq!(
        entries(&history, "saga_started", None).len(),
        1,
        "{history:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_dead_lettered_and_recorded_for_their_saga() {
    let (env, worker) = escrow_env("1h", echo).await;
    let amqp = env.amqp().await;
    let a = start_at_the_signatures(&env).await;
    let b = start_at_the_signatures(&env).await;
    env.signal_accepted(&a, "buyer_signed", &signature("buyer_signed"))
        .await;
    let a_before = wait_steps(&env, &a, ESCROW, BUYER_SIGNED).await;
    let b_before = env.status(&b).await;

    let unknown = uuid::Uuid::now_v7().to_string();
    let bytes = |v: Value| v.to_string().into_bytes();
    let cases: [(&str, Option<&str>, Vec<u8>); 8] = [
        // A saga that does not exist.
        (
            "seller_signed",
            Some(&unknown),
            bytes(signature("seller_signed")),
        ),
        // A correlation_id that is no saga id at all.
        (
            "seller_signed",
            Some("closing-12-elm-street"),
            bytes(signature("seller_signed")),
        ),
        // No correlation_id, and a `saga_id` that names no saga.
        (
            "seller_signed",
            None,
            bytes(json!({ "saga_id": unknown, "payload": 1 })),
        ),
        // No correlation_id, and no `saga_id` in the body.
        (
            "seller_signed",
            None,
            bytes(json!({ "payload": signature("seller_signed") })),
        ),
        // "With a `correlation_id`, a body that is an object whose `saga_id` names another saga is
        // refused."
        (
            "seller_signed",
            Some(&a),
            bytes(json!({ "saga_id": b, "signed": true })),
        ),
        // A body that is not JSON.
        ("seller_signed", Some(&a), b"signed, sealed".to_vec()),
        // An event no await names.
        ("title_insured", Some(&a), b"{}".to_vec()),
        // An event already delivered (over HTTP); the body's `saga_id` agrees.
        (
            "buyer_signed",
            Some(&a),
            bytes(json!({ "saga_id": a, "again": true })),
        ),
    ];
    let mut refused = Vec::new();
    for (event, correlation_id, body) in &cases {
        refused.push(amqp.publish_event(event, *correlation_id, body).await);
    }
    // "a refused one (and one that is not JSON, names no or an unknown saga, or whose two saga
    // ids disagree) is dead-lettered to `saga.events.dlq`".
    amqp.take_dead_letters("saga.events.dlq", &refused, SOON)
        .await;

    // "A refused signal for an existing saga, over HTTP or AMQP, is recorded as
    // `signal_ignored`", by `amqp`, and changes nothing.
    let history = env.history(&a).await;
    let ignored = entries(&history, "signal_ignored", None);
    for reason in ["unexpected", "duplicate"] {
        let found: Vec<&&Value> = ignored.iter().filter(|e| e["reason"] == reason).collect();
        assert_eq!(found.len(), 1, "{reason}: {ignored:#?}");
        assert_eq!(found[0]["actor"], "amqp", "{:#}", found[0]);
    }
    assert_eq!(env.status(&a).await, a_before, "refusals change nothing");
    assert_eq!(env.status(&b).await, b_before, "refusals change nothing");
    assert!(
        entries(&env.history(&b).await, "signal_received", None).is_empty(),
        "the disagreeing event was delivered to neither saga"
    );

    // The saga goes on with the events it was meant to have.
    env.signal_accepted(&a, "seller_signed", &signature("seller_signed"))
        .await;
    amqp.publish_event(
        "funds_deposited",
        None,
        json!({ "saga_id": a, "payload": funds() })
            .to_string()
            .as_bytes(),
    )
    .await;
    let s = env.wait_state(&a, &["completed"], SOON).await;
    assert_eq!(
        s["output"]["buyer_signature"],
        signature("buyer_signed"),
        "{s:#}"
    );
    assert_eq!(s["output"]["funds"], funds(), "{s:#}");
    worker.ledger.assert_clean();
}
