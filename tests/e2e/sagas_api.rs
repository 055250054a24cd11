//! The saga endpoints of PROTOCOL §2: start, status, long poll, list, cancel, and their errors.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::{Method, StatusCode};
use saga_e2e::http::{Body, pointers_of, rfc3339, step};
use saga_e2e::{Behaviour, Gate, Raw, Worker, assert_problem};
use serde_json::{Value, json};

use crate::{SOON, entries, env, linear_definition, strs, tasks_of};

/// A definition with an input schema, a parallel group (a task and an await) and a last task.
fn order() -> Value {
    json!({
        "name": "order",
        "input_schema": {
            "type": "object",
            "required": ["order_id"],
            "properties": { "order_id": { "type": "string" }, "n": { "type": "integer" } }
        },
        "steps": [
            { "name": "reserve", "task": "inventory.reserve", "compensate": "inventory.release" },
            { "name": "sign", "parallel": [
                { "name": "charge", "task": "payment.charge" },
                { "name": "signed", "await": "buyer_signed", "timeout": "1h" } ] },
            { "name": "mail", "task": "email.send" }
        ]
    })
}

const STATUS_KEYS: &[&str] = &[
    "id",
    "definition",
    "version",
    "revision",
    "state",
    "input",
    "output",
    "failure",
    "steps",
    "stuck",
    "stuck_reason",
    "created_at",
    "updated_at",
    "deadline",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "group",
    "state",
    "attempts",
    "output",
    "error",
    "started_at",
    "finished_at",
];

#[track_caller]
fn assert_status_shape(s: &Value) {
    for k in STATUS_KEYS {
        assert!(
            s.get(*k).is_some(),
            "status lacks {k:?} (nulls are present, never omitted): {s:#}"
        );
    }
    for st in s["steps"].as_array().expect("steps array") {
        for k in STEP_KEYS {
            assert!(st.get(*k).is_some(), "step lacks {k:?}: {st:#}");
        }
    }
}

