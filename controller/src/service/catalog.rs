//! The catalog: datasources, storages and backup jobs. Inputs arrive validated (see `grpc::convert`); this
//! layer checks what needs the database (referenced ids exist, agents match), encrypts credentials, and runs
//! connection and storage tests (recording each as a health check).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use dg_common::protocol::LevelBounds;
use uuid::Uuid;

use super::{
    notify::{Event, Notifier},
    retention_policy::RetentionPolicy,
    schedule,
    scrub::{self, VerifySchedule},
    storages::{self, StorageSpec},
};
use crate::session::rpc::{AgentRpc, TestReport};
use crate::{
    crypto::MasterKey,
    db::{Db, Deletion, Page},
    error::{ControllerError, ControllerResult},
    model::{BackupJob, Datasource, Engine, Storage, StorageKind, Strategy, TlsMode},
};

/// A validated new datasource.
#[derive(Debug, Clone)]
pub struct NewDatasource {
    /// Name.
    pub name: String,
    /// Engine.
    pub engine: Engine,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// User.
    pub username: String,
    /// Password (write-only).
    pub password: Option<String>,
    /// TLS mode.
    pub tls_mode: TlsMode,
    /// Bound agent.
    pub agent_id: Uuid,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A validated datasource change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct DatasourcePatch {
    /// Name.
    pub name: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Database.
    pub database: Option<String>,
    /// User.
    pub username: Option<String>,
    /// Password; `Some("")` removes it.
    pub password: Option<String>,
    /// TLS mode.
    pub tls_mode: Option<TlsMode>,
    /// Agent.
    pub agent_id: Option<Uuid>,
    /// Labels to merge (or replace).
    pub labels: BTreeMap<String, String>,
    /// Replace labels instead of merging.
    pub replace_labels: bool,
}

/// A validated new or changed backup job.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Name.
    pub name: String,
    /// Datasource.
    pub datasource_id: Uuid,
    /// Cron (may be empty).
    pub cron: String,
    /// Time zone.
    pub time_zone: String,
    /// Retention policy.
    pub retention: RetentionPolicy,
    /// Strategy.
    pub strategy: Strategy,
    /// Ordered storages.
    pub storage_ids: Vec<Uuid>,
    /// zstd level.
    pub compression_level: i32,
    /// Adaptive compression bounds (`None`: the fixed level).
    pub adaptive_compression: Option<LevelBounds>,
    /// Parallel streams, within `PARALLEL_RANGE` (above 1: PostgreSQL only, checked here).
    pub parallel: u32,
    /// Enabled.
    pub enabled: bool,
    /// Retry: attempts in all.
    pub retry_max_attempts: u32,
    /// Retry: wait.
    pub retry_backoff_secs: u32,
    /// Agent-held encryption key id ("" = none).
    pub encryption_key_id: String,
    /// PostgreSQL globals.
    pub include_globals: bool,
    /// Recovery-point objective in seconds (0 = none).
    pub rpo_secs: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Scheduled scrubbing.
    pub verify: VerifySchedule,
}

/// A validated job change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct JobPatch {
    /// Name.
    pub name: Option<String>,
    /// Cron.
    pub cron: Option<String>,
    /// Time zone.
    pub time_zone: Option<String>,
    /// Retention policy (replaces the old one).
    pub retention: Option<RetentionPolicy>,
    /// Strategy.
    pub strategy: Option<Strategy>,
    /// Storages.
    pub storage_ids: Option<Vec<Uuid>>,
    /// zstd level.
    pub compression_level: Option<i32>,
    /// Adaptive compression: `Some(None)` turns it off.
    pub adaptive_compression: Option<Option<LevelBounds>>,
    /// Parallel streams, within `PARALLEL_RANGE`.
    pub parallel: Option<u32>,
    /// Retry (attempts, backoff secs).
    pub retry: Option<(u32, u32)>,
    /// Encryption key id.
    pub encryption_key_id: Option<String>,
    /// PostgreSQL globals.
    pub include_globals: Option<bool>,
    /// Recovery-point objective in seconds (0 clears it).
    pub rpo_secs: Option<i64>,
    /// Labels to merge (or set, with `replace_labels`).
    pub labels: BTreeMap<String, String>,
    /// Replace labels instead of merging.
    pub replace_labels: bool,
    /// Scheduled scrubbing (replaces the old settings).
    pub verify: Option<VerifySchedule>,
}

