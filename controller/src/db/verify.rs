//! Persistence of verify results per copy (`backup_copy.verify_*`, migration m0011) and the copies restores
//! and downloads may read: complete ones a verify has not found damaged or missing.

use sea_orm::{DbErr, TransactionTrait};
use uuid::Uuid;

use super::{Db, execute, fetch_all};
use crate::model::CopyRecord;

/// One copy's verdict to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyVerdict {
    /// The storage holding the copy.
    pub storage_id: Uuid,
    /// `intact`, `damaged` or `missing`.
    pub status: &'static str,
    /// Damaged chunks and other problems (JSON).
    pub detail: serde_json::Value,
}

impl Db {
    /// Storages holding a complete copy of a backup that restores and downloads may read: never verified, or
    /// found intact by the last verify. Ordered like [`Db::backup_storage_ids`].
    pub async fn usable_copy_ids(&self, id: Uuid) -> Result<Vec<Uuid>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Sid {
            storage_id: Uuid,
        }
        let rows: Vec<Sid> = fetch_all(
            &self.conn,
            "SELECT storage_id FROM backup_copy WHERE execution_id = $1 AND complete \
             AND coalesce(verify_status, 'intact') = 'intact' ORDER BY storage_id",
            [id.into()],
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.storage_id).collect())
    }

    /// The complete copies of a backup with their last verify.
    pub async fn backup_copies(&self, id: Uuid) -> Result<Vec<CopyRecord>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT storage_id, verify_status, verified_at, verify_execution_id, verify_detail FROM backup_copy \
             WHERE execution_id = $1 AND complete ORDER BY storage_id",
            [id.into()],
        )
        .await
    }

    /// Commits a verify: records each verdict on the backup's copies, appends `log` (level, line) to the
    /// verify's log and ends it `running -> completed`, in one transaction holding the verify's row. False (nothing changed) when the attempt is not the
    /// running one: a resent report changes nothing twice.
    pub async fn complete_verify(
        &self,
        id: Uuid,
        attempt: i32,
        backup: Uuid,
        verdicts: &[CopyVerdict],
        log: &[(&str, &str)],
    ) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let n = execute(
            &txn,
            "UPDATE execution SET status = 'completed', finished_at = now(), lease_until = NULL \
             WHERE id = $1 AND attempt = $2 AND status = 'running' AND operation = 'verify'",
            [id.into(), attempt.into()],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        for v in verdicts {
            execute(
                &txn,
                "UPDATE backup_copy SET verify_status = $3, verified_at = now(), verify_execution_id = $4, \
                 verify_detail = $5 WHERE execution_id = $1 AND storage_id = $2 AND complete",
                [backup.into(), v.storage_id.into(), v.status.into(), id.into(), v.detail.clone().into()],
            )
            .await?;
        }
        for (level, line) in log {
            execute(
                &txn,
                "INSERT INTO execution_log (execution_id, level, message) VALUES ($1, $2, $3)",
                [id.into(), (*level).into(), (*line).into()],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(true)
    }
}
