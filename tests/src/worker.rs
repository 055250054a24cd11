//! A foreign step worker, written against PROTOCOL §3 alone (no SDK): it consumes `saga.task.T`
//! queues that the orchestrator declared (it never declares them), records every command in a
//! ledger, and replies as the test's script says. Replies go to the default exchange with routing
//! key = the command's `reply_to`, `correlation_id` = `command_id`, under publisher confirms; the
//! command is acked after its reply is confirmed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::env::TestEnv;

/// What the worker does with one command.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Reply `{"status":"ok","output":…}`.
    Ok(Value),
    /// Reply `{"status":"error","error":{code,message,retryable}}`.
    Error {
        code: String,
        message: String,
        retryable: bool,
    },
    /// Ack the command and never reply.
    NoReply,
    /// Reply with exactly these bytes (still with `correlation_id` and `content_type`).
    ReplyRaw(Vec<u8>),
    /// Do the inner behaviour after a delay (other commands are handled meanwhile).
    After(Duration, Box<Behaviour>),
    /// Do the inner behaviour once the gate is opened by the test.
    AfterGate(Gate, Box<Behaviour>),
}

impl Behaviour {
    pub fn ok(output: Value) -> Behaviour {
        Behaviour::Ok(output)
    }

    pub fn error(code: &str, message: &str, retryable: bool) -> Behaviour {
        Behaviour::Error {
            code: code.to_owned(),
            message: message.to_owned(),
            retryable,
        }
    }

    pub fn after(delay: Duration, then: Behaviour) -> Behaviour {
        Behaviour::After(delay, Box::new(then))
    }

    pub fn after_gate(gate: &Gate, then: Behaviour) -> Behaviour {
        Behaviour::AfterGate(gate.clone(), Box::new(then))
    }
}

/// A latch the test opens to release held replies.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait_open(&self) {
        let mut rx = self.0.subscribe();
        // Errors only when the sender is gone, which cannot happen while we hold `self`.
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// The AMQP properties a command came with (PROTOCOL §3 says what they must be).
#[derive(Debug, Clone)]
pub struct CommandProps {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub kind: Option<String>,
    pub timestamp: Option<u64>,
}

/// One command as the worker received it.
#[derive(Debug, Clone)]
pub struct CommandSeen {
    /// When the worker got it.
    pub received_at: DateTime<Utc>,
    /// The queue it came from (`saga.task.T`).
    pub queue: String,
    pub command_id: String,
    pub saga_id: String,
    pub step: String,
    pub task: String,
    pub kind: String,
    pub attempt: i64,
    pub idempotency_key: String,
    pub compensates: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    pub input: Value,
    pub results: Value,
    /// The whole body, for assertions on its exact shape.
    pub body: Value,
    pub props: CommandProps,
}

impl CommandSeen {
    pub fn is_do(&self) -> bool {
        self.kind == "do"
    }

    pub fn is_compensate(&self) -> bool {
        self.kind == "compensate"
    }

