//! Logs and traces.
//!
//! Logs: human-readable by default, JSON with `LOG_FORMAT=json`, filtered by `RUST_LOG`.
//!
//! Traces (docs/observability.md): OpenTelemetry over OTLP/HTTP (JSON bodies), off unless the
//! standard variables ask for it — `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, or `OTEL_TRACES_EXPORTER=otlp`; `OTEL_TRACES_EXPORTER=none`
//! or `OTEL_SDK_DISABLED=true` force it off. Off means no exporter and no OpenTelemetry layer:
//! spans cost what they cost before. The exporter reads its own variables (endpoints, headers,
//! timeout), the batch processor its own (`OTEL_BSP_*`), the resource `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! What it must never do: fail the process because traces cannot be exported. A collector that
//! is down loses spans, not sagas.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{ExporterBuildError, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The service name when `OTEL_SERVICE_NAME` does not give one.
const SERVICE_NAME: &str = "saga-orchestrator";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TracingConfigError {
    #[error("OTEL_TRACES_EXPORTER={0} is not supported (only `otlp` and `none` are)")]
    UnsupportedExporter(String),
}

/// Whether the environment (read through `var`) asks for traces to be exported.
pub fn tracing_wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, TracingConfigError> {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    match var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(endpoint),
        Some(v) if v.is_empty() => Ok(endpoint),
        Some(v) if v == "none" => Ok(false),
        Some(v) if v == "otlp" => Ok(true),
        Some(other) => Err(TracingConfigError::UnsupportedExporter(other)),
    }
}

/// What [`init`] installed; [`Telemetry::shutdown`] flushes it when the process ends.
#[must_use = "shut it down at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it outside the runtime: the
    /// exporter's HTTP client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "cannot flush the last spans");
        }
    }
}

/// Installs the logger, and the trace exporter when the environment asks for it. A second call
/// (tests) keeps the first subscriber.
pub fn init() -> Telemetry {
    // lapin logs returned messages with their bodies at warn; our bus logs what matters itself.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=error"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (provider, problem) = match tracing_wanted(|k| std::env::var(k).ok()) {
        Ok(true) => match provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (
                None,
                Some(format!("cannot build the OTLP trace exporter: {e}")),
            ),
        },
        Ok(false) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("orchestrator")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    match (&provider, problem) {
        (_, Some(problem)) => tracing::warn!("tracing is off: {problem}"),
        (Some(_), None) => tracing::info!("tracing is on: spans are exported over OTLP/HTTP"),
        (None, None) => {}
    }
    Telemetry { provider }
}

fn provider() -> Result<SdkTracerProvider, ExporterBuildError> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(vars: &[(&str, &str)]) -> Result<bool, TracingConfigError> {
        tracing_wanted(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn tracing_is_off_unless_asked_for() {
        assert_eq!(wanted(&[]), Ok(false));
        assert_eq!(wanted(&[("OTEL_SERVICE_NAME", "x")]), Ok(false));
        assert_eq!(wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), Ok(false));
        assert_eq!(
            wanted(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
            Ok(true)
        );
        assert_eq!(
            wanted(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            Ok(true)
        );
        assert_eq!(wanted(&[("OTEL_TRACES_EXPORTER", "otlp")]), Ok(true));
    }

    #[test]
    fn none_and_disabled_win() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(false)
        );
        assert_eq!(
            wanted(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(false)
        );
        assert_eq!(
            wanted(&[endpoint, ("OTEL_SDK_DISABLED", "false")]),
            Ok(true)
        );
        assert_eq!(
            wanted(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            Err(TracingConfigError::UnsupportedExporter("zipkin".into()))
        );
    }
}
