//! A private RabbitMQ node for the fault tests that stop the broker itself (`stop_app`): its own
//! node name, AMQP and distribution ports, data and log directories, no plugins, beside the
//! machine's node (which is never touched). Stopped and removed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::env::{free_port, rabbitmqctl};

pub struct PrivateRabbit {
    dir: PathBuf,
    pub node: String,
    pub port: u16,
}

impl PrivateRabbit {
    /// A new node, started and accepting AMQP connections (a few seconds).
    pub async fn start() -> PrivateRabbit {
        let short = uuid::Uuid::new_v4().simple().to_string();
        let node = format!("sagafault{}@localhost", &short[..10]);
        let dir = std::env::temp_dir().join(format!("saga-rabbit-{}", &short[..10]));
        let port = free_port().expect("a free port");
        let dist_port = free_port().expect("a free port");
        std::fs::create_dir_all(dir.join("mnesia")).expect("create the node's directory");
        std::fs::create_dir_all(dir.join("log")).expect("create the node's log directory");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("write the node's configuration");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write the plugins file");
        // The server switches to the `rabbitmq` user: it must own its directory.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let path = |p: &str| dir.join(p).display().to_string();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run rabbitmq-server -detached");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let rabbit = PrivateRabbit { dir, node, port };
        rabbit.await_startup().await;
        rabbit
    }

    /// Waits until the node's application runs (the node registers itself a moment after the
    /// detached start returns).
    async fn await_startup(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = rabbitmqctl(&["-n", &self.node, "await_startup", "--timeout", "30"]).await;
            match ready {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("private RabbitMQ node: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `rabbitmqctl stop_app`: the broker stops (every connection dropped), the node stays.
    pub async fn stop_app(&self) {
        rabbitmqctl(&["-n", &self.node, "stop_app"])
            .await
            .expect("stop_app");
    }

    /// `rabbitmqctl start_app`, then wait until it runs.
    pub async fn start_app(&self) {
        rabbitmqctl(&["-n", &self.node, "start_app"])
            .await
            .expect("start_app");
        self.await_startup().await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
