//! What the broker says of the task queues: depth and consumers, by passive declare. Stuck
//! reasons and `GET /v1/queues` ask; answers are kept for [`FRESH_FOR`] so that a page of stuck
//! sagas, or a dashboard polling, costs the broker one declare per queue and period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use saga_amqp::timed;
use saga_wire::task_queue;

use super::{Bus, BusError};
use crate::engine::QueueProbe;
use crate::status::QueueState;

/// How long an answer is reused.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(2);

/// The last answer for each task, with when it was had.
pub(super) type Cache = HashMap<String, (Instant, QueueState)>;

impl Bus {
    /// The state of each task's queue (`saga.task.T`). Errors when the broker is not connected,
    /// or fails while answering.
    pub async fn queue_states(
        &self,
        tasks: &[String],
    ) -> Result<HashMap<String, QueueState>, BusError> {
        let now = Instant::now();
        let mut known = HashMap::new();
        let mut ask = Vec::new();
        {
            let cache = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            for task in tasks {
                match cache.get(task) {
                    Some((at, state)) if now.duration_since(*at) < FRESH_FOR => {
                        known.insert(task.clone(), *state);
                    }
                    _ => ask.push(task.clone()),
                }
            }
        }
        if ask.is_empty() {
            return Ok(known);
        }
        let conn = self.connection().ok_or(BusError::NotConnected)?;
        let answered = probe(&conn, &ask).await?;
        let mut cache = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        for (task, state) in answered {
            cache.insert(task.clone(), (now, state));
            known.insert(task, state);
        }
        Ok(known)
    }
}

impl QueueProbe for Bus {
    fn queues<'a>(
        &'a self,
        tasks: Vec<String>,
    ) -> futures::future::BoxFuture<'a, HashMap<String, QueueState>> {
        Box::pin(async move {
            self.queue_states(&tasks).await.unwrap_or_else(|e| {
                tracing::debug!("cannot look at the task queues: {e}");
                HashMap::new()
            })
        })
    }
}

/// Passive-declares each task's queue on a channel of its own. A queue that does not exist
/// closes the channel (404): it is noted as missing and the rest go on a new channel.
async fn probe(conn: &Connection, tasks: &[String]) -> Result<Vec<(String, QueueState)>, BusError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut answered = Vec::with_capacity(tasks.len());
    let mut channel = None;
    for task in tasks {
        let queue =
            ShortString::try_new(task_queue(task)).map_err(|_| BusError::Name(task.clone()))?;
        let ch = match channel.take() {
            Some(ch) => ch,
            None => timed("opening a channel", conn.create_channel()).await?,
        };
        match timed(
            format!("looking at the queue {queue}"),
            ch.queue_declare(queue, passive, FieldTable::default()),
        )
        .await
        {
            Ok(q) => {
                let state = QueueState::Present {
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                };
                answered.push((task.clone(), state));
                channel = Some(ch);
            }
            Err(e) if e.is_not_found() => answered.push((task.clone(), QueueState::Missing)),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(ch) = channel {
        // Best effort: the connection ends it anyway.
        let _ = timed("closing a channel", ch.close(200, "OK".into())).await;
    }
    Ok(answered)
}
