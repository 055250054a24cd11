//! One task queue: wait for it to exist, consume it with manual acks, run a handler per command
//! within the worker's concurrency, reply, then acknowledge.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use saga_amqp::{AmqpError, BACKOFF_MIN, Session, clip, consume, next_backoff, timed};
use saga_wire::{Command, REPLIES_QUEUE, Reply, ReplyBody, task_queue};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{Shared, reply};
use crate::handler::Handler;
use crate::{Context, trace};

/// Consumes `saga.task.<task>` until shutdown or until the session is lost. Returns the channel
/// and consumer (to be kept open while the handlers in flight finish), or `None` when it stopped
/// before consuming.
pub(super) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    replies: Channel,
    task: String,
    handler: Handler,
) -> Option<(Channel, Consumer)> {
    let queue = task_queue(&task);
    let (channel, mut consumer) = open(&shared, &session, &queue).await?;
    info!(queue, "consuming");
    loop {
        let Some(delivery) = session
            .next_delivery(&mut consumer, &queue, &shared.shutdown)
            .await
        else {
            break;
        };
        // The permit is taken after the delivery, not before: a consumer waiting for its next
        // command must not hold a permit another task's commands could use. A delivery dropped
        // here unacknowledged goes back to the queue when its channel closes.
        let permit = session
            .until_stopped(&shared.shutdown, shared.permits.clone().acquire_owned())
            .await;
        let Ok(Ok(permit)) = permit else {
            break;
        };
        let job = handle(
            queue.clone(),
            delivery,
            handler.clone(),
            session.clone(),
            replies.clone(),
            shared.shutdown.clone(),
            permit,
        );
        let abandon = shared.abandon.clone();
        shared.in_flight.spawn(async move {
            tokio::select! {
                _ = abandon.cancelled() => {}
                _ = job => {}
            }
        });
    }
    // Shutdown: the broker sends no more; what it sent and was not taken goes back to the queue
    // when the channel closes.
    session.stop_consuming(&channel, &consumer, &queue).await;
    Some((channel, consumer))
}

/// Why a consumer could not be opened.
enum OpenError {
    /// The queue does not exist (yet).
    Missing,
    Broken(AmqpError),
}

impl From<AmqpError> for OpenError {
    fn from(e: AmqpError) -> Self {
        OpenError::Broken(e)
    }
}

/// Opens a channel consuming `queue`, waiting (with backoff) while the queue does not exist: the
/// orchestrator declares it when a definition naming the task is registered, and the worker
/// never declares it itself. `None` on shutdown or when the session is lost.
async fn open(shared: &Shared, session: &Session, queue: &str) -> Option<(Channel, Consumer)> {
    let mut delay = BACKOFF_MIN;
    let mut waited = false;
    loop {
        match try_open(session.connection(), queue, shared.config.prefetch).await {
            Ok(opened) => {
                if waited {
                    info!(queue, "the task queue exists now");
                }
                return Some(opened);
            }
            Err(OpenError::Missing) if !waited => {
                warn!(
                    queue,
                    "the task queue does not exist: the orchestrator declares it once a definition naming the task is registered; waiting for it"
                );
                waited = true;
            }
            Err(OpenError::Missing) => {
                debug!(queue, retry_in = ?delay, "the task queue does not exist yet")
            }
            Err(OpenError::Broken(e)) => {
                if e.is_refusal() {
                    // Refused for another reason than absence (permissions, say): someone must act.
                    error!(queue, error = %e, "cannot consume the task queue");
                }
                session.lose(e.to_string());
                return None;
            }
        }
        session.sleep(delay, &shared.shutdown).await.ok()?;
        delay = next_backoff(delay);
    }
}

async fn try_open(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), OpenError> {
    let ch = timed("opening a channel", conn.create_channel()).await?;
    // Passive: checks that the queue exists, never creates it. A missing queue closes the
    // channel (404), which is why each look uses a new one.
    let declared = timed(
        format!("checking that {queue} exists"),
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match declared {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Err(OpenError::Missing),
        Err(e) => return Err(e.into()),
    }
    let consumer = consume(&ch, queue, prefetch).await?;
    Ok((ch, consumer))
}

/// One command, from delivery to acknowledgement.
async fn handle(
    queue: String,
    delivery: Delivery,
    handler: Handler,
    session: Arc<Session>,
    replies: Channel,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let command: Command = match serde_json::from_slice(&delivery.data) {
        Ok(command) => command,
        Err(e) => {
            error!(
                queue,
                error = %e,
                body = %clip(&String::from_utf8_lossy(&delivery.data), 2048),
                "rejecting a message that is not a command (not JSON, or a field missing or of the wrong type): it can never be answered"
            );
            session
                .settle(
                    "rejecting a message",
                    delivery.acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await;
            return;
        }
    };
    let span = info_span!(
        "command",
        otel.name = format!("handle {}", command.task),
        otel.kind = "consumer",
        saga.id = %command.saga_id,
        saga.step = %command.step,
        command.id = %command.command_id,
        attempt = command.attempt,
        task = %command.task,
        kind = command.kind.as_str(),
    );
    trace::continue_trace(&span, delivery.properties.headers().as_ref());
    let headers = trace::reply_headers(&span);
    async move {
        let reply_to = delivery
            .properties
            .reply_to()
            .clone()
            .filter(|r| !r.as_str().is_empty())
            .unwrap_or_else(|| ShortString::from(REPLIES_QUEUE));
        debug!(redelivered = delivery.redelivered, "received a command");
        if command.deadline < Utc::now() {
            debug!(deadline = %command.deadline, "the command's deadline has passed: the orchestrator may ignore the reply");
        }
        let command_id = command.command_id;
        let started = Instant::now();
        let body = handler
            .call(Context::delivered(command, delivery.redelivered))
            .await;
        let elapsed_ms = started.elapsed().as_millis();
        match &body {
            ReplyBody::Ok { .. } => info!(elapsed_ms, "the step succeeded"),
            ReplyBody::Error { error } => info!(
                elapsed_ms,
                error.code = %error.code,
                error.retryable = error.retryable,
                error.message = %error.message,
                "the step failed"
            ),
        }
        let reply = Reply {
            command_id,
            body,
        };
        match reply::publish(&replies, &reply_to, &reply, headers, &session, &shutdown).await {
            Ok(()) => {
                session
                    .settle(
                        "acknowledging a command",
                        delivery.acker.ack(BasicAckOptions::default()),
                    )
                    .await;
            }
            Err(reply::Stopped) => debug!(
                "stopping before the reply was confirmed: the command is left to the broker, which redelivers it"
            ),
        }
    }
    .instrument(span)
    .await
}
