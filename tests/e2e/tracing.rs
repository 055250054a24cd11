//! Tracing (docs/observability.md): one saga is one trace, from the HTTP request that started it,
//! through each command's dispatch, across the broker into the worker SDK's handler span, and
//! back with the reply.
//!
//! The orchestrator exports over OTLP/HTTP (JSON) to a collector this test runs; the worker runs
//! in this process under a `tracing-opentelemetry` layer that keeps its spans in memory. Parent
//! ids are compared across the two: a broken link anywhere (no `traceparent` in a command's or a
//! reply's headers, a saga trace not stored) fails the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode as HttpStatus;
use axum::routing::post;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::{Method, StatusCode};
use saga_e2e::http::Body;
use saga_worker::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter::Targets};

use crate::{SOON, env_with, linear_definition};

/// The trace the test's HTTP request carries in.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_spans_form_one_trace_across_the_broker() {
    let collector = Collector::start().await;
    let env = env_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "saga-e2e-orchestrator"),
    ])
    .await;
    let names = ["a", "b"];
    assert_eq!(
        env.register(&linear_definition("traced", &names, "10s"))
            .await
            .0,
        StatusCode::CREATED
    );
    let worker_spans = worker_exporter();
    let stop = CancellationToken::new();
    let mut builder = saga_worker::Worker::builder(env.amqp_url.clone());
    for n in names {
        builder = builder.handle(format!("t.{n}"), |ctx: Context, _input: Value| async move {
            Ok::<_, saga_worker::StepError>(json!({ "step": ctx.step() }))
        });
    }
    let worker = builder.build().expect("build the worker");
    let running = tokio::spawn(worker.run(stop.clone()));

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let raw = env
        .request(
            Method::POST,
            "/v1/sagas",
            &[("traceparent", &traceparent)],
            Body::Json(json!({ "definition": "traced", "input": {} })),
        )
        .await;
    assert_eq!(raw.status, StatusCode::CREATED, "{}", raw.text());
    let id = raw.json()["id"].as_str().expect("an id").to_owned();
    env.wait_state(&id, &["completed"], SOON).await;

    // The worker's handler spans end once their replies are confirmed and their commands acked;
    // the orchestrator's are exported within the batch delay. Wait for all of them.
    let deadline = tokio::time::Instant::now() + SOON;
    let (handlers, exported) = loop {
        let handlers: Vec<SpanData> = worker_spans
            .get_finished_spans()
            .expect("read the worker's spans")
            .into_iter()
            .filter(|s| attr(s, "saga.id").as_deref() == Some(id.as_str()))
            .collect();
        let exported = collector.spans();
        let dispatches = named(&exported, "dispatch ").len();
        let replies = of_queue(&exported, "receive saga.replies").len();
        if handlers.len() >= names.len() && dispatches >= names.len() && replies >= names.len() {
            break (handlers, exported);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans missing: {} handler(s), {dispatches} dispatch(es), {replies} reply span(s)\nexported: {exported:#?}\nlog:\n{}",
            handlers.len(),
            env.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    running.await.expect("the worker stops");

    // The start continues the caller's trace: `saga traced`, a child of the caller's span.
    let starts: Vec<&Value> = exported
        .iter()
        .filter(|s| s["name"] == "saga traced")
        .collect();
    assert_eq!(starts.len(), 1, "{exported:#?}");
    assert_eq!(starts[0]["traceId"], TRACE_ID, "{:#}", starts[0]);
    assert_eq!(starts[0]["parentSpanId"], CALLER_SPAN, "{:#}", starts[0]);

    // Every span of the saga's work, the orchestrator's and the worker's, is in that trace.
    // (Reads of its status are requests of their own, in their own traces.)
    for h in &handlers {
        assert_eq!(h.span_context.trace_id().to_string(), TRACE_ID, "{h:#?}");
    }

    // Each command: dispatch (producer) → the worker's handler (consumer) → the reply's
    // application (consumer) in the orchestrator.
    let dispatches: HashMap<String, &Value> = named(&exported, "dispatch ")
        .into_iter()
        .map(|s| {
            (
                json_attr(s, "command.id").expect("dispatch has command.id"),
                s,
            )
        })
        .collect();
    assert_eq!(dispatches.len(), names.len(), "{dispatches:#?}");
    for d in dispatches.values() {
        assert_eq!(d["traceId"], TRACE_ID, "{d:#}");
        assert_eq!(d["kind"], 4, "SPAN_KIND_PRODUCER: {d:#}");
        assert_eq!(
            json_attr(d, "saga.id").as_deref(),
            Some(id.as_str()),
            "{d:#}"
        );
        for key in ["saga.step", "attempt", "task", "kind"] {
            assert!(json_attr(d, key).is_some(), "{key} missing: {d:#}");
        }
    }
    let replies = of_queue(&exported, "receive saga.replies");
    assert_eq!(handlers.len(), names.len(), "{handlers:#?}");
    for h in &handlers {
        let command = attr(h, "command.id").expect("the handler span has command.id");
        assert_eq!(h.span_kind, SpanKind::Consumer, "{h:#?}");
        assert!(h.name.starts_with("handle t."), "{h:#?}");
        let dispatch = dispatches
            .get(&command)
            .unwrap_or_else(|| panic!("no dispatch span for {command}: {dispatches:#?}"));
        assert_eq!(
            h.parent_span_id.to_string(),
            dispatch["spanId"].as_str().expect("a span id"),
            "the handler span is the dispatch span's child: {h:#?} {dispatch:#}"
        );
        let applied: Vec<&&Value> = replies
            .iter()
            .filter(|r| json_attr(r, "command.id").as_deref() == Some(command.as_str()))
            .collect();
        assert_eq!(applied.len(), 1, "{replies:#?}");
        assert_eq!(applied[0]["traceId"], TRACE_ID, "{:#}", applied[0]);
        assert_eq!(
            applied[0]["parentSpanId"].as_str(),
            Some(h.span_context.span_id().to_string().as_str()),
            "the reply's span is the handler span's child: {:#} {h:#?}",
            applied[0]
        );
    }
}

/// The spans whose name starts with `prefix`.
fn named<'a>(spans: &'a [Value], prefix: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .collect()
}

/// The spans named exactly `name` that carry a `command.id`.
fn of_queue<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"] == name && json_attr(s, "command.id").is_some())
        .collect()
}

/// An attribute of an OTLP/JSON span, as text.
fn json_attr(span: &Value, key: &str) -> Option<String> {
    let value = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?
        .get("value")?
        .as_object()?
        .values()
        .next()?
        .clone();
    Some(match value {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// An attribute of a span the worker recorded, as text.
fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The worker's side: the application's subscriber (here, this test process's) with a
/// `tracing-opentelemetry` layer over an in-memory exporter. Installed once per process; other
/// tests' workers may add spans, which the saga id filters out.
fn worker_exporter() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("saga-e2e-worker"))
                .with_filter(Targets::new().with_target("saga_worker", tracing::Level::INFO));
            tracing_subscriber::registry()
                .with(layer)
                .try_init()
                .expect("no other subscriber in the e2e binary");
            exporter
        })
        .clone()
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with JSON bodies, spans kept in memory.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Value>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("the collector's address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the collector serves");
        });
        Collector {
            endpoint: format!("http://{addr}"),
            spans,
            _server: server,
        }
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().expect("the collector's spans").clone()
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> HttpStatus {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return HttpStatus::BAD_REQUEST;
    };
    let mut kept = spans.lock().expect("the collector's spans");
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            kept.extend(scope["spans"].as_array().into_iter().flatten().cloned());
        }
    }
    HttpStatus::OK
}
