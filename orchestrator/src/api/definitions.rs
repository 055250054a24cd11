//! `POST /v1/definitions`, `GET /v1/definitions`, `GET /v1/definitions/{name}` and
//! `GET /v1/definitions/{name}/versions/{version}`.
//!
//! Registration declares the definition's task queues on RabbitMQ before it commits (the engine
//! calls back), so that a definition is never visible without its queues.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::extract::JsonDocument;
use super::params::{DefinitionPath, excerpt};
use super::problem::ApiError;
use super::sagas::Items;
use crate::definition::{Violation, parse_definition};
use crate::store::definitions::StoredDefinition;

#[derive(Debug, Serialize)]
pub struct DefinitionSummary {
    pub name: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct DefinitionDocument {
    pub name: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    /// The document with its defaults filled in.
    pub document: Value,
}

impl From<StoredDefinition> for DefinitionSummary {
    fn from(d: StoredDefinition) -> Self {
        DefinitionSummary {
            name: d.name,
            version: d.version,
            created_at: d.created_at,
        }
    }
}

impl From<StoredDefinition> for DefinitionDocument {
    fn from(d: StoredDefinition) -> Self {
        DefinitionDocument {
            name: d.name,
            version: d.version,
            created_at: d.created_at,
            document: d.document,
        }
    }
}

/// `POST /v1/definitions`: 201 for a new version, 200 when equal to the latest.
#[tracing::instrument(name = "register definition", skip_all)]
pub async fn register(
    State(state): State<AppState>,
    body: JsonDocument,
) -> Result<(StatusCode, Json<DefinitionSummary>), ApiError> {
    if !body.violations.is_empty() {
        return Err(ApiError::validation(merge(&body.value, body.violations)));
    }
    let bus = &state.bus;
    let registered = state
        .engine
        .register_definition(&body.value, async |names: Vec<String>| {
            bus.declare_task_queues(&names)
                .await
                .map_err(|e| e.to_string())
        })
        .await?;
    let code = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(registered.definition.into())))
}

/// What the body scan found (NUL characters, integers beyond `i64`) together with the
/// definition's own breaches: all of them in one 422, each pointer once.
fn merge(document: &Value, scanned: Vec<Violation>) -> Vec<Violation> {
    let mut all = parse_definition(document).err().unwrap_or_default();
    for v in scanned {
        if !all.iter().any(|a| a.pointer == v.pointer) {
            all.push(v);
        }
    }
    all
}

/// `GET /v1/definitions`: every name with its latest version.
#[tracing::instrument(name = "list definitions", skip_all)]
pub async fn list(
    State(state): State<AppState>,
) -> Result<Json<Items<DefinitionSummary>>, ApiError> {
    let items = state.engine.list_definitions().await?;
    Ok(Json(Items {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// `GET /v1/definitions/{name}` and `GET /v1/definitions/{name}/versions/{version}`.
#[tracing::instrument(name = "get definition", skip_all, fields(definition = %path.name, version = ?path.version))]
pub async fn get(
    State(state): State<AppState>,
    path: DefinitionPath,
) -> Result<Json<DefinitionDocument>, ApiError> {
    let missing = || match path.version {
        Some(v) => ApiError::NotFound(format!("`{}` has no version {v}", excerpt(&path.name))),
        None => ApiError::NotFound(format!("no definition is named `{}`", excerpt(&path.name))),
    };
    // No stored name holds a NUL (Postgres cannot even compare one), nor is any version beyond
    // i32.
    if path.name.contains('\0') {
        return Err(missing());
    }
    let version = match path.version.map(i32::try_from) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return Err(missing()),
    };
    let found = state.engine.get_definition(&path.name, version).await?;
    found.map(|d| Json(d.into())).ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn scanned_breaches_join_the_definitions_own() {
        let doc = json!({ "name": "Bad", "steps": [ { "name": "a", "task": "t\u{0}" } ] });
        let scanned = vec![
            Violation::new("/steps/0/task", "nul"),
            Violation::new("/pad", "the integer is outside the signed 64-bit range"),
        ];
        let pointers: Vec<String> = merge(&doc, scanned)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert!(pointers.contains(&"/name".to_owned()), "{pointers:?}");
        assert_eq!(
            pointers.iter().filter(|p| *p == "/steps/0/task").count(),
            1,
            "{pointers:?}"
        );
        assert!(pointers.contains(&"/pad".to_owned()), "{pointers:?}");
    }
}