/// A validated storage change.
#[derive(Debug)]
pub struct StoragePatch {
    /// Storage.
    pub id: Uuid,
    /// New name.
    pub name: Option<String>,
    /// New configuration.
    pub spec: Option<StorageSpec>,
    /// Labels to merge (or set, with `replace_labels`).
    pub labels: BTreeMap<String, String>,
    /// Replace labels instead of merging.
    pub replace_labels: bool,
}

/// Result of a connection or storage test.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// Passed.
    pub ok: bool,
    /// Round trip.
    pub latency: Duration,
    /// Failure.
    pub error: String,
    /// Server version (databases).
    pub server_version: String,
    /// When.
    pub checked_at: DateTime<Utc>,
}

impl TestOutcome {
    fn failed(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            latency: Duration::ZERO,
            error: error.into(),
            server_version: String::new(),
            checked_at: Utc::now(),
        }
    }

    fn from_report(r: TestReport) -> Self {
        Self { ok: r.ok, latency: r.latency, error: r.error, server_version: r.server_version, checked_at: Utc::now() }
    }
}

/// Catalog service.
#[derive(Clone, Debug)]
pub struct CatalogService {
    db: Db,
    key: MasterKey,
    rpc: AgentRpc,
    /// Storages may use the hosts' ambient cloud credentials (`Config::allow_ambient_credentials`).
    allow_ambient_credentials: bool,
    /// Health flips become events.
    notifier: Notifier,
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl CatalogService {
    /// New service.
    pub fn new(db: Db, key: MasterKey, rpc: AgentRpc, allow_ambient_credentials: bool, notifier: Notifier) -> Self {
        Self { db, key, rpc, allow_ambient_credentials, notifier }
    }

    async fn require_agent(&self, id: Uuid) -> ControllerResult<()> {
        match self.db.agent(id).await? {
            Some(a) if a.revoked_at.is_none() => Ok(()),
            Some(_) => Err(ControllerError::FailedPrecondition(format!("agent_id: agent {id} is revoked"))),
            None => Err(ControllerError::NotFound(format!("agent {id}"))),
        }
    }

    fn encrypt_password(&self, id: Uuid, password: Option<&str>) -> ControllerResult<Option<Vec<u8>>> {
        Ok(match password {
            Some(p) if !p.is_empty() => Some(self.key.encrypt(id.as_bytes(), p.as_bytes())?),
            _ => None,
        })
    }

    // ---- datasources ---------------------------------------------------------------------------------------

    /// Creates a datasource; the password is encrypted with the new row's id as associated data.
    pub async fn create_datasource(&self, n: NewDatasource) -> ControllerResult<Datasource> {
        self.require_agent(n.agent_id).await?;
        let id = Uuid::now_v7();
        let now = Utc::now();
        let d = Datasource {
            id,
            name: n.name,
            engine: n.engine,
            host: n.host,
            port: i32::from(n.port),
            database_name: n.database,
            username: n.username,
            password_ciphertext: self.encrypt_password(id, n.password.as_deref())?,
            tls_mode: n.tls_mode,
            agent_id: n.agent_id,
            labels: serde_json::to_value(&n.labels).unwrap_or_default(),
            created_at: now,
            updated_at: now,
        };
        Ok(self.db.insert_datasource(&d).await?)
    }

    /// Applies a change.
    pub async fn update_datasource(&self, id: Uuid, p: DatasourcePatch) -> ControllerResult<Datasource> {
        let mut d = self.datasource(id).await?;
        let moved = retargeted(&d, &p);
        if d.password_ciphertext.is_some() && p.password.is_none() && !moved.is_empty() {
            return Err(dg_common::error::FieldError::new(
                "password",
                format!(
                    "must be given again: {} changed, and a stored password is never sent to a new destination",
                    moved.join(", ")
                ),
            )
            .into());
        }
        if let Some(agent) = p.agent_id
            && agent != d.agent_id
        {
            self.require_agent(agent).await?;
            d.agent_id = agent;
        }
        if let Some(v) = p.name {
            d.name = v;
        }
        if let Some(v) = p.host {
            d.host = v;
        }
        if let Some(v) = p.port {
            d.port = i32::from(v);
        }
        if let Some(v) = p.database {
            d.database_name = v;
        }
        if let Some(v) = p.username {
            d.username = v;
        }
        if let Some(v) = p.tls_mode {
            d.tls_mode = v;
        }
        if let Some(pw) = p.password.as_deref() {
            d.password_ciphertext = self.encrypt_password(d.id, Some(pw))?;
        }
        if p.replace_labels || !p.labels.is_empty() {
            d.labels = merge_labels(&d.labels, p.labels, p.replace_labels)?;
        }
        self.db.update_datasource(&d).await?.ok_or_else(|| ControllerError::NotFound(format!("datasource {id}")))
    }

    /// Deletes a datasource; returns (jobs, executions) deleted along.
    pub async fn delete_datasource(&self, id: Uuid, force: bool) -> ControllerResult<(u32, u32)> {
        match self.db.delete_datasource(id, force).await? {
            Deletion::Deleted { first, second } => Ok((first, second)),
            Deletion::Refused(why) => Err(ControllerError::FailedPrecondition(why)),
            Deletion::NotFound => Err(ControllerError::NotFound(format!("datasource {id}"))),
        }
    }

    /// The connection details for one job, password decrypted (sent only to the bound agent).
    pub fn database_target(
        &self,
        ds: &Datasource,
        database: Option<String>,
    ) -> ControllerResult<dg_common::protocol::DatabaseTarget> {
        let password = match &ds.password_ciphertext {
            Some(ct) => String::from_utf8(self.key.decrypt(ds.id.as_bytes(), ct)?)
                .map_err(|_| ControllerError::Pki("stored password is not UTF-8".into()))?,
            None => String::new(),
        };
        Ok(dg_common::protocol::DatabaseTarget {
            engine: ds.engine.into(),
            host: ds.host.clone(),
            port: u16::try_from(ds.port).unwrap_or_default(),
            database: database.unwrap_or_else(|| ds.database_name.clone()),
            username: ds.username.clone(),
            password: password.into(),
            tls_mode: ds.tls_mode.into(),
        })
    }

    /// Tests a datasource's connection from its agent and records the result.
    pub async fn test_datasource(&self, id: Uuid) -> ControllerResult<TestOutcome> {
        let ds = self.datasource(id).await?;
        let target = self.database_target(&ds, None)?;
        let outcome = Self::outcome(self.rpc.test_database(ds.agent_id, target).await);
        self.record("datasource", id, &outcome).await?;
        Ok(outcome)
    }

    fn outcome(r: ControllerResult<TestReport>) -> TestOutcome {
        match r {
            Ok(r) => TestOutcome::from_report(r),
            Err(e) => TestOutcome::failed(e.to_string()),
        }
    }

    async fn record(&self, kind: &str, id: Uuid, o: &TestOutcome) -> ControllerResult<()> {
        let ms = i32::try_from(o.latency.as_millis()).unwrap_or(i32::MAX);
        let error = (!o.ok).then_some(o.error.as_str());
        let detail = (!o.server_version.is_empty()).then_some(o.server_version.as_str());
        let (check, previous) = self.db.insert_health(kind, id, o.ok, o.ok.then_some(ms), error, detail).await?;
        // Only a flip between healthy and critical is news; the check that flipped it keys the event.
        if previous.is_some_and(|p| p != o.ok) {
            self.notifier.emit(Event::health_changed(kind, id, check, o.ok, &o.error)).await;
        }
        Ok(())
    }

    /// One datasource.
    pub async fn datasource(&self, id: Uuid) -> ControllerResult<Datasource> {
        self.db.datasource(id).await?.ok_or_else(|| ControllerError::NotFound(format!("datasource {id}")))
    }

    /// A page of datasources.
    pub async fn list_datasources(&self, page: Page) -> ControllerResult<Vec<Datasource>> {
        Ok(self.db.list_datasources(page).await?)
    }

    // ---- storages ------------------------------------------------------------------------------------------

    /// Creates a storage.
    pub async fn create_storage(
        &self,
        name: String,
        spec: StorageSpec,
        labels: BTreeMap<String, String>,
    ) -> ControllerResult<Storage> {
        if let StorageSpec::Local { agent_id, .. } = &spec {
            self.require_agent(*agent_id).await?;
        }
        let now = Utc::now();
        let mut s = Storage {
            id: Uuid::now_v7(),
            name,
            kind: spec.kind(),
            config: serde_json::Value::Null,
            agent_id: None,
            credentials_ciphertext: None,
            labels: serde_json::to_value(&labels).unwrap_or_default(),
            created_at: now,
            updated_at: now,
        };
        spec.apply(&mut s, &self.key, self.allow_ambient_credentials)?;
        Ok(self.db.insert_storage(&s).await?)
    }

    /// Renames, relabels and/or reconfigures a storage (same kind; secrets left empty are kept).
    pub async fn update_storage(&self, p: StoragePatch) -> ControllerResult<Storage> {
        let id = p.id;
        let mut s = self.storage(id).await?;
        if let Some(n) = p.name {
            s.name = n;
        }
        if p.replace_labels || !p.labels.is_empty() {
            s.labels = merge_labels(&s.labels, p.labels, p.replace_labels)?;
        }
        if let Some(spec) = p.spec {
            if spec.kind() != s.kind {
                return Err(dg_common::error::FieldError::new(
                    "config",
                    format!("the kind cannot change (it is {})", s.kind),
                )
                .into());
            }
            if let StorageSpec::Local { agent_id, .. } = &spec
                && s.agent_id != Some(*agent_id)
            {
                self.require_agent(*agent_id).await?;
                if self.db.storage_used_by_other_agents(id, *agent_id).await? {
                    return Err(ControllerError::FailedPrecondition(
                        "local.agent_id: jobs back up datasources of another agent into this storage".into(),
                    ));
                }
            }
            spec.apply(&mut s, &self.key, self.allow_ambient_credentials)?;
        }
        self.db.update_storage(&s).await?.ok_or_else(|| ControllerError::NotFound(format!("storage {id}")))
    }

    /// Deletes a storage; returns the number of jobs it was removed from.
    pub async fn delete_storage(&self, id: Uuid, force: bool) -> ControllerResult<u32> {
        match self.db.delete_storage(id, force).await? {
            Deletion::Deleted { first, .. } => Ok(first),
            Deletion::Refused(why) => Err(ControllerError::FailedPrecondition(why)),
            Deletion::NotFound => Err(ControllerError::NotFound(format!("storage {id}"))),
        }
    }

    /// Tests a saved storage and records the result.
    pub async fn test_storage(&self, id: Uuid) -> ControllerResult<TestOutcome> {
        let s = self.storage(id).await?;
        let outcome = self.test_stored(&s).await;
        self.record("storage", id, &outcome).await?;
        Ok(outcome)
    }

    /// Tests an unsaved configuration.
    pub async fn test_spec(&self, spec: StorageSpec) -> ControllerResult<TestOutcome> {
        let mut s = Storage {
            id: Uuid::now_v7(),
            name: "unsaved".into(),
            kind: spec.kind(),
            config: serde_json::Value::Null,
            agent_id: None,
            credentials_ciphertext: None,
            labels: serde_json::json!({}),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        spec.apply(&mut s, &self.key, self.allow_ambient_credentials)?;
        Ok(self.test_stored(&s).await)
    }

    /// Local storages are probed by their agent; cloud storages by the controller itself.
    async fn test_stored(&self, s: &Storage) -> TestOutcome {
        let target = match storages::target(s, &self.key) {
            Ok(t) => t,
            Err(e) => return TestOutcome::failed(e.to_string()),
        };
        if s.kind == StorageKind::Local {
            let Some(agent) = s.agent_id else { return TestOutcome::failed("local storage without an agent") };
            return Self::outcome(self.rpc.test_storage(agent, target).await);
        }
        let probe = async {
            let cfg = storages::store_config(s, &self.key).map_err(|e| e.to_string())?;
            let store = dg_common::store::open(&cfg).map_err(|e| e.0)?;
            dg_common::store::probe(store.as_ref(), &format!(".dataguardian-probe/{}", Uuid::new_v4()))
                .await
                .map_err(|e| e.0)
        };
        match probe.await {
            Ok(latency) => TestOutcome {
                ok: true,
                latency,
                error: String::new(),
                server_version: String::new(),
                checked_at: Utc::now(),
            },
            Err(e) => TestOutcome::failed(e),
        }
    }

    /// One storage.
    pub async fn storage(&self, id: Uuid) -> ControllerResult<Storage> {
        self.db.storage(id).await?.ok_or_else(|| ControllerError::NotFound(format!("storage {id}")))
    }

    /// A page of storages.
    pub async fn list_storages(&self, page: Page) -> ControllerResult<Vec<Storage>> {
        Ok(self.db.list_storages(page).await?)
    }

    // ---- jobs ----------------------------------------------------------------------------------------------

    async fn check_targets(&self, ds: &Datasource, storage_ids: &[Uuid]) -> ControllerResult<()> {
        for sid in storage_ids {
            let s = self.db.storage(*sid).await?.ok_or_else(|| ControllerError::NotFound(format!("storage {sid}")))?;
            if !storages::reachable_by(&s, ds.agent_id) {
                return Err(ControllerError::FailedPrecondition(format!(
                    "storage_ids: local storage {} is on another agent than datasource {}",
                    s.name, ds.name
                )));
            }
        }
        Ok(())
    }

    /// Creates a job. Local storages must sit on the datasource's agent, which is the one that writes them.
    pub async fn create_job(&self, n: NewJob) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let ds = self.datasource(n.datasource_id).await?;
        check_parallel(&ds, n.parallel)?;
        self.check_targets(&ds, &n.storage_ids).await?;
        let now = Utc::now();
        let mut j = BackupJob {
            id: Uuid::now_v7(),
            name: n.name,
            datasource_id: n.datasource_id,
            cron: n.cron,
            time_zone: n.time_zone,
            max_backups: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            retention_mode: n.retention.mode,
            keep_hourly: 0,
            keep_yearly: 0,
            min_backups: 0,
            max_age_secs: 0,
            storage_strategy: n.strategy,
            compression_level: n.compression_level,
            compression_min_level: n.adaptive_compression.map(|b| b.min),
            compression_max_level: n.adaptive_compression.map(|b| b.max),
            parallel: to_i32(n.parallel),
            enabled: n.enabled,
            retry_max_attempts: to_i32(n.retry_max_attempts),
            retry_backoff_secs: to_i32(n.retry_backoff_secs),
            encryption_key_id: n.encryption_key_id,
            include_globals: n.include_globals,
            rpo_secs: n.rpo_secs,
            labels: serde_json::to_value(&n.labels).unwrap_or_default(),
            rpo_breached_since: None,
            verify_cron: n.verify.cron,
            verify_after_backup: n.verify.after_backup,
            verify_read_rate: i64::try_from(n.verify.read_rate_bytes_per_second).unwrap_or(i64::MAX),
            created_at: now,
            updated_at: now,
        };
        set_retention(&mut j, &n.retention);
        let job = self.db.insert_job(&j, &n.storage_ids).await?;
        Ok((job, n.storage_ids))
    }

    /// Applies a change to a job.
    pub async fn update_job(&self, id: Uuid, p: JobPatch) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let (mut j, _) = self.job(id).await?;
        if let Some(v) = p.name {
            j.name = v;
        }
        let cron = p.cron.unwrap_or_else(|| j.cron.clone());
        let tz = p.time_zone.unwrap_or_else(|| j.time_zone.clone());
        schedule::parse(&cron, &tz)?;
        if let Some(v) = p.verify {
            j.verify_cron = v.cron;
            j.verify_after_backup = v.after_backup;
            j.verify_read_rate = i64::try_from(v.read_rate_bytes_per_second).unwrap_or(i64::MAX);
        }
        // The verify cron is read in the job's (possibly new) time zone.
        j.verify_cron = scrub::verify_cron(&j.verify_cron, &tz)?;
        (j.cron, j.time_zone) = (cron, tz);
        if let Some(r) = &p.retention {
            set_retention(&mut j, r);
        }
        if let Some(s) = p.strategy {
            j.storage_strategy = s;
        }
        if let Some(l) = p.compression_level {
            j.compression_level = l;
        }
        if let Some(a) = p.adaptive_compression {
            (j.compression_min_level, j.compression_max_level) = (a.map(|b| b.min), a.map(|b| b.max));
        }
        if let Some(n) = p.parallel {
            // Checked against the datasource the job backs up (a job keeps its datasource).
            check_parallel(&self.datasource(j.datasource_id).await?, n)?;
            j.parallel = to_i32(n);
        }
        if let Some((a, b)) = p.retry {
            (j.retry_max_attempts, j.retry_backoff_secs) = (to_i32(a), to_i32(b));
        }
        if let Some(k) = p.encryption_key_id {
            j.encryption_key_id = k;
        }
        if let Some(g) = p.include_globals {
            j.include_globals = g;
        }
        if let Some(r) = p.rpo_secs {
            j.rpo_secs = r;
        }
        if p.replace_labels || !p.labels.is_empty() {
            j.labels = merge_labels(&j.labels, p.labels, p.replace_labels)?;
        }
        if let Some(ids) = &p.storage_ids {
            let ds = self.datasource(j.datasource_id).await?;
            self.check_targets(&ds, ids).await?;
        }
        self.db
            .update_job(&j, p.storage_ids.as_deref())
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("backup job {id}")))?;
        self.job(id).await
    }

    /// Deletes a job; returns the queued runs cancelled.
    pub async fn delete_job(&self, id: Uuid) -> ControllerResult<u32> {
        self.db.delete_job(id).await?.ok_or_else(|| ControllerError::NotFound(format!("backup job {id}")))
    }

    /// Enables or disables scheduled runs.
    pub async fn set_job_enabled(&self, id: Uuid, enabled: bool) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let (mut j, _) = self.job(id).await?;
        j.enabled = enabled;
        self.db.update_job(&j, None).await?.ok_or_else(|| ControllerError::NotFound(format!("backup job {id}")))?;
        self.job(id).await
    }

    /// One job with its ordered storage ids.
    pub async fn job(&self, id: Uuid) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let job = self.db.job(id).await?.ok_or_else(|| ControllerError::NotFound(format!("backup job {id}")))?;
        let storages = self.db.job_storages(id).await?.into_iter().map(|s| s.id).collect();
        Ok((job, storages))
    }

    /// A page of jobs with their storage ids.
    pub async fn list_jobs(&self, page: Page) -> ControllerResult<Vec<(BackupJob, Vec<Uuid>)>> {
        let mut out = Vec::new();
        for job in self.db.list_jobs(page).await? {
            let storages = self.db.job_storages(job.id).await?.into_iter().map(|s| s.id).collect();
            out.push((job, storages));
        }
        Ok(out)
    }
}

