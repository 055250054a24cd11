//! Running a worker: the reconnect loop, the handlers in flight, graceful shutdown.
//!
//! What it must never do: acknowledge a command before the broker confirmed its reply; declare
//! anything (the orchestrator owns the topology: a missing task queue is waited for, with a
//! passive declare); stop on a command it cannot parse or a handler that panics.
//!
//! Each connection is a *session* ([`session`]): it opens a confirming channel for replies and a
//! consumer per task queue ([`consume`]), and runs until shutdown or until anything reports the
//! connection lost (a connection error, a consumer that fails or that the broker cancels, a
//! channel operation that fails). Then the loop connects again, backing off from 100 ms to 5 s
//! by doubling. lapin's own recovery is not used (CRATES.md).
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
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::builder::{Config, DEFAULT_AMQP_URL, WorkerBuilder};
use session::End;

/// How long one broker operation (connect, open a channel, declare, publish, ack) may take.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply's publisher confirm may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between reconnects, between looks for a missing task queue, between publishes of an
/// unroutable reply.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
        let shutdown = shared.shutdown.clone();
        let mut delay = BACKOFF_MIN;
        let mut sessions = 0u64;
        while !shutdown.is_cancelled() {
            let properties = ConnectionProperties::default()
                .with_connection_name(shared.config.connection_name.as_str().into());
            let connecting = timed(
                "connecting",
                Connection::connect_uri(shared.config.uri.clone(), properties),
            );
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = connecting => c,
            };
            match connected {
                Err(e) => warn!(error = %e, retry_in = ?delay, "cannot connect to RabbitMQ"),
                Ok(conn) => {
                    sessions += 1;
                    if sessions == 1 {
                        info!("connected to RabbitMQ");
                    } else {
                        info!(session = sessions, "reconnected to RabbitMQ");
                    }
                    let since = Instant::now();
                    match session::run(&shared, conn).await {
                        End::Shutdown => break,
                        End::Lost(reason) => {
                            warn!(%reason, "lost the RabbitMQ connection; reconnecting");
                        }
                    }
                    // A session that stayed up a while starts the backoff afresh; one that fails
                    // at once keeps doubling it.
                    if since.elapsed() >= BACKOFF_MAX {
                        delay = BACKOFF_MIN;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = next_backoff(delay);
        }
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

/// A broker operation that failed.
#[derive(Debug, Error)]
enum BrokerError {
    #[error("RabbitMQ refused {what}: {source}")]
    Amqp {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ did not answer {0} in time")]
    Timeout(String),
}

/// Runs a broker operation with [`OP_TIMEOUT`], naming it in the error.
async fn timed<T>(
    what: impl Into<String>,
    op: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(BrokerError::Amqp {
            what: what.into(),
            source,
        }),
        Err(_) => Err(BrokerError::Timeout(what.into())),
    }
}

/// The next delay of a 100 ms → 5 s doubling backoff.
fn next_backoff(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

/// Shortens text taken from a message, for logs: at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut d = BACKOFF_MIN;
        let mut seen = vec![d];
        for _ in 0..8 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[5], Duration::from_millis(3200));
        assert_eq!(seen[6], BACKOFF_MAX);
        assert_eq!(seen[8], BACKOFF_MAX);
    }

    #[test]
    fn clip_keeps_short_text() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
    }
}