async fn start_raw(env: &saga_e2e::TestEnv, body: &Value, key: Option<&str>) -> Raw {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    env.request(
        Method::POST,
        "/v1/sagas",
        &headers,
        Body::Json(body.clone()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_returns_the_full_status() {
    let env = env().await;
    assert_eq!(env.register(&order()).await.0, StatusCode::CREATED);
    let input = json!({ "order_id": "o-1", "n": 3 });
    let before = Utc::now();
    let raw = start_raw(
        &env,
        &json!({ "definition": "order", "input": input }),
        None,
    )
    .await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    let s = raw.json();
    let id = s["id"].as_str().expect("id").to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("id is a UUID");
    assert_eq!(
        uuid.get_version_num(),
        7,
        "ids are v7 where the orchestrator makes them"
    );
    assert_eq!(
        raw.header("location").as_deref(),
        Some(format!("/v1/sagas/{id}").as_str())
    );
    assert!(
        raw.content_type().starts_with("application/json"),
        "{}",
        raw.content_type()
    );

    assert_status_shape(&s);
    assert_eq!(s["definition"], "order");
    assert_eq!(s["version"], 1);
    assert!(s["revision"].as_i64().is_some_and(|r| r >= 1), "{s:#}");
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(s["input"], input);
    assert_eq!(s["output"], Value::Null);
    assert_eq!(s["failure"], Value::Null);
    assert_eq!(s["stuck"], false);
    assert_eq!(s["stuck_reason"], Value::Null);
    assert_eq!(
        s["deadline"],
        Value::Null,
        "no saga deadline in the definition"
    );
    let created = rfc3339(&s["created_at"]);
    assert!(created >= before - chrono::Duration::seconds(2), "{s:#}");
    rfc3339(&s["updated_at"]);

    // "`steps` lists every task and await step from the start, in definition order, flat: a
    // group's members carry the group's name in `group`."
    let steps = s["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|st| st["name"].as_str()).collect();
    assert_eq!(names, ["reserve", "charge", "signed", "mail"], "{s:#}");
    let groups: Vec<&Value> = steps.iter().map(|st| &st["group"]).collect();
    assert_eq!(
        groups,
        [&Value::Null, &json!("sign"), &json!("sign"), &Value::Null]
    );
    let first = &steps[0]["state"];
    assert!(first == "pending" || first == "running", "{s:#}");
    for st in &steps[1..] {
        assert_eq!(st["state"], "pending", "{s:#}");
        assert_eq!(st["attempts"], 0, "{s:#}");
        assert_eq!(st["output"], Value::Null, "{s:#}");
        assert_eq!(st["error"], Value::Null, "{s:#}");
        assert_eq!(st["started_at"], Value::Null, "{s:#}");
        assert_eq!(st["finished_at"], Value::Null, "{s:#}");
    }

    // GET gives the same saga.
    let got = env.status(&id).await;
    assert_status_shape(&got);
    assert_eq!(got["id"], s["id"]);
    assert_eq!(got["input"], input);
    assert_eq!(got["created_at"], s["created_at"]);

    // With a saga timeout, `deadline` = start + timeout.
    let timed = json!({ "name": "timed", "timeout": "1h",
        "steps": [ { "name": "a", "task": "t.a" } ] });
    assert_eq!(env.register(&timed).await.0, StatusCode::CREATED);
    let raw = start_raw(&env, &json!({ "definition": "timed" }), None).await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    let t = raw.json();
    // "`input` optional (`{}`)".
    assert_eq!(t["input"], json!({}), "{t:#}");
    let gap = rfc3339(&t["deadline"]) - rfc3339(&t["created_at"]);
    assert!(
        (gap - chrono::Duration::hours(1)).num_milliseconds().abs() < 2000,
        "deadline should be created_at + 1h: {t:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_picks_the_version() {
    let env = env().await;
    let v1 = linear_definition("flow", &["a"], "30s");
    assert_eq!(env.register_ok(&v1).await, 1);
    let raw = start_raw(&env, &json!({ "definition": "flow", "version": 1 }), None).await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    let on_v1 = raw.json()["id"].as_str().expect("id").to_owned();

    let v2 = linear_definition("flow", &["a", "b"], "30s");
    assert_eq!(env.register_ok(&v2).await, 2);
    let raw = start_raw(&env, &json!({ "definition": "flow" }), None).await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    let latest = raw.json();
    assert_eq!(
        latest["version"], 2,
        "version optional = latest: {latest:#}"
    );
    assert_eq!(latest["steps"].as_array().map(Vec::len), Some(2));
    let raw = start_raw(&env, &json!({ "definition": "flow", "version": 1 }), None).await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    assert_eq!(raw.json()["version"], 1);

    // "A running saga stays on the version it started with."
    let s = env.status(&on_v1).await;
    assert_eq!(s["version"], 1, "{s:#}");
    assert_eq!(s["steps"].as_array().map(Vec::len), Some(1), "{s:#}");

    // "an unknown definition or version on start → 422 with the pointer `/definition` or `/version`".
    let raw = start_raw(&env, &json!({ "definition": "nope" }), None).await;
    let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers_of(&p), ["/definition"], "{p:#}");
    let raw = start_raw(&env, &json!({ "definition": "flow", "version": 9 }), None).await;
    let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers_of(&p), ["/version"], "{p:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_bad_bodies_without_storing_anything() {
    let env = env().await;
    assert_eq!(env.register(&order()).await.0, StatusCode::CREATED);

    let cases: Vec<(Value, &str)> = vec![
        // "an input that breaks the schema → 422 with pointers into the request (`/input/order_id`)"
        (
            json!({ "definition": "order", "input": { "order_id": 5 } }),
            "/input/order_id",
        ),
        (
            json!({ "definition": "order", "input": { "order_id": "o", "n": "x" } }),
            "/input/n",
        ),
        // "reject unknown fields"
        (
            json!({ "definition": "order", "input": { "order_id": "o" }, "extra": 1 }),
            "/extra",
        ),
        // "`input` optional (`{}`), an object"
        (json!({ "definition": "order", "input": [1] }), "/input"),
        (json!({ "definition": "order", "input": "o" }), "/input"),
        // wrong types
        (json!({ "definition": 5 }), "/definition"),
        (
            json!({ "definition": "order", "version": "1", "input": { "order_id": "o" } }),
            "/version",
        ),
        // "a string holding a NUL character"
        (
            json!({ "definition": "order", "input": { "order_id": "a\u{0}b" } }),
            "/input/order_id",
        ),
    ];
    for (body, pointer) in cases {
        let raw = start_raw(&env, &body, None).await;
        let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
        let ptrs = pointers_of(&p);
        assert!(
            ptrs.iter().any(|x| x == pointer),
            "body {body}: expected pointer {pointer}, got {ptrs:?}: {p:#}"
        );
    }
    // A missing required member: "the missing member for a required one", as PROTOCOL's own
    // example pairs `required: ["order_id"]` with `/input/order_id`.
    let raw = start_raw(&env, &json!({ "definition": "order", "input": {} }), None).await;
    let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers_of(&p), ["/input/order_id"], "{p:#}");

    // "an integer outside the signed 64-bit range" (raw bytes: serde_json would not write it).
    for n in ["9223372036854775808", "-9223372036854775809"] {
        let body = format!(r#"{{"definition":"order","input":{{"order_id":"o","n":{n}}}}}"#);
        let raw = env
            .request(
                Method::POST,
                "/v1/sagas",
                &[],
                Body::Bytes(body.into_bytes(), Some("application/json".into())),
            )
            .await;
        let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            pointers_of(&p).iter().any(|x| x == "/input/n"),
            "n = {n}: {p:#}"
        );
    }

    // Transport-level refusals.
    let ok_body =
        serde_json::to_vec(&json!({ "definition": "order", "input": { "order_id": "o" } }))
            .expect("serialise");
    let raw = env
        .request(
            Method::POST,
            "/v1/sagas",
            &[],
            Body::Bytes(ok_body.clone(), None),
        )
        .await;
    assert_problem(&raw, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let raw = env
        .request(
            Method::POST,
            "/v1/sagas",
            &[],
            Body::Bytes(ok_body, Some("text/plain".into())),
        )
        .await;
    assert_problem(&raw, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let raw = env
        .request(
            Method::POST,
            "/v1/sagas",
            &[],
            Body::Bytes(
                b"{\"definition\":".to_vec(),
                Some("application/json".into()),
            ),
        )
        .await;
    assert_problem(&raw, StatusCode::BAD_REQUEST);

    // "None of these … changes stored state."
    let list = env.get("/v1/sagas").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.json()["items"], json!([]), "{}", list.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_and_refuses() {
    let env = env().await;
    assert_eq!(env.register(&order()).await.0, StatusCode::CREATED);
    let body = json!({ "definition": "order", "input": { "order_id": "o-1", "n": 1 } });
    let first = start_raw(&env, &body, Some("key-1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let id = first.json()["id"].as_str().expect("id").to_owned();

    // "A second request with the same key and an equal body (compared as parsed JSON) returns the
    // first saga's current status with 200 and the same `Location`".
    let reordered = br#"{ "input": { "n": 1, "order_id": "o-1" },   "definition": "order" }"#;
    // "the same key with a different body gets 422" — the first request is long done, so never the
    // 409 of "while the first request is still being processed". Repeated: a replay must not leave
    // the key looking busy for the next request.
    let other = json!({ "definition": "order", "input": { "order_id": "o-2" } });
    for round in 0..20 {
        let again = env
            .request(
                Method::POST,
                "/v1/sagas",
                &[("Idempotency-Key", "key-1")],
                Body::Bytes(reordered.to_vec(), Some("application/json".into())),
            )
            .await;
        assert_eq!(
            again.status,
            StatusCode::OK,
            "round {round}: {}",
            again.text()
        );
        assert_eq!(again.json()["id"], json!(id));
        assert_eq!(again.header("location"), first.header("location"));
        assert_status_shape(&again.json());
        let raw = start_raw(&env, &other, Some("key-1")).await;
        assert_eq!(
            raw.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "round {round}: {}",
            raw.text()
        );
        assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    }

    // "1–255 visible ASCII characters, else 400".
    let long_ok = "k".repeat(255);
    let raw = start_raw(&env, &other, Some(&long_ok)).await;
    assert_eq!(
        raw.status,
        StatusCode::CREATED,
        "255 characters are allowed: {}",
        raw.text()
    );
    for bad in ["", &"k".repeat(256), "has space", "tab\there", "caf\u{e9}"] {
        let raw = start_raw(&env, &other, Some(bad)).await;
        assert_problem(&raw, StatusCode::BAD_REQUEST);
    }
    let list = env.get("/v1/sagas").await.json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list:#}");
}

/// Starts go to the database in batches (group commit); requests with the same key that land in
/// one batch, or in two at once, must still start one saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_start_one_saga() {
    let env = env().await;
    assert_eq!(env.register(&order()).await.0, StatusCode::CREATED);
    let body = json!({ "definition": "order", "input": { "order_id": "o-9", "n": 1 } });
    let answers =
        futures::future::join_all((0..16).map(|_| start_raw(&env, &body, Some("key-burst")))).await;
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for raw in &answers {
        match raw.status {
            // "returns the first saga's current status with 200".
            StatusCode::CREATED | StatusCode::OK => {
                created += usize::from(raw.status == StatusCode::CREATED);
                ids.insert(raw.json()["id"].as_str().expect("id").to_owned());
            }
            // "the same key while the first request is still being processed gets 409".
            StatusCode::CONFLICT => {
                assert_problem(raw, StatusCode::CONFLICT);
            }
            other => panic!("unexpected {other}: {}", raw.text()),
        }
    }
    assert_eq!(created, 1, "one request created the saga");
    assert_eq!(ids.len(), 1, "every answer names the same saga: {ids:?}");
    let list = env.get("/v1/sagas").await.json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_errors() {
    let env = env().await;
    let unknown = uuid::Uuid::now_v7();
    assert_problem(
        &env.get(&format!("/v1/sagas/{unknown}")).await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.get(&format!("/v1/sagas/{unknown}/history")).await,
        StatusCode::NOT_FOUND,
    );
    assert_problem(
        &env.get("/v1/sagas/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
    );
    assert_problem(
        &env.get("/v1/sagas/not-a-uuid/history").await,
        StatusCode::BAD_REQUEST,
    );
    assert_problem(
        &env.cancel("not-a-uuid", None).await,
        StatusCode::BAD_REQUEST,
    );
    assert_problem(
        &env.cancel(&unknown.to_string(), None).await,
        StatusCode::NOT_FOUND,
    );

    assert_eq!(
        env.register(&linear_definition("flow", &["a"], "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let id = env.start("flow", json!({})).await;
    // "a `wait` or `revision` that does not parse gets 400".
    for q in [
        "wait=soon",
        "wait=",
        "wait=-1s",
        "wait=1s&revision=x",
        "wait=1s&revision=1.5",
    ] {
        assert_problem(
            &env.get(&format!("/v1/sagas/{id}?{q}")).await,
            StatusCode::BAD_REQUEST,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_on_change_and_on_settling() {
    let env = env().await;
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let (gate_a, gate_b) = (Gate::new(), Gate::new());
    let (ga, gb) = (gate_a.clone(), gate_b.clone());
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), move |c| {
        match c.task.as_str() {
            "t.a" => Behaviour::after_gate(&ga, Behaviour::ok(json!("A"))),
            "t.b" => Behaviour::after_gate(&gb, Behaviour::ok(json!("B"))),
            _ => Behaviour::ok(Value::Null),
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    worker
        .ledger
        .wait_for("a's command", SOON, |cs| cs.iter().any(|c| c.step == "a"))
        .await;
    let rev = env.status(&id).await["revision"]
        .as_i64()
        .expect("revision");

    // "`?wait=30s&revision=N` returns as soon as the saga's `revision` differs from N".
    let t0 = Instant::now();
    let path = format!("/v1/sagas/{id}?wait=30s&revision={rev}");
    let (raw, ()) = tokio::join!(env.get(&path), async {
        // Let the poll be in flight before the change (this orders, it does not wait for).
        tokio::time::sleep(Duration::from_millis(300)).await;
        gate_a.open();
    });
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let s = raw.json();
    assert_ne!(s["revision"].as_i64(), Some(rev), "{s:#}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );

    // Nothing changes while b is held: the poll runs its wait out, then answers 200 as it is.
    worker
        .ledger
        .wait_for("b's command", SOON, |cs| cs.iter().any(|c| c.step == "b"))
        .await;
    let s = env
        .wait_until(&id, SOON, "b running", |s| {
            step(s, "b")["state"] == "running"
        })
        .await;
    let rev = s["revision"].as_i64().expect("revision");
    let t0 = Instant::now();
    let raw = env
        .get(&format!("/v1/sagas/{id}?wait=1s&revision={rev}"))
        .await;
    let waited = t0.elapsed();
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    assert_eq!(raw.json()["revision"].as_i64(), Some(rev));
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}, before the wait ended"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    // "`GET /v1/sagas/{id}?wait=30s` holds the request until the saga is terminal".
    let t0 = Instant::now();
    let path = format!("/v1/sagas/{id}?wait=30s");
    let (raw, ()) = tokio::join!(env.get(&path), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gate_b.open();
    });
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    assert_eq!(raw.json()["state"], "completed", "{}", raw.text());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );

    // "(at once if it already is)"; with a revision, "or at once if the saga is terminal".
    let t0 = Instant::now();
    let raw = env.get(&format!("/v1/sagas/{id}?wait=30s")).await;
    assert_eq!(raw.json()["state"], "completed");
    let raw2 = env
        .get(&format!("/v1/sagas/{id}?wait=30s&revision={rev}"))
        .await;
    assert_eq!(raw2.json()["state"], "completed");
    let final_rev = raw2.json()["revision"].as_i64().expect("revision");
    let raw3 = env
        .get(&format!("/v1/sagas/{id}?wait=30s&revision={final_rev}"))
        .await;
    assert_eq!(raw3.status, StatusCode::OK);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_paginates() {
    let env = env().await;
    assert_eq!(
        env.register(&linear_definition("alpha", &["a"], "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        env.register(&linear_definition("beta", &["b"], "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    // Only beta's tasks have a worker: alpha sagas stay running.
    let worker = Worker::start(&env, &["t.b"], |_| Behaviour::ok(json!(1))).await;

    let mut started = Vec::new(); // (id, definition), in start order
    for i in 0..7 {
        let def = if i % 2 == 0 { "alpha" } else { "beta" };
        started.push((env.start(def, json!({ "i": i })).await, def));
    }
    for (id, def) in &started {
        if *def == "beta" {
            env.wait_state(id, &["completed"], SOON).await;
        }
    }
    let ids_of = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let newest_first = |def: Option<&str>| -> Vec<String> {
        started
            .iter()
            .rev()
            .filter(|(_, d)| def.is_none_or(|x| x == *d))
            .map(|(id, _)| id.clone())
            .collect()
    };

    // Pages of 3 cover all 7 exactly once, newest `created_at` first, and items carry no steps.
    let all = env.list_all("", 3).await;
    assert_eq!(ids_of(&all), newest_first(None), "{all:#?}");
    let unique: BTreeSet<String> = ids_of(&all).into_iter().collect();
    assert_eq!(unique.len(), 7);
    for item in &all {
        assert!(
            item.get("steps").is_none(),
            "list items are the status without steps: {item:#}"
        );
        for k in STATUS_KEYS.iter().filter(|k| **k != "steps") {
            assert!(item.get(*k).is_some(), "list item lacks {k}: {item:#}");
        }
    }
    let first_page = env.get("/v1/sagas?limit=3").await.json();
    assert!(first_page["next_cursor"].is_string(), "{first_page:#}");
    let whole = env.get("/v1/sagas?limit=500").await.json();
    assert_eq!(whole["next_cursor"], Value::Null, "{whole:#}");
    assert_eq!(whole["items"].as_array().map(Vec::len), Some(7));
    let one = env.get("/v1/sagas?limit=1").await.json();
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));

    // Filters.
    assert_eq!(
        ids_of(&env.list_all("state=running", 50).await),
        newest_first(Some("alpha"))
    );
    assert_eq!(
        ids_of(&env.list_all("state=completed", 2).await),
        newest_first(Some("beta"))
    );
    assert_eq!(
        ids_of(&env.list_all("state=running&state=completed", 4).await),
        newest_first(None)
    );
    assert_eq!(
        ids_of(&env.list_all("state=compensated", 50).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids_of(&env.list_all("definition=beta", 50).await),
        newest_first(Some("beta"))
    );
    assert_eq!(
        ids_of(&env.list_all("definition=alpha&state=completed", 50).await),
        Vec::<String>::new()
    );
    // "`updated_before` (exclusive)": by each saga's last change (alpha's at its start, beta's
    // at its completion), newest `created_at` first still.
    let updated = |s: &Value| -> chrono::DateTime<chrono::FixedOffset> {
        chrono::DateTime::parse_from_rfc3339(s["updated_at"].as_str().unwrap_or_default())
            .expect("updated_at is RFC 3339")
    };
    let mut pivots: Vec<&Value> = all.iter().collect();
    pivots.sort_by_key(|s| updated(s));
    for pivot in [pivots[3], pivots[6]] {
        let at = updated(pivot);
        let expected: Vec<String> = ids_of(&all)
            .into_iter()
            .zip(&all)
            .filter(|(_, s)| updated(s) < at)
            .map(|(id, _)| id)
            .collect();
        let query = format!(
            "updated_before={}",
            saga_e2e::env::percent_encode(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        );
        assert_eq!(ids_of(&env.list_all(&query, 2).await), expected, "{query}");
        assert!(!expected.contains(&pivot["id"].as_str().unwrap_or_default().to_owned()));
    }
    // "a `definition=` filter that names none simply matches nothing".
    assert_eq!(
        ids_of(&env.list_all("definition=nope", 50).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids_of(&env.list_all("stuck=false", 50).await),
        newest_first(None)
    );
    assert_eq!(
        ids_of(&env.list_all("stuck=true", 50).await),
        Vec::<String>::new()
    );

    // "`limit` (1–500 …)"; "a bad filter value → 400".
    for q in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "state=bogus",
        "stuck=maybe",
        "updated_before=yesterday",
        "cursor=%21%21not-a-cursor%21%21",
    ] {
        assert_problem(
            &env.get(&format!("/v1/sagas?{q}")).await,
            StatusCode::BAD_REQUEST,
        );
    }
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_compensates_and_refuses_when_not_running() {
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
            "t.a" => Behaviour::after_gate(&g, Behaviour::ok(json!("A"))),
            _ => Behaviour::ok(Value::Null),
        }
    })
    .await;
    let id = env.start("flow", json!({})).await;
    worker
        .ledger
        .wait_for("a's command", SOON, |cs| cs.iter().any(|c| c.step == "a"))
        .await;

    // Unknown fields are refused; nothing changes.
    let raw = env
        .request(
            Method::POST,
            &format!("/v1/sagas/{id}/cancel"),
            &[],
            Body::Json(json!({ "reason": "x", "why": 1 })),
        )
        .await;
    let p = assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(pointers_of(&p), ["/why"], "{p:#}");
    assert_eq!(env.status(&id).await["state"], "running");

    let raw = env.cancel(&id, Some("changed my mind")).await;
    assert_eq!(raw.status, StatusCode::ACCEPTED, "{}", raw.text());
    // "`compensating` (from the moment it leaves the forward path — … a cancel …— including while
    // it still awaits a command that was out)".
    let s = env
        .wait_until(&id, SOON, "compensating", |s| s["state"] != "running")
        .await;
    assert_eq!(s["state"], "compensating", "{s:#}");
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    // "409 unless `running`".
    assert_problem(&env.cancel(&id, None).await, StatusCode::CONFLICT);

    gate.open();
    let s = env.wait_state(&id, &["compensated"], SOON).await;
    assert_eq!(s["failure"]["code"], "cancelled", "{s:#}");
    assert_eq!(
        s["failure"]["step"], "a",
        "step = the one running then: {s:#}"
    );
    assert_eq!(step(&s, "a")["state"], "compensated", "{s:#}");
    assert_eq!(step(&s, "b")["state"], "pending", "{s:#}");
    assert_problem(&env.cancel(&id, Some("again")).await, StatusCode::CONFLICT);

    let history = env.history(&id).await;
    let cancels = entries(&history, "cancel_requested", None);
    assert_eq!(cancels.len(), 1, "{history:#?}");
    assert_eq!(cancels[0]["actor"], "anonymous", "{:#}", cancels[0]);
    assert_eq!(cancels[0]["reason"], "changed my mind", "{:#}", cancels[0]);
    worker.ledger.assert_clean();
}
