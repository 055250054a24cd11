//! W3C trace context (`traceparent`, `tracestate`) in AMQP message headers, so that a trace
//! crosses the broker: the orchestrator injects it into a command, the worker SDK extracts it and
//! injects its own into the reply.
//!
//! The propagator is W3C's, always, not the process's global one: the header names are part of
//! the wire contract (PROTOCOL.md §3), and a worker that installed no propagator still continues
//! the trace. Without an active trace, nothing is injected, and headers without one extract to a
//! context with no span (a new root, if the caller records spans at all).

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header that carries the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// Writes `cx`'s span context into `headers` (as long strings); nothing when it has none.
pub fn inject_headers(cx: &Context, headers: &mut FieldTable) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The trace context that `headers` carry (an empty context when they carry none, or a broken
/// one).
pub fn extract_headers(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        None => Context::new(),
    }
}

/// `cx`'s span context as a `traceparent` string, to store; None when it has no valid span.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut fields);
    fields.remove(TRACEPARENT)
}

/// The context a stored `traceparent` string names (empty when it does not parse).
pub fn from_traceparent(traceparent: &str) -> Context {
    let fields = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&fields)
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator's keys are short and fixed; one that is not cannot be a header.
        if let Ok(key) = ShortString::try_new(key) {
            self.0
                .insert(key, AMQPValue::LongString(LongString::from(value)));
        }
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Other clients may send the header as a short string; anything else is not a context.
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn remote(state: TraceState) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::SAMPLED,
            true,
            state,
        ))
    }

    #[test]
    fn a_context_round_trips_through_headers() {
        let state = TraceState::from_key_value([("vendor", "x")]).expect("a valid state");
        let cx = remote(state);
        let mut headers = FieldTable::default();
        headers.insert("other".into(), AMQPValue::Boolean(true));
        inject_headers(&cx, &mut headers);
        assert_eq!(
            headers.inner().get(TRACEPARENT),
            Some(&AMQPValue::LongString(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()
            ))
        );
        assert_eq!(
            headers.inner().get("tracestate"),
            Some(&AMQPValue::LongString("vendor=x".into()))
        );
        let back = extract_headers(Some(&headers));
        assert_eq!(back.span().span_context(), cx.span().span_context());
    }

    #[test]
    fn a_short_string_header_is_read_too() {
        let mut headers = FieldTable::default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::ShortString(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
        );
        let back = extract_headers(Some(&headers));
        assert_eq!(
            back.span().span_context().trace_id(),
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736)
        );
    }

    #[test]
    fn no_context_injects_nothing_and_bad_headers_extract_nothing() {
        let mut headers = FieldTable::default();
        inject_headers(&Context::new(), &mut headers);
        assert!(headers.inner().is_empty());
        assert!(!extract_headers(None).span().span_context().is_valid());
        headers.insert(TRACEPARENT.into(), AMQPValue::LongString("garbage".into()));
        assert!(
            !extract_headers(Some(&headers))
                .span()
                .span_context()
                .is_valid()
        );
        headers.insert(TRACEPARENT.into(), AMQPValue::LongInt(7));
        assert!(
            !extract_headers(Some(&headers))
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn a_stored_traceparent_round_trips() {
        let cx = remote(TraceState::default());
        let stored = traceparent(&cx).expect("a valid context");
        assert_eq!(
            stored,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            from_traceparent(&stored).span().span_context(),
            cx.span().span_context()
        );
        assert_eq!(traceparent(&Context::new()), None);
        assert!(
            !from_traceparent("nonsense")
                .span()
                .span_context()
                .is_valid()
        );
    }
}
