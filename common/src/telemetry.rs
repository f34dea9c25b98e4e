//! Logging and tracing set-up for both binaries: `tracing` with an env filter (`RUST_LOG`, default `info`),
//! text or JSON output, and an OpenTelemetry OTLP exporter when an endpoint is configured. Also the W3C trace
//! context carried in `Assign`, so one execution is one trace across controller and agent.

use std::collections::HashMap;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Keeps the exporter alive; flushes spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Flushing from inside a current-thread runtime deadlocks; do it on a plain thread.
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// Installs the global subscriber. `json` selects JSON lines; `otlp_endpoint` enables span export.
pub fn init(service: &'static str, json: bool, otlp_endpoint: Option<&str>) -> anyhow_free::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_target(true).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(true).boxed()
    };
    let mut provider = None;
    let otel = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| anyhow_free::Error(e.to_string()))?;
            let p = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                .build();
            let tracer = p.tracer(service);
            provider = Some(p);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow_free::Error(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// Minimal error type so this crate stays free of `anyhow`.
pub mod anyhow_free {
    /// Telemetry set-up failed.
    #[derive(Debug, thiserror::Error)]
    #[error("telemetry: {0}")]
    pub struct Error(pub String);
    /// Result of telemetry set-up.
    pub type Result<T> = std::result::Result<T, Error>;
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);
impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);
impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The current span's W3C trace context, to send along with work.
pub fn inject_current() -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
    map
}

/// Makes `span` a child of the trace context received with work.
pub fn set_parent(span: &tracing::Span, map: &HashMap<String, String>) {
    let cx = TraceContextPropagator::new().extract(&MapExtractor(map));
    let _ = span.set_parent(cx);
}
