//! Replies applied in batches (`batch`: group commit). A batch is four statements: begin, lock
//! the sagas of its commands (in the order of their ids, so that two batches never wait on each
//! other in a cycle), write what the machine decided for each reply (`store::writes`: one
//! statement), commit. Nothing is acknowledged before that commit (the caller awaits its reply's
//! outcome). When a batch fails, its replies are applied one per transaction instead, so that one
//! bad reply never holds up the others.

use uuid::Uuid;

use super::batch::{Kind, Pending, answer};
use super::{Engine, EngineError, ReplyApplied, Wrote};
use crate::machine::{self, Input, Verdict};
use crate::store;
use saga_wire::{Reply, ReplyBody};

pub(super) type Queue = super::batch::Queue<Reply, Result<ReplyApplied, EngineError>>;

static REPLIES: Kind<Reply, Result<ReplyApplied, EngineError>> = Kind {
    queue: |inner| &inner.replies,
    apply: |engine, batch| Box::pin(async move { engine.apply_replies(batch).await }),
    alone: |engine, reply| Box::pin(engine.reply_alone(reply)),
};

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
        match self.batched(&REPLIES, reply.clone()).await {
            Some(result) => result,
            // No lane took it (the runtime is shutting down): apply it here.
            None => self.reply_alone(&reply).await,
        }
    }

    async fn apply_replies(&self, batch: Vec<Pending<Reply, Result<ReplyApplied, EngineError>>>) {
        let replies: Vec<&Reply> = batch.iter().map(|p| &p.request).collect();
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
        let results = outcome.map(|results| {
            results
                .into_iter()
                .map(|result| {
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
                    Ok(applied)
                })
                .collect()
        });
        answer(self, &REPLIES, batch, results).await;
    }

    /// One reply in a transaction of its own.
    pub(super) async fn reply_alone(&self, reply: &Reply) -> Result<ReplyApplied, EngineError> {
        self.command_input(reply.command_id, reply_input(reply))
            .await
    }
}