    fn parse(queue: &str, delivery: &Delivery) -> Result<CommandSeen, String> {
        let body: Value = serde_json::from_slice(&delivery.data).map_err(|e| {
            format!(
                "command on {queue} is not JSON ({e}): {}",
                String::from_utf8_lossy(&delivery.data)
            )
        })?;
        let text = |k: &str| -> Result<String, String> {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("command on {queue} without a string {k:?}: {body}"))
        };
        let compensates = match body.get("compensates") {
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            other => {
                return Err(format!(
                    "command on {queue}: `compensates` must be present, null or a string, got {other:?}"
                ));
            }
        };
        let deadline = match body.get("deadline") {
            Some(Value::String(s)) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("command on {queue}: deadline {s:?}: {e}"))?
                    .with_timezone(&Utc),
            ),
            other => {
                return Err(format!(
                    "command on {queue}: `deadline` must be an RFC 3339 string, got {other:?}"
                ));
            }
        };
        let p = &delivery.properties;
        Ok(CommandSeen {
            received_at: Utc::now(),
            queue: queue.to_owned(),
            command_id: text("command_id")?,
            saga_id: text("saga_id")?,
            step: text("step")?,
            task: text("task")?,
            kind: text("kind")?,
            attempt: body
                .get("attempt")
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("command on {queue} without an integer attempt: {body}"))?,
            idempotency_key: text("idempotency_key")?,
            compensates,
            deadline,
            input: body.get("input").cloned().unwrap_or(Value::Null),
            results: body.get("results").cloned().unwrap_or(Value::Null),
            props: CommandProps {
                exchange: delivery.exchange.as_str().to_owned(),
                routing_key: delivery.routing_key.as_str().to_owned(),
                redelivered: delivery.redelivered,
                delivery_mode: *p.delivery_mode(),
                content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
                message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
                correlation_id: p.correlation_id().as_ref().map(|s| s.as_str().to_owned()),
                reply_to: p.reply_to().as_ref().map(|s| s.as_str().to_owned()),
                kind: p.kind().as_ref().map(|s| s.as_str().to_owned()),
                timestamp: *p.timestamp(),
            },
            body,
        })
    }

    /// Asserts the AMQP properties PROTOCOL §3 gives a command.
    #[track_caller]
    pub fn assert_properties(&self) {
        let p = &self.props;
        let ctx = || {
            format!(
                "command {} ({} {}): {p:?}",
                self.command_id, self.task, self.kind
            )
        };
        assert_eq!(p.exchange, "saga.commands", "exchange; {}", ctx());
        assert_eq!(
            p.routing_key,
            self.task,
            "routing key = task name; {}",
            ctx()
        );
        assert_eq!(
            self.queue,
            format!("saga.task.{}", self.task),
            "queue; {}",
            ctx()
        );
        assert_eq!(p.delivery_mode, Some(2), "delivery mode 2; {}", ctx());
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/json"),
            "content_type; {}",
            ctx()
        );
        assert_eq!(
            p.message_id.as_deref(),
            Some(self.command_id.as_str()),
            "message_id = command id; {}",
            ctx()
        );
        assert_eq!(
            p.correlation_id.as_deref(),
            Some(self.saga_id.as_str()),
            "correlation_id = saga id; {}",
            ctx()
        );
        assert_eq!(
            p.reply_to.as_deref(),
            Some("saga.replies"),
            "reply_to; {}",
            ctx()
        );
        assert_eq!(
            p.kind.as_deref(),
            Some(self.task.as_str()),
            "type = task; {}",
            ctx()
        );
        assert!(p.timestamp.is_some(), "timestamp; {}", ctx());
    }
}

/// A script that answers every command ok with who answered (`{ "by": step, "kind": kind }`), so
/// outputs are recognisable.
pub fn echo(c: &CommandSeen) -> Behaviour {
    Behaviour::ok(json!({ "by": c.step, "kind": c.kind }))
}

/// A script that answers as [`echo`], holding the replies to `task` until `gate` opens.
pub fn echo_holding(
    task: &str,
    gate: &Gate,
) -> impl Fn(&CommandSeen) -> Behaviour + Send + Sync + 'static {
    let (task, gate) = (task.to_owned(), gate.clone());
    move |c| {
        if c.task == task {
            Behaviour::after_gate(&gate, echo(c))
        } else {
            echo(c)
        }
    }
}

/// The output [`echo`] gives a step's `do` command.
pub fn echo_output(step: &str) -> Value {
    json!({ "by": step, "kind": "do" })
}

/// The commands of `step` and `kind` (`do` or `compensate`), in the order received.
pub fn find<'a>(cs: &'a [CommandSeen], step: &str, kind: &str) -> Vec<&'a CommandSeen> {
    cs.iter()
        .filter(|c| c.step == step && c.kind == kind)
        .collect()
}

