//! The bus against the real servers: RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on
//! 127.0.0.1:5432 (postgres, trust). Each test has its own vhost and its own database, both
//! removed when it ends (also when it fails).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use saga_wire::{
    COMMANDS_EXCHANGE, ERROR_HEADER, EVENTS_DLQ, EVENTS_EXCHANGE, EVENTS_INBOX, LIFECYCLE_EXCHANGE,
    REPLIES_DLQ, REPLIES_QUEUE, START_DLQ, START_QUEUE,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Bus, BusError, relay, topology};
use crate::engine::{Engine, StartRequest};
use crate::machine::SagaState;
use crate::store;

const SOON: Duration = Duration::from_secs(15);

// ----- the environment ----------------------------------------------------------------------------

/// Removes the vhost and the database, even when the test panicked.
struct Cleanup {
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread with its own runtime: this may run inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_vhost", &name])
                .output();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection as _;
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await
                {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

async fn rabbitmqctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .await
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Env {
    name: String,
    url: String,
    engine: Engine,
    bus: Bus,
    client: Client,
    shutdown: CancellationToken,
    running: Option<JoinHandle<()>>,
    _cleanup: Cleanup,
}

impl Env {
    async fn new() -> Env {
        if std::env::var_os("RUST_LOG").is_some() {
            // No OTEL_* variables here: logs only, nothing to flush.
            let _ = crate::telemetry::init();
        }
        let name = format!("bus_test_{}", Uuid::now_v7().simple());
        let cleanup = Cleanup { name: name.clone() };
        rabbitmqctl(&["add_vhost", &name]).await;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await;
        let pool = store::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"), 6)
            .await
            .expect("create and migrate the test database");
        let engine = Engine::new(pool, Duration::from_secs(300), None);
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
        let client = Client::connect(&url).await;
        Env {
            bus: Bus::new(url.clone(), 4),
            name,
            url,
            engine,
            client,
            shutdown: CancellationToken::new(),
            running: None,
            _cleanup: cleanup,
        }
    }

    fn pool(&self) -> &PgPool {
        self.engine.pool()
    }

    /// Runs the bus and waits until it is ready.
    async fn start_bus(&mut self) {
        self.running = Some(tokio::spawn(
            self.bus
                .clone()
                .run(self.engine.clone(), self.shutdown.clone()),
        ));
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let bus = self.bus.clone();
        eventually("the bus is ready", || {
            let ready = bus.is_ready();
            async move { ready.then_some(()) }
        })
        .await;
    }

    /// Shuts the bus down and waits for it to finish.
    async fn stop_bus(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(SOON, running)
                .await
                .expect("the bus stops in time")
                .expect("the bus task ends cleanly");
        }
        assert!(!self.bus.is_ready());
    }

    /// Registers a definition through the engine, declaring its queues through the bus.
    async fn register(&self, doc: Value) {
        let bus = self.bus.clone();
        self.engine
            .register_definition(&doc, async move |names: Vec<String>| {
                bus.declare_task_queues(&names)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .expect("register the definition");
    }

    async fn start_saga(&self, definition: &str) -> Uuid {
        let started = self
            .engine
            .start(StartRequest {
                definition: definition.into(),
                version: None,
                input: json!({ "n": 1 }),
                idempotency_key: None,
                request: json!({ "definition": definition }),
                actor: "test".into(),
            })
            .await
            .expect("start a saga");
        started.status.id
    }

    async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(self.pool())
            .await
            .expect("count the outbox")
    }

    async fn wait_outbox_empty(&self) {
        eventually("the outbox is empty", || async {
            (self.outbox_len().await == 0).then_some(())
        })
        .await;
    }

    async fn state(&self, saga: Uuid) -> SagaState {
        self.engine
            .status(saga)
            .await
            .expect("read the status")
            .expect("the saga exists")
            .state
    }

    async fn history_kinds(&self, saga: Uuid) -> Vec<(String, Option<String>)> {
        self.engine
            .history(saga)
            .await
            .expect("read the history")
            .expect("the saga exists")
            .into_iter()
            .map(|e| (e.kind, e.reason))
            .collect()
    }
}

/// A one-step definition: task `t.a`, compensated by `t.a_undo`, 10 s per attempt.
fn one_step(name: &str) -> Value {
    json!({
        "name": name,
        "steps": [ { "name": "a", "task": "t.a", "compensate": "t.a_undo", "timeout": "10s" } ]
    })
}

/// Polls `probe` until it gives a value, for at most [`SOON`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The test's own AMQP client: "anyone else" on the broker.
struct Client {
    conn: Connection,
    publisher: Channel,
}

/// A message taken from a queue.
#[derive(Debug)]
struct Got {
    body: Vec<u8>,
    properties: BasicProperties,
    routing_key: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn text(s: &Option<lapin::types::ShortString>) -> Option<&str> {
    s.as_ref().map(|s| s.as_str())
}

impl Client {
    async fn connect(url: &str) -> Client {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the test client connects");
        let publisher = conn.create_channel().await.expect("a channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Client { conn, publisher }
    }

    /// The number of ready messages in `queue`, or the broker's refusal of a passive declare.
    async fn queue_count(&self, queue: &str) -> Result<u32, lapin::Error> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(q.message_count())
    }

    async fn delete_queue(&self, queue: &str) {
        let ch = self.conn.create_channel().await.expect("a channel");
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("delete the queue");
        let _ = ch.close(200, "OK".into()).await;
    }

    /// Publishes under confirms; panics unless routed and acked.
    async fn publish(&self, exchange: &str, key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish");
        let confirmation = confirm.await.expect("a confirm");
        assert!(confirmation.is_ack(), "nacked");
        assert!(
            confirmation.take_message().is_none(),
            "unroutable: {exchange}/{key}"
        );
    }

    /// Takes one message from `queue` (acked at once), waiting for it for at most [`SOON`].
    async fn take(&self, queue: &str) -> Got {
        let ch = self.conn.create_channel().await.expect("a channel");
        let got = eventually(&format!("a message in {queue}"), || {
            let ch = ch.clone();
            async move {
                let m = ch
                    .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("basic.get")?;
                Some(Got {
                    body: m.delivery.data.clone(),
                    properties: m.delivery.properties.clone(),
                    routing_key: m.delivery.routing_key.as_str().to_owned(),
                })
            }
        })
        .await;
        let _ = ch.close(200, "OK".into()).await;
        got
    }
}

fn json_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

// ----- tests --------------------------------------------------------------------------------------

#[tokio::test]
async fn the_topology_is_declared_and_task_queues_follow_the_definitions() {
    let mut env = Env::new().await;
    // Registered before the bus connects: a definition stored while the broker was away.
    let def = crate::definition::parse_definition(&one_step("flow")).expect("a valid definition");
    let mut conn = env.pool().acquire().await.expect("a connection");
    store::definitions::insert(&mut conn, &def.name, 1, &def.to_document())
        .await
        .expect("store the definition");
    drop(conn);
    // Not connected: the API's declares are refused.
    assert!(!env.bus.is_ready());
    let refused = env.bus.declare_task_queues(&["t.x".to_owned()]).await;
    assert!(
        matches!(refused, Err(BusError::NotConnected)),
        "{refused:?}"
    );

    env.start_bus().await;
    let queues: Vec<Value> = serde_json::from_str(
        &rabbitmqctl(&[
            "list_queues",
            "-p",
            &env.name,
            "name",
            "durable",
            "type",
            "arguments",
            "--formatter",
            "json",
        ])
        .await,
    )
    .expect("rabbitmqctl's JSON");
    let expected = [
        REPLIES_QUEUE,
        START_QUEUE,
        EVENTS_INBOX,
        REPLIES_DLQ,
        START_DLQ,
        EVENTS_DLQ,
        "saga.task.t.a",
        "saga.task.t.a_undo",
    ];
    for name in expected {
        let q = queues
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("queue {name} missing: {queues:#?}"));
        assert_eq!(q["durable"], true, "{q}");
        assert_eq!(q["type"], "classic", "{q}");
        assert!(
            q["arguments"].as_array().is_some_and(|a| a.is_empty())
                || q["arguments"].as_object().is_some_and(|a| a.is_empty()),
            "{q}"
        );
        assert!(
            env.client.queue_count(name).await.is_ok(),
            "passive declare of {name}"
        );
    }
    let exchanges: Vec<Value> = serde_json::from_str(
        &rabbitmqctl(&[
            "list_exchanges",
            "-p",
            &env.name,
            "name",
            "type",
            "durable",
            "--formatter",
            "json",
        ])
        .await,
    )
    .expect("rabbitmqctl's JSON");
    for (name, kind) in [
        (COMMANDS_EXCHANGE, "direct"),
        (EVENTS_EXCHANGE, "topic"),
        (LIFECYCLE_EXCHANGE, "topic"),
    ] {
        let x = exchanges
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("exchange {name} missing: {exchanges:#?}"));
        assert_eq!(
            (&x["type"], &x["durable"]),
            (&json!(kind), &json!(true)),
            "{x}"
        );
    }
    let bindings: Vec<Value> = serde_json::from_str(
        &rabbitmqctl(&[
            "list_bindings",
            "-p",
            &env.name,
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        ])
        .await,
    )
    .expect("rabbitmqctl's JSON");
    for (source, dest, key) in [
        (EVENTS_EXCHANGE, EVENTS_INBOX, "#"),
        (COMMANDS_EXCHANGE, "saga.task.t.a", "t.a"),
        (COMMANDS_EXCHANGE, "saga.task.t.a_undo", "t.a_undo"),
    ] {
        assert!(
            bindings.iter().any(|b| b["source_name"] == source
                && b["destination_name"] == dest
                && b["routing_key"] == key),
            "no binding {source} -> {dest} ({key}): {bindings:#?}"
        );
    }

    // Declares from the API while connected.
    env.bus
        .declare_task_queues(&["t.new".to_owned()])
        .await
        .expect("declare while connected");
    assert!(env.client.queue_count("saga.task.t.new").await.is_ok());

    env.stop_bus().await;
    let refused = env.bus.declare_task_queues(&["t.y".to_owned()]).await;
    assert!(
        matches!(refused, Err(BusError::NotConnected)),
        "{refused:?}"
    );
}

/// The task queues to declare (at connect) and to show (`/v1/queues`, `/metrics`): every version's
/// tasks, those of versions another process stored after this one last looked included.
#[tokio::test]
async fn task_names_cover_every_version_and_versions_stored_by_another_process() {
    let env = Env::new().await;
    let mut conn = env.pool().acquire().await.expect("a connection");
    let v1 = crate::definition::parse_definition(&one_step("flow")).expect("a valid definition");
    store::definitions::insert(&mut conn, "flow", 1, &v1.to_document())
        .await
        .expect("store v1");
    assert_eq!(
        env.engine.all_task_names().await.expect("task names"),
        ["t.a", "t.a_undo"]
    );

    // Another process stores v2 (new tasks) and a version this build cannot parse.
    let v2 = crate::definition::parse_definition(&json!({
        "name": "flow",
        "steps": [ { "name": "b", "task": "t.b", "compensate": "t.b_undo", "timeout": "10s" } ]
    }))
    .expect("a valid definition");
    store::definitions::insert(&mut conn, "flow", 2, &v2.to_document())
        .await
        .expect("store v2");
    store::definitions::insert(&mut conn, "flow", 3, &json!({ "name": "flow" }))
        .await
        .expect("store a version that does not parse");
    drop(conn);
    for _ in 0..2 {
        assert_eq!(
            env.engine.all_task_names().await.expect("task names"),
            ["t.a", "t.a_undo", "t.b", "t.b_undo"],
            "v1 still, v2 now, v3 left out"
        );
    }
}

#[tokio::test]
async fn the_relay_publishes_a_command_sets_its_deadline_and_arms_its_attempt_timer() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(one_step("flow")).await;
    let saga = env.start_saga("flow").await;

