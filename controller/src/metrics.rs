//! Prometheus metrics, served as text on `metrics_listen` (`GET /metrics`). Counters are per replica; sum
//! them across replicas in queries.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};
use tokio_util::sync::CancellationToken;

/// Buckets (seconds) for execution durations and recovery times: a minute-scale restore to a six-hour dump.
const DURATION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0];

/// The controller's metrics (cheap to clone). Counters and histograms count what this replica did (sum them
/// across replicas); the catalog gauges (`dg_job_*`, `dg_queue_depth`, `dg_agent_*`) are read from PostgreSQL
/// by every replica alike (take `max` across replicas).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Executions that ended, by operation and final status.
    pub executions_finished: IntCounterVec,
    /// Execution durations (first claim to end), by operation and final status.
    pub execution_duration: HistogramVec,
    /// Attempts that ended without completing, by operation and cause (a retried attempt counts too).
    pub execution_failures: IntCounterVec,
    /// Attempts ended by the reaper because their lease expired.
    pub lease_reaps: IntCounter,
    /// Bytes stored by completed backups (one copy).
    pub backup_bytes_stored: IntCounter,
    /// Uncompressed bytes of completed backups.
    pub backup_bytes_raw: IntCounter,
    /// Copies checked by verifies, by result (`intact`, `damaged`, `missing`).
    pub verify_copies: IntCounterVec,
    /// Agent sessions open on this replica.
    pub agents_connected: IntGauge,
    /// 1 while Redis answers, else 0.
    pub redis_up: IntGauge,
    /// Per job: when its newest completed backup finished (Unix seconds).
    pub job_last_success: GaugeVec,
    /// Per job: stored bytes of its newest completed backup.
    pub job_last_backup_size: IntGaugeVec,
    /// Per job with a recovery-point objective: 1 while it is breached.
    pub job_rpo_breached: IntGaugeVec,
    /// Queued executions, by operation.
    pub queue_depth: IntGaugeVec,
    /// Per agent: its last heartbeat (Unix seconds).
    pub agent_last_seen: GaugeVec,
    /// Per agent: 1 while a replica holds its session.
    pub agent_up: IntGaugeVec,
    /// Restore drill runs that ended, by result (`passed`, `failed`).
    pub drill_runs: IntCounterVec,
    /// Recovery time of passed drill runs (run start to a queryable database).
    pub drill_rto: HistogramVec,
    /// Per drill: 1 when its newest finished run passed, 0 when it failed.
    pub drill_last_passed: IntGaugeVec,
    /// Notification deliveries that gave up after their last attempt, by channel kind.
    pub notification_delivery_failures: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let job = &["job_id", "job_name"];
        let agent = &["agent_id", "hostname"];
        let m = Self {
            executions_finished: IntCounterVec::new(
                Opts::new("dg_executions_finished_total", "Executions that ended, by operation and final status"),
                &["operation", "status"],
            )?,
            execution_duration: HistogramVec::new(
                HistogramOpts::new(
                    "dg_execution_duration_seconds",
                    "Execution durations from first claim to end, by operation and final status",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["operation", "status"],
            )?,
            execution_failures: IntCounterVec::new(
                Opts::new(
                    "dg_execution_failures_total",
                    "Attempts that ended without completing, by operation and cause (retried attempts count too)",
                ),
                &["operation", "cause"],
            )?,
            lease_reaps: IntCounter::new("dg_lease_reaps_total", "Attempts ended because their lease expired")?,
            backup_bytes_stored: IntCounter::new(
                "dg_backup_bytes_stored_total",
                "Bytes stored by completed backups (one copy)",
            )?,
            backup_bytes_raw: IntCounter::new("dg_backup_bytes_raw_total", "Uncompressed bytes of completed backups")?,
            verify_copies: IntCounterVec::new(
                Opts::new("dg_verify_copies_total", "Backup copies checked by verifies, by result"),
                &["result"],
            )?,
            agents_connected: IntGauge::new("dg_agents_connected", "Agent sessions open on this replica")?,
            redis_up: IntGauge::new("dg_redis_up", "1 while Redis answers pings")?,
            job_last_success: GaugeVec::new(
                Opts::new(
                    "dg_job_last_success_timestamp_seconds",
                    "When the job's newest completed backup finished (Unix time)",
                ),
                job,
            )?,
            job_last_backup_size: IntGaugeVec::new(
                Opts::new(
                    "dg_job_last_backup_size_bytes",
                    "Stored bytes (one copy) of the job's newest completed backup",
                ),
                job,
            )?,
            job_rpo_breached: IntGaugeVec::new(
                Opts::new(
                    "dg_job_rpo_breached",
                    "1 while the job has no good backup within its recovery-point objective",
                ),
                job,
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new("dg_queue_depth", "Queued executions, by operation"),
                &["operation"],
            )?,
            agent_last_seen: GaugeVec::new(
                Opts::new("dg_agent_last_seen_timestamp_seconds", "The agent's last heartbeat (Unix time)"),
                agent,
            )?,
            agent_up: IntGaugeVec::new(
                Opts::new("dg_agent_up", "1 while a controller replica holds the agent's session"),
                agent,
            )?,
            drill_runs: IntCounterVec::new(
                Opts::new("dg_drill_runs_total", "Restore drill runs that ended, by result"),
                &["result"],
            )?,
            drill_rto: HistogramVec::new(
                HistogramOpts::new(
                    "dg_drill_rto_seconds",
                    "Recovery time measured by passed drills: run start to a queryable database",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["drill_name"],
            )?,
            drill_last_passed: IntGaugeVec::new(
                Opts::new("dg_drill_last_passed", "1 when the drill's newest finished run passed, 0 when it failed"),
                &["drill_id", "drill_name"],
            )?,
            notification_delivery_failures: IntCounterVec::new(
                Opts::new(
                    "dg_notification_delivery_failures_total",
                    "Notification deliveries that gave up after their last attempt, by channel kind",
                ),
                &["kind"],
            )?,
            registry,
        };
        for c in m.collectors() {
            m.registry.register(c)?;
        }
        Ok(m)
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.executions_finished.clone()),
            Box::new(self.execution_duration.clone()),
            Box::new(self.execution_failures.clone()),
            Box::new(self.lease_reaps.clone()),
            Box::new(self.backup_bytes_stored.clone()),
            Box::new(self.backup_bytes_raw.clone()),
            Box::new(self.verify_copies.clone()),
            Box::new(self.agents_connected.clone()),
            Box::new(self.redis_up.clone()),
            Box::new(self.job_last_success.clone()),
            Box::new(self.job_last_backup_size.clone()),
            Box::new(self.job_rpo_breached.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.agent_last_seen.clone()),
            Box::new(self.agent_up.clone()),
            Box::new(self.drill_runs.clone()),
            Box::new(self.drill_rto.clone()),
            Box::new(self.drill_last_passed.clone()),
            Box::new(self.notification_delivery_failures.clone()),
        ]
    }

    /// Counts an execution that ended: its final status and, when it ran, its duration.
    pub fn execution_ended(&self, operation: &str, status: &str, ran_for: Option<std::time::Duration>) {
        self.executions_finished.with_label_values(&[operation, status]).inc();
        if let Some(d) = ran_for {
            self.execution_duration.with_label_values(&[operation, status]).observe(d.as_secs_f64());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    impl Metrics {
        fn names(&self) -> Vec<String> {
            self.collectors().iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect()
        }
    }

    #[test]
    fn every_metric_the_shipped_alert_rules_use_is_exported() {
        let rules = include_str!("../../deploy/prometheus/alerts.yml");
        let names = Metrics::new().expect("metrics").names();
        let mut used: Vec<&str> = rules
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|w| w.starts_with("dg_"))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 8, "{used:?}");
        for name in used {
            let family = ["_bucket", "_count", "_sum"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(names.iter().any(|n| n == family), "{name} is used by alerts.yml but not exported");
        }
    }

    #[test]
    fn names_follow_the_prometheus_conventions() {
        for name in Metrics::new().expect("metrics").names() {
            assert!(name.starts_with("dg_"), "{name}");
            let counter_or_unit =
                ["_total", "_seconds", "_bytes", "_up", "_connected", "_depth", "_breached", "_passed"];
            assert!(counter_or_unit.iter().any(|s| name.ends_with(s)), "{name} has no unit or _total suffix");
        }
    }
}