/// The one command of `step` and `kind`; panics (with the ledger) unless there is exactly one.
#[track_caller]
pub fn one<'a>(cs: &'a [CommandSeen], step: &str, kind: &str) -> &'a CommandSeen {
    let found = find(cs, step, kind);
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} command for {step}: {cs:#?}"
    );
    found[0]
}

/// `step:kind` of each command, in the order received.
pub fn order_of(cs: &[CommandSeen]) -> Vec<String> {
    cs.iter()
        .map(|c| format!("{}:{}", c.step, c.kind))
        .collect()
}

/// Every command the worker saw (in the order it received them), and anything it could not parse.
#[derive(Debug, Default)]
pub struct LedgerData {
    pub commands: Vec<CommandSeen>,
    pub bad: Vec<String>,
    /// Replies that could not be published (should stay empty).
    pub reply_errors: Vec<String>,
}

/// The shared ledger, with a change counter to wait on.
#[derive(Clone)]
pub struct Ledger {
    data: Arc<Mutex<LedgerData>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            data: Arc::new(Mutex::new(LedgerData::default())),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, LedgerData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the commands seen so far.
    pub fn commands(&self) -> Vec<CommandSeen> {
        self.lock().commands.clone()
    }

    /// Commands of one saga, in the order received.
    pub fn of_saga(&self, saga_id: &str) -> Vec<CommandSeen> {
        self.lock()
            .commands
            .iter()
            .filter(|c| c.saga_id == saga_id)
            .cloned()
            .collect()
    }

    fn push(&self, f: impl FnOnce(&mut LedgerData)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until `pred` holds for the commands seen; returns them then.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[CommandSeen]) -> bool,
    ) -> Vec<CommandSeen> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let data = self.lock();
                if pred(&data.commands) {
                    return data.commands.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                let data = self.lock();
                let seen: Vec<String> = data
                    .commands
                    .iter()
                    .map(|c| format!("{} {} {} #{}", c.saga_id, c.step, c.kind, c.attempt))
                    .collect();
                panic!("worker ledger: never saw {what} within {timeout:?}; saw {seen:#?}");
            }
        }
    }

    /// Asserts every command parsed and every reply was published.
    #[track_caller]
    pub fn assert_clean(&self) {
        let data = self.lock();
        assert!(
            data.bad.is_empty(),
            "commands the worker could not parse: {:#?}",
            data.bad
        );
        assert!(
            data.reply_errors.is_empty(),
            "replies the worker could not publish: {:#?}",
            data.reply_errors
        );
    }
}

type Script = Arc<dyn Fn(&CommandSeen) -> Behaviour + Send + Sync>;

/// A running worker: consumers on the given task queues, replying per the script.
pub struct Worker {
    pub ledger: Ledger,
    conn: Connection,
    tasks: Vec<JoinHandle<()>>,
}

/// The reply body PROTOCOL §3 gives an ok outcome.
pub fn ok_reply_body(command_id: &str, output: &Value) -> Vec<u8> {
    json!({ "command_id": command_id, "status": "ok", "output": output })
        .to_string()
        .into_bytes()
}

/// The reply body PROTOCOL §3 gives an error outcome.
pub fn error_reply_body(command_id: &str, code: &str, message: &str, retryable: bool) -> Vec<u8> {
    json!({
        "command_id": command_id, "status": "error",
        "error": { "code": code, "message": message, "retryable": retryable }
    })
    .to_string()
    .into_bytes()
}

impl Worker {
    /// Connects to the test's vhost and consumes `saga.task.T` for each of `tasks` (task and
    /// compensation names). The queues must exist already: register the definition first.
    pub async fn start(
        env: &TestEnv,
        tasks: &[&str],
        script: impl Fn(&CommandSeen) -> Behaviour + Send + Sync + 'static,
    ) -> Worker {
        Self::start_with_ledger(env, tasks, Ledger::new(), script).await
    }

