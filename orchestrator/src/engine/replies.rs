//! Replies applied in batches: group commit. A reply waits in a queue; up to [`LANES`] lanes
//! (tasks, each with its own connection) drain it, each taking up to [`BATCH`] replies into one
//! transaction — under load a transaction carries many replies, at rest each reply goes alone at
//! once. A batch is four statements: begin, lock the sagas of its commands (in the order of their
//! ids, so that two batches never wait on each other in a cycle), write what the machine decided
//! for each reply (`store::writes`: one statement), commit. Nothing is acknowledged before that
//! commit (the caller awaits its reply's outcome). When a batch fails, its replies are applied one per
//! transaction instead, so that one bad reply never holds up the others.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Engine, EngineError, ReplyApplied, Wrote};
use crate::machine::{self, Input, Verdict};
use crate::store;
use saga_wire::{Reply, ReplyBody};

/// At most this many replies per transaction.
pub(super) const BATCH: usize = 64;
/// At most this many transactions of replies at once.
pub(super) const LANES: usize = 4;

struct Pending {
    reply: Reply,
    done: oneshot::Sender<Result<ReplyApplied, EngineError>>,
}

/// The replies waiting for a lane, and how many lanes run.
#[derive(Default)]
pub(super) struct ReplyQueue {
    pending: Mutex<VecDeque<Pending>>,
    lanes: AtomicUsize,
}

impl ReplyQueue {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The machine's input for a reply.
pub(super) fn reply_input(reply: &Reply) -> Input {
    let outcome = match &reply.body {
        ReplyBody::Ok { output } => machine::Outcome::Ok(output.clone()),
        ReplyBody::Error { error } => machine::Outcome::Error(error.clone()),
    };
    Input::Reply {
        command_id: reply.command_id,
        outcome,
    }
}

impl Engine {
    /// Applies a worker's reply: returns once the transaction that applied it committed.
    pub async fn reply(&self, reply: Reply) -> Result<ReplyApplied, EngineError> {
        let (done, outcome) = oneshot::channel();
        self.inner.replies.pending().push_back(Pending {
            reply: reply.clone(),
            done,
        });
        self.start_lane();
        match outcome.await {
            Ok(result) => result,
            // Its lane is gone (the runtime is shutting down): apply it here.
            Err(_) => self.reply_alone(&reply).await,
        }
    }

    /// Starts a lane unless [`LANES`] run already (they take this reply too).
    fn start_lane(&self) {
        let lanes = &self.inner.replies.lanes;
        let mut running = lanes.load(Ordering::SeqCst);
        loop {
            if running >= LANES {
                return;
            }
            match lanes.compare_exchange(running, running + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => running = now,
            }
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.drain_replies().await });
    }

    /// A lane: takes batches until the queue is empty.
    async fn drain_replies(self) {
        loop {
            let batch: Vec<Pending> = {
                let mut pending = self.inner.replies.pending();
                let n = pending.len().min(BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                self.inner.replies.lanes.fetch_sub(1, Ordering::SeqCst);
                // A reply queued after the look above may have found every lane busy.
                if !self.inner.replies.pending().is_empty() {
                    self.start_lane();
                }
                return;
            }
            self.apply_batch(batch).await;
        }
    }

    async fn apply_batch(&self, batch: Vec<Pending>) {
        let replies: Vec<&Reply> = batch.iter().map(|p| &p.reply).collect();
        let outcome = self
            .transaction(async |tx| {
                let ids: Vec<Uuid> = replies.iter().map(|r| r.command_id).collect();
                let (owners, locked) = store::sagas::lock_by_commands(tx, &ids).await?;
                let inputs = replies
                    .iter()
                    .map(|r| owners.get(&r.command_id).map(|&s| (s, reply_input(r))))
                    .collect();
                let applied = self.transition(tx, locked, inputs).await?;
                let results: Vec<Option<(Uuid, Verdict, Wrote)>> = replies
                    .iter()
                    .zip(applied)
                    .map(|(r, applied)| {
                        let saga = *owners.get(&r.command_id)?;
                        applied.map(|(verdict, wrote)| (saga, verdict, wrote))
                    })
                    .collect();
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => {
                for (pending, result) in batch.into_iter().zip(results) {
                    let applied = match result {
                        None => ReplyApplied::UnknownCommand,
                        Some((saga, verdict, wrote)) => {
                            self.after_commit(saga, wrote);
                            match verdict {
                                Verdict::Accepted => ReplyApplied::Applied,
                                Verdict::Ignored | Verdict::Refused { .. } => ReplyApplied::Ignored,
                            }
                        }
                    };
                    self.count_reply(applied);
                    // The caller may be gone (its delivery given up at shutdown): nothing to do.
                    let _ = pending.done.send(Ok(applied));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(pending) = batch.into_iter().next() {
                    let _ = pending.done.send(Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "a batch of replies failed; applying them one by one");
                for pending in batch {
                    let result = self.reply_alone(&pending.reply).await;
                    let _ = pending.done.send(result);
                }
            }
        }
    }

    /// One reply in a transaction of its own.
    pub(super) async fn reply_alone(&self, reply: &Reply) -> Result<ReplyApplied, EngineError> {
        self.command_input(reply.command_id, reply_input(reply))
            .await
    }
}
