//! Starting sagas and reading them: `POST /v1/sagas`, `GET /v1/sagas`, `GET /v1/sagas/{id}`
//! (with the long poll) and `GET /v1/sagas/{id}/history`.

use axum::Json;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;

use super::AppState;
use super::auth::Caller;
use super::extract::JsonBody;
use super::listing::{encode_cursor, list_query, status_query};
use super::params::{IdempotencyKey, SagaId, query_pairs};
use super::problem::ApiError;
use crate::definition::Violation;
use crate::engine::StartRequest;
use crate::status::SagaStatus;
use crate::store::history::HistoryEntry;

/// The body of `POST /v1/sagas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    definition: String,
    /// A positive integer; absent (or null): the latest version.
    #[serde(default)]
    version: Option<i64>,
    /// An object; absent (or null): `{}`.
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<SagaStatus>,
    pub next_cursor: Option<String>,
}

/// What the engine is asked for, from a start body: version and input checked, all breaches at
/// once.
fn start_parts(body: StartBody) -> Result<(String, Option<i32>, Value), ApiError> {
    let mut errors = Vec::new();
    let version = match body.version {
        None => None,
        Some(v) if v < 1 => {
            errors.push(Violation::new("/version", "must be a positive integer"));
            None
        }
        Some(v) => match i32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                errors.push(Violation::new(
                    "/version",
                    format!("`{}` has no such version", body.definition),
                ));
                None
            }
        },
    };
    let input = match body.input {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            errors.push(Violation::new("/input", "must be an object"));
            Value::Null
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok((body.definition, version, input))
}

/// `POST /v1/sagas`: 201 with `Location` and the status; 200 for a replay of the same key.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<StartBody>,
) -> Result<Response, ApiError> {
    let JsonBody { value, raw } = body;
    let (definition, version, input) = start_parts(value)?;
    // The saga's trace: the caller's (`traceparent`), or a new one.
    let span = crate::trace::start_span(&definition, &headers);
    start_saga(state, caller, key, definition, version, input, raw)
        .instrument(span)
        .await
}

async fn start_saga(
    state: AppState,
    caller: Caller,
    key: IdempotencyKey,
    definition: String,
    version: Option<i32>,
    input: Value,
    raw: Value,
) -> Result<Response, ApiError> {
    let started = state
        .engine
        .start(StartRequest {
            definition,
            version,
            input,
            idempotency_key: key.0,
            request: raw,
            actor: caller.name,
        })
        .await?;
    let id = started.status.id;
    tracing::Span::current().record("saga.id", tracing::field::display(id));
    let code = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        code,
        [(LOCATION, format!("/v1/sagas/{id}"))],
        Json(started.status),
    )
        .into_response())
}

/// `GET /v1/sagas/{id}`, with `?wait=` and `&revision=`.
#[tracing::instrument(name = "saga status", skip_all, fields(saga.id = %id.0))]
pub async fn status(
    State(state): State<AppState>,
    id: SagaId,
    uri: Uri,
) -> Result<Json<SagaStatus>, ApiError> {
    let query = status_query(query_pairs(&uri)?)?;
    let status = match query.wait {
        Some(wait) => state.engine.wait_status(id.0, wait, query.revision).await?,
        None => state.engine.status(id.0).await?,
    };
    status.map(Json).ok_or_else(no_saga)
}

/// `GET /v1/sagas/{id}/history`.
#[tracing::instrument(name = "saga history", skip_all, fields(saga.id = %id.0))]
pub async fn history(
    State(state): State<AppState>,
    id: SagaId,
) -> Result<Json<Items<HistoryEntry>>, ApiError> {
    let items = state.engine.history(id.0).await?.ok_or_else(no_saga)?;
    Ok(Json(Items { items }))
}

/// `GET /v1/sagas`: newest first, filtered, a page at a time.
#[tracing::instrument(name = "list sagas", skip_all)]
pub async fn list(State(state): State<AppState>, uri: Uri) -> Result<Json<Page>, ApiError> {
    let query = list_query(query_pairs(&uri)?)?;
    if query.matches_nothing {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let (items, next) = state.engine.list(&query.filter).await?;
    Ok(Json(Page {
        items,
        next_cursor: next.map(|(at, id)| encode_cursor(at, id)),
    }))
}

pub fn no_saga() -> ApiError {
    ApiError::NotFound("no saga has this id".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::json::typed;
    use super::*;

    fn pointers(body: Value) -> Vec<String> {
        let parsed = typed::<StartBody>(&body).and_then(start_parts);
        match parsed {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|v| v.pointer).collect()
            }
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn start_bodies() {
        let ok = typed::<StartBody>(&json!({ "definition": "order" }))
            .and_then(start_parts)
            .expect("valid");
        assert_eq!(ok, ("order".to_owned(), None, json!({})));
        let ok = typed::<StartBody>(
            &json!({ "definition": "order", "version": 2, "input": { "a": 1 } }),
        )
        .and_then(start_parts)
        .expect("valid");
        assert_eq!(ok, ("order".to_owned(), Some(2), json!({ "a": 1 })));

        assert_eq!(
            pointers(json!({ "definition": "o", "input": [1] })),
            ["/input"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "input": "x" })),
            ["/input"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "version": 0 })),
            ["/version"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "version": -3, "input": 1 })),
            ["/version", "/input"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "version": 4_000_000_000_i64 })),
            ["/version"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "version": "1" })),
            ["/version"]
        );
        assert_eq!(
            pointers(json!({ "definition": "o", "version": 1.5 })),
            ["/version"]
        );
        assert_eq!(pointers(json!({ "definition": 5 })), ["/definition"]);
        assert_eq!(pointers(json!({})), ["/definition"]);
        assert_eq!(
            pointers(json!({ "definition": "o", "extra": 1 })),
            ["/extra"]
        );
        assert_eq!(pointers(json!([])), [""]);
    }
}
