//! What a transaction's transitions write, gathered and written in one statement.
//!
//! A transition touches five tables (the saga, its history, its timers, its commands, the
//! outbox). Written one statement per table and per saga, a batch of 64 replies took about 450
//! round trips; gathered here, any number of transitions is one statement: data-modifying CTEs,
//! each over `UNNEST` of arrays (docs/benchmarks.md). Foreign keys of rows that reference a saga
//! inserted by the same statement hold: PostgreSQL checks them at the end of the statement.
//!
//! Each saga is written once, with its last state; for each timer only the last word counts.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use super::outbox::NewMessage;
use super::sagas::{Idempotency, encode};
use crate::machine::{Entry, Saga};

/// The rows a batch of transitions writes, in the order they were recorded.
#[derive(Debug, Default)]
pub struct Writes {
    /// Sagas by id, with their last state.
    sagas: BTreeMap<Uuid, (Saga, SagaWrite)>,
    history: Vec<(Uuid, Entry)>,
    /// `(saga, key)` → when it fires (armed) or None (disarmed).
    timers: BTreeMap<(Uuid, String), Option<DateTime<Utc>>>,
    /// Sagas all of whose timers were disarmed, before the words of `timers`.
    timers_cleared: BTreeSet<Uuid>,
    commands: Vec<(Uuid, Uuid)>,
    outbox: Vec<NewMessage>,
}

impl Writes {
    /// A saga that does not exist yet, with the start request that made it and its trace context
    /// (a W3C `traceparent`; None when tracing is off).
    pub fn insert_saga(
        &mut self,
        saga: Saga,
        idempotency: Option<Idempotency>,
        trace_context: Option<String>,
    ) {
        self.sagas.insert(
            saga.id,
            (
                saga,
                SagaWrite::Insert {
                    idempotency,
                    trace_context,
                },
            ),
        );
    }

    /// A saga's new state (the last one recorded is written).
    pub fn update_saga(&mut self, saga: Saga) {
        let write = match self.sagas.remove(&saga.id) {
            Some((_, insert @ SagaWrite::Insert { .. })) => insert,
            _ => SagaWrite::Update,
        };
        self.sagas.insert(saga.id, (saga, write));
    }

    pub fn history(&mut self, saga: Uuid, entries: &[Entry]) {
        self.history
            .extend(entries.iter().map(|e| (saga, e.clone())));
    }

    pub fn arm(&mut self, saga: Uuid, key: String, at: DateTime<Utc>) {
        self.timers.insert((saga, key), Some(at));
    }

    pub fn disarm(&mut self, saga: Uuid, key: String) {
        self.timers.insert((saga, key), None);
    }

    /// Disarms every timer of the saga, those recorded before included.
    pub fn disarm_all(&mut self, saga: Uuid) {
        self.timers.retain(|(s, _), _| *s != saga);
        self.timers_cleared.insert(saga);
    }

    pub fn command(&mut self, saga: Uuid, command: Uuid) {
        self.commands.push((command, saga));
    }

    pub fn message(&mut self, message: NewMessage) {
        self.outbox.push(message);
    }

    pub fn is_empty(&self) -> bool {
        self.sagas.is_empty()
            && self.history.is_empty()
            && self.timers.is_empty()
            && self.timers_cleared.is_empty()
            && self.commands.is_empty()
            && self.outbox.is_empty()
    }

    /// The timer rows to delete and to upsert. Disarmed keys of a saga whose timers were all
    /// disarmed are left to that delete, and the delete of all spares the keys armed after it: no
    /// row is touched twice by one statement.
    fn timer_rows(&self) -> TimerRows {
        let mut rows = TimerRows {
            cleared: self.timers_cleared.iter().copied().collect(),
            ..TimerRows::default()
        };
        for ((saga, key), at) in &self.timers {
            match at {
                Some(at) => {
                    rows.arm_sagas.push(*saga);
                    rows.arm_keys.push(key.clone());
                    rows.arm_at.push(*at);
                }
                None if !self.timers_cleared.contains(saga) => {
                    rows.disarm_sagas.push(*saga);
                    rows.disarm_keys.push(key.clone());
                }
                None => {}
            }
        }
        rows
    }

