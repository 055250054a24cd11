//! The saga engine (PROTOCOL §2 states, §3 commands, §4 semantics), driven by a scripted worker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::{Method, StatusCode};
use saga_e2e::http::{Body, pointers_of, step};
use saga_e2e::worker::{CommandSeen, echo, echo_holding, echo_output as out, find, one, order_of};
use saga_e2e::{Behaviour, Gate, Worker, assert_problem, kinds_of};
use serde_json::{Value, json};

use crate::{SOON, entries, env, index_of, linear_definition, strs, task_step, tasks_of};

const HISTORY_KEYS: &[&str] = &[
    "seq",
    "at",
    "kind",
    "step",
    "attempt",
    "command_id",
    "actor",
    "reason",
    "data",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_runs_steps_in_order_and_completes() {
    let env = env().await;
    let names = ["a", "b", "c"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), echo).await;
    let input = json!({ "order_id": "o-1", "amount": 12 });
    let id = env.start("flow", input.clone()).await;
    let s = env.wait_state(&id, &["completed"], SOON).await;

    // "`output` is `{ step name: output }` once `completed`."
    assert_eq!(
        s["output"],
        json!({ "a": out("a"), "b": out("b"), "c": out("c") }),
        "{s:#}"
    );
    assert_eq!(s["failure"], Value::Null);
    assert_eq!(s["stuck"], false);
    for n in names {
        let st = step(&s, n);
        assert_eq!(st["state"], "succeeded", "{s:#}");
        assert_eq!(st["attempts"], 1, "{s:#}");
        assert_eq!(st["output"], out(n), "{s:#}");
        assert_eq!(st["error"], Value::Null, "{s:#}");
        assert!(
            st["started_at"].is_string() && st["finished_at"].is_string(),
            "{s:#}"
        );
    }

    // Commands: in order, one attempt each, carrying the input and the results so far.
    let cs = worker.ledger.of_saga(&id);
    assert_eq!(order_of(&cs), ["a:do", "b:do", "c:do"], "{cs:#?}");
    let expected_results = [
        json!({}),
        json!({ "a": out("a") }),
        json!({ "a": out("a"), "b": out("b") }),
    ];
    for (c, results) in cs.iter().zip(expected_results) {
        c.assert_properties();
        for k in [
            "command_id",
            "saga_id",
            "step",
            "task",
            "kind",
            "attempt",
            "idempotency_key",
            "compensates",
            "deadline",
            "input",
            "results",
        ] {
            assert!(c.body.get(k).is_some(), "command lacks {k}: {:#}", c.body);
        }
        assert_eq!(c.saga_id, id);
        assert_eq!(c.task, format!("t.{}", c.step));
        assert_eq!(c.attempt, 1);
        assert_eq!(c.compensates, None);
        assert_eq!(c.input, input);
        assert_eq!(c.results, results, "results of the steps before {}", c.step);
        // "`deadline` is … the moment the command was handed to the broker plus the step's timeout".
        let deadline = c.deadline.expect("deadline");
        let ahead = (deadline - c.received_at).num_milliseconds();
        assert!(
            (8_000..=10_500).contains(&ahead),
            "deadline {ahead} ms after receipt: {c:#?}"
        );
    }
    let keys: BTreeSet<&str> = cs.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_eq!(keys.len(), 3, "idempotency keys differ across steps");
    let ids: BTreeSet<&str> = cs.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids.len(), 3);

    // History: the whole story, in order.
    let history = env.history(&id).await;
    let mut expected = vec!["saga_started"];
    for _ in names {
        expected.extend(["command_dispatched", "reply_received", "step_succeeded"]);
    }
    expected.push("saga_completed");
    assert_eq!(kinds_of(&history), expected, "{history:#?}");
    let mut last_seq = i64::MIN;
    for e in &history {
        for k in HISTORY_KEYS {
            assert!(e.get(*k).is_some(), "history entry lacks {k}: {e:#}");
        }
        let seq = e["seq"].as_i64().expect("integer seq");
        assert!(seq > last_seq, "seq grows: {history:#?}");
        last_seq = seq;
        if e["kind"] != "saga_started" {
            assert_eq!(
                e["actor"],
                Value::Null,
                "engine transitions have a null actor: {e:#}"
            );
        }
    }
    assert_eq!(history[0]["actor"], "anonymous", "{:#}", history[0]);
    for (e, c) in entries(&history, "command_dispatched", None)
        .iter()
        .zip(&cs)
    {
        assert_eq!(e["step"], json!(c.step), "{e:#}");
        assert_eq!(e["attempt"], 1, "{e:#}");
        assert_eq!(e["command_id"], json!(c.command_id), "{e:#}");
    }
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_compensates_the_earlier_ones_in_reverse() {
    let env = env().await;
    let names = ["a", "b", "c"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| {
        if c.task == "t.c" {
            Behaviour::error("card_declined", "no funds", false)
        } else {
            echo(c)
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["compensated"], SOON).await;

    // "`failure` says why a saga left the forward path: the step and the worker's error `code`".
    assert_eq!(s["failure"]["step"], "c", "{s:#}");
    assert_eq!(s["failure"]["code"], "card_declined", "{s:#}");
    assert_eq!(s["failure"]["message"], "no funds", "{s:#}");
    assert!(s["failure"]["at"].is_string(), "{s:#}");
    assert_eq!(s["output"], Value::Null, "{s:#}");
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(step(&s, "b")["state"], "compensated", "{s:#}");
    let c = step(&s, "c");
    assert_eq!(c["state"], "failed", "{s:#}");
    assert_eq!(
        c["attempts"], 1,
        "a non-retryable error ends the step at once: {s:#}"
    );
    assert_eq!(
        c["error"],
        json!({ "code": "card_declined", "message": "no funds", "retryable": false }),
        "{s:#}"
    );
    assert_eq!(
        step(&s, "a")["attempts"],
        1,
        "compensations are not counted: {s:#}"
    );

    // "in reverse order"; "A step that ended with an error reply is not compensated".
    let cs = worker.ledger.of_saga(&id);
    assert_eq!(
        order_of(&cs),
        ["a:do", "b:do", "c:do", "b:compensate", "a:compensate"],
        "{cs:#?}"
    );
    for n in ["a", "b"] {
        let d = one(&cs, n, "do");
        let u = one(&cs, n, "compensate");
        u.assert_properties();
        assert_eq!(u.task, format!("t.{n}_undo"));
        assert_eq!(u.attempt, 1);
        // "On a `compensate` command, `compensates` is the idempotency key of the `do` it undoes".
        assert_eq!(
            u.compensates.as_deref(),
            Some(d.idempotency_key.as_str()),
            "{u:#?}"
        );
        assert_ne!(
            u.idempotency_key, d.idempotency_key,
            "keys differ across kinds"
        );
        // "for a `compensate` command it includes the step's own output when there is one".
        assert_eq!(u.results[n], out(n), "{u:#?}");
    }

    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    let failed = index_of(&history, "step_failed", Some("c"));
    let started = index_of(&history, "compensation_started", None);
    let comp_b = index_of(&history, "step_compensated", Some("b"));
    let comp_a = index_of(&history, "step_compensated", Some("a"));
    assert!(
        failed < started && started < comp_b && comp_b < comp_a,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("saga_compensated"),
        "{kinds:?}"
    );
    assert!(
        entries(&history, "step_compensated", Some("c")).is_empty(),
        "{kinds:?}"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_never_replies_times_out_retries_and_is_compensated() {
    let env = env().await;
    let mut b = task_step("b", "300ms");
    b["retry"] = json!({ "max_attempts": 2, "initial_backoff": "50ms" });
    let def = json!({ "name": "flow", "steps": [ task_step("a", "10s"), b ] });
    assert_eq!(env.register(&def).await.0, StatusCode::CREATED);
    let names = ["a", "b"];
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| {
        if c.task == "t.b" {
            Behaviour::NoReply
        } else {
            echo(c)
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["compensated"], SOON).await;

    assert_eq!(s["failure"]["step"], "b", "{s:#}");
    assert_eq!(s["failure"]["code"], "timed_out", "{s:#}");
    let sb = step(&s, "b");
    assert_eq!(sb["attempts"], 2, "{s:#}");
    // "every task step whose last attempt timed out (its outcome is unknown) gets its `compensate`".
    assert_eq!(sb["state"], "compensated", "{s:#}");
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");

    let cs = worker.ledger.of_saga(&id);
    assert_eq!(
        order_of(&cs),
        ["a:do", "b:do", "b:do", "b:compensate", "a:compensate"],
        "{cs:#?}"
    );
    let dos = find(&cs, "b", "do");
    assert_eq!((dos[0].attempt, dos[1].attempt), (1, 2));
    assert_ne!(
        dos[0].command_id, dos[1].command_id,
        "a new command id per attempt"
    );
    // "the same for every attempt of the same saga, step and kind".
    assert_eq!(dos[0].idempotency_key, dos[1].idempotency_key);
    let undo = one(&cs, "b", "compensate");
    assert_eq!(
        undo.compensates.as_deref(),
        Some(dos[0].idempotency_key.as_str())
    );
    assert!(
        undo.results.get("b").is_none_or(Value::is_null),
        "b had no output: {undo:#?}"
    );

    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    let timeouts = entries(&history, "attempt_timed_out", Some("b"));
    assert_eq!(timeouts.len(), 2, "{kinds:?}");
    assert_eq!(
        (
            timeouts[0]["attempt"].clone(),
            timeouts[1]["attempt"].clone()
        ),
        (json!(1), json!(2))
    );
    let retries = entries(&history, "retry_scheduled", Some("b"));
    assert_eq!(retries.len(), 1, "{kinds:?}");
    // "`retry_scheduled.attempt` is the number of the attempt to come".
    assert_eq!(retries[0]["attempt"], 2, "{:#}", retries[0]);
    // "A timed-out last attempt is `attempt_timed_out` followed by `step_failed`".
    let last_timeout = history
        .iter()
        .rposition(|e| e["kind"] == "attempt_timed_out" && e["step"] == "b")
        .expect("a timeout");
    let failed = index_of(&history, "step_failed", Some("b"));
    assert!(last_timeout < failed, "{kinds:?}");
    assert!(
        index_of(&history, "retry_scheduled", Some("b")) < last_timeout,
        "{kinds:?}"
    );
    let comp_b = index_of(&history, "step_compensated", Some("b"));
    let comp_a = index_of(&history, "step_compensated", Some("a"));
    assert!(failed < comp_b && comp_b < comp_a, "{kinds:?}");
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_error_is_retried_then_succeeds() {
    let env = env().await;
    let names = ["a"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| {
        if c.attempt == 1 {
            Behaviour::error("busy", "try later", true)
        } else {
            echo(c)
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["completed"], SOON).await;
    let sa = step(&s, "a");
    assert_eq!(sa["state"], "succeeded", "{s:#}");
    assert_eq!(sa["attempts"], 2, "{s:#}");
    // "A step's `error` is the last error reply `{ "code", "message", "retryable" }`."
    assert_eq!(
        sa["error"],
        json!({ "code": "busy", "message": "try later", "retryable": true }),
        "{s:#}"
    );
    assert_eq!(s["output"], json!({ "a": out("a") }));

    let cs = worker.ledger.of_saga(&id);
    assert_eq!(order_of(&cs), ["a:do", "a:do"], "{cs:#?}");
    assert_eq!((cs[0].attempt, cs[1].attempt), (1, 2));
    assert_eq!(cs[0].idempotency_key, cs[1].idempotency_key);
    assert_ne!(cs[0].command_id, cs[1].command_id);

    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    assert_eq!(
        kinds,
        [
            "saga_started",
            "command_dispatched",
            "reply_received",
            "retry_scheduled",
            "command_dispatched",
            "reply_received",
            "step_succeeded",
            "saga_completed"
        ],
        "{history:#?}"
    );
    assert_eq!(entries(&history, "retry_scheduled", None)[0]["attempt"], 2);
    let dispatched = entries(&history, "command_dispatched", None);
    assert_eq!(dispatched[1]["attempt"], 2);
    assert_eq!(dispatched[1]["command_id"], json!(cs[1].command_id));
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_step_awaits_its_reply_then_compensates_it() {
    let env = env().await;
    let names = ["a", "b", "c"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let gate = Gate::new();
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), echo_holding("t.b", &gate)).await;
    let id = env.start("flow", json!({})).await;
    worker
        .ledger
        .wait_for("b's command", SOON, |cs| cs.iter().any(|c| c.step == "b"))
        .await;

    let raw = env.cancel(&id, Some("customer called")).await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env
        .wait_until(&id, SOON, "off the forward path", |s| {
            s["state"] != "running"
        })
        .await;
    assert_eq!(s["state"], "compensating", "{s:#}");
    assert_eq!(
        step(&s, "b")["state"],
        "running",
        "b's command is still out: {s:#}"
    );

    // The held reply arrives: b succeeded, so it is compensated, then a.
    gate.open();
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    assert_eq!(s["failure"]["step"], "b", "{s:#}");
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(step(&s, "b")["state"], "compensated", "{s:#}");
    assert_eq!(
        step(&s, "c")["state"],
        "pending",
        "steps never reached stay pending: {s:#}"
    );
    let cs = worker.ledger.of_saga(&id);
    assert_eq!(
        order_of(&cs),
        ["a:do", "b:do", "b:compensate", "a:compensate"],
        "no further forward step starts: {cs:#?}"
    );
    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    let cancel = index_of(&history, "cancel_requested", None);
    let reply_b = history
        .iter()
        .rposition(|e| e["kind"] == "reply_received" && e["step"] == "b")
        .expect("b's reply recorded");
    assert!(cancel < reply_b, "{kinds:?}");
    assert!(
        reply_b < index_of(&history, "step_compensated", Some("b")),
        "{kinds:?}"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_deadline_stops_it_and_compensation_still_runs() {
    let env = env().await;
    let mut b = task_step("b", "2s");
    b["retry"] = json!({ "max_attempts": 1 });
    let def = json!({ "name": "flow", "timeout": "1s", "steps": [ task_step("a", "10s"), b, task_step("c", "10s") ] });
    assert_eq!(env.register(&def).await.0, StatusCode::CREATED);
    let names = ["a", "b", "c"];
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| {
        if c.task == "t.b" {
            Behaviour::NoReply
        } else {
            echo(c)
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    // "`deadline_exceeded` (step = the one running then, or null)"; "The first cause stays".
    assert_eq!(s["failure"]["code"], "deadline_exceeded", "{s:#}");
    assert_eq!(s["failure"]["step"], "b", "{s:#}");
    assert!(s["deadline"].is_string(), "{s:#}");
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(
        step(&s, "b")["state"],
        "compensated",
        "its outcome is unknown: {s:#}"
    );
    assert_eq!(step(&s, "c")["state"], "pending", "{s:#}");
    let cs = worker.ledger.of_saga(&id);
    assert_eq!(
        order_of(&cs),
        ["a:do", "b:do", "b:compensate", "a:compensate"],
        "{cs:#?}"
    );
    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    let passed = index_of(&history, "deadline_passed", None);
    assert!(
        passed < index_of(&history, "step_compensated", Some("b")),
        "{kinds:?}"
    );
    // "it never cuts compensation short": compensation happens after the deadline and completes.
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("saga_compensated"),
        "{kinds:?}"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_suspends_until_an_operator_retries() {
    let env = env().await;
    let mut a = task_step("a", "10s");
    a["compensation_retry"] = json!({ "max_attempts": 2, "initial_backoff": "50ms" });
    let def = json!({ "name": "flow", "steps": [ a, task_step("b", "10s") ] });
    assert_eq!(env.register(&def).await.0, StatusCode::CREATED);
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let names = ["a", "b"];
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), move |c| {
        match c.task.as_str() {
            "t.b" => Behaviour::error("rejected", "no", false),
            "t.a_undo" if !f.load(Ordering::SeqCst) => {
                Behaviour::error("locked", "cannot undo", true)
            }
            _ => echo(c),
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["suspended"], SOON).await;
    // "`suspended` (a compensation failed … or ran out of attempts…)"; "`stuck` is true when the
    // saga is `suspended`".
    assert_eq!(step(&s, "a")["state"], "compensation_failed", "{s:#}");
    assert_eq!(step(&s, "b")["state"], "failed", "{s:#}");
    assert_eq!(s["stuck"], true, "{s:#}");
    assert!(s["stuck_reason"].is_string(), "{s:#}");
    assert_eq!(
        s["failure"]["code"], "rejected",
        "the first cause stays: {s:#}"
    );
    let undos: Vec<CommandSeen> = worker
        .ledger
        .of_saga(&id)
        .into_iter()
        .filter(|c| c.task == "t.a_undo")
        .collect();
    assert_eq!(undos.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(undos[0].idempotency_key, undos[1].idempotency_key);
    let history = env.history(&id).await;
    let kinds = kinds_of(&history);
    assert!(
        index_of(&history, "compensation_failed", Some("a"))
            < index_of(&history, "saga_suspended", None)
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("saga_suspended"),
        "{kinds:?}"
    );
    // "`stuck=true|false`" lists it among the stuck.
    let stuck = env.list_all("stuck=true", 50).await;
    assert_eq!(stuck.len(), 1, "{stuck:#?}");
    assert_eq!(stuck[0]["id"], json!(id));
    assert_eq!(stuck[0]["state"], "suspended");
    assert!(env.list_all("stuck=false", 50).await.is_empty());
    assert_eq!(env.list_all("state=suspended", 50).await.len(), 1);
    assert_problem(&env.cancel(&id, None).await, StatusCode::CONFLICT);

    // "re-dispatch the compensation that suspended the saga, with a fresh attempt budget".
    fixed.store(true, Ordering::SeqCst);
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/retry"),
            &json!({ "reason": "unlocked it" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(s["stuck"], false, "{s:#}");
    let undos: Vec<i64> = worker
        .ledger
        .of_saga(&id)
        .iter()
        .filter(|c| c.task == "t.a_undo")
        .map(|c| c.attempt)
        .collect();
    // "`attempt` … keeps counting across an operator's retry".
    assert_eq!(undos, [1, 2, 3]);
    let history = env.history(&id).await;
    let retry = entries(&history, "operator_retry", None);
    assert_eq!(retry.len(), 1, "{:?}", kinds_of(&history));
    assert_eq!(retry[0]["actor"], "anonymous", "{:#}", retry[0]);
    assert_eq!(retry[0]["reason"], "unlocked it", "{:#}", retry[0]);
    // Not suspended any more.
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/retry"),
            &json!({ "reason": "again" }),
        )
        .await;
    assert_problem(&raw, StatusCode::CONFLICT);
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_skip_and_terminate_suspended_sagas() {
    let env = env().await;
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| match c.task.as_str() {
        "t.b" => Behaviour::error("rejected", "no", false),
        // A non-retryable compensation error suspends at once.
        "t.a_undo" => Behaviour::error("gone", "cannot undo", false),
        _ => echo(c),
    })
    .await;
    let skip_id = env.start("flow", json!({})).await;
    let term_id = env.start("flow", json!({})).await;
    for id in [&skip_id, &term_id] {
        let s = env.wait_state(id, &["suspended"], SOON).await;
        assert_eq!(step(&s, "a")["state"], "compensation_failed", "{s:#}");
        let undos = worker
            .ledger
            .of_saga(id)
            .iter()
            .filter(|c| c.task == "t.a_undo")
            .count();
        assert_eq!(undos, 1, "a non-retryable error is not retried");
    }

    // "an empty body where a `reason` is required gets 422 with the pointer `/reason`".
    for body in [Body::None, Body::Json(json!({}))] {
        let raw = env
            .request(
                Method::POST,
                &format!("/v1/sagas/{skip_id}/skip"),
                &[],
                body,
            )
            .await;
        let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(pointers_of(&p), ["/reason"], "{p:#}");
    }
    let raw = env
        .post_json(
            &format!("/v1/sagas/{skip_id}/skip"),
            &json!({ "reason": "undone by hand" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env.wait_state(&skip_id, &["compensated"], SOON).await;
    assert_eq!(s["failure"]["code"], "rejected", "{s:#}");
    let history = env.history(&skip_id).await;
    let skip = entries(&history, "operator_skip", None);
    assert_eq!(skip.len(), 1, "{:?}", kinds_of(&history));
    assert_eq!(skip[0]["reason"], "undone by hand");
    assert_eq!(skip[0]["actor"], "anonymous");

    let raw = env
        .request(
            Method::POST,
            &format!("/v1/sagas/{term_id}/terminate"),
            &[],
            Body::None,
        )
        .await;
    let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers_of(&p), ["/reason"], "{p:#}");
    let raw = env
        .post_json(
            &format!("/v1/sagas/{term_id}/terminate"),
            &json!({ "reason": "give up" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env.wait_state(&term_id, &["terminated"], SOON).await;
    // "`terminated` (only when nothing had failed before)".
    assert_eq!(s["failure"]["code"], "rejected", "{s:#}");
    let history = env.history(&term_id).await;
    let kinds = kinds_of(&history);
    assert_eq!(
        entries(&history, "operator_terminate", None).len(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("saga_terminated"),
        "{kinds:?}"
    );

    // "409 unless `suspended`" / "409 if terminal".
    for (id, action) in [
        (&skip_id, "retry"),
        (&skip_id, "skip"),
        (&term_id, "terminate"),
    ] {
        let raw = env
            .post_json(
                &format!("/v1/sagas/{id}/{action}"),
                &json!({ "reason": "late" }),
            )
            .await;
        assert_problem(&raw, StatusCode::CONFLICT);
    }
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_a_running_saga_records_terminated_as_the_failure() {
    let env = env().await;
    let names = ["a"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let gate = Gate::new();
    let g = gate.clone();
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), move |c| {
        Behaviour::after_gate(&g, echo(c))
    })
    .await;
    let id = env.start("flow", json!({})).await;
    worker
        .ledger
        .wait_for("a's command", SOON, |cs| !cs.is_empty())
        .await;
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/terminate"),
            &json!({ "reason": "stop now" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    // "end the saga at once without compensation".
    let s = env.wait_state(&id, &["terminated"], SOON).await;
    assert_eq!(s["failure"]["code"], "terminated", "{s:#}");
    gate.open();
    // The late reply is recorded as ignored and changes nothing.
    let history = env
        .wait_history(&id, SOON, "reply_ignored", |h| {
            h.iter().any(|e| e["kind"] == "reply_ignored")
        })
        .await;
    let s2 = env.status(&id).await;
    assert_eq!(s2["revision"], s["revision"], "{s2:#}");
    assert!(find(&worker.ledger.of_saga(&id), "a", "compensate").is_empty());
    let ignored = entries(&history, "reply_ignored", None);
    assert_eq!(ignored.len(), 1, "{:?}", kinds_of(&history));
    // Nothing awaited it any more: the saga "had moved on" (or, read as a late one, "late").
    let reason = ignored[0]["reason"].as_str().unwrap_or_default();
    assert!(["unexpected", "late"].contains(&reason), "{:#}", ignored[0]);
    worker.ledger.assert_clean();
}
