//! A step worker written against PROTOCOL §3 alone, with raw lapin: it consumes the
//! `saga.task.T` queues the orchestrator declared, asks the test's script what to answer, and
//! replies to the command's `reply_to` with `correlation_id` = `command_id`, under publisher
//! confirms, acking the command once its reply is confirmed.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// What the worker answers to one command.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok(Value),
    Error { code: &'static str, retryable: bool },
}

/// One command as the worker saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub saga_id: String,
    pub task: String,
    pub kind: String,
    pub attempt: i64,
}

type Script = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

pub struct Worker {
    conn: Connection,
    tasks: Vec<JoinHandle<()>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What went wrong in the worker itself (should stay empty).
    pub problems: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// Consumes `saga.task.T` for each of `tasks`; the queues exist once a definition naming them
    /// is registered. `script` gets each command's body.
    pub async fn start(
        amqp_url: &str,
        tasks: &[&str],
        script: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) -> Worker {
        let script: Script = Arc::new(script);
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("worker: connect to {amqp_url}: {e}"));
        let publisher = conn.create_channel().await.expect("worker: a channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("worker: confirms");
        let consumer = conn.create_channel().await.expect("worker: a channel");
        consumer
            .basic_qos(50, BasicQosOptions::default())
            .await
            .expect("worker: qos");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for task in tasks {
            let queue = format!("saga.task.{task}");
            let mut deliveries = consumer
                .basic_consume(
                    queue.as_str().into(),
                    format!("sagactl-test-{task}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("worker: consume {queue}: {e}"));
            let (script, publisher) = (script.clone(), publisher.clone());
            let (seen, problems) = (seen.clone(), problems.clone());
            handles.push(tokio::spawn(async move {
                while let Some(next) = deliveries.next().await {
                    match next {
                        Ok(d) => {
                            if let Err(e) = handle(d, &script, &publisher, &seen).await {
                                lock(&problems).push(e);
                            }
                        }
                        Err(e) => {
                            lock(&problems).push(format!("consumer {queue}: {e}"));
                            break;
                        }
                    }
                }
            }));
        }
        Worker {
            conn,
            tasks: handles,
            seen,
            problems,
        }
    }

    /// Commands of one saga seen so far: `(task, kind, attempt)`.
    pub fn of_saga(&self, saga_id: &str) -> Vec<(String, String, i64)> {
        lock(&self.seen)
            .iter()
            .filter(|s| s.saga_id == saga_id)
            .map(|s| (s.task.clone(), s.kind.clone(), s.attempt))
            .collect()
    }

    #[track_caller]
    pub fn assert_clean(&self) {
        let problems = lock(&self.problems);
        assert!(problems.is_empty(), "the worker failed: {problems:#?}");
    }

    /// Stops consuming and closes the connection, waiting at most 5 s for the broker's close-ok
    /// (a close that never completed once hung the whole suite, as it did the e2e harness's).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.conn.close(200, "OK".into()),
        )
        .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle(
    delivery: Delivery,
    script: &Script,
    publisher: &Channel,
    seen: &Mutex<Vec<Seen>>,
) -> Result<(), String> {
    let command: Value = serde_json::from_slice(&delivery.data)
        .map_err(|e| format!("a command that is not JSON: {e}"))?;
    let text = |k: &str| {
        command[k]
            .as_str()
            .map(str::to_owned)
            .ok_or(format!("no {k} in {command}"))
    };
    let command_id = text("command_id")?;
    lock(seen).push(Seen {
        saga_id: text("saga_id")?,
        task: text("task")?,
        kind: text("kind")?,
        attempt: command["attempt"].as_i64().unwrap_or(0),
    });
    let body = match script(&command) {
        Reply::Ok(output) => json!({ "command_id": command_id, "status": "ok", "output": output }),
        Reply::Error { code, retryable } => json!({
            "command_id": command_id, "status": "error",
            "error": { "code": code, "message": format!("the test said {code}"), "retryable": retryable }
        }),
    };
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .map_or_else(|| "saga.replies".to_owned(), |r| r.as_str().to_owned());
    let confirm = publisher
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id(command_id.as_str().into())
                .with_delivery_mode(2),
        )
        .await
        .map_err(|e| format!("publish the reply to {command_id}: {e}"))?
        .await
        .map_err(|e| format!("confirm of the reply to {command_id}: {e}"))?;
    if !confirm.is_ack() {
        return Err(format!("the reply to {command_id} was nacked"));
    }
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("ack {command_id}: {e}"))
}
