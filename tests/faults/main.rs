//! The fault suite (issue 6, docs/reliability.md): the real orchestrator binary and the SDK's
//! workers under crashes, broker and database outages, and a faulty network, each scenario over a
//! few hundred sagas, each ending with the invariants of `saga_e2e::faults::check`.
//!
//! Every scenario has its own database and vhost (and, where a fault would disturb other tests,
//! its own PostgreSQL cluster or a proxy), so they run beside the end-to-end suite.

use std::time::Duration;

use reqwest::StatusCode;
use saga_e2e::faults::{self, EffectLedger, Starter, shop_definition, start_many};
use saga_e2e::postgres::PrivatePostgres;
use saga_e2e::proxy::FaultProxy;
use saga_e2e::rabbitmq::PrivateRabbit;
use saga_e2e::{Options, TestEnv};
use tokio_util::sync::CancellationToken;

const SAGAS: usize = 200;
/// Every 4th saga fails at its last step and compensates two.
const FAIL_EVERY: usize = 4;
/// One start every 25 ms: the 200 sagas start over 5 s, while the faults happen.
const PACE: Duration = Duration::from_millis(25);

fn options() -> Options {
    Options::new(
        env!("CARGO_BIN_EXE_orchestrator-under-test"),
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("saga-faults-logs"),
    )
}

/// A pseudo-random duration in `[lo, hi)` milliseconds.
fn jitter(lo: u64, hi: u64) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_millis(lo + r % (hi - lo).max(1))
}

/// The workload's definition registered, its workers running.
async fn prepare(env: &TestEnv) -> (EffectLedger, CancellationToken) {
    let (status, body) = env.register(&shop_definition("2s")).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let ledger = EffectLedger::default();
    let stop = CancellationToken::new();
    faults::start_workers(&env.amqp_url, &ledger, &stop);
    (ledger, stop)
}