    /// Writes it all in one statement. Rows are locked in the order of their sagas' ids (the
    /// order in which batches lock sagas), so two transactions never wait on each other in a
    /// cycle.
    pub async fn flush(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut s = SagaColumns::default();
        for (saga, write) in self.sagas.values() {
            s.push(saga, write)?;
        }
        let h = HistoryColumns::from(&self.history);
        let TimerRows {
            disarm_sagas,
            disarm_keys,
            cleared,
            arm_sagas,
            arm_keys,
            arm_at,
        } = self.timer_rows();
        let (command_ids, command_sagas): (Vec<Uuid>, Vec<Uuid>) =
            self.commands.iter().copied().unzip();
        let o = OutboxColumns::from(&self.outbox);
        sqlx::query(
            "WITH
             saga_rows AS (
                 INSERT INTO sagas AS s (id, definition, version, state, revision, input, output,
                     failure, steps, early_signals, created_at, updated_at, deadline, wait_until,
                     history_seq, idempotency_key, request_digest, trace_context)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::int8[],
                     $6::jsonb[], $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[],
                     $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
                     $14::timestamptz[], $15::int8[], $16::text[], $17::jsonb[], $45::text[])
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                     revision = EXCLUDED.revision, output = EXCLUDED.output,
                     failure = EXCLUDED.failure, steps = EXCLUDED.steps,
                     early_signals = EXCLUDED.early_signals, updated_at = EXCLUDED.updated_at,
                     deadline = EXCLUDED.deadline, wait_until = EXCLUDED.wait_until,
                     history_seq = EXCLUDED.history_seq),
             history_rows AS (
                 INSERT INTO saga_history (saga_id, seq, at, kind, step, attempt, command_id,
                     actor, reason, data)
                 SELECT * FROM UNNEST($18::uuid[], $19::int8[], $20::timestamptz[], $21::text[],
                     $22::text[], $23::int4[], $24::uuid[], $25::text[], $26::text[],
                     $27::jsonb[])),
             disarmed AS (
                 DELETE FROM timers t WHERE t.saga_id = ANY($28::uuid[])
                 AND (t.saga_id, t.key) IN (SELECT * FROM UNNEST($28::uuid[], $29::text[]))),
             cleared AS (
                 DELETE FROM timers t WHERE t.saga_id = ANY($30::uuid[])
                 AND (t.saga_id, t.key) NOT IN (SELECT * FROM UNNEST($31::uuid[], $32::text[]))),
             armed AS (
                 INSERT INTO timers (saga_id, key, fire_at)
                 SELECT * FROM UNNEST($31::uuid[], $32::text[], $33::timestamptz[])
                 ON CONFLICT (saga_id, key) DO UPDATE SET fire_at = EXCLUDED.fire_at),
             command_rows AS (
                 INSERT INTO commands (command_id, saga_id)
                 SELECT * FROM UNNEST($34::uuid[], $35::uuid[]))
             INSERT INTO outbox (saga_id, exchange, routing_key, message_id, message_type,
                 reply_to, body, attempt_timeout_ms, command_id)
             SELECT * FROM UNNEST($36::uuid[], $37::text[], $38::text[], $39::uuid[],
                 $40::text[], $41::text[], $42::jsonb[], $43::int8[], $44::uuid[])",
        )
        .bind(s.id)
        .bind(s.definition)
        .bind(s.version)
        .bind(s.state)
        .bind(s.revision)
        .bind(s.input)
        .bind(s.output)
        .bind(s.failure)
        .bind(s.steps)
        .bind(s.early_signals)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.deadline)
        .bind(s.wait_until)
        .bind(s.history_seq)
        .bind(s.idempotency_key)
        .bind(s.request)
        .bind(h.saga)
        .bind(h.seq)
        .bind(h.at)
        .bind(h.kind)
        .bind(h.step)
        .bind(h.attempt)
        .bind(h.command_id)
        .bind(h.actor)
        .bind(h.reason)
        .bind(h.data)
        .bind(disarm_sagas)
        .bind(disarm_keys)
        .bind(cleared)
        .bind(arm_sagas)
        .bind(arm_keys)
        .bind(arm_at)
        .bind(command_ids)
        .bind(command_sagas)
        .bind(o.saga)
        .bind(o.exchange)
        .bind(o.routing_key)
        .bind(o.message_id)
        .bind(o.message_type)
        .bind(o.reply_to)
        .bind(o.body)
        .bind(o.attempt_timeout_ms)
        .bind(o.command_id)
        .bind(s.trace_context)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The `timers` rows of a flush, in `(saga, key)` order.
