//! Exactly-once effects on top of at-least-once delivery: a Postgres-backed record of the
//! `idempotency_key`s a worker completed, with the reply each produced, written in the same
//! transaction as the handler's own writes.
//!
//! Commands are delivered at least once: a worker that dies before its acknowledgement gets its
//! command redelivered (to itself or another worker), and the orchestrator retries a step whose
//! reply did not come in time — always with the same `idempotency_key`. [`PgIdempotency::once`]
//! makes that harmless:
//!
//! 1. it opens a transaction and takes a transaction-scoped advisory lock on the key, so two
//!    copies of the same command (a redelivery racing a slow first run, a retry racing a late
//!    one) run one after the other, never side by side;
//! 2. if the key has a recorded reply, it returns that reply, and the handler's function does not
//!    run;
//! 3. otherwise it runs the function with the transaction; an `Ok` output or a non-retryable
//!    error is recorded as the key's reply *in that same transaction*, and committed with the
//!    function's writes — both or neither;
//! 4. a retryable error rolls the transaction back: its writes vanish, nothing is recorded, and
//!    the next attempt starts afresh.
//!
//! A database error of the store itself becomes the retryable error
//! `idempotency_store_unavailable` (the transaction rolled back; the next attempt will tell).
//!
//! The guarantee covers what the function writes through the connection it is given. A side
//! effect elsewhere (an HTTP call to a payment provider) is not rolled back with the transaction:
//! pass `ctx.idempotency_key()` on to that service's own idempotency mechanism.
//!
//! ```no_run
//! use saga_worker::idempotency::PgIdempotency;
//! use saga_worker::{Context, ResultExt, StepError, Worker};
//! use serde::Deserialize;
//! use serde_json::{Value, json};
//! use sqlx::PgConnection;
//!
//! #[derive(Deserialize)]
//! struct Payment { order_id: String, amount_cents: i64 }
//!
//! async fn charge(db: PgIdempotency, ctx: Context, p: Payment) -> Result<Value, StepError> {
//!     db.once(&ctx, async |tx: &mut PgConnection| {
//!         let id: i64 = sqlx::query_scalar(
//!             "INSERT INTO charges (order_id, amount_cents) VALUES ($1, $2) RETURNING id",
//!         )
//!         .bind(&p.order_id)
//!         .bind(p.amount_cents)
//!         .fetch_one(&mut *tx)
//!         .await
//!         .retryable("database")?;
//!         if p.amount_cents > 100_000 {
//!             // Recorded too: a redelivery gets the same refusal.
//!             return Err(StepError::permanent("limit_exceeded", "over the limit"));
//!         }
//!         Ok(json!({ "charge_id": id }))
//!     })
//!     .await
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/payments").await?;
//! let db = PgIdempotency::new(pool).await?;
//! Worker::from_env()
//!     .handle("payment.charge", move |ctx, p| charge(db.clone(), ctx, p))
//!     .build()?
//!     .run_until_signal()
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! A compensation can learn what its `do` did, even when the orchestrator never heard the `do`'s
//! reply: [`PgIdempotency::recorded`] with `ctx.compensates()` returns the `do`'s recorded reply
//! (waiting for a `do` still running under that key to finish first).
//!
//! The table, `saga_worker_idempotency (key text primary key, reply jsonb, created_at
//! timestamptz)`, is created by [`PgIdempotency::new`] when missing, in the connection's default
//! schema. Records are kept until [`PgIdempotency::forget_older_than`] removes them; keep them
//! longer than a saga can take to retry and compensate (operators may retry a suspended
//! compensation days later).

use std::time::Duration;

use saga_wire::{ReplyBody, StepError};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tracing::{debug, warn};

use crate::Context;

/// The advisory-lock namespace (first key of the two-key form, which never conflicts with the
/// one-key form other code may use) of idempotency keys.
const KEY_LOCKS: i32 = 0x5a47_0001;
/// The advisory lock that serialises creating the table.
const DDL_LOCK: i32 = 0x5a47_0002;

const EXISTS: &str = "SELECT to_regclass('saga_worker_idempotency') IS NOT NULL";
const CREATE: &str = "CREATE TABLE IF NOT EXISTS saga_worker_idempotency (
    key text PRIMARY KEY,
    reply jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)";
const LOCK: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
const LOOKUP: &str = "SELECT reply FROM saga_worker_idempotency WHERE key = $1";
const RECORD: &str = "INSERT INTO saga_worker_idempotency (key, reply) VALUES ($1, $2)";
const FORGET: &str =
    "DELETE FROM saga_worker_idempotency WHERE created_at < now() - make_interval(secs => $1)";

/// The Postgres idempotency store; see the module doc. Cheap to clone (it shares the pool).
#[derive(Debug, Clone)]
pub struct PgIdempotency {
    pool: PgPool,
}

