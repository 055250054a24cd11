//! The outbox relay: publishes committed outbox rows under publisher confirms and deletes them
//! once the broker confirmed them as routed.
//!
//! One batch is one Postgres transaction: claim up to [`BATCH`] rows (`FOR UPDATE SKIP LOCKED`,
//! so several processes share the outbox), publish them all, then await their confirms
//! (pipelined), delete the confirmed rows and arm the attempt timers of the commands among them
//! (an attempt's clock starts at publish: `deadline` is set in the command's body here, from the
//! database's clock, and the timer fires at that same instant), commit.
//!
//! - Commands are published `mandatory`. The broker *acks* a mandatory message that reached no
//!   queue and hands it back with the confirm: such a row stays in the outbox, and its task queue
//!   is declared again (someone deleted it), so the next batch routes it.
//! - Lifecycle events are not mandatory: `saga.lifecycle` is a topic exchange for whoever wants to
//!   listen, and an event nobody subscribed to is dropped by design, not kept forever.
//! - A nack or a confirm that does not come in time keeps the row; it is published again later.
//! - A command is published under its `dispatch <task>` span (`crate::trace`), a child of its
//!   saga's trace, whose W3C context goes in the `traceparent` header; a lifecycle event carries
//!   the saga's own. No header when tracing is off.
//! - A channel that breaks mid-batch rolls the transaction back (the rows stay, and are published
//!   again with the same `message_id`: workers deduplicate) and ends the session.
//!
//! Between batches the relay sleeps until the engine commits outbox rows (in-process) or a second
//! passes: rows that another process committed are its own relay's to publish, and this one's
//! poll only picks up what a process that died or lost the broker left behind. (A `NOTIFY` per
//! transition used to wake every process's relay; it serialised commits for a hint nobody
//! needed.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use saga_amqp::trace::{from_traceparent, inject_headers};
use saga_amqp::{AmqpError, BACKOFF_MIN, CONFIRM_TIMEOUT, confirmed_by, next_backoff, timed};
use saga_wire::COMMANDS_EXCHANGE;
use serde_json::Value;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info_span, warn};
use uuid::Uuid;

use super::session::Session;
use super::{BusError, topology};
use crate::engine::{Engine, timer_key};
use crate::machine::Timer;
use crate::store::{self, StoreError, outbox::OutboxMessage};
use crate::trace;

