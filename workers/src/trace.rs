//! Trace context across the broker: a command's span continues the trace the orchestrator sent
//! in its headers (`traceparent`), and the reply carries the command span's context back.
//!
//! The SDK exports nothing itself and installs nothing: it uses whatever `tracing` subscriber
//! the application installed. With a `tracing-opentelemetry` layer the command span becomes a
//! consumer span, a child of the orchestrator's dispatch span; without one, nothing happens
//! beyond the usual `tracing` span.

use lapin::types::FieldTable;
use opentelemetry::trace::TraceContextExt;
use saga_amqp::trace::{extract_headers, inject_headers};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` (not entered yet: a started span keeps its parent) a child of the context that
/// a command's `headers` carry, when they carry one.
pub(crate) fn continue_trace(span: &Span, headers: Option<&FieldTable>) {
    let parent = extract_headers(headers);
    if parent.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer: then there is no trace to continue.
        let _ = span.set_parent(parent);
    }
}

/// The headers a reply sent from within `span` carries: its trace context, if it has one.
pub(crate) fn reply_headers(span: &Span) -> FieldTable {
    let mut headers = FieldTable::default();
    inject_headers(&span.context(), &mut headers);
    headers
}