    let m = env.client.take("saga.task.t.a").await;
    let body = m.json();
    let command_id = body["command_id"]
        .as_str()
        .expect("a command id")
        .to_owned();
    let p = &m.properties;
    assert_eq!(*p.delivery_mode(), Some(2), "{p:?}");
    assert_eq!(text(p.content_type()), Some("application/json"));
    assert_eq!(text(p.message_id()), Some(command_id.as_str()));
    assert_eq!(text(p.correlation_id()), Some(saga.to_string().as_str()));
    assert_eq!(text(p.reply_to()), Some(REPLIES_QUEUE));
    assert_eq!(text(p.kind()), Some("t.a"));
    assert_eq!(m.routing_key, "t.a");
    let published = p.timestamp().expect("a timestamp");
    let now = u64::try_from(Utc::now().timestamp()).expect("after 1970");
    assert!(
        now.abs_diff(published) < 60,
        "timestamp {published} vs now {now}"
    );
    assert_eq!(body["saga_id"], json!(saga));
    assert_eq!(body["kind"], "do");
    assert_eq!(body["attempt"], 1);

    // "the moment the command was handed to the broker plus the step's timeout".
    let deadline: DateTime<Utc> = body["deadline"]
        .as_str()
        .expect("a deadline")
        .parse()
        .expect("RFC 3339");
    assert!(
        body["deadline"].as_str().is_some_and(|d| d.ends_with('Z')),
        "UTC: {body}"
    );
    let ahead = deadline.timestamp() - i64::try_from(published).expect("fits");
    assert!(
        (9..=11).contains(&ahead),
        "deadline {deadline} is {ahead}s after publish"
    );

