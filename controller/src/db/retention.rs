//! Persistence for retention: the completed backups of a job as the retention decision sees them, and
//! pinning. A pin is set only on a completed backup whose deletion has not started, and deletion
//! (`mark_deleting`) refuses a pinned backup under the same row lock, so the two never cross.

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult};
use uuid::Uuid;

use super::{Db, execute, fetch_all};
use crate::service::retention_policy::RetentionCandidate;

#[derive(FromQueryResult)]
struct CandidateRow {
    id: Uuid,
    finished_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    pinned: bool,
    pin_reason: Option<String>,
    in_use: bool,
    good: bool,
}

impl Db {
    /// A job's completed backups, newest first, each with its pin, whether a queued or running execution
    /// (restore, verification) reads it, and whether it is good: at least one complete copy that no verify
    /// found damaged or missing (the copies restores and downloads may use).
    pub async fn retention_candidates(&self, job: Uuid) -> Result<Vec<RetentionCandidate>, DbErr> {
        let rows: Vec<CandidateRow> = fetch_all(
            &self.conn,
            "SELECT b.id, b.finished_at, b.created_at, b.pinned, b.pin_reason, \
             EXISTS (SELECT 1 FROM execution r WHERE r.source_backup_id = b.id \
                     AND r.status IN ('queued', 'running')) AS in_use, \
             EXISTS (SELECT 1 FROM backup_copy c WHERE c.execution_id = b.id AND c.complete \
                     AND coalesce(c.verify_status, 'intact') = 'intact') AS good \
             FROM execution b WHERE b.job_id = $1 AND b.operation = 'backup' AND b.status = 'completed' \
             ORDER BY b.finished_at DESC, b.id DESC",
            [job.into()],
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RetentionCandidate {
                id: r.id,
                completed_at: r.finished_at.unwrap_or(r.created_at),
                good: r.good,
                pin: r.pinned.then(|| r.pin_reason.unwrap_or_default()),
                in_use: r.in_use,
            })
            .collect())
    }

    /// Pins (`Some(reason)`) or unpins a completed backup that is not being deleted; `false` when there is
    /// no such backup.
    pub async fn set_pin(&self, backup: Uuid, reason: Option<&str>) -> Result<bool, DbErr> {
        let n = execute(
            &self.conn,
            "UPDATE execution SET pinned = $2, pin_reason = $3 \
             WHERE id = $1 AND operation = 'backup' AND status = 'completed' AND NOT deleting",
            [backup.into(), reason.is_some().into(), reason.map(str::to_owned).into()],
        )
        .await?;
        Ok(n == 1)
    }
}
