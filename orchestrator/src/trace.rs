//! One trace per saga (docs/observability.md, Tracing): the spans that join the trace a saga
//! started in to the spans of its commands, across processes and the broker.
//!
//! - A start continues the HTTP request's `traceparent`, or is a new root `saga <definition>`;
//!   the engine stores the start span's context with the saga (`sagas.trace_context`).
//! - The relay publishes each command under a `dispatch <task>` producer span, a child of that
//!   stored context, and sends the span's context in the command's headers; the worker's
//!   handler span is its child.
//! - A delivery (a reply, a start or an event message) is handled under a consumer span that
//!   continues the context its headers carry: a reply's span is a child of the worker's.
//!
//! With tracing off (no OpenTelemetry layer, `telemetry::init`) these are plain `tracing` spans:
//! nothing is stored, nothing is injected.

use axum::http::HeaderMap;
use lapin::types::FieldTable;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use saga_amqp::trace::{extract_headers, from_traceparent, inject_headers, traceparent};
use tracing::{Span, field, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as a W3C `traceparent`; None with tracing off.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current().context())
}

/// The span of a saga's start over HTTP: `saga <definition>`, continuing the request's
/// `traceparent` when it has one. Enter it only after this (a started span keeps its parent).
pub fn start_span(definition: &str, headers: &HeaderMap) -> Span {
    let span = info_span!(
        "start saga",
        otel.name = format!("saga {definition}"),
        definition,
        saga.id = field::Empty,
    );
    adopt(
        &span,
        TraceContextPropagator::new().extract(&HttpHeaders(headers)),
    );
    span
}

/// The span of a delivery from `queue`, continuing the context its headers carry.
pub fn delivery_span(queue: &'static str, delivery_tag: u64, headers: Option<&FieldTable>) -> Span {
    let span = info_span!(
        "delivery",
        otel.name = format!("receive {queue}"),
        otel.kind = "consumer",
        queue,
        delivery_tag,
        saga.id = field::Empty,
        command.id = field::Empty,
    );
    adopt(&span, extract_headers(headers));
    span
}

/// What a command's dispatch span is named and carries; read from the command's body.
#[derive(Debug, Clone, Copy)]
pub struct Dispatch<'a> {
    pub saga_id: uuid::Uuid,
    pub command_id: uuid::Uuid,
    pub task: &'a str,
    pub step: &'a str,
    pub kind: &'a str,
    pub attempt: i64,
}

/// The span a command is published under, a child of its saga's stored trace context; its
/// context is written into `headers` for the worker to continue.
pub fn dispatch_span(d: Dispatch<'_>, saga_trace: Option<&str>, headers: &mut FieldTable) -> Span {
    let span = info_span!(
        "dispatch",
        otel.name = format!("dispatch {}", d.task),
        otel.kind = "producer",
        saga.id = %d.saga_id,
        saga.step = d.step,
        command.id = %d.command_id,
        attempt = d.attempt,
        task = d.task,
        kind = d.kind,
    );
    if let Some(stored) = saga_trace {
        adopt(&span, from_traceparent(stored));
    }
    inject_headers(&span.context(), headers);
    span
}

/// Makes `span` a child of `parent` when that names a span. Without the OpenTelemetry layer
/// (tracing off) there is nothing to set, and the error says only that.
fn adopt(span: &Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// An HTTP request's headers as the propagator reads them.
struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
