//! The fault suite's workload and its invariants (issue 6, docs/reliability.md).
//!
//! The workload: sagas of `shop` — reserve, charge, ship, each compensated — started over HTTP
//! with an idempotency key (a start that fails because the orchestrator is away is sent again
//! with the same key, as a client would), some of them told to fail at `ship` so that they
//! compensate two steps. The workers are the SDK's (they reconnect), and keep a ledger of every
//! command and of every side effect, performed once per idempotency key.
//!
//! [`check`] then asserts, over every accepted saga: it ended as expected; no attempt was
//! dispatched under two command ids; no side effect happened twice; every compensation undoes a
//! step that succeeded or timed out, and a completed saga compensated nothing; the outbox, the
//! timers and the task queues are drained; nothing was dead-lettered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use saga_worker::{Context, StepError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::env::TestEnv;

/// The steps of `shop`, in order.
pub const STEPS: [&str; 3] = ["reserve", "charge", "ship"];

/// `shop`: three compensated steps, short timeouts and room for retries, so that a saga whose
/// replies were held up by a fault still ends as it would have.
pub fn shop_definition(timeout: &str) -> Value {
    let steps: Vec<Value> = STEPS
        .iter()
        .map(|s| {
            json!({
                "name": s,
                "task": format!("shop.{s}"),
                "compensate": format!("shop.{s}.undo"),
                "timeout": timeout,
                "retry": { "max_attempts": 8, "initial_backoff": "100ms", "max_backoff": "1s" },
                "compensation_retry": { "max_attempts": 8, "initial_backoff": "100ms", "max_backoff": "1s" }
            })
        })
        .collect();
    json!({ "name": "shop", "steps": steps })
}

/// Every task and compensation of `shop`.
pub fn shop_tasks() -> Vec<String> {
    STEPS
        .iter()
        .flat_map(|s| [format!("shop.{s}"), format!("shop.{s}.undo")])
        .collect()
}

/// One command as a worker handled it.
#[derive(Debug, Clone)]
pub struct Handled {
    pub saga: String,
    pub step: String,
    pub compensation: bool,
    pub attempt: u32,
    pub command_id: String,
}

#[derive(Debug, Default)]
pub struct EffectData {
    pub handled: Vec<Handled>,
    /// The outcome of each idempotency key's side effect (`None`: it refused).
    pub done: HashMap<String, Option<String>>,
    /// How many times each key's side effect was performed.
    pub performed: HashMap<String, u32>,
    /// Commands whose key had been done already (redeliveries, retries after a lost reply).
    pub repeats: u64,
}

/// What the shop's workers did. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EffectLedger(Arc<Mutex<EffectData>>);

impl EffectLedger {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, EffectData> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The side effect of `ctx`, once per idempotency key: a step named by the input's `fail_at`
    /// refuses (non-retryable); everything else succeeds.
    fn perform(&self, ctx: &Context) -> Result<Value, StepError> {
        let compensation = ctx.is_compensation();
        let refuse = !compensation && ctx.input()["fail_at"] == ctx.step();
        let mut data = self.lock();
        data.handled.push(Handled {
            saga: ctx.saga_id().to_string(),
            step: ctx.step().to_owned(),
            compensation,
            attempt: ctx.attempt(),
            command_id: ctx.command_id().to_string(),
        });
        let key = ctx.idempotency_key().to_owned();
        let outcome = match data.done.get(&key).cloned() {
            Some(outcome) => {
                data.repeats += 1;
                outcome
            }
            None => {
                let outcome = (!refuse).then(|| format!("{}:{}", ctx.step(), ctx.kind().as_str()));
                *data.performed.entry(key.clone()).or_default() += 1;
                data.done.insert(key, outcome.clone());
                outcome
            }
        };
        match outcome {
            Some(done) => Ok(json!({ "done": done })),
            None => Err(StepError::permanent("refused", "the test said fail_at")),
        }
    }
}

/// The shop's workers (the SDK), until the token is cancelled — or the task is aborted, which
/// is a crash: nothing acknowledged, nothing closed. Each handler takes a few milliseconds,
/// different per command, so that replies interleave.
pub fn start_workers(
    amqp_url: &str,
    ledger: &EffectLedger,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    start_workers_for(amqp_url, &shop_tasks(), ledger, stop)
}

