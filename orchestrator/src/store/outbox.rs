//! The transactional outbox: messages written in the transition's transaction, published by the
//! relay under confirms, deleted once the broker confirmed them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StoreError;

/// The channel other processes' relays LISTEN on; a payload-less hint, never relied upon.
pub const NOTIFY_CHANNEL: &str = "saga_outbox";

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub saga_id: Uuid,
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Uuid,
    pub message_type: String,
    pub reply_to: Option<String>,
    pub body: Value,
    /// For a command: the attempt's timeout (the relay sets `deadline` and arms the timer).
    pub attempt_timeout: Option<Duration>,
    pub command_id: Option<Uuid>,
}

/// A message taken by the relay.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: i64,
    pub message: NewMessage,
}

pub async fn insert(conn: &mut PgConnection, messages: &[NewMessage]) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut sagas = Vec::new();
    let mut exchanges = Vec::new();
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut reply_to = Vec::new();
    let mut bodies = Vec::new();
    let mut timeouts = Vec::new();
    let mut commands = Vec::new();
    for m in messages {
        sagas.push(m.saga_id);
        exchanges.push(m.exchange.clone());
        keys.push(m.routing_key.clone());
        ids.push(m.message_id);
        types.push(m.message_type.clone());
        reply_to.push(m.reply_to.clone());
        bodies.push(m.body.clone());
        timeouts.push(
            m.attempt_timeout
                .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
        );
        commands.push(m.command_id);
    }
    sqlx::query(
        "INSERT INTO outbox (saga_id, exchange, routing_key, message_id, message_type, reply_to,
                             body, attempt_timeout_ms, command_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                              $6::text[], $7::jsonb[], $8::int8[], $9::uuid[])",
    )
    .bind(sagas)
    .bind(exchanges)
    .bind(keys)
    .bind(ids)
    .bind(types)
    .bind(reply_to)
    .bind(bodies)
    .bind(timeouts)
    .bind(commands)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes up to `limit` messages, oldest first, locked until the transaction ends (other relays
/// skip them), with the database's clock read after they were taken — so after every one of them
/// was committed, and an attempt's deadline never precedes its dispatch.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<(Vec<OutboxMessage>, DateTime<Utc>), StoreError> {
    let rows = sqlx::query(
        "SELECT id, saga_id, exchange, routing_key, message_id, message_type, reply_to, body,
                attempt_timeout_ms, command_id
         FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await?;
    let messages = rows
        .iter()
        .map(|r| {
            let timeout: Option<i64> = r.try_get("attempt_timeout_ms")?;
            Ok(OutboxMessage {
                id: r.try_get("id")?,
                message: NewMessage {
                    saga_id: r.try_get("saga_id")?,
                    exchange: r.try_get("exchange")?,
                    routing_key: r.try_get("routing_key")?,
                    message_id: r.try_get("message_id")?,
                    message_type: r.try_get("message_type")?,
                    reply_to: r.try_get("reply_to")?,
                    body: r.try_get("body")?,
                    attempt_timeout: timeout
                        .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
                    command_id: r.try_get("command_id")?,
                },
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok((messages, now))
}

/// The broker confirmed these: delete them. Attempt timers of the commands among them are armed
/// in the same statement's transaction (an attempt's clock starts at publish).
pub async fn published(
    conn: &mut PgConnection,
    ids: &[i64],
    attempt_timers: &[(Uuid, String, DateTime<Utc>)],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    // A reply may have been applied before this commit; its saga then no longer waits for the
    // command and the timer, when it fires, is ignored as stale.
    super::timers::schedule(conn, attempt_timers).await
}

/// Whether the saga has messages that were never published, and since when.
pub async fn oldest_unpublished(
    conn: &mut PgConnection,
    saga: Uuid,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT MIN(created_at) FROM outbox WHERE saga_id = $1")
            .bind(saga)
            .fetch_one(conn)
            .await?,
    )
}
