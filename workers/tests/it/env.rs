//! The test environment: RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on
//! 127.0.0.1:5432 (postgres, trust). Each test has its own vhost (and database, when it needs
//! one), removed when it ends, also when it fails. The orchestrator does not run here: the test
//! declares the topology itself, publishes commands and reads replies, as the orchestrator would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use saga_wire::{COMMANDS_EXCHANGE, Command, CommandKind, REPLIES_QUEUE, Reply, task_queue};
use saga_worker::{CancellationToken, Worker, WorkerBuilder};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// How long anything that should happen may take.
pub const SOON: Duration = Duration::from_secs(20);

// ----- polling ------------------------------------------------------------------------------------

/// Polls `probe` until it returns `Some`, failing the test after [`SOON`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut`, failing the test after [`SOON`].
pub async fn soon<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

// ----- captured logs ------------------------------------------------------------------------------

/// An event logged anywhere in this process, with the fields of the spans it was logged in.
#[derive(Debug, Clone)]
pub struct Logged {
    pub level: tracing::Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    pub spans: BTreeMap<String, String>,
}

fn logged() -> &'static Mutex<Vec<Logged>> {
    static LOGGED: OnceLock<Mutex<Vec<Logged>>> = OnceLock::new();
    LOGGED.get_or_init(|| Mutex::new(Vec::new()))
}

/// The events logged so far that `pick` selects.
pub fn logs(pick: impl Fn(&Logged) -> bool) -> Vec<Logged> {
    logged()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| pick(l))
        .cloned()
        .collect()
}

mod capture {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    use super::{Logged, logged};

    struct Fields(BTreeMap<String, String>);

    struct Visitor<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Visitor<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
    }

    /// Records every event, with the fields of its spans, into [`logged`].
    pub struct Capture;

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Visitor(&mut fields));
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Fields(fields));
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(id)
                && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
            {
                values.record(&mut Visitor(&mut fields.0));
            }
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Visitor(&mut fields));
            let mut spans = BTreeMap::new();
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope.from_root() {
                    if let Some(f) = span.extensions().get::<Fields>() {
                        spans.extend(f.0.clone());
                    }
                }
            }
            let message = fields.remove("message").unwrap_or_default();
            logged()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Logged {
                    level: *event.metadata().level(),
                    message,
                    fields,
                    spans,
                });
        }
    }
}

/// Installs, once per process, a subscriber that captures `saga_worker`'s events (with those of
/// `saga_amqp`, where its connection loop and sessions log, and the test's own) from `info` up,
/// and prints whatever `RUST_LOG` asks for.
pub fn init_tracing() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let capture = capture::Capture.with_filter(
            Targets::new()
                .with_target("saga_worker", LevelFilter::INFO)
                .with_target("saga_amqp", LevelFilter::INFO)
                .with_target("it", LevelFilter::INFO),
        );
        let print = std::env::var_os("RUST_LOG").map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(capture)
            .with(print)
            .try_init();
    });
}

// ----- the environment ----------------------------------------------------------------------------

/// Removes the vhost, even when the test panicked.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .output();
    }
}

