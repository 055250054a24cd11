//! A private PostgreSQL cluster for the fault tests that restart or stop the database: `initdb`
//! into a temporary directory, a free port, trust authentication, run as the `postgres` user
//! (PostgreSQL refuses to run as root). The machine's own cluster is never touched. Stopped and
//! removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::env::free_port;

/// The newest installed server's binaries (Debian: /usr/lib/postgresql/<major>/bin).
fn bin_dir() -> PathBuf {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort();
    let major = majors.last().expect("a PostgreSQL major version installed");
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root.
fn pg_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    let path = bin_dir().join(tool);
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl PrivatePostgres {
    /// A new cluster, started and accepting connections.
    pub fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("saga-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        // The server runs as `postgres`: it must own its directory.
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let port = free_port().expect("a free port");
        let data = dir.join("data");
        let data = data.to_str().expect("a UTF-8 path");
        pg_tool(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .expect("initdb");
        let pg = PrivatePostgres { dir, port };
        pg.ctl("start").expect("start the private cluster");
        pg
    }

    fn ctl(&self, action: &str) -> Result<(), String> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        pg_tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-o",
                &opts,
                "-m",
                "fast",
                "-w",
                action,
            ],
        )
    }

    /// A URL for database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `pg_ctl restart -m fast`: every connection is dropped, the server comes back.
    pub fn restart(&self) {
        self.ctl("restart").expect("restart the private cluster");
    }

    pub fn stop(&self) {
        self.ctl("stop").expect("stop the private cluster");
    }

    pub fn start_again(&self) {
        self.ctl("start").expect("start the private cluster");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