/// Polls `/readyz` until it answers `ready` (true: 200, false: 503).
async fn wait_ready(env: &TestEnv, ready: bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = env.get("/readyz").await.status;
        if (status == StatusCode::OK) == ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not become {} within {within:?} (last {status})",
            if ready { "ready" } else { "not ready" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing() {
    let mut env = TestEnv::launch(options()).await;
    let (ledger, stop) = prepare(&env).await;
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    let mut kills = 0;
    for _ in 0..6 {
        tokio::time::sleep(jitter(150, 900)).await;
        env.restart().await;
        kills += 1;
    }
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!("kill -9 ×{kills}: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_connections_closed_and_broker_away() {
    let env = TestEnv::launch(options()).await;
    let (ledger, stop) = prepare(&env).await;
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    // The broker closes every connection of the vhost (the orchestrator's and the workers').
    for _ in 0..3 {
        tokio::time::sleep(jitter(200, 600)).await;
        env.close_broker_connections("fault: closed").await;
    }
    // Then RabbitMQ is away for a few seconds: no permission, connections closed.
    env.cut_off_broker("fault: away").await;
    wait_ready(&env, false, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.restore_broker().await;
    wait_ready(&env, true, Duration::from_secs(15)).await;
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!("broker: 3 connection closures and a 3 s outage: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_and_its_connections_killed() {
    let pg = PrivatePostgres::start();
    let mut opts = options();
    opts.postgres = pg.addr();
    let env = TestEnv::launch(opts).await;
    let (ledger, stop) = prepare(&env).await;
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    let admin = pg.url("postgres");
    for _ in 0..3 {
        tokio::time::sleep(jitter(200, 600)).await;
        terminate_backends(&admin, &env.name).await;
    }
    tokio::time::sleep(jitter(200, 600)).await;
    let restart = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    });
    let pg = restart.await.expect("restart the cluster");
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!("PostgreSQL: 3 × pg_terminate_backend and a restart: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
    drop(env);
    drop(pg);
}

/// Kills every backend connected to `database` (the orchestrator's pool).
async fn terminate_backends(admin_url: &str, database: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect as admin");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(&mut conn)
    .await
    .expect("pg_terminate_backend");
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_cuts_and_a_black_hole_between_the_orchestrator_and_its_servers() {
    let pg_proxy = FaultProxy::start(([127, 0, 0, 1], 5432).into()).await;
    let amqp_proxy = FaultProxy::start(([127, 0, 0, 1], 5672).into()).await;
    let mut opts = options();
    opts.postgres_via = Some(pg_proxy.addr());
    opts.rabbitmq_via = Some(amqp_proxy.addr());
    let env = TestEnv::launch(opts).await;
    let (ledger, stop) = prepare(&env).await;
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    pg_proxy.set_latency(Duration::from_millis(5));
    amqp_proxy.set_latency(Duration::from_millis(5));
    for _ in 0..3 {
        tokio::time::sleep(jitter(200, 600)).await;
        pg_proxy.cut();
        tokio::time::sleep(jitter(100, 400)).await;
        amqp_proxy.cut();
    }
    // PostgreSQL stops answering for 2 s, connections open.
    pg_proxy.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg_proxy.set_blackhole(false);
    // So does RabbitMQ.
    amqp_proxy.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    amqp_proxy.set_blackhole(false);
    pg_proxy.set_latency(Duration::ZERO);
    amqp_proxy.set_latency(Duration::ZERO);
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!(
        "network: 5 ms latency, {} PostgreSQL and {} RabbitMQ cuts, a 2 s black hole each ({} and {} connections made): {report}",
        pg_proxy.cuts(),
        amqp_proxy.cuts(),
        pg_proxy.connections(),
        amqp_proxy.connections()
    );
    // Both went through the proxies, and came back after the cuts (a cut that falls while the
    // client is still backing off closes nothing, hence not one connection per cut).
    assert!(
        amqp_proxy.connections() > 1,
        "the orchestrator reconnected to RabbitMQ after the cuts"
    );
    assert!(
        pg_proxy.connections() > 1,
        "the pool reconnected to PostgreSQL after the cuts"
    );
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_orchestrators_one_frozen_past_the_step_timeouts() {
    let env = TestEnv::launch(options()).await;
    let (ledger, stop) = prepare(&env).await;
    let peers = [env.spawn_peer().await, env.spawn_peer().await];
    let mut to = Starter::of(&env);
    to.base_urls
        .extend(peers.iter().map(|p| p.base_url.clone()));
    let starts = tokio::spawn(async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await });
    // One process stops dead — its connections open, its deliveries unacknowledged, perhaps in
    // the middle of a transaction — for longer than a step's timeout (2 s), then goes on.
    tokio::time::sleep(jitter(500, 1500)).await;
    peers[0].freeze();
    tokio::time::sleep(Duration::from_secs(5)).await;
    peers[0].thaw();
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!("three processes, one frozen for 5 s: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_crash_before_acking_and_stray_replies_arrive() {
    let env = TestEnv::launch(options()).await;
    let (status, body) = env.register(&shop_definition("2s")).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let ledger = EffectLedger::default();
    let stop = CancellationToken::new();
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    // Workers that crash (the process dies: nothing acknowledged, nothing closed) twice.
    let mut crashes = 0;
    for _ in 0..2 {
        let worker = faults::start_workers(&env.amqp_url, &ledger, &stop);
        tokio::time::sleep(jitter(700, 1500)).await;
        worker.abort();
        crashes += 1;
        tokio::time::sleep(jitter(100, 500)).await;
    }
    faults::start_workers(&env.amqp_url, &ledger, &stop);
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;

    // Replies nobody asked for: each is recorded or dead-lettered, none stops anything.
    let amqp = env.amqp().await;
    let answered: Vec<String> = {
        let data = ledger.lock();
        data.handled
            .iter()
            .take(20)
            .map(|h| h.command_id.clone())
            .collect()
    };
    for command_id in &answered {
        // A duplicate (late) reply of a command that was answered long ago.
        let body = serde_json::json!({ "command_id": command_id, "status": "ok", "output": 1 });
        amqp.publish_reply(Some(command_id), body.to_string().as_bytes())
            .await;
    }
    let mut poison = Vec::new();
    for (i, bytes) in [
        &b"\xff\xfe not json"[..],
        b"{}",
        b"[1,2,3]",
        b"{\"command_id\": \"01930000-0000-7000-8000-000000000000\", \"status\": \"ok\"}",
        b"{\"command_id\": 7, \"status\": \"ok\"}",
    ]
    .iter()
    .enumerate()
    {
        poison.push(
            amqp.publish_as_anyone(
                "",
                "saga.replies",
                bytes,
                None,
                Some(&format!("poison-{i}")),
            )
            .await,
        );
    }
    amqp.take_dead_letters("saga.replies.dlq", &poison, Duration::from_secs(15))
        .await;
    // The late duplicates are in their sagas' histories as ignored, and changed nothing.
    let mut ignored = 0;
    for a in &accepted {
        let history = env.history(&a.id).await;
        ignored += history
            .iter()
            .filter(|e| e["kind"] == "reply_ignored")
            .count();
        let s = env.status(&a.id).await;
        assert_eq!(s["state"], a.expected, "{s:#}");
    }
    assert!(
        ignored >= answered.len(),
        "{ignored} replies ignored, {} sent late",
        answered.len()
    );
    println!(
        "workers crashed ×{crashes} before acking, {} late duplicate replies, {} poison replies: {report}",
        answered.len(),
        poison.len()
    );
    assert_eq!(report.lost, 0);
    stop.cancel();
}

/// Arbitrary JSON, a few levels deep.
fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        Just(Value::from("ok")),
        Just(Value::from("error")),
        Just(Value::from(uuid::Uuid::now_v7().to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("command_id".to_owned()),
                    Just("status".to_owned()),
                    Just("output".to_owned()),
                    Just("error".to_owned()),
                    Just("saga_id".to_owned()),
                    Just("payload".to_owned()),
                    Just("definition".to_owned()),
                    Just("input".to_owned()),
                    Just("version".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message body: arbitrary bytes, or arbitrary JSON.
fn arbitrary_body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        arbitrary_json().prop_map(|v| v.to_string().into_bytes()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arbitrary_bytes_and_json_on_every_input_queue_change_nothing() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let env = TestEnv::launch(options()).await;
    let (ledger, stop) = prepare(&env).await;
    let accepted = start_many(&Starter::of(&env), 20, FAIL_EVERY, Duration::ZERO).await;
    faults::check(&env, &ledger, &accepted).await;
    let before: Vec<serde_json::Value> = {
        let mut all = Vec::new();
        for a in &accepted {
            all.push(env.status(&a.id).await);
        }
        all
    };
    let amqp = env.amqp().await;
    let mut runner = TestRunner::deterministic();
    let body = arbitrary_body();
    let (mut replies, mut events, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    const EACH: usize = 150;
    for i in 0..EACH {
        let sample = |runner: &mut TestRunner| body.new_tree(runner).expect("a sample").current();
        // Replies: some with a correlation id naming a real command.
        let bytes = sample(&mut runner);
        let correlation = (i % 3 == 0).then(|| uuid::Uuid::now_v7().to_string());
        replies.push(
            amqp.publish_as_anyone("", "saga.replies", &bytes, correlation.as_deref(), None)
                .await,
        );
        // Events: correlated to a real saga (no await names these events), or not at all.
        let bytes = sample(&mut runner);
        let saga = (i % 2 == 0).then(|| accepted[i % accepted.len()].id.clone());
        events.push(
            amqp.publish_as_anyone(
                "saga.events",
                &format!("fuzz.event{}", i % 7),
                &bytes,
                saga.as_deref(),
                None,
            )
            .await,
        );
        // Starts.
        let bytes = sample(&mut runner);
        starts.push(
            amqp.publish_as_anyone("", "saga.start", &bytes, None, None)
                .await,
        );
    }
    // Every one is dead-lettered with its reason, none is lost, the orchestrator stays up.
    amqp.take_dead_letters("saga.replies.dlq", &replies, Duration::from_secs(60))
        .await;
    amqp.take_dead_letters("saga.events.dlq", &events, Duration::from_secs(60))
        .await;
    amqp.take_dead_letters("saga.start.dlq", &starts, Duration::from_secs(60))
        .await;
    wait_ready(&env, true, Duration::from_secs(5)).await;
    // And nothing stored changed: the same sagas, each at the same revision.
    for (a, was) in accepted.iter().zip(&before) {
        let now = env.status(&a.id).await;
        assert_eq!(
            now["revision"], was["revision"],
            "saga {} changed: {now:#}",
            a.id
        );
        assert_eq!(now["state"], was["state"]);
    }
    let listed = env.list_all("", 500).await;
    assert_eq!(
        listed.len(),
        accepted.len(),
        "a start message started a saga"
    );
    println!(
        "bad input: {EACH} arbitrary replies, {EACH} events and {EACH} starts, all dead-lettered; {} sagas unchanged",
        accepted.len()
    );
    stop.cancel();
}

/// Soak (not in CI): `SOAK_MINUTES` (default 30) at `SOAK_RATE` sagas/s (default 50), a fault
/// every minute in turn — kill -9 of the orchestrator, the broker closing its connections, the
/// database killing its backends — then the invariants over every saga:
/// `cargo test --release -p saga-e2e --test faults -- --ignored --nocapture soak`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a 30-minute soak; run it by name with --ignored"]
async fn soak() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let rate: u32 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let mut env = TestEnv::launch(options()).await;
    let (ledger, stop) = prepare(&env).await;
    let total = usize::try_from(u64::from(rate) * minutes * 60).unwrap_or(usize::MAX);
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, total, FAIL_EVERY, Duration::from_secs(1) / rate).await }
    });
    let mut faults_injected = [0u32; 3];
    for minute in 0..minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let which = usize::try_from(minute % 3).unwrap_or(0);
        match which {
            0 => env.restart().await,
            1 => env.close_broker_connections("soak").await,
            _ => terminate_backends("postgres://postgres@127.0.0.1:5432/postgres", &env.name).await,
        }
        faults_injected[which] += 1;
        println!("minute {}: fault {which} injected", minute + 1);
    }
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!(
        "soak: {minutes} min at {rate}/s, {} kill -9, {} broker closures, {} backend kills: {report}",
        faults_injected[0], faults_injected[1], faults_injected[2]
    );
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_type_down_for_many_step_timeouts_then_back() {
    let env = TestEnv::launch(options()).await;
    let (status, body) = env.register(&shop_definition("1s")).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let ledger = EffectLedger::default();
    let stop = CancellationToken::new();
    let (charge, others): (Vec<String>, Vec<String>) = faults::shop_tasks()
        .into_iter()
        .partition(|t| t.starts_with("shop.charge"));
    faults::start_workers_for(&env.amqp_url, &others, &ledger, &stop);
    // The payment workers are down while every saga reaches `charge`: 6 s, six step timeouts,
    // within the eight attempts' budget (1 s each, backoff up to 1 s between).
    let accepted = start_many(&Starter::of(&env), SAGAS / 2, FAIL_EVERY, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let running = env.list_all("state=running", 500).await;
    assert_eq!(running.len(), accepted.len(), "every saga waits at charge");
    let queued = env
        .amqp()
        .await
        .queue_message_count("saga.task.shop.charge")
        .await
        .expect("the charge queue");
    faults::start_workers_for(&env.amqp_url, &charge, &ledger, &stop);
    let report = faults::check(&env, &ledger, &accepted).await;
    println!(
        "payment workers down 6 s (1 s step timeouts, {queued} charge commands queued meanwhile): {report}"
    );
    assert_eq!(report.lost, 0);
    stop.cancel();
}

/// Debian's libfaketime, which shifts the clock of the process it is preloaded into.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrators_with_skewed_clocks_fire_each_timer_once_on_the_database_clock() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let env = TestEnv::launch(options()).await;
    let (status, body) = env.register(&shop_definition("1s")).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    // Two more processes, one two minutes ahead, one two minutes behind.
    let peers = [
        env.spawn_peer_with(&[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "+120s")])
            .await,
        env.spawn_peer_with(&[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "-120s")])
            .await,
    ];
    let ledger = EffectLedger::default();
    let stop = CancellationToken::new();
    let (charge, others): (Vec<String>, Vec<String>) = faults::shop_tasks()
        .into_iter()
        .partition(|t| t.starts_with("shop.charge"));
    faults::start_workers_for(&env.amqp_url, &others, &ledger, &stop);
    let mut to = Starter::of(&env);
    to.base_urls
        .extend(peers.iter().map(|p| p.base_url.clone()));
    // Without payment workers for 3 s, `charge` attempts time out: timers fire in all three.
    let accepted = start_many(&to, SAGAS / 2, FAIL_EVERY, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    faults::start_workers_for(&env.amqp_url, &charge, &ledger, &stop);
    let report = faults::check(&env, &ledger, &accepted).await;
    // No timer fired early by a process's own clock: each timeout came a full step timeout
    // (1 s, by the database's clock) after its attempt was dispatched.
    let mut timeouts = 0;
    for a in &accepted {
        let history = env.history(&a.id).await;
        for t in history.iter().filter(|e| e["kind"] == "attempt_timed_out") {
            let dispatched = history
                .iter()
                .find(|e| {
                    e["kind"] == "command_dispatched"
                        && e["step"] == t["step"]
                        && e["attempt"] == t["attempt"]
                        && e["data"]["kind"] == t["data"]["kind"]
                })
                .unwrap_or_else(|| panic!("no dispatch for {t}"));
            let at = |e: &serde_json::Value| {
                chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap_or_default())
                    .expect("an RFC 3339 time")
            };
            // The deadline travels in the command with millisecond precision, and the timer
            // fires at that same instant: allow that rounding, nothing more (a skewed process
            // deciding by its own clock would be two minutes early).
            let waited = at(t) - at(dispatched);
            assert!(
                waited >= chrono::Duration::milliseconds(998),
                "saga {}: {} attempt {} timed out {waited} after its dispatch",
                a.id,
                t["step"],
                t["attempt"]
            );
            timeouts += 1;
        }
    }
    assert!(
        timeouts > 0,
        "no attempt timed out: the scenario tested nothing"
    );
    println!("clocks ±2 min on two of three processes, {timeouts} timeouts, none early: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_stopped_for_ten_seconds_then_started() {
    let rabbit = PrivateRabbit::start().await;
    let mut opts = options();
    opts.rabbitmq = rabbit.addr();
    opts.rabbitmq_node = Some(rabbit.node.clone());
    let env = TestEnv::launch(opts).await;
    let (ledger, stop) = prepare(&env).await;
    let starts = tokio::spawn({
        let to = Starter::of(&env);
        async move { start_many(&to, SAGAS, FAIL_EVERY, PACE).await }
    });
    tokio::time::sleep(jitter(1000, 2000)).await;
    // The broker stops: every connection dropped, nothing accepted, for 10 s.
    rabbit.stop_app().await;
    wait_ready(&env, false, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    rabbit.start_app().await;
    wait_ready(&env, true, Duration::from_secs(20)).await;
    let accepted = starts.await.expect("the starts");
    let report = faults::check(&env, &ledger, &accepted).await;
    println!("RabbitMQ stop_app for 10 s, then start_app: {report}");
    assert_eq!(report.lost, 0);
    stop.cancel();
    drop(env);
    drop(rabbit);
}
