//! `GET /healthz` (the process answers), `GET /readyz` (PostgreSQL answers and RabbitMQ is
//! connected with its topology declared) and `GET /metrics`. All are open to all.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use sqlx::Connection;

use super::AppState;
use super::problem::ApiError;

/// How long readiness waits for a database connection before calling it down.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`: the Prometheus text format (docs/observability.md).
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let gauges = state.engine.gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.engine.metrics().render(&gauges),
    )
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when both are up; otherwise 503 naming what is down.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let db_up = tokio::time::timeout(DB_CHECK_TIMEOUT, async {
        let mut conn = state.engine.pool().acquire().await?;
        conn.ping().await
    })
    .await
    .is_ok_and(|r| r.is_ok());
    let bus_up = state.bus.is_ready();
    let down: Vec<&str> = [
        (db_up, "PostgreSQL is unreachable"),
        (bus_up, "RabbitMQ is not ready"),
    ]
    .into_iter()
    .filter_map(|(up, what)| (!up).then_some(what))
    .collect();
    if !down.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "not ready: {}",
            down.join("; ")
        )));
    }
    Ok(Json(
        json!({ "status": "ok", "postgres": "ok", "rabbitmq": "ok" }),
    ))
}
