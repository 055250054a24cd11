//! The `timers` table: durable timers, taken by any process with `FOR NO KEY UPDATE SKIP LOCKED`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StoreError;

/// A timer that is due, locked by the transaction that took it.
#[derive(Debug, Clone)]
pub struct DueTimer {
    pub saga_id: Uuid,
    pub key: String,
}

/// Takes up to `limit` due timers (by the database's clock) and deletes them: they are gone if and
/// only if the transaction that handles them commits. Their sagas' rows are locked too, skipping
/// sagas another transaction holds, so that a timer batch never waits on (or deadlocks with) a
/// transition in flight: those timers are taken by the next scan. The taken rows are deleted by
/// key (`saga_id = ANY(…)`): joined to `due`, the planner hashed the whole table.
pub async fn take_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<DueTimer>, StoreError> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT t.saga_id, t.key FROM timers t JOIN sagas s ON s.id = t.saga_id
             WHERE t.fire_at <= clock_timestamp()
             ORDER BY t.fire_at LIMIT $1
             FOR NO KEY UPDATE OF t, s SKIP LOCKED)
         DELETE FROM timers t WHERE t.saga_id = ANY(ARRAY(SELECT saga_id FROM due))
         AND (t.saga_id, t.key) IN (SELECT saga_id, key FROM due)
         RETURNING t.saga_id, t.key",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DueTimer {
                saga_id: r.try_get("saga_id")?,
                key: r.try_get("key")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The database's clock, and when the next timer is due (None: no timer at all).
pub async fn next_due(
    conn: &mut PgConnection,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), StoreError> {
    Ok(
        sqlx::query_as("SELECT clock_timestamp(), MIN(fire_at) FROM timers")
            .fetch_one(conn)
            .await?,
    )
}
