//! Dispatch: turns queued executions of agents connected to this replica into `Assign` messages, and the
//! reaper that fails executions whose agent went silent. Claiming is a compare-and-set in PostgreSQL, so
//! several replicas can dispatch side by side; an agent runs one execution at a time. A queued execution goes
//! to its datasource's agent at claim time (work follows a rebound datasource), never to a revoked agent:
//! both are checked in the claim itself, so they hold without Redis. Queued work whose datasource's agent is
//! revoked waits, and its log says why once ([`WAITING_FOR_REBIND`]).

use std::time::Duration;

use dg_common::{
    protocol::{
        self, Assignment, Attempt, BackupPlan, ChunkRef, ExecutionRef, ObjectLayout, Plan, RecordedBackup,
        RecordedEncryption, RestorePlan, StoredObject, VerifyCopy, VerifyPlan,
    },
    telemetry,
};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    attempts::{AttemptEnder, EndCause},
    catalog::CatalogService,
    scrub, storages, verify,
};
use crate::session::deliver::{Delivery, Sessions};
use crate::{
    coordination::Coordination,
    crypto::MasterKey,
    db::Db,
    error::{ControllerError, ControllerResult},
    model::{Chunk, Execution, Operation, RestoreOptions, VerifyOptions},
    session::ToAgent,
};

pub use super::waker::DispatchWaker;

/// What the log of a queued execution says, after `agent <id>`, when its datasource's agent is revoked.
pub const WAITING_FOR_REBIND: &str = " is revoked; waiting for the datasource to be bound to another agent";

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
    /// Read-rate limit of verifies that neither they nor their job set (bytes per second; 0 = unlimited).
    pub verify_read_rate: u64,
}

/// The dispatch loop. Built with a struct literal: every field is a dependency it needs.
pub struct DispatchTask {
    /// Persistence.
    pub db: Db,
    /// Decrypts the credentials an assignment carries.
    pub key: MasterKey,
    /// Datasources and jobs.
    pub catalog: CatalogService,
    /// Agent sessions (dispatch assigns only agents connected to this replica).
    pub sessions: Sessions,
    /// Wake-ups.
    pub waker: DispatchWaker,
    /// Settings.
    pub settings: DispatchSettings,
    /// Redis health (dispatch pauses without it).
    pub coord: Coordination,
    /// Ends attempts that cannot be assigned or delivered.
    pub ender: AttemptEnder,
}

