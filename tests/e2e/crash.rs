//! PROTOCOL §4 "Nothing is lost": SIGKILL and restart mid-flight, graceful SIGTERM, and commands
//! that wait for a worker that is not up yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;
use saga_e2e::http::step;
use saga_e2e::{Behaviour, Ledger, Worker};
use serde_json::json;

use crate::{env, linear_definition, strs, tasks_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sagas_survive_a_sigkill_of_the_orchestrator() {
    let mut env = env().await;
    let names = ["a", "b", "c"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "20s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker = Worker::start(&env, &strs(&tasks_of(&names)), |c| {
        // A small pseudo-random delay, from the command id's random bits.
        let seed = uuid::Uuid::parse_str(&c.command_id)
            .map(|u| u.as_u128())
            .unwrap_or(0);
        let ms = u64::try_from(seed % 40).unwrap_or(0);
        Behaviour::after(
            Duration::from_millis(ms),
            Behaviour::ok(json!({ "step": c.step })),
        )
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(env.start("flow", json!({ "i": i })).await);
    }
    // Mid-way: about a third of the 150 forward commands seen.
    worker
        .ledger
        .wait_for("50 commands", Duration::from_secs(30), |cs| cs.len() >= 50)
        .await;
    env.kill();
    // The kill has to land mid-flight for this test to mean anything.
    let at_kill = worker.ledger.commands().len();
    assert!(
        at_kill < 150,
        "all 150 commands were out before the kill: raise the load"
    );
    env.start_again().await;

    let mut attempts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for id in &ids {
        let s = env
            .wait_state(id, &["completed"], Duration::from_secs(60))
            .await;
        for n in names {
            let st = step(&s, n);
            assert_eq!(st["state"], "succeeded", "{s:#}");
            let a = st["attempts"].as_i64().expect("attempts");
            attempts.insert((id.clone(), n.to_owned()), a);
        }
        assert_eq!(
            s["output"],
            json!({ "a": { "step": "a" }, "b": { "step": "b" }, "c": { "step": "c" } }),
            "{s:#}"
        );
    }

    // Every step ran at least once and never more than its attempts: the distinct attempt numbers
    // seen for a saga's step are exactly 1..=attempts, and each attempt has one command id (a
    // re-published command keeps its id).
    let cs = worker.ledger.commands();
    for ((id, n), count) in &attempts {
        let mine: Vec<_> = cs
            .iter()
            .filter(|c| &c.saga_id == id && &c.step == n)
            .collect();
        assert!(
            mine.iter().all(|c| c.is_do()),
            "no compensation in a completed saga: {mine:#?}"
        );
        let seen: BTreeSet<i64> = mine.iter().map(|c| c.attempt).collect();
        let want: BTreeSet<i64> = (1..=*count).collect();
        assert_eq!(
            seen, want,
            "saga {id} step {n}: attempts seen vs status: {mine:#?}"
        );
        let mut ids_per_attempt: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
        for c in &mine {
            ids_per_attempt
                .entry(c.attempt)
                .or_default()
                .insert(c.command_id.as_str());
        }
        for (attempt, ids) in ids_per_attempt {
            assert_eq!(
                ids.len(),
                1,
                "saga {id} step {n} attempt {attempt}: command ids {ids:?}"
            );
        }
    }
    worker.ledger.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let mut env = env().await;
    assert_eq!(
        env.register(&linear_definition("flow", &["a"], "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    // A saga in flight (no worker) must not keep the process from stopping.
    env.start("flow", json!({})).await;
    let status = env.sigterm(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        env.log_tail(30)
    );

    // And it comes back on the same database and vhost.
    env.start_again().await;
    let list = env.list_all("", 50).await;
    assert_eq!(list.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_for_a_worker_that_comes_later() {
    let env = env().await;
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("flow", &names, "30s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(env.start("flow", json!({ "i": i })).await);
    }
    // "Commands wait durably in `saga.task.T` while no worker is up."
    let amqp = env.amqp().await;
    amqp.wait_queue_count("saga.task.t.a", Duration::from_secs(15), |n| n == 3)
        .await;
    for id in &ids {
        let s = env.status(id).await;
        assert_eq!(s["state"], "running", "{s:#}");
        assert_eq!(step(&s, "a")["state"], "running", "{s:#}");
    }

    let ledger = Ledger::new();
    let worker = Worker::start_with_ledger(&env, &strs(&tasks_of(&names)), ledger, |_| {
        Behaviour::ok(json!("done"))
    })
    .await;
    for id in &ids {
        let s = env
            .wait_state(id, &["completed"], Duration::from_secs(20))
            .await;
        assert_eq!(step(&s, "a")["attempts"], 1, "{s:#}");
    }
    assert_eq!(amqp.queue_message_count("saga.task.t.a").await, Ok(0));
    worker.ledger.assert_clean();
}