/// As [`start_workers`], for some of the tasks only.
pub fn start_workers_for(
    amqp_url: &str,
    tasks: &[String],
    ledger: &EffectLedger,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut builder = saga_worker::Worker::builder(amqp_url)
        .concurrency(64)
        .prefetch(64);
    for task in tasks.iter().cloned() {
        let ledger = ledger.clone();
        builder = builder.handle(task, move |ctx: Context, _input: Value| {
            let ledger = ledger.clone();
            async move {
                let outcome = ledger.perform(&ctx);
                let jitter = ctx.command_id().as_u128() % 15;
                tokio::time::sleep(Duration::from_millis(jitter as u64)).await;
                outcome
            }
        });
    }
    let worker = builder.build().expect("build the shop's workers");
    tokio::spawn(worker.run(stop.clone()))
}

/// A saga accepted by the orchestrator and how it must end.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub expected: &'static str,
}

/// Where to start sagas: the orchestrator processes' base URLs (taken in turn, and the next one
/// when a request fails), and a prefix for idempotency keys.
#[derive(Debug, Clone)]
pub struct Starter {
    pub base_urls: Vec<String>,
    pub keys: String,
}

impl Starter {
    pub fn of(env: &TestEnv) -> Starter {
        Starter {
            base_urls: vec![env.base_url.clone()],
            keys: env.name.clone(),
        }
    }
}

/// Starts saga `n` of the workload (every `fail_every`-th fails at `ship`), sending the same
/// request again (same idempotency key) until the orchestrator accepts it — through crashes.
pub async fn start_shop(to: &Starter, n: usize, fail_every: usize) -> Accepted {
    let fails = fail_every > 0 && n.is_multiple_of(fail_every);
    let input = if fails {
        json!({ "n": n, "fail_at": "ship" })
    } else {
        json!({ "n": n })
    };
    let body = json!({ "definition": "shop", "input": input });
    let key = format!("{}-{n}", to.keys);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0;
    loop {
        let base = &to.base_urls[(n + attempt) % to.base_urls.len().max(1)];
        attempt += 1;
        let sent = client
            .post(format!("{base}/v1/sagas"))
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        if let Ok(resp) = sent
            && matches!(resp.status(), StatusCode::CREATED | StatusCode::OK)
            && let Ok(status) = resp.json::<Value>().await
            && let Some(id) = status["id"].as_str()
        {
            return Accepted {
                id: id.to_owned(),
                expected: if fails { "compensated" } else { "completed" },
            };
        }
        assert!(
            Instant::now() < deadline,
            "saga {n} was never accepted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `count` sagas, one every `pace` (so that faults meet sagas in every phase), each sent
/// again until accepted; returns them once all were.
pub async fn start_many(
    to: &Starter,
    count: usize,
    fail_every: usize,
    pace: Duration,
) -> Vec<Accepted> {
    let t0 = tokio::time::Instant::now();
    let starts: Vec<_> = (0..count)
        .map(|n| {
            let to = to.clone();
            let at = t0 + pace * u32::try_from(n).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                start_shop(&to, n, fail_every).await
            })
        })
        .collect();
    let mut accepted = Vec::with_capacity(count);
    for start in starts {
        accepted.push(start.await.expect("a start task"));
    }
    accepted
}

/// What [`check`] counted.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sagas: usize,
    pub completed: usize,
    pub compensated: usize,
    pub commands: usize,
    pub repeats: u64,
    pub lost: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sagas ({} completed, {} compensated as expected), {} commands handled, {} repeated deliveries absorbed by idempotency keys, {} lost",
            self.sagas, self.completed, self.compensated, self.commands, self.repeats, self.lost
        )
    }
}

/// Waits for every accepted saga to settle, then checks the invariants of the module doc.
pub async fn check(env: &TestEnv, ledger: &EffectLedger, accepted: &[Accepted]) -> Report {
    let mut report = Report {
        sagas: accepted.len(),
        ..Report::default()
    };
    let mut histories = HashMap::new();
    for a in accepted {
        let s = env
            .wait_state(
                &a.id,
                &["completed", "compensated", "terminated", "suspended"],
                Duration::from_secs(120),
            )
            .await;
        assert_eq!(
            s["state"], a.expected,
            "saga {} ended otherwise: {s:#}",
            a.id
        );
        match a.expected {
            "completed" => report.completed += 1,
            _ => report.compensated += 1,
        }
        histories.insert(a.id.clone(), env.history(&a.id).await);
    }
    check_history(&histories);
    check_ledger(&ledger.lock(), accepted, &histories, &mut report);
    report.lost = accepted.len() - report.completed - report.compensated;
    assert_drained(env).await;
    report
}

