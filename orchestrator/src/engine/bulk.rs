//! Bulk operator actions: retry or terminate every saga that matches a filter, newest first, a
//! bounded number per call, or only show which (a dry run). Each saga goes through
//! [`Engine::apply`] like a single action: its own transaction, its own history entry with the
//! operator's name and reason, its own refusal when its state changed in between.

use uuid::Uuid;

use super::{Engine, EngineError};
use crate::machine::{Input, SagaState};
use crate::store::{self, StoreError, sagas::ListFilter};

/// At most this many matching sagas are counted.
pub const COUNT_CAP: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Retry,
    Terminate,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Terminate => "terminate",
        }
    }

    /// The states this action can apply to.
    fn states(self) -> &'static [SagaState] {
        match self {
            BulkAction::Retry => &[SagaState::Suspended],
            BulkAction::Terminate => &[
                SagaState::Running,
                SagaState::Compensating,
                SagaState::Suspended,
            ],
        }
    }

    /// The filter's states narrowed to those the action applies to (all of those when the
    /// filter names none). Empty: nothing can match.
    fn narrow(self, asked: &[SagaState]) -> Vec<SagaState> {
        self.states()
            .iter()
            .copied()
            .filter(|s| asked.is_empty() || asked.contains(s))
            .collect()
    }

    fn input(self, actor: String, reason: Option<String>) -> Input {
        match self {
            BulkAction::Retry => Input::Retry { actor, reason },
            BulkAction::Terminate => Input::Terminate {
                actor,
                reason: reason.unwrap_or_default(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct BulkRequest {
    pub action: BulkAction,
    /// Which sagas; its `limit` bounds how many are acted on, its `after` is ignored.
    pub filter: ListFilter,
    pub dry_run: bool,
    pub actor: String,
    pub reason: Option<String>,
}

/// What became of one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOutcome {
    /// Dry run: it would be acted on.
    Selected,
    Applied,
    /// Its state no longer allowed the action.
    Refused(String),
    /// The action could not be applied (the database went away): try again.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct BulkItem {
    pub id: Uuid,
    pub definition: String,
    /// The state when it was selected.
    pub state: SagaState,
    pub stuck_reason: Option<String>,
    pub outcome: BulkOutcome,
}

#[derive(Debug, Clone)]
pub struct BulkReport {
    /// How many sagas matched (at most [`COUNT_CAP`]), acted on or not.
    pub matched: i64,
    pub items: Vec<BulkItem>,
}

impl Engine {
    #[tracing::instrument(skip_all, fields(action = req.action.as_str(), dry_run = req.dry_run, matched))]
    pub async fn bulk(&self, req: BulkRequest) -> Result<BulkReport, EngineError> {
        let mut filter = req.filter;
        filter.after = None;
        filter.states = req.action.narrow(&filter.states);
        if filter.states.is_empty() {
            return Ok(BulkReport {
                matched: 0,
                items: Vec::new(),
            });
        }
        let matched = {
            let mut conn = self.inner.pool.acquire().await.map_err(StoreError::from)?;
            store::sagas::count(&mut conn, &filter, self.inner.stuck_after, COUNT_CAP).await?
        };
        tracing::Span::current().record("matched", matched);
        let (selected, _) = self.list(&filter).await?;
        let mut items = Vec::with_capacity(selected.len());
        for saga in selected {
            let outcome = if req.dry_run {
                BulkOutcome::Selected
            } else {
                let input = req.action.input(req.actor.clone(), req.reason.clone());
                match self.apply(saga.id, input).await {
                    Ok(_) => BulkOutcome::Applied,
                    Err(EngineError::Refused(reason)) => BulkOutcome::Refused(reason),
                    Err(EngineError::NotFound) => {
                        BulkOutcome::Refused("no saga has this id".into())
                    }
                    Err(e) => {
                        tracing::warn!(saga.id = %saga.id, "bulk {}: {e}", req.action.as_str());
                        BulkOutcome::Failed(e.to_string())
                    }
                }
            };
            items.push(BulkItem {
                id: saga.id,
                definition: saga.definition,
                state: saga.state,
                stuck_reason: saga.stuck_reason,
                outcome,
            });
        }
        Ok(BulkReport { matched, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_applies_only_to_the_states_it_can_change() {
        use SagaState::*;
        assert_eq!(BulkAction::Retry.narrow(&[]), [Suspended]);
        assert_eq!(BulkAction::Retry.narrow(&[Running, Suspended]), [Suspended]);
        assert!(BulkAction::Retry.narrow(&[Running, Completed]).is_empty());
        assert_eq!(
            BulkAction::Terminate.narrow(&[]),
            [Running, Compensating, Suspended]
        );
        assert_eq!(
            BulkAction::Terminate.narrow(&[Completed, Compensating]),
            [Compensating]
        );
        assert!(BulkAction::Terminate.narrow(&[Terminated]).is_empty());
    }
}
