//! Declares what PROTOCOL.md §3 lists, on every (re)connect and before a definition is answered.
//! Every declare is idempotent; all queues are classic durable queues without arguments (see the
//! module doc of `bus` for why, and what to change on a cluster).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use saga_amqp::timed;
use saga_wire::{
    COMMANDS_EXCHANGE, EVENTS_DLQ, EVENTS_EXCHANGE, EVENTS_INBOX, LIFECYCLE_EXCHANGE, REPLIES_DLQ,
    REPLIES_QUEUE, START_DLQ, START_QUEUE, task_queue,
};

use super::BusError;

/// The queues every orchestrator declares, whatever the definitions.
pub(super) const BASE_QUEUES: [&str; 6] = [
    REPLIES_QUEUE,
    START_QUEUE,
    EVENTS_INBOX,
    REPLIES_DLQ,
    START_DLQ,
    EVENTS_DLQ,
];

/// The exchanges, with their kinds.
pub(super) fn exchanges() -> [(&'static str, ExchangeKind); 3] {
    [
        (COMMANDS_EXCHANGE, ExchangeKind::Direct),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (LIFECYCLE_EXCHANGE, ExchangeKind::Topic),
    ]
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The exchanges, the orchestrator's own queues and DLQs, and `saga.events.inbox`'s binding.
pub(super) async fn declare_base(ch: &Channel) -> Result<(), BusError> {
    for (name, kind) in exchanges() {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        timed(
            format!("declaring the exchange {name}"),
            ch.exchange_declare(name.into(), kind, options, FieldTable::default()),
        )
        .await?;
    }
    for name in BASE_QUEUES {
        timed(
            format!("declaring the queue {name}"),
            ch.queue_declare(name.into(), durable_queue(), FieldTable::default()),
        )
        .await?;
    }
    timed(
        format!("binding {EVENTS_INBOX} to {EVENTS_EXCHANGE}"),
        ch.queue_bind(
            EVENTS_INBOX.into(),
            EVENTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(())
}

/// `saga.task.T`, bound to `saga.commands` with key `T`, for each name, on `ch`.
pub(super) async fn declare_task_queues_on(ch: &Channel, names: &[String]) -> Result<(), BusError> {
    for name in names {
        let queue =
            ShortString::try_new(task_queue(name)).map_err(|_| BusError::Name(name.clone()))?;
        let key = ShortString::try_new(name.as_str()).map_err(|_| BusError::Name(name.clone()))?;
        timed(
            format!("declaring the queue {queue}"),
            ch.queue_declare(queue.clone(), durable_queue(), FieldTable::default()),
        )
        .await?;
        timed(
            format!("binding {queue} to {COMMANDS_EXCHANGE}"),
            ch.queue_bind(
                queue,
                COMMANDS_EXCHANGE.into(),
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(())
}

/// Declares task queues on a channel of their own: a refused declare closes its channel, and
/// callers (the API, the relay) must not take down a channel that something else uses.
pub(super) async fn declare_task_queues(
    conn: &Connection,
    names: &[String],
) -> Result<(), BusError> {
    if names.is_empty() {
        return Ok(());
    }
    let ch = timed("opening a channel", conn.create_channel()).await?;
    let declared = declare_task_queues_on(&ch, names).await;
    if ch.status().connected() {
        // Best effort: the connection ends it anyway.
        let _ = timed("closing a channel", ch.close(200, "OK".into())).await;
    }
    declared
}
