//! The catalog: datasources, storages and backup jobs. Inputs arrive validated (see `grpc::convert`); this
//! layer checks what needs the database (referenced ids exist, agents match) and encrypts credentials.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{
    crypto::MasterKey,
    db::{Db, Page},
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

/// A validated new storage.
#[derive(Debug, Clone)]
pub enum NewStorageConfig {
    /// A directory on an agent's host.
    Local {
        /// Absolute path.
        path: String,
        /// Agent.
        agent_id: Uuid,
    },
}

/// A validated new backup job.
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
    /// Retention max backups.
    pub max_backups: u32,
    /// Keep daily.
    pub keep_daily: u32,
    /// Keep weekly.
    pub keep_weekly: u32,
    /// Keep monthly.
    pub keep_monthly: u32,
    /// Strategy.
    pub strategy: Strategy,
    /// Ordered storages.
    pub storage_ids: Vec<Uuid>,
    /// zstd level.
    pub compression_level: i32,
    /// Enabled.
    pub enabled: bool,
}

/// Catalog service.
#[derive(Clone, Debug)]
pub struct CatalogService {
    db: Db,
    key: MasterKey,
}

impl CatalogService {
    /// New service.
    pub fn new(db: Db, key: MasterKey) -> Self {
        Self { db, key }
    }

    async fn require_agent(&self, id: Uuid) -> ControllerResult<()> {
        match self.db.agent(id).await? {
            Some(a) if a.revoked_at.is_none() => Ok(()),
            Some(_) => Err(ControllerError::FailedPrecondition(format!(
                "agent {id} is revoked"
            ))),
            None => Err(ControllerError::NotFound(format!("agent {id}"))),
        }
    }

    /// Creates a datasource; the password is encrypted with the new row's id as associated data.
    pub async fn create_datasource(&self, n: NewDatasource) -> ControllerResult<Datasource> {
        self.require_agent(n.agent_id).await?;
        let id = Uuid::now_v7();
        let password_ciphertext = match n.password.as_deref() {
            Some(p) if !p.is_empty() => Some(self.key.encrypt(id.as_bytes(), p.as_bytes())?),
            _ => None,
        };
        let now = chrono::Utc::now();
        let d = Datasource {
            id,
            name: n.name,
            engine: n.engine,
            host: n.host,
            port: i32::from(n.port),
            database_name: n.database,
            username: n.username,
            password_ciphertext,
            tls_mode: n.tls_mode,
            agent_id: n.agent_id,
            labels: serde_json::to_value(&n.labels).unwrap_or_default(),
            created_at: now,
            updated_at: now,
        };
        Ok(self.db.insert_datasource(&d).await?)
    }

    /// One datasource.
    pub async fn datasource(&self, id: Uuid) -> ControllerResult<Datasource> {
        self.db
            .datasource(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {id}")))
    }

    /// A page of datasources.
    pub async fn list_datasources(&self, page: Page) -> ControllerResult<Vec<Datasource>> {
        Ok(self.db.list_datasources(page).await?)
    }

    /// Creates a storage.
    pub async fn create_storage(
        &self,
        name: String,
        cfg: NewStorageConfig,
    ) -> ControllerResult<Storage> {
        let (kind, config, agent_id) = match cfg {
            NewStorageConfig::Local { path, agent_id } => {
                self.require_agent(agent_id).await?;
                (
                    StorageKind::Local,
                    serde_json::json!({ "path": path }),
                    Some(agent_id),
                )
            }
        };
        let s = Storage {
            id: Uuid::now_v7(),
            name,
            kind,
            config,
            agent_id,
            created_at: chrono::Utc::now(),
        };
        Ok(self.db.insert_storage(&s).await?)
    }

    /// One storage.
    pub async fn storage(&self, id: Uuid) -> ControllerResult<Storage> {
        self.db
            .storage(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("storage {id}")))
    }

    /// A page of storages.
    pub async fn list_storages(&self, page: Page) -> ControllerResult<Vec<Storage>> {
        Ok(self.db.list_storages(page).await?)
    }

    /// Creates a job. Local storages must sit on the datasource's agent, which is the one that writes them.
    pub async fn create_job(&self, n: NewJob) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let ds = self.datasource(n.datasource_id).await?;
        for sid in &n.storage_ids {
            let s = self.storage(*sid).await?;
            if s.kind == StorageKind::Local && s.agent_id != Some(ds.agent_id) {
                return Err(ControllerError::FailedPrecondition(format!(
                    "storage_ids: local storage {} is on another agent than datasource {}",
                    s.name, ds.name
                )));
            }
        }
        let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let j = BackupJob {
            id: Uuid::now_v7(),
            name: n.name,
            datasource_id: n.datasource_id,
            cron: n.cron,
            time_zone: n.time_zone,
            max_backups: to_i32(n.max_backups),
            keep_daily: to_i32(n.keep_daily),
            keep_weekly: to_i32(n.keep_weekly),
            keep_monthly: to_i32(n.keep_monthly),
            storage_strategy: n.strategy,
            compression_level: n.compression_level,
            enabled: n.enabled,
            created_at: chrono::Utc::now(),
        };
        let job = self.db.insert_job(&j, &n.storage_ids).await?;
        Ok((job, n.storage_ids))
    }

    /// One job with its ordered storage ids.
    pub async fn job(&self, id: Uuid) -> ControllerResult<(BackupJob, Vec<Uuid>)> {
        let job = self
            .db
            .job(id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("backup job {id}")))?;
        let storages = self
            .db
            .job_storages(id)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        Ok((job, storages))
    }

    /// A page of jobs with their storage ids.
    pub async fn list_jobs(&self, page: Page) -> ControllerResult<Vec<(BackupJob, Vec<Uuid>)>> {
        let mut out = Vec::new();
        for job in self.db.list_jobs(page).await? {
            let storages = self
                .db
                .job_storages(job.id)
                .await?
                .into_iter()
                .map(|s| s.id)
                .collect();
            out.push((job, storages));
        }
        Ok(out)
    }
}
