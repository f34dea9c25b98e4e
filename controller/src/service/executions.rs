//! Executions: queueing backups (RunNow) and restores, reading them back, and applying what agents report
//! about them. Agent reports are accepted only from the agent the execution is assigned to and only for
//! its current attempt.

use uuid::Uuid;

use super::dispatch::DispatchWaker;
use crate::{
    db::{BackupOutcome, ChunkReport, Db, ExecutionFilter, NewExecution, Page},
    error::{ControllerError, ControllerResult},
    model::{Chunk, Execution, LogLine, Operation, Status},
};

/// A validated restore request.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Backup.
    pub backup_id: Uuid,
    /// Target datasource (default: the backup's).
    pub target_datasource_id: Option<Uuid>,
    /// Target database (default: the target datasource's).
    pub target_database: Option<String>,
    /// Create the database when missing.
    pub create_database: bool,
    /// Clean before restoring.
    pub drop_existing: bool,
    /// Must equal the effective target database.
    pub confirm_target_database: String,
}

/// A backup with its copies and chunks.
#[derive(Debug, Clone)]
pub struct BackupDetail {
    /// The backup execution.
    pub execution: Execution,
    /// Storages with a complete copy.
    pub storage_ids: Vec<Uuid>,
    /// Chunks of every copy.
    pub chunks: Vec<Chunk>,
}

/// Execution service.
#[derive(Clone, Debug)]
pub struct ExecutionsService {
    db: Db,
    waker: DispatchWaker,
}

impl ExecutionsService {
    /// New service.
    pub fn new(db: Db, waker: DispatchWaker) -> Self {
        Self { db, waker }
    }

