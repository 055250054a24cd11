//! A TCP fault proxy for the fault tests: the orchestrator talks to PostgreSQL or RabbitMQ
//! through it, and the test adds latency, cuts every open connection, or black-holes traffic
//! (connections are accepted, nothing is forwarded either way, until it is lifted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Faults {
    /// Added before each chunk is forwarded, in microseconds.
    latency_us: AtomicU64,
    blackhole: AtomicBool,
    /// Bumped by [`FaultProxy::cut`]: every connection open before it closes.
    cuts: watch::Sender<u64>,
    cut_count: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicU64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy: bind a loopback port");
        let addr = listener.local_addr().expect("proxy: local address");
        let faults = Arc::new(Faults {
            latency_us: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            cut_count: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let f = faults.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                f.accepted.fetch_add(1, Ordering::SeqCst);
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut cut = f.cuts.subscribe();
                    cut.mark_unchanged();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, &f) => {}
                        _ = pipe(sr, cw, &f) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.faults.latency_us.store(us, Ordering::SeqCst);
    }

    /// While on, bytes are held (not forwarded, not dropped) and connections stay open.
    pub fn set_blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    /// Closes every connection open now (new ones are accepted as usual).
    pub fn cut(&self) {
        self.faults.cut_count.fetch_add(1, Ordering::SeqCst);
        self.faults.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far (a client that reconnects after a cut adds one).
    pub fn connections(&self) -> u64 {
        self.faults.accepted.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.faults.cut_count.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let latency = faults.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
