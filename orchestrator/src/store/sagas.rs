//! The `sagas` table (one row per saga, the machine's state) and the `commands` index.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::StoreError;
use crate::machine::{Saga, SagaState};

const COLUMNS: &str = "id, definition, version, state, revision, input, output, failure, steps,
    early_signals, created_at, updated_at, deadline, wait_until, history_seq";

fn decode(row: &PgRow) -> Result<Saga, StoreError> {
    let state: String = row.try_get("state")?;
    let json = |col: &str| -> Result<Value, StoreError> { Ok(row.try_get::<Value, _>(col)?) };
    let corrupt =
        |col: &str, e: serde_json::Error| StoreError::Corrupt(format!("sagas.{col}: {e}"));
    Ok(Saga {
        id: row.try_get("id")?,
        definition: row.try_get("definition")?,
        version: row.try_get("version")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("saga state {state}")))?,
        revision: row.try_get("revision")?,
        input: json("input")?,
        output: row.try_get("output")?,
        failure: row
            .try_get::<Option<Value>, _>("failure")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt("failure", e))?,
        steps: serde_json::from_value(json("steps")?).map_err(|e| corrupt("steps", e))?,
        early_signals: serde_json::from_value(json("early_signals")?)
            .map_err(|e| corrupt("early_signals", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deadline: row.try_get("deadline")?,
        wait_until: row.try_get("wait_until")?,
        history_seq: row.try_get("history_seq")?,
    })
}

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The start request a saga was made by, with its idempotency key.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// The request body as parsed JSON; a replay must be equal to it.
    pub request: Value,
}

/// Sagas locked by a transaction, with the database's clock read once they were.
#[derive(Debug)]
pub struct Locked {
    pub sagas: HashMap<Uuid, Saga>,
    pub now: DateTime<Utc>,
}

/// Loads these sagas and locks their rows until the transaction ends, in the order of their ids
/// (every transaction that locks several sagas does so in this order: none waits on another in a
/// cycle). `FOR NO KEY UPDATE`, not `FOR UPDATE`: a saga's id never changes, and the weaker lock
/// lets other transactions insert rows that reference the saga (the relay arming attempt timers)
/// without waiting for it — with `FOR UPDATE` those foreign-key checks deadlocked against
/// batches of replies. Sagas that do not exist are left out.
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Locked, StoreError> {
    let (_, locked) = lock_where(conn, "id", "sagas WHERE id = ANY($1)", ids).await?;
    Ok(locked)
}

/// Locks the sagas of these commands as [`lock`] does; with the saga of each known command.
pub async fn lock_by_commands(
    conn: &mut PgConnection,
    commands: &[Uuid],
) -> Result<(HashMap<Uuid, Uuid>, Locked), StoreError> {
    lock_where(
        conn,
        "command_id",
        // The sagas by primary key, whatever the planner thinks of the batch's size (joined
        // plainly, it hashed the commands and scanned every saga).
        "sagas JOIN commands ON commands.saga_id = sagas.id AND command_id = ANY($1)
         WHERE sagas.id = ANY(ARRAY(SELECT saga_id FROM commands WHERE command_id = ANY($1)))",
        commands,
    )
    .await
}

/// Locks the sagas of the rows `from` selects (`$1`: the `key`s asked for); with each key's
/// saga. The clock is read in the outer query, after each row was locked (possibly after
/// waiting for it).
async fn lock_where(
    conn: &mut PgConnection,
    key: &str,
    from: &str,
    ids: &[Uuid],
) -> Result<(HashMap<Uuid, Uuid>, Locked), StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT locked.*, clock_timestamp() AS db_now FROM (
             SELECT {key} AS lock_key, {COLUMNS} FROM {from} ORDER BY id FOR NO KEY UPDATE OF sagas
         ) AS locked"
    ));
    let rows = sqlx::query(sql).bind(ids).fetch_all(&mut *conn).await?;
    let now = match rows.last() {
        Some(r) => r.try_get("db_now")?,
        None => db_now(conn).await?,
    };
    let mut owners = HashMap::with_capacity(rows.len());
    let mut sagas = HashMap::with_capacity(rows.len());
    for row in &rows {
        let saga = decode(row)?;
        owners.insert(row.try_get("lock_key")?, saga.id);
        sagas.insert(saga.id, saga);
    }
    Ok((owners, Locked { sagas, now }))
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Saga>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM sagas WHERE id = $1"));
    let row = sqlx::query(sql).bind(id).fetch_optional(conn).await?;
    row.as_ref().map(decode).transpose()
}

/// The saga started with this idempotency key, with the request it was started by.
pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<(Saga, Value)>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, request_digest FROM sagas WHERE idempotency_key = $1"
    ));
    let row = sqlx::query(sql).bind(key).fetch_optional(conn).await?;
    row.map(|r| Ok((decode(&r)?, r.try_get("request_digest")?)))
        .transpose()
}

/// Holds off a concurrent start with the same key until this transaction ends; false if another
/// transaction holds it now (that request is still being processed).
pub async fn try_lock_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended('start:' || $1, 0))")
            .bind(key)
            .fetch_one(conn)
            .await?,
    )
}

