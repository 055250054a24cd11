//! `GET /metrics` (issue 8): after a known set of sagas, each family counts what happened — by
//! definition, task, outcome, queue, route — and no label carries a saga id.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use saga_e2e::worker::ok_reply_body;
use saga_e2e::{Behaviour, TestEnv, Worker};
use serde_json::json;

use crate::{SOON, env, linear_definition};

/// Every sample of the exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(env: &TestEnv) -> (String, BTreeMap<String, f64>) {
    let raw = env.get("/metrics").await;
    assert_eq!(raw.status, StatusCode::OK);
    let text = raw.text();
    let samples = samples(&text);
    (text, samples)
}

/// Scrapes until the outbox is empty (the relay deletes a row once the broker confirmed it,
/// a moment after the message is in its queue).
async fn scrape_drained(env: &TestEnv) -> (String, BTreeMap<String, f64>) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let scraped = scrape(env).await;
        if value(&scraped.1, "saga_outbox_messages") == 0.0
            || tokio::time::Instant::now() > deadline
        {
            return scraped;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_set_of_sagas() {
    let env = env().await;
    env.register_ok(&linear_definition("shop", &["a", "b"], "10s"))
        .await;
    // `b` refuses the orders marked "decline": those compensate `a`.
    let worker = Worker::start(&env, &["t.a", "t.b", "t.a_undo", "t.b_undo"], |c| {
        if c.task == "t.b" && c.input["decline"] == json!(true) {
            Behaviour::error("declined", "card declined", false)
        } else {
            Behaviour::ok(json!({ "done": true }))
        }
    })
    .await;
    let mut ids = Vec::new();
    for decline in [false, false, false, true, true] {
        ids.push(env.start("shop", json!({ "decline": decline })).await);
    }
    for id in &ids {
        env.wait_state(id, &["completed", "compensated"], SOON)
            .await;
    }
    // A reply to a command nobody sent: dead-lettered as unknown_command.
    let stranger = uuid::Uuid::now_v7().to_string();
    env.amqp()
        .await
        .publish_reply(Some(&stranger), &ok_reply_body(&stranger, &json!(1)))
        .await;
    env.amqp()
        .await
        .wait_queue_count("saga.replies.dlq", SOON, |n| n == 1)
        .await;
    assert_eq!(
        env.get(&format!("/v1/sagas/{}", uuid::Uuid::now_v7()))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let (text, s) = scrape_drained(&env).await;
    let v = |series: &str| value(&s, series);

    let expected: &[(&str, f64)] = &[
        (r#"saga_started_total{definition="shop"}"#, 5.0),
        (
            r#"saga_ended_total{definition="shop",state="completed"}"#,
            3.0,
        ),
        (
            r#"saga_ended_total{definition="shop",state="compensated"}"#,
            2.0,
        ),
        (
            r#"saga_duration_seconds_count{definition="shop",state="completed"}"#,
            3.0,
        ),
        (
            r#"saga_duration_seconds_bucket{definition="shop",state="compensated",le="+Inf"}"#,
            2.0,
        ),
        // Step attempts by task, kind and outcome.
        (
            r#"saga_step_attempts_total{task="t.a",kind="do",outcome="ok"}"#,
            5.0,
        ),
        (
            r#"saga_step_attempts_total{task="t.b",kind="do",outcome="ok"}"#,
            3.0,
        ),
        (
            r#"saga_step_attempts_total{task="t.b",kind="do",outcome="error"}"#,
            2.0,
        ),
        (
            r#"saga_step_attempts_total{task="t.a_undo",kind="compensate",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"saga_step_duration_seconds_count{task="t.a",state="succeeded"}"#,
            5.0,
        ),
        (
            r#"saga_step_duration_seconds_count{task="t.b",state="failed"}"#,
            2.0,
        ),
        (
            r#"saga_commands_dispatched_total{task="t.a_undo",kind="compensate"}"#,
            2.0,
        ),
        (
            r#"saga_dead_letters_total{queue="saga.replies",reason="unknown_command"}"#,
            1.0,
        ),
        // HTTP by route pattern, never by path.
        (
            r#"saga_http_requests_total{method="POST",route="/v1/sagas",status="201"}"#,
            5.0,
        ),
        (
            r#"saga_http_requests_total{method="GET",route="/v1/sagas/{id}",status="404"}"#,
            1.0,
        ),
        // Gauges: nothing in flight, nothing waiting; the worker consumes every task queue.
        (r#"saga_sagas{state="running"}"#, 0.0),
        (r#"saga_sagas{state="compensating"}"#, 0.0),
        (r#"saga_sagas{state="suspended"}"#, 0.0),
        ("saga_outbox_messages", 0.0),
        ("saga_outbox_oldest_age_seconds", 0.0),
        ("saga_timers_due", 0.0),
        ("saga_timer_lag_seconds", 0.0),
        (r#"saga_task_queue_consumers{queue="saga.task.t.a"}"#, 1.0),
        (r#"saga_task_queue_messages{queue="saga.task.t.b"}"#, 0.0),
        ("saga_broker_reconnects_total", 0.0),
    ];
    for (series, want) in expected {
        assert_eq!(v(series), *want, "{series}");
    }
    assert!(
        v(r#"saga_http_request_duration_seconds_count{method="POST",route="/v1/sagas"}"#) >= 5.0
    );
    // Bounded labels: no saga id anywhere.
    for id in &ids {
        assert!(!text.contains(id.as_str()), "saga id {id} in /metrics");
    }
    assert!(!text.contains(&stranger));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_show_sagas_waiting_on_a_queue_nobody_consumes() {
    let env = env().await;
    env.register_ok(&linear_definition("idle", &["a"], "30s"))
        .await;
    let id = env.start("idle", json!({})).await;
    // Nobody consumes saga.task.t.a: the saga runs, its command waits in the queue.
    env.amqp()
        .await
        .wait_queue_count("saga.task.t.a", SOON, |n| n == 1)
        .await;
    let (_, s) = scrape_drained(&env).await;
    let v = |series: &str| value(&s, series);
    assert_eq!(v(r#"saga_sagas{state="running"}"#), 1.0, "{id}");
    assert_eq!(
        v(r#"saga_task_queue_consumers{queue="saga.task.t.a"}"#),
        0.0
    );
    assert_eq!(v(r#"saga_task_queue_messages{queue="saga.task.t.a"}"#), 1.0);
    assert_eq!(v("saga_outbox_messages"), 0.0);
}
