//! Dispatch: turns queued executions of agents connected to this replica into `Assign` messages, and the
//! reaper that fails executions whose agent went silent. Claiming is a compare-and-set in PostgreSQL, so
//! several replicas can dispatch side by side; an agent runs one execution at a time.

use std::{sync::Arc, time::Duration};

use dg_common::{error::FieldError, manifest, telemetry};
use dg_proto::v1 as pb;
use tokio::{sync::Notify, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use super::registry::AgentRegistry;
use crate::{
    crypto::MasterKey,
    db::Db,
    error::{ControllerError, ControllerResult},
    model::{Datasource, Execution, Operation, Storage, StorageKind},
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
}

/// The dispatch loop.
pub struct DispatchTask {
    db: Db,
    key: MasterKey,
    registry: AgentRegistry,
    waker: DispatchWaker,
    settings: DispatchSettings,
}

impl DispatchTask {
    /// New task.
    pub fn new(
        db: Db,
        key: MasterKey,
        registry: AgentRegistry,
        waker: DispatchWaker,
        settings: DispatchSettings,
    ) -> Self {
        Self {
            db,
            key,
            registry,
            waker,
            settings,
        }
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
        for agent in self.registry.connected() {
            if !self.db.running_for_agent(agent).await?.is_empty() {
                continue;
            }
            for queued in self.db.queued_for_agent(agent, 1).await? {
                let Some(claimed) = self.db.claim(queued.id, self.settings.lease_secs).await?
                else {
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
                        ControllerError::Database(_) | ControllerError::Crypto(_) => {
                            "internal error".to_owned()
                        }
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
                self.db
                    .append_log(
                        ex.id,
                        "info",
                        &format!("assigned to agent {} (attempt {})", ex.agent_id, ex.attempt),
                    )
                    .await?;
            } else {
                // The agent left between claim and send: fail this attempt; nothing was started.
                self.db
                    .finish_failed(
                        ex.id,
                        attempt,
                        "agent disconnected before the assignment",
                        false,
                    )
                    .await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn build_assign(&self, ex: &Execution) -> ControllerResult<pb::ControllerMessage> {
        let ds =
            self.db.datasource(ex.datasource_id).await?.ok_or_else(|| {
                ControllerError::NotFound(format!("datasource {}", ex.datasource_id))
            })?;
        let task =
            match ex.operation {
                Operation::Backup => {
                    let job_id = ex.job_id.ok_or_else(|| {
                        ControllerError::FailedPrecondition("backup without job".into())
                    })?;
                    let job =
                        self.db.job(job_id).await?.ok_or_else(|| {
                            ControllerError::NotFound(format!("backup job {job_id}"))
                        })?;
                    let storages = self.db.job_storages(job_id).await?;
                    let prefix = manifest::attempt_prefix(
                        ds.id.into(),
                        ex.id.into(),
                        u32::try_from(ex.attempt).unwrap_or_default(),
                    );
                    pb::assign::Task::Backup(pb::BackupTask {
                        source: Some(self.database_target(&ds, None)?),
                        storages: storages
                            .iter()
                            .map(|s| storage_target(s, ex.agent_id))
                            .collect::<Result<_, _>>()?,
                        strategy: match job.storage_strategy {
                            crate::model::Strategy::Fallback => pb::StorageStrategy::Fallback,
                            crate::model::Strategy::Replicate => pb::StorageStrategy::Replicate,
                        } as i32,
                        key_prefix: prefix,
                        compression_level: job.compression_level,
                        chunk_size: self.settings.chunk_size,
                    })
                }
                Operation::Restore => {
                    let backup_id = ex.source_backup_id.ok_or_else(|| {
                        ControllerError::FailedPrecondition("restore without backup".into())
                    })?;
                    let backup =
                        self.db.execution(backup_id).await?.ok_or_else(|| {
                            ControllerError::NotFound(format!("backup {backup_id}"))
                        })?;
                    let source_ds =
                        self.db
                            .datasource(backup.datasource_id)
                            .await?
                            .ok_or_else(|| {
                                ControllerError::NotFound(format!(
                                    "datasource {}",
                                    backup.datasource_id
                                ))
                            })?;
                    let copies = self.db.backup_storage_ids(backup_id).await?;
                    let all_chunks = self.db.chunks(backup_id, backup.attempt).await?;
                    let mut storages = Vec::new();
                    for sid in &copies {
                        if let Some(s) = self.db.storage(*sid).await?
                            && let Ok(t) = storage_target(&s, ex.agent_id)
                        {
                            storages.push(t);
                        }
                    }
                    if storages.is_empty() {
                        return Err(ControllerError::FailedPrecondition(
                            "no storage holding this backup is reachable from the target's agent"
                                .into(),
                        ));
                    }
                    // Chunk keys and checksums are identical in every copy; take the first copy's list.
                    let first = copies.first().copied().unwrap_or_default();
                    let chunks = all_chunks
                        .iter()
                        .filter(|c| c.storage_id == first)
                        .map(|c| pb::ChunkRef {
                            seq: u32::try_from(c.seq).unwrap_or_default(),
                            key: c.object_key.clone(),
                            size: u64::try_from(c.size).unwrap_or_default(),
                            sha256: c.sha256.clone(),
                        })
                        .collect();
                    let opt = |k: &str| {
                        ex.options
                            .get(k)
                            .and_then(serde_json::Value::as_bool)
                            .unwrap_or(false)
                    };
                    pb::assign::Task::Restore(pb::RestoreTask {
                        target: Some(self.database_target(&ds, ex.target_database.clone())?),
                        storages,
                        chunks,
                        sha256: backup.sha256.clone().unwrap_or_default(),
                        create_database: opt("create_database"),
                        drop_existing: opt("drop_existing"),
                        source_engine: engine_pb(source_ds.engine) as i32,
                    })
                }
                Operation::Verify => {
                    return Err(ControllerError::FailedPrecondition(
                        "verification runs are not supported yet".into(),
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

    fn database_target(
        &self,
        ds: &Datasource,
        database: Option<String>,
    ) -> ControllerResult<pb::DatabaseTarget> {
        let password = match &ds.password_ciphertext {
            Some(ct) => String::from_utf8(self.key.decrypt(ds.id.as_bytes(), ct)?)
                .map_err(|_| ControllerError::Pki("stored password is not UTF-8".into()))?,
            None => String::new(),
        };
        Ok(pb::DatabaseTarget {
            engine: engine_pb(ds.engine) as i32,
            host: ds.host.clone(),
            port: u32::try_from(ds.port).unwrap_or_default(),
            database: database.unwrap_or_else(|| ds.database_name.clone()),
            username: ds.username.clone(),
            password,
            tls_mode: match ds.tls_mode {
                crate::model::TlsMode::Disable => pb::TlsMode::Disable,
                crate::model::TlsMode::Prefer => pb::TlsMode::Prefer,
                crate::model::TlsMode::Require => pb::TlsMode::Require,
                crate::model::TlsMode::VerifyFull => pb::TlsMode::VerifyFull,
            } as i32,
        })
    }
}

/// The pb engine of a domain engine.
pub fn engine_pb(e: crate::model::Engine) -> pb::Engine {
    match e {
        crate::model::Engine::Postgres => pb::Engine::Postgres,
        crate::model::Engine::Mysql => pb::Engine::Mysql,
        crate::model::Engine::Mariadb => pb::Engine::Mariadb,
    }
}

/// What the agent needs to open a storage. A local storage is usable only by the agent on whose host it is.
pub fn storage_target(s: &Storage, agent: Uuid) -> ControllerResult<pb::StorageTarget> {
    match s.kind {
        StorageKind::Local => {
            if s.agent_id != Some(agent) {
                return Err(ControllerError::FailedPrecondition(format!(
                    "local storage {} is on another agent's host",
                    s.name
                )));
            }
            let path = s
                .config
                .get("path")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| {
                    ControllerError::Invalid(FieldError::new("local.path", "missing"))
                })?;
            Ok(pb::StorageTarget {
                storage_id: s.id.to_string(),
                config: Some(pb::storage_target::Config::Local(pb::LocalStorageConfig {
                    path: path.to_owned(),
                    agent_id: agent.to_string(),
                })),
            })
        }
        other => Err(ControllerError::FailedPrecondition(format!(
            "storage kind {other} is not supported yet"
        ))),
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
