//! One task queue: wait for it to exist, consume it with manual acks, run a handler per command
//! within the worker's concurrency, reply, then acknowledge.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, ErrorKind};
use saga_wire::{Command, REPLIES_QUEUE, Reply, ReplyBody, task_queue};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::session::Session;
use super::{BACKOFF_MIN, BrokerError, Shared, clip, next_backoff, reply, timed};
use crate::Context;
use crate::handler::Handler;

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
    let lost = session.lost().clone();
    loop {
        let next = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            _ = lost.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                session.lose(format!("the consumer of {queue} failed: {e}"));
                break;
            }
            None => {
                session.lose(format!("the broker cancelled the consumer of {queue}"));
                break;
            }
        };
        // The permit is taken after the delivery, not before: a consumer waiting for its next
        // command must not hold a permit another task's commands could use. A delivery dropped
        // here unacknowledged goes back to the queue when its channel closes.
        let permit = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            _ = lost.cancelled() => break,
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
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
    if !lost.is_cancelled() {
        // Shutdown: the broker sends no more; what it sent and was not taken goes back to the
        // queue when the channel closes.
        if let Err(e) = timed(
            format!("cancelling the consumer of {queue}"),
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await
        {
            debug!(error = %e, "cancelling a consumer");
        }
    }
    Some((channel, consumer))
}

/// Why a consumer could not be opened.
enum OpenError {
    /// The queue does not exist (yet).
    Missing,
    Broken(BrokerError),
}

impl From<BrokerError> for OpenError {
    fn from(e: BrokerError) -> Self {
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
        match try_open(&session.conn, queue, shared.config.prefetch).await {
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
                if let BrokerError::Amqp { source, .. } = &e
                    && source.is_amqp_soft_error()
                {
                    // Refused for another reason than absence (permissions, say): someone must act.
                    error!(queue, error = %e, "cannot consume the task queue");
                }
                session.lose(e.to_string());
                return None;
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = session.lost().cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
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
        Err(BrokerError::Amqp { source, .. }) if is_not_found(&source) => {
            return Err(OpenError::Missing);
        }
        Err(e) => return Err(e.into()),
    }
    timed(
        format!("setting the prefetch of {queue}"),
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = timed(
        format!("consuming {queue}"),
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((ch, consumer))
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
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
            settle(
                "rejecting a message",
                &session,
                delivery.acker.reject(BasicRejectOptions { requeue: false }),
            )
            .await;
            return;
        }
    };
    let span = info_span!(
        "command",
        saga.id = %command.saga_id,
        saga.step = %command.step,
        command.id = %command.command_id,
        attempt = command.attempt,
        task = %command.task,
        kind = command.kind.as_str(),
    );
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
        match reply::publish(&replies, &reply_to, &reply, &session, &shutdown).await {
            Ok(()) => {
                settle(
                    "acknowledging a command",
                    &session,
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

/// Acks or rejects a delivery.
async fn settle(
    what: &str,
    session: &Session,
    op: impl Future<Output = Result<bool, lapin::Error>>,
) {
    match timed(what, op).await {
        Ok(true) => debug!("{what}: done"),
        // The channel closed under it: the broker redelivers the command.
        Ok(false) => debug!("{what}: no longer possible (its channel closed)"),
        Err(e) => session.lose(e.to_string()),
    }
}
