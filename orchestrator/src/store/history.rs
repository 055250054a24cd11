//! The `saga_history` table: every entry the machine wrote, oldest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StoreError;
use crate::machine::Entry;

/// A history entry as PROTOCOL.md §2 shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub command_id: Option<Uuid>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub data: Value,
}

pub async fn insert(
    conn: &mut PgConnection,
    saga: Uuid,
    entries: &[Entry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut seqs = Vec::new();
    let mut ats = Vec::new();
    let mut kinds = Vec::new();
    let mut steps = Vec::new();
    let mut attempts = Vec::new();
    let mut commands = Vec::new();
    let mut actors = Vec::new();
    let mut reasons = Vec::new();
    let mut data = Vec::new();
    for e in entries {
        seqs.push(e.seq);
        ats.push(e.at);
        kinds.push(e.kind);
        steps.push(e.step.clone());
        attempts.push(e.attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)));
        commands.push(e.command_id);
        actors.push(e.actor.clone());
        reasons.push(e.reason.clone());
        data.push(e.data.clone());
    }
    sqlx::query(
        "INSERT INTO saga_history (saga_id, seq, at, kind, step, attempt, command_id, actor, reason, data)
         SELECT $1, * FROM UNNEST($2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::int4[],
                                  $7::uuid[], $8::text[], $9::text[], $10::jsonb[])",
    )
    .bind(saga)
    .bind(seqs)
    .bind(ats)
    .bind(kinds)
    .bind(steps)
    .bind(attempts)
    .bind(commands)
    .bind(actors)
    .bind(reasons)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list(conn: &mut PgConnection, saga: Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, step, attempt, command_id, actor, reason, data
         FROM saga_history WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HistoryEntry {
                seq: r.try_get("seq")?,
                at: r.try_get("at")?,
                kind: r.try_get("kind")?,
                step: r.try_get("step")?,
                attempt: r.try_get("attempt")?,
                command_id: r.try_get("command_id")?,
                actor: r.try_get("actor")?,
                reason: r.try_get("reason")?,
                data: r.try_get("data")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
