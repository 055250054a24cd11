//! `POST /v1/bulk/retry` and `POST /v1/bulk/terminate` (operator): the action on every saga that
//! matches a filter — the filters of `GET /v1/sagas`, narrowed to the states the action applies
//! to — newest first, at most `limit` per call; `dry_run` only shows which. Each saga is one
//! `engine.apply`, recorded in its history with the token's name and the reason.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::actions::required_reason;
use super::auth::Operator;
use super::extract::JsonBody;
use super::problem::ApiError;
use crate::definition::Violation;
use crate::engine::{BulkAction, BulkItem, BulkOutcome, BulkReport, BulkRequest};
use crate::machine::SagaState;
use crate::store::sagas::ListFilter;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    #[serde(default)]
    filter: BulkFilter,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    limit: Option<i64>,
}

/// The filters of `GET /v1/sagas`, as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    #[serde(default)]
    state: Vec<SagaState>,
    #[serde(default)]
    definition: Option<String>,
    #[serde(default)]
    stuck: Option<bool>,
    #[serde(default)]
    updated_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct BulkResponse {
    pub action: &'static str,
    pub dry_run: bool,
    /// How many sagas match (counted up to 100,000).
    pub matched: i64,
    /// Those matching sagas that were not in this call (beyond `limit`).
    pub remaining: i64,
    pub items: Vec<BulkResponseItem>,
}

#[derive(Debug, Serialize)]
pub struct BulkResponseItem {
    pub id: Uuid,
    pub definition: String,
    pub state: SagaState,
    pub stuck_reason: Option<String>,
    /// `selected` (dry run), `applied`, `refused` (its state changed meanwhile) or `failed`
    /// (try again).
    pub outcome: &'static str,
    pub detail: Option<String>,
}

impl BulkResponse {
    fn new(action: BulkAction, dry_run: bool, report: BulkReport) -> BulkResponse {
        let acted = i64::try_from(report.items.len()).unwrap_or(i64::MAX);
        BulkResponse {
            action: action.as_str(),
            dry_run,
            matched: report.matched,
            remaining: (report.matched - acted).max(0),
            items: report
                .items
                .into_iter()
                .map(BulkResponseItem::from)
                .collect(),
        }
    }
}

impl From<BulkItem> for BulkResponseItem {
    fn from(item: BulkItem) -> Self {
        let (outcome, detail) = match item.outcome {
            BulkOutcome::Selected => ("selected", None),
            BulkOutcome::Applied => ("applied", None),
            BulkOutcome::Refused(why) => ("refused", Some(why)),
            BulkOutcome::Failed(why) => ("failed", Some(why)),
        };
        BulkResponseItem {
            id: item.id,
            definition: item.definition,
            state: item.state,
            stuck_reason: item.stuck_reason,
            outcome,
            detail,
        }
    }
}

/// `POST /v1/bulk/retry`: `reason` optional.
#[tracing::instrument(name = "bulk retry", skip_all)]
pub async fn retry(
    State(state): State<AppState>,
    Operator(caller): Operator,
    body: JsonBody<BulkBody>,
) -> Result<Json<BulkResponse>, ApiError> {
    let body = body.value;
    let reason = body.reason.clone();
    run(&state, BulkAction::Retry, caller.name, reason, body).await
}

/// `POST /v1/bulk/terminate`: `reason` required.
#[tracing::instrument(name = "bulk terminate", skip_all)]
pub async fn terminate(
    State(state): State<AppState>,
    Operator(caller): Operator,
    body: JsonBody<BulkBody>,
) -> Result<Json<BulkResponse>, ApiError> {
    let body = body.value;
    let reason = required_reason(body.reason.clone())?;
    run(
        &state,
        BulkAction::Terminate,
        caller.name,
        Some(reason),
        body,
    )
    .await
}

async fn run(
    state: &AppState,
    action: BulkAction,
    actor: String,
    reason: Option<String>,
    body: BulkBody,
) -> Result<Json<BulkResponse>, ApiError> {
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(vec![Violation::new(
            "/limit",
            format!("must be an integer from 1 to {MAX_LIMIT}"),
        )]));
    }
    let mut states = body.filter.state;
    states.sort_by_key(|s| s.as_str());
    states.dedup();
    let filter = ListFilter {
        states,
        definition: body.filter.definition,
        stuck: body.filter.stuck,
        updated_before: body.filter.updated_before,
        after: None,
        limit,
    };
    let report = state
        .engine
        .bulk(BulkRequest {
            action,
            filter,
            dry_run: body.dry_run,
            actor,
            reason,
        })
        .await?;
    Ok(Json(BulkResponse::new(action, body.dry_run, report)))
}