    /// Asks dispatch for a round (e.g. an agent connected).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Queues a backup of a job now.
    pub async fn run_now(&self, job_id: Uuid) -> ControllerResult<Execution> {
        let job = self
            .db
            .job(job_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("backup job {job_id}")))?;
        let ds = self
            .db
            .datasource(job.datasource_id)
            .await?
            .ok_or_else(|| {
                ControllerError::NotFound(format!("datasource {}", job.datasource_id))
            })?;
        let ex = self
            .db
            .insert_execution(&NewExecution {
                operation: Operation::Backup,
                job_id: Some(job.id),
                datasource_id: ds.id,
                agent_id: ds.agent_id,
                source_backup_id: None,
                target_database: None,
                options: serde_json::json!({ "trigger": "run_now" }),
            })
            .await?;
        self.db
            .append_log(
                ex.id,
                "info",
                &format!("queued by RunNow of job {}", job.name),
            )
            .await?;
        self.waker.wake();
        Ok(ex)
    }

    /// Queues a restore.
    pub async fn restore(&self, r: RestoreRequest) -> ControllerResult<Execution> {
        let backup = self.backup_execution(r.backup_id).await?;
        let source = self
            .db
            .datasource(backup.datasource_id)
            .await?
            .ok_or_else(|| {
                ControllerError::NotFound(format!("datasource {}", backup.datasource_id))
            })?;
        let target = match r.target_datasource_id {
            Some(id) => self
                .db
                .datasource(id)
                .await?
                .ok_or_else(|| ControllerError::NotFound(format!("datasource {id}")))?,
            None => source.clone(),
        };
        if target.engine != source.engine {
            return Err(ControllerError::FailedPrecondition(format!(
                "target_datasource_id: engine {} differs from the backup's engine {}",
                target.engine, source.engine
            )));
        }
        let database = r
            .target_database
            .clone()
            .unwrap_or_else(|| target.database_name.clone());
        if r.confirm_target_database != database {
            return Err(ControllerError::Invalid(dg_common::error::FieldError::new(
                "confirm_target_database",
                format!("must repeat the target database name \"{database}\""),
            )));
        }
        let ex = self
            .db
            .insert_execution(&NewExecution {
                operation: Operation::Restore,
                job_id: None,
                datasource_id: target.id,
                agent_id: target.agent_id,
                source_backup_id: Some(backup.id),
                target_database: Some(database.clone()),
                options: serde_json::json!({
                    "create_database": r.create_database,
                    "drop_existing": r.drop_existing,
                }),
            })
            .await?;
        self.db
            .append_log(
                ex.id,
                "info",
                &format!(
                    "restore of backup {} into database {database} queued",
                    backup.id
                ),
            )
            .await?;
        self.waker.wake();
        Ok(ex)
    }

    /// One execution.
    pub async fn get(&self, id: Uuid) -> ControllerResult<Execution> {
        self.db
            .execution(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("execution {id}")))
    }

    /// A page of executions.
    pub async fn list(&self, f: &ExecutionFilter, page: Page) -> ControllerResult<Vec<Execution>> {
        Ok(self.db.list_executions(f, page).await?)
    }

    /// Log lines after row id `after`.
    pub async fn logs(&self, id: Uuid, after: i64, limit: i64) -> ControllerResult<Vec<LogLine>> {
        self.get(id).await?;
        Ok(self.db.logs(id, after, limit).await?)
    }

    /// Completed backups.
    pub async fn list_backups(
        &self,
        datasource: Option<Uuid>,
        page: Page,
    ) -> ControllerResult<Vec<(Execution, Vec<Uuid>)>> {
        let mut out = Vec::new();
        for ex in self.db.list_backups(datasource, page).await? {
            let copies = self.db.backup_storage_ids(ex.id).await?;
            out.push((ex, copies));
        }
        Ok(out)
    }

    /// One backup with chunks.
    pub async fn backup(&self, id: Uuid) -> ControllerResult<BackupDetail> {
        let execution = self.backup_execution(id).await?;
        let storage_ids = self.db.backup_storage_ids(id).await?;
        let chunks = self
            .db
            .chunks(id, execution.attempt)
            .await?
            .into_iter()
            .filter(|c| storage_ids.contains(&c.storage_id))
            .collect();
        Ok(BackupDetail {
            execution,
            storage_ids,
            chunks,
        })
    }

    async fn backup_execution(&self, id: Uuid) -> ControllerResult<Execution> {
        match self.db.execution(id).await? {
            Some(e) if e.operation == Operation::Backup && e.status == Status::Completed => Ok(e),
            _ => Err(ControllerError::NotFound(format!("backup {id}"))),
        }
    }

    // ---- agent reports -------------------------------------------------------------------------------------

    async fn owned(&self, agent: Uuid, id: Uuid) -> ControllerResult<Execution> {
        match self.db.execution(id).await? {
            Some(e) if e.agent_id == agent => Ok(e),
            _ => Err(ControllerError::NotFound(format!("execution {id}"))),
        }
    }

    /// A chunk is stored. Stale attempts are rejected.
    pub async fn report_chunk(&self, agent: Uuid, c: ChunkReport) -> ControllerResult<()> {
        self.owned(agent, c.execution_id).await?;
        if !self.db.record_chunk(&c).await? {
            return Err(ControllerError::FailedPrecondition(format!(
                "execution {} attempt {} is not running",
                c.execution_id, c.attempt
            )));
        }
        Ok(())
    }

    /// A log line.
    pub async fn report_log(
        &self,
        agent: Uuid,
        id: Uuid,
        level: &str,
        message: &str,
    ) -> ControllerResult<()> {
        self.owned(agent, id).await?;
        let level = match level {
            "warn" | "error" | "info" => level,
            _ => "info",
        };
        self.db.append_log(id, level, message).await?;
        Ok(())
    }

    /// A backup finished on the agent: commit it if every chunk is recorded, otherwise fail it.
    pub async fn report_backup_completed(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
        o: BackupOutcome,
    ) -> ControllerResult<()> {
        self.owned(agent, id).await?;
        match self.db.complete_backup(id, attempt, &o).await? {
            Ok(()) => {
                self.db
                    .append_log(
                        id,
                        "info",
                        &format!(
                            "completed: {} chunks, {} bytes stored, sha256 {}",
                            o.chunk_count, o.stored_bytes, o.sha256
                        ),
                    )
                    .await?;
            }
            Err(reason) => {
                let msg = format!("backup not committed: {reason}");
                self.db.append_log(id, "error", &msg).await?;
                self.db
                    .finish_failed(id, Some(attempt), &msg, false)
                    .await?;
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// A restore finished on the agent.
    pub async fn report_restore_completed(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
        raw: i64,
    ) -> ControllerResult<()> {
        self.owned(agent, id).await?;
        if self.db.complete_restore(id, attempt, raw).await? {
            self.db
                .append_log(
                    id,
                    "info",
                    &format!("restore completed: {raw} bytes restored"),
                )
                .await?;
        }
        self.waker.wake();
        Ok(())
    }

    /// An execution failed (or was cancelled) on the agent.
    pub async fn report_failed(
        &self,
        agent: Uuid,
        id: Uuid,
        attempt: i32,
        error: &str,
        cancelled: bool,
    ) -> ControllerResult<()> {
        self.owned(agent, id).await?;
        if self
            .db
            .finish_failed(id, Some(attempt), error, cancelled)
            .await?
        {
            self.db.append_log(id, "error", error).await?;
        }
        self.waker.wake();
        Ok(())
    }

    /// A session opened: executions the controller thinks run on the agent but the agent does not report
    /// (it restarted) are failed.
    pub async fn reconcile(&self, agent: Uuid, running: &[(Uuid, i32)]) -> ControllerResult<()> {
        for ex in self.db.running_for_agent(agent).await? {
            if !running.contains(&(ex.id, ex.attempt)) {
                let msg = "agent restarted during the execution";
                if self
                    .db
                    .finish_failed(ex.id, Some(ex.attempt), msg, false)
                    .await?
                {
                    self.db.append_log(ex.id, "error", msg).await?;
                }
            }
        }
        Ok(())
    }
}
