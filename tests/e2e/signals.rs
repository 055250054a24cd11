//! Await steps and signals (PROTOCOL §1 awaits, §2 signals, §3 events).

use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use saga_e2e::http::{Body, step};
use saga_e2e::{Behaviour, Gate, Worker, assert_problem, kinds_of};
use serde_json::{Value, json};

use crate::{SOON, entries, env, task_step};

fn with_await(await_timeout: &str) -> Value {
    json!({
        "name": "flow",
        "steps": [
            task_step("a", "10s"),
            { "name": "approval", "await": "approved", "timeout": await_timeout },
            task_step("c", "10s")
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_signal_is_kept_and_consumed_and_refusals_are_recorded() {
    let env = env().await;
    assert_eq!(
        env.register(&with_await("10s")).await.0,
        StatusCode::CREATED
    );
    let gate = Gate::new();
    let g = gate.clone();
    let worker = Worker::start(&env, &["t.a", "t.a_undo", "t.c", "t.c_undo"], move |c| {
        if c.task == "t.a" {
            Behaviour::after_gate(&g, Behaviour::ok(json!("A")))
        } else {
            Behaviour::ok(json!({ "results": c.results }))
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    worker
        .ledger
        .wait_for("a's command", SOON, |cs| !cs.is_empty())
        .await;

    // "an early signal is kept and consumed when the saga gets there".
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/signals/approved"),
            &json!({ "by": "boss" }),
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let body = raw.json();
    assert_eq!(body["saga_id"], json!(id), "{body:#}");
    assert_eq!(body["event"], "approved", "{body:#}");
    assert!(body["accepted_at"].is_string(), "{body:#}");

    // "refused with 409 when … that event was already delivered to the saga" and "when no await of
    // the definition names the event"; "A refused signal for an existing saga … is recorded as
    // `signal_ignored`".
    let raw = env
        .post_json(
            &format!("/v1/sagas/{id}/signals/approved"),
            &json!({ "by": "other" }),
        )
        .await;
    assert_problem(&raw, StatusCode::CONFLICT);
    let raw = env
        .post_json(&format!("/v1/sagas/{id}/signals/unheard_of"), &json!(1))
        .await;
    assert_problem(&raw, StatusCode::CONFLICT);
    let history = env.history(&id).await;
    let ignored = entries(&history, "signal_ignored", None);
    let reasons: Vec<&str> = ignored
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["duplicate", "unexpected"],
        "{:?}",
        kinds_of(&history)
    );
    assert_eq!(ignored[0]["actor"], "anonymous", "{:#}", ignored[0]);

    gate.open();
    let s = env.wait_state(&id, &["completed"], SOON).await;
    // "The signal's payload becomes the step's output."
    let approval = step(&s, "approval");
    assert_eq!(approval["state"], "succeeded", "{s:#}");
    assert_eq!(approval["output"], json!({ "by": "boss" }), "{s:#}");
    assert_eq!(approval["attempts"], 0, "awaits: 0 attempts: {s:#}");
    assert_eq!(s["output"]["approval"], json!({ "by": "boss" }), "{s:#}");
    // The task after the await sees its output in `results`.
    let c = worker
        .ledger
        .of_saga(&id)
        .into_iter()
        .find(|c| c.step == "c")
        .expect("c ran");
    assert_eq!(c.results["approval"], json!({ "by": "boss" }), "{c:#?}");

    // "or when the saga is not `running`".
    let raw = env
        .post_json(&format!("/v1/sagas/{id}/signals/approved"), &json!(null))
        .await;
    assert_problem(&raw, StatusCode::CONFLICT);
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_by_message_delivers_a_signal_and_an_empty_body_is_null() {
    let env = env().await;
    assert_eq!(
        env.register(&with_await("10s")).await.0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &["t.a", "t.a_undo", "t.c", "t.c_undo"], |_| {
        Behaviour::ok(json!(1))
    })
    .await;
    let amqp = env.amqp().await;

    // Over AMQP: routing key = event name, correlation_id = saga id, body = the payload.
    let by_message = env.start("flow", json!({})).await;
    env.wait_until(&by_message, SOON, "waiting for approval", |s| {
        step(s, "approval")["state"] == "running"
    })
    .await;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(by_message.as_str().into());
    amqp.publish("saga.events", "approved", br#"{"via":"amqp"}"#, props)
        .await
        .expect("publish an event");
    let s = env.wait_state(&by_message, &["completed"], SOON).await;
    assert_eq!(
        step(&s, "approval")["output"],
        json!({ "via": "amqp" }),
        "{s:#}"
    );
    let history = env.history(&by_message).await;
    let received = entries(&history, "signal_received", None);
    assert_eq!(received.len(), 1, "{:?}", kinds_of(&history));
    assert_eq!(received[0]["actor"], "amqp", "{:#}", received[0]);

    // Without correlation_id: body `{ "saga_id", "payload" }`; over HTTP an empty body = null.
    let wrapped = env.start("flow", json!({})).await;
    let empty = env.start("flow", json!({})).await;
    for id in [&wrapped, &empty] {
        env.wait_until(id, SOON, "waiting for approval", |s| {
            step(s, "approval")["state"] == "running"
        })
        .await;
    }
    let body = json!({ "saga_id": wrapped, "payload": [1, 2] }).to_string();
    amqp.publish(
        "saga.events",
        "approved",
        body.as_bytes(),
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .expect("publish an event");
    let raw = env
        .request(
            Method::POST,
            &format!("/v1/sagas/{empty}/signals/approved"),
            &[],
            Body::None,
        )
        .await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    let s = env.wait_state(&wrapped, &["completed"], SOON).await;
    assert_eq!(step(&s, "approval")["output"], json!([1, 2]), "{s:#}");
    let s = env.wait_state(&empty, &["completed"], SOON).await;
    assert_eq!(step(&s, "approval")["output"], Value::Null, "{s:#}");

    // Refused events are dead-lettered: an unknown saga, a non-JSON body without correlation.
    let unknown = uuid::Uuid::now_v7().to_string();
    let bad = [
        (Some(unknown.clone()), br#"{"x":1}"#.to_vec()),
        (None, b"not json".to_vec()),
    ];
    for (corr, body) in &bad {
        let mut props = BasicProperties::default().with_content_type("application/json".into());
        if let Some(c) = corr {
            props = props.with_correlation_id(c.as_str().into());
        }
        amqp.publish("saga.events", "approved", body, props)
            .await
            .expect("publish a bad event");
    }
    let dead = amqp
        .take_matching("saga.events.dlq", bad.len(), SOON, |m| {
            bad.iter().any(|(_, b)| b == &m.body)
        })
        .await;
    for m in dead
        .iter()
        .filter(|m| bad.iter().any(|(_, b)| b == &m.body))
    {
        assert!(
            m.header("x-saga-error")
                .is_some_and(|r| !r.trim().is_empty()),
            "{m:?}"
        );
    }
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_await_that_lapses_fails_the_saga_with_timed_out() {
    let env = env().await;
    assert_eq!(
        env.register(&with_await("300ms")).await.0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &["t.a", "t.a_undo", "t.c", "t.c_undo"], |_| {
        Behaviour::ok(json!(1))
    })
    .await;
    let id = env.start("flow", json!({})).await;
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    // "`timed_out` (a step's attempts or an await ran out of time)".
    assert_eq!(s["failure"]["code"], "timed_out", "{s:#}");
    assert_eq!(s["failure"]["step"], "approval", "{s:#}");
    assert_eq!(step(&s, "approval")["state"], "timed_out", "{s:#}");
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(step(&s, "c")["state"], "pending", "{s:#}");
    // "refused with 409 when … its await has lapsed" (the saga is not running either).
    let raw = env
        .post_json(&format!("/v1/sagas/{id}/signals/approved"), &json!(1))
        .await;
    assert_problem(&raw, StatusCode::CONFLICT);
    worker.ledger.assert_clean();
}
