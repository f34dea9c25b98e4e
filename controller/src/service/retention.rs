//! Retention (the cleanup worker): keeps the newest `max_backups` completed backups of a job when set, else
//! the newest `keep_daily + keep_weekly + keep_monthly`, and deletes the rest (objects in every storage
//! first, then rows). Runs after each successful backup of the job and periodically for every job. Needs
//! only PostgreSQL (and the agents of local storages), so it keeps running while Redis is down.

use std::time::Duration;

use tokio::{sync::mpsc, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::backups::BackupsService;
use crate::{
    db::Db,
    error::{ControllerError, ControllerResult},
    model::BackupJob,
};

/// How many completed backups a job keeps; `None` keeps all of them.
pub fn keep_count(job: &BackupJob) -> Option<usize> {
    let n = if job.max_backups > 0 {
        job.max_backups
    } else {
        job.keep_daily.saturating_add(job.keep_weekly).saturating_add(job.keep_monthly)
    };
    usize::try_from(n).ok().filter(|n| *n > 0)
}

/// The backups to delete, given the job's completed backups newest first.
pub fn to_delete(newest_first: &[Uuid], keep: Option<usize>) -> Vec<Uuid> {
    match keep {
        Some(k) => newest_first.iter().skip(k).copied().collect(),
        None => Vec::new(),
    }
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
    backups: BackupsService,
    rx: mpsc::Receiver<Uuid>,
    interval: Duration,
    orphan_grace: Duration,
}

impl RetentionTask {
    /// A task and the handle that feeds it.
    pub fn new(db: Db, backups: BackupsService, interval: Duration, orphan_grace: Duration) -> (Self, RetentionHandle) {
        let (tx, rx) = mpsc::channel(256);
        (Self { db, backups, rx, interval, orphan_grace }, RetentionHandle(tx))
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
        let backups = self.db.completed_backup_ids(job_id).await?;
        for id in to_delete(&backups, keep_count(&job)) {
            let objects = match self.backups.delete(id).await {
                Ok(n) => n,
                Err(ControllerError::FailedPrecondition(why)) => {
                    info!(job_id = %job_id, backup_id = %id, reason = %why, "retention deferred");
                    continue; // a restore reads it; next round
                }
                Err(e) => return Err(e),
            };
            info!(job_id = %job_id, backup_id = %id, objects, "retention deleted a backup");
            self.db.audit("retention", "backup.delete", "backup", Some(id.to_string()), "ok").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(max: i32, d: i32, w: i32, m: i32) -> BackupJob {
        BackupJob {
            id: Uuid::now_v7(),
            name: "j".into(),
            datasource_id: Uuid::now_v7(),
            cron: String::new(),
            time_zone: "UTC".into(),
            max_backups: max,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            storage_strategy: crate::model::Strategy::Fallback,
            compression_level: 3,
            enabled: true,
            retry_max_attempts: 1,
            retry_backoff_secs: 60,
            encryption_key_id: String::new(),
            include_globals: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn max_backups_wins_else_the_sum_of_keeps() {
        assert_eq!(keep_count(&job(3, 7, 4, 12)), Some(3));
        assert_eq!(keep_count(&job(0, 7, 4, 12)), Some(23));
        assert_eq!(keep_count(&job(0, 0, 0, 0)), None);
        let ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
        for keep in 0..12 {
            let del = to_delete(&ids, (keep > 0).then_some(keep));
            let expect = if keep == 0 { 0 } else { ids.len().saturating_sub(keep) };
            assert_eq!(del.len(), expect, "keep {keep}");
            assert!(del.iter().all(|d| !ids[..keep.min(ids.len())].contains(d)), "the newest are kept");
        }
    }
}
