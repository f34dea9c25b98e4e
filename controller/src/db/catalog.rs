//! Persistence of the catalog: datasources, storages and backup jobs (with their ordered storage targets).
//! Deletions check their preconditions inside the same transaction that deletes, so a concurrent change
//! cannot slip between the check and the delete.

use sea_orm::{DatabaseTransaction, DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::{BackupJob, Datasource, Storage};

const DS_COLS: &str = "id, name, engine, host, port, database_name, username, password_ciphertext, tls_mode, \
                       agent_id, labels, created_at, updated_at";
const ST_COLS: &str = "id, name, kind, config, agent_id, credentials_ciphertext, labels, created_at, updated_at";
const JOB_COLS: &str = "id, name, datasource_id, cron, time_zone, max_backups, keep_daily, keep_weekly, \
                        keep_monthly, storage_strategy, compression_level, enabled, retry_max_attempts, \
                        retry_backoff_secs, encryption_key_id, include_globals, created_at, updated_at, \
                        retention_mode, keep_hourly, keep_yearly, min_backups, max_age_secs, rpo_secs, labels, \
                        rpo_breached_since, verify_cron, verify_after_backup, verify_read_rate, \
                        compression_min_level, compression_max_level, parallel";

/// Outcome of a guarded deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted; counts of what went along.
    Deleted {
        /// Dependent rows removed or changed (jobs, executions).
        first: u32,
        /// Second kind of dependent rows.
        second: u32,
    },
    /// Not deleted, and why.
    Refused(String),
    /// No such row.
    NotFound,
}

#[derive(FromQueryResult)]
struct Count {
    n: i64,
}

async fn count(txn: &DatabaseTransaction, sql: &str, id: Uuid) -> Result<i64, DbErr> {
    Ok(fetch_one::<Count>(txn, sql, [id.into()]).await?.map_or(0, |c| c.n))
}

