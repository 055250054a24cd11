//! One orchestrator process under test, with its own database and RabbitMQ vhost.
//!
//! The database is *not* created here: the orchestrator must create it when it is missing
//! (PROTOCOL §5). The vhost is created with `rabbitmqctl` (the management plugin is not enabled).
//! Cleanup runs in `Drop`, which is synchronous and usually runs inside a tokio runtime, so the
//! `DROP DATABASE` is done on a plain thread with its own small runtime.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

/// How long the orchestrator gets to answer `GET /readyz` with 200 after it is spawned.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often readiness (and process exit) is polled.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a test may choose about its orchestrator.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary to run: `env!("CARGO_BIN_EXE_orchestrator-under-test")`, which only integration
    /// tests can name, hence passed in.
    pub binary: PathBuf,
    /// Where the per-test log file goes.
    pub log_dir: PathBuf,
    /// Extra environment for the process (e.g. `SAGA_STUCK_AFTER`), applied after the defaults.
    pub extra_env: Vec<(String, String)>,
    /// The PostgreSQL server of the test's database (default: the machine's, 127.0.0.1:5432).
    pub postgres: SocketAddr,
    /// Where the orchestrator reaches PostgreSQL and RabbitMQ, when not directly (a fault
    /// proxy). The test itself always talks to the servers directly.
    pub postgres_via: Option<SocketAddr>,
    pub rabbitmq_via: Option<SocketAddr>,
    /// The RabbitMQ node of the test's vhost and its AMQP address (default: the machine's).
    pub rabbitmq_node: Option<String>,
    pub rabbitmq: SocketAddr,
}

