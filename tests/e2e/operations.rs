//! Operators (issue 5): stuck reasons that name the task queue and what the broker says of it,
//! `GET /v1/queues`, and the bulk actions with their dry run.

use std::time::Duration;

use reqwest::StatusCode;
use saga_e2e::{Behaviour, Worker, assert_problem};
use serde_json::{Value, json};

use crate::{SOON, entries, env_with, strs, task_step};

const TOKENS: &str = "alice:client:tok-alice,olga:operator:tok-olga";

/// `flow`: `a` (compensated by `t.a_undo`, 300 ms per attempt, two compensation attempts), then
/// `b`, which the worker refuses: every saga compensates `a`.
fn flow() -> Value {
    let mut a = task_step("a", "300ms");
    a["compensation_retry"] = json!({ "max_attempts": 2, "initial_backoff": "50ms" });
    let mut b = task_step("b", "10s");
    b.as_object_mut().map(|b| b.remove("compensate"));
    json!({ "name": "flow", "steps": [a, b] })
}

fn queue<'a>(queues: &'a Value, task: &str) -> &'a Value {
    queues["items"]
        .as_array()
        .and_then(|items| items.iter().find(|q| q["task"] == task))
        .unwrap_or_else(|| panic!("no queue of {task} in {queues:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sagas_name_the_queue_nobody_consumes_and_bulk_retry_moves_them() {
    let mut env = env_with(&[("SAGA_API_TOKENS", TOKENS)]).await;
    env.set_token(Some("tok-olga"));
    assert_eq!(env.register(&flow()).await.0, StatusCode::CREATED);
    // Nobody consumes `t.a_undo`: each compensation attempt times out unanswered.
    let worker = Worker::start(&env, &["t.a", "t.b"], |c| match c.task.as_str() {
        "t.b" => Behaviour::error("rejected", "no", false),
        _ => Behaviour::ok(json!({ "reserved": true })),
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(env.start("flow", json!({})).await);
    }
    for id in &ids {
        let s = env.wait_state(id, &["suspended"], SOON).await;
        let reason = s["stuck_reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("compensation of a failed after 2 attempts (no reply)"),
            "{s:#}"
        );
        assert!(
            reason.contains("queue saga.task.t.a_undo has no consumer ("),
            "the reason names the queue nobody consumes: {s:#}"
        );
    }
    // The list shows the same reason.
    let listed = env.list_all("stuck=true", 50).await;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert!(
        listed.iter().all(|s| s["stuck_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no consumer")),
        "{listed:#?}"
    );

    // `GET /v1/queues`: depth and consumers of every task queue, readable by a client too.
    env.set_token(Some("tok-alice"));
    let queues = env.get("/v1/queues").await;
    assert_eq!(queues.status, StatusCode::OK, "{}", queues.text());
    let queues = queues.json();
    let undo = queue(&queues, "t.a_undo");
    assert_eq!(undo["queue"], "saga.task.t.a_undo");
    assert_eq!(undo["exists"], true);
    assert_eq!(undo["consumers"], 0, "{queues:#}");
    assert_eq!(
        undo["messages"], 6,
        "two unanswered attempts per saga: {queues:#}"
    );
    assert_eq!(queue(&queues, "t.a")["consumers"], 1, "{queues:#}");
    assert_eq!(queue(&queues, "t.b")["messages"], 0, "{queues:#}");

    // Bulk actions are the operator's.
    let dry = json!({ "filter": { "stuck": true }, "dry_run": true });
    assert_problem(
        &env.post_json("/v1/bulk/retry", &dry).await,
        StatusCode::FORBIDDEN,
    );
    env.set_token(Some("tok-olga"));
    // Bad bodies: 422 with a pointer, and nothing done.
    for (path, body, pointer) in [
        ("/v1/bulk/retry", json!({ "limit": 0 }), "/limit"),
        (
            "/v1/bulk/retry",
            json!({ "filter": { "state": ["stuck"] } }),
            "/filter/state/0",
        ),
        (
            "/v1/bulk/retry",
            json!({ "filter": { "color": "red" } }),
            "/filter/color",
        ),
        ("/v1/bulk/terminate", json!({ "dry_run": true }), "/reason"),
    ] {
        let raw = env.post_json(path, &body).await;
        assert_problem(&raw, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            saga_e2e::http::pointers_of(&raw.json()),
            [pointer],
            "{path} {body}: {}",
            raw.text()
        );
    }

    // A dry run shows how many and which, and changes nothing.
    let raw = env.post_json("/v1/bulk/retry", &dry).await;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let report = raw.json();
    assert_eq!(report["action"], "retry");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["matched"], 3);
    assert_eq!(report["remaining"], 0);
    let mut selected: Vec<String> = report["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    assert_eq!(i["outcome"], "selected", "{i:#}");
                    assert_eq!(i["state"], "suspended", "{i:#}");
                    assert!(i["stuck_reason"].is_string(), "{i:#}");
                    i["id"].as_str().unwrap_or_default().to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    selected.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(selected, expected);
    for id in &ids {
        let s = env.status(id).await;
        assert_eq!(s["state"], "suspended", "a dry run changes nothing: {s:#}");
        assert!(entries(&env.history(id).await, "operator_retry", None).is_empty());
    }
    // A filter that matches nothing the action applies to.
    let none = env
        .post_json(
            "/v1/bulk/retry",
            &json!({ "filter": { "state": ["completed"] }, "dry_run": true }),
        )
        .await
        .json();
    assert_eq!(none["matched"], 0, "{none:#}");
    assert_eq!(none["items"], json!([]), "{none:#}");

    // Someone consumes the compensations now; retry two, newest first, then the rest.
    // The six commands that sat in the queue reach it first and are ignored as late replies.
    let undo_worker =
        Worker::start(&env, &["t.a_undo"], |_| Behaviour::ok(json!("released"))).await;
    let body = json!({ "filter": { "stuck": true }, "limit": 2, "reason": "inventory is back" });
    let report = env.post_json("/v1/bulk/retry", &body).await.json();
    assert_eq!(report["matched"], 3, "{report:#}");
    assert_eq!(report["remaining"], 1, "{report:#}");
    let first: Vec<String> = report["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    assert_eq!(i["outcome"], "applied", "{i:#}");
                    i["id"].as_str().unwrap_or_default().to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(first, [ids[2].clone(), ids[1].clone()], "newest first");
    for id in &first {
        env.wait_state(id, &["compensated"], SOON).await;
    }
    assert_eq!(env.status(&ids[0]).await["state"], "suspended");
    let report = env.post_json("/v1/bulk/retry", &body).await.json();
    assert_eq!(report["matched"], 1, "{report:#}");
    assert_eq!(report["items"][0]["id"], json!(ids[0]), "{report:#}");
    for id in &ids {
        env.wait_state(id, &["compensated"], SOON).await;
        let history = env.history(id).await;
        let retry = entries(&history, "operator_retry", None);
        assert_eq!(retry.len(), 1, "{history:#?}");
        assert_eq!(retry[0]["actor"], "olga", "{:#}", retry[0]);
        assert_eq!(retry[0]["reason"], "inventory is back", "{:#}", retry[0]);
    }
    // Nothing left to retry.
    let report = env.post_json("/v1/bulk/retry", &body).await.json();
    assert_eq!(report["matched"], 0, "{report:#}");
    worker.ledger.assert_clean();
    undo_worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_terminate_ends_running_sagas_of_one_definition() {
    let mut env = env_with(&[("SAGA_API_TOKENS", TOKENS)]).await;
    env.set_token(Some("tok-olga"));
    assert_eq!(env.register(&flow()).await.0, StatusCode::CREATED);
    let mut other = flow();
    other["name"] = json!("other");
    assert_eq!(env.register(&other).await.0, StatusCode::CREATED);
    // No worker at all: every saga waits on `a`.
    let flows = [
        env.start("flow", json!({})).await,
        env.start("flow", json!({})).await,
    ];
    let kept = env.start("other", json!({})).await;
    let body =
        json!({ "filter": { "definition": "flow" }, "reason": "stop the line", "dry_run": true });
    let report = env.post_json("/v1/bulk/terminate", &body).await.json();
    assert_eq!(report["matched"], 2, "{report:#}");
    assert!(
        report["items"].as_array().is_some_and(|i| i
            .iter()
            .all(|i| i["outcome"] == "selected" && i["definition"] == "flow")),
        "{report:#}"
    );
    let mut body = body;
    body["dry_run"] = json!(false);
    let report = env.post_json("/v1/bulk/terminate", &body).await.json();
    assert_eq!(report["matched"], 2, "{report:#}");
    for id in &flows {
        let s = env.wait_state(id, &["terminated"], SOON).await;
        assert_eq!(s["failure"]["code"], "terminated", "{s:#}");
        let history = env.history(id).await;
        let t = entries(&history, "operator_terminate", None);
        assert_eq!(t.len(), 1, "{history:#?}");
        assert_eq!(t[0]["reason"], "stop the line");
        assert_eq!(t[0]["actor"], "olga");
    }
    assert_eq!(env.status(&kept).await["state"], "running");
    // Terminal sagas are never selected again.
    let report = env.post_json("/v1/bulk/terminate", &body).await.json();
    assert_eq!(report["matched"], 0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_broker_cannot_take_shows_the_saga_stuck_on_the_outbox() {
    let env = env_with(&[("SAGA_STUCK_AFTER", "1s")]).await;
    let mut a = task_step("a", "1s");
    a.as_object_mut().map(|a| a.remove("compensate"));
    assert_eq!(
        env.register(&json!({ "name": "one", "steps": [a] }))
            .await
            .0,
        StatusCode::CREATED
    );
    // The orchestrator loses RabbitMQ: no permission on its vhost, its connections closed.
    env.cut_off_broker("test: broker away").await;
    // Accepted over HTTP all the same; its command waits in the outbox.
    let id = env.start("one", json!({})).await;
    let s = env
        .wait_until(&id, Duration::from_secs(30), "stuck", |s| {
            s["stuck"] == true
        })
        .await;
    let reason = s["stuck_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("a command has waited in the outbox since"),
        "{s:#}"
    );
    assert_eq!(s["state"], "running", "{s:#}");
    // The broker comes back: the command goes out and the saga completes.
    env.restore_broker().await;
    let worker = Worker::start(&env, &strs(&["t.a".to_owned()]), |_| {
        Behaviour::ok(json!(1))
    })
    .await;
    let s = env.wait_state(&id, &["completed"], SOON).await;
    assert_eq!(s["stuck"], false, "{s:#}");
    worker.ledger.assert_clean();
}
