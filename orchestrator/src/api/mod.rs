//! HTTP: the REST API of PROTOCOL.md §2 and the open endpoints beside it.
//!
//! Handlers are thin: parse (the extractors in `extract` and `params`), call the engine, map the
//! result. Every error is an [`ApiError`], turned into `application/problem+json` in one place.
//! This module must never hold SQL or AMQP code, nor decide anything about a saga.
//!
//! Order of checks for a `/v1` request: the bearer token (401) before anything else, then the
//! route (404/405), the role (403), path parameters (400), the query (400), headers (400), the
//! body (415, 413, 400, 422), and only then the engine.

mod actions;
mod auth;
mod bulk;
mod definitions;
mod extract;
mod health;
mod json;
mod listing;
mod openapi;
mod params;
mod problem;
mod queues;
mod sagas;
mod ui;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use auth::{ANONYMOUS, Caller};
pub use extract::BodyLimit;
pub use problem::ApiError;

use crate::bus::Bus;
use crate::config::Config;
use crate::engine::Engine;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    engine: Engine,
    bus: Bus,
    tokens: auth::Tokens,
    max_body: usize,
}

impl AppState {
    pub fn new(engine: Engine, bus: Bus, config: &Config) -> AppState {
        AppState {
            engine,
            bus,
            tokens: auth::Tokens::new(&config.api_tokens),
            max_body: config.max_body,
        }
    }
}

impl FromRef<AppState> for BodyLimit {
    fn from_ref(state: &AppState) -> BodyLimit {
        BodyLimit(state.max_body)
    }
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route(
            "/v1/definitions",
            post(definitions::register).get(definitions::list),
        )
        .route("/v1/definitions/{name}", get(definitions::get))
        .route(
            "/v1/definitions/{name}/versions/{version}",
            get(definitions::get),
        )
        .route("/v1/sagas", post(sagas::start).get(sagas::list))
        .route("/v1/sagas/{id}", get(sagas::status))
        .route("/v1/sagas/{id}/history", get(sagas::history))
        .route("/v1/sagas/{id}/signals/{event}", post(actions::signal))
        .route("/v1/sagas/{id}/cancel", post(actions::cancel))
        .route("/v1/sagas/{id}/retry", post(actions::retry))
        .route("/v1/sagas/{id}/skip", post(actions::skip))
        .route("/v1/sagas/{id}/terminate", post(actions::terminate))
        .route("/v1/bulk/retry", post(bulk::retry))
        .route("/v1/bulk/terminate", post(bulk::terminate))
        .route("/v1/queues", get(queues::list))
        .route("/ui", get(ui::page))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        // After every route: it applies to the routes that exist.
        .method_not_allowed_fallback(problem::method_not_allowed)
        .fallback(problem::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(record_response)
                // Failures are logged where they are handled (`ApiError`), once.
                .on_failure(()),
        )
        .layer(CatchPanicLayer::custom(panicked))
        // Outermost: it counts the 500 of a handler that panicked too.
        .layer(middleware::from_fn_with_state(state.clone(), measure))
        .with_state(state)
}

/// Counts each request, and its latency, by method, route (the pattern, never the path: no saga
/// id in a label) and status.
async fn measure(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: middleware::Next,
) -> Response {
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        // Any other token is a method too; one label keeps the set bounded.
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let m = state.engine.metrics();
    let status = response.status();
    m.inc(
        "saga_http_requests_total",
        &[
            ("method", method),
            ("route", &route),
            ("status", status.as_str()),
        ],
    );
    m.observe(
        "saga_http_request_duration_seconds",
        &[("method", method), ("route", &route)],
        started.elapsed().as_secs_f64(),
    );
    response
}

fn request_span(req: &Request) -> Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    tracing::info_span!(
        "http",
        http.method = %req.method(),
        http.route = route,
        http.status = tracing::field::Empty,
        actor = tracing::field::Empty,
    )
}

fn record_response(response: &Response, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("http.status", status);
    tracing::info!(
        http.status = status,
        latency_ms = latency.as_millis() as u64,
        "answered"
    );
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".into()).into_response()
}

#[cfg(test)]
mod tests;
