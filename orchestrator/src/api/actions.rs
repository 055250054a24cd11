//! Inputs to a running saga over HTTP: signals, cancel, and the operator's retry, skip and
//! terminate. Each becomes one `engine.apply`; a refusal by the saga's state is 409.
//!
//! Cancel, retry, skip and terminate answer 202 with the saga's status as it is after the input
//! was applied (the compensation it starts runs on); a signal answers 202 with
//! `{saga_id, event, accepted_at}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, Operator};
use super::extract::OptionalJsonBody;
use super::params::{EventName, SagaId};
use super::problem::ApiError;
use super::sagas::no_saga;
use crate::definition::Violation;
use crate::machine::Input;
use crate::status::SagaStatus;

/// The body of cancel, retry, skip and terminate. `reason` is required (non-blank) for skip and
/// terminate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The reason of skip and terminate; 422 at `/reason` when there is none (an empty body
/// included).
pub(super) fn required_reason(reason: Option<String>) -> Result<String, ApiError> {
    match reason {
        Some(reason) if !reason.trim().is_empty() => Ok(reason),
        Some(_) => Err(ApiError::validation(vec![Violation::new(
            "/reason",
            "must not be blank",
        )])),
        None => Err(ApiError::validation(vec![Violation::new(
            "/reason",
            "a reason is required: send {\"reason\": \"…\"}",
        )])),
    }
}

/// Applies `input` and answers 202 with the status that results.
async fn apply(
    state: &AppState,
    id: Uuid,
    input: Input,
) -> Result<(StatusCode, Json<SagaStatus>), ApiError> {
    state.engine.apply(id, input).await?;
    let status = state.engine.status(id).await?.ok_or_else(no_saga)?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// `POST /v1/sagas/{id}/cancel`: 202, or 409 unless the saga is `running`.
#[tracing::instrument(name = "cancel saga", skip_all, fields(saga.id = %id.0))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    id: SagaId,
    body: OptionalJsonBody<ReasonBody>,
) -> Result<(StatusCode, Json<SagaStatus>), ApiError> {
    let reason = body.0.and_then(|b| b.reason);
    apply(
        &state,
        id.0,
        Input::Cancel {
            actor: caller.name,
            reason,
        },
    )
    .await
}

/// `POST /v1/sagas/{id}/retry` (operator): 202, or 409 unless the saga is `suspended`.
#[tracing::instrument(name = "retry compensation", skip_all, fields(saga.id = %id.0))]
pub async fn retry(
    State(state): State<AppState>,
    Operator(caller): Operator,
    id: SagaId,
    body: OptionalJsonBody<ReasonBody>,
) -> Result<(StatusCode, Json<SagaStatus>), ApiError> {
    let reason = body.0.and_then(|b| b.reason);
    apply(
        &state,
        id.0,
        Input::Retry {
            actor: caller.name,
            reason,
        },
    )
    .await
}

/// `POST /v1/sagas/{id}/skip` (operator, reason required): 202, or 409 unless `suspended`.
#[tracing::instrument(name = "skip compensation", skip_all, fields(saga.id = %id.0))]
pub async fn skip(
    State(state): State<AppState>,
    Operator(caller): Operator,
    id: SagaId,
    body: OptionalJsonBody<ReasonBody>,
) -> Result<(StatusCode, Json<SagaStatus>), ApiError> {
    let reason = required_reason(body.0.and_then(|b| b.reason))?;
    apply(
        &state,
        id.0,
        Input::Skip {
            actor: caller.name,
            reason,
        },
    )
    .await
}

/// `POST /v1/sagas/{id}/terminate` (operator, reason required): 202, or 409 if terminal.
#[tracing::instrument(name = "terminate saga", skip_all, fields(saga.id = %id.0))]
pub async fn terminate(
    State(state): State<AppState>,
    Operator(caller): Operator,
    id: SagaId,
    body: OptionalJsonBody<ReasonBody>,
) -> Result<(StatusCode, Json<SagaStatus>), ApiError> {
    let reason = required_reason(body.0.and_then(|b| b.reason))?;
    apply(
        &state,
        id.0,
        Input::Terminate {
            actor: caller.name,
            reason,
        },
    )
    .await
}

#[derive(Debug, Serialize)]
pub struct SignalAccepted {
    pub saga_id: Uuid,
    pub event: String,
    pub accepted_at: DateTime<Utc>,
}

/// `POST /v1/sagas/{id}/signals/{event}`: the body is the payload (empty: `null`).
#[tracing::instrument(name = "signal", skip_all, fields(saga.id = %id.0, event = %event.0))]
pub async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    id: SagaId,
    event: EventName,
    body: OptionalJsonBody<Value>,
) -> Result<(StatusCode, Json<SignalAccepted>), ApiError> {
    let EventName(event) = event;
    if event.contains('\0') {
        // No await can name it, and the history (Postgres text) cannot record it: refuse as
        // for any unknown event, without the record.
        state.engine.status(id.0).await?.ok_or_else(no_saga)?;
        return Err(ApiError::Conflict(
            "no await of the saga's definition names this event".into(),
        ));
    }
    let payload = body.0.unwrap_or(Value::Null);
    state
        .engine
        .apply(
            id.0,
            Input::Signal {
                event: event.clone(),
                payload,
                actor: caller.name,
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalAccepted {
            saga_id: id.0,
            event,
            accepted_at: Utc::now(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(r: Result<String, ApiError>) -> String {
        match r {
            Err(ApiError::Validation { errors, .. }) => errors[0].pointer.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skip_and_terminate_need_a_reason() {
        assert_eq!(
            required_reason(Some("by hand".into())).ok().as_deref(),
            Some("by hand")
        );
        assert_eq!(pointer(required_reason(None)), "/reason");
        assert_eq!(pointer(required_reason(Some("  ".into()))), "/reason");
    }
}