    // Once confirmed, the row is gone and the attempt's timer fires at the deadline.
    env.wait_outbox_empty().await;
    let fire_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT fire_at FROM timers WHERE saga_id = $1 AND key = $2")
            .bind(saga)
            .bind(format!("attempt:{command_id}"))
            .fetch_one(env.pool())
            .await
            .expect("the attempt timer is armed");
    assert_eq!(fire_at, deadline);
    env.stop_bus().await;
}

/// A reply disarms its command's attempt timer (the next step's is armed at its publish), and a
/// saga that ends leaves no timer behind: no stale timer fires later for nothing.
#[tokio::test]
async fn a_reply_disarms_its_attempt_timer_and_an_ended_saga_keeps_none() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(json!({
        "name": "two",
        "steps": [
            { "name": "a", "task": "t.a", "compensate": "t.a_undo", "timeout": "10s" },
            { "name": "b", "task": "t.b", "compensate": "t.b_undo", "timeout": "10s" }
        ]
    }))
    .await;
    let saga = env.start_saga("two").await;
    let timers = async || -> Vec<String> {
        sqlx::query_scalar("SELECT key FROM timers WHERE saga_id = $1 ORDER BY key")
            .bind(saga)
            .fetch_all(env.pool())
            .await
            .expect("the saga's timers")
    };
    let mut last = None;
    for task in ["saga.task.t.a", "saga.task.t.b"] {
        let command = env.client.take(task).await.json();
        let id: Uuid = command["command_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("a command id");
        env.wait_outbox_empty().await;
        assert_eq!(timers().await, [format!("attempt:{id}")], "{task}");
        let reply = saga_wire::Reply {
            command_id: id,
            body: saga_wire::ReplyBody::Ok { output: json!({}) },
        };
        last = Some(env.engine.reply(reply).await.expect("the reply is applied"));
    }
    assert_eq!(last, Some(crate::engine::ReplyApplied::Applied));
    env.wait_outbox_empty().await;
    assert_eq!(timers().await, Vec::<String>::new());
    env.stop_bus().await;
}

