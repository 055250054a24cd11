//! The demo: starts the orchestrator and the example workers in this process, against the local
//! PostgreSQL and RabbitMQ, registers the example definitions, starts a handful of sagas — some
//! complete, one compensates, one times out and compensates, one is suspended and repaired by an
//! operator, two escrows wait for signals (over HTTP and as `saga.events` messages) of which one
//! lets its deadline lapse — prints their progress as it happens, and ends with a summary (exit 0
//! when every saga ended as expected).
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/saga_demo`, recreated at each run)
//! and `AMQP_URL` (default the local broker's `/` vhost; `scripts/demo.sh` gives it a vhost of its
//! own) name the servers. `RUST_LOG` shows the orchestrator's and workers' logs.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use orchestrator::App;
use orchestrator::config::Config;
use saga_demo::{escrow, onboarding, order};
use saga_worker::Worker;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection as _};
use tokio_util::sync::CancellationToken;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/saga_demo";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The whole demo gives up after this long.
const PATIENCE: Duration = Duration::from_secs(90);

struct Scenario {
    label: &'static str,
    definition: &'static str,
    input: Value,
    expect: &'static str,
    /// An operator skips the failed compensation when the saga is suspended.
    operator_skips: bool,
    /// External events the demo sends, after a delay from the start.
    signals: Vec<Signal>,
}

struct Signal {
    after: Duration,
    event: &'static str,
    /// As a message on `saga.events` rather than over HTTP.
    by_message: bool,
    payload: Value,
}

fn signal(after_ms: u64, event: &'static str, by_message: bool, payload: Value) -> Signal {
    Signal {
        after: Duration::from_millis(after_ms),
        event,
        by_message,
        payload,
    }
}

fn scenarios() -> Vec<Scenario> {
    let order = |id: &str, knobs: Value| json!({ "order_id": id, "items": ["vinyl", "turntable"], "amount_cents": 34900, "knobs": knobs });
    let closing = |property: &str| json!({ "property": property, "price_cents": 45_000_000 });
    let customer = |name: &str, knobs: Value| json!({ "email": format!("{name}@example.com"), "name": name, "knobs": knobs });
    vec![
        Scenario {
            label: "order: happy path",
            definition: "order",
            input: order("A-1", json!({})),
            expect: "completed",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "order: payment flaky twice, then ok",
            definition: "order",
            input: order(
                "A-2",
                json!({ "flaky": "charge_payment", "flaky_attempts": 2 }),
            ),
            expect: "completed",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "order: card declined → compensate",
            definition: "order",
            input: order("A-3", json!({ "fail": "charge_payment" })),
            expect: "compensated",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "order: shipping hangs → timeout → compensate",
            definition: "order",
            input: order("A-4", json!({ "hang": "create_shipment" })),
            expect: "compensated",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "order: refund fails → suspended → operator skips",
            definition: "order",
            input: order(
                "A-5",
                json!({ "fail": "create_shipment", "fail_compensation": "charge_payment" }),
            ),
            expect: "compensated",
            operator_skips: true,
            signals: vec![],
        },
        Scenario {
            label: "onboarding: happy path",
            definition: "customer_onboarding",
            input: customer("ada", json!({})),
            expect: "completed",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "onboarding: loyalty down → compensate",
            definition: "customer_onboarding",
            input: customer("bob", json!({ "fail": "loyalty_points" })),
            expect: "compensated",
            operator_skips: false,
            signals: vec![],
        },
        Scenario {
            label: "escrow: both sign, funds come early → done",
            definition: "escrow",
            input: closing("12 Elm St"),
            expect: "completed",
            operator_skips: false,
            signals: vec![
                signal(300, "buyer_signed", false, json!({ "by": "buyer" })),
                signal(
                    600,
                    "funds_deposited",
                    true,
                    json!({ "amount_cents": 45_000_000 }),
                ),
                signal(900, "seller_signed", false, json!({ "by": "seller" })),
            ],
        },
        Scenario {
            label: "escrow: seller never signs → deadline lapses",
            definition: "escrow",
            input: closing("3 Oak Rd"),
            expect: "compensated",
            operator_skips: false,
            signals: vec![signal(300, "buyer_signed", false, json!({ "by": "buyer" }))],
        },
    ]
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("{0}")]
    App(#[from] orchestrator::app::AppError),
    #[error("{0}")]
    Config(#[from] orchestrator::config::ConfigError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("worker: {0}")]
    Worker(#[from] saga_worker::BuildError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Unexpected(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, DemoError> {
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into());
    let amqp_url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into());
    drop_database(&database_url).await?;

    let mut config = Config::from_args(orchestrator::config::Args {
        database_url: database_url.clone(),
        amqp_url: amqp_url.clone(),
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| DemoError::Unexpected("listen address".into()))?,
        api_tokens: String::new(),
        max_body: "1MiB".into(),
        stuck_after: Duration::from_secs(300),
        db_pool: 8,
        reply_concurrency: 16,
    })?;
    config.listen.set_port(0);
    let app = App::build(config).await?;
    let addr = app
        .local_addr()
        .ok_or_else(|| DemoError::Unexpected("the orchestrator has no address".into()))?;
    let base = format!("http://{addr}");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    println!("orchestrator listening on {base} (database {database_url})");

    let http = reqwest::Client::new();
    wait_ready(&http, &base).await?;
    for def in [
        order::definition(),
        onboarding::definition(),
        escrow::definition(),
    ] {
        let r = http
            .post(format!("{base}/v1/definitions"))
            .json(&def)
            .send()
            .await?;
        let body: Value = r.json().await?;
        println!("registered {} version {}", body["name"], body["version"]);
    }
    let workers = escrow::workers(onboarding::workers(order::workers(Worker::builder(
        amqp_url.clone(),
    ))))
    .connection_name("demo-workers")
    .shutdown_timeout(Duration::from_secs(5))
    .build()?;
    let workers_task = tokio::spawn(workers.run(shutdown.clone()));

    let scenarios = scenarios();
    let mut ids = Vec::new();
    for s in &scenarios {
        let r = http
            .post(format!("{base}/v1/sagas"))
            .json(&json!({ "definition": s.definition, "input": s.input }))
            .send()
            .await?;
        let status: Value = r.json().await?;
        let id = status["id"].as_str().unwrap_or_default().to_owned();
        println!("started {:<50} {id}", s.label);
        ids.push(id);
    }
    println!();

    let events = Events::connect(&amqp_url).await?;
    let started = Instant::now();
    let mut sent: BTreeMap<(usize, usize), ()> = BTreeMap::new();
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    let mut finals: BTreeMap<usize, Value> = BTreeMap::new();
    while finals.len() < ids.len() && started.elapsed() < PATIENCE {
        for (i, id) in ids.iter().enumerate() {
            if finals.contains_key(&i) {
                continue;
            }
            let status: Value = http
                .get(format!("{base}/v1/sagas/{id}"))
                .send()
                .await?
                .json()
                .await?;
            let line = progress_line(&status);
            if last.get(&i) != Some(&line) {
                println!(
                    "{:>6.2}s  {:<50} {line}",
                    started.elapsed().as_secs_f64(),
                    scenarios[i].label
                );
                last.insert(i, line);
            }
            for (j, sig) in scenarios[i].signals.iter().enumerate() {
                if started.elapsed() < sig.after || sent.insert((i, j), ()).is_some() {
                    continue;
                }
                let how = if sig.by_message {
                    events.publish(id, sig.event, &sig.payload).await?;
                    "published on saga.events".to_owned()
                } else {
                    let r = http
                        .post(format!("{base}/v1/sagas/{id}/signals/{}", sig.event))
                        .json(&sig.payload)
                        .send()
                        .await?;
                    format!("POST …/signals → {}", r.status().as_u16())
                };
                println!(
                    "{:>6.2}s  {:<50} signal {} ({how})",
                    started.elapsed().as_secs_f64(),
                    scenarios[i].label,
                    sig.event
                );
            }
            let state = status["state"].as_str().unwrap_or_default();
            if state == "suspended" && scenarios[i].operator_skips {
                let reason = status["stuck_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                println!(
                    "{:>6.2}s  {:<50} operator: skip ({reason})",
                    started.elapsed().as_secs_f64(),
                    ""
                );
                http.post(format!("{base}/v1/sagas/{id}/skip"))
                    .json(&json!({ "reason": "refunded by hand in the payment console" }))
                    .send()
                    .await?;
            } else if matches!(state, "completed" | "compensated" | "terminated")
                || (state == "suspended" && !scenarios[i].operator_skips)
            {
                finals.insert(i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("\nsummary after {:.1}s:", started.elapsed().as_secs_f64());
    let mut all_ok = true;
    for (i, s) in scenarios.iter().enumerate() {
        let state = finals
            .get(&i)
            .and_then(|f| f["state"].as_str())
            .unwrap_or("unfinished")
            .to_owned();
        let ok = state == s.expect;
        all_ok &= ok;
        let failure = finals
            .get(&i)
            .and_then(|f| f["failure"].as_object())
            .map(|f| {
                format!(
                    "{} at {}",
                    f["code"].as_str().unwrap_or("?"),
                    f["step"].as_str().unwrap_or("-")
                )
            })
            .unwrap_or_default();
        println!(
            "  {} {:<50} {:<12} (expected {:<11}) {failure}",
            if ok { "ok  " } else { "FAIL" },
            s.label,
            state,
            s.expect
        );
    }
    let done = scenarios.len() - usize::from(!all_ok);
    println!(
        "{}",
        if all_ok {
            format!("all {done} sagas ended as expected")
        } else {
            "some sagas did not end as expected".to_owned()
        }
    );

    events.close().await;
    shutdown.cancel();
    let _ = workers_task.await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(DemoError::Unexpected(e.to_string())),
    }
    drop_database(&database_url).await?;
    Ok(all_ok)
}

/// Publishes external events to `saga.events`, as another service of the landscape would.
struct Events {
    connection: Connection,
    channel: lapin::Channel,
}

impl Events {
    async fn connect(url: &str) -> Result<Events, DemoError> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Events {
            connection,
            channel,
        })
    }

    async fn publish(&self, saga: &str, event: &str, payload: &Value) -> Result<(), DemoError> {
        let body = serde_json::to_vec(payload).map_err(|e| DemoError::Unexpected(e.to_string()))?;
        let properties = BasicProperties::default()
            .with_correlation_id(saga.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                "saga.events".into(),
                event.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// `state: step glyphs`, e.g. `compensating  ✓reserve_inventory ✗charge_payment ·create_shipment`.
fn progress_line(status: &Value) -> String {
    let steps = status["steps"].as_array().cloned().unwrap_or_default();
    let glyphs: Vec<String> = steps
        .iter()
        .map(|s| {
            let glyph = match s["state"].as_str().unwrap_or_default() {
                "pending" => "·",
                "running" => "…",
                "succeeded" => "✓",
                "failed" => "✗",
                "timed_out" => "⏱",
                "compensating" => "↺…",
                "compensated" => "↺",
                "compensation_failed" => "‼",
                "skipped" => "⤼",
                _ => "?",
            };
            let attempts = s["attempts"].as_u64().unwrap_or(0);
            let retries = if attempts > 1 {
                format!("×{attempts}")
            } else {
                String::new()
            };
            format!("{glyph}{}{retries}", s["name"].as_str().unwrap_or_default())
        })
        .collect();
    format!(
        "{:<13} {}",
        status["state"].as_str().unwrap_or_default(),
        glyphs.join(" ")
    )
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Result<(), DemoError> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DemoError::Unexpected(
        "the orchestrator did not become ready in 30 s (is RabbitMQ up?)".into(),
    ))
}

/// Drops the demo's database, so that every run starts empty and leaves nothing behind.
async fn drop_database(url: &str) -> Result<(), DemoError> {
    let options: PgConnectOptions = url.parse()?;
    let name = options
        .get_database()
        .unwrap_or("saga_demo")
        .replace('"', "\"\"");
    let mut admin = options.database("postgres").connect().await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}