/// No attempt dispatched twice and no timer fired twice, as the sagas' histories tell.
fn check_history(histories: &HashMap<String, Vec<Value>>) {
    for (id, history) in histories {
        let mut seen = BTreeSet::new();
        for e in history {
            let kind = e["kind"].as_str().unwrap_or_default();
            if matches!(
                kind,
                "command_dispatched" | "attempt_timed_out" | "retry_scheduled"
            ) {
                let key = (
                    kind.to_owned(),
                    e["step"].to_string(),
                    e["attempt"].to_string(),
                    e["data"]["kind"].to_string(),
                );
                assert!(
                    seen.insert(key.clone()),
                    "saga {id}: {key:?} twice in its history"
                );
            }
        }
    }
}

/// The ledger's half of [`check`].
fn check_ledger(
    data: &EffectData,
    accepted: &[Accepted],
    histories: &HashMap<String, Vec<Value>>,
    report: &mut Report,
) {
    report.commands = data.handled.len();
    report.repeats = data.repeats;
    // No attempt dispatched under two command ids.
    let mut ids: BTreeMap<(String, String, bool, u32), BTreeSet<String>> = BTreeMap::new();
    for h in &data.handled {
        ids.entry((h.saga.clone(), h.step.clone(), h.compensation, h.attempt))
            .or_default()
            .insert(h.command_id.clone());
    }
    for (attempt, commands) in &ids {
        assert_eq!(
            commands.len(),
            1,
            "attempt {attempt:?} dispatched as {commands:?}"
        );
    }
    // No side effect twice.
    for (key, n) in &data.performed {
        assert_eq!(*n, 1, "the side effect of {key} happened {n} times");
    }
    // Compensations undo only what succeeded or timed out; completed sagas undo nothing.
    for a in accepted {
        let undone: BTreeSet<&str> = data
            .handled
            .iter()
            .filter(|h| h.saga == a.id && h.compensation)
            .map(|h| h.step.as_str())
            .collect();
        let history = &histories[&a.id];
        if a.expected == "completed" {
            assert!(
                undone.is_empty(),
                "completed saga {} compensated {undone:?}",
                a.id
            );
            continue;
        }
        for step in &undone {
            let did = history.iter().any(|e| {
                e["step"] == *step
                    && (e["kind"] == "step_succeeded" || e["kind"] == "attempt_timed_out")
            });
            assert!(
                did,
                "saga {} compensated {step}, which never succeeded nor timed out",
                a.id
            );
        }
        // `reserve` and `charge` succeeded: both undone. `ship` was refused: undone only when an
        // attempt of it ran out of time first (its outcome unknown then), as PROTOCOL §4 says.
        let ship_timed_out = history
            .iter()
            .any(|e| e["step"] == "ship" && e["kind"] == "attempt_timed_out");
        assert!(
            undone.contains("reserve")
                && undone.contains("charge")
                && (ship_timed_out || !undone.contains("ship")),
            "saga {} (failed at ship) compensated {undone:?}; history {:?}",
            a.id,
            crate::kinds_of(history)
        );
    }
}

/// The outbox, the timers, the task queues and the dead-letter queues are empty.
async fn assert_drained(env: &TestEnv) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("connect to the test's database");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&mut conn)
            .await
            .expect("count the outbox");
        let timers: i64 = sqlx::query_scalar("SELECT count(*) FROM timers")
            .fetch_one(&mut conn)
            .await
            .expect("count the timers");
        if outbox == 0 && timers == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {outbox} outbox rows, {timers} timers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close().await;
    let amqp = env.amqp().await;
    let queues = shop_tasks()
        .into_iter()
        .map(|t| format!("saga.task.{t}"))
        .chain(
            [
                "saga.replies",
                "saga.replies.dlq",
                "saga.start.dlq",
                "saga.events.dlq",
            ]
            .map(String::from),
        );
    for queue in queues {
        amqp.wait_queue_count(&queue, Duration::from_secs(30), |n| n == 0)
            .await;
    }
}