    /// As [`Worker::start`], recording into an existing ledger (e.g. a worker started later).
    pub async fn start_with_ledger(
        env: &TestEnv,
        tasks: &[&str],
        ledger: Ledger,
        script: impl Fn(&CommandSeen) -> Behaviour + Send + Sync + 'static,
    ) -> Worker {
        let script: Script = Arc::new(script);
        let conn = Connection::connect(&env.amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("worker: connect to {}: {e}", env.amqp_url));
        let publisher = conn
            .create_channel()
            .await
            .expect("worker: publisher channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("worker: confirm_select");
        let consumer_ch = conn
            .create_channel()
            .await
            .expect("worker: consumer channel");
        consumer_ch
            .basic_qos(500, BasicQosOptions::default())
            .await
            .expect("worker: basic_qos");
        let mut handles = Vec::new();
        for task in tasks {
            let queue = format!("saga.task.{task}");
            let mut consumer = consumer_ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("e2e-worker-{task}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| {
                    panic!("worker: consume {queue} (registered before the worker started?): {e}")
                });
            let ledger = ledger.clone();
            let script = script.clone();
            let publisher = publisher.clone();
            handles.push(tokio::spawn(async move {
                while let Some(next) = consumer.next().await {
                    let delivery = match next {
                        Ok(d) => d,
                        Err(e) => {
                            ledger.push(|l| l.bad.push(format!("consumer {queue}: {e}")));
                            break;
                        }
                    };
                    let ledger = ledger.clone();
                    let script = script.clone();
                    let publisher = publisher.clone();
                    let queue = queue.clone();
                    tokio::spawn(async move {
                        handle(queue, delivery, ledger, script, publisher).await;
                    });
                }
            }));
        }
        Worker {
            ledger,
            conn,
            tasks: handles,
        }
    }

    /// Stops consuming and closes the connection (unacked commands go back to their queues).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.conn.close(200, "OK".into())).await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn handle(
    queue: String,
    delivery: Delivery,
    ledger: Ledger,
    script: Script,
    publisher: Channel,
) {
    let seen = match CommandSeen::parse(&queue, &delivery) {
        Ok(c) => c,
        Err(e) => {
            ledger.push(|l| l.bad.push(e));
            let _ = delivery.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    let behaviour = script(&seen);
    let reply_to = seen
        .props
        .reply_to
        .clone()
        .unwrap_or_else(|| "saga.replies".to_owned());
    let command_id = seen.command_id.clone();
    ledger.push(|l| l.commands.push(seen));
    let mut behaviour = behaviour;
    let body = loop {
        match behaviour {
            Behaviour::Ok(output) => break Some(ok_reply_body(&command_id, &output)),
            Behaviour::Error {
                code,
                message,
                retryable,
            } => break Some(error_reply_body(&command_id, &code, &message, retryable)),
            Behaviour::NoReply => break None,
            Behaviour::ReplyRaw(bytes) => break Some(bytes),
            Behaviour::After(delay, inner) => {
                tokio::time::sleep(delay).await;
                behaviour = *inner;
            }
            Behaviour::AfterGate(gate, inner) => {
                gate.wait_open().await;
                behaviour = *inner;
            }
        }
    };
    if let Some(body) = body {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(command_id.as_str().into())
            .with_delivery_mode(2);
        let published = async {
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .map_err(|e| e.to_string())?;
            let confirmation = confirm.await.map_err(|e| e.to_string())?;
            if confirmation.is_ack() {
                Ok(())
            } else {
                Err("nacked".to_owned())
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), published).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ledger.push(|l| l.reply_errors.push(format!("{command_id}: {e}"))),
            Err(_) => ledger.push(|l| l.reply_errors.push(format!("{command_id}: timed out"))),
        }
    }
    let _ = delivery.ack(BasicAckOptions::default()).await;
}
