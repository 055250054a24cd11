//! The load: a definition of `steps` no-op steps (each compensated), the SDK's workers for it in
//! this process (counting every command), sagas started over HTTP — as fast as the API takes
//! them, or at a fixed rate — and their ends heard on `saga.lifecycle`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use saga_worker::{Context, StepError};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;

pub fn task(step: usize) -> String {
    format!("bench.s{step}")
}

/// `bench{steps}`: `steps` task steps, each compensated, 30 s per attempt.
pub fn definition(steps: usize) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            json!({
                "name": format!("s{i}"),
                "task": task(i),
                "compensate": format!("{}.undo", task(i)),
                "timeout": "30s"
            })
        })
        .collect();
    json!({ "name": format!("bench{}", steps.len()), "steps": steps })
}

/// Commands handled, by task name.
pub type Counts = Arc<Mutex<HashMap<String, u64>>>;

/// No-op workers for `steps` steps: every `do` succeeds, but the last step's when the input says
/// `"fail": true`; every compensation succeeds.
pub fn start_workers(
    amqp_url: &str,
    steps: usize,
    stop: &CancellationToken,
) -> Result<Counts, String> {
    let counts: Counts = Arc::default();
    let mut builder = saga_worker::Worker::builder(amqp_url)
        .concurrency(512)
        .prefetch(512);
    for i in 0..steps {
        for name in [task(i), format!("{}.undo", task(i))] {
            let counts = counts.clone();
            let last = i + 1 == steps;
            builder = builder.handle(name.clone(), move |ctx: Context, input: Value| {
                let counts = counts.clone();
                let name = name.clone();
                async move {
                    *counts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name)
                        .or_default() += 1;
                    if last && !ctx.is_compensation() && input["fail"] == true {
                        return Err(StepError::permanent("declined", "the benchmark said fail"));
                    }
                    Ok(Value::Null)
                }
            });
        }
    }
    let worker = builder.build().map_err(|e| format!("the workers: {e}"))?;
    tokio::spawn(worker.run(stop.clone()));
    Ok(counts)
}

/// When each saga ended, and how, as `saga.lifecycle` said.
#[derive(Default)]
pub struct Ends {
    pub at: Mutex<HashMap<Uuid, (Instant, String)>>,
    pub changed: Notify,
}

/// Listens on `saga.lifecycle` (a private queue bound to `#`) until the connection closes.
pub async fn listen_ends(amqp_url: &str) -> Result<(Arc<Ends>, Connection), String> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("connect to RabbitMQ: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    ch.queue_bind(
        queue.name().clone(),
        "saga.lifecycle".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            queue.name().clone(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let ends = Arc::new(Ends::default());
    let e = ends.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let now = Instant::now();
            let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                continue;
            };
            let (Some(id), Some(state)) = (
                body["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()),
                body["state"].as_str(),
            ) else {
                continue;
            };
            e.at.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (now, state.to_owned()));
            e.changed.notify_waiters();
        }
    });
    Ok((ends, conn))
}

/// How sagas are offered.
#[derive(Debug, Clone, Copy)]
pub enum Offer {
    /// As fast as the API takes them, this many requests in flight.
    Burst { sagas: usize, in_flight: usize },
    /// At this many per second, for this long.
    Rate { per_second: u32, for_: Duration },
}

/// What one run measured.
pub struct Run {
    /// Per saga: when its start was sent, and when and how it ended.
    pub sagas: Vec<(Instant, Option<(Instant, String)>)>,
    pub first_start: Instant,
}

/// Starts sagas of `definition` as `offer` says (`fail`: each fails at its last step), across
/// the cluster's processes in turn, and waits until every one has ended (or `patience` passed).
pub async fn run(
    cluster: &Cluster,
    ends: &Ends,
    definition: &str,
    offer: Offer,
    fail: bool,
    patience: Duration,
) -> Result<Run, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| e.to_string())?;
    let body = json!({ "definition": definition, "input": { "fail": fail } });
    let start_one = |n: usize| {
        let client = client.clone();
        let url = format!("{}/v1/sagas", cluster.bases[n % cluster.bases.len()]);
        let body = body.clone();
        async move {
            let sent = Instant::now();
            let resp = client
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("start: {e}"))?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(format!("start: {}", resp.status()));
            }
            let status: Value = resp.json().await.map_err(|e| format!("start: {e}"))?;
            let id = status["id"]
                .as_str()
                .and_then(|i| Uuid::parse_str(i).ok())
                .ok_or("start: no id")?;
            Ok::<_, String>((id, sent))
        }
    };
    let first_start = Instant::now();
    let started: Vec<Result<(Uuid, Instant), String>> = match offer {
        Offer::Burst { sagas, in_flight } => {
            futures::stream::iter(0..sagas)
                .map(start_one)
                .buffer_unordered(in_flight)
                .collect()
                .await
        }
        Offer::Rate { per_second, for_ } => {
            let total = (f64::from(per_second) * for_.as_secs_f64()) as usize;
            let every = Duration::from_secs(1) / per_second.max(1);
            let mut tasks = Vec::with_capacity(total);
            for n in 0..total {
                tokio::time::sleep_until((first_start + every * n as u32).into()).await;
                tasks.push(tokio::spawn(start_one(n)));
            }
            let mut out = Vec::with_capacity(total);
            for t in tasks {
                out.push(t.await.map_err(|e| e.to_string())?);
            }
            out
        }
    };
    let started: Vec<(Uuid, Instant)> = started.into_iter().collect::<Result<_, _>>()?;
    let deadline = Instant::now() + patience;
    loop {
        let notified = ends.changed.notified();
        let done = {
            let at = ends.at.lock().unwrap_or_else(|p| p.into_inner());
            started.iter().all(|(id, _)| at.contains_key(id))
        };
        if done || Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
    let at = ends.at.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Run {
        sagas: started
            .iter()
            .map(|(id, sent)| (*sent, at.get(id).cloned()))
            .collect(),
        first_start,
    })
}
