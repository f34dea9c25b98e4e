//! Scheduled scrubbing: checksum-only verifies a job asks for by itself — on its verify cron (the newest
//! completed backup, one verify per slot: only the leader that moves the job's `next_verify_at` from the due
//! slot queues it) and right after each of its backups commits — plus the read-rate limit each verify runs
//! with. A backup has at most one verify queued or running: queueing another returns the existing one
//! ([`queue_verify`]), so the schedule, `after_backup` and operators never pile verifies up. Pure decisions
//! ([`effective_read_rate`], [`verify_cron`]) are plain functions tested below. Called by the scheduler
//! ([`verify_round`]), the executions service (operator verifies, after-backup verifies) and dispatch.

use chrono::{DateTime, Utc};
use dg_common::error::FieldError;
use tracing::{info, warn};
use uuid::Uuid;

use super::{schedule, waker::DispatchWaker};
use crate::{
    db::{Db, NewExecution, QueuedVerify},
    error::{ControllerError, ControllerResult},
    model::{Execution, Operation, VerifyOptions},
};

/// The largest read-rate limit accepted (1 TiB/s; the agent's limiter counts in 32 bits per second).
pub const MAX_READ_RATE: u64 = 1 << 40;
/// The smallest non-zero read-rate limit accepted: slower would keep a verify running for days.
pub const MIN_READ_RATE: u64 = 1024;

/// A job's scrubbing settings, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifySchedule {
    /// Cron read in the job's time zone ("" = none), whitespace-normalised.
    pub cron: String,
    /// Verify each backup right after it commits.
    pub after_backup: bool,
    /// Read-rate limit, bytes per second (0 = the controller's default).
    pub read_rate_bytes_per_second: u64,
}

/// Validates a verify cron read in `tz` (the job's time zone): errors name `verify.cron`.
pub fn verify_cron(cron: &str, tz: &str) -> Result<String, FieldError> {
    match schedule::parse(cron, tz) {
        Ok(_) => Ok(cron.split_whitespace().collect::<Vec<_>>().join(" ")),
        Err(e) if e.field == "cron" => Err(FieldError::new("verify.cron", e.reason)),
        Err(e) => Err(e),
    }
}

/// Validates a read-rate limit given in field `field`: 0, or `MIN_READ_RATE..=MAX_READ_RATE`.
pub fn read_rate(field: &'static str, rate: u64) -> Result<u64, FieldError> {
    if rate != 0 && !(MIN_READ_RATE..=MAX_READ_RATE).contains(&rate) {
        return Err(FieldError::new(
            field,
            format!("must be 0 (no limit of its own) or {MIN_READ_RATE} to {MAX_READ_RATE} bytes per second"),
        ));
    }
    Ok(rate)
}

/// The read rate a verify runs with: the one it was queued with, else the job's, else the controller's
/// default (`verify_read_rate_bytes_per_second`); 0 at every level means unlimited.
pub fn effective_read_rate(requested: u64, job: Option<u64>, default: u64) -> u64 {
    [requested, job.unwrap_or(0), default].into_iter().find(|r| *r > 0).unwrap_or(0)
}

/// Queues a verify of backup `backup_id` run by its datasource's agent, unless one is already queued or
/// running for it: then that one is returned, with `false`. `rate` is the verify's own read-rate limit
/// (0 = the job's or the controller's); `trigger` says what queued it (`operator`, `schedule`, `after_backup`).
pub async fn queue_verify(db: &Db, backup_id: Uuid, rate: u64, trigger: &str) -> ControllerResult<(Execution, bool)> {
    let backup = db
        .execution(backup_id)
        .await?
        .filter(|b| b.operation == Operation::Backup)
        .ok_or_else(|| ControllerError::NotFound(format!("backup {backup_id}")))?;
    let ds = db
        .datasource(backup.datasource_id)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("datasource {}", backup.datasource_id)))?;
    let options = VerifyOptions { read_rate_bytes_per_second: rate, trigger: trigger.to_owned() };
    let n = NewExecution {
        operation: Operation::Verify,
        job_id: None,
        datasource_id: ds.id,
        agent_id: ds.agent_id,
        source_backup_id: Some(backup.id),
        target_database: None,
        options: options.to_json(),
    };
    match db.insert_verify(backup.id, &n).await? {
        QueuedVerify::Queued(ex) => {
            let line =
                format!("verify of backup {backup_id} queued by {trigger} (checksums only; no database is touched)");
            db.append_log(ex.id, "info", &line).await?;
            Ok((ex, true))
        }
        QueuedVerify::Existing(ex) => Ok((ex, false)),
        QueuedVerify::NotReadable => Err(ControllerError::FailedPrecondition(format!(
            "backup {backup_id} is not a completed backup or is being deleted"
        ))),
    }
}

