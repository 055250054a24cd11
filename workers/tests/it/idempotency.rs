//! The Postgres idempotency helper: alone against the real Postgres, then under a redelivery
//! through the real broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;
use saga_wire::{Command, CommandKind, ReplyBody, StepError, task_queue};
use saga_worker::idempotency::PgIdempotency;
use saga_worker::{Context, ResultExt};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::Db;
use crate::env::{Env, Gate, Running, eventually, soon};

fn context(key: &str, kind: CommandKind, compensates: Option<&str>) -> Context {
    Context::new(Command {
        command_id: Uuid::now_v7(),
        saga_id: Uuid::now_v7(),
        step: "charge".into(),
        task: "payment.charge".into(),
        kind,
        attempt: 1,
        idempotency_key: key.into(),
        compensates: compensates.map(Into::into),
        deadline: Utc::now(),
        input: json!({}),
        results: json!({}),
    })
}

fn do_ctx(key: &str) -> Context {
    context(key, CommandKind::Do, None)
}

async fn charges_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE charges (id bigserial PRIMARY KEY, order_id text NOT NULL)")
        .execute(pool)
        .await
        .expect("create the charges table");
}

async fn charges(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(pool)
        .await
        .expect("count the charges")
}

/// The side effect: one row in `charges`.
async fn insert_charge(tx: &mut PgConnection, order: &str) -> Result<i64, StepError> {
    sqlx::query_scalar("INSERT INTO charges (order_id) VALUES ($1) RETURNING id")
        .bind(order)
        .fetch_one(&mut *tx)
        .await
        .retryable("database")
}

#[tokio::test]
async fn a_key_runs_once_and_every_later_run_gets_the_same_reply() {
    let db = Db::new().await;
    charges_table(&db.pool).await;
    let store = PgIdempotency::new(db.pool.clone())
        .await
        .expect("the store");
    let runs = AtomicU32::new(0);
    let charge = async |ctx: &Context| {
        store
            .once(ctx, async |tx: &mut PgConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                let id = insert_charge(tx, "o-1").await?;
                Ok(json!({ "charge_id": id }))
            })
            .await
    };

    let first = charge(&do_ctx("saga-1/charge/do")).await.expect("charged");
    let again = charge(&do_ctx("saga-1/charge/do")).await.expect("charged");
    assert_eq!(first, again, "the same reply");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(charges(&db.pool).await, 1, "the side effect happened once");

    charge(&do_ctx("saga-2/charge/do")).await.expect("charged");
    assert_eq!(charges(&db.pool).await, 2, "another key is another effect");
}

#[tokio::test]
async fn a_retryable_error_rolls_back_and_a_permanent_one_is_recorded_with_its_writes() {
    let db = Db::new().await;
    charges_table(&db.pool).await;
    let store = PgIdempotency::new(db.pool.clone())
        .await
        .expect("the store");
    let attempt = async |key: &str, fail: Option<StepError>| {
        store
            .once(&do_ctx(key), async |tx: &mut PgConnection| {
                insert_charge(tx, key).await?;
                match fail {
                    Some(e) => Err(e),
                    None => Ok(json!("charged")),
                }
            })
            .await
    };

    // Retryable: its write vanishes, nothing is recorded, the next attempt runs.
    let down = StepError::retryable("bank_down", "try later");
    assert_eq!(attempt("k1", Some(down.clone())).await, Err(down));
    assert_eq!(charges(&db.pool).await, 0, "rolled back");
    assert_eq!(attempt("k1", None).await, Ok(json!("charged")));
    assert_eq!(charges(&db.pool).await, 1);

    // Permanent: recorded with its write; a later run gets the same error and does nothing.
    let declined = StepError::permanent("card_declined", "no");
    assert_eq!(
        attempt("k2", Some(declined.clone())).await,
        Err(declined.clone())
    );
    assert_eq!(charges(&db.pool).await, 2, "committed with the record");
    assert_eq!(attempt("k2", None).await, Err(declined));
    assert_eq!(charges(&db.pool).await, 2);
}

#[tokio::test]
async fn two_runs_of_one_key_at_once_are_serialised_and_the_second_gets_the_first_reply() {
    let db = Db::new().await;
    charges_table(&db.pool).await;
    let store = PgIdempotency::new(db.pool.clone())
        .await
        .expect("the store");
    let gate = Gate::default();
    let runs = Arc::new(AtomicU32::new(0));
    let run = |store: PgIdempotency, gate: Gate, runs: Arc<AtomicU32>| async move {
        store
            .once(&do_ctx("same"), async |tx: &mut PgConnection| {
                runs.fetch_add(1, Ordering::SeqCst);
                let id = insert_charge(tx, "o").await?;
                gate.pass().await;
                Ok(json!({ "charge_id": id }))
            })
            .await
    };
    let first = tokio::spawn(run(store.clone(), gate.clone(), runs.clone()));
    gate.arrived(1).await;
    let second = tokio::spawn(run(store.clone(), gate.clone(), runs.clone()));
    eventually("the second run waits for the key's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&db.pool)
        .await
        .expect("read pg_locks");
        (waiting == 1).then_some(())
    })
    .await;
    gate.open();
    let first = soon("the first run", first).await.expect("joined");
    let second = soon("the second run", second).await.expect("joined");
    assert_eq!(first, second);
    assert!(first.is_ok());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(charges(&db.pool).await, 1);
}

