//! The catalog gauges: per-job recovery state (last success, last size), the newest drill result per drill,
//! queue depth and agent presence,
//! read from PostgreSQL on an interval and written into the metrics. Every replica runs it and exports the
//! same values, so a scrape of any replica tells the truth about the whole fleet; a job or agent that no
//! longer exists disappears from the next refresh. Runs only while metrics are served.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{db::Db, metrics::Metrics};

/// The refresh loop.
pub struct GaugesTask {
    db: Db,
    metrics: Metrics,
    interval: Duration,
}

impl GaugesTask {
    /// New task refreshing every `interval`.
    pub fn new(db: Db, metrics: Metrics, interval: Duration) -> Self {
        Self { db, metrics, interval }
    }

    /// Refreshes until cancelled; a failed round (PostgreSQL away) keeps the previous values and is logged.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        warn!(error = %e, "metrics refresh failed; keeping the previous values");
                    }
                }
            }
        }
    }

    async fn refresh(&self) -> Result<(), sea_orm::DbErr> {
        let jobs = self.db.job_gauges().await?;
        let queues = self.db.queue_gauges().await?;
        let agents = self.db.agent_gauges().await?;
        let drills = self.db.drill_gauges().await?;
        let m = &self.metrics;
        m.job_last_success.reset();
        m.job_last_backup_size.reset();
        for j in &jobs {
            let id = j.id.to_string();
            let labels = [id.as_str(), j.name.as_str()];
            if let Some(at) = j.last_success_at {
                m.job_last_success.with_label_values(&labels).set(at.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(size) = j.last_size_bytes {
                m.job_last_backup_size.with_label_values(&labels).set(size);
            }
        }
        m.drill_last_passed.reset();
        for d in &drills {
            let id = d.id.to_string();
            m.drill_last_passed.with_label_values(&[id.as_str(), d.name.as_str()]).set(i64::from(d.passed));
        }
        m.queue_depth.reset();
        for op in ["backup", "restore", "verify"] {
            let depth = queues.iter().find(|q| q.operation == op).map_or(0, |q| q.depth);
            m.queue_depth.with_label_values(&[op]).set(depth);
        }
        m.agent_last_seen.reset();
        m.agent_up.reset();
        for a in agents.iter().filter(|a| !a.revoked) {
            let id = a.id.to_string();
            let labels = [id.as_str(), a.hostname.as_str()];
            if let Some(at) = a.last_seen_at {
                m.agent_last_seen.with_label_values(&labels).set(at.timestamp_millis() as f64 / 1000.0);
            }
            m.agent_up.with_label_values(&labels).set(i64::from(a.connected));
        }
        Ok(())
    }
}
