//! Persistence of scheduled scrubbing (migration m0014): the jobs with a verify cron, the compare-and-set on
//! their `next_verify_at` slot, the newest backup a scheduled verify reads, and queueing a verify so that at
//! most one per backup is queued or running (an existing one is returned instead; the partial unique index
//! `execution_one_active_verify` backs this up between replicas).

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, NewExecution, executions::EX_COLS, fetch_all, fetch_one};
use crate::model::Execution;

/// A job whose verify cron the scheduler looks at.
#[derive(Debug, Clone, FromQueryResult)]
pub struct VerifyScheduledJob {
    /// Job.
    pub id: Uuid,
    /// Verify cron.
    pub verify_cron: String,
    /// Time zone.
    pub time_zone: String,
    /// Next verify slot, once computed.
    pub next_verify_at: Option<DateTime<Utc>>,
}

/// What queueing a verify did.
#[derive(Debug, Clone)]
pub enum QueuedVerify {
    /// A new verify execution.
    Queued(Execution),
    /// A verify of this backup was already queued or running: that one.
    Existing(Execution),
    /// The backup is not a completed backup, or it is being deleted.
    NotReadable,
}

impl Db {
    /// Enabled jobs with a verify cron.
    pub async fn verify_scheduled_jobs(&self) -> Result<Vec<VerifyScheduledJob>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT id, verify_cron, time_zone, next_verify_at FROM backup_job \
             WHERE enabled AND verify_cron <> '' ORDER BY id",
            [],
        )
        .await
    }

    /// Moves a job's next verify slot, if it is still `expected` (compare-and-set between leaders: only the
    /// caller that moved a due slot queues its verify).
    pub async fn set_next_verify(
        &self,
        job: Uuid,
        expected: Option<DateTime<Utc>>,
        next: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        Ok(super::execute(
            &self.conn,
            "UPDATE backup_job SET next_verify_at = $3 WHERE id = $1 AND next_verify_at IS NOT DISTINCT FROM $2",
            [job.into(), expected.into(), next.into()],
        )
        .await?
            == 1)
    }

    /// The job's newest completed backup not being deleted.
    pub async fn newest_backup_of_job(&self, job: Uuid) -> Result<Option<Uuid>, DbErr> {
        #[derive(FromQueryResult)]
        struct Id {
            id: Uuid,
        }
        let row: Option<Id> = fetch_one(
            &self.conn,
            "SELECT id FROM execution WHERE job_id = $1 AND operation = 'backup' AND status = 'completed' \
             AND NOT deleting ORDER BY finished_at DESC, id DESC LIMIT 1",
            [job.into()],
        )
        .await?;
        Ok(row.map(|r| r.id))
    }

    /// Queues verify `n` of backup `backup` unless one is already queued or running for it, holding the
    /// backup's row (`FOR UPDATE`: two verifies of one backup, or a verify and a deletion, serialise here).
    pub async fn insert_verify(&self, backup: Uuid, n: &NewExecution) -> Result<QueuedVerify, DbErr> {
        #[derive(FromQueryResult)]
        struct Flag {
            deleting: bool,
        }
        let txn = self.conn.begin().await?;
        let flag: Option<Flag> = fetch_one(
            &txn,
            "SELECT deleting FROM execution WHERE id = $1 AND operation = 'backup' AND status = 'completed' \
             FOR UPDATE",
            [backup.into()],
        )
        .await?;
        if !matches!(flag, Some(Flag { deleting: false })) {
            txn.rollback().await?;
            return Ok(QueuedVerify::NotReadable);
        }
        let existing: Option<Execution> = fetch_one(
            &txn,
            &format!(
                "SELECT {EX_COLS} FROM execution WHERE source_backup_id = $1 AND operation = 'verify' \
                 AND status IN ('queued', 'running') LIMIT 1"
            ),
            [backup.into()],
        )
        .await?;
        if let Some(ex) = existing {
            txn.rollback().await?;
            return Ok(QueuedVerify::Existing(ex));
        }
        let ex = self.insert_execution_on(&txn, n).await?;
        txn.commit().await?;
        Ok(QueuedVerify::Queued(ex))
    }
}
