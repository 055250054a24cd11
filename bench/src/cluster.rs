//! The system under test: one or more orchestrator processes (this binary, re-executed with
//! `SAGA_BENCH_ROLE=orchestrator`, which runs `orchestrator::app::run_main`) on a database and a
//! RabbitMQ vhost of their own, made afresh for each scenario and removed after it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The environment variable that makes this binary an orchestrator.
pub const ROLE: &str = "SAGA_BENCH_ROLE";

pub struct Cluster {
    pub name: String,
    pub database_url: String,
    pub amqp_url: String,
    pub bases: Vec<String>,
    procs: Vec<Child>,
}

async fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("rabbitmqctl: {e} (is RabbitMQ installed?)"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

async fn drop_database(name: &str) -> Result<(), String> {
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .map_err(|e| format!("connect to {admin}: {e}"))?;
    // `name` is ours (`saga_bench_<scenario>`), never outside input.
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("drop database {name}: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("pick a port: {e}"))
}

impl Cluster {
    /// `processes` orchestrators, each ready when this returns.
    pub async fn start(scenario: &str, processes: usize) -> Result<Cluster, String> {
        let name = format!("saga_bench_{scenario}");
        rabbitmqctl(&["delete_vhost", &name]).await.ok();
        rabbitmqctl(&["add_vhost", &name]).await?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).await?;
        drop_database(&name).await?;
        let mut cluster = Cluster {
            database_url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            amqp_url: format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
            name,
            bases: Vec::new(),
            procs: Vec::new(),
        };
        let exe = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
        let logs = PathBuf::from("target/bench-logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let client = reqwest::Client::new();
        // One at a time: the first creates the database and migrates it.
        for i in 0..processes {
            let port = free_port()?;
            let log_path = logs.join(format!("{}-{i}.log", cluster.name));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(&exe)
                .env(ROLE, "orchestrator")
                .env("DATABASE_URL", &cluster.database_url)
                .env("AMQP_URL", &cluster.amqp_url)
                .env("SAGA_LISTEN", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .env_remove("SAGA_API_TOKENS")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .spawn()
                .map_err(|e| format!("spawn an orchestrator: {e}"))?;
            cluster.procs.push(child);
            let base = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            loop {
                let ready = client.get(format!("{base}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(format!(
                        "orchestrator {i} not ready in 60 s; log {}",
                        log_path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            cluster.bases.push(base);
        }
        Ok(cluster)
    }

    /// The orchestrator processes' CPU time so far, in seconds (None: `/proc` cannot tell).
    pub fn cpu_s(&self) -> Option<f64> {
        self.procs
            .iter()
            .map(|p| crate::cpu::process_s(p.id()))
            .sum()
    }

    /// Each process's resident set size, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Vec<u64> {
        self.procs
            .iter()
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{}/status", p.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Stops the processes and removes the database and the vhost.
    pub async fn remove(mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.procs.clear();
        let _ = rabbitmqctl(&["delete_vhost", &self.name]).await;
        if let Err(e) = drop_database(&self.name).await {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
