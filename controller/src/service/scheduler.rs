//! The scheduler: turns due cron slots of enabled jobs into queued executions, one per (job, slot) — the
//! unique index on `execution(job_id, scheduled_for)` makes a slot impossible to queue twice, even with two
//! leaders. Runs on the replica holding the Redis leader lock, and pauses while Redis is down. A job whose
//! slots were missed (controller down) runs once for the latest missed slot, not once per slot. Each round
//! also queues the jobs' due scheduled verifies (scrubbing, see [`scrub::verify_round`]).

use std::time::Duration;

use chrono::Utc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{schedule, scrub, waker::DispatchWaker};
use crate::coordination::Coordination;
use crate::{db::Db, error::ControllerResult};

/// Redis key of the leader lock of the deployment whose CA has fingerprint `ca_fingerprint`: the replicas of
/// one deployment share it, and two deployments sharing one Redis each elect their own leader.
pub fn leader_key(ca_fingerprint: &str) -> String {
    format!("dataguardian:{ca_fingerprint}:scheduler:leader")
}

/// The scheduler loop.
pub struct SchedulerTask {
    db: Db,
    coord: Coordination,
    waker: DispatchWaker,
    tick: Duration,
    leader_key: String,
}

impl SchedulerTask {
    /// New task checking every `tick`, competing for `leader_key` (see [`leader_key`]).
    pub fn new(db: Db, coord: Coordination, waker: DispatchWaker, tick: Duration, leader_key: String) -> Self {
        Self { db, coord, waker, tick, leader_key }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            if !self.coord.lead(&self.leader_key, self.tick * 5).await {
                continue; // Redis down or another replica leads
            }
            if let Err(e) = self.round().await {
                warn!(error = %e, "scheduler round failed");
            }
        }
    }

    async fn round(&self) -> ControllerResult<()> {
        let now = Utc::now();
        for job in self.db.scheduled_jobs().await? {
            let Ok(Some(sched)) = schedule::parse(&job.cron, &job.time_zone) else { continue };
            let Some(next) = sched.next_runs(now, 1).first().copied() else { continue };
            match job.next_run_at {
                None => {
                    self.db.set_next_run(job.id, None, next).await?;
                }
                Some(due) if due <= now => {
                    if self.db.insert_scheduled(job.id, job.datasource_id, job.agent_id, due).await? {
                        info!(job_id = %job.id, slot = %due, "scheduled backup queued");
                        self.waker.wake();
                    }
                    self.db.set_next_run(job.id, Some(due), next).await?;
                }
                Some(_) => {}
            }
        }
        scrub::verify_round(&self.db, &self.waker, now).await
    }
}
