//! Persistence of catalog imports (migration m0015): whether the catalog knows an execution id, and
//! registering one checked manifest as a completed, imported backup — the execution row, its chunks and its
//! copy in the scanned storage — in one transaction. A backup registered meanwhile (another import, the
//! id reused) makes the insert a no-op reported as such.

use sea_orm::{DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, execute, fetch_one};
use crate::service::import_check::CheckedBackup;

impl Db {
    /// Whether any execution has this id.
    pub async fn execution_known(&self, id: Uuid) -> Result<bool, DbErr> {
        #[derive(FromQueryResult)]
        struct One {
            #[allow(dead_code)]
            one: i32,
        }
        let row: Option<One> =
            fetch_one(&self.conn, "SELECT 1 AS one FROM execution WHERE id = $1", [id.into()]).await?;
        Ok(row.is_some())
    }

    /// Registers `b` as a completed backup of `datasource` (run by `agent`), held complete in `storage`,
    /// marked imported, with no job. False (nothing written) when the id is already known.
    pub async fn register_import(
        &self,
        b: &CheckedBackup,
        datasource: Uuid,
        agent: Uuid,
        storage: Uuid,
    ) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let options = serde_json::json!({
            "trigger": "import",
            "original_datasource_id": b.original_datasource.to_string(),
            "imported_from_storage_id": storage.to_string(),
        });
        let (gk, gs, gsha) = match &b.globals {
            Some((k, s, h)) => (Some(k.clone()), Some(*s), Some(h.clone())),
            None => (None, None, None),
        };
        let n = execute(
            &txn,
            "INSERT INTO execution (id, operation, status, job_id, datasource_id, agent_id, attempt, created_at, \
             started_at, finished_at, raw_bytes, stored_bytes, chunk_count, sha256, manifest_key, tool_version, \
             server_version, options, encryption_key_id, wrapped_key_sha256, globals_key, globals_size, \
             globals_sha256, layout_sha256, trust_recorded, imported) \
             VALUES ($1, 'backup', 'completed', NULL, $2, $3, $4, $5, $5, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, true, true) ON CONFLICT (id) DO NOTHING",
            [
                b.id.into(),
                datasource.into(),
                agent.into(),
                b.attempt.into(),
                b.created_at.into(),
                b.raw_bytes.into(),
                b.stored_bytes.into(),
                i32::try_from(b.chunks.len()).unwrap_or(i32::MAX).into(),
                b.sha256.clone().into(),
                b.manifest_key.clone().into(),
                b.tool_version.clone().into(),
                b.server_version.clone().into(),
                options.into(),
                b.encryption_key_id.clone().into(),
                b.wrapped_key_sha256.clone().into(),
                gk.into(),
                gs.into(),
                gsha.into(),
                b.layout_sha256.clone().into(),
            ],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        for c in &b.chunks {
            execute(
                &txn,
                "INSERT INTO backup_chunk (execution_id, attempt, storage_id, seq, object_key, size, sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    b.id.into(),
                    b.attempt.into(),
                    storage.into(),
                    c.seq.into(),
                    c.key.clone().into(),
                    c.size.into(),
                    c.sha256.clone().into(),
                ],
            )
            .await?;
        }
        execute(
            &txn,
            "INSERT INTO backup_copy (execution_id, storage_id, complete) VALUES ($1, $2, true)",
            [b.id.into(), storage.into()],
        )
        .await?;
        execute(
            &txn,
            "INSERT INTO execution_log (execution_id, level, message) VALUES ($1, 'info', $2)",
            [
                b.id.into(),
                format!(
                    "imported into the catalog from manifest {} in storage {storage} (originally of datasource {})",
                    b.manifest_key, b.original_datasource
                )
                .into(),
            ],
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }
}
