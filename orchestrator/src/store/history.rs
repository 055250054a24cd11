//! The `saga_history` table: every entry the machine wrote, oldest first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StoreError;

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
