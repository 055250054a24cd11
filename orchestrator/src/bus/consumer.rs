//! What the three consumers share: manual acks, bounded concurrency, settling a delivery (ack, or
//! dead-letter then ack, or leave it to the broker), retrying while Postgres is away, and a
//! graceful stop.
//!
//! A delivery is acknowledged only after the engine's transaction committed (`engine.*` returning
//! `Ok` means it did), or after it was dead-lettered under confirms. While Postgres is unreachable
//! a delivery is neither acked nor nacked: its handler retries with backoff and holds its permit,
//! so consumption pauses instead of spinning through nack and redelivery.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Consumer};
use saga_amqp::{BACKOFF_MIN, clip, next_backoff};
use saga_wire::{EVENTS_DLQ, EVENTS_INBOX, REPLIES_DLQ, REPLIES_QUEUE, START_DLQ, START_QUEUE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use super::session::Session;
use super::{deadletter, events, replies, starts};
use crate::engine::{Engine, EngineError};
use crate::store::StoreError;

/// At most this many start or event messages are applied at once (replies use the configured
/// reply concurrency): starts and signals are rarer, and each holds a Postgres connection.
const INBOX_CONCURRENCY: u16 = 8;

/// The queues the orchestrator consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Replies,
    Starts,
    Events,
}

impl Kind {
    pub(super) const ALL: [Kind; 3] = [Kind::Replies, Kind::Starts, Kind::Events];

    pub(super) fn queue(self) -> &'static str {
        match self {
            Kind::Replies => REPLIES_QUEUE,
            Kind::Starts => START_QUEUE,
            Kind::Events => EVENTS_INBOX,
        }
    }

    pub(super) fn dlq(self) -> &'static str {
        match self {
            Kind::Replies => REPLIES_DLQ,
            Kind::Starts => START_DLQ,
            Kind::Events => EVENTS_DLQ,
        }
    }

    /// Prefetch, and deliveries applied at once.
    pub(super) fn concurrency(self, reply_concurrency: u16) -> u16 {
        match self {
            Kind::Replies => reply_concurrency.max(1),
            Kind::Starts | Kind::Events => reply_concurrency.clamp(1, INBOX_CONCURRENCY),
        }
    }
}

/// What becomes of a delivery once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Applied and committed (or a duplicate): ack.
    Ack,
    /// Unusable: publish it to the queue's DLQ with this reason (a kind, for the metrics, and
    /// words, for the `x-saga-error` header), then ack.
    DeadLetter(Unusable, String),
    /// Stopping (shutdown, or the connection is lost) before it could be applied: neither ack nor
    /// nack; the broker redelivers it when the channel closes.
    Leave,
}

/// Why a message is dead-lettered, as `saga_dead_letters_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unusable {
    /// Not the shape PROTOCOL.md gives.
    Malformed,
    /// A reply to a command the orchestrator never sent.
    UnknownCommand,
    /// An event for a saga that does not exist.
    UnknownSaga,
    /// An event the saga refused (it awaits no such event).
    Refused,
    /// A start the definition rejects (unknown definition, input against its schema).
    Invalid,
    /// A start whose idempotency key was used by a different request.
    KeyReused,
    /// The engine failed for good on it.
    Failed,
}

impl Unusable {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Unusable::Malformed => "malformed",
            Unusable::UnknownCommand => "unknown_command",
            Unusable::UnknownSaga => "unknown_saga",
            Unusable::Refused => "refused",
            Unusable::Invalid => "invalid",
            Unusable::KeyReused => "key_reused",
            Unusable::Failed => "failed",
        }
    }
}

/// What a handler needs.
pub(super) struct Ctx {
    pub(super) engine: Engine,
    pub(super) session: Arc<Session>,
    /// A confirming channel for dead letters, shared by the consumers.
    pub(super) dead_letters: Channel,
    pub(super) shutdown: CancellationToken,
}

impl Ctx {
    /// Runs `op` until it succeeds or fails for good, retrying (100 ms doubling to 5 s) while the
    /// failure is transient: Postgres unreachable, a transaction rolled back by a deadlock or a
    /// serialization failure, a start whose idempotency key another request holds now. `None`
    /// when the bus stops first.
    pub(super) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Option<Result<T, EngineError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let mut delay = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            match op().await {
                Err(e) if is_transient(&e) => {
                    failures += 1;
                    if failures == 1 && !matches!(e, EngineError::KeyInProgress) {
                        warn!(error = %e, "cannot {what} now; holding the message and retrying");
                    } else {
                        debug!(error = %e, retry_in = ?delay, "cannot {what} now; retrying");
                    }
                }
                done => return Some(done),
            }
            self.session.sleep(delay, &self.shutdown).await.ok()?;
            delay = next_backoff(delay);
        }
    }
}

