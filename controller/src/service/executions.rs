//! Executions: queueing backups (RunNow) and restores, reading them back, and applying what agents report
//! about them. Agent reports are accepted only from the agent the execution is assigned to and only for
//! its current attempt.

use std::time::Duration;

use uuid::Uuid;

use super::{
    attempts::{AttemptEnder, EndCause},
    commit::{self, CommitPlan},
    notify::Event,
    retention::RetentionHandle,
    scrub, verify,
    waker::DispatchWaker,
};
use dg_common::{
    ids::AgentId,
    protocol::{
        AgentReport, Attempt, BackupResult, ChunkStored, ExecutionRef, ObjectLayout, VerifyResult,
        drill::DrillObservation,
    },
};

use crate::session::{
    ToAgent,
    deliver::{Delivery, Sessions},
};
use crate::{
    coordination::Coordination,
    db::{BackupOutcome, ChunkRecord, ChunkReport, Db, ExecutionFilter, NewExecution, Page},
    error::{ControllerError, ControllerResult},
    model::{Chunk, CopyRecord, Execution, LogLine, Operation, Status},
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
    /// Must equal the effective target database (not needed in verification mode).
    pub confirm_target_database: String,
    /// Storage to read first.
    pub source_storage_id: Option<Uuid>,
    /// Restore into a temporary database and drop it afterwards.
    pub verification_mode: bool,
    /// PostgreSQL parallel restore jobs; `None`: as the backup was taken.
    pub parallel_jobs: Option<u32>,
    /// PostgreSQL: replay the globals first.
    pub restore_globals: bool,
    /// Verification mode: the scratch database's name (default `dg_verify_<random>`).
    pub scratch_database: Option<String>,
    /// Verification mode: a restore drill's checks.
    pub drill: Option<dg_common::protocol::drill::DrillChecks>,
}

/// Progress of a running execution as a watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchProgress {
    /// Uncompressed bytes so far.
    pub raw_bytes: u64,
    /// Stored bytes so far.
    pub stored_bytes: u64,
    /// Chunks so far.
    pub chunks: u32,
    /// Uncompressed bytes per second since the attempt started.
    pub bytes_per_second: f64,
}

/// One event of a watched execution.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The execution (first, and on every state change).
    Execution(Box<Execution>),
    /// Progress while running.
    Progress(WatchProgress),
    /// A new log line.
    Log(LogLine),
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
    /// Every complete copy with its last verify.
    pub copies: Vec<CopyRecord>,
    /// Rows per table recorded at backup time (empty when none were).
    pub table_counts: Vec<dg_common::protocol::drill::TableCount>,
}

/// Execution service.
#[derive(Clone, Debug)]
pub struct ExecutionsService {
    db: Db,
    waker: DispatchWaker,
    sessions: Sessions,
    coord: Coordination,
    retention: RetentionHandle,
    metrics: crate::metrics::Metrics,
    ender: AttemptEnder,
}

impl ExecutionsService {
    /// New service.
    pub fn new(
        db: Db,
        waker: DispatchWaker,
        sessions: Sessions,
        coord: Coordination,
        retention: RetentionHandle,
        metrics: crate::metrics::Metrics,
        ender: AttemptEnder,
    ) -> Self {
        Self { db, waker, sessions, coord, retention, metrics, ender }
    }

    fn finished(&self, ex: &Execution, status: Status) {
        let ran_for = ex.started_at.and_then(|s| (chrono::Utc::now() - s).to_std().ok());
        self.metrics.execution_ended(ex.operation.as_str(), status.as_str(), ran_for);
    }

