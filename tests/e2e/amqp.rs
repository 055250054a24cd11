//! PROTOCOL §3 from the broker's side: replies that are duplicate, late or malformed, start
//! messages, and lifecycle events.

use std::time::Duration;

use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use saga_e2e::http::{Body, step};
use saga_e2e::worker::{error_reply_body, ok_reply_body};
use saga_e2e::{Behaviour, Gate, Worker, kinds_of};
use serde_json::{Value, json};

use crate::{SOON, entries, env, linear_definition, strs, task_step, tasks_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_reply_is_ignored_and_changes_nothing() {
    let env = env().await;
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let gate = Gate::new();
    let g = gate.clone();
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), move |c| {
        match c.task.as_str() {
            "t.b" => Behaviour::after_gate(&g, Behaviour::ok(json!("B"))),
            _ => Behaviour::ok(json!("A")),
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env
        .wait_until(&id, SOON, "a succeeded and b out", |s| {
            step(s, "a")["state"] == "succeeded" && step(s, "b")["state"] == "running"
        })
        .await;
    let rev = s["revision"].clone();
    let a = worker
        .ledger
        .of_saga(&id)
        .into_iter()
        .find(|c| c.step == "a")
        .expect("a's command");

    // The same reply again, as a worker that redelivers would send it.
    let amqp = env.amqp().await;
    amqp.publish_reply(
        Some(&a.command_id),
        &ok_reply_body(&a.command_id, &json!("A")),
    )
    .await;
    let history = env
        .wait_history(&id, SOON, "reply_ignored", |h| {
            h.iter().any(|e| e["kind"] == "reply_ignored")
        })
        .await;
    let ignored = entries(&history, "reply_ignored", None);
    assert_eq!(ignored.len(), 1, "{:?}", kinds_of(&history));
    // "`duplicate` (that command already had its reply …)".
    assert_eq!(ignored[0]["reason"], "duplicate", "{:#}", ignored[0]);
    assert_eq!(
        ignored[0]["command_id"],
        json!(a.command_id),
        "{:#}",
        ignored[0]
    );
    // "a reply or signal that is ignored changes nothing, so not it either" (the revision).
    let s = env.status(&id).await;
    assert_eq!(s["revision"], rev, "{s:#}");

    gate.open();
    env.wait_state(&id, &["completed"], SOON).await;
    let history = env.history(&id).await;
    let received: Vec<&Value> = entries(&history, "reply_received", Some("a"));
    assert_eq!(received.len(), 1, "{:?}", kinds_of(&history));
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_error_reply_to_a_timed_out_attempt_is_ignored() {
    let env = env().await;
    let mut a = task_step("a", "2500ms");
    a["retry"] = json!({ "max_attempts": 2, "initial_backoff": "50ms" });
    assert_eq!(
        env.register(&json!({ "name": "flow", "steps": [a] }))
            .await
            .0,
        StatusCode::CREATED
    );
    let gate = Gate::new();
    let g = gate.clone();
    let worker = Worker::start(&env, &["t.a", "t.a_undo"], move |c| {
        if c.attempt == 1 {
            Behaviour::NoReply
        } else {
            Behaviour::after_gate(&g, Behaviour::ok(json!("second")))
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let cs = worker
        .ledger
        .wait_for("attempt 2", SOON, |cs| cs.iter().any(|c| c.attempt == 2))
        .await;
    let first = cs.iter().find(|c| c.attempt == 1).expect("attempt 1");

    // Attempt 1 timed out and attempt 2 is out: its error reply comes now.
    let amqp = env.amqp().await;
    amqp.publish_reply(
        Some(&first.command_id),
        &error_reply_body(&first.command_id, "boom", "too late", false),
    )
    .await;
    let history = env
        .wait_history(&id, SOON, "reply_ignored", |h| {
            h.iter().any(|e| e["kind"] == "reply_ignored")
        })
        .await;
    let ignored = entries(&history, "reply_ignored", None);
    // "`late` (the attempt had timed out or a newer one was out …)"; "Only the latest attempt's
    // error counts."
    assert_eq!(ignored[0]["reason"], "late", "{:#}", ignored[0]);
    assert_eq!(
        ignored[0]["command_id"],
        json!(first.command_id),
        "{:#}",
        ignored[0]
    );
    let s = env.status(&id).await;
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(step(&s, "a")["state"], "running", "{s:#}");

    gate.open();
    let s = env.wait_state(&id, &["completed"], SOON).await;
    let sa = step(&s, "a");
    assert_eq!(sa["attempts"], 2, "{s:#}");
    assert_eq!(
        sa["error"],
        Value::Null,
        "an ignored reply changes nothing: {s:#}"
    );
    assert_eq!(s["output"], json!({ "a": "second" }));
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_are_dead_lettered_and_the_orchestrator_goes_on() {
    let env = env().await;
    assert_eq!(
        env.register(&linear_definition("flow", &["a"], "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let amqp = env.amqp().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let bodies: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        br#"{"status":"ok","output":1}"#.to_vec(),
        format!(r#"{{"command_id":"{unknown}","status":"ok","output":1}}"#).into_bytes(),
        format!(r#"{{"command_id":"{unknown}","status":"maybe"}}"#).into_bytes(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(format!("corr-{i}").as_str().into())
            .with_message_id(format!("msg-{i}").as_str().into());
        amqp.publish("", "saga.replies", body, props)
            .await
            .expect("publish a malformed reply");
    }
    // "it publishes itself to the DLQ with the original body and properties and the header
    // `x-saga-error` (a reason in words)".
    let dead = amqp
        .take_matching("saga.replies.dlq", bodies.len(), SOON, |m| {
            bodies.contains(&m.body)
        })
        .await;
    for (i, body) in bodies.iter().enumerate() {
        let m = dead
            .iter()
            .find(|m| &m.body == body)
            .expect("each malformed reply dead-lettered");
        let reason = m.header("x-saga-error").unwrap_or_default();
        assert!(!reason.trim().is_empty(), "no x-saga-error on {m:?}");
        assert_eq!(
            m.properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            Some(format!("corr-{i}")),
            "original properties kept: {m:?}"
        );
        assert_eq!(
            m.properties
                .message_id()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            Some(format!("msg-{i}")),
            "original properties kept: {m:?}"
        );
    }

    // "It never stops the orchestrator."
    let worker = Worker::start(&env, &["t.a", "t.a_undo"], |_| Behaviour::ok(json!(1))).await;
    let id = env.start("flow", json!({})).await;
    env.wait_state(&id, &["completed"], SOON).await;
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_without_error_for_a_known_command_is_dead_lettered_and_recorded() {
    let env = env().await;
    let mut a = task_step("a", "1500ms");
    a["retry"] = json!({ "max_attempts": 2, "initial_backoff": "50ms" });
    assert_eq!(
        env.register(&json!({ "name": "flow", "steps": [a] }))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &["t.a", "t.a_undo"], |c| {
        if c.attempt == 1 {
            Behaviour::ReplyRaw(
                json!({ "command_id": c.command_id, "status": "error" })
                    .to_string()
                    .into_bytes(),
            )
        } else {
            Behaviour::ok(json!("ok"))
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["completed"], SOON).await;
    assert_eq!(step(&s, "a")["attempts"], 2, "{s:#}");
    let first = worker
        .ledger
        .of_saga(&id)
        .into_iter()
        .find(|c| c.attempt == 1)
        .expect("attempt 1");

    let amqp = env.amqp().await;
    let dead = amqp
        .take_matching("saga.replies.dlq", 1, SOON, |m| {
            m.body_json()
                .is_some_and(|b| b["command_id"] == json!(first.command_id))
        })
        .await;
    let m = dead
        .iter()
        .find(|m| {
            m.body_json()
                .is_some_and(|b| b["command_id"] == json!(first.command_id))
        })
        .expect("dead-lettered");
    assert!(
        m.header("x-saga-error")
            .is_some_and(|r| !r.trim().is_empty()),
        "{m:?}"
    );

    // "when it names a known command it is also recorded in that saga's history" — as
    // `reply_ignored` with reason `malformed`.
    let history = env.history(&id).await;
    let ignored = entries(&history, "reply_ignored", None);
    assert_eq!(ignored.len(), 1, "{:?}", kinds_of(&history));
    assert_eq!(ignored[0]["reason"], "malformed", "{:#}", ignored[0]);
    assert_eq!(
        ignored[0]["command_id"],
        json!(first.command_id),
        "{:#}",
        ignored[0]
    );
    assert_eq!(ignored[0]["step"], "a", "{:#}", ignored[0]);
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_messages_start_sagas_and_share_idempotency_keys() {
    let env = env().await;
    assert_eq!(
        env.register(&linear_definition("flow", &["a"], "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &["t.a", "t.a_undo"], |_| Behaviour::ok(json!(1))).await;
    let amqp = env.amqp().await;
    let body = json!({ "definition": "flow", "input": { "x": 1 } });
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id("start-key-1".into())
        .with_delivery_mode(2);
    amqp.publish("", "saga.start", body.to_string().as_bytes(), props)
        .await
        .expect("publish a start");

    // Find it through the API.
    let deadline = std::time::Instant::now() + SOON;
    let id = loop {
        let items = env.list_all("", 50).await;
        if let Some(first) = items.first() {
            assert_eq!(items.len(), 1, "{items:#?}");
            break first["id"].as_str().expect("id").to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no saga from the start message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = env.wait_state(&id, &["completed"], SOON).await;
    assert_eq!(s["input"], json!({ "x": 1 }));
    let history = env.history(&id).await;
    // "`amqp` for starts and events that came by message".
    assert_eq!(history[0]["kind"], "saga_started");
    assert_eq!(history[0]["actor"], "amqp", "{:#}", history[0]);

    // "Keys are global, shared with `message_id`s of `saga.start` messages".
    let raw = env
        .request(
            Method::POST,
            "/v1/sagas",
            &[("Idempotency-Key", "start-key-1")],
            Body::Json(body.clone()),
        )
        .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    assert_eq!(raw.json()["id"], json!(id));

    // "One that cannot start a saga (not JSON, unknown definition, input that breaks the schema)
    // is dead-lettered to `saga.start.dlq`."
    let bad: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        json!({ "definition": "nope", "input": {} })
            .to_string()
            .into_bytes(),
    ];
    for b in &bad {
        amqp.publish(
            "",
            "saga.start",
            b,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .expect("publish a bad start");
    }
    let dead = amqp
        .take_matching("saga.start.dlq", bad.len(), SOON, |m| bad.contains(&m.body))
        .await;
    for m in dead.iter().filter(|m| bad.contains(&m.body)) {
        assert!(
            m.header("x-saga-error")
                .is_some_and(|r| !r.trim().is_empty()),
            "{m:?}"
        );
    }
    assert_eq!(
        env.list_all("", 50).await.len(),
        1,
        "no saga from bad starts"
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_published_on_settling() {
    let env = env().await;
    assert_eq!(
        env.register(&linear_definition("flow", &["a"], "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let amqp = env.amqp().await;
    let watch = amqp.bind_private_queue("saga.lifecycle", "#").await;
    let worker = Worker::start(&env, &["t.a", "t.a_undo"], |c| {
        if c.input["fail"] == true {
            Behaviour::error("nope", "failed", false)
        } else {
            Behaviour::ok(json!(1))
        }
    })
    .await;
    let ok_id = env.start("flow", json!({})).await;
    let bad_id = env.start("flow", json!({ "fail": true })).await;
    env.wait_state(&ok_id, &["completed"], SOON).await;
    env.wait_state(&bad_id, &["compensated"], SOON).await;

    let seen = amqp
        .take_matching(&watch, 2, SOON, |m| {
            m.routing_key == "flow.completed" || m.routing_key == "flow.compensated"
        })
        .await;
    for (id, state) in [(&ok_id, "completed"), (&bad_id, "compensated")] {
        let m = seen
            .iter()
            .find(|m| m.routing_key == format!("flow.{state}"))
            .unwrap_or_else(|| panic!("no flow.{state} event in {seen:?}"));
        let p = &m.properties;
        assert_eq!(m.exchange, "saga.lifecycle");
        assert_eq!(*p.delivery_mode(), Some(2), "persistent: {p:?}");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.to_string()),
            Some(format!("saga.{state}"))
        );
        assert!(
            p.message_id().is_some(),
            "message_id unique per event: {p:?}"
        );
        let body = m.body_json().expect("a JSON status");
        assert_eq!(body["id"], json!(id), "{body:#}");
        assert_eq!(body["state"], state, "{body:#}");
        assert!(
            body.get("steps").is_none(),
            "its status (less `steps`): {body:#}"
        );
        assert!(
            body.get("revision").is_some() && body.get("failure").is_some(),
            "{body:#}"
        );
    }
    let ids: Vec<_> = seen
        .iter()
        .filter_map(|m| m.properties.message_id().clone())
        .collect();
    assert_ne!(ids.first(), ids.get(1), "message ids differ");
    worker.ledger.assert_clean();
}
