//! `bench`: how many sagas per second the orchestrator carries and how much latency each step
//! adds, against the local PostgreSQL and RabbitMQ, with no-op workers (docs/benchmarks.md).
//!
//! ```sh
//! cargo run --release -p saga-bench --bin bench            # every scenario, full size
//! cargo run --release -p saga-bench --bin bench -- --quick # a few seconds (CI)
//! ```
//!
//! Each scenario gets orchestrator processes (this binary again, as an orchestrator) on a fresh
//! database and vhost, runs, verifies that every saga ended as it must and that every step ran
//! exactly as often as it must (exit 1 otherwise), and prints its figures; all of them are also
//! written as JSON (`--json`, default `target/bench.json`).

mod cluster;
mod cpu;
mod load;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use cluster::Cluster;
use load::{Offer, Run};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmark the saga orchestrator against local PostgreSQL and RabbitMQ"
)]
struct Cli {
    /// A few seconds in all, small numbers: for CI, so that the benchmark cannot rot.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (repeatable); all when none is given.
    #[arg(long = "only", value_enum)]
    only: Vec<Scenario>,
    /// Where the figures go, as JSON.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// 3-step sagas started as fast as the API takes them.
    Throughput,
    /// 3-step sagas at a fixed offered rate.
    Latency,
    /// 3-step sagas whose last step fails: two compensations each.
    Compensation,
    /// 1, 3, 10 and 30 steps per saga.
    Steps,
    /// Two orchestrator processes on one database and vhost.
    ScaleOut,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Row {
    scenario: Scenario,
    processes: usize,
    steps: usize,
    sagas: usize,
    offered: String,
    wall_s: f64,
    sagas_per_s: f64,
    round_trips_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    per_step_p50_ms: f64,
    rss_mib: Vec<f64>,
    /// CPU time per saga while the sagas ran: the whole machine's (PostgreSQL, RabbitMQ, the
    /// orchestrators, the bench's workers and client) and the orchestrator processes' alone.
    cpu_ms_per_saga: Option<f64>,
    orchestrator_cpu_ms_per_saga: Option<f64>,
    /// The share of the machine's time the hypervisor gave to others meanwhile.
    steal_pct: Option<f64>,
}

// The orchestrator binary's allocator: the orchestrator processes this binary runs must be it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::var(cluster::ROLE).is_ok_and(|r| r == "orchestrator") {
        return orchestrator::app::run_main();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let all = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Compensation,
        Scenario::Steps,
        Scenario::ScaleOut,
    ];
    let chosen: Vec<Scenario> = match cli.only.is_empty() {
        true => all.to_vec(),
        false => all.into_iter().filter(|s| cli.only.contains(s)).collect(),
    };
    let q = cli.quick;
    let mut rows = Vec::new();
    for scenario in chosen {
        match scenario {
            Scenario::Throughput => {
                let offer = Offer::Burst {
                    sagas: if q { 200 } else { 10_000 },
                    in_flight: 64,
                };
                rows.push(measure(scenario, 1, 3, offer, false).await?);
            }
            Scenario::Latency => {
                let offer = Offer::Rate {
                    per_second: if q { 50 } else { 100 },
                    for_: Duration::from_secs(if q { 2 } else { 30 }),
                };
                rows.push(measure(scenario, 1, 3, offer, false).await?);
            }
            Scenario::Compensation => {
                let offer = Offer::Burst {
                    sagas: if q { 100 } else { 5_000 },
                    in_flight: 64,
                };
                rows.push(measure(scenario, 1, 3, offer, true).await?);
            }
            Scenario::Steps => {
                for (steps, sagas) in [(1, 3_000), (3, 2_000), (10, 600), (30, 200)] {
                    let offer = Offer::Burst {
                        sagas: if q { sagas / 50 } else { sagas },
                        in_flight: 64,
                    };
                    rows.push(measure(scenario, 1, steps, offer, false).await?);
                }
            }
            Scenario::ScaleOut => {
                let offer = Offer::Burst {
                    sagas: if q { 200 } else { 10_000 },
                    in_flight: 64,
                };
                rows.push(measure(scenario, 2, 3, offer, false).await?);
            }
        }
    }
    print_table(&rows);
    let report = serde_json::json!({ "machine": machine().await, "rows": rows });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&cli.json, text).map_err(|e| format!("{}: {e}", cli.json.display()))?;
    println!("figures written to {}", cli.json.display());
    Ok(())
}

/// Runs one scenario on a fresh cluster and verifies it.
async fn measure(
    scenario: Scenario,
    processes: usize,
    steps: usize,
    offer: Offer,
    fail: bool,
) -> Result<Row, String> {
    let cluster =
        Cluster::start(&format!("{scenario:?}_{steps}").to_lowercase(), processes).await?;
    let result = measure_on(&cluster, scenario, steps, offer, fail).await;
    cluster.remove().await;
    result
}

