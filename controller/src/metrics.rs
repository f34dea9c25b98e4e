//! Prometheus metrics, served as text on `metrics_listen` (`GET /metrics`). Counters are per replica; sum
//! them across replicas in queries.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// The controller's metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Executions that ended, by operation and final status.
    pub executions_finished: IntCounterVec,
    /// Bytes stored by completed backups (one copy).
    pub backup_bytes_stored: IntCounter,
    /// Uncompressed bytes of completed backups.
    pub backup_bytes_raw: IntCounter,
    /// Agent sessions open on this replica.
    pub agents_connected: IntGauge,
    /// 1 while Redis answers, else 0.
    pub redis_up: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let executions_finished = IntCounterVec::new(
            Opts::new("dg_executions_finished_total", "Executions that ended, by operation and final status"),
            &["operation", "status"],
        )?;
        let backup_bytes_stored =
            IntCounter::new("dg_backup_bytes_stored_total", "Bytes stored by completed backups (one copy)")?;
        let backup_bytes_raw = IntCounter::new("dg_backup_bytes_raw_total", "Uncompressed bytes of completed backups")?;
        let agents_connected = IntGauge::new("dg_agents_connected", "Agent sessions open on this replica")?;
        let redis_up = IntGauge::new("dg_redis_up", "1 while Redis answers pings")?;
        for c in [
            Box::new(executions_finished.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(backup_bytes_stored.clone()),
            Box::new(backup_bytes_raw.clone()),
            Box::new(agents_connected.clone()),
            Box::new(redis_up.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self { registry, executions_finished, backup_bytes_stored, backup_bytes_raw, agents_connected, redis_up })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` until cancelled.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, cancel: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await {
        tracing::error!(error = %e, "metrics server failed");
    }
}