#[tokio::test]
async fn an_unroutable_command_stays_in_the_outbox_until_its_queue_is_back() {
    let env = Env::new().await;
    // The relay by hand, on a connection of its own, without the consumers.
    let conn = Connection::connect(&env.url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("a channel");
    topology::declare_base(&ch)
        .await
        .expect("declare the topology");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    env.engine
        .register_definition(&one_step("flow"), async |names: Vec<String>| {
            topology::declare_task_queues(&conn, &names)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .expect("register");
    // Someone deletes the task queue.
    env.client.delete_queue("saga.task.t.a").await;
    let saga = env.start_saga("flow").await;

    let batch = relay::relay_batch(&env.engine, &conn, &ch)
        .await
        .expect("a batch");
    assert_eq!(
        batch,
        relay::Batch {
            claimed: 1,
            published: 0,
            kept: 1
        }
    );
    assert_eq!(
        env.outbox_len().await,
        1,
        "the unroutable command stays in the outbox"
    );
    let timers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM timers WHERE saga_id = $1 AND key LIKE 'attempt:%'",
    )
    .bind(saga)
    .fetch_one(env.pool())
    .await
    .expect("count timers");
    assert_eq!(
        timers, 0,
        "no attempt clock runs for a command that was not published"
    );
    // The relay declared the queue again: the next batch routes the command.
    assert_eq!(
        env.client
            .queue_count("saga.task.t.a")
            .await
            .expect("the queue is back"),
        0
    );
    let batch = relay::relay_batch(&env.engine, &conn, &ch)
        .await
        .expect("a batch");
    assert_eq!((batch.published, batch.kept), (1, 0));
    assert_eq!(env.outbox_len().await, 0);
    let m = env.client.take("saga.task.t.a").await;
    assert_eq!(m.json()["saga_id"], json!(saga));
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn malformed_replies_are_dead_lettered_with_their_original_body_and_acked() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(one_step("flow")).await;
    let saga = env.start_saga("flow").await;
    let command = env.client.take("saga.task.t.a").await.json();

    let mut headers = FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
    let props = json_props()
        .with_correlation_id("corr-1".into())
        .with_message_id("msg-1".into())
        .with_headers(headers);
    env.client
        .publish("", REPLIES_QUEUE, b"this is not json", props)
        .await;
    let dead = env.client.take(REPLIES_DLQ).await;
    assert_eq!(dead.body, b"this is not json");
    assert_eq!(text(dead.properties.correlation_id()), Some("corr-1"));
    assert_eq!(text(dead.properties.message_id()), Some("msg-1"));
    assert_eq!(
        text(dead.properties.content_type()),
        Some("application/json")
    );
    assert_eq!(dead.header("x-custom").as_deref(), Some("kept"));
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(reason.contains("not JSON"), "{reason}");

    // A known command's malformed reply is also recorded in its saga's history.
    let body = json!({ "command_id": command["command_id"], "status": "error" }).to_string();
    env.client
        .publish("", REPLIES_QUEUE, body.as_bytes(), json_props())
        .await;
    let dead = env.client.take(REPLIES_DLQ).await;
    assert_eq!(dead.body, body.as_bytes());
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(reason.contains("without an error object"), "{reason}");
    eventually("the malformed reply is in the history", || async {
        env.history_kinds(saga)
            .await
            .contains(&("reply_ignored".to_owned(), Some("malformed".to_owned())))
            .then_some(())
    })
    .await;
    assert_eq!(env.state(saga).await, SagaState::Running);

    // Acked: nothing comes back to saga.replies when the bus lets go of its channels.
    env.stop_bus().await;
    assert_eq!(
        env.client
            .queue_count(REPLIES_QUEUE)
            .await
            .expect("saga.replies"),
        0
    );
    assert_eq!(
        env.client.queue_count(REPLIES_DLQ).await.expect("the DLQ"),
        0
    );
}

#[tokio::test]
async fn a_reply_for_an_unknown_command_is_dead_lettered_and_a_good_one_is_applied() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(one_step("flow")).await;

    let unknown = Uuid::now_v7();
    let body = json!({ "command_id": unknown, "status": "ok", "output": 1 }).to_string();
    env.client
        .publish("", REPLIES_QUEUE, body.as_bytes(), json_props())
        .await;
    let dead = env.client.take(REPLIES_DLQ).await;
    assert_eq!(dead.body, body.as_bytes());
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(
        reason.contains("unknown command") && reason.contains(&unknown.to_string()),
        "{reason}"
    );

    // A good reply completes the saga; its lifecycle event goes out although nobody listens
    // (a topic exchange without queues does not hold the outbox up).
    let saga = env.start_saga("flow").await;
    let command = env.client.take("saga.task.t.a").await.json();
    let reply =
        json!({ "command_id": command["command_id"], "status": "ok", "output": { "done": true } });
    env.client
        .publish(
            "",
            REPLIES_QUEUE,
            reply.to_string().as_bytes(),
            json_props(),
        )
        .await;
    eventually("the saga completed", || async {
        (env.state(saga).await == SagaState::Completed).then_some(())
    })
    .await;
    env.wait_outbox_empty().await;
    env.stop_bus().await;
    assert_eq!(
        env.client
            .queue_count(REPLIES_QUEUE)
            .await
            .expect("saga.replies"),
        0
    );
}

#[tokio::test]
async fn start_messages_start_sagas_and_bad_starts_and_events_are_dead_lettered() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(one_step("flow")).await;

    let body = json!({ "definition": "flow", "input": { "x": 1 } }).to_string();
    env.client
        .publish(
            "",
            START_QUEUE,
            body.as_bytes(),
            json_props().with_message_id("key-1".into()),
        )
        .await;
    let saga: Uuid = eventually("the saga started", || async {
        sqlx::query_scalar("SELECT id FROM sagas WHERE idempotency_key = 'key-1'")
            .fetch_optional(env.pool())
            .await
            .expect("look the saga up")
    })
    .await;
    let history = env
        .engine
        .history(saga)
        .await
        .expect("history")
        .expect("saga");
    assert_eq!(history[0].kind, "saga_started");
    assert_eq!(history[0].actor.as_deref(), Some("amqp"));
    // The same key again starts nothing new.
    env.client
        .publish(
            "",
            START_QUEUE,
            body.as_bytes(),
            json_props().with_message_id("key-1".into()),
        )
        .await;

    let bad = json!({ "definition": "nope", "inptu": {} }).to_string();
    env.client
        .publish("", START_QUEUE, bad.as_bytes(), json_props())
        .await;
    let dead = env.client.take(START_DLQ).await;
    assert_eq!(dead.body, bad.as_bytes());
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(reason.contains("/inptu: unknown field"), "{reason}");
    let unknown = json!({ "definition": "nope" }).to_string();
    env.client
        .publish("", START_QUEUE, unknown.as_bytes(), json_props())
        .await;
    let dead = env.client.take(START_DLQ).await;
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(
        reason.contains("/definition") && reason.contains("nope"),
        "{reason}"
    );

    let nobody = Uuid::now_v7();
    env.client
        .publish(
            EVENTS_EXCHANGE,
            "approved",
            br#"{"x":1}"#,
            json_props().with_correlation_id(nobody.to_string().as_str().into()),
        )
        .await;
    let dead = env.client.take(EVENTS_DLQ).await;
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(reason.contains("unknown saga"), "{reason}");
    // A signal that no await names is refused, and recorded.
    env.client
        .publish(
            EVENTS_EXCHANGE,
            "approved",
            b"",
            json_props().with_correlation_id(saga.to_string().as_str().into()),
        )
        .await;
    let dead = env.client.take(EVENTS_DLQ).await;
    let reason = dead.header(ERROR_HEADER).expect("x-saga-error");
    assert!(reason.contains("refused"), "{reason}");

    env.stop_bus().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas")
        .fetch_one(env.pool())
        .await
        .expect("count sagas");
    assert_eq!(count, 1, "one saga, from one key");
    for queue in [START_QUEUE, EVENTS_INBOX, START_DLQ, EVENTS_DLQ] {
        assert_eq!(
            env.client.queue_count(queue).await.expect("a queue"),
            0,
            "{queue}"
        );
    }
}