async fn measure_on(
    cluster: &Cluster,
    scenario: Scenario,
    steps: usize,
    offer: Offer,
    fail: bool,
) -> Result<Row, String> {
    let client = reqwest::Client::new();
    let definition = load::definition(steps);
    let registered = client
        .post(format!("{}/v1/definitions", cluster.bases[0]))
        .json(&definition)
        .send()
        .await
        .map_err(|e| format!("register: {e}"))?;
    if !registered.status().is_success() {
        return Err(format!("register: {}", registered.status()));
    }
    let stop = CancellationToken::new();
    let counts = load::start_workers(&cluster.amqp_url, steps, &stop)?;
    let (ends, _listener) = load::listen_ends(&cluster.amqp_url).await?;
    let name = definition["name"].as_str().unwrap_or_default().to_owned();
    let patience = Duration::from_secs(120);
    let (machine, own) = (cpu::Machine::now(), cluster.cpu_s());
    let run = load::run(cluster, &ends, &name, offer, fail, patience).await?;
    let cpu = Cpu {
        machine: machine.zip(cpu::Machine::now()).map(|(b, a)| a.since(&b)),
        orchestrator_s: own.zip(cluster.cpu_s()).map(|(b, a)| a - b),
    };
    let rss = cluster.rss_kib();
    stop.cancel();
    verify(&run, &counts, steps, fail)?;
    Ok(row(
        scenario,
        cluster.bases.len(),
        steps,
        offer,
        &run,
        &rss,
        cpu,
    ))
}

/// Every saga ended as it must, and every step ran exactly as often as it must.
fn verify(run: &Run, counts: &load::Counts, steps: usize, fail: bool) -> Result<(), String> {
    let expected = if fail { "compensated" } else { "completed" };
    let n = run.sagas.len() as u64;
    let unfinished = run.sagas.iter().filter(|(_, end)| end.is_none()).count();
    if unfinished > 0 {
        return Err(format!(
            "{unfinished} of {n} sagas did not end within the patience"
        ));
    }
    let wrong = run
        .sagas
        .iter()
        .filter(|(_, end)| end.as_ref().is_some_and(|(_, s)| s != expected))
        .count();
    if wrong > 0 {
        return Err(format!("{wrong} of {n} sagas did not end {expected}"));
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..steps {
        let done = counts.get(&load::task(i)).copied().unwrap_or(0);
        let undone = counts
            .get(&format!("{}.undo", load::task(i)))
            .copied()
            .unwrap_or(0);
        let must_undo = if fail && i + 1 < steps { n } else { 0 };
        if done != n || undone != must_undo {
            return Err(format!(
                "step s{i} ran {done} times (must: {n}) and was undone {undone} times (must: {must_undo})"
            ));
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU spent while the sagas ran.
struct Cpu {
    machine: Option<cpu::Spent>,
    orchestrator_s: Option<f64>,
}

fn row(
    scenario: Scenario,
    processes: usize,
    steps: usize,
    offer: Offer,
    run: &Run,
    rss: &[u64],
    cpu: Cpu,
) -> Row {
    let mut latencies: Vec<f64> = run
        .sagas
        .iter()
        .filter_map(|(sent, end)| {
            end.as_ref()
                .map(|(at, _)| (*at - *sent).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let last_end = run
        .sagas
        .iter()
        .filter_map(|(_, end)| end.as_ref().map(|(at, _)| *at))
        .max()
        .unwrap_or_else(Instant::now);
    let wall = (last_end - run.first_start).as_secs_f64().max(1e-9);
    let sagas = run.sagas.len();
    // A saga of k steps makes k round trips forward, and compensations on top.
    let commands = sagas * steps;
    let p50 = percentile(&latencies, 50.0);
    Row {
        scenario,
        processes,
        steps,
        sagas,
        offered: match offer {
            Offer::Burst { in_flight, .. } => format!("burst, {in_flight} in flight"),
            Offer::Rate { per_second, for_ } => {
                format!("{per_second}/s for {}", humantime::format_duration(for_))
            }
        },
        wall_s: wall,
        sagas_per_s: sagas as f64 / wall,
        round_trips_per_s: commands as f64 / wall,
        p50_ms: p50,
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        per_step_p50_ms: p50 / steps as f64,
        rss_mib: rss.iter().map(|k| *k as f64 / 1024.0).collect(),
        cpu_ms_per_saga: cpu.machine.map(|m| 1000.0 * m.busy_s / sagas.max(1) as f64),
        orchestrator_cpu_ms_per_saga: cpu.orchestrator_s.map(|s| 1000.0 * s / sagas.max(1) as f64),
        steal_pct: cpu.machine.map(|m| m.steal_pct),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<13} {:>4} {:>5} {:>6} {:<22} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>6} {:>7}",
        "scenario",
        "proc",
        "steps",
        "sagas",
        "offered",
        "wall s",
        "sagas/s",
        "steps/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ms/step",
        "RSS MiB",
        "CPU ms/saga",
        "orch.",
        "steal %"
    );
    for r in rows {
        let rss: Vec<String> = r.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "{:<13} {:>4} {:>5} {:>6} {:<22} {:>7.2} {:>8.0} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.2} {:>9} {:>11} {:>6} {:>7}",
            format!("{:?}", r.scenario).to_lowercase(),
            r.processes,
            r.steps,
            r.sagas,
            r.offered,
            r.wall_s,
            r.sagas_per_s,
            r.round_trips_per_s,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.per_step_p50_ms,
            rss.join("+"),
            figure(r.cpu_ms_per_saga, 2),
            figure(r.orchestrator_cpu_ms_per_saga, 2),
            figure(r.steal_pct, 0)
        );
    }
}

/// A figure that may be missing (`-`).
fn figure(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// What the figures were measured on.
async fn machine() -> serde_json::Value {
    use sqlx::Connection;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let postgres =
        match sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await {
            Ok(mut c) => sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut c)
                .await
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
    let rabbitmq = std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({
        "cores": cores,
        "postgres": postgres,
        "rabbitmq": rabbitmq,
        "orchestrator": env!("CARGO_PKG_VERSION"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
