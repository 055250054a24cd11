//! The one write path: every input — HTTP, reply, event, timer, operator action — is applied in
//! one transaction: lock the saga row, `machine::decide`, write the new state, its history, its
//! outbox rows and its timers, commit; only then is anything acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use thiserror::Error;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::definition::{Definition, Violation, parse_definition};
use crate::machine::{self, Decision, Effect, Input, Saga, Timer, Verdict};
use crate::metrics::{Gauge, Metrics};
use crate::status::{self, QueueState, SagaStatus, View};
use crate::store::{
    self, StoreError, definitions::StoredDefinition, history::HistoryEntry, writes::Writes,
};
use crate::timers::TimerWake;
use saga_wire::{COMMANDS_EXCHANGE, LIFECYCLE_EXCHANGE, REPLIES_QUEUE};

mod batch;
mod bulk;
mod observe;
mod replies;
mod starts;

pub use bulk::{BulkAction, BulkItem, BulkOutcome, BulkReport, BulkRequest};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the definition is invalid")]
    InvalidDefinition(Vec<Violation>),
    #[error("the start request is invalid")]
    InvalidStart(Vec<Violation>),
    #[error("a request with this idempotency key is still being processed")]
    KeyInProgress,
    #[error("this idempotency key was used with a different request")]
    KeyReused,
    #[error("no such saga")]
    NotFound,
    #[error("{0}")]
    Refused(String),
    #[error("the task queues could not be declared: {0}")]
    Topology(String),
    #[error("stored definition {name} version {version} no longer parses")]
    CorruptDefinition { name: String, version: i32 },
}

/// A registered definition, as the API shows it.
#[derive(Debug, Clone)]
pub struct Registered {
    pub definition: StoredDefinition,
    /// False when the content equalled the latest version.
    pub created: bool,
}

/// A request to start a saga (from HTTP or `saga.start`).
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub definition: String,
    pub version: Option<i32>,
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// The request as parsed JSON: a replay with the same key must be equal to it.
    pub request: Value,
    pub actor: String,
}

#[derive(Debug, Clone)]
pub struct Started {
    pub status: SagaStatus,
    /// False when an earlier request with the same idempotency key had started it.
    pub created: bool,
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyApplied {
    Applied,
    Ignored,
    UnknownCommand,
}

/// Asks the broker about task queues; the bus implements it. The engine uses it to say, of a
/// stuck saga, whether anyone consumes the queue the saga waits on.
pub trait QueueProbe: Send + Sync {
    /// The state of each task's queue that the broker could tell about; a task it could not
    /// (the broker is away) is left out.
    fn queues<'a>(
        &'a self,
        tasks: Vec<String>,
    ) -> futures::future::BoxFuture<'a, HashMap<String, QueueState>>;
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    definitions: RwLock<HashMap<(String, i32), Arc<Definition>>>,
    outbox_wake: Notify,
    timers_wake: TimerWake,
    changes: broadcast::Sender<Uuid>,
    stuck_after: Duration,
    /// Fired at shutdown: long polls answer at once instead of holding the server open.
    closing: CancellationToken,
    metrics: Metrics,
    queues: Option<Arc<dyn QueueProbe>>,
    replies: replies::Queue,
    starts: starts::Queue,
}

impl Engine {
    /// `queues`: where stuck reasons learn about task queues (None: they say nothing of them).
    pub fn new(pool: PgPool, stuck_after: Duration, queues: Option<Arc<dyn QueueProbe>>) -> Self {
        Engine {
            inner: Arc::new(Inner {
                pool,
                definitions: RwLock::new(HashMap::new()),
                outbox_wake: Notify::new(),
                timers_wake: TimerWake::default(),
                changes: broadcast::channel(1024).0,
                stuck_after,
                closing: CancellationToken::new(),
                metrics: Metrics::default(),
                queues,
                replies: replies::Queue::default(),
                starts: starts::Queue::default(),
            }),
        }
    }

