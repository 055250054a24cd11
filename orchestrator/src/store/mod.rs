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