    /// Asks dispatch for a round (e.g. an agent connected).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Queues a backup of a job now.
    pub async fn run_now(&self, job_id: Uuid) -> ControllerResult<Execution> {
        self.coord.require()?;
        let job =
            self.db.job(job_id).await?.ok_or_else(|| ControllerError::NotFound(format!("backup job {job_id}")))?;
        let ds = self
            .db
            .datasource(job.datasource_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {}", job.datasource_id)))?;
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
        self.db.append_log(ex.id, "info", &format!("queued by RunNow of job {}", job.name)).await?;
        self.waker.wake();
        self.coord.publish(crate::coordination::WAKE_CHANNEL, "wake".into()).await;
        Ok(ex)
    }

    /// Queues a restore (or a verification restore into a temporary database).
    pub async fn restore(&self, r: RestoreRequest) -> ControllerResult<Execution> {
        self.coord.require()?;
        let backup = self.backup_execution(r.backup_id).await?;
        let source = self
            .db
            .datasource(backup.datasource_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {}", backup.datasource_id)))?;
        let target = match r.target_datasource_id {
            Some(id) => {
                self.db.datasource(id).await?.ok_or_else(|| ControllerError::NotFound(format!("datasource {id}")))?
            }
            None => source.clone(),
        };
        if target.engine != source.engine {
            return Err(ControllerError::FailedPrecondition(format!(
                "target_datasource_id: engine {} differs from the backup's engine {}",
                target.engine, source.engine
            )));
        }
        if r.restore_globals && !backup.trust_recorded {
            // Its globals object, checksum and encryption were trusted from the manifest in storage, which
            // anyone able to write to the bucket can rewrite; replaying such SQL could run commands.
            return Err(ControllerError::FailedPrecondition(format!(
                "restore_globals: backup {} was recorded before the controller recorded its globals; restore it \
                 without restore_globals (and recreate roles by hand, or take a new backup)",
                backup.id
            )));
        }
        if r.restore_globals && backup.globals_key.is_none() {
            return Err(ControllerError::FailedPrecondition(format!(
                "restore_globals: backup {} has no globals (its job did not include them)",
                backup.id
            )));
        }
        let copies = self.db.backup_storage_ids(backup.id).await?;
        if let Some(sid) = r.source_storage_id
            && !copies.contains(&sid)
        {
            return Err(ControllerError::FailedPrecondition(format!(
                "source_storage_id: storage {sid} holds no complete copy of backup {}",
                backup.id
            )));
        }
        // Copies a verify found damaged or missing are never read; with none left the restore is refused
        // here, before anything is queued (the target is never touched).
        let usable = self.db.usable_copy_ids(backup.id).await?;
        if usable.is_empty() {
            return Err(ControllerError::FailedPrecondition(format!(
                "backup {}: every copy was found damaged or missing by a verify; nothing intact to restore from",
                backup.id
            )));
        }
        if let Some(sid) = r.source_storage_id
            && !usable.contains(&sid)
        {
            return Err(ControllerError::FailedPrecondition(format!(
                "source_storage_id: the copy of backup {} in storage {sid} was found damaged or missing by a verify",
                backup.id
            )));
        }
        let database = if r.verification_mode {
            r.scratch_database
                .clone()
                .unwrap_or_else(|| format!("dg_verify_{}", &Uuid::new_v4().simple().to_string()[..12]))
        } else {
            let database = r.target_database.clone().unwrap_or_else(|| target.database_name.clone());
            if r.confirm_target_database != database {
                return Err(ControllerError::Invalid(dg_common::error::FieldError::new(
                    "confirm_target_database",
                    format!("must repeat the target database name \"{database}\""),
                )));
            }
            database
        };
        let ex = self
            .db
            .insert_reading_execution(
                backup.id,
                &NewExecution {
                    operation: Operation::Restore,
                    job_id: None,
                    datasource_id: target.id,
                    agent_id: target.agent_id,
                    source_backup_id: Some(backup.id),
                    target_database: Some(database.clone()),
                    options: crate::model::RestoreOptions {
                        create_database: r.create_database || r.verification_mode,
                        drop_existing: r.drop_existing && !r.verification_mode,
                        verification: r.verification_mode,
                        source_storage_id: r.source_storage_id,
                        parallel_jobs: r.parallel_jobs,
                        restore_globals: r.restore_globals,
                        drill: r.drill.clone().filter(|_| r.verification_mode),
                    }
                    .to_json(),
                },
            )
            .await?
            .ok_or_else(|| ControllerError::FailedPrecondition(format!("backup {} is being deleted", backup.id)))?;
        let what = if r.verification_mode { "verification restore" } else { "restore" };
        self.db
            .append_log(ex.id, "info", &format!("{what} of backup {} into database {database} queued", backup.id))
            .await?;
        self.waker.wake();
        self.coord.publish(crate::coordination::WAKE_CHANNEL, "wake".into()).await;
        Ok(ex)
    }

    /// Queues a checksum-only verify of every copy of a backup, run by the agent bound to the backup's
    /// datasource, reading at most `read_rate` bytes per second (0: the job's or the controller's limit).
    /// Refused while the backup is being deleted (checked atomically with queueing, as restores are, so a
    /// deletion waits for the verify). A backup has at most one verify queued or running: asking again
    /// returns that one.
    pub async fn verify(&self, backup_id: Uuid, read_rate: u64) -> ControllerResult<Execution> {
        self.coord.require()?;
        let backup = self.backup_execution(backup_id).await?;
        if backup.deleting {
            return Err(ControllerError::FailedPrecondition(format!("backup {backup_id} is being deleted")));
        }
        let (ex, queued) = scrub::queue_verify(&self.db, backup.id, read_rate, "operator").await?;
        if queued {
            self.waker.wake();
            self.coord.publish(crate::coordination::WAKE_CHANNEL, "wake".into()).await;
        }
        Ok(ex)
    }

    /// One execution.
    pub async fn get(&self, id: Uuid) -> ControllerResult<Execution> {
        self.db.execution(id).await?.ok_or_else(|| ControllerError::NotFound(format!("execution {id}")))
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
        let copies = self.db.backup_copies(id).await?;
        let table_counts = self.db.backup_table_counts(id).await?.unwrap_or_default();
        Ok(BackupDetail { execution, storage_ids, chunks, copies, table_counts })
    }

    /// A completed backup (NOT_FOUND as `backup <id>` for anything else).
    pub async fn backup_execution(&self, id: Uuid) -> ControllerResult<Execution> {
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

    /// Applies one agent report. Reports are accepted only from the agent the execution is assigned to, for
    /// its current attempt, and only when they fit what the attempt was asked to do (operation, object keys
    /// and storages of the plan); a report that does not fit ends the attempt.
    pub async fn report(&self, agent: AgentId, report: AgentReport) -> ControllerResult<()> {
        let execution = report.execution();
        let (id, attempt) = (execution.id.0, i32::try_from(execution.attempt.0).unwrap_or(i32::MAX));
        let a = agent.0;
        let ex = self.owned(a, id).await?;
        let current = ex.attempt == attempt;
        let terminal_report = matches!(
            report,
            AgentReport::BackupCompleted { .. }
                | AgentReport::RestoreCompleted { .. }
                | AgentReport::VerifyCompleted { .. }
                | AgentReport::Failed { .. }
        );
        if !(current && ex.status == Status::Running) {
            if current && terminal_report && ex.status.is_terminal() {
                return Ok(()); // a resend of the final report: already applied
            }
            // A stale attempt, or one the controller has ended or requeued: the caller aborts it.
            return Err(ControllerError::FailedPrecondition(format!(
                "execution {id} attempt {attempt} is not running (it is {} at attempt {})",
                ex.status, ex.attempt
            )));
        }
        // From here on `ex` is the agent's own running attempt the report names.
        match report {
            AgentReport::ChunkStored(c) => self.report_chunk(&ex, attempt, c).await,
            AgentReport::Progress(p) => {
                let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                let chunks = i32::try_from(p.chunks).unwrap_or(i32::MAX);
                self.db.update_progress(id, attempt, clamp(p.raw_bytes), clamp(p.stored_bytes), chunks).await?;
                Ok(())
            }
            AgentReport::Log(l) => Ok(self.db.append_log(id, l.level.as_str(), &l.message).await?),
            AgentReport::BackupCompleted { result, .. } => self.report_backup_completed(&ex, attempt, result).await,
            AgentReport::RestoreCompleted { result, .. } => {
                let raw = i64::try_from(result.raw_bytes).unwrap_or(i64::MAX);
                self.report_restore_completed(&ex, attempt, raw, result.observed).await
            }
            AgentReport::VerifyCompleted { result, .. } => self.report_verify_completed(&ex, attempt, result).await,
            AgentReport::Failed { error, cancelled, .. } => {
                let cause = if cancelled { EndCause::AgentCancelled } else { EndCause::AgentFailed(error) };
                self.ender.end(&ex, attempt, cause).await?;
                Ok(())
            }
        }
    }

    /// Ends a running attempt of this agent because one of its reports did not decode.
    pub async fn refuse_report(&self, agent: AgentId, execution: ExecutionRef, why: String) -> ControllerResult<()> {
        let ex = self.owned(agent.0, execution.id.0).await?;
        let attempt = i32::try_from(execution.attempt.0).unwrap_or(i32::MAX);
        if ex.status != Status::Running || ex.attempt != attempt {
            return Err(ControllerError::FailedPrecondition(format!(
                "execution {} attempt {attempt} is not running",
                ex.id
            )));
        }
        self.refuse(&ex, attempt, why).await
    }

    /// Ends a running attempt because what its agent reported does not fit it.
    async fn refuse(&self, ex: &Execution, attempt: i32, why: String) -> ControllerResult<()> {
        let cause = EndCause::Refused(why);
        let msg = cause.to_string();
        self.ender.end(ex, attempt, cause).await?;
        Err(ControllerError::FailedPrecondition(msg))
    }

    /// The storages a backup attempt may write to: the job's.
    async fn plan_storages(&self, ex: &Execution) -> ControllerResult<Vec<Uuid>> {
        Ok(match ex.job_id {
            Some(job) => self.db.job_storages(job).await?.into_iter().map(|s| s.id).collect(),
            None => Vec::new(),
        })
    }

    fn layout(ex: &Execution, attempt: i32) -> ObjectLayout {
        ObjectLayout {
            datasource: ex.datasource_id.into(),
            execution: ExecutionRef { id: ex.id.into(), attempt: Attempt(u32::try_from(attempt).unwrap_or(0)) },
        }
    }

    /// A chunk of the running attempt `ex` is stored. A key or storage outside the plan, or a second report of
    /// the same chunk with other contents, ends the attempt.
    async fn report_chunk(&self, ex: &Execution, attempt: i32, c: ChunkStored) -> ControllerResult<()> {
        if ex.operation != Operation::Backup {
            return self.refuse(ex, attempt, format!("a chunk report for a {} execution", ex.operation)).await;
        }
        let expected = Self::layout(ex, attempt).chunk_key(c.seq);
        if c.key != expected {
            return self
                .refuse(ex, attempt, format!("chunk {} has key {}, the plan says {expected}", c.seq, c.key))
                .await;
        }
        if !self.plan_storages(ex).await?.contains(&c.storage.0) {
            return self.refuse(ex, attempt, format!("storage {} is not one of the job's storages", c.storage)).await;
        }
        let report = ChunkReport {
            execution_id: ex.id,
            attempt,
            storage_id: c.storage.0,
            seq: i32::try_from(c.seq).map_err(|_| ControllerError::FailedPrecondition("seq out of range".into()))?,
            key: c.key,
            size: i64::try_from(c.size).unwrap_or(i64::MAX),
            sha256: c.sha256,
            raw_bytes: i64::try_from(c.raw_bytes).unwrap_or(i64::MAX),
        };
        match self.db.record_chunk(&report).await? {
            ChunkRecord::Recorded | ChunkRecord::Duplicate => Ok(()),
            ChunkRecord::Conflict => {
                let why = format!("chunk {} in storage {} reported twice with different contents", c.seq, c.storage);
                self.refuse(ex, attempt, why).await
            }
            ChunkRecord::NotRunning => Err(ControllerError::FailedPrecondition(format!(
                "execution {} attempt {attempt} is not running",
                ex.id
            ))),
        }
    }

    /// A backup finished on the agent: commit it if it fits the plan and every chunk is recorded, otherwise
    /// fail it.
    async fn report_backup_completed(&self, ex: &Execution, attempt: i32, r: BackupResult) -> ControllerResult<()> {
        let id = ex.id;
        if ex.operation != Operation::Backup {
            return self.refuse(ex, attempt, format!("a backup result for a {} execution", ex.operation)).await;
        }
        let o = BackupOutcome {
            raw_bytes: i64::try_from(r.raw_bytes).unwrap_or(i64::MAX),
            stored_bytes: i64::try_from(r.stored_bytes).unwrap_or(i64::MAX),
            chunk_count: i32::try_from(r.chunk_count).unwrap_or(i32::MAX),
            sha256: r.sha256,
            manifest_key: r.manifest_key,
            storage_ids: r.storages.iter().map(|s| s.0).collect(),
            tool_version: r.tool_version,
            server_version: r.server_version,
            warnings: r.warnings,
            encryption_key_id: r.encryption_key_id,
            wrapped_key_sha256: r.wrapped_key_sha256,
            globals: r.globals.map(|g| (g.key, i64::try_from(g.size).unwrap_or(i64::MAX), g.sha256)),
            table_counts: r.table_counts.map(|c| serde_json::json!(c)),
            layout_sha256: r.layout_sha256,
        };
        let layout = Self::layout(ex, attempt);
        let (manifest_key, globals_key) = (layout.manifest_key(), layout.globals_key());
        let storages = self.plan_storages(ex).await?;
        let plan = CommitPlan { manifest_key: &manifest_key, globals_key: &globals_key, storages: &storages };
        if let Err(why) = commit::check_plan(plan, &o) {
            return self.refuse(ex, attempt, why).await;
        }
        match self.db.complete_backup(id, attempt, &o, |recorded| commit::check_copies(&o, recorded)).await? {
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
                self.finished(ex, Status::Completed);
                self.metrics.backup_bytes_stored.inc_by(u64::try_from(o.stored_bytes).unwrap_or(0));
                self.metrics.backup_bytes_raw.inc_by(u64::try_from(o.raw_bytes).unwrap_or(0));
                if let Some(job) = ex.job_id {
                    self.retention.apply(job);
                    scrub::queue_after_backup(&self.db, job, id).await;
                }
                let notifier = self.ender.notifier();
                notifier.emit(Event::execution_completed(id, ex.job_id, ex.datasource_id, o.stored_bytes)).await;
                notifier.backup_committed();
            }
            Err(reason) => {
                self.ender.end(ex, attempt, EndCause::CommitMismatch(reason)).await?;
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// A restore finished on the agent.
    async fn report_restore_completed(
        &self,
        ex: &Execution,
        attempt: i32,
        raw: i64,
        observed: Option<DrillObservation>,
    ) -> ControllerResult<()> {
        let id = ex.id;
        if ex.operation != Operation::Restore {
            return self.refuse(ex, attempt, format!("a restore result for a {} execution", ex.operation)).await;
        }
        // Kept for the drill that queued it to judge (the drill task reads it once the restore has ended).
        let observed = observed.map(|o| serde_json::json!(o));
        if self.db.complete_restore(id, attempt, raw, observed).await? {
            self.finished(ex, Status::Completed);
            self.db.append_log(id, "info", &format!("restore completed: {raw} bytes restored")).await?;
        }
        self.waker.wake();
        Ok(())
    }

    /// A verify finished on the agent: its findings must name exactly the copies of the plan and only their
    /// chunks (else the attempt is refused); then every verdict and the verify's end are recorded in one
    /// transaction (a resent report finds the attempt ended and changes nothing).
    async fn report_verify_completed(&self, ex: &Execution, attempt: i32, r: VerifyResult) -> ControllerResult<()> {
        if ex.operation != Operation::Verify {
            return self.refuse(ex, attempt, format!("a verify result for a {} execution", ex.operation)).await;
        }
        let Some(backup) = ex.source_backup_id else {
            return self.refuse(ex, attempt, "the backup is gone".into()).await;
        };
        let b =
            self.db.execution(backup).await?.ok_or_else(|| ControllerError::NotFound(format!("backup {backup}")))?;
        let planned: Vec<(Uuid, usize)> = verify::planned_copies(&self.db, &b, ex.agent_id)
            .await?
            .into_iter()
            .map(|c| (c.storage.id, c.chunks.len()))
            .collect();
        let outcomes = match verify::check_result(&planned, &r) {
            Ok(o) => o,
            Err(why) => return self.refuse(ex, attempt, why).await,
        };
        let verdicts: Vec<_> = outcomes.iter().filter_map(|o| o.verdict.clone()).collect();
        let lines: Vec<(&str, &str)> = outcomes
            .iter()
            .map(|o| {
                let level = if o.verdict.as_ref().is_some_and(|v| v.status == "intact") { "info" } else { "warn" };
                (level, o.line.as_str())
            })
            .collect();
        if self.db.complete_verify(ex.id, attempt, backup, &verdicts, &lines).await? {
            self.finished(ex, Status::Completed);
            for v in &verdicts {
                self.metrics.verify_copies.with_label_values(&[v.status]).inc();
            }
            let bad: Vec<Uuid> = verdicts.iter().filter(|v| v.status != "intact").map(|v| v.storage_id).collect();
            if !bad.is_empty() {
                let damage = Event::verify_damage(ex.id, backup, ex.datasource_id, b.job_id, &bad);
                self.ender.notifier().emit(damage).await;
            }
            // A damaged copy may leave the job without a good backup.
            self.ender.notifier().backup_committed();
        }
        self.waker.wake();
        Ok(())
    }

    /// A heartbeat: the attempts it lists get their leases extended (and only those); attempts of this agent
    /// that were assigned more than `grace_secs` ago but are not listed are ended (the agent never started them
    /// or lost them), through the common path, so they are retried per policy.
    pub async fn heartbeat(
        &self,
        agent: AgentId,
        running: &[ExecutionRef],
        lease_secs: i64,
        grace_secs: i64,
    ) -> ControllerResult<()> {
        let pairs: Vec<(Uuid, i32)> =
            running.iter().map(|r| (r.id.0, i32::try_from(r.attempt.0).unwrap_or(i32::MAX))).collect();
        self.db.extend_leases(agent.0, &pairs, lease_secs).await?;
        for ex in self.db.unlisted_attempts(agent.0, &pairs, grace_secs).await? {
            let cause = EndCause::NotRunning { was_listed: ex.agent_listed };
            self.ender.end(&ex, ex.attempt, cause).await?;
        }
        Ok(())
    }

    /// Cancels a queued execution at once, or asks the agent to stop a running one, through whichever replica
    /// holds its session (it ends `cancelled` when the agent confirms; an agent connected to no replica cannot
    /// confirm, so the attempt is ended directly, and the execution's log says which of the three happened).
    pub async fn cancel(&self, id: Uuid) -> ControllerResult<Execution> {
        let ex = self.get(id).await?;
        match ex.status {
            Status::Queued => {
                if self.db.cancel_queued(id, "cancelled by an operator").await? {
                    self.finished(&ex, Status::Cancelled);
                    self.db.append_log(id, "warn", "cancelled by an operator before it started").await?;
                }
            }
            Status::Running => {
                self.db.request_cancel(id, ex.attempt).await?;
                let execution =
                    ExecutionRef { id: id.into(), attempt: Attempt(u32::try_from(ex.attempt).unwrap_or(0)) };
                let msg = ToAgent::Cancel { execution, reason: "cancelled by an operator".into() };
                match self.sessions.deliver(ex.agent_id, msg).await {
                    Delivery::Here => {
                        self.db.append_log(id, "warn", "cancellation requested; stopping on the agent").await?;
                    }
                    Delivery::Relayed { replica } => {
                        let line = format!(
                            "cancellation forwarded to the replica holding the agent's session ({replica}); \
                             stopping on the agent"
                        );
                        self.db.append_log(id, "warn", &line).await?;
                    }
                    Delivery::NotConnected => {
                        // Nobody can confirm: the attempt is ended here (and aborted on the agent when it
                        // comes back and lists it).
                        let line = "cancellation requested; the agent is not connected to any controller \
                                    replica, so the attempt is ended without it";
                        self.db.append_log(id, "warn", line).await?;
                        let mut ex = ex.clone();
                        ex.cancel_requested = true;
                        self.ender.end(&ex, ex.attempt, EndCause::OperatorCancelled).await?;
                    }
                }
            }
            _ => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "execution {id} has already ended ({})",
                    ex.status
                )));
            }
        }
        self.get(id).await
    }

    /// Deletes a finished execution (not a completed backup: see `BackupsService::delete`).
    pub async fn delete(&self, id: Uuid) -> ControllerResult<()> {
        let ex = self.get(id).await?;
        if !ex.status.is_terminal() {
            return Err(ControllerError::FailedPrecondition(format!("execution {id} is still {}", ex.status)));
        }
        if ex.operation == Operation::Backup && ex.status == Status::Completed {
            return Err(ControllerError::FailedPrecondition(
                "this execution is a completed backup; delete it with BackupService.DeleteBackup".into(),
            ));
        }
        if !self.db.delete_finished_execution(id).await? {
            return Err(ControllerError::NotFound(format!("execution {id}")));
        }
        Ok(())
    }

    /// Streams an execution's events until it ends: the execution first and on every change, progress while
    /// it runs, and each new log line. Reads PostgreSQL only, so it works on any replica.
    pub fn watch(&self, id: Uuid) -> tokio::sync::mpsc::Receiver<ControllerResult<WatchEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let db = self.db.clone();
        tokio::spawn(async move {
            let mut last: Option<(Status, i32, i64, i64)> = None;
            let mut after = 0i64;
            loop {
                let ex = match db.execution(id).await {
                    Ok(Some(e)) => e,
                    Ok(None) => {
                        let _ = tx.send(Err(ControllerError::NotFound(format!("execution {id}")))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for l in db.logs(id, after, 500).await.unwrap_or_default() {
                    after = l.id;
                    if tx.send(Ok(WatchEvent::Log(l))).await.is_err() {
                        return;
                    }
                }
                let state = (ex.status, ex.attempt, ex.raw_bytes, ex.stored_bytes);
                let event = if last.map(|l| (l.0, l.1)) != Some((state.0, state.1)) {
                    Some(WatchEvent::Execution(Box::new(ex.clone())))
                } else if ex.status == Status::Running && last.map(|l| (l.2, l.3)) != Some((state.2, state.3)) {
                    let secs = ex
                        .started_at
                        .map(|s| (chrono::Utc::now() - s).num_milliseconds() as f64 / 1000.0)
                        .unwrap_or(0.0);
                    Some(WatchEvent::Progress(WatchProgress {
                        raw_bytes: u64::try_from(ex.raw_bytes).unwrap_or_default(),
                        stored_bytes: u64::try_from(ex.stored_bytes).unwrap_or_default(),
                        chunks: u32::try_from(ex.chunk_count).unwrap_or_default(),
                        bytes_per_second: if secs > 0.0 { ex.raw_bytes as f64 / secs } else { 0.0 },
                    }))
                } else {
                    None
                };
                if let Some(ev) = event
                    && tx.send(Ok(ev)).await.is_err()
                {
                    return;
                }
                last = Some(state);
                if ex.status.is_terminal() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {},
                }
            }
        });
        rx
    }

    /// A session opened: attempts the controller thinks run on the agent but the agent does not list in its
    /// Hello (it restarted) are ended through the common path; the ones it lists keep running (a reconnect
    /// within the lease does not fail work). Returns the attempts the agent lists that are not running for
    /// it here (ended meanwhile, or never its own): the caller aborts them on the agent.
    pub async fn reconcile(&self, agent: Uuid, running: &[(Uuid, i32)]) -> ControllerResult<Vec<ExecutionRef>> {
        let ours = self.db.running_for_agent(agent).await?;
        for ex in &ours {
            if !running.contains(&(ex.id, ex.attempt)) {
                self.ender.end(ex, ex.attempt, EndCause::AgentRestarted).await?;
            }
        }
        Ok(running
            .iter()
            .filter(|(id, attempt)| !ours.iter().any(|e| e.id == *id && e.attempt == *attempt))
            .map(|(id, attempt)| ExecutionRef {
                id: (*id).into(),
                attempt: Attempt(u32::try_from(*attempt).unwrap_or(0)),
            })
            .collect())
    }
}