#[tokio::test]
async fn a_compensation_reads_what_its_do_recorded() {
    let db = Db::new().await;
    let store = PgIdempotency::new(db.pool.clone())
        .await
        .expect("the store");
    store
        .once(&do_ctx("s/charge/do"), async |_tx: &mut PgConnection| {
            Ok(json!({ "charge_id": 7 }))
        })
        .await
        .expect("charged");

    let undo = |compensates: &'static str| {
        let store = store.clone();
        async move {
            let ctx = context(
                &format!("{compensates}-undo"),
                CommandKind::Compensate,
                Some(compensates),
            );
            store
                .once(&ctx, async |tx: &mut PgConnection| {
                    let key = ctx.compensates().expect("a compensation");
                    Ok(match PgIdempotency::recorded(tx, key).await? {
                        Some(ReplyBody::Ok { output }) => json!({ "refunded": output }),
                        Some(ReplyBody::Error { .. }) | None => json!("nothing to undo"),
                    })
                })
                .await
        }
    };
    assert_eq!(
        undo("s/charge/do").await,
        Ok(json!({ "refunded": { "charge_id": 7 } }))
    );
    assert_eq!(undo("t/charge/do").await, Ok(json!("nothing to undo")));
}

#[tokio::test]
async fn stores_created_at_once_all_succeed_and_old_records_can_be_forgotten() {
    let db = Db::new().await;
    let creating: Vec<_> = (0..4)
        .map(|_| tokio::spawn(PgIdempotency::new(db.pool.clone())))
        .collect();
    let mut stores = Vec::new();
    for c in creating {
        stores.push(
            soon("a store", c)
                .await
                .expect("joined")
                .expect("created, or found created"),
        );
    }
    let store = &stores[0];
    store
        .once(&do_ctx("old"), async |_tx: &mut PgConnection| Ok(()))
        .await
        .expect("recorded");
    sqlx::query("UPDATE saga_worker_idempotency SET created_at = now() - interval '2 days'")
        .execute(&db.pool)
        .await
        .expect("age the record");
    store
        .once(&do_ctx("new"), async |_tx: &mut PgConnection| Ok(()))
        .await
        .expect("recorded");
    let forgotten = store
        .forget_older_than(std::time::Duration::from_secs(24 * 3600))
        .await
        .expect("forget");
    assert_eq!(forgotten, 1);
}

#[derive(Deserialize)]
struct Payment {
    order_id: String,
}

#[tokio::test]
async fn a_command_redelivered_after_its_effect_committed_gets_the_same_reply_without_a_second_effect()
 {
    let mut env = Env::new().await;
    let db = Db::new().await;
    charges_table(&db.pool).await;
    let task = env.task("payment.charge");
    env.declare_task(&task).await;
    let store = PgIdempotency::new(db.pool.clone())
        .await
        .expect("the store");

    // The handler's effect commits, then the worker hangs before it can reply: as if it died
    // between its commit and its acknowledgement.
    let gate = Gate::default();
    let charge = move |store: PgIdempotency, gate: Option<Gate>| {
        move |ctx: Context, p: Payment| {
            let (store, gate) = (store.clone(), gate.clone());
            async move {
                let reply = store
                    .once(&ctx, async |tx: &mut PgConnection| {
                        let id = insert_charge(tx, &p.order_id).await?;
                        Ok(json!({ "charge_id": id }))
                    })
                    .await;
                if let Some(gate) = gate {
                    gate.pass().await;
                }
                reply
            }
        }
    };
    let first = Running::start(
        env.worker("first")
            .handle(&task, charge(store.clone(), Some(gate.clone())))
            .build()
            .expect("a worker"),
    );
    let command = env.command(&task, json!({ "order_id": "o-9" }));
    env.send(&command).await;
    gate.arrived(1).await;
    assert_eq!(charges(&db.pool).await, 1, "the effect committed");
    first.handle.abort();
    let _ = first.handle.await;

    let second = Running::start(
        env.worker("second")
            .handle(&task, charge(store.clone(), None))
            .build()
            .expect("a worker"),
    );
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, command.command_id);
    let ReplyBody::Ok { output } = reply.body else {
        panic!("an ok reply: {:?}", reply.body);
    };
    let charge_id: i64 = sqlx::query_scalar("SELECT id FROM charges")
        .fetch_one(&db.pool)
        .await
        .expect("the charge");
    assert_eq!(output, json!({ "charge_id": charge_id }));
    assert_eq!(charges(&db.pool).await, 1, "no second charge");

    // The orchestrator retries the step (a new command, the same key): the same reply again.
    let mut retry = command.clone();
    retry.command_id = Uuid::now_v7();
    retry.attempt = 2;
    env.send(&retry).await;
    let (reply, _) = env.reply().await;
    assert_eq!(reply.command_id, retry.command_id);
    assert_eq!(reply.body, ReplyBody::Ok { output });
    assert_eq!(charges(&db.pool).await, 1, "no second charge");
    env.wait_settled(&task_queue(&task)).await;
    second.stop().await;
}