    /// Makes every long poll answer now; called when the process starts shutting down.
    pub fn close_waits(&self) {
        self.inner.closing.cancel();
    }

    /// What this process has counted, for `GET /metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The gauges of `GET /metrics`, read now: sagas in flight, outbox and timers (from the
    /// database), task queues (from the broker). What cannot be read now is left out (and said
    /// at debug level): a scrape never fails for it.
    pub async fn gauges(&self) -> Vec<Gauge> {
        let mut gauges = Vec::new();
        let read = async {
            let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
            store::gauges(&mut conn).await
        };
        match read.await {
            Ok(g) => {
                for state in ["running", "compensating", "suspended"] {
                    let n = g
                        .live
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    gauges.push(Gauge::new("saga_sagas", &[("state", state)], n as f64));
                }
                gauges.extend([
                    Gauge::new("saga_outbox_messages", &[], g.outbox_messages as f64),
                    Gauge::new("saga_outbox_oldest_age_seconds", &[], g.outbox_oldest_age_s),
                    Gauge::new("saga_timers_due", &[], g.timers_due as f64),
                    Gauge::new("saga_timer_lag_seconds", &[], g.timer_lag_s),
                ]);
            }
            Err(e) => tracing::debug!(error = %e, "metrics: cannot read the database's gauges"),
        }
        let Some(probe) = &self.inner.queues else {
            return gauges;
        };
        let tasks = match self.all_task_names().await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: cannot read the task names");
                return gauges;
            }
        };
        // In the order of their names, as the rest of the exposition.
        let states: std::collections::BTreeMap<_, _> =
            probe.queues(tasks).await.into_iter().collect();
        for (task, state) in &states {
            let queue = saga_wire::task_queue(task);
            let (messages, consumers) = match state {
                QueueState::Present {
                    messages,
                    consumers,
                } => (*messages, *consumers),
                QueueState::Missing => (0, 0),
            };
            let l = [("queue", queue.as_str())];
            gauges.push(Gauge::new(
                "saga_task_queue_messages",
                &l,
                f64::from(messages),
            ));
            gauges.push(Gauge::new(
                "saga_task_queue_consumers",
                &l,
                f64::from(consumers),
            ));
        }
        gauges
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Woken after every commit that wrote outbox rows.
    pub fn outbox_wake(&self) -> &Notify {
        &self.inner.outbox_wake
    }

    /// Told of every commit that armed a timer.
    pub fn timers_wake(&self) -> &TimerWake {
        &self.inner.timers_wake
    }

    // ----- definitions -------------------------------------------------------------------------

    /// Registers a definition; `declare` declares its task queues before the commit, so that a
    /// definition is never visible without its queues.
    #[tracing::instrument(skip_all, fields(definition = tracing::field::Empty))]
    pub async fn register_definition(
        &self,
        document: &Value,
        declare: impl AsyncFnOnce(Vec<String>) -> Result<(), String>,
    ) -> Result<Registered, EngineError> {
        let def = parse_definition(document).map_err(EngineError::InvalidDefinition)?;
        tracing::Span::current().record("definition", def.name.as_str());
        let normalised = def.to_document();
        let registered = self
            .transaction(async |tx| {
                store::definitions::lock_name(tx, &def.name).await?;
                let latest = store::definitions::latest(tx, &def.name).await?;
                let (definition, created) = match latest {
                    Some(latest) if latest.document == normalised => (latest, false),
                    latest => {
                        let version = latest.map_or(0, |l| l.version) + 1;
                        let stored =
                            store::definitions::insert(tx, &def.name, version, &normalised).await?;
                        (stored, true)
                    }
                };
                // Before the commit: a definition is never visible without its queues.
                declare(def.task_names())
                    .await
                    .map_err(EngineError::Topology)?;
                Ok(Registered {
                    definition,
                    created,
                })
            })
            .await?;
        if registered.created {
            tracing::info!(
                version = registered.definition.version,
                "registered a definition"
            );
        }
        Ok(registered)
    }

    pub async fn list_definitions(&self) -> Result<Vec<StoredDefinition>, EngineError> {
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        Ok(store::definitions::list_latest(&mut conn).await?)
    }

    /// A definition's latest version (`version` None) or the given one.
    pub async fn get_definition(
        &self,
        name: &str,
        version: Option<i32>,
    ) -> Result<Option<StoredDefinition>, EngineError> {
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        Ok(match version {
            Some(v) => store::definitions::get(&mut conn, name, v).await?,
            None => store::definitions::latest(&mut conn, name).await?,
        })
    }

    /// Every task and compensation name of every registered version. Each version is read and
    /// parsed once per process (definitions never change): a scrape of `/metrics` or a look at
    /// `/v1/queues` reads only the versions this process has not seen — one statement. A version
    /// that cannot be parsed is left out.
    pub async fn all_task_names(&self) -> Result<Vec<String>, EngineError> {
        let mut defs: Vec<Arc<Definition>> = Vec::new();
        let mut known = Vec::new();
        if let Ok(cache) = self.inner.definitions.read() {
            for (key, def) in cache.iter() {
                known.push(key.clone());
                defs.push(def.clone());
            }
        }
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        for stored in store::definitions::all_except(&mut conn, &known).await? {
            if let Ok(def) = parse_definition(&stored.document) {
                defs.push(self.remember((stored.name, stored.version), def));
            }
        }
        let mut names: Vec<String> = defs.iter().flat_map(|d| d.task_names()).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn definition(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: i32,
    ) -> Result<Arc<Definition>, EngineError> {
        let key = (name.to_owned(), version);
        if let Some(d) = self.read_cache(&key) {
            return Ok(d);
        }
        let corrupt = || EngineError::CorruptDefinition {
            name: name.to_owned(),
            version,
        };
        let stored = store::definitions::get(conn, name, version)
            .await?
            .ok_or_else(corrupt)?;
        let def = parse_definition(&stored.document).map_err(|_| corrupt())?;
        Ok(self.remember(key, def))
    }

    /// Keeps a parsed version for the life of the process.
    fn remember(&self, key: (String, i32), def: Definition) -> Arc<Definition> {
        let def = Arc::new(def);
        if let Ok(mut cache) = self.inner.definitions.write() {
            cache.insert(key, def.clone());
        }
        def
    }

    fn read_cache(&self, key: &(String, i32)) -> Option<Arc<Definition>> {
        self.inner.definitions.read().ok()?.get(key).cloned()
    }

    // ----- sagas -------------------------------------------------------------------------------

    /// Applies one input to a saga. `Err(Refused)` when the machine refused it (a refused signal
    /// is still recorded in the history).
    #[tracing::instrument(skip_all, fields(saga.id = %id))]
    pub async fn apply(&self, id: Uuid, input: Input) -> Result<Verdict, EngineError> {
        let (verdict, wrote) = self
            .transaction(async |tx| {
                let locked = store::sagas::lock(tx, &[id]).await?;
                let applied = self.transition(tx, locked, vec![Some((id, input))]).await?;
                applied
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or(EngineError::NotFound)
            })
            .await?;
        self.after_commit(id, wrote);
        match verdict {
            Verdict::Refused { reason } => Err(EngineError::Refused(reason)),
            v => Ok(v),
        }
    }

    /// Records, in its saga's history, a reply that was dead-lettered for its shape.
    pub async fn malformed_reply(
        &self,
        command_id: Uuid,
        reason: String,
    ) -> Result<ReplyApplied, EngineError> {
        self.command_input(command_id, Input::MalformedReply { command_id, reason })
            .await
    }

    async fn command_input(
        &self,
        command_id: Uuid,
        input: Input,
    ) -> Result<ReplyApplied, EngineError> {
        let applied = self
            .transaction(async |tx| {
                let (owners, locked) = store::sagas::lock_by_commands(tx, &[command_id]).await?;
                let Some(&saga) = owners.get(&command_id) else {
                    return Ok(None);
                };
                let applied = self
                    .transition(tx, locked, vec![Some((saga, input))])
                    .await?;
                Ok(applied.into_iter().next().flatten().map(|a| (saga, a)))
            })
            .await?;
        let outcome = match applied {
            None => ReplyApplied::UnknownCommand,
            Some((saga, (verdict, wrote))) => {
                self.after_commit(saga, wrote);
                match verdict {
                    Verdict::Accepted => ReplyApplied::Applied,
                    Verdict::Ignored | Verdict::Refused { .. } => ReplyApplied::Ignored,
                }
            }
        };
        self.count_reply(outcome);
        Ok(outcome)
    }

    fn count_reply(&self, outcome: ReplyApplied) {
        let label = match outcome {
            ReplyApplied::Applied => "applied",
            ReplyApplied::Ignored => "ignored",
            ReplyApplied::UnknownCommand => "unknown_command",
        };
        self.inner
            .metrics
            .inc("saga_replies_total", &[("outcome", label)]);
    }

    /// Fires due timers: takes up to `limit`, applies each to its saga, in one transaction.
    /// Returns how many it took.
    pub async fn fire_due_timers(&self, limit: i64) -> Result<usize, EngineError> {
        let (taken, touched) = self
            .transaction(async |tx| {
                let due = store::timers::take_due(tx, limit).await?;
                if due.is_empty() {
                    return Ok((0, Vec::new()));
                }
                let mut sagas: Vec<Uuid> = due.iter().map(|t| t.saga_id).collect();
                sagas.sort();
                sagas.dedup();
                let locked = store::sagas::lock(tx, &sagas).await?;
                let inputs: Vec<_> = due
                    .iter()
                    .map(|timer| {
                        let input = timer_input(&timer.key);
                        if input.is_none() {
                            tracing::warn!(saga.id = %timer.saga_id, key = timer.key, "dropped a timer with an unknown key");
                        }
                        input.map(|input| (timer.saga_id, input))
                    })
                    .collect();
                let applied = self.transition(tx, locked, inputs).await?;
                let touched: Vec<_> = due
                    .iter()
                    .zip(applied)
                    .filter_map(|(timer, applied)| applied.map(|(_, wrote)| (timer.saga_id, wrote)))
                    .collect();
                Ok((due.len(), touched))
            })
            .await?;
        for (saga, wrote) in touched {
            self.after_commit(saga, wrote);
        }
        let fired = u64::try_from(taken).unwrap_or(u64::MAX);
        self.inner
            .metrics
            .add("saga_timers_fired_total", &[], fired);
        Ok(taken)
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back — at once, so that
    /// its row and advisory locks are released before the caller answers — when it returns `Err`.
    async fn transaction<T>(
        &self,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut tx = self.inner.pool.begin().await.map_err(StoreError::from)?;
        match f(&mut tx).await {
            Ok(value) => {
                tx.commit().await.map_err(StoreError::from)?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::debug!(error = %rollback, "rollback failed; the connection is dropped");
                }
                Err(e)
            }
        }
    }

    /// The heart of the write path, inside the caller's transaction: applies each input to its
    /// saga (locked by the caller), in order — a saga named twice sees the first input's outcome
    /// — and writes everything they decided in one statement. Per input: None when it names no
    /// saga (or none of the locked ones).
    async fn transition(
        &self,
        tx: &mut PgConnection,
        locked: store::sagas::Locked,
        inputs: Vec<Option<(Uuid, Input)>>,
    ) -> Result<Vec<Option<(Verdict, Wrote)>>, EngineError> {
        let store::sagas::Locked { mut sagas, now } = locked;
        let mut writes = Writes::default();
        let mut results = Vec::with_capacity(inputs.len());
        for input in inputs {
            let Some((id, input)) = input else {
                results.push(None);
                continue;
            };
            let Some(saga) = sagas.get_mut(&id) else {
                results.push(None);
                continue;
            };
            let def = self.definition(tx, &saga.definition, saga.version).await?;
            let reply = observe::reply_outcome(&input);
            let decision = machine::decide(saga, &def, input, now, &mut Uuid::now_v7);
            if decision.saga != *saga {
                writes.update_saga(decision.saga.clone());
            }
            let mut wrote = self.record(&mut writes, &decision, &def, now);
            wrote.observed = observe::observe(saga, reply, &decision, &def);
            results.push(Some((decision.verdict, wrote)));
            *saga = decision.saga;
        }
        writes.flush(tx).await?;
        Ok(results)
    }

    /// Records a decision's history, commands, outbox rows and timers (its saga's row is the
    /// caller's to record).
    fn record(
        &self,
        writes: &mut Writes,
        decision: &Decision,
        def: &Definition,
        now: DateTime<Utc>,
    ) -> Wrote {
        let saga = &decision.saga;
        writes.history(saga.id, &decision.history);
        let mut wrote = Wrote {
            definition: saga.definition.clone(),
            ..Wrote::default()
        };
        for effect in &decision.effects {
            match effect {
                Effect::Dispatch(d) => {
                    writes.command(saga.id, d.command_id);
                    writes.message(command_message(saga.id, d));
                    wrote.outbox = true;
                    wrote.dispatched.push((d.task.clone(), d.kind.as_str()));
                }
                Effect::Schedule { timer, at } => {
                    writes.arm(saga.id, timer_key(timer), *at);
                    wrote.earliest_timer = Some(wrote.earliest_timer.map_or(*at, |e| e.min(*at)));
                }
                Effect::Cancel(timer) => writes.disarm(saga.id, timer_key(timer)),
                Effect::CancelAll => writes.disarm_all(saga.id),
                Effect::Lifecycle(state) => {
                    let mut body = status::render(saga, def, self.view(now, None, false));
                    body.state = *state;
                    writes.message(store::outbox::NewMessage {
                        saga_id: saga.id,
                        exchange: LIFECYCLE_EXCHANGE.into(),
                        routing_key: format!("{}.{}", saga.definition, state.as_str()),
                        message_id: Uuid::now_v7(),
                        message_type: format!("saga.{}", state.as_str()),
                        reply_to: None,
                        body: serde_json::to_value(&body).unwrap_or(Value::Null),
                        attempt_timeout: None,
                        command_id: None,
                    });
                    wrote.outbox = true;
                    wrote.ended.push(state.as_str());
                }
            }
        }
        wrote
    }

    fn after_commit(&self, saga: Uuid, wrote: Wrote) {
        let m = &self.inner.metrics;
        for (task, kind) in &wrote.dispatched {
            m.inc(
                "saga_commands_dispatched_total",
                &[("task", task), ("kind", kind)],
            );
        }
        for state in &wrote.ended {
            m.inc(
                "saga_ended_total",
                &[("definition", &wrote.definition), ("state", state)],
            );
        }
        let observed = &wrote.observed;
        for (task, kind, outcome) in &observed.attempts {
            m.inc(
                "saga_step_attempts_total",
                &[("task", task), ("kind", kind), ("outcome", outcome)],
            );
        }
        for (task, state, seconds) in &observed.steps {
            m.observe(
                "saga_step_duration_seconds",
                &[("task", task), ("state", state)],
                *seconds,
            );
        }
        if let Some((state, seconds)) = observed.saga {
            m.observe(
                "saga_duration_seconds",
                &[("definition", &wrote.definition), ("state", state)],
                seconds,
            );
        }
        if wrote.outbox {
            self.inner.outbox_wake.notify_one();
        }
        if let Some(at) = wrote.earliest_timer {
            self.inner.timers_wake.armed(at);
        }
        // Nobody listening is fine.
        let _ = self.inner.changes.send(saga);
    }

    fn view(
        &self,
        now: DateTime<Utc>,
        unpublished_since: Option<DateTime<Utc>>,
        with_steps: bool,
    ) -> View {
        View {
            now,
            stuck_after: self.inner.stuck_after,
            unpublished_since,
            queue: None,
            with_steps,
        }
    }

    /// The broker's view of the queue each stuck saga waits on, filled into its view.
    async fn add_queues(&self, rendering: &mut [(&Saga, Arc<Definition>, View)]) {
        let Some(probe) = &self.inner.queues else {
            return;
        };
        let mut tasks: Vec<String> = rendering
            .iter()
            .filter_map(|(saga, def, view)| status::stuck_task(saga, def, view).map(str::to_owned))
            .collect();
        if tasks.is_empty() {
            return;
        }
        tasks.sort();
        tasks.dedup();
        let queues = probe.queues(tasks).await;
        for (saga, def, view) in rendering.iter_mut() {
            view.queue = status::stuck_task(saga, def, view).and_then(|t| queues.get(t).copied());
        }
    }

    async fn render(
        &self,
        conn: &mut PgConnection,
        saga: &Saga,
        with_steps: bool,
    ) -> Result<SagaStatus, EngineError> {
        let def = self
            .definition(conn, &saga.definition, saga.version)
            .await?;
        let now = store::sagas::db_now(conn).await?;
        // Only a saga whose wait is overdue can be stuck on an unpublished command: look at the
        // outbox (which has no index by saga) only then.
        let overdue = chrono::Duration::from_std(self.inner.stuck_after)
            .ok()
            .and_then(|t| saga.wait_until?.checked_add_signed(t))
            .is_some_and(|at| at < now);
        let unpublished = if overdue {
            store::outbox::oldest_unpublished(conn, saga.id).await?
        } else {
            None
        };
        let mut rendering = [(saga, def, self.view(now, unpublished, with_steps))];
        self.add_queues(&mut rendering).await;
        let [(saga, def, view)] = rendering;
        Ok(status::render(saga, &def, view))
    }

    // ----- reads -------------------------------------------------------------------------------

    pub async fn status(&self, id: Uuid) -> Result<Option<SagaStatus>, EngineError> {
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        match store::sagas::get(&mut conn, id).await? {
            Some(saga) => Ok(Some(self.render(&mut conn, &saga, true).await?)),
            None => Ok(None),
        }
    }

    /// Long poll: the status once the saga is terminal or suspended (or, with `revision`, once
    /// its revision differs), or when `wait` ends. Changes made by this process wake it at once;
    /// a short poll catches those of other processes.
    pub async fn wait_status(
        &self,
        id: Uuid,
        wait: Duration,
        revision: Option<i64>,
    ) -> Result<Option<SagaStatus>, EngineError> {
        let until = tokio::time::Instant::now() + wait;
        let mut changes = self.inner.changes.subscribe();
        loop {
            let Some(status) = self.status(id).await? else {
                return Ok(None);
            };
            let done = status.state.is_terminal()
                || match revision {
                    Some(r) => status.revision != r,
                    None => status.state == machine::SagaState::Suspended,
                };
            if done || tokio::time::Instant::now() >= until || self.inner.closing.is_cancelled() {
                return Ok(Some(status));
            }
            let poll = tokio::time::sleep_until(
                until.min(tokio::time::Instant::now() + Duration::from_millis(500)),
            );
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = &mut poll => break,
                    _ = self.inner.closing.cancelled() => break,
                    changed = changes.recv() => match changed {
                        Ok(saga) if saga != id => continue,
                        // This saga changed, or we missed some: look again.
                        _ => break,
                    },
                }
            }
        }
    }

    pub async fn history(&self, id: Uuid) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        if store::sagas::get(&mut conn, id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(store::history::list(&mut conn, id).await?))
    }

    /// A page of sagas (statuses without steps), and the cursor of the next page.
    pub async fn list(
        &self,
        filter: &store::sagas::ListFilter,
    ) -> Result<(Vec<SagaStatus>, Option<(DateTime<Utc>, Uuid)>), EngineError> {
        let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
        let (sagas, now) = store::sagas::list(&mut conn, filter, self.inner.stuck_after).await?;
        let mut rendering = Vec::with_capacity(sagas.len());
        for saga in &sagas {
            let def = self
                .definition(&mut conn, &saga.definition, saga.version)
                .await?;
            rendering.push((saga, def, self.view(now, None, false)));
        }
        drop(conn);
        self.add_queues(&mut rendering).await;
        let items: Vec<SagaStatus> = rendering
            .iter()
            .map(|(saga, def, view)| status::render(saga, def, *view))
            .collect();
        let full = i64::try_from(items.len()).unwrap_or(i64::MAX) >= filter.limit;
        let next = full
            .then(|| sagas.last().map(|s| (s.created_at, s.id)))
            .flatten();
        Ok((items, next))
    }
}

