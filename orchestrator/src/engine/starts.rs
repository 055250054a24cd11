//! Starts applied in batches (`batch`: group commit), as replies are: a batch reads the clock
//! once, checks each request (its idempotency key, its definition — each looked up once per
//! batch — and its input), and writes every saga it starts in one statement (`store::writes`).
//! A request's own error (invalid, key reused, key in progress) is its answer and does not touch
//! the others; when the transaction fails, its requests are started one per transaction
//! instead.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::{Kind, Pending, answer};
use super::{Engine, EngineError, StartRequest, Started, Wrote};
use crate::definition::{Definition, Violation};
use crate::machine::{self, Input, Saga};
use crate::status;
use crate::store::{self, StoreError, definitions::StoredDefinition, writes::Writes};

type StartResult = Result<Started, EngineError>;

/// A start waiting for a lane, with the trace context of the request that asked for it (the
/// lane runs in a span of its own; the saga's trace is the caller's).
#[derive(Clone)]
pub(super) struct Queued {
    req: StartRequest,
    traceparent: Option<String>,
}

pub(super) type Queue = super::batch::Queue<Queued, StartResult>;

static STARTS: Kind<Queued, StartResult> = Kind {
    queue: |inner| &inner.starts,
    apply: |engine, batch| Box::pin(async move { engine.apply_starts(batch).await }),
    alone: |engine, req| Box::pin(engine.start_alone(req)),
};

/// What a start's transaction did.
enum StartOutcome {
    /// An earlier request with the same idempotency key started this saga.
    Replayed(Saga),
    Created {
        saga: Saga,
        def: Arc<Definition>,
        /// The database's clock in the transaction that started it.
        now: DateTime<Utc>,
        wrote: Wrote,
    },
}

/// Definitions looked up in this batch: `(name, version asked)` → what the database had.
type Lookups = HashMap<(String, Option<i32>), Option<StoredDefinition>>;

impl Engine {
    /// Starts a saga: returns once the transaction that started it committed.
    #[tracing::instrument(skip_all, fields(definition = %req.definition, saga.id = tracing::field::Empty))]
    pub async fn start(&self, req: StartRequest) -> StartResult {
        let queued = Queued {
            req,
            traceparent: crate::trace::current_traceparent(),
        };
        let result = match self.batched(&STARTS, queued.clone()).await {
            Some(result) => result,
            // No lane took it (the runtime is shutting down): start it here.
            None => self.start_alone(&queued).await,
        };
        if let Ok(started) = &result {
            tracing::Span::current().record("saga.id", tracing::field::display(started.status.id));
        }
        result
    }

    /// One start in a transaction of its own.
    async fn start_alone(&self, req: &Queued) -> StartResult {
        let outcomes = self
            .transaction(async |tx| self.start_all(tx, &[req]).await)
            .await?;
        match outcomes.into_iter().next() {
            Some(outcome) => self.started(outcome?).await,
            // `start_all` answers every request it is given; this one asked for one.
            None => Err(EngineError::NotFound),
        }
    }

    async fn apply_starts(&self, batch: Vec<Pending<Queued, StartResult>>) {
        let requests: Vec<&Queued> = batch.iter().map(|p| &p.request).collect();
        let outcome = self
            .transaction(async |tx| self.start_all(tx, &requests).await)
            .await;
        let results = match outcome {
            Ok(outcomes) => {
                let mut results = Vec::with_capacity(outcomes.len());
                for outcome in outcomes {
                    results.push(match outcome {
                        Ok(outcome) => self.started(outcome).await,
                        Err(e) => Err(e),
                    });
                }
                Ok(results)
            }
            Err(e) => Err(e),
        };
        answer(self, &STARTS, batch, results).await;
    }