impl PgIdempotency {
    /// Uses `pool`, creating the table when it is missing (safe when several workers start at
    /// once: the creation is serialised by an advisory lock).
    pub async fn new(pool: PgPool) -> Result<PgIdempotency, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(DDL_LOCK)
            .execute(&mut *tx)
            .await?;
        // Checked first so that Postgres does not log "already exists, skipping" at every start.
        let exists: bool = sqlx::query_scalar(EXISTS).fetch_one(&mut *tx).await?;
        if !exists {
            sqlx::query(CREATE).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(PgIdempotency { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `f` at most once to completion for the command's idempotency key, and returns the
    /// reply of the run that completed; see the module doc.
    ///
    /// `f` gets the transaction's connection: what it writes there commits with the record, or
    /// not at all. Its output is returned as JSON (it is what the reply carries).
    pub async fn once<O, F>(&self, ctx: &Context, f: F) -> Result<Value, StepError>
    where
        O: Serialize,
        F: AsyncFnOnce(&mut PgConnection) -> Result<O, StepError>,
    {
        let key = ctx.idempotency_key();
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock(&mut tx, key).await.map_err(unavailable)?;
        if let Some(recorded) = lookup(&mut tx, key).await? {
            let _ = tx.rollback().await;
            debug!(
                idempotency_key = key,
                "the key has a recorded reply: returning it without running the step again"
            );
            return into_result(recorded);
        }
        let outcome = f(&mut *tx).await.and_then(|output| {
            serde_json::to_value(output).map_err(|e| {
                StepError::permanent(
                    "invalid_output",
                    format!("the handler's output does not serialise to JSON: {e}"),
                )
            })
        });
        match outcome {
            Ok(output) => {
                let reply = ReplyBody::Ok { output };
                record(&mut tx, key, &reply).await?;
                tx.commit().await.map_err(unavailable)?;
                into_result(reply)
            }
            Err(error) if error.retryable => {
                let _ = tx.rollback().await;
                Err(error)
            }
            Err(error) => {
                let reply = ReplyBody::Error { error };
                // Recording can fail when `f` broke the transaction itself (a failed statement
                // aborts it): then nothing of `f` commits, and its error is still the truth.
                match record(&mut tx, key, &reply).await {
                    Ok(()) => {
                        if let Err(e) = tx.commit().await {
                            warn!(error = %e, "cannot record a step's error reply");
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot record a step's error reply");
                        let _ = tx.rollback().await;
                    }
                }
                into_result(reply)
            }
        }
    }

    /// The reply recorded for `key`, if any — typically `ctx.compensates()`, so that a
    /// compensation learns whether (and with what output) its `do` completed. Waits for a
    /// [`PgIdempotency::once`] running under `key` to finish first. Inside a transaction (the
    /// connection `once` gives), the lock is held until it ends, so the `do` cannot complete
    /// behind the compensation's back.
    pub async fn recorded(
        conn: &mut PgConnection,
        key: &str,
    ) -> Result<Option<ReplyBody>, StepError> {
        lock(conn, key).await.map_err(unavailable)?;
        lookup(conn, key).await
    }

    /// Deletes the records older than `age`; returns how many.
    pub async fn forget_older_than(&self, age: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(FORGET)
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

async fn lock(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(LOCK)
        .bind(KEY_LOCKS)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

async fn lookup(conn: &mut PgConnection, key: &str) -> Result<Option<ReplyBody>, StepError> {
    let reply: Option<Value> = sqlx::query_scalar(LOOKUP)
        .bind(key)
        .fetch_optional(conn)
        .await
        .map_err(unavailable)?;
    reply
        .map(|r| {
            serde_json::from_value(r).map_err(|e| {
                StepError::permanent(
                    "idempotency_record_corrupt",
                    format!("the reply recorded for this idempotency key does not parse: {e}"),
                )
            })
        })
        .transpose()
}

async fn record(conn: &mut PgConnection, key: &str, reply: &ReplyBody) -> Result<(), StepError> {
    let json = serde_json::to_value(reply).map_err(|e| {
        StepError::permanent("invalid_output", format!("cannot serialise the reply: {e}"))
    })?;
    sqlx::query(RECORD)
        .bind(key)
        .bind(json)
        .execute(conn)
        .await
        .map_err(|e| {
            if is_data_exception(&e) {
                // A value Postgres refuses (a NUL character in a string): retrying cannot help,
                // and the step's writes roll back with the record.
                StepError::permanent(
                    "invalid_output",
                    format!("the reply cannot be recorded: {e}"),
                )
            } else {
                unavailable(e)
            }
        })?;
    Ok(())
}

fn into_result(reply: ReplyBody) -> Result<Value, StepError> {
    match reply {
        ReplyBody::Ok { output } => Ok(output),
        ReplyBody::Error { error } => Err(error),
    }
}

/// SQLSTATE class 22: the data itself is refused.
fn is_data_exception(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22"))
}

fn unavailable(e: sqlx::Error) -> StepError {
    warn!(error = %e, "the idempotency store is unavailable");
    StepError::retryable(
        "idempotency_store_unavailable",
        format!("the idempotency store is unavailable: {e}"),
    )
}