/// What a transition wrote that other components wait for.
#[derive(Debug, Clone, Default)]
struct Wrote {
    outbox: bool,
    /// The earliest timer armed.
    earliest_timer: Option<DateTime<Utc>>,
    definition: String,
    /// `(task, kind)` of each command dispatched.
    dispatched: Vec<(String, &'static str)>,
    /// The states entered that a lifecycle event announces.
    ended: Vec<&'static str>,
    observed: observe::Observed,
}

fn command_message(saga: Uuid, d: &machine::Dispatch) -> store::outbox::NewMessage {
    let body = json!({
        "command_id": d.command_id,
        "saga_id": saga,
        "step": d.step_name,
        "task": d.task,
        "kind": d.kind.as_str(),
        "attempt": d.attempt,
        "idempotency_key": d.idempotency_key,
        "compensates": d.compensates,
        "deadline": null,
        "input": d.input,
        "results": d.results,
    });
    store::outbox::NewMessage {
        saga_id: saga,
        exchange: COMMANDS_EXCHANGE.into(),
        routing_key: d.task.clone(),
        message_id: d.command_id,
        message_type: d.task.clone(),
        reply_to: Some(REPLIES_QUEUE.into()),
        body,
        attempt_timeout: Some(d.timeout),
        command_id: Some(d.command_id),
    }
}

/// The key of a timer within its saga, as stored in `timers.key`.
pub fn timer_key(timer: &Timer) -> String {
    match timer {
        Timer::Attempt { command_id } => format!("attempt:{command_id}"),
        Timer::Backoff { step } => format!("backoff:{step}"),
        Timer::AwaitDeadline { step } => format!("await:{step}"),
        Timer::SagaDeadline => "deadline".into(),
    }
}

/// The input a due timer feeds the machine.
fn timer_input(key: &str) -> Option<Input> {
    let (kind, arg) = key.split_once(':').unwrap_or((key, ""));
    Some(match kind {
        "attempt" => Input::AttemptTimedOut {
            command_id: arg.parse().ok()?,
        },
        "backoff" => Input::BackoffElapsed {
            step: arg.parse().ok()?,
        },
        "await" => Input::AwaitLapsed {
            step: arg.parse().ok()?,
        },
        "deadline" => Input::DeadlinePassed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_round_trip() {
        for timer in [
            Timer::Attempt {
                command_id: Uuid::from_u128(7),
            },
            Timer::Backoff { step: 3 },
            Timer::AwaitDeadline { step: 0 },
            Timer::SagaDeadline,
        ] {
            let input = timer_input(&timer_key(&timer)).expect("parses");
            let expected = match timer {
                Timer::Attempt { command_id } => Input::AttemptTimedOut { command_id },
                Timer::Backoff { step } => Input::BackoffElapsed { step },
                Timer::AwaitDeadline { step } => Input::AwaitLapsed { step },
                Timer::SagaDeadline => Input::DeadlinePassed,
            };
            assert_eq!(input, expected);
        }
        assert_eq!(timer_input("nonsense"), None);
        assert_eq!(timer_input("backoff:x"), None);
    }
}
