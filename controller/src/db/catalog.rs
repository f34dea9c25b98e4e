//! Persistence of the catalog: datasources, storages and backup jobs (with their ordered storage targets).

use sea_orm::{DbErr, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::{BackupJob, Datasource, Storage};

const DS_COLS: &str = "id, name, engine, host, port, database_name, username, password_ciphertext, tls_mode, \
                       agent_id, labels, created_at, updated_at";
const ST_COLS: &str = "id, name, kind, config, agent_id, created_at";
const JOB_COLS: &str = "id, name, datasource_id, cron, time_zone, max_backups, keep_daily, keep_weekly, \
                        keep_monthly, storage_strategy, compression_level, enabled, created_at";

impl Db {
    /// Inserts a datasource (its id, already used as AAD for the password, is kept).
    pub async fn insert_datasource(&self, d: &Datasource) -> Result<Datasource, DbErr> {
        let row = fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO datasource (id, name, engine, host, port, database_name, username, password_ciphertext, \
                 tls_mode, agent_id, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {DS_COLS}"
            ),
            [
                d.id.into(),
                d.name.clone().into(),
                d.engine.into(),
                d.host.clone().into(),
                d.port.into(),
                d.database_name.clone().into(),
                d.username.clone().into(),
                d.password_ciphertext.clone().into(),
                d.tls_mode.into(),
                d.agent_id.into(),
                d.labels.clone().into(),
            ],
        )
        .await?;
        row.ok_or_else(|| DbErr::RecordNotInserted)
    }

    /// One datasource.
    pub async fn datasource(&self, id: Uuid) -> Result<Option<Datasource>, DbErr> {
        fetch_one(
            &self.conn,
            &format!("SELECT {DS_COLS} FROM datasource WHERE id = $1"),
            [id.into()],
        )
        .await
    }

    /// Datasources by name.
    pub async fn list_datasources(&self, page: Page) -> Result<Vec<Datasource>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {DS_COLS} FROM datasource ORDER BY name OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Inserts a storage.
    pub async fn insert_storage(&self, s: &Storage) -> Result<Storage, DbErr> {
        let row = fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO storage (id, name, kind, config, agent_id) VALUES ($1, $2, $3, $4, $5) RETURNING {ST_COLS}"
            ),
            [s.id.into(), s.name.clone().into(), s.kind.into(), s.config.clone().into(), s.agent_id.into()],
        )
        .await?;
        row.ok_or_else(|| DbErr::RecordNotInserted)
    }

    /// One storage.
    pub async fn storage(&self, id: Uuid) -> Result<Option<Storage>, DbErr> {
        fetch_one(
            &self.conn,
            &format!("SELECT {ST_COLS} FROM storage WHERE id = $1"),
            [id.into()],
        )
        .await
    }

    /// Storages by name.
    pub async fn list_storages(&self, page: Page) -> Result<Vec<Storage>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {ST_COLS} FROM storage ORDER BY name OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Inserts a job and its ordered storage targets in one transaction.
    pub async fn insert_job(
        &self,
        j: &BackupJob,
        storage_ids: &[Uuid],
    ) -> Result<BackupJob, DbErr> {
        let txn = self.conn.begin().await?;
        let row: Option<BackupJob> = fetch_one(
            &txn,
            &format!(
                "INSERT INTO backup_job (id, name, datasource_id, cron, time_zone, max_backups, keep_daily, \
                 keep_weekly, keep_monthly, storage_strategy, compression_level, enabled) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {JOB_COLS}"
            ),
            [
                j.id.into(),
                j.name.clone().into(),
                j.datasource_id.into(),
                j.cron.clone().into(),
                j.time_zone.clone().into(),
                j.max_backups.into(),
                j.keep_daily.into(),
                j.keep_weekly.into(),
                j.keep_monthly.into(),
                j.storage_strategy.into(),
                j.compression_level.into(),
                j.enabled.into(),
            ],
        )
        .await?;
        let row = row.ok_or(DbErr::RecordNotInserted)?;
        for (pos, sid) in storage_ids.iter().enumerate() {
            execute(
                &txn,
                "INSERT INTO backup_job_storage (job_id, position, storage_id) VALUES ($1, $2, $3)",
                [j.id.into(), (pos as i32).into(), (*sid).into()],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(row)
    }

    /// One job.
    pub async fn job(&self, id: Uuid) -> Result<Option<BackupJob>, DbErr> {
        fetch_one(
            &self.conn,
            &format!("SELECT {JOB_COLS} FROM backup_job WHERE id = $1"),
            [id.into()],
        )
        .await
    }

    /// A job's storages, in the job's order.
    pub async fn job_storages(&self, job_id: Uuid) -> Result<Vec<Storage>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT s.id, s.name, s.kind, s.config, s.agent_id, s.created_at FROM backup_job_storage js \
             JOIN storage s ON s.id = js.storage_id WHERE js.job_id = $1 ORDER BY js.position",
            [job_id.into()],
        )
        .await
    }

    /// Jobs by name.
    pub async fn list_jobs(&self, page: Page) -> Result<Vec<BackupJob>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {JOB_COLS} FROM backup_job ORDER BY name OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }
}