/// Right after backup `backup` of `job` committed: queues its verify when the job scrubs after each
/// backup. A failure here is logged, not returned: the backup is committed either way, and the job's
/// verify cron (or an operator) still covers it. The caller wakes dispatch.
pub async fn queue_after_backup(db: &Db, job: Uuid, backup: Uuid) {
    let wanted = match db.job(job).await {
        Ok(j) => j.is_some_and(|j| j.verify_after_backup),
        Err(e) => {
            warn!(job_id = %job, backup_id = %backup, error = %e, "after-backup verify not queued");
            false
        }
    };
    if !wanted {
        return;
    }
    match queue_verify(db, backup, 0, "after_backup").await {
        Ok((ex, _)) => info!(job_id = %job, backup_id = %backup, execution_id = %ex.id, "after-backup verify queued"),
        Err(e) => warn!(job_id = %job, backup_id = %backup, error = %e, "after-backup verify not queued"),
    }
}

/// One scheduler round over the jobs' verify crons at `now`: a job whose slot is due moves it to the next
/// slot (compare-and-set) and, only if that move was its own, queues a verify of the job's newest completed
/// backup. Missed slots collapse into one verify, like missed backup slots.
pub async fn verify_round(db: &Db, waker: &DispatchWaker, now: DateTime<Utc>) -> ControllerResult<()> {
    for job in db.verify_scheduled_jobs().await? {
        let Ok(Some(sched)) = schedule::parse(&job.verify_cron, &job.time_zone) else { continue };
        let Some(next) = sched.next_runs(now, 1).first().copied() else { continue };
        match job.next_verify_at {
            None => {
                db.set_next_verify(job.id, None, next).await?;
            }
            Some(due) if due <= now => {
                if !db.set_next_verify(job.id, Some(due), next).await? {
                    continue; // another leader took this slot
                }
                let Some(backup) = db.newest_backup_of_job(job.id).await? else {
                    info!(job_id = %job.id, slot = %due, "scheduled verify skipped: the job has no completed backup");
                    continue;
                };
                match queue_verify(db, backup, 0, "schedule").await {
                    Ok((ex, true)) => {
                        info!(job_id = %job.id, backup_id = %backup, execution_id = %ex.id, slot = %due, "scheduled verify queued");
                        waker.wake();
                    }
                    Ok((ex, false)) => {
                        info!(job_id = %job.id, backup_id = %backup, execution_id = %ex.id, "scheduled verify: one is already queued or running");
                    }
                    // Deleted between the lookup and the queueing: the next slot picks the next newest.
                    Err(ControllerError::FailedPrecondition(_) | ControllerError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verify_itself_then_the_job_then_the_controller_sets_the_rate() {
        assert_eq!(effective_read_rate(0, None, 0), 0, "unlimited everywhere");
        assert_eq!(effective_read_rate(0, None, 5000), 5000);
        assert_eq!(effective_read_rate(0, Some(0), 5000), 5000, "a job's 0 defers to the controller");
        assert_eq!(effective_read_rate(0, Some(2000), 5000), 2000, "the job's value wins over the default");
        assert_eq!(effective_read_rate(3000, Some(2000), 5000), 3000, "the request's value wins over the job's");
        assert_eq!(effective_read_rate(3000, None, 0), 3000);
    }

    #[test]
    fn validation_names_the_verify_fields() {
        assert_eq!(verify_cron("", "UTC").expect("none"), "");
        assert_eq!(verify_cron("  0  4 * * * ", "Europe/Paris").expect("valid"), "0 4 * * *");
        for bad in ["61 * * * *", "nope", "0 0 31 2 *"] {
            let e = verify_cron(bad, "UTC").expect_err(bad);
            assert_eq!(e.field, "verify.cron", "{bad}");
            assert!(e.to_string().starts_with("verify.cron: "), "{e}");
        }
        assert_eq!(verify_cron("0 4 * * *", "Mars/Olympus").expect_err("tz").field, "time_zone");
        assert_eq!(read_rate("f", 0), Ok(0));
        assert_eq!(read_rate("f", MIN_READ_RATE), Ok(MIN_READ_RATE));
        assert_eq!(read_rate("f", MAX_READ_RATE), Ok(MAX_READ_RATE));
        for bad in [1, MIN_READ_RATE - 1, MAX_READ_RATE + 1, u64::MAX] {
            assert_eq!(
                read_rate("verify.read_rate_bytes_per_second", bad).expect_err("bad").field,
                "verify.read_rate_bytes_per_second"
            );
        }
    }
}