/// More than one stream is a PostgreSQL backup (several `COPY` streams under one exported snapshot); the
/// other engines' dump tools have no such mode.
fn check_parallel(ds: &Datasource, parallel: u32) -> ControllerResult<()> {
    if parallel > 1 && ds.engine != Engine::Postgres {
        return Err(dg_common::error::FieldError::new(
            "parallel",
            format!("parallel backups are PostgreSQL only; datasource {} is {}", ds.name, ds.engine),
        )
        .into());
    }
    Ok(())
}

/// Writes a validated policy into the job's retention columns.
fn set_retention(j: &mut BackupJob, r: &RetentionPolicy) {
    j.retention_mode = r.mode;
    j.max_backups = to_i32(r.max_backups);
    j.keep_hourly = to_i32(r.keep_hourly);
    j.keep_daily = to_i32(r.keep_daily);
    j.keep_weekly = to_i32(r.keep_weekly);
    j.keep_monthly = to_i32(r.keep_monthly);
    j.keep_yearly = to_i32(r.keep_yearly);
    j.min_backups = to_i32(r.min_backups);
    j.max_age_secs = i64::try_from(r.max_age_secs).unwrap_or(i64::MAX);
}

/// The fields of `p` that send the stored password somewhere else: another server, port, login, TLS mode
/// or agent.
fn retargeted(d: &Datasource, p: &DatasourcePatch) -> Vec<&'static str> {
    let mut out = Vec::new();
    if p.host.as_ref().is_some_and(|h| *h != d.host) {
        out.push("host");
    }
    if p.port.is_some_and(|v| i32::from(v) != d.port) {
        out.push("port");
    }
    if p.username.as_ref().is_some_and(|u| *u != d.username) {
        out.push("username");
    }
    if p.tls_mode.is_some_and(|t| t != d.tls_mode) {
        out.push("tls_mode");
    }
    if p.agent_id.is_some_and(|a| a != d.agent_id) {
        out.push("agent_id");
    }
    out
}

/// Labels after a change: `replace` sets them to `new`, otherwise `new` is merged into `current`.
fn merge_labels(
    current: &serde_json::Value,
    new: BTreeMap<String, String>,
    replace: bool,
) -> ControllerResult<serde_json::Value> {
    let mut labels: BTreeMap<String, String> =
        if replace { BTreeMap::new() } else { serde_json::from_value(current.clone()).unwrap_or_default() };
    labels.extend(new);
    if labels.len() > 64 {
        return Err(dg_common::error::FieldError::new("labels", "at most 64 labels").into());
    }
    Ok(serde_json::to_value(&labels).unwrap_or_default())
}