/// Errors worth waiting out rather than dead-lettering the message for.
fn is_transient(e: &EngineError) -> bool {
    match e {
        EngineError::KeyInProgress => true,
        EngineError::Store(s) => s.is_unavailable() || is_rolled_back(s),
        _ => false,
    }
}

/// SQLSTATE class 40: the transaction was rolled back (deadlock, serialization failure) and may
/// simply be run again.
fn is_rolled_back(e: &StoreError) -> bool {
    match e {
        StoreError::Db(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("40")),
        StoreError::Migrate(_) | StoreError::Corrupt(_) => false,
    }
}

/// Consumes until shutdown or until the session is lost; then waits for the deliveries in
/// flight. On shutdown it cancels the consumer first, so that the broker sends no more.
pub(super) async fn run(
    kind: Kind,
    ctx: Arc<Ctx>,
    channel: Channel,
    mut consumer: Consumer,
    concurrency: u16,
) {
    let permits = Arc::new(Semaphore::new(usize::from(concurrency.max(1))));
    let in_flight = TaskTracker::new();
    loop {
        let permit = ctx
            .session
            .until_stopped(&ctx.shutdown, permits.clone().acquire_owned())
            .await;
        let Ok(Ok(permit)) = permit else {
            break;
        };
        let Some(delivery) = ctx
            .session
            .next_delivery(&mut consumer, kind.queue(), &ctx.shutdown)
            .await
        else {
            break;
        };
        in_flight.spawn(handle(kind, ctx.clone(), delivery, permit));
    }
    // Shutdown: no new deliveries; those prefetched and not taken go back to the queue when the
    // channel closes.
    ctx.session
        .stop_consuming(&channel, &consumer, kind.queue())
        .await;
    in_flight.close();
    in_flight.wait().await;
}

async fn handle(kind: Kind, ctx: Arc<Ctx>, delivery: Delivery, _permit: OwnedSemaphorePermit) {
    // A reply's span continues the worker's trace (the context in its headers).
    let span = crate::trace::delivery_span(
        kind.queue(),
        delivery.delivery_tag,
        delivery.properties.headers().as_ref(),
    );
    async {
        debug!(
            redelivered = delivery.redelivered,
            body = %clip(&String::from_utf8_lossy(&delivery.data), 2048),
            "received a message"
        );
        let disposition = match kind {
            Kind::Replies => replies::handle(&ctx, &delivery).await,
            Kind::Starts => starts::handle(&ctx, &delivery).await,
            Kind::Events => events::handle(&ctx, &delivery).await,
        };
        settle(kind, &ctx, &delivery, disposition).await;
    }
    .instrument(span)
    .await
}

async fn settle(kind: Kind, ctx: &Ctx, delivery: &Delivery, disposition: Disposition) {
    match disposition {
        Disposition::Ack => ack(ctx, delivery).await,
        Disposition::DeadLetter(why, reason) => {
            match deadletter::publish(&ctx.dead_letters, kind.dlq(), delivery, &reason).await {
                Ok(()) => {
                    ctx.engine.metrics().inc(
                        "saga_dead_letters_total",
                        &[("queue", kind.queue()), ("reason", why.as_str())],
                    );
                    warn!(%reason, dlq = kind.dlq(), "dead-lettered a message");
                    ack(ctx, delivery).await;
                }
                Err(e) => {
                    // Left unacked: redelivered on the next connection, whose declares recreate
                    // a missing DLQ.
                    ctx.session
                        .lose(format!("cannot dead-letter to {}: {e}", kind.dlq()));
                }
            }
        }
        Disposition::Leave => debug!("stopping: left the message to the broker"),
    }
}

async fn ack(ctx: &Ctx, delivery: &Delivery) {
    // A channel that closed under it is no error: the broker redelivers the message, and the
    // engine sees the second copy as a duplicate.
    ctx.session
        .settle(
            "acknowledging a delivery",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await;
}