impl Options {
    pub fn new(binary: impl Into<PathBuf>, log_dir: impl Into<PathBuf>) -> Self {
        Options {
            binary: binary.into(),
            log_dir: log_dir.into(),
            extra_env: Vec::new(),
            postgres: SocketAddr::from(([127, 0, 0, 1], 5432)),
            postgres_via: None,
            rabbitmq_via: None,
            rabbitmq_node: None,
            rabbitmq: SocketAddr::from(([127, 0, 0, 1], 5672)),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running (or stopped, between `kill` and `start_again`) orchestrator with its isolation.
pub struct TestEnv {
    opts: Options,
    /// `saga_e2e_<short uuid>`: both the database name and the vhost name.
    pub name: String,
    pub database_url: String,
    pub amqp_url: String,
    pub base_url: String,
    pub port: u16,
    pub log_path: PathBuf,
    pub(crate) client: reqwest::Client,
    /// The bearer token every request carries (unless it sets `Authorization` itself).
    pub(crate) token: Option<String>,
    child: Option<Child>,
    vhost_created: bool,
}

impl TestEnv {
    /// Creates the vhost, spawns the orchestrator and waits until it is ready.
    ///
    /// Panics (this is a test harness) with the log's tail when the orchestrator does not get ready.
    pub async fn launch(opts: Options) -> TestEnv {
        let short = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("saga_e2e_{}", &short[..12]);
        let port = free_port().expect("pick a free port for the orchestrator");
        let database_url = format!("postgres://postgres@{}/{name}", opts.postgres);
        let amqp_url = format!(
            "amqp://guest:guest@{}/{}",
            opts.rabbitmq,
            percent_encode(&name)
        );
        std::fs::create_dir_all(&opts.log_dir).expect("create the log directory");
        let log_path = opts.log_dir.join(format!("{name}.log"));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(90))
            .build()
            .expect("build the HTTP client");
        let mut env = TestEnv {
            opts,
            base_url: format!("http://127.0.0.1:{port}"),
            name,
            database_url,
            amqp_url,
            port,
            log_path,
            client,
            token: None,
            child: None,
            vhost_created: false,
        };
        env.rabbitmqctl(&["add_vhost", &env.name])
            .await
            .expect("rabbitmqctl add_vhost");
        env.vhost_created = true;
        env.restore_broker().await;
        env.start_again().await;
        env
    }

    /// Spawns the orchestrator again on the same database, vhost and port, and waits until ready.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again while the orchestrator is still running"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the orchestrator's log file");
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut cmd = self.command(self.port);
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} (is `orchestrator::run_main` built?): {e}",
                self.opts.binary.display()
            )
        });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// The orchestrator's command line and environment, listening on `port`.
    fn command(&self, port: u16) -> Command {
        let database_url = match self.opts.postgres_via {
            Some(via) => format!("postgres://postgres@{via}/{}", self.name),
            None => self.database_url.clone(),
        };
        let amqp_url = match self.opts.rabbitmq_via {
            Some(via) => format!("amqp://guest:guest@{via}/{}", percent_encode(&self.name)),
            None => self.amqp_url.clone(),
        };
        let mut cmd = Command::new(&self.opts.binary);
        cmd.env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("SAGA_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,orchestrator=debug,saga_amqp=debug")
            .env_remove("SAGA_API_TOKENS")
            .stdin(Stdio::null());
        for (k, v) in &self.opts.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Another orchestrator process on the same database and vhost (its log beside the first
    /// one's), ready when this returns.
    pub async fn spawn_peer(&self) -> Peer {
        self.spawn_peer_with(&[]).await
    }

    /// [`TestEnv::spawn_peer`] with more environment variables (e.g. `LD_PRELOAD` of faketime).
    pub async fn spawn_peer_with(&self, extra: &[(&str, &str)]) -> Peer {
        let port = free_port().expect("a free port for the peer");
        let log_path = self.log_path.with_extension(format!("{port}.log"));
        let log = File::create(&log_path).expect("create the peer's log");
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut cmd = self.command(port);
        cmd.envs(extra.iter().copied());
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let child = cmd.spawn().expect("spawn a peer orchestrator");
        let peer = Peer {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        let started = Instant::now();
        while self
            .client
            .get(format!("{}/readyz", peer.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_or(true, |r| r.status() != StatusCode::OK)
        {
            assert!(
                started.elapsed() < READY_DEADLINE,
                "the peer was not ready; log {}:\n{}",
                peer.log_path.display(),
                log_tail(&peer.log_path, 40)
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        peer
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let url = format!("{}/readyz", self.base_url);
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "the orchestrator exited before it was ready ({status}); log {}:\n{}",
                    self.log_path.display(),
                    log_tail(&self.log_path, 60)
                );
            }
            match self
                .client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(resp) if resp.status() == StatusCode::OK => return,
                Ok(resp) => last = format!("status {}", resp.status()),
                Err(e) => last = format!("error {e}"),
            }
            if started.elapsed() > READY_DEADLINE {
                panic!(
                    "the orchestrator was not ready within {READY_DEADLINE:?} (last: {last}); log {}:\n{}",
                    self.log_path.display(),
                    log_tail(&self.log_path, 60)
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// `rabbitmqctl` on the test's RabbitMQ node.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> Result<(), String> {
        match &self.opts.rabbitmq_node {
            Some(node) => {
                let mut all = vec!["-n", node.as_str()];
                all.extend_from_slice(args);
                rabbitmqctl(&all).await
            }
            None => rabbitmqctl(args).await,
        }
    }

    /// Cuts the orchestrator (and every client of the vhost) off RabbitMQ: the vhost's
    /// permissions are cleared and its connections closed, so that nobody can connect again
    /// until [`TestEnv::restore_broker`]. Other tests' vhosts are untouched.
    pub async fn cut_off_broker(&self, reason: &str) {
        self.rabbitmqctl(&["clear_permissions", "-p", &self.name, "guest"])
            .await
            .expect("rabbitmqctl clear_permissions");
        self.close_broker_connections(reason).await;
    }

    /// The broker closes every connection to the test's vhost (they may connect again).
    pub async fn close_broker_connections(&self, reason: &str) {
        self.rabbitmqctl(&["close_all_connections", "-p", &self.name, reason])
            .await
            .expect("rabbitmqctl close_all_connections");
    }

    /// Gives `guest` every permission on the test's vhost.
    pub async fn restore_broker(&self) {
        self.rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .await
        .expect("rabbitmqctl set_permissions");
    }

    /// Sets the bearer token the helpers send (for orchestrators started with `SAGA_API_TOKENS`).
    pub fn set_token(&mut self, token: Option<&str>) {
        self.token = token.map(str::to_owned);
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL and start again on the same database and vhost.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// SIGTERM, then wait up to `within` for the process to exit; returns its exit status.
    /// Panics when it does not exit in time (and kills it then).
    pub async fn sigterm(&mut self, within: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("sigterm: the orchestrator is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(&pid)
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(e) => panic!("waiting for the orchestrator to exit: {e}"),
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the orchestrator did not exit within {within:?} of SIGTERM; log {}:\n{}",
                    self.log_path.display(),
                    log_tail(&self.log_path, 40)
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The last lines of the orchestrator's log (for assertion messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill();
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "orchestrator log for {}: {}\n--- last lines ---\n{}",
                self.name,
                self.log_path.display(),
                log_tail(&self.log_path, 80)
            );
        }
        let db = self.name.clone();
        let server = self.opts.postgres;
        let dropped = std::thread::spawn(move || drop_database(server, &db))
            .join()
            .unwrap_or_else(|_| Err("the drop-database thread panicked".into()));
        if let Err(e) = dropped {
            eprintln!("cleanup: could not drop database {}: {e}", self.name);
        }
        if self.vhost_created {
            let node: Vec<&str> = match &self.opts.rabbitmq_node {
                Some(n) => vec!["-n", n.as_str()],
                None => Vec::new(),
            };
            match Command::new("rabbitmqctl")
                .args(node)
                .args(["-q", "delete_vhost", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: rabbitmqctl delete_vhost {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup: could not run rabbitmqctl: {e}"),
            }
        }
        if !failed {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// A second (third, …) orchestrator process of a [`TestEnv`]; killed on drop.
pub struct Peer {
    child: Child,
    pub base_url: String,
    pub log_path: PathBuf,
}

impl Peer {
    /// SIGSTOP: the process freezes, its connections stay open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} failed");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn drop_database(server: SocketAddr, name: &str) -> Result<(), String> {
    let admin = format!("postgres://postgres@{server}/postgres");
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("build a runtime: {e}"))?;
    rt.block_on(async {
        let mut conn = sqlx::postgres::PgConnection::connect(&admin)
            .await
            .map_err(|e| format!("connect to {admin}: {e}"))?;
        // `name` is ours (`saga_e2e_` + hex), never external input.
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("drop database: {e}"))?;
        let _ = conn.close().await;
        Ok(())
    })
}

/// Runs `rabbitmqctl` (about half a second a call) and reports its stderr on failure.
pub async fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("run rabbitmqctl {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A port that was free a moment ago: bind port 0, read it, let it go.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for the vhost in the AMQP URL).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = match File::open(path) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            if f.read_to_end(&mut bytes).is_err() {
                return "(log unreadable)".into();
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => return format!("(no log: {e})"),
    };
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}
