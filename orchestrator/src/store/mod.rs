//! PostgreSQL: every SQL statement of the orchestrator lives here, one file per table.
//!
//! Functions take a connection (usually a transaction's) so that the engine can put a whole
//! transition — saga, history, commands, outbox, timers — into one commit; `writes` gathers what
//! a batch of transitions writes into one statement. Nothing here decides anything; it stores
//! what the machine decided.

pub mod definitions;
pub mod history;
pub mod outbox;
pub mod sagas;
pub mod timers;
pub mod writes;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data does not decode: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again later may succeed: the database is unreachable or restarting, or the
    /// transaction lost a deadlock or a serialization conflict (SQLSTATE classes 08, 57P, 40).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::WorkerCrashed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| {
                        c.starts_with("57P") || c.starts_with("08") || c.starts_with("40")
                    })
            }
            StoreError::Migrate(_) | StoreError::Corrupt(_) => false,
        }
    }
}

/// Connects to `url`, creating its database if it is missing, and runs the migrations.
#[tracing::instrument(skip_all, fields(db.name))]
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    tracing::Span::current().record("db.name", name.as_str());
    create_database_if_missing(&options, &name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    Ok(pool)
}

async fn create_database_if_missing(
    options: &PgConnectOptions,
    name: &str,
) -> Result<(), StoreError> {
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!("CREATE DATABASE {quoted}");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(db.name = name, "created the database"),
            // Another process created it at the same moment.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// What `GET /metrics` reads of the database, at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauges {
    /// Sagas in flight, by state (only states that have some).
    pub live: Vec<(String, i64)>,
    pub outbox_messages: i64,
    pub outbox_oldest_age_s: f64,
    pub timers_due: i64,
    pub timer_lag_s: f64,
}

/// One statement; the live sagas are counted off the partial index of live sagas, the outbox
/// and due timers off their own small tables.
pub async fn gauges(conn: &mut sqlx::PgConnection) -> Result<Gauges, StoreError> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT
             (SELECT COALESCE(jsonb_object_agg(state, n), '{}') FROM (
                  SELECT state, count(*) AS n FROM sagas
                  WHERE state IN ('running', 'compensating', 'suspended') GROUP BY state) AS l)
                 AS live,
             (SELECT count(*) FROM outbox) AS outbox_messages,
             (SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - MIN(created_at)), 0)::float8
                  FROM outbox) AS outbox_oldest_age_s,
             (SELECT count(*) FROM timers WHERE fire_at <= clock_timestamp()) AS timers_due,
             (SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - MIN(fire_at)), 0)::float8
                  FROM timers WHERE fire_at <= clock_timestamp()) AS timer_lag_s",
    )
    .fetch_one(conn)
    .await?;
    let live: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(row.try_get("live")?)
            .map_err(|e| StoreError::Corrupt(format!("live saga counts: {e}")))?;
    Ok(Gauges {
        live: live
            .into_iter()
            .map(|(state, n)| (state, n.as_i64().unwrap_or_default()))
            .collect(),
        outbox_messages: row.try_get("outbox_messages")?,
        outbox_oldest_age_s: row.try_get("outbox_oldest_age_s")?,
        timers_due: row.try_get("timers_due")?,
        timer_lag_s: row.try_get("timer_lag_s")?,
    })
}