/// Rows per batch (one transaction, one round of confirms).
pub(super) const BATCH: i64 = 256;
/// The longest sleep between looks at the outbox.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub(super) enum RelayError {
    /// The channel broke: the session is lost.
    #[error(transparent)]
    Broker(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AmqpError> for RelayError {
    fn from(e: AmqpError) -> Self {
        RelayError::Broker(e.into())
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Batch {
    pub(super) claimed: usize,
    pub(super) published: usize,
    /// Left in the outbox: unroutable, nacked, unconfirmed in time, or unpublishable.
    pub(super) kept: usize,
}

/// Relays until shutdown (after finishing the batch in hand) or until the session is lost.
pub(super) async fn run(
    engine: Engine,
    session: Arc<Session>,
    channel: Channel,
    shutdown: CancellationToken,
) {
    let lost = session.lost().clone();
    let mut delay = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() || lost.is_cancelled() {
            return;
        }
        let wait = match relay_batch(&engine, session.connection(), &channel).await {
            Ok(batch) => {
                delay = BACKOFF_MIN;
                // A full batch that went out: more may wait. Otherwise sleep; rows committed in
                // the meantime left a wake-up permit.
                if batch.claimed as i64 >= BATCH && batch.kept == 0 {
                    continue;
                }
                POLL
            }
            Err(RelayError::Broker(e)) => {
                session.lose(format!("the outbox relay: {e}"));
                return;
            }
            Err(RelayError::Store(e)) => {
                warn!(error = %e, retry_in = ?delay, "the outbox relay cannot use the database");
                let wait = delay;
                delay = next_backoff(delay);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lost.cancelled() => return,
            _ = engine.outbox_wake().notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A message on its way: its row, its confirm, and the attempt timer it arms once confirmed.
struct InFlight {
    row: OutboxMessage,
    confirm: PublisherConfirm,
    timer: Option<(Uuid, String, DateTime<Utc>)>,
}

/// Publishes one batch; see the module doc.
pub(super) async fn relay_batch(
    engine: &Engine,
    conn: &Connection,
    channel: &Channel,
) -> Result<Batch, RelayError> {
    let mut tx = engine.pool().begin().await.map_err(StoreError::from)?;
    let Some((rows, now)) = store::outbox::claim(&mut tx, BATCH).await? else {
        return Ok(Batch::default());
    };
    let span = info_span!("outbox batch", batch.size = rows.len());
    publish_claimed(engine, conn, channel, tx, rows, now)
        .instrument(span)
        .await
}

async fn publish_claimed(
    engine: &Engine,
    conn: &Connection,
    channel: &Channel,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<OutboxMessage>,
    now: DateTime<Utc>,
) -> Result<Batch, RelayError> {
    let mut batch = Batch {
        claimed: rows.len(),
        ..Batch::default()
    };
    let mut in_flight = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(message) = prepare(&row, now) else {
            batch.kept += 1;
            continue;
        };
        let publish = timed(
            format!("publishing to {}", message.exchange),
            channel.basic_publish(
                message.exchange,
                message.routing_key,
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.payload,
                message.properties,
            ),
        );
        let confirm = match message.span {
            Some(span) => publish.instrument(span).await?,
            None => publish.await?,
        };
        in_flight.push(InFlight {
            row,
            confirm,
            timer: message.timer,
        });
    }

    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let mut published = Vec::new();
    let mut timers = Vec::new();
    let mut unroutable = BTreeSet::new();
    for InFlight {
        row,
        confirm,
        timer,
    } in in_flight
    {
        let m = &row.message;
        let confirmation = match confirmed_by(deadline, "confirming a publish", confirm).await {
            Ok(c) => c,
            Err(AmqpError::Timeout(_)) => {
                warn!(outbox.id = row.id, saga.id = %m.saga_id, "no publisher confirm in time: kept in the outbox");
                batch.kept += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match confirmation {
            Confirmation::Ack(None) => {
                debug!(outbox.id = row.id, saga.id = %m.saga_id, message.id = %m.message_id, exchange = m.exchange, routing_key = m.routing_key, "published");
                published.push(row.id);
                timers.extend(timer);
            }
            Confirmation::Ack(Some(returned)) => {
                warn!(
                    outbox.id = row.id,
                    saga.id = %m.saga_id,
                    command.id = %m.message_id,
                    exchange = m.exchange,
                    routing_key = m.routing_key,
                    reply_code = returned.reply_code,
                    reply_text = %returned.reply_text,
                    "unroutable: no queue is bound for this routing key; kept in the outbox, declaring its queue again"
                );
                batch.kept += 1;
                if m.exchange == COMMANDS_EXCHANGE {
                    unroutable.insert(m.routing_key.clone());
                }
            }
            Confirmation::Nack(_) => {
                warn!(outbox.id = row.id, saga.id = %m.saga_id, "the broker nacked a publish: kept in the outbox");
                batch.kept += 1;
            }
            Confirmation::NotRequested => {
                return Err(BusError::Unconfirmed(
                    "publisher confirms are off on the relay's channel".into(),
                )
                .into());
            }
        }
    }
    batch.published = published.len();
    store::outbox::published(&mut tx, &published, &timers).await?;
    tx.commit().await.map_err(StoreError::from)?;
    if let Some(earliest) = timers.iter().map(|(_, _, at)| *at).min() {
        engine.timers_wake().armed(earliest);
    }
    if !unroutable.is_empty() {
        let names: Vec<String> = unroutable.into_iter().collect();
        if let Err(e) = topology::declare_task_queues(conn, &names).await {
            // The rows stay either way; a broken connection is noticed by the session.
            warn!(error = %e, "cannot declare the queues of unroutable commands again");
        }
    }
    Ok(batch)
}

/// An outbox row, ready to publish.
struct Prepared {
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    payload: Vec<u8>,
    properties: BasicProperties,
    timer: Option<(Uuid, String, DateTime<Utc>)>,
    /// A command's dispatch span (`crate::trace`), which its headers name as the parent.
    span: Option<Span>,
}

/// Builds the message of a row, with `now` the database's clock at claim time. None (logged) when
/// the row cannot be published at all: it stays in the outbox for someone to look at.
fn prepare(row: &OutboxMessage, now: DateTime<Utc>) -> Option<Prepared> {
    let m = &row.message;
    let short = |what: &str, s: &str| {
        ShortString::try_new(s)
            .map_err(|_| warn!(outbox.id = row.id, saga.id = %m.saga_id, "cannot publish: its {what} is longer than 255 bytes"))
            .ok()
    };
    let mut body = m.body.clone();
    let mut timer = None;
    if let Some(timeout) = m.attempt_timeout {
        let Some(deadline) = chrono::Duration::from_std(timeout)
            .ok()
            .and_then(|t| now.checked_add_signed(t))
            .map(|d| d.trunc_subsecs(3))
        else {
            warn!(outbox.id = row.id, saga.id = %m.saga_id, ?timeout, "cannot publish: the attempt's deadline overflows");
            return None;
        };
        if let Value::Object(fields) = &mut body {
            fields.insert(
                "deadline".into(),
                Value::String(deadline.to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
        }
        let command_id = m.command_id.unwrap_or(m.message_id);
        timer = Some((
            m.saga_id,
            timer_key(&Timer::Attempt { command_id }),
            deadline,
        ));
    }
    let payload = match serde_json::to_vec(&body) {
        Ok(p) => p,
        Err(e) => {
            warn!(outbox.id = row.id, saga.id = %m.saga_id, error = %e, "cannot publish: the body does not serialise");
            return None;
        }
    };
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(m.message_id.to_string().into())
        .with_correlation_id(m.saga_id.to_string().into())
        .with_type(short("type", &m.message_type)?)
        .with_timestamp(u64::try_from(now.timestamp()).unwrap_or_default());
    if let Some(reply_to) = &m.reply_to {
        properties = properties.with_reply_to(short("reply_to", reply_to)?);
    }
    let mut headers = FieldTable::default();
    let span = trace_headers(row, &body, &mut headers);
    // No header at all without a trace: with tracing off the messages stay as they were.
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    Some(Prepared {
        exchange: short("exchange", &m.exchange)?,
        routing_key: short("routing key", &m.routing_key)?,
        mandatory: m.exchange == COMMANDS_EXCHANGE,
        payload,
        properties,
        timer,
        span,
    })
}

/// A command is published under its dispatch span, whose context goes into `headers`; a
/// lifecycle event carries its saga's stored context as it is.
fn trace_headers(row: &OutboxMessage, body: &Value, headers: &mut FieldTable) -> Option<Span> {
    let m = &row.message;
    let saga_trace = row.trace_context.as_deref();
    let Some(command_id) = m.command_id.filter(|_| m.exchange == COMMANDS_EXCHANGE) else {
        if let Some(stored) = saga_trace {
            inject_headers(&from_traceparent(stored), headers);
        }
        return None;
    };
    let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default();
    let dispatch = trace::Dispatch {
        saga_id: m.saga_id,
        command_id,
        task: &m.routing_key,
        step: text("step"),
        kind: text("kind"),
        attempt: body
            .get("attempt")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
    };
    Some(trace::dispatch_span(dispatch, saga_trace, headers))
}
