//! The harness of the CLI's end-to-end tests: the real orchestrator started in this process
//! (`orchestrator::App`) against the local PostgreSQL and RabbitMQ, in a database and a vhost of
//! its own, with API tokens configured; the real `sagactl` binary run as a subprocess; and a raw
//! AMQP worker (`worker`) that answers commands as the test scripts.
//!
//! Nothing waits with a fixed sleep: waits long-poll the API under a deadline.
#![allow(dead_code)]

pub mod worker;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use orchestrator::App;
use orchestrator::app::AppError;
use orchestrator::config::{Args, Config};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The tokens the orchestrator is configured with. No output of `sagactl` may ever contain them.
pub const OPERATOR_TOKEN: &str = "op-7f3a9c-operator-secret";
pub const CLIENT_TOKEN: &str = "ci-51be02-client-secret";
const ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long one `sagactl` run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// An orchestrator running in this process, with its database and vhost (removed on drop).
pub struct Orchestrator {
    /// `sagactl_test_<id>`: the database and the vhost.
    pub name: String,
    pub base_url: String,
    pub amqp_url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), AppError>>>,
    vhost_created: bool,
}

impl Orchestrator {
    pub async fn start() -> Orchestrator {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("sagactl_test_{}", &id[..12]);
        let mut env = Orchestrator {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:5672/{name}"),
            name,
            base_url: String::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            shutdown: CancellationToken::new(),
            server: None,
            vhost_created: false,
        };
        rabbitmqctl(&["add_vhost", &env.name]).await;
        env.vhost_created = true;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &env.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .await;
        let config = Config::from_args(Args {
            database_url: format!("postgres://postgres@127.0.0.1:5432/{}", env.name),
            amqp_url: env.amqp_url.clone(),
            listen: "127.0.0.1:0".parse().expect("an address"),
            api_tokens: format!("ops:operator:{OPERATOR_TOKEN},ci:client:{CLIENT_TOKEN}"),
            max_body: "1MiB".into(),
            stuck_after: Duration::from_secs(300),
            db_pool: 4,
            reply_concurrency: 8,
        })
        .expect("a configuration");
        let app = App::build(config).await.expect("the orchestrator builds");
        let addr = app.local_addr().expect("the orchestrator's address");
        env.base_url = format!("http://{addr}");
        env.server = Some(tokio::spawn(app.run(env.shutdown.clone())));
        env.wait_ready().await;
        env
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let answer = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                other if started.elapsed() > READY_DEADLINE => {
                    panic!("the orchestrator was not ready within {READY_DEADLINE:?}: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `sagactl` pointed at this orchestrator (through `SAGA_URL`), without a token.
    pub fn cli(&self) -> Sagactl {
        Sagactl::new(&self.base_url)
    }

    /// The saga's status (read with the operator token), as JSON.
    pub async fn status(&self, id: &str, query: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/sagas/{id}{query}", self.base_url))
            .bearer_auth(OPERATOR_TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET saga {id}: {e}"));
        assert_eq!(r.status(), reqwest::StatusCode::OK, "GET saga {id}");
        r.json().await.expect("a status")
    }

    /// Waits (long-polling) until the saga is in `state`; panics with its status after `within`.
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut status = self.status(id, "").await;
        while status["state"] != state {
            assert!(
                Instant::now() < deadline,
                "saga {id} never became {state} within {within:?}: {status:#}"
            );
            let revision = &status["revision"];
            status = self
                .status(id, &format!("?wait=5s&revision={revision}"))
                .await;
        }
        status
    }

    /// Stops the orchestrator the way its process would on SIGTERM.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(20), server).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "the orchestrator did not stop cleanly: {stopped:?}"
            );
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let db = self.name.clone();
        // Drop runs inside the test's runtime: the database is dropped on a thread of its own.
        let dropped = std::thread::spawn(move || drop_database(&db))
            .join()
            .unwrap_or_else(|_| Err("the drop-database thread panicked".into()));
        if let Err(e) = dropped {
            eprintln!("cleanup: cannot drop database {}: {e}", self.name);
        }
        if self.vhost_created {
            match std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_vhost", &self.name])
                .stdout(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: rabbitmqctl delete_vhost {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: cannot run rabbitmqctl: {e}"),
            }
        }
    }
}

fn drop_database(name: &str) -> Result<(), String> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    rt.block_on(async {
        let mut conn = sqlx::postgres::PgConnection::connect(ADMIN_DATABASE_URL)
            .await
            .map_err(|e| format!("connect to {ADMIN_DATABASE_URL}: {e}"))?;
        // `name` is `sagactl_test_` and hex digits, made here.
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("drop database: {e}"))?;
        let _ = conn.close().await;
        Ok(())
    })
}

async fn rabbitmqctl(args: &[&str]) {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run rabbitmqctl {args:?} (is RabbitMQ installed?): {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on (bound a moment ago, then let go).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("its address").port()
}

/// How to run the `sagactl` binary: its URL and token come from the environment
/// (`SAGA_URL`, `SAGA_TOKEN`), as an operator's shell would give them.
#[derive(Debug, Clone)]
pub struct Sagactl {
    url: String,
    token: Option<String>,
}

/// What one run of `sagactl` did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Sagactl {
    pub fn new(url: &str) -> Sagactl {
        Sagactl {
            url: url.to_owned(),
            token: None,
        }
    }

    /// The same, sending this token (through `SAGA_TOKEN`).
    pub fn token(&self, token: &str) -> Sagactl {
        Sagactl {
            url: self.url.clone(),
            token: Some(token.to_owned()),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, b"").await
    }

    pub async fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagactl"));
        cmd.args(args)
            .env("SAGA_URL", &self.url)
            .env_remove("SAGA_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for proxy in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(proxy);
        }
        if let Some(token) = &self.token {
            cmd.env("SAGA_TOKEN", token);
        }
        let mut child = cmd.spawn().expect("spawn sagactl");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).await.expect("write sagactl's stdin");
        }
        let out = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("sagactl {args:?} ran longer than {RUN_DEADLINE:?}"))
            .expect("sagactl's output");
        let run = Run {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for secret in [OPERATOR_TOKEN, CLIENT_TOKEN] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "sagactl printed a token: {run:#?}"
            );
        }
        run
    }
}

impl Run {
    /// Asserts the exit code; returns the run for more checks.
    #[track_caller]
    pub fn code(self, expected: i32) -> Run {
        assert_eq!(
            self.code, expected,
            "exit code of sagactl {:?}: {self:#?}",
            self.args
        );
        self
    }

    /// Asserts success and an empty stderr; returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        let run = self.code(0);
        assert!(
            run.stderr.is_empty(),
            "stderr of sagactl {:?}: {run:#?}",
            run.args
        );
        run.stdout
    }

    /// Stdout as JSON (`--output json`), after asserting success.
    #[track_caller]
    pub fn json(self) -> Value {
        let args = self.args.clone();
        let out = self.ok();
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("sagactl {args:?}: not JSON ({e}): {out}"))
    }

    /// Asserts that stderr holds `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Run {
        assert!(
            self.stderr.contains(needle),
            "stderr of sagactl {:?} lacks {needle:?}: {self:#?}",
            self.args
        );
        self
    }

    /// Asserts that stdout holds `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Run {
        assert!(
            self.stdout.contains(needle),
            "stdout of sagactl {:?} lacks {needle:?}: {self:#?}",
            self.args
        );
        self
    }
}