#[derive(Debug, Default, PartialEq)]
struct TimerRows {
    disarm_sagas: Vec<Uuid>,
    disarm_keys: Vec<String>,
    /// Sagas all of whose timers are deleted (but those armed).
    cleared: Vec<Uuid>,
    arm_sagas: Vec<Uuid>,
    arm_keys: Vec<String>,
    arm_at: Vec<DateTime<Utc>>,
}

/// How a saga's row is written.
#[derive(Debug)]
enum SagaWrite {
    /// A new saga, with the start request's idempotency key and the saga's trace context (set
    /// once: an update leaves the column alone).
    Insert {
        idempotency: Option<Idempotency>,
        trace_context: Option<String>,
    },
    Update,
}

/// The `sagas` columns, one array each.
#[derive(Default)]
struct SagaColumns {
    id: Vec<Uuid>,
    definition: Vec<String>,
    version: Vec<i32>,
    state: Vec<&'static str>,
    revision: Vec<i64>,
    input: Vec<Value>,
    output: Vec<Option<Value>>,
    failure: Vec<Option<Value>>,
    steps: Vec<Value>,
    early_signals: Vec<Value>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    deadline: Vec<Option<DateTime<Utc>>>,
    wait_until: Vec<Option<DateTime<Utc>>>,
    history_seq: Vec<i64>,
    idempotency_key: Vec<Option<String>>,
    request: Vec<Option<Value>>,
    trace_context: Vec<Option<String>>,
}

impl SagaColumns {
    fn push(&mut self, saga: &Saga, write: &SagaWrite) -> Result<(), StoreError> {
        let (input, idempotency, trace_context) = match write {
            SagaWrite::Insert {
                idempotency,
                trace_context,
            } => (
                saga.input.clone(),
                idempotency.as_ref(),
                trace_context.clone(),
            ),
            // The input never changes: an existing saga's is not sent again.
            SagaWrite::Update => (Value::Null, None, None),
        };
        self.id.push(saga.id);
        self.definition.push(saga.definition.clone());
        self.version.push(saga.version);
        self.state.push(saga.state.as_str());
        self.revision.push(saga.revision);
        self.input.push(input);
        self.output.push(saga.output.clone());
        self.failure
            .push(saga.failure.as_ref().map(encode).transpose()?);
        self.steps.push(encode(&saga.steps)?);
        self.early_signals.push(encode(&saga.early_signals)?);
        self.created_at.push(saga.created_at);
        self.updated_at.push(saga.updated_at);
        self.deadline.push(saga.deadline);
        self.wait_until.push(saga.wait_until);
        self.history_seq.push(saga.history_seq);
        self.idempotency_key
            .push(idempotency.map(|i| i.key.clone()));
        self.request.push(idempotency.map(|i| i.request.clone()));
        self.trace_context.push(trace_context);
        Ok(())
    }
}

/// The `saga_history` columns, one array each.
struct HistoryColumns {
    saga: Vec<Uuid>,
    seq: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'static str>,
    step: Vec<Option<String>>,
    attempt: Vec<Option<i32>>,
    command_id: Vec<Option<Uuid>>,
    actor: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    data: Vec<Value>,
}

impl From<&Vec<(Uuid, Entry)>> for HistoryColumns {
    fn from(entries: &Vec<(Uuid, Entry)>) -> Self {
        let n = entries.len();
        let mut h = HistoryColumns {
            saga: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            step: Vec::with_capacity(n),
            attempt: Vec::with_capacity(n),
            command_id: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
        };
        for (saga, e) in entries {
            h.saga.push(*saga);
            h.seq.push(e.seq);
            h.at.push(e.at);
            h.kind.push(e.kind);
            h.step.push(e.step.clone());
            h.attempt
                .push(e.attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)));
            h.command_id.push(e.command_id);
            h.actor.push(e.actor.clone());
            h.reason.push(e.reason.clone());
            h.data.push(e.data.clone());
        }
        h
    }
}

/// The `outbox` columns, one array each.
struct OutboxColumns {
    saga: Vec<Uuid>,
    exchange: Vec<String>,
    routing_key: Vec<String>,
    message_id: Vec<Uuid>,
    message_type: Vec<String>,
    reply_to: Vec<Option<String>>,
    body: Vec<Value>,
    attempt_timeout_ms: Vec<Option<i64>>,
    command_id: Vec<Option<Uuid>>,
}