/// Filters of `GET /v1/sagas`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<SagaState>,
    pub definition: Option<String>,
    pub stuck: Option<bool>,
    pub updated_before: Option<DateTime<Utc>>,
    /// Keyset: items strictly older than this `(created_at, id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Sagas matching `filter`, newest first, with the database's clock.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter,
    stuck_after: std::time::Duration,
) -> Result<(Vec<Saga>, DateTime<Utc>), StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {COLUMNS}, clock_timestamp() AS db_now FROM sagas WHERE true"
    ));
    push_conditions(&mut q, filter, stuck_after);
    if let Some((created_at, id)) = filter.after {
        q.push(" AND (created_at, id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(filter.limit);
    let rows = q.build().fetch_all(&mut *conn).await?;
    let now = match rows.first() {
        Some(r) => r.try_get("db_now")?,
        None => db_now(conn).await?,
    };
    Ok((rows.iter().map(decode).collect::<Result<_, _>>()?, now))
}

/// How many sagas match `filter` (its keyset and limit aside), counting at most `cap`.
pub async fn count(
    conn: &mut PgConnection,
    filter: &ListFilter,
    stuck_after: std::time::Duration,
    cap: i64,
) -> Result<i64, StoreError> {
    let mut q =
        QueryBuilder::<Postgres>::new("SELECT count(*) FROM (SELECT 1 FROM sagas WHERE true");
    push_conditions(&mut q, filter, stuck_after);
    q.push(" LIMIT ").push_bind(cap).push(") AS matching");
    Ok(q.build_query_scalar().fetch_one(conn).await?)
}

/// The states whose sagas `sagas_live_created` indexes (a partial index).
const LIVE: [SagaState; 3] = [
    SagaState::Running,
    SagaState::Compensating,
    SagaState::Suspended,
];

/// The filters that were given, and only those: each combination gets a plan of its own. Shapes
/// and plans on a million sagas: docs/operations.md. Live states are written as literals so that
/// even a generic plan sees it may use the partial index of live sagas.
fn push_conditions(
    q: &mut QueryBuilder<Postgres>,
    filter: &ListFilter,
    stuck_after: std::time::Duration,
) {
    if !filter.states.is_empty() {
        if filter.states.iter().all(|s| LIVE.contains(s)) {
            let literals: Vec<String> = LIVE
                .iter()
                .filter(|s| filter.states.contains(s))
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            q.push(format!(" AND state IN ({})", literals.join(", ")));
        } else {
            let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
            q.push(" AND state = ANY(").push_bind(states).push(")");
        }
    }
    if let Some(definition) = &filter.definition {
        q.push(" AND definition = ").push_bind(definition.clone());
    }
    if let Some(before) = filter.updated_before {
        // `updated_at >= created_at` always (both from the database's clock): the second half
        // turns the filter into a bound on the `created_at` index.
        q.push(" AND updated_at < ")
            .push_bind(before)
            .push(" AND created_at < ")
            .push_bind(before);
    }
    if let Some(stuck) = filter.stuck {
        // Stuck: suspended, or waiting (running, compensating) past its wait by the threshold.
        let overdue_before = "clock_timestamp() - make_interval(secs => ";
        if stuck {
            q.push(" AND state IN ('running', 'compensating', 'suspended') AND (state = 'suspended' OR wait_until < ")
                .push(overdue_before)
                .push_bind(stuck_after.as_secs_f64())
                .push("))");
        } else {
            q.push(" AND (state NOT IN ('running', 'compensating', 'suspended') OR (state <> 'suspended' AND (wait_until IS NULL OR wait_until >= ")
                .push(overdue_before)
                .push_bind(stuck_after.as_secs_f64())
                .push("))))");
        }
    }
}

pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, StoreError> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn conditions(filter: ListFilter) -> String {
        let mut q = QueryBuilder::<Postgres>::new("WHERE true");
        push_conditions(&mut q, &filter, Duration::from_secs(300));
        q.into_string()
    }

    #[test]
    fn only_the_filters_given_are_in_the_query() {
        assert_eq!(conditions(ListFilter::default()), "WHERE true");
        assert_eq!(
            conditions(ListFilter {
                definition: Some("order".into()),
                ..ListFilter::default()
            }),
            "WHERE true AND definition = $1"
        );
    }

    #[test]
    fn live_states_are_literals_so_a_generic_plan_can_use_the_partial_index() {
        let live = conditions(ListFilter {
            states: vec![SagaState::Suspended, SagaState::Running],
            ..ListFilter::default()
        });
        assert_eq!(live, "WHERE true AND state IN ('running', 'suspended')");
        let mixed = conditions(ListFilter {
            states: vec![SagaState::Running, SagaState::Completed],
            ..ListFilter::default()
        });
        assert_eq!(mixed, "WHERE true AND state = ANY($1)");
    }

    #[test]
    fn updated_before_also_bounds_created_at_and_stuck_names_the_live_states() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let q = conditions(ListFilter {
            updated_before: Some(at),
            stuck: Some(true),
            ..ListFilter::default()
        });
        assert!(
            q.starts_with("WHERE true AND updated_at < $1 AND created_at < $2 AND state IN ('running', 'compensating', 'suspended') AND (state = 'suspended' OR wait_until < "),
            "{q}"
        );
        let not_stuck = conditions(ListFilter {
            stuck: Some(false),
            ..ListFilter::default()
        });
        assert!(
            not_stuck.contains("wait_until IS NULL OR wait_until >= "),
            "a running saga without a timed wait is not stuck: {not_stuck}"
        );
    }
}
