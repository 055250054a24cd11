//! RabbitMQ (PROTOCOL.md §3): the topology, the outbox relay, and the consumers of `saga.replies`,
//! `saga.start` and `saga.events.inbox`.
//!
//! The bus turns deliveries into engine inputs and committed outbox rows into publishes; it decides
//! nothing. What it must never do: acknowledge a delivery before the transaction that applied it
//! committed; publish anything but committed outbox rows (and dead letters); delete an outbox row
//! the broker has not confirmed as routed; crash, or stop consuming, on any input.
//!
//! # Connections
//!
//! [`Bus::run`] owns the reconnect loop (`saga_amqp::run_sessions`, shared with the worker SDK;
//! lapin's own recovery is not trusted, CRATES.md). Each connection is a *session* ([`session`], a
//! `saga_amqp::Session` owned by the bus): it declares the topology, opens its channels, marks the
//! bus ready, and runs the relay and the three consumers until shutdown or until anything reports
//! the connection lost — a connection error event, a consumer stream that fails or is cancelled by
//! the broker, a channel operation that fails. Then every task of the session stops, the bus is no
//! longer ready, and the loop connects again, backing off from 100 ms to 5 s by doubling.
//! Deliveries that were not acknowledged are redelivered by the broker; outbox rows whose publish
//! was not confirmed stay in the outbox and are published again (same `message_id` and command id:
//! workers deduplicate).
//!
//! # Queues: classic and durable, without arguments
//!
//! Every queue is declared as a *classic* durable queue with no arguments (docs/decisions/0002).
//! On one node that is the fastest durable choice, and a classic queue has no delivery limit, so
//! a connection that flaps while replies are in flight can never dead-letter good replies (on a
//! quorum queue each dropped delivery counts toward `x-delivery-limit`). Dead-lettering is done by
//! the orchestrator itself (publish to the DLQ with `x-saga-error`, then ack), not by the broker,
//! so that the reason travels with the message.
//!
//! On a cluster, declare the queues as quorum queues instead: add `x-queue-type: quorum` to the
//! arguments in [`topology`] (and a generous `x-delivery-limit` on `saga.replies`). A queue's type
//! cannot change once declared: existing classic queues must be drained and deleted (or migrated
//! with a shovel) first, or the declare fails with `PRECONDITION_FAILED` and the bus never gets
//! ready — which it logs as an error.

mod consumer;
mod deadletter;
mod events;
mod queues;
mod relay;
mod replies;
mod session;
mod starts;
mod topology;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lapin::Connection;
use saga_amqp::{AmqpError, SessionOwner};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

#[derive(Debug, Error)]
pub enum BusError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("{0}")]
    Unconfirmed(String),
    #[error("`{0}` is not a valid AMQP name (longer than 255 bytes)")]
    Name(String),
}

/// The orchestrator's side of RabbitMQ. Cheap to clone; [`Bus::run`] drives it.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    reply_concurrency: u16,
    ready: AtomicBool,
    /// The connection of the session that is up, for declares made from outside (the API).
    current: Mutex<Option<Arc<Connection>>>,
    /// The broker's last answers about task queues.
    queues: Mutex<queues::Cache>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("Bus")
            .field("ready", &self.is_ready())
            .field("reply_concurrency", &self.inner.reply_concurrency)
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub fn new(amqp_url: String, reply_concurrency: u16) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                url: amqp_url,
                reply_concurrency: reply_concurrency.max(1),
                ready: AtomicBool::new(false),
                current: Mutex::new(None),
                queues: Mutex::new(queues::Cache::new()),
            }),
        }
    }

    /// Runs until `shutdown` fires: connects (with backoff, forever), declares the topology (base
    /// and the task queues of every registered definition), marks itself ready, runs the outbox
    /// relay and the consumers; on any connection loss marks itself not ready and reconnects. On
    /// shutdown: stops consuming, finishes in-flight deliveries (acks what committed), finishes the
    /// relay's current batch, closes the channels and the connection.
    pub async fn run(self, engine: Engine, shutdown: CancellationToken) {
        session::run_forever(self, engine, shutdown).await;
    }

    /// Declares `saga.task.T` (durable, bound to `saga.commands` with key `T`) for each name; used
    /// by `POST /v1/definitions` before it answers. Errors if the broker is not connected now.
    pub async fn declare_task_queues(&self, names: &[String]) -> Result<(), BusError> {
        let conn = self.connection().ok_or(BusError::NotConnected)?;
        topology::declare_task_queues(&conn, names).await
    }

    /// Connected and topology declared.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    fn connection(&self) -> Option<Arc<Connection>> {
        let current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        current.clone().filter(|c| c.status().connected())
    }

    /// The session is set up: ready. `lost` is checked after the connection is published (a
    /// session is cancelled before the bus hears it is down), so that a loss racing with the end
    /// of setup can never leave the bus marked ready.
    fn mark_up(&self, session: &session::Session) {
        let conn = session.connection();
        *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        self.inner.ready.store(true, Ordering::SeqCst);
        if session.lost().is_cancelled() {
            self.session_down(conn);
        }
    }
}

impl SessionOwner for Bus {
    /// The session of `conn` ended (or is ending): not ready until the next one is up.
    fn session_down(&self, conn: &Arc<Connection>) {
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
            self.inner.ready.store(false, Ordering::SeqCst);
        }
    }
}

/// The JSON pointer of the first string (or key) in `value` that holds a NUL character, which
/// Postgres refuses in `jsonb` and `text`: such a message is refused at the edge, never a 500.
fn find_nul(value: &serde_json::Value, pointer: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(pointer.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{pointer}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{pointer}/{}", escape_pointer(k));
            if k.contains('\0') {
                Some(here)
            } else {
                find_nul(v, &here)
            }
        }),
        _ => None,
    }
}

/// Escapes one JSON pointer segment (RFC 6901); a NUL is shown as `\u0000`.
fn escape_pointer(segment: &str) -> String {
    segment
        .replace('~', "~0")
        .replace('/', "~1")
        .replace('\0', "\\u0000")
}
