//! Dispatch: turns queued executions of agents connected to this replica into `Assign` messages, and the
//! reaper that fails executions whose agent went silent. Claiming is a compare-and-set in PostgreSQL, so
//! several replicas can dispatch side by side; an agent runs one execution at a time.

use std::{sync::Arc, time::Duration};

use dg_common::{manifest, telemetry};
use dg_proto::v1 as pb;
use tokio::{sync::Notify, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use super::{catalog::CatalogService, coordination::Coordination, registry::AgentRegistry, storages};
use crate::{
    crypto::MasterKey,
    db::Db,
    error::{ControllerError, ControllerResult},
    model::{Execution, Operation, Strategy},
};

/// Wakes the dispatcher (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct DispatchWaker(Arc<Notify>);

impl DispatchWaker {
    /// Ask for a dispatch round now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Settings of dispatch.
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Lease given at claim and extended by heartbeats.
    pub lease_secs: i64,
    /// Chunk size agents cut backups into.
    pub chunk_size: u64,
    /// Concurrent chunk uploads per agent.
    pub upload_concurrency: u32,
    /// zstd worker threads.
    pub compression_workers: u32,
}

/// The dispatch loop.
pub struct DispatchTask {
    db: Db,
    key: MasterKey,
    catalog: CatalogService,
    registry: AgentRegistry,
    waker: DispatchWaker,
    settings: DispatchSettings,
    coord: Coordination,
}

/// The pb engine of a domain engine.
pub fn engine_pb(e: crate::model::Engine) -> pb::Engine {
    match e {
        crate::model::Engine::Postgres => pb::Engine::Postgres,
        crate::model::Engine::Mysql => pb::Engine::Mysql,
        crate::model::Engine::Mariadb => pb::Engine::Mariadb,
    }
}

impl DispatchTask {
    /// New task.
    pub fn new(
        db: Db,
        key: MasterKey,
        catalog: CatalogService,
        registry: AgentRegistry,
        waker: DispatchWaker,
        settings: DispatchSettings,
        coord: Coordination,
    ) -> Self {
        Self { db, key, catalog, registry, waker, settings, coord }
    }

    /// Runs until cancelled: a round on every wake-up and every two seconds.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.waker.0.notified() => {},
                _ = tick.tick() => {},
            }
            if let Err(e) = self.round().await {
                warn!(error = %e, "dispatch round failed");
            }
        }
    }

    async fn round(&self) -> ControllerResult<()> {
        if !self.coord.is_up() {
            return Ok(()); // paused while Redis is down; queued work waits in PostgreSQL
        }
        for agent in self.registry.connected() {
            if !self.db.running_for_agent(agent).await?.is_empty() {
                continue;
            }
            for queued in self.db.queued_for_agent(agent, 1).await? {
                let Some(claimed) = self.db.claim(queued.id, self.settings.lease_secs).await? else {
                    continue; // another replica claimed it
                };
                self.assign(claimed).await?;
            }
        }
        Ok(())
    }

    async fn assign(&self, ex: Execution) -> ControllerResult<()> {
        let span = info_span!("execution", execution_id = %ex.id, attempt = ex.attempt, operation = %ex.operation);
        async {
            let attempt = Some(ex.attempt);
            let msg = match self.build_assign(&ex).await {
                Ok(m) => m,
                Err(e) => {
                    let text = match &e {
                        ControllerError::Database(_) | ControllerError::Crypto(_) => "internal error".to_owned(),
                        other => other.to_string(),
                    };
                    warn!(error = %e, "cannot assign execution");
                    self.db.append_log(ex.id, "error", &text).await?;
                    self.db.finish_failed(ex.id, attempt, &text, false).await?;
                    return Ok(());
                }
            };
            let sent = match self.registry.sender(ex.agent_id) {
                Some(tx) => tx.send(Ok(msg)).await.is_ok(),
                None => false,
            };
            if sent {
                info!(agent_id = %ex.agent_id, "assigned");
                let line = format!("assigned to agent {} (attempt {})", ex.agent_id, ex.attempt);
                self.db.append_log(ex.id, "info", &line).await?;
            } else {
                // The agent left between claim and send: fail this attempt; nothing was started.
                self.db.finish_failed(ex.id, attempt, "agent disconnected before the assignment", false).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn build_assign(&self, ex: &Execution) -> ControllerResult<pb::ControllerMessage> {
        let ds = self.catalog.datasource(ex.datasource_id).await?;
        let task = match ex.operation {
            Operation::Backup => {
                let job_id = ex
                    .job_id
                    .ok_or_else(|| ControllerError::FailedPrecondition("the backup job was deleted".into()))?;
                let (job, _) = self.catalog.job(job_id).await?;
                let targets = self
                    .db
                    .job_storages(job_id)
                    .await?
                    .iter()
                    .filter(|s| storages::reachable_by(s, ex.agent_id))
                    .map(|s| storages::target(s, &self.key))
                    .collect::<ControllerResult<Vec<_>>>()?;
                if targets.is_empty() {
                    return Err(ControllerError::FailedPrecondition("no storage of the job is reachable".into()));
                }
                let attempt = u32::try_from(ex.attempt).unwrap_or_default();
                pb::assign::Task::Backup(pb::BackupTask {
                    source: Some(self.catalog.database_target(&ds, None)?),
                    storages: targets,
                    strategy: match job.storage_strategy {
                        Strategy::Fallback => pb::StorageStrategy::Fallback,
                        Strategy::Replicate => pb::StorageStrategy::Replicate,
                    } as i32,
                    key_prefix: manifest::attempt_prefix(ds.id.into(), ex.id.into(), attempt),
                    compression_level: job.compression_level,
                    chunk_size: self.settings.chunk_size,
                    upload_concurrency: self.settings.upload_concurrency,
                    compression_workers: self.settings.compression_workers,
                    encryption_key_id: job.encryption_key_id.clone(),
                    include_globals: job.include_globals,
                    datasource_id: ds.id.to_string(),
                })
            }
            Operation::Restore => self.restore_task(ex, &ds).await?,
            Operation::Verify => {
                return Err(ControllerError::FailedPrecondition(
                    "standalone verification runs are not supported".into(),
                ));
            }
        };
        Ok(pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::Assign(pb::Assign {
                execution_id: ex.id.to_string(),
                attempt: u32::try_from(ex.attempt).unwrap_or_default(),
                trace_context: telemetry::inject_current(),
                task: Some(task),
            })),
        })
    }

    async fn restore_task(&self, ex: &Execution, ds: &crate::model::Datasource) -> ControllerResult<pb::assign::Task> {
        let backup_id =
            ex.source_backup_id.ok_or_else(|| ControllerError::FailedPrecondition("the backup was deleted".into()))?;
        let backup = self
            .db
            .execution(backup_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("backup {backup_id}")))?;
        let source_ds = self.catalog.datasource(backup.datasource_id).await?;
        let mut copies = self.db.backup_storage_ids(backup_id).await?;
        let preferred: Option<Uuid> =
            ex.options.get("source_storage_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        if let Some(p) = preferred {
            copies.sort_by_key(|c| *c != p);
        }
        let mut targets = Vec::new();
        for sid in &copies {
            if let Some(s) = self.db.storage(*sid).await?
                && storages::reachable_by(&s, ex.agent_id)
            {
                targets.push(storages::target(&s, &self.key)?);
            }
        }
        if targets.is_empty() {
            return Err(ControllerError::FailedPrecondition(
                "no storage holding this backup is reachable from the target's agent".into(),
            ));
        }
        // Keys and checksums are identical in every copy; take the first copy's list.
        let first = copies.first().copied().unwrap_or_default();
        let chunks = self
            .db
            .chunks(backup_id, backup.attempt)
            .await?
            .into_iter()
            .filter(|c| c.storage_id == first)
            .map(|c| pb::ChunkRef {
                seq: u32::try_from(c.seq).unwrap_or_default(),
                key: c.object_key,
                size: u64::try_from(c.size).unwrap_or_default(),
                sha256: c.sha256,
            })
            .collect();
        let opt = |k: &str| ex.options.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
        Ok(pb::assign::Task::Restore(pb::RestoreTask {
            target: Some(self.catalog.database_target(ds, ex.target_database.clone())?),
            storages: targets,
            chunks,
            sha256: backup.sha256.clone().unwrap_or_default(),
            create_database: opt("create_database"),
            drop_existing: opt("drop_existing"),
            source_engine: engine_pb(source_ds.engine) as i32,
            drop_after: opt("verification"),
            manifest_key: backup.manifest_key.clone().unwrap_or_default(),
            parallel_jobs: ex.options.get("parallel_jobs").and_then(serde_json::Value::as_u64).unwrap_or(1) as u32,
            restore_globals: opt("restore_globals"),
        }))
    }
}

/// Fails executions whose lease expired (the agent went silent). Needs only PostgreSQL.
pub struct ReaperTask {
    db: Db,
}

impl ReaperTask {
    /// New task.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            match self.db.reap_expired().await {
                Ok(ids) => {
                    for id in ids {
                        warn!(execution_id = %id, "lease expired; execution failed");
                    }
                }
                Err(e) => warn!(error = %e, "reaper round failed"),
            }
        }
    }
}