    /// Starts each request in the caller's transaction. A request's own error is its outcome; a
    /// database error fails them all (the transaction is lost).
    async fn start_all(
        &self,
        tx: &mut PgConnection,
        requests: &[&Queued],
    ) -> Result<Vec<Result<StartOutcome, EngineError>>, EngineError> {
        let now = store::sagas::db_now(tx).await?;
        let mut writes = Writes::default();
        let mut lookups = Lookups::new();
        let mut outcomes = Vec::with_capacity(requests.len());
        for req in requests {
            match self.start_in(tx, req, now, &mut writes, &mut lookups).await {
                Err(e @ EngineError::Store(_)) => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        writes.flush(tx).await?;
        Ok(outcomes)
    }

    async fn start_in(
        &self,
        tx: &mut PgConnection,
        queued: &Queued,
        now: DateTime<Utc>,
        writes: &mut Writes,
        lookups: &mut Lookups,
    ) -> Result<StartOutcome, EngineError> {
        let req = &queued.req;
        if let Some(key) = &req.idempotency_key {
            if !store::sagas::try_lock_idempotency_key(tx, key).await? {
                return Err(EngineError::KeyInProgress);
            }
            if let Some((saga, request)) = store::sagas::by_idempotency_key(tx, key).await? {
                if request != req.request {
                    return Err(EngineError::KeyReused);
                }
                return Ok(StartOutcome::Replayed(saga));
            }
        }
        let Some(stored) = lookup(tx, lookups, &req.definition, req.version).await? else {
            let known = lookup(tx, lookups, &req.definition, None).await?.is_some();
            let (pointer, detail) = if known {
                (
                    "/version",
                    format!("`{}` has no such version", req.definition),
                )
            } else {
                (
                    "/definition",
                    format!("no definition is named `{}`", req.definition),
                )
            };
            return Err(EngineError::InvalidStart(vec![Violation {
                pointer: pointer.into(),
                detail,
            }]));
        };
        let def = self.definition(tx, &stored.name, stored.version).await?;
        def.check_input(&req.input)
            .map_err(EngineError::InvalidStart)?;
        let fresh = Saga::new(Uuid::now_v7(), &def, stored.version, req.input.clone(), now);
        let decision = machine::decide(
            &fresh,
            &def,
            Input::Start {
                actor: req.actor.clone(),
            },
            now,
            &mut Uuid::now_v7,
        );
        let idem = req
            .idempotency_key
            .clone()
            .map(|key| store::sagas::Idempotency {
                key,
                request: req.request.clone(),
            });
        // The start's trace is the saga's: every later dispatch continues it.
        writes.insert_saga(decision.saga.clone(), idem, queued.traceparent.clone());
        let wrote = self.record(writes, &decision, &def, now);
        Ok(StartOutcome::Created {
            saga: decision.saga,
            def,
            now,
            wrote,
        })
    }

    /// After the commit: counts, wakes, logs, and renders the answer.
    async fn started(&self, outcome: StartOutcome) -> StartResult {
        match outcome {
            StartOutcome::Replayed(saga) => {
                let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
                let status = self.render(&mut conn, &saga, true).await?;
                Ok(Started {
                    status,
                    created: false,
                })
            }
            StartOutcome::Created {
                saga,
                def,
                now,
                wrote,
            } => {
                let m = &self.inner.metrics;
                m.inc("saga_started_total", &[("definition", &saga.definition)]);
                self.after_commit(saga.id, wrote);
                tracing::info!(saga.id = %saga.id, definition = saga.definition, "saga started");
                // Just started: not stuck, nothing to ask the database or the broker.
                let status = status::render(&saga, &def, self.view(now, None, true));
                Ok(Started {
                    status,
                    created: true,
                })
            }
        }
    }
}

/// A definition's latest version (`version` None) or the given one, looked up once per batch.
async fn lookup(
    tx: &mut PgConnection,
    lookups: &mut Lookups,
    name: &str,
    version: Option<i32>,
) -> Result<Option<StoredDefinition>, EngineError> {
    let key = (name.to_owned(), version);
    if let Some(found) = lookups.get(&key) {
        return Ok(found.clone());
    }
    let found = match version {
        None => store::definitions::latest(tx, name).await?,
        Some(v) => store::definitions::get(tx, name, v).await?,
    };
    lookups.insert(key, found.clone());
    Ok(found)
}