pub async fn rabbitmqctl(args: &[&str]) -> String {
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

pub struct Env {
    pub name: String,
    pub url: String,
    /// The orchestrator's side: publishes commands (under confirms), reads replies.
    pub client: Connection,
    pub channel: Channel,
    replies: Option<Consumer>,
    _cleanup: Cleanup,
}

impl Env {
    /// A vhost with `saga.commands` and `saga.replies`, as the orchestrator declares them.
    pub async fn new() -> Env {
        let mut env = Env::bare().await;
        env.declare_replies().await;
        env
    }

    /// A vhost with `saga.commands` only: `saga.replies` is missing.
    pub async fn bare() -> Env {
        init_tracing();
        let name = format!("worker_test_{}", Uuid::now_v7().simple());
        let cleanup = Cleanup(name.clone());
        rabbitmqctl(&["add_vhost", &name]).await;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await;
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
        let client = Connection::connect(
            &url,
            ConnectionProperties::default().with_connection_name("test-orchestrator".into()),
        )
        .await
        .expect("connect the test client");
        let channel = client.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enable confirms");
        channel
            .exchange_declare(
                COMMANDS_EXCHANGE.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare saga.commands");
        Env {
            name,
            url,
            client,
            channel,
            replies: None,
            _cleanup: cleanup,
        }
    }

    /// Declares `saga.replies` and starts reading it.
    pub async fn declare_replies(&mut self) {
        self.declare_queue(REPLIES_QUEUE).await;
        let ch = self.client.create_channel().await.expect("open a channel");
        let replies = ch
            .basic_consume(
                REPLIES_QUEUE.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume saga.replies");
        self.replies = Some(replies);
    }

    async fn declare_queue(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
    }

    /// A task name of this test (unique in the process, so that captured logs can be told
    /// apart).
    pub fn task(&self, base: &str) -> String {
        format!("{base}.{}", &Uuid::now_v7().simple().to_string()[20..])
    }

    /// Declares `saga.task.<task>`, bound to `saga.commands`, as the orchestrator does.
    pub async fn declare_task(&self, task: &str) {
        let queue = task_queue(task);
        self.declare_queue(&queue).await;
        self.channel
            .queue_bind(
                queue.as_str().into(),
                COMMANDS_EXCHANGE.into(),
                task.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind a task queue");
    }

    /// Whether `queue` exists (a passive declare on a channel of its own).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let ch = self.client.create_channel().await.expect("open a channel");
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if declared.is_ok() {
            let _ = ch.close(200, "OK".into()).await;
        }
        declared.is_ok()
    }

    /// A first-attempt `do` command of `task`, for a new saga.
    pub fn command(&self, task: &str, input: Value) -> Command {
        let saga_id = Uuid::now_v7();
        Command {
            command_id: Uuid::now_v7(),
            saga_id,
            step: "the_step".into(),
            task: task.into(),
            kind: CommandKind::Do,
            attempt: 1,
            idempotency_key: format!("{saga_id}/the_step/do"),
            compensates: None,
            deadline: Utc::now() + chrono::Duration::seconds(30),
            input,
            results: serde_json::json!({}),
        }
    }

    /// Publishes `command` as the orchestrator does, and waits until the broker routed it.
    pub async fn send(&self, command: &Command) {
        let body = serde_json::to_vec(command).expect("serialise a command");
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(command.command_id.to_string().into())
            .with_correlation_id(command.saga_id.to_string().into())
            .with_reply_to(REPLIES_QUEUE.into())
            .with_type(command.task.as_str().into());
        self.publish(&command.task, &body, properties).await;
    }

    /// Publishes any body to the queue of `task`.
    pub async fn send_raw(&self, task: &str, body: &[u8]) {
        self.publish(task, body, BasicProperties::default()).await;
    }

    async fn publish(&self, task: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                COMMANDS_EXCHANGE.into(),
                task.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish a command");
        assert_eq!(
            confirm.await.expect("the confirm of a command"),
            Confirmation::Ack(None),
            "the command was routed to its queue"
        );
    }

    /// The next reply on `saga.replies`, with its properties.
    pub async fn reply(&mut self) -> (Reply, BasicProperties) {
        let replies = self
            .replies
            .as_mut()
            .expect("saga.replies is declared in this test");
        let delivery = soon("a reply", replies.next())
            .await
            .expect("the replies consumer is open")
            .expect("a reply delivery");
        let reply: Reply = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
            panic!(
                "a reply that parses ({e}): {}",
                String::from_utf8_lossy(&delivery.data)
            )
        });
        (reply, delivery.properties)
    }

    /// `(ready, unacknowledged)` messages of `queue`, as the broker counts them.
    pub async fn counts(&self, queue: &str) -> (u64, u64) {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .await;
        out.lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                match cols.as_slice() {
                    [name, ready, unacked] if *name == queue => Some((
                        ready.parse().expect("a count"),
                        unacked.parse().expect("a count"),
                    )),
                    _ => None,
                }
            })
            .next()
            .unwrap_or_else(|| panic!("queue {queue} in {out}"))
    }

    /// Waits until `queue` holds nothing, neither ready nor unacknowledged: every command was
    /// acknowledged (or rejected).
    pub async fn wait_settled(&self, queue: &str) {
        eventually(
            &format!("{queue} is empty and nothing is unacked"),
            || async { (self.counts(queue).await == (0, 0)).then_some(()) },
        )
        .await;
    }

    /// A worker builder for this vhost, its connection named `name`.
    pub fn worker(&self, name: &str) -> WorkerBuilder {
        Worker::builder(self.url.clone()).connection_name(name)
    }

    /// Closes, from the broker's side, the connections of this vhost named `name`; returns how
    /// many it closed.
    pub async fn close_connections(&self, name: &str) -> usize {
        let out = rabbitmqctl(&[
            "list_connections",
            "--no-table-headers",
            "pid",
            "vhost",
            "client_properties",
        ])
        .await;
        let mut closed = 0;
        for line in out.lines() {
            let mut cols = line.split_whitespace();
            let (Some(pid), Some(vhost)) = (cols.next(), cols.next()) else {
                continue;
            };
            if vhost == self.name && line.contains(&format!("\"{name}\"")) {
                rabbitmqctl(&["close_connection", pid, "closed by the test"]).await;
                closed += 1;
            }
        }
        closed
    }
}

/// A worker running in the background.
pub struct Running {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Running {
    pub fn start(worker: Worker) -> Running {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Running { shutdown, handle }
    }

    /// Graceful shutdown, awaited.
    pub async fn stop(self) {
        self.shutdown.cancel();
        soon("the worker stops", self.handle)
            .await
            .expect("the worker's task ends cleanly");
    }
}

/// A gate handlers wait at until the test opens it.
#[derive(Clone)]
pub struct Gate {
    open: Arc<tokio::sync::Notify>,
    entered: Arc<tokio::sync::Semaphore>,
    is_open: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            open: Arc::default(),
            entered: Arc::new(tokio::sync::Semaphore::new(0)),
            is_open: Arc::default(),
        }
    }
}

impl Gate {
    /// Called by a handler: says it arrived, then waits until the gate opens.
    pub async fn pass(&self) {
        self.entered.add_permits(1);
        loop {
            let opened = self.open.notified();
            if self.is_open.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }

    /// Waits until `n` handlers arrived at the gate (since the last call).
    pub async fn arrived(&self, n: u32) {
        soon("handlers arrive at the gate", self.entered.acquire_many(n))
            .await
            .expect("the gate's semaphore is open")
            .forget();
    }

    pub fn open(&self) {
        self.is_open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.open.notify_waiters();
    }
}
