//! Running a worker: the reconnect loop, the handlers in flight, graceful shutdown.
//!
//! What it must never do: acknowledge a command before the broker confirmed its reply; declare
//! anything (the orchestrator owns the topology: a missing task queue is waited for, with a
//! passive declare); stop on a command it cannot parse or a handler that panics.
//!
//! Each connection is a *session* ([`session`], a `saga_amqp::Session`, shared with the
//! orchestrator's bus): it opens a confirming channel for replies and a consumer per task queue
//! ([`consume`]), and runs until shutdown or until anything reports the connection lost (a
//! connection error, a consumer that fails or that the broker cancels, a channel operation that
//! fails). Then the loop (`saga_amqp::run_sessions`) connects again, backing off from 100 ms to
//! 5 s by doubling. lapin's own recovery is not used (CRATES.md).
//!
//! Handlers outlive the session that delivered them: one that is halfway through its side effect
//! when the connection drops runs to its end (so that an idempotency record is written, and the
//! redelivered copy finds it) — its reply simply cannot be published or its command acknowledged
//! on the dead channel, and the broker redelivers the command. The concurrency limit is the
//! worker's, not a session's, so such handlers still count against it.

mod consume;
mod reply;
mod session;

use std::sync::Arc;

use lapin::{Connection, ConnectionProperties};
use saga_amqp::{OP_TIMEOUT, run_sessions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::builder::{Config, DEFAULT_AMQP_URL, WorkerBuilder};

/// A step worker: consumes the commands of its tasks and replies to the orchestrator. Built with
/// [`Worker::builder`]; runs with [`Worker::run`] or [`Worker::run_until_signal`].
pub struct Worker {
    pub(crate) config: Arc<Config>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("Worker")
            .field("connection_name", &self.config.connection_name)
            .field("tasks", &self.config.handlers.keys().collect::<Vec<_>>())
            .field("prefetch", &self.config.prefetch)
            .field("concurrency", &self.config.concurrency)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder for a worker that connects to `amqp_url`
    /// (`amqp://user:password@host:5672/vhost`, the vhost URL-encoded: `%2f` for `/`).
    pub fn builder(amqp_url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(amqp_url.into())
    }

    /// A builder for the broker named by the `AMQP_URL` environment variable, or
    /// [`DEFAULT_AMQP_URL`] when it is not set — the orchestrator's convention.
    pub fn from_env() -> WorkerBuilder {
        Worker::builder(std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into()))
    }

    /// Runs until `shutdown` is cancelled: connects (with backoff, for as long as it takes),
    /// consumes every task queue, runs handlers, replies, acknowledges. On shutdown it stops
    /// taking commands, lets the handlers in flight finish and their replies be confirmed and
    /// acknowledged (up to the shutdown timeout), then closes the connection; commands it had
    /// been sent but not started go back to their queue.
    ///
    /// Dropping this future instead stops everything at once, like a crash: the broker
    /// redelivers what was not acknowledged.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.config;
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(config.concurrency)),
            in_flight: TaskTracker::new(),
            abandon: CancellationToken::new(),
            shutdown,
            config,
        });
        // Dropping `run` drops the handlers still running too.
        let _abandon_on_drop = shared.abandon.clone().drop_guard();
        info!(
            tasks = ?shared.config.handlers.keys().collect::<Vec<_>>(),
            prefetch = shared.config.prefetch,
            concurrency = shared.config.concurrency,
            "the worker starts"
        );
        let connect = || {
            let properties = ConnectionProperties::default()
                .with_connection_name(shared.config.connection_name.as_str().into());
            Connection::connect_uri(shared.config.uri.clone(), properties)
        };
        run_sessions(&shared.shutdown, connect, |conn| {
            session::run(&shared, conn)
        })
        .await;
        // Handlers of a session that was lost, or of one that ended during the shutdown.
        shared.drain().await;
        info!("the worker stopped");
    }

    /// [`Worker::run`] until the process gets SIGINT (Ctrl-C) or SIGTERM (what `docker stop`
    /// and Kubernetes send), then shuts down gracefully.
    pub async fn run_until_signal(self) {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down: finishing the commands in flight");
            trigger.cancel();
        });
        self.run(shutdown).await;
        signals.abort();
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// What lives as long as [`Worker::run`], across sessions.
struct Shared {
    config: Arc<Config>,
    /// One per handler running: the worker's concurrency.
    permits: Arc<Semaphore>,
    /// Every handler task (with its reply and ack).
    in_flight: TaskTracker,
    /// Cancelled to drop the handlers still running: at the end of the shutdown timeout, or when
    /// `run` is dropped.
    abandon: CancellationToken,
    shutdown: CancellationToken,
}

impl Shared {
    /// Waits for the handlers in flight (up to the shutdown timeout), then abandons the rest.
    /// Only on shutdown: nothing may start a handler afterwards.
    async fn drain(&self) {
        self.in_flight.close();
        if self.in_flight.is_empty() {
            return;
        }
        info!(
            handlers = self.in_flight.len(),
            "waiting for the handlers in flight to finish"
        );
        let timeout = self.config.shutdown_timeout;
        if tokio::time::timeout(timeout, self.in_flight.wait())
            .await
            .is_err()
        {
            warn!(
                handlers = self.in_flight.len(),
                ?timeout,
                "handlers still running at the end of the shutdown timeout: abandoning them (the broker redelivers their commands)"
            );
            self.abandon.cancel();
            if tokio::time::timeout(OP_TIMEOUT, self.in_flight.wait())
                .await
                .is_err()
            {
                warn!(
                    "a handler does not yield to be abandoned (blocking code in an async handler?)"
                );
            }
        } else {
            debug!("the handlers in flight finished");
        }
    }
}
