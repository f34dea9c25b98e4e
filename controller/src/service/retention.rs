//! Retention (the cleanup worker): decides each completed backup of a job with the pure
//! [`retention_policy::decide`] and deletes what it does not keep (objects in every storage first, then rows).
//! Runs after each successful backup of the job and periodically for every job. Needs only PostgreSQL (and
//! the agents of local storages), so it keeps running while Redis is down. A backup that became pinned or
//! read by a restore after the decision is refused by the delete itself (checked under its row lock) and
//! left alone. [`RetentionService::preview`] shows the same decision without acting on it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::{sync::mpsc, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::{
    backups::BackupsService,
    retention_policy::{self, Decision, RetentionPolicy},
    schedule,
};
use crate::{
    db::Db,
    error::{ControllerError, ControllerResult},
    model::BackupJob,
};

/// What a policy does to a job's backups.
#[derive(Clone, Debug)]
pub struct RetentionPreview {
    /// The policy evaluated.
    pub policy: RetentionPolicy,
    /// The zone periods were computed in.
    pub time_zone: String,
    /// The time ages were measured from.
    pub evaluated_at: DateTime<Utc>,
    /// Every completed backup, newest first.
    pub decisions: Vec<Decision>,
}

/// Retention decisions over stored backups.
#[derive(Clone, Debug)]
pub struct RetentionService {
    db: Db,
}

impl RetentionService {
    /// New service.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The decision for every current backup of `job_id` under `policy` (default: the job's own).
    pub async fn preview(&self, job_id: Uuid, policy: Option<RetentionPolicy>) -> ControllerResult<RetentionPreview> {
        let job =
            self.db.job(job_id).await?.ok_or_else(|| ControllerError::NotFound(format!("backup job {job_id}")))?;
        self.evaluate(&job, policy.unwrap_or_else(|| RetentionPolicy::of(&job)), Utc::now()).await
    }

    async fn evaluate(
        &self,
        job: &BackupJob,
        policy: RetentionPolicy,
        now: DateTime<Utc>,
    ) -> ControllerResult<RetentionPreview> {
        let backups = self.db.retention_candidates(job.id).await?;
        let decisions = retention_policy::decide(&backups, &policy, zone(job), now);
        Ok(RetentionPreview { policy, time_zone: job.time_zone.clone(), evaluated_at: now, decisions })
    }
}

/// The job's time zone (validated when stored; UTC should a stored one no longer parse).
fn zone(job: &BackupJob) -> Tz {
    schedule::time_zone(&job.time_zone).unwrap_or_else(|e| {
        warn!(job_id = %job.id, error = %e, "retention periods computed in UTC");
        Tz::UTC
    })
}

/// Asks the retention task to apply one job's policy now (cheap to clone).
#[derive(Clone, Debug)]
pub struct RetentionHandle(mpsc::Sender<Uuid>);

impl RetentionHandle {
    /// Queues a job; dropped silently when the queue is full (the periodic round catches up).
    pub fn apply(&self, job: Uuid) {
        let _ = self.0.try_send(job);
    }
}

/// The retention loop.
pub struct RetentionTask {
    db: Db,
    retention: RetentionService,
    backups: BackupsService,
    rx: mpsc::Receiver<Uuid>,
    interval: Duration,
    orphan_grace: Duration,
}

impl RetentionTask {
    /// A task and the handle that feeds it.
    pub fn new(db: Db, backups: BackupsService, interval: Duration, orphan_grace: Duration) -> (Self, RetentionHandle) {
        let (tx, rx) = mpsc::channel(256);
        let retention = RetentionService::new(db.clone());
        (Self { db, retention, backups, rx, interval, orphan_grace }, RetentionHandle(tx))
    }

    /// Runs until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let jobs = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(job) = self.rx.recv() => vec![job],
                _ = tick.tick() => {
                    if let Err(e) = self.backups.sweep_orphans(self.orphan_grace).await {
                        warn!(error = %e, "orphan sweep failed");
                    }
                    match self.db.all_job_ids().await {
                        Ok(ids) => ids,
                        Err(e) => {
                            warn!(error = %e, "retention round failed");
                            continue;
                        }
                    }
                }
            };
            for job in jobs {
                if let Err(e) = self.apply(job).await {
                    warn!(job_id = %job, error = %e, "retention failed; retried next round");
                }
            }
        }
    }

    async fn apply(&self, job_id: Uuid) -> ControllerResult<()> {
        let Some(job) = self.db.job(job_id).await? else { return Ok(()) };
        let plan = self.retention.evaluate(&job, RetentionPolicy::of(&job), Utc::now()).await?;
        for d in plan.decisions.iter().filter(|d| !d.verdict.keeps()) {
            let id = d.backup.id;
            let objects = match self.backups.delete(id).await {
                Ok(n) => n,
                Err(ControllerError::FailedPrecondition(why)) => {
                    info!(job_id = %job_id, backup_id = %id, reason = %why, "retention deferred");
                    continue; // pinned or read by a restore since the decision; next round
                }
                Err(ControllerError::NotFound(_)) => continue, // deleted meanwhile
                Err(e) => return Err(e),
            };
            let why = d.verdict.reasons().join("; ");
            info!(job_id = %job_id, backup_id = %id, objects, reason = %why, "retention deleted a backup");
            self.db.audit("retention", "backup.delete", "backup", Some(id.to_string()), "ok").await?;
        }
        Ok(())
    }
}
