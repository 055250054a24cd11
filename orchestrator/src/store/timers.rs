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

/// Arms (or re-arms) timers: `(saga, key, fire_at)`.
pub async fn schedule(
    conn: &mut PgConnection,
    timers: &[(Uuid, String, DateTime<Utc>)],
) -> Result<(), StoreError> {
    if timers.is_empty() {
        return Ok(());
    }
    // Rows are locked in the order of their sagas' ids, the order in which a batch of replies
    // locks sagas and their timers: two transactions never wait on each other in a cycle.
    let mut timers = timers.to_vec();
    timers.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let (sagas, rest): (Vec<Uuid>, Vec<(String, DateTime<Utc>)>) = timers
        .iter()
        .map(|(s, k, at)| (*s, (k.clone(), *at)))
        .unzip();
    let (keys, ats): (Vec<String>, Vec<DateTime<Utc>>) = rest.into_iter().unzip();
    sqlx::query(
        "INSERT INTO timers (saga_id, key, fire_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[])
         ON CONFLICT (saga_id, key) DO UPDATE SET fire_at = EXCLUDED.fire_at",
    )
    .bind(sagas)
    .bind(keys)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn cancel(
    conn: &mut PgConnection,
    saga: Uuid,
    keys: &[String],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM timers WHERE saga_id = $1 AND key = ANY($2)")
        .bind(saga)
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn cancel_all(conn: &mut PgConnection, saga: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM timers WHERE saga_id = $1")
        .bind(saga)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes up to `limit` due timers (by the database's clock) and deletes them: they are gone if and
/// only if the transaction that handles them commits. Their sagas' rows are locked too, skipping
/// sagas another transaction holds, so that a timer batch never waits on (or deadlocks with) a
/// transition in flight: those timers are taken by the next scan.
pub async fn take_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<DueTimer>, StoreError> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT t.saga_id, t.key FROM timers t JOIN sagas s ON s.id = t.saga_id
             WHERE t.fire_at <= clock_timestamp()
             ORDER BY t.fire_at LIMIT $1
             FOR NO KEY UPDATE OF t, s SKIP LOCKED)
         DELETE FROM timers t USING due WHERE t.saga_id = due.saga_id AND t.key = due.key
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

/// How long until the next timer is due, by the database's clock (None: no timer at all).
pub async fn next_due_in(
    conn: &mut PgConnection,
) -> Result<Option<std::time::Duration>, StoreError> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT GREATEST(EXTRACT(EPOCH FROM (MIN(fire_at) - now())), 0)::float8 FROM timers",
    )
    .fetch_one(conn)
    .await?;
    Ok(secs.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
}
