//! The transactional outbox: messages written in the transition's transaction, published by the
//! relay under confirms, deleted once the broker confirmed them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StoreError;

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
    /// Its saga's trace context (a W3C `traceparent`), when the saga was started with tracing on.
    pub trace_context: Option<String>,
}

/// Takes up to `limit` messages, oldest first, locked until the transaction ends (other relays
/// skip them), with the database's clock read after they were taken — so after every one of them
/// was committed, and an attempt's deadline never precedes its dispatch. (The clock is read in
/// the outer query, once the rows the statement's snapshot shows were locked.) Each row comes with
/// its saga's trace context, read there too (a primary-key lookup per row; a join let the planner
/// scan every saga), locking nothing of `sagas`. None: nothing to
/// take.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Option<(Vec<OutboxMessage>, DateTime<Utc>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT claimed.*,
                (SELECT trace_context FROM sagas WHERE sagas.id = claimed.saga_id),
                clock_timestamp() AS db_now
         FROM (
             SELECT id, saga_id, exchange, routing_key, message_id, message_type, reply_to, body,
                    attempt_timeout_ms, command_id
             FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
         ) AS claimed
         ORDER BY claimed.id",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let Some(now) = rows.last().map(|r| r.try_get("db_now")).transpose()? else {
        return Ok(None);
    };
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
                trace_context: r.try_get("trace_context")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Some((messages, now)))
}

/// The broker confirmed these: delete them, and arm the attempt timers of the commands among
/// them (an attempt's clock starts at publish), in one statement. A reply may have been applied
/// before this commit; its saga then no longer waits for the command and the timer, when it
/// fires, is ignored as stale.
pub async fn published(
    conn: &mut PgConnection,
    ids: &[i64],
    attempt_timers: &[(Uuid, String, DateTime<Utc>)],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    // Timer rows in the order of their sagas' ids, the order in which transitions lock sagas.
    let mut timers = attempt_timers.to_vec();
    timers.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut sagas = Vec::with_capacity(timers.len());
    let mut keys = Vec::with_capacity(timers.len());
    let mut ats = Vec::with_capacity(timers.len());
    for (saga, key, at) in timers {
        sagas.push(saga);
        keys.push(key);
        ats.push(at);
    }
    sqlx::query(
        "WITH deleted AS (DELETE FROM outbox WHERE id = ANY($1))
         INSERT INTO timers (saga_id, key, fire_at)
         SELECT * FROM UNNEST($2::uuid[], $3::text[], $4::timestamptz[])
         ON CONFLICT (saga_id, key) DO UPDATE SET fire_at = EXCLUDED.fire_at",
    )
    .bind(ids)
    .bind(sagas)
    .bind(keys)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
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