impl Db {
    /// Inserts a datasource (its id, already used as AAD for the password, is kept).
    pub async fn insert_datasource(&self, d: &Datasource) -> Result<Datasource, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO datasource (id, name, engine, host, port, database_name, username, password_ciphertext, \
                 tls_mode, agent_id, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {DS_COLS}"
            ),
            ds_values(d),
        )
        .await?
        .ok_or(DbErr::RecordNotInserted)
    }

    /// Writes every mutable field of a datasource.
    pub async fn update_datasource(&self, d: &Datasource) -> Result<Option<Datasource>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE datasource SET name = $2, engine = $3, host = $4, port = $5, database_name = $6, \
                 username = $7, password_ciphertext = $8, tls_mode = $9, agent_id = $10, labels = $11, \
                 updated_at = now() WHERE id = $1 RETURNING {DS_COLS}"
            ),
            ds_values(d),
        )
        .await
    }

    /// One datasource.
    pub async fn datasource(&self, id: Uuid) -> Result<Option<Datasource>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {DS_COLS} FROM datasource WHERE id = $1"), [id.into()]).await
    }

    /// Datasources by name.
    pub async fn list_datasources(&self, page: Page) -> Result<Vec<Datasource>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {DS_COLS} FROM datasource ORDER BY name, id OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Deletes a datasource unless it has backups or unfinished executions; with `force` also its jobs.
    pub async fn delete_datasource(&self, id: Uuid, force: bool) -> Result<Deletion, DbErr> {
        let txn = self.conn.begin().await?;
        if count(&txn, "SELECT count(*) AS n FROM (SELECT 1 FROM datasource WHERE id = $1 FOR UPDATE) x", id).await?
            == 0
        {
            return Ok(Deletion::NotFound);
        }
        let backups = count(
            &txn,
            "SELECT count(*) AS n FROM execution WHERE datasource_id = $1 AND operation = 'backup' AND status = 'completed'",
            id,
        )
        .await?;
        if backups > 0 {
            return Ok(Deletion::Refused(format!("the datasource has {backups} backup(s); delete them first")));
        }
        let active = count(
            &txn,
            "SELECT count(*) AS n FROM execution WHERE datasource_id = $1 AND status IN ('queued', 'running')",
            id,
        )
        .await?;
        if active > 0 {
            return Ok(Deletion::Refused(format!("{active} execution(s) of the datasource are queued or running")));
        }
        let jobs = count(&txn, "SELECT count(*) AS n FROM backup_job WHERE datasource_id = $1", id).await?;
        if jobs > 0 && !force {
            return Ok(Deletion::Refused(format!(
                "{jobs} backup job(s) use the datasource; pass force to delete them too"
            )));
        }
        let executions = execute(&txn, "DELETE FROM execution WHERE datasource_id = $1", [id.into()]).await?;
        let jobs = execute(&txn, "DELETE FROM backup_job WHERE datasource_id = $1", [id.into()]).await?;
        execute(&txn, "DELETE FROM health_check WHERE target_kind = 'datasource' AND target_id = $1", [id.into()])
            .await?;
        execute(&txn, "DELETE FROM datasource WHERE id = $1", [id.into()]).await?;
        txn.commit().await?;
        Ok(Deletion::Deleted {
            first: u32::try_from(jobs).unwrap_or(u32::MAX),
            second: u32::try_from(executions).unwrap_or(u32::MAX),
        })
    }

    /// Inserts a storage.
    pub async fn insert_storage(&self, s: &Storage) -> Result<Storage, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO storage (id, name, kind, config, agent_id, credentials_ciphertext, labels) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ST_COLS}"
            ),
            st_values(s),
        )
        .await?
        .ok_or(DbErr::RecordNotInserted)
    }

    /// Writes every mutable field of a storage.
    pub async fn update_storage(&self, s: &Storage) -> Result<Option<Storage>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE storage SET name = $2, kind = $3, config = $4, agent_id = $5, credentials_ciphertext = $6, \
                 labels = $7, updated_at = now() WHERE id = $1 RETURNING {ST_COLS}"
            ),
            st_values(s),
        )
        .await
    }

    /// One storage.
    pub async fn storage(&self, id: Uuid) -> Result<Option<Storage>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {ST_COLS} FROM storage WHERE id = $1"), [id.into()]).await
    }

    /// Storages by name.
    pub async fn list_storages(&self, page: Page) -> Result<Vec<Storage>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {ST_COLS} FROM storage ORDER BY name, id OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Deletes a storage unless a backup has a copy in it; with `force` removes it from the jobs targeting
    /// it, unless a job would be left with none.
    pub async fn delete_storage(&self, id: Uuid, force: bool) -> Result<Deletion, DbErr> {
        let txn = self.conn.begin().await?;
        if count(&txn, "SELECT count(*) AS n FROM (SELECT 1 FROM storage WHERE id = $1 FOR UPDATE) x", id).await? == 0 {
            return Ok(Deletion::NotFound);
        }
        let copies = count(&txn, "SELECT count(*) AS n FROM backup_copy WHERE storage_id = $1", id).await?;
        if copies > 0 {
            return Ok(Deletion::Refused(format!("{copies} backup(s) have a copy in the storage; delete them first")));
        }
        let active = count(
            &txn,
            "SELECT count(*) AS n FROM backup_chunk c JOIN execution e ON e.id = c.execution_id \
             WHERE c.storage_id = $1 AND e.status IN ('queued', 'running')",
            id,
        )
        .await?;
        if active > 0 {
            return Ok(Deletion::Refused("a running backup is writing to the storage".into()));
        }
        let jobs = count(&txn, "SELECT count(*) AS n FROM backup_job_storage WHERE storage_id = $1", id).await?;
        if jobs > 0 && !force {
            return Ok(Deletion::Refused(format!(
                "{jobs} backup job(s) target the storage; pass force to remove it from them"
            )));
        }
        let orphaned = count(
            &txn,
            "SELECT count(*) AS n FROM backup_job_storage js WHERE js.storage_id = $1 AND NOT EXISTS \
             (SELECT 1 FROM backup_job_storage o WHERE o.job_id = js.job_id AND o.storage_id <> $1)",
            id,
        )
        .await?;
        if orphaned > 0 {
            return Ok(Deletion::Refused(format!("{orphaned} job(s) have no other storage; change them first")));
        }
        let updated = execute(&txn, "DELETE FROM backup_job_storage WHERE storage_id = $1", [id.into()]).await?;
        // Chunks of failed attempts only (complete copies were refused above).
        execute(&txn, "DELETE FROM backup_chunk WHERE storage_id = $1", [id.into()]).await?;
        execute(&txn, "DELETE FROM health_check WHERE target_kind = 'storage' AND target_id = $1", [id.into()]).await?;
        execute(&txn, "DELETE FROM storage WHERE id = $1", [id.into()]).await?;
        txn.commit().await?;
        Ok(Deletion::Deleted { first: u32::try_from(updated).unwrap_or(u32::MAX), second: 0 })
    }

    /// Inserts a job and its ordered storage targets in one transaction.
    pub async fn insert_job(&self, j: &BackupJob, storage_ids: &[Uuid]) -> Result<BackupJob, DbErr> {
        let txn = self.conn.begin().await?;
        let row: BackupJob = fetch_one(
            &txn,
            &format!(
                "INSERT INTO backup_job (id, name, datasource_id, cron, time_zone, max_backups, keep_daily, \
                 keep_weekly, keep_monthly, storage_strategy, compression_level, enabled, retry_max_attempts, \
                 retry_backoff_secs, encryption_key_id, include_globals, retention_mode, keep_hourly, keep_yearly, \
                 min_backups, max_age_secs, rpo_secs, labels, verify_cron, verify_after_backup, verify_read_rate, \
                 compression_min_level, compression_max_level, parallel) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23, $24, $25, $26, $27, $28, $29) RETURNING {JOB_COLS}"
            ),
            job_values(j),
        )
        .await?
        .ok_or(DbErr::RecordNotInserted)?;
        set_targets(&txn, j.id, storage_ids).await?;
        txn.commit().await?;
        Ok(row)
    }

    /// Writes every mutable field of a job, and its targets when given.
    pub async fn update_job(&self, j: &BackupJob, storage_ids: Option<&[Uuid]>) -> Result<Option<BackupJob>, DbErr> {
        let txn = self.conn.begin().await?;
        let row: Option<BackupJob> = fetch_one(
            &txn,
            &format!(
                "UPDATE backup_job SET name = $2, datasource_id = $3, cron = $4, time_zone = $5, max_backups = $6, \
                 keep_daily = $7, keep_weekly = $8, keep_monthly = $9, storage_strategy = $10, \
                 compression_level = $11, enabled = $12, retry_max_attempts = $13, retry_backoff_secs = $14, \
                 encryption_key_id = $15, include_globals = $16, retention_mode = $17, keep_hourly = $18, \
                 keep_yearly = $19, min_backups = $20, max_age_secs = $21, rpo_secs = $22, labels = $23, \
                 rpo_breached_since = CASE WHEN $22 = 0 THEN NULL ELSE rpo_breached_since END, \
                 verify_cron = $24, verify_after_backup = $25, verify_read_rate = $26, next_run_at = NULL, \
                 compression_min_level = $27, compression_max_level = $28, parallel = $29, \
                 next_verify_at = NULL, updated_at = now() WHERE id = $1 RETURNING {JOB_COLS}"
            ),
            job_values(j),
        )
        .await?;
        if row.is_some()
            && let Some(ids) = storage_ids
        {
            execute(&txn, "DELETE FROM backup_job_storage WHERE job_id = $1", [j.id.into()]).await?;
            set_targets(&txn, j.id, ids).await?;
        }
        txn.commit().await?;
        Ok(row)
    }

    /// Deletes a job; its queued runs are cancelled, its backups stay. `None` when unknown.
    pub async fn delete_job(&self, id: Uuid) -> Result<Option<u32>, DbErr> {
        let txn = self.conn.begin().await?;
        let cancelled = execute(
            &txn,
            "UPDATE execution SET status = 'cancelled', error = 'backup job deleted', finished_at = now() \
             WHERE job_id = $1 AND status = 'queued'",
            [id.into()],
        )
        .await?;
        let n = execute(&txn, "DELETE FROM backup_job WHERE id = $1", [id.into()]).await?;
        if n == 0 {
            txn.rollback().await?;
            return Ok(None);
        }
        txn.commit().await?;
        Ok(Some(u32::try_from(cancelled).unwrap_or(u32::MAX)))
    }

    /// One job.
    pub async fn job(&self, id: Uuid) -> Result<Option<BackupJob>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {JOB_COLS} FROM backup_job WHERE id = $1"), [id.into()]).await
    }

    /// A job's storages, in the job's order.
    pub async fn job_storages(&self, job_id: Uuid) -> Result<Vec<Storage>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT s.id, s.name, s.kind, s.config, s.agent_id, s.credentials_ciphertext, s.labels, s.created_at, s.updated_at \
             FROM backup_job_storage js JOIN storage s ON s.id = js.storage_id WHERE js.job_id = $1 \
             ORDER BY js.position",
            [job_id.into()],
        )
        .await
    }

    /// Jobs by name.
    pub async fn list_jobs(&self, page: Page) -> Result<Vec<BackupJob>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {JOB_COLS} FROM backup_job ORDER BY name, id OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }
}