impl DispatchTask {
    /// Runs until cancelled: a round on every wake-up and every two seconds.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut marked_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.waker.notified() => {},
                _ = tick.tick() => {},
            }
            // Waiting reasons are marked every two seconds, however often wake-ups come.
            let mark = marked_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
            if mark {
                marked_at = Some(tokio::time::Instant::now());
            }
            if let Err(e) = self.round(mark).await {
                warn!(error = %e, "dispatch round failed");
            }
        }
    }

    async fn round(&self, mark: bool) -> ControllerResult<()> {
        let started = std::time::Instant::now();
        // PostgreSQL only, so the reason shows while Redis is down too; each execution is marked (and its log
        // written) once, by whichever replica gets there first. Every two seconds only: a report, not work.
        if mark {
            let waiting = self.db.mark_waiting_for_revoked_agents(WAITING_FOR_REBIND).await?;
            if waiting > 0 {
                info!(executions = waiting, "queued work waits: its datasource's agent is revoked");
            }
        }
        if !self.coord.is_up() {
            return Ok(()); // paused while Redis is down; queued work waits in PostgreSQL
        }
        let marked = started.elapsed();
        // One statement for every idle agent with queued work, whatever the fleet's size; those connected
        // here are claimed, each a compare-and-set of its own.
        let registry = self.sessions.registry();
        let next: Vec<_> =
            self.db.next_for_idle_agents().await?.into_iter().filter(|(_, a)| registry.holds(*a)).collect();
        let found = started.elapsed();
        let n = next.len();
        for (id, agent) in next {
            let Some(claimed) = self.db.claim(id, agent, self.settings.lease_secs).await? else {
                continue; // another replica claimed it, or the datasource was rebound or its agent revoked
            };
            self.assign(claimed).await?;
        }
        debug!(
            candidates = n,
            mark_ms = marked.as_secs_f64() * 1e3,
            find_ms = (found - marked).as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "dispatch round"
        );
        Ok(())
    }

    async fn assign(&self, ex: Execution) -> ControllerResult<()> {
        let span = info_span!("execution", execution_id = %ex.id, attempt = ex.attempt, operation = %ex.operation);
        async {
            let assignment = match self.assignment(&ex).await {
                Ok(a) => a,
                Err(ControllerError::Unavailable(e)) => {
                    // The database went away mid-build: the attempt is ended by the reaper's lease logic once
                    // it is back (and retried per policy); nothing was sent.
                    warn!(error = %e, "cannot assign execution now");
                    return Ok(());
                }
                Err(e) => {
                    let text = match &e {
                        ControllerError::Database(_) | ControllerError::Crypto(_) => "internal error".to_owned(),
                        other => other.to_string(),
                    };
                    warn!(error = %e, "cannot assign execution");
                    self.ender.end(&ex, ex.attempt, EndCause::Unassignable(text)).await?;
                    return Ok(());
                }
            };
            // An `Assign` is never relayed, so anything but `Here` means the agent left between claim and send:
            // nothing was started; retried per policy.
            match self.sessions.deliver(ex.agent_id, ToAgent::Assign(Box::new(assignment))).await {
                Delivery::Here => {
                    info!(agent_id = %ex.agent_id, "assigned");
                    let line = format!("assigned to agent {} (attempt {})", ex.agent_id, ex.attempt);
                    self.db.append_log(ex.id, "info", &line).await?;
                }
                Delivery::Relayed { .. } | Delivery::NotConnected => {
                    self.ender.end(&ex, ex.attempt, EndCause::DeliveryFailed).await?;
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn assignment(&self, ex: &Execution) -> ControllerResult<Assignment> {
        let execution = ExecutionRef {
            id: ex.id.into(),
            attempt: Attempt(
                u32::try_from(ex.attempt)
                    .map_err(|_| ControllerError::FailedPrecondition("attempt out of range".into()))?,
            ),
        };
        let ds = self.catalog.datasource(ex.datasource_id).await?;
        let plan = match ex.operation {
            Operation::Backup => Plan::Backup(self.backup_plan(ex, execution, &ds).await?),
            Operation::Restore => Plan::Restore(self.restore_plan(ex, &ds).await?),
            Operation::Verify => Plan::Verify(self.verify_plan(ex).await?),
        };
        Ok(Assignment { execution, trace_context: telemetry::inject_current(), plan })
    }

    async fn backup_plan(
        &self,
        ex: &Execution,
        execution: ExecutionRef,
        ds: &crate::model::Datasource,
    ) -> ControllerResult<BackupPlan> {
        let job_id =
            ex.job_id.ok_or_else(|| ControllerError::FailedPrecondition("the backup job was deleted".into()))?;
        let (job, _) = self.catalog.job(job_id).await?;
        let storages = self
            .db
            .job_storages(job_id)
            .await?
            .iter()
            .filter(|s| storages::reachable_by(s, ex.agent_id))
            .map(|s| storages::target(s, &self.key))
            .collect::<ControllerResult<Vec<_>>>()?;
        if storages.is_empty() {
            return Err(ControllerError::FailedPrecondition("no storage of the job is reachable".into()));
        }
        let clamp = |v: u32, r: &std::ops::RangeInclusive<u32>| v.clamp(*r.start(), *r.end());
        Ok(BackupPlan {
            source: self.catalog.database_target(ds, None)?,
            storages,
            strategy: job.storage_strategy.into(),
            layout: ObjectLayout { datasource: ds.id.into(), execution },
            compression_level: if protocol::LEVEL_RANGE.contains(&job.compression_level) {
                job.compression_level
            } else {
                protocol::DEFAULT_LEVEL
            },
            chunk_size: self
                .settings
                .chunk_size
                .clamp(*protocol::CHUNK_SIZE_RANGE.start(), *protocol::CHUNK_SIZE_RANGE.end()),
            upload_concurrency: clamp(self.settings.upload_concurrency, &protocol::CONCURRENCY_RANGE),
            compression_workers: self.settings.compression_workers.min(protocol::MAX_WORKERS),
            adaptive_compression: job
                .compression_min_level
                .zip(job.compression_max_level)
                .and_then(|(min, max)| protocol::LevelBounds::new(min, max)),
            encryption_key_id: (!job.encryption_key_id.is_empty()).then(|| job.encryption_key_id.clone()),
            include_globals: job.include_globals,
            // Only PostgreSQL has a parallel mode (the catalog refuses more on other engines).
            parallel: match ds.engine {
                crate::model::Engine::Postgres => {
                    clamp(u32::try_from(job.parallel).unwrap_or(1), &protocol::PARALLEL_RANGE)
                }
                _ => 1,
            },
        })
    }

    async fn restore_plan(&self, ex: &Execution, ds: &crate::model::Datasource) -> ControllerResult<RestorePlan> {
        let backup = self.source_backup(ex).await?;
        let backup_id = backup.id;
        let source_ds = self.catalog.datasource(backup.datasource_id).await?;
        let options = RestoreOptions::of(&ex.options);
        // Copies a verify found damaged or missing are left out: the restore never reads them.
        let all = self.db.backup_storage_ids(backup_id).await?;
        let usable = self.db.usable_copy_ids(backup_id).await?;
        let skipped: Vec<String> = all.iter().filter(|s| !usable.contains(s)).map(ToString::to_string).collect();
        if !skipped.is_empty() {
            let line =
                format!("skipping the copies a verify found damaged or missing, in storages {}", skipped.join(", "));
            self.db.append_log(ex.id, "warn", &line).await?;
        }
        let copies = copy_order(usable, options.source_storage_id);
        let mut storages = Vec::new();
        for sid in &copies {
            if let Some(s) = self.db.storage(*sid).await?
                && storages::reachable_by(&s, ex.agent_id)
            {
                storages.push(storages::target(&s, &self.key)?);
            }
        }
        if storages.is_empty() {
            return Err(ControllerError::FailedPrecondition(
                "no storage holding an intact copy of this backup is reachable from the target's agent".into(),
            ));
        }
        let names: Vec<String> = storages.iter().map(|s| s.id.to_string()).collect();
        self.db.append_log(ex.id, "info", &format!("reading the copies in storages {}", names.join(", "))).await?;
        // Keys and checksums are identical in every copy; take the first copy's list.
        let first = copies.first().copied().unwrap_or_default();
        let chunks = self
            .db
            .chunks(backup_id, backup.attempt)
            .await?
            .into_iter()
            .filter(|c| c.storage_id == first)
            .map(chunk_ref)
            .collect();
        Ok(RestorePlan {
            target: self.catalog.database_target(ds, ex.target_database.clone())?,
            target_plan: options.target_plan(),
            storages,
            chunks,
            sha256: backup.sha256.clone().unwrap_or_default(),
            source_engine: source_ds.engine.into(),
            manifest_key: backup.manifest_key.clone().unwrap_or_default(),
            parallel_jobs: options.parallel_jobs,
            restore_globals: options.restore_globals,
            recorded: recorded_backup(&backup),
            raw_bytes: u64::try_from(backup.raw_bytes).ok().filter(|n| *n > 0),
            checks: options.drill.clone().filter(|_| options.verification),
        })
    }
}

impl DispatchTask {
    /// The backup a restore or verify reads.
    async fn source_backup(&self, ex: &Execution) -> ControllerResult<Execution> {
        let id =
            ex.source_backup_id.ok_or_else(|| ControllerError::FailedPrecondition("the backup was deleted".into()))?;
        self.db.execution(id).await?.ok_or_else(|| ControllerError::NotFound(format!("backup {id}")))
    }

    /// A verify reads every complete copy its agent can reach, each against the chunks recorded for it.
    async fn verify_plan(&self, ex: &Execution) -> ControllerResult<VerifyPlan> {
        let backup = self.source_backup(ex).await?;
        let mut copies = Vec::new();
        for c in verify::planned_copies(&self.db, &backup, ex.agent_id).await? {
            let storage = storages::target(&c.storage, &self.key)?;
            copies.push(VerifyCopy { storage, chunks: c.chunks.into_iter().map(chunk_ref).collect() });
        }
        if copies.is_empty() {
            return Err(ControllerError::FailedPrecondition(
                "no storage holding this backup is reachable from its datasource's agent".into(),
            ));
        }
        let names: Vec<String> = copies.iter().map(|c| c.storage.id.to_string()).collect();
        let job_rate = match backup.job_id {
            Some(j) => self.db.job(j).await?.map(|j| u64::try_from(j.verify_read_rate).unwrap_or(0)),
            None => None,
        };
        let requested = VerifyOptions::of(&ex.options).read_rate_bytes_per_second;
        let rate = scrub::effective_read_rate(requested, job_rate, self.settings.verify_read_rate);
        let limit = if rate == 0 { "no read-rate limit".to_owned() } else { format!("reading at most {rate} bytes/s") };
        self.db
            .append_log(ex.id, "info", &format!("verifying the copies in storages {} ({limit})", names.join(", ")))
            .await?;
        Ok(VerifyPlan {
            copies,
            sha256: backup.sha256.clone().unwrap_or_default(),
            manifest_key: backup.manifest_key.clone().unwrap_or_default(),
            recorded: recorded_backup(&backup),
            read_rate_bytes_per_second: rate,
        })
    }
}

/// A recorded chunk as a plan carries it.
fn chunk_ref(c: Chunk) -> ChunkRef {
    ChunkRef {
        seq: u32::try_from(c.seq).unwrap_or_default(),
        key: c.object_key,
        size: u64::try_from(c.size).unwrap_or_default(),
        sha256: c.sha256,
    }
}

/// What the controller recorded about a completed backup beyond its chunks, for the restore plan; `None` for
/// a backup completed before these were recorded.
pub fn recorded_backup(backup: &Execution) -> Option<RecordedBackup> {
    if !backup.trust_recorded {
        return None;
    }
    let globals = match (&backup.globals_key, backup.globals_size, &backup.globals_sha256) {
        (Some(key), Some(size), Some(sha256)) => Some(StoredObject {
            key: key.clone(),
            size: u64::try_from(size).unwrap_or_default(),
            sha256: sha256.clone(),
        }),
        _ => None,
    };
    let encryption = match (&backup.encryption_key_id, &backup.wrapped_key_sha256) {
        (Some(key_id), Some(w)) => Some(RecordedEncryption { key_id: key_id.clone(), wrapped_key_sha256: w.clone() }),
        _ => None,
    };
    Some(RecordedBackup { globals, encryption, layout_sha256: backup.layout_sha256.clone() })
}

/// The order a restore reads a backup's complete copies in: the operator's preferred storage first, then the
/// others in their recorded order (stable, so every attempt of a restore reads the same way).
pub fn copy_order(mut copies: Vec<uuid::Uuid>, preferred: Option<uuid::Uuid>) -> Vec<uuid::Uuid> {
    if let Some(p) = preferred {
        copies.sort_by_key(|c| *c != p);
    }
    copies
}

/// Ends attempts whose lease expired (the agent went silent) through the common ending path, so the job's
/// retry policy applies. Needs only PostgreSQL. Looks once per heartbeat interval, so an attempt is ended
/// at most one heartbeat after its lease. After the database was unreachable, and when this replica starts
/// (the controller may have been down: no heartbeat could be recorded meanwhile), every running attempt
/// first gets a fresh lease instead of being reaped; its agent reconnects and renews it, or it expires a
/// lease later.
pub struct ReaperTask {
    db: Db,
    ender: AttemptEnder,
    lease_secs: i64,
    interval: Duration,
}

impl ReaperTask {
    /// New task, looking every `interval` (the heartbeat interval).
    pub fn new(db: Db, ender: AttemptEnder, lease_secs: i64, interval: Duration) -> Self {
        Self { db, ender, lease_secs, interval }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut db_was_down = true;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            if db_was_down {
                match self.db.extend_all_leases(self.lease_secs).await {
                    Ok(n) => {
                        info!(attempts = n, "controller database reachable again: running attempts get a fresh lease");
                        db_was_down = false;
                    }
                    Err(e) => warn!(error = %e, "reaper: database still unreachable"),
                }
                continue;
            }
            match self.round().await {
                Ok(()) => {}
                Err(ControllerError::Unavailable(e)) => {
                    warn!(error = %e, "reaper: database unreachable; leases will be renewed when it returns");
                    db_was_down = true;
                }
                Err(e) => warn!(error = %e, "reaper round failed"),
            }
        }
    }

    async fn round(&self) -> ControllerResult<()> {
        for ex in self.db.expired_attempts().await? {
            if self.ender.end(&ex, ex.attempt, EndCause::LeaseExpired).await? {
                warn!(execution_id = %ex.id, attempt = ex.attempt, "lease expired; attempt ended");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::copy_order;

    #[test]
    fn the_preferred_copy_is_read_first_and_the_rest_keep_their_order() {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        assert_eq!(copy_order(ids.clone(), None), ids);
        for (i, p) in ids.iter().enumerate() {
            let mut expected = vec![*p];
            expected.extend(ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| *c));
            assert_eq!(copy_order(ids.clone(), Some(*p)), expected);
        }
        // A preferred storage that holds no copy changes nothing (the request was refused earlier anyway).
        assert_eq!(copy_order(ids.clone(), Some(Uuid::now_v7())), ids);
        assert!(copy_order(vec![], Some(ids[0])).is_empty());
    }
}
