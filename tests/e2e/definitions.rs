//! PROTOCOL §1 and the definition endpoints of §2.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use saga_e2e::http::{Body, pointers_of};
use saga_e2e::{assert_problem, duration_of};
use serde_json::{Value, json};

use crate::env;

/// A definition that leaves every default out.
fn bare() -> Value {
    json!({
        "name": "order",
        "steps": [
            { "name": "reserve", "task": "inventory.reserve", "compensate": "inventory.release" },
            { "name": "charge", "task": "payment.charge" }
        ]
    })
}

/// `bare()` with its keys in another order and every default written out.
fn bare_with_explicit_defaults() -> Value {
    let retry = json!({ "max_backoff": "60s", "multiplier": 2.0, "initial_backoff": "1s", "max_attempts": 3 });
    let comp = json!({ "max_attempts": 10, "initial_backoff": "1s", "multiplier": 2.0, "max_backoff": "60s" });
    json!({
        "steps": [
            { "compensate": "inventory.release", "timeout": "30s", "task": "inventory.reserve",
              "retry": retry, "compensation_retry": comp, "name": "reserve" },
            { "retry": { "max_attempts": 3 }, "task": "payment.charge", "name": "charge", "timeout": "30s" }
        ],
        "name": "order"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_idempotent_on_equal_content_and_versions_changes() {
    let env = env().await;

    // "Versions start at 1."
    let (status, first) = env.register(&bare()).await;
    assert_eq!(status, StatusCode::CREATED, "{first:#}");
    assert_eq!(first["name"], "order", "{first:#}");
    assert_eq!(first["version"], 1, "{first:#}");
    assert!(first["created_at"].is_string(), "{first:#}");

    // "Equal means equal after parsing and filling in defaults: key order, whitespace, and an
    // explicit default versus an omitted one make no difference." → 200, that version.
    let (status, again) = env.register(&bare_with_explicit_defaults()).await;
    assert_eq!(status, StatusCode::OK, "{again:#}");
    assert_eq!(again["version"], 1, "{again:#}");
    assert_eq!(again["created_at"], first["created_at"], "{again:#}");

    // Whitespace makes no difference either.
    let pretty = serde_json::to_vec_pretty(&bare()).expect("serialise");
    let raw = env
        .request(
            Method::POST,
            "/v1/definitions",
            &[],
            Body::Bytes(pretty, Some("application/json".into())),
        )
        .await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    assert_eq!(raw.json()["version"], 1);

    // "anything else makes a new version (201)".
    let mut changed = bare();
    changed["steps"][1]["timeout"] = json!("5s");
    let (status, second) = env.register(&changed).await;
    assert_eq!(status, StatusCode::CREATED, "{second:#}");
    assert_eq!(second["version"], 2, "{second:#}");
    let (status, same) = env.register(&changed).await;
    assert_eq!(status, StatusCode::OK, "{same:#}");
    assert_eq!(same["version"], 2, "{same:#}");

    // Equal to an *older* version but not to the latest: still a new version.
    let (status, third) = env.register(&bare()).await;
    assert_eq!(status, StatusCode::CREATED, "{third:#}");
    assert_eq!(third["version"], 3, "{third:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_latest_and_get_version() {
    let env = env().await;
    assert_eq!(env.register(&bare()).await.0, StatusCode::CREATED);
    let mut changed = bare();
    changed["timeout"] = json!("5m");
    assert_eq!(env.register(&changed).await.0, StatusCode::CREATED);
    let other =
        json!({ "name": "other", "steps": [ { "name": "only", "await": "go", "timeout": "1h" } ] });
    assert_eq!(env.register(&other).await.0, StatusCode::CREATED);

    // GET /v1/definitions: every name with its latest version.
    let raw = env.get("/v1/definitions").await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let list = raw.json();
    let items = list["items"].as_array().expect("items array");
    assert_eq!(items.len(), 2, "{list:#}");
    let order = items
        .iter()
        .find(|i| i["name"] == "order")
        .expect("order listed");
    assert_eq!(order["version"], 2, "{list:#}");
    assert!(order["created_at"].is_string(), "{list:#}");
    let other_item = items
        .iter()
        .find(|i| i["name"] == "other")
        .expect("other listed");
    assert_eq!(other_item["version"], 1, "{list:#}");

    // GET /v1/definitions/{name}: the latest, document with defaults filled in.
    let raw = env.get("/v1/definitions/order").await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let latest = raw.json();
    for key in ["name", "version", "created_at", "document"] {
        assert!(latest.get(key).is_some(), "missing {key}: {latest:#}");
    }
    assert_eq!(latest["name"], "order");
    assert_eq!(latest["version"], 2);
    let doc = &latest["document"];
    assert_eq!(doc["name"], "order", "{doc:#}");
    assert_eq!(
        duration_of(&doc["timeout"]),
        Duration::from_secs(300),
        "{doc:#}"
    );
    let reserve = &doc["steps"][0];
    assert_eq!(reserve["name"], "reserve", "{doc:#}");
    assert_eq!(reserve["task"], "inventory.reserve", "{doc:#}");
    assert_eq!(reserve["compensate"], "inventory.release", "{doc:#}");
    // "Defaults: step `timeout` `30s`; `retry` `{ max_attempts: 3, initial_backoff: "1s",
    // multiplier: 2.0, max_backoff: "60s" }`; `compensation_retry` the same with `max_attempts: 10`".
    assert_eq!(
        duration_of(&reserve["timeout"]),
        Duration::from_secs(30),
        "{doc:#}"
    );
    let check_retry = |r: &Value, attempts: i64| {
        assert_eq!(r["max_attempts"].as_i64(), Some(attempts), "{doc:#}");
        assert_eq!(
            duration_of(&r["initial_backoff"]),
            Duration::from_secs(1),
            "{doc:#}"
        );
        assert_eq!(r["multiplier"].as_f64(), Some(2.0), "{doc:#}");
        assert_eq!(
            duration_of(&r["max_backoff"]),
            Duration::from_secs(60),
            "{doc:#}"
        );
    };
    check_retry(&reserve["retry"], 3);
    check_retry(&reserve["compensation_retry"], 10);
    let charge = &doc["steps"][1];
    assert_eq!(
        duration_of(&charge["timeout"]),
        Duration::from_secs(30),
        "{doc:#}"
    );
    check_retry(&charge["retry"], 3);

    // GET a version: the same shape.
    let raw = env.get("/v1/definitions/order/versions/1").await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let v1 = raw.json();
    assert_eq!(v1["version"], 1, "{v1:#}");
    assert_eq!(v1["name"], "order", "{v1:#}");
    assert!(v1["created_at"].is_string(), "{v1:#}");
    // "Fields that have no value are present with `null`": version 1 has no saga deadline.
    assert!(
        v1["document"].get("timeout").is_some_and(Value::is_null),
        "version 1's document should have \"timeout\": null: {v1:#}"
    );
    assert_eq!(v1["document"]["steps"][0]["name"], "reserve");

    // Unknown name → 404; unknown version → 404; a version that is not a positive integer → 400.
    assert_problem(
        &env.get("/v1/definitions/nope").await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.get("/v1/definitions/nope/versions/1").await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.get("/v1/definitions/order/versions/99").await,
        StatusCode::NOT_FOUND,
    );
    for bad in ["0", "-1", "abc", "1.5", "99999999999999999999999"] {
        let raw = env
            .get(&format!("/v1/definitions/order/versions/{bad}"))
            .await;
        assert_problem(&raw, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_reports_every_breach_with_exact_pointers() {
    let env = env().await;

    let multi = json!({
        "name": "Not A Name",
        "steps": [
            { "name": "a", "task": "t.a", "tiemout": "1s" },
            { "name": "b", "task": "t.b", "timeout": "0s",
              "retry": { "initial_backoff": "2s", "max_backoff": "1s" } },
            { "name": "c", "task": "t.c", "await": "ev", "timeout": "1s" },
            { "name": "a", "task": "t.d" },
            { "name": "e", "await": "ev_e" },
            { "name": "g", "parallel": [
                { "name": "g2", "parallel": [ { "name": "x", "task": "t.x" } ] } ] }
        ]
    });
    let raw = env.post_json("/v1/definitions", &multi).await;
    let problem = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    let got: BTreeSet<String> = pointers_of(&problem).into_iter().collect();
    let want: BTreeSet<String> = [
        "/name",                      // name pattern
        "/steps/0/tiemout",           // "no unknown fields" — the member itself
        "/steps/1/timeout",           // "durations greater than zero"
        "/steps/1/retry/max_backoff", // "`max_backoff` when it is below `initial_backoff`"
        "/steps/2",                   // "the step object `/steps/2` for exactly one of"
        "/steps/3/name",              // "the second occurrence's `/steps/3/name` for a duplicate"
        "/steps/4/timeout",           // "the missing member for a required one"
        "/steps/5/parallel/0", // "the nested member `/steps/2/parallel/0` for a group in a group"
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want, "pointers of {problem:#}");

    // "at most 256 task and await steps in all" → `/steps`.
    let many: Vec<Value> = (0..257)
        .map(|i| json!({ "name": format!("s{i}"), "task": "t.x" }))
        .collect();
    let raw = env
        .post_json("/v1/definitions", &json!({ "name": "many", "steps": many }))
        .await;
    let problem = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        pointers_of(&problem),
        vec!["/steps".to_owned()],
        "{problem:#}"
    );

    // 256 is allowed; groups do not count.
    let mut exactly: Vec<Value> = (0..254)
        .map(|i| json!({ "name": format!("s{i}"), "task": "t.x" }))
        .collect();
    exactly.push(json!({ "name": "grp", "parallel": [
        { "name": "m1", "task": "t.y" }, { "name": "m2", "task": "t.z" } ] }));
    let (status, body) = env
        .register(&json!({ "name": "exactly", "steps": exactly }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");

    // "at least one step".
    let raw = env
        .post_json("/v1/definitions", &json!({ "name": "none", "steps": [] }))
        .await;
    let problem = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        pointers_of(&problem),
        vec!["/steps".to_owned()],
        "{problem:#}"
    );

    // "`""` for a body that is not an object".
    for body in [json!([]), json!("order"), json!(42), json!(null)] {
        let raw = env.post_json("/v1/definitions", &body).await;
        let problem = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            pointers_of(&problem),
            vec![String::new()],
            "body {body}: {problem:#}"
        );
    }

    // Wrong types are 422 with a pointer at the value.
    let raw = env
        .post_json(
            "/v1/definitions",
            &json!({ "name": "typed", "steps": [ { "name": "a", "task": "t.a", "timeout": 5 } ] }),
        )
        .await;
    let problem = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        pointers_of(&problem),
        vec!["/steps/0/timeout".to_owned()],
        "{problem:#}"
    );

    // Nothing of the refused ones was stored.
    let list = env.get("/v1/definitions").await.json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, vec!["exactly"], "{list:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems() {
    let env = env().await;
    let body = serde_json::to_vec(&bare()).expect("serialise");

    // "a body without a `Content-Type` → 415"; "a `Content-Type` other than application/json → 415".
    let raw = env
        .request(
            Method::POST,
            "/v1/definitions",
            &[],
            Body::Bytes(body.clone(), None),
        )
        .await;
    assert_problem(&raw, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let raw = env
        .request(
            Method::POST,
            "/v1/definitions",
            &[],
            Body::Bytes(body.clone(), Some("text/plain".into())),
        )
        .await;
    assert_problem(&raw, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // "a body that is not JSON, or nested deeper than the parser allows → 400".
    let raw = env
        .request(
            Method::POST,
            "/v1/definitions",
            &[],
            Body::Bytes(
                b"{\"name\": \"order\", ".to_vec(),
                Some("application/json".into()),
            ),
        )
        .await;
    assert_problem(&raw, StatusCode::BAD_REQUEST);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let raw = env
        .request(
            Method::POST,
            "/v1/definitions",
            &[],
            Body::Bytes(deep.into_bytes(), Some("application/json".into())),
        )
        .await;
    assert_problem(&raw, StatusCode::BAD_REQUEST);

    // "Bodies over the configured limit (default 1 MiB) get 413."
    let pad = "x".repeat(1024 * 1024 + 10);
    let big = json!({ "name": "big", "steps": [ { "name": "a", "task": "t.a" } ], "pad": pad });
    let raw = env.post_json("/v1/definitions", &big).await;
    assert_problem(&raw, StatusCode::PAYLOAD_TOO_LARGE);

    // And none of it stored anything.
    let list = env.get("/v1/definitions").await.json();
    assert_eq!(list["items"], json!([]), "{list:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_declares_the_task_queues() {
    let env = env().await;
    let amqp = env.amqp().await;

    // "Before it reports ready … the orchestrator has declared" the fixed topology.
    for q in [
        "saga.replies",
        "saga.start",
        "saga.replies.dlq",
        "saga.start.dlq",
        "saga.events.dlq",
        "saga.events.inbox",
    ] {
        assert!(amqp.queue_exists(q).await, "queue {q} missing");
    }
    for x in ["saga.commands", "saga.events", "saga.lifecycle"] {
        assert!(amqp.exchange_exists(x).await, "exchange {x} missing");
    }
    assert!(!amqp.queue_exists("saga.task.inventory.reserve").await);

    let def = json!({
        "name": "order",
        "steps": [
            { "name": "reserve", "task": "inventory.reserve", "compensate": "inventory.release" },
            { "name": "both", "parallel": [
                { "name": "charge", "task": "payment.charge", "compensate": "payment.refund" },
                { "name": "signed", "await": "buyer_signed", "timeout": "1h" } ] },
            { "name": "mail", "task": "email.send" }
        ]
    });
    assert_eq!(env.register(&def).await.0, StatusCode::CREATED);
    // "… and before `POST /v1/definitions` answers": no waiting here.
    for t in [
        "inventory.reserve",
        "inventory.release",
        "payment.charge",
        "payment.refund",
        "email.send",
    ] {
        assert_eq!(
            amqp.queue_message_count(&format!("saga.task.{t}")).await,
            Ok(0),
            "queue saga.task.{t}"
        );
    }
    // Events are not tasks.
    assert!(!amqp.queue_exists("saga.task.buyer_signed").await);
}