impl Db {
    /// Whether jobs targeting `storage` back up datasources bound to an agent other than `agent`.
    pub async fn storage_used_by_other_agents(&self, storage: Uuid, agent: Uuid) -> Result<bool, DbErr> {
        Ok(fetch_one::<Count>(
            &self.conn,
            "SELECT count(*) AS n FROM backup_job_storage js JOIN backup_job j ON j.id = js.job_id \
             JOIN datasource d ON d.id = j.datasource_id WHERE js.storage_id = $1 AND d.agent_id <> $2",
            [storage.into(), agent.into()],
        )
        .await?
        .is_some_and(|c| c.n > 0))
    }
}

/// A job the scheduler looks at.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ScheduledJob {
    /// Job.
    pub id: Uuid,
    /// Cron.
    pub cron: String,
    /// Time zone.
    pub time_zone: String,
    /// Next slot, once computed.
    pub next_run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Datasource.
    pub datasource_id: Uuid,
    /// The datasource's agent.
    pub agent_id: Uuid,
}

#[derive(FromQueryResult)]
struct IdRow {
    id: Uuid,
}

impl Db {
    /// Enabled jobs with a schedule.
    pub async fn scheduled_jobs(&self) -> Result<Vec<ScheduledJob>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT j.id, j.cron, j.time_zone, j.next_run_at, j.datasource_id, d.agent_id FROM backup_job j \
             JOIN datasource d ON d.id = j.datasource_id WHERE j.enabled AND j.cron <> '' ORDER BY j.id",
            [],
        )
        .await
    }

    /// Moves a job's next slot, if it is still `expected` (compare-and-set between leaders).
    pub async fn set_next_run(
        &self,
        job: Uuid,
        expected: Option<chrono::DateTime<chrono::Utc>>,
        next: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE backup_job SET next_run_at = $3 WHERE id = $1 AND next_run_at IS NOT DISTINCT FROM $2",
            [job.into(), expected.into(), next.into()],
        )
        .await?
            == 1)
    }

    /// Queues the backup of one scheduled slot; false when that slot was queued already.
    pub async fn insert_scheduled(
        &self,
        job: Uuid,
        datasource: Uuid,
        agent: Uuid,
        slot: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, DbErr> {
        let id = Uuid::now_v7();
        let n = execute(
            &self.conn,
            "INSERT INTO execution (id, operation, status, job_id, datasource_id, agent_id, scheduled_for, options) \
             VALUES ($1, 'backup', 'queued', $2, $3, $4, $5, '{\"trigger\": \"schedule\"}') \
             ON CONFLICT (job_id, scheduled_for) WHERE scheduled_for IS NOT NULL DO NOTHING",
            [id.into(), job.into(), datasource.into(), agent.into(), slot.into()],
        )
        .await?;
        if n == 1 {
            execute(
                &self.conn,
                "INSERT INTO execution_log (execution_id, level, message) VALUES ($1, 'info', $2)",
                [id.into(), format!("queued by the schedule (slot {slot})").into()],
            )
            .await?;
        }
        Ok(n == 1)
    }

    /// Every job id.
    pub async fn all_job_ids(&self) -> Result<Vec<Uuid>, DbErr> {
        Ok(fetch_all::<IdRow>(&self.conn, "SELECT id FROM backup_job ORDER BY id", [])
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }
}

async fn set_targets(txn: &DatabaseTransaction, job: Uuid, storage_ids: &[Uuid]) -> Result<(), DbErr> {
    for (pos, sid) in storage_ids.iter().enumerate() {
        execute(
            txn,
            "INSERT INTO backup_job_storage (job_id, position, storage_id) VALUES ($1, $2, $3)",
            [job.into(), i32::try_from(pos).unwrap_or(i32::MAX).into(), (*sid).into()],
        )
        .await?;
    }
    Ok(())
}

fn ds_values(d: &Datasource) -> [sea_orm::Value; 11] {
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
    ]
}

fn st_values(s: &Storage) -> [sea_orm::Value; 7] {
    [
        s.id.into(),
        s.name.clone().into(),
        s.kind.into(),
        s.config.clone().into(),
        s.agent_id.into(),
        s.credentials_ciphertext.clone().into(),
        s.labels.clone().into(),
    ]
}

fn job_values(j: &BackupJob) -> [sea_orm::Value; 29] {
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
        j.retry_max_attempts.into(),
        j.retry_backoff_secs.into(),
        j.encryption_key_id.clone().into(),
        j.include_globals.into(),
        j.retention_mode.into(),
        j.keep_hourly.into(),
        j.keep_yearly.into(),
        j.min_backups.into(),
        j.max_age_secs.into(),
        j.rpo_secs.into(),
        j.labels.clone().into(),
        j.verify_cron.clone().into(),
        j.verify_after_backup.into(),
        j.verify_read_rate.into(),
        j.compression_min_level.into(),
        j.compression_max_level.into(),
        j.parallel.into(),
    ]
}