impl From<&Vec<NewMessage>> for OutboxColumns {
    fn from(messages: &Vec<NewMessage>) -> Self {
        let mut o = OutboxColumns {
            saga: Vec::new(),
            exchange: Vec::new(),
            routing_key: Vec::new(),
            message_id: Vec::new(),
            message_type: Vec::new(),
            reply_to: Vec::new(),
            body: Vec::new(),
            attempt_timeout_ms: Vec::new(),
            command_id: Vec::new(),
        };
        for m in messages {
            o.saga.push(m.saga_id);
            o.exchange.push(m.exchange.clone());
            o.routing_key.push(m.routing_key.clone());
            o.message_id.push(m.message_id);
            o.message_type.push(m.message_type.clone());
            o.reply_to.push(m.reply_to.clone());
            o.body.push(m.body.clone());
            o.attempt_timeout_ms.push(
                m.attempt_timeout
                    .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
            );
            o.command_id.push(m.command_id);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::definition::parse_definition;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("a time")
    }

    #[test]
    fn the_last_word_on_each_timer_counts() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut w = Writes::default();
        w.arm(a, "attempt:1".into(), at(1));
        w.disarm(a, "attempt:1".into());
        w.disarm(a, "backoff:0".into());
        w.arm(a, "backoff:0".into(), at(2));
        w.arm(b, "deadline".into(), at(3));
        w.disarm(b, "attempt:2".into());
        assert_eq!(
            w.timer_rows(),
            TimerRows {
                disarm_sagas: vec![a, b],
                disarm_keys: vec!["attempt:1".into(), "attempt:2".into()],
                cleared: vec![],
                arm_sagas: vec![a, b],
                arm_keys: vec!["backoff:0".into(), "deadline".into()],
                arm_at: vec![at(2), at(3)],
            }
        );
    }

    #[test]
    fn disarming_all_forgets_earlier_words_and_spares_later_ones() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut w = Writes::default();
        w.arm(a, "attempt:1".into(), at(1));
        w.disarm(a, "backoff:0".into());
        w.arm(b, "attempt:2".into(), at(1));
        w.disarm_all(a);
        w.disarm(a, "await:1".into());
        w.arm(a, "deadline".into(), at(5));
        assert_eq!(
            w.timer_rows(),
            TimerRows {
                disarm_sagas: vec![],
                disarm_keys: vec![],
                cleared: vec![a],
                arm_sagas: vec![a, b],
                arm_keys: vec!["deadline".into(), "attempt:2".into()],
                arm_at: vec![at(5), at(1)],
            }
        );
    }

    #[test]
    fn a_saga_is_written_once_with_its_last_state() {
        let def = parse_definition(&json!({
            "name": "flow",
            "steps": [{ "name": "a", "task": "t.a" }]
        }))
        .expect("a definition");
        let saga = Saga::new(Uuid::from_u128(7), &def, 1, json!({"x": 1}), at(0));
        let key = Idempotency {
            key: "k".into(),
            request: json!({}),
        };
        let mut w = Writes::default();
        assert!(w.is_empty());
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        w.insert_saga(saga.clone(), Some(key), Some(trace.into()));
        let mut later = saga.clone();
        later.revision += 1;
        w.update_saga(later.clone());
        // Still an insert (with its key and trace context), of the later state.
        let [
            (
                written,
                SagaWrite::Insert {
                    idempotency: Some(k),
                    trace_context: Some(t),
                },
            ),
        ] = w.sagas.values().collect::<Vec<_>>()[..]
        else {
            panic!("one insert: {:?}", w.sagas);
        };
        assert_eq!((written, k.key.as_str(), t.as_str()), (&later, "k", trace));

        let mut w = Writes::default();
        w.update_saga(saga.clone());
        w.update_saga(later.clone());
        let mut columns = SagaColumns::default();
        for (saga, write) in w.sagas.values() {
            columns.push(saga, write).expect("encodes");
        }
        assert_eq!(columns.revision, vec![later.revision]);
        assert_eq!(columns.input, vec![Value::Null], "an update sends no input");
        assert_eq!(columns.idempotency_key, vec![None]);
        assert_eq!(
            columns.trace_context,
            vec![None],
            "an update keeps the trace"
        );
    }
}