#[tokio::test]
async fn the_bus_reconnects_after_the_broker_closes_its_connection() {
    let mut env = Env::new().await;
    env.start_bus().await;
    env.register(one_step("flow")).await;

    let before = env.bus.connection().expect("connected");
    rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &env.name,
        "test: connection dropped",
    ])
    .await;
    // The test's own client went too.
    env.client = Client::connect(&env.url).await;
    eventually("the bus is on a new connection", || {
        let moved = env
            .bus
            .connection()
            .is_some_and(|c| !Arc::ptr_eq(&c, &before));
        async move { moved.then_some(()) }
    })
    .await;
    env.wait_ready().await;

    // Consumers and relay work on the new connection.
    let body = json!({ "definition": "flow" }).to_string();
    env.client
        .publish(
            "",
            START_QUEUE,
            body.as_bytes(),
            json_props().with_message_id("after".into()),
        )
        .await;
    let command = env.client.take("saga.task.t.a").await.json();
    assert!(command["command_id"].is_string(), "{command}");
    env.bus
        .declare_task_queues(&["t.later".to_owned()])
        .await
        .expect("declares work again");
    env.stop_bus().await;
}

#[tokio::test]
async fn a_reply_is_held_while_postgres_is_unreachable_and_left_to_the_broker_on_shutdown() {
    let mut env = Env::new().await;
    // The bus gets an engine of its own, on a pool that the test closes: Postgres "goes away".
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&format!("postgres://postgres@127.0.0.1:5432/{}", env.name))
        .await
        .expect("a second pool");
    let engine = Engine::new(pool.clone(), Duration::from_secs(300), None);
    env.running = Some(tokio::spawn(
        env.bus.clone().run(engine, env.shutdown.clone()),
    ));
    env.wait_ready().await;
    pool.close().await;

    // Well-formed (for an unknown command, it would be dead-lettered once applied).
    let body = json!({ "command_id": Uuid::now_v7(), "status": "ok" }).to_string();
    env.client
        .publish("", REPLIES_QUEUE, body.as_bytes(), json_props())
        .await;
    let name = env.name.clone();
    eventually("the reply is held unacknowledged", || {
        let name = name.clone();
        async move {
            let out = rabbitmqctl(&[
                "list_queues",
                "-p",
                &name,
                "name",
                "messages_unacknowledged",
                "--formatter",
                "json",
            ])
            .await;
            let queues: Vec<Value> = serde_json::from_str(&out).expect("rabbitmqctl's JSON");
            queues
                .iter()
                .any(|q| q["name"] == REPLIES_QUEUE && q["messages_unacknowledged"] == 1)
                .then_some(())
        }
    })
    .await;
    // Neither acked, nor nacked into a redelivery loop, nor dead-lettered.
    assert_eq!(
        env.client.queue_count(REPLIES_DLQ).await.expect("the DLQ"),
        0
    );
    assert_eq!(
        env.client
            .queue_count(REPLIES_QUEUE)
            .await
            .expect("saga.replies"),
        0
    );

    // Shutdown does not wait for Postgres: the reply goes back to the queue for the next process.
    env.stop_bus().await;
    let back = env.client.take(REPLIES_QUEUE).await;
    assert_eq!(back.body, body.as_bytes());
    assert_eq!(
        env.client.queue_count(REPLIES_DLQ).await.expect("the DLQ"),
        0
    );
}
