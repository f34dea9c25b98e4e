//! The edge between generated `pb` types and the domain: request validation (the only place it happens; a
//! failure names the field) and conversion of domain records into responses (never a secret).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dg_common::error::FieldError;
use dg_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    db::Page,
    model::{self, Engine, Status, Strategy, TlsMode},
    service::{
        catalog::{NewDatasource, NewJob, NewStorageConfig},
        dispatch::engine_pb,
        executions::RestoreRequest,
    },
};

type V<T> = Result<T, FieldError>;

/// A timestamp for responses.
pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn ots(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(ts)
}

/// A required UUID field.
pub fn id(field: &'static str, s: &str) -> V<Uuid> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|_| FieldError::new(field, "must be a UUID"))
}

/// An optional UUID field (empty = none).
pub fn opt_id(field: &'static str, s: &str) -> V<Option<Uuid>> {
    if s.is_empty() {
        Ok(None)
    } else {
        id(field, s).map(Some)
    }
}

/// Page size and token.
pub fn page(size: i32, token: &str, default: i64, max: i64) -> V<Page> {
    let limit = match size {
        0 => default,
        n if n < 0 => return Err(FieldError::new("page_size", "must not be negative")),
        n => i64::from(n).min(max),
    };
    let offset = if token.is_empty() {
        0
    } else {
        token
            .strip_prefix('o')
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| FieldError::new("page_token", "is not a token returned by this API"))?
    };
    Ok(Page { offset, limit })
}

/// A display name: 1-128 characters, no control characters.
pub fn name(field: &'static str, s: &str) -> V<String> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must be 1-128 printable characters"));
    }
    Ok(s.to_owned())
}

/// An identifier handed to a database tool: non-empty, bounded, printable, and never option-looking.
pub fn tool_arg(field: &'static str, s: &str, max: usize) -> V<String> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} printable characters"),
        ));
    }
    if s.starts_with('-') {
        return Err(FieldError::new(field, "must not start with '-'"));
    }
    Ok(s.to_owned())
}

fn host(s: &str) -> V<String> {
    let h = tool_arg("host", s, 253)?;
    if h.chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '\\')
    {
        return Err(FieldError::new(
            "host",
            "must be a host name or an IP address",
        ));
    }
    Ok(h)
}

fn engine(v: i32) -> V<Engine> {
    match pb::Engine::try_from(v) {
        Ok(pb::Engine::Postgres) => Ok(Engine::Postgres),
        Ok(pb::Engine::Mysql) => Ok(Engine::Mysql),
        Ok(pb::Engine::Mariadb) => Ok(Engine::Mariadb),
        Ok(pb::Engine::Unspecified) => Err(FieldError::new("engine", "is required")),
        Err(_) => Err(FieldError::new("engine", format!("unknown engine {v}"))),
    }
}

fn tls_mode(v: i32) -> V<TlsMode> {
    match pb::TlsMode::try_from(v) {
        Ok(pb::TlsMode::Unspecified | pb::TlsMode::Prefer) => Ok(TlsMode::Prefer),
        Ok(pb::TlsMode::Disable) => Ok(TlsMode::Disable),
        Ok(pb::TlsMode::Require) => Ok(TlsMode::Require),
        Ok(pb::TlsMode::VerifyFull) => Ok(TlsMode::VerifyFull),
        Err(_) => Err(FieldError::new("tls_mode", format!("unknown TLS mode {v}"))),
    }
}

/// An absolute local path without `..`, NUL or a leading '-'.
pub fn local_path(field: &'static str, s: &str) -> V<String> {
    if !s.starts_with('/') {
        return Err(FieldError::new(field, "must be an absolute path"));
    }
    if s.len() > 4096 || s.contains('\0') || s.split('/').any(|c| c == "..") {
        return Err(FieldError::new(field, "must not contain '..' or NUL"));
    }
    Ok(s.to_owned())
}

impl TryFrom<pb::CreateDatasourceRequest> for NewDatasource {
    type Error = FieldError;
    fn try_from(r: pb::CreateDatasourceRequest) -> V<Self> {
        let engine = engine(r.engine)?;
        let port = match r.port {
            0 => match engine {
                Engine::Postgres => 5432,
                Engine::Mysql | Engine::Mariadb => 3306,
            },
            p => u16::try_from(p).map_err(|_| FieldError::new("port", "must be 1-65535"))?,
        };
        if r.password.len() > 1024 {
            return Err(FieldError::new("password", "must be at most 1024 bytes"));
        }
        if r.labels.len() > 64
            || r.labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256)
        {
            return Err(FieldError::new(
                "labels",
                "at most 64 labels, keys 1-63 and values up to 256 characters",
            ));
        }
        Ok(NewDatasource {
            name: name("name", &r.name)?,
            engine,
            host: host(&r.host)?,
            port,
            database: tool_arg("database", &r.database, 63)?,
            username: tool_arg("username", &r.username, 63)?,
            password: (!r.password.is_empty()).then_some(r.password),
            tls_mode: tls_mode(r.tls_mode)?,
            agent_id: id("agent_id", &r.agent_id)?,
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
        })
    }
}

/// Validates a storage creation request.
pub fn new_storage(r: pb::CreateStorageRequest) -> V<(String, NewStorageConfig)> {
    let n = name("name", &r.name)?;
    match r.config {
        Some(pb::create_storage_request::Config::Local(l)) => Ok((
            n,
            NewStorageConfig::Local {
                path: local_path("local.path", &l.path)?,
                agent_id: id("local.agent_id", &l.agent_id)?,
            },
        )),
        None => Err(FieldError::new(
            "config",
            "one of local, s3, gcs, azure is required",
        )),
    }
}

fn cron(s: &str) -> V<String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    let fields = s.split_whitespace().count();
    if s.len() > 128 || !(5..=6).contains(&fields) || s.chars().any(char::is_control) {
        return Err(FieldError::new(
            "cron",
            "must be a cron expression of 5 or 6 fields",
        ));
    }
    Ok(s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn time_zone(s: &str) -> V<String> {
    if s.is_empty() {
        return Ok("UTC".into());
    }
    if s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
    {
        return Err(FieldError::new(
            "time_zone",
            "must be an IANA time zone name",
        ));
    }
    Ok(s.to_owned())
}

impl TryFrom<pb::CreateBackupJobRequest> for NewJob {
    type Error = FieldError;
    fn try_from(r: pb::CreateBackupJobRequest) -> V<Self> {
        let strategy = match pb::StorageStrategy::try_from(r.storage_strategy) {
            Ok(pb::StorageStrategy::Unspecified | pb::StorageStrategy::Fallback) => {
                Strategy::Fallback
            }
            Ok(pb::StorageStrategy::Replicate) => Strategy::Replicate,
            Err(_) => return Err(FieldError::new("storage_strategy", "unknown strategy")),
        };
        if r.storage_ids.is_empty() {
            return Err(FieldError::new(
                "storage_ids",
                "at least one storage is required",
            ));
        }
        if r.storage_ids.len() > 16 {
            return Err(FieldError::new("storage_ids", "at most 16 storages"));
        }
        let mut storage_ids = Vec::new();
        for s in &r.storage_ids {
            let sid = id("storage_ids", s)?;
            if storage_ids.contains(&sid) {
                return Err(FieldError::new("storage_ids", "must not repeat a storage"));
            }
            storage_ids.push(sid);
        }
        let compression_level = match r.compression_level {
            0 => 3,
            l @ 1..=19 => l,
            _ => return Err(FieldError::new("compression_level", "must be 1-19")),
        };
        let ret = r.retention.unwrap_or_default();
        let (keep_daily, keep_weekly, keep_monthly) = if ret.max_backups == 0
            && ret.keep_daily == 0
            && ret.keep_weekly == 0
            && ret.keep_monthly == 0
        {
            (7, 0, 0)
        } else {
            (ret.keep_daily, ret.keep_weekly, ret.keep_monthly)
        };
        if [ret.max_backups, keep_daily, keep_weekly, keep_monthly]
            .iter()
            .any(|v| *v > 10_000)
        {
            return Err(FieldError::new("retention", "values must be at most 10000"));
        }
        Ok(NewJob {
            name: name("name", &r.name)?,
            datasource_id: id("datasource_id", &r.datasource_id)?,
            cron: cron(&r.cron)?,
            time_zone: time_zone(&r.time_zone)?,
            max_backups: ret.max_backups,
            keep_daily,
            keep_weekly,
            keep_monthly,
            strategy,
            storage_ids,
            compression_level,
            enabled: r.enabled.unwrap_or(true),
        })
    }
}

impl TryFrom<pb::RestoreBackupRequest> for RestoreRequest {
    type Error = FieldError;
    fn try_from(r: pb::RestoreBackupRequest) -> V<Self> {
        if r.confirm_target_database.is_empty() {
            return Err(FieldError::new(
                "confirm_target_database",
                "is required: repeat the target database name",
            ));
        }
        Ok(RestoreRequest {
            backup_id: id("backup_id", &r.backup_id)?,
            target_datasource_id: opt_id("target_datasource_id", &r.target_datasource_id)?,
            target_database: if r.target_database.is_empty() {
                None
            } else {
                Some(tool_arg("target_database", &r.target_database, 63)?)
            },
            create_database: r.create_database,
            drop_existing: r.drop_existing,
            confirm_target_database: r.confirm_target_database,
        })
    }
}

/// Execution status filter.
pub fn status_filter(v: i32) -> V<Option<Status>> {
    Ok(
        match pb::ExecutionStatus::try_from(v)
            .map_err(|_| FieldError::new("status", "unknown status"))?
        {
            pb::ExecutionStatus::Unspecified => None,
            pb::ExecutionStatus::Queued => Some(Status::Queued),
            pb::ExecutionStatus::Running => Some(Status::Running),
            pb::ExecutionStatus::Completed => Some(Status::Completed),
            pb::ExecutionStatus::Failed => Some(Status::Failed),
            pb::ExecutionStatus::Cancelled => Some(Status::Cancelled),
        },
    )
}

/// Operation filter.
pub fn operation_filter(v: i32) -> V<Option<model::Operation>> {
    Ok(
        match pb::Operation::try_from(v)
            .map_err(|_| FieldError::new("operation", "unknown operation"))?
        {
            pb::Operation::Unspecified => None,
            pb::Operation::Backup => Some(model::Operation::Backup),
            pb::Operation::Restore => Some(model::Operation::Restore),
            pb::Operation::Verify => Some(model::Operation::Verify),
        },
    )
}

// ---- responses ---------------------------------------------------------------------------------------------

/// Agent response.
pub fn agent(a: &model::Agent) -> pb::Agent {
    let status = if a.revoked_at.is_some() {
        pb::AgentStatus::Revoked
    } else if a.connected {
        pb::AgentStatus::Online
    } else {
        pb::AgentStatus::Offline
    };
    let tools = serde_json::from_value::<Vec<ToolJson>>(a.tools.clone()).unwrap_or_default();
    pb::Agent {
        id: a.id.to_string(),
        hostname: a.hostname.clone(),
        status: status as i32,
        version: a.version.clone(),
        tools: tools
            .into_iter()
            .map(|t| pb::ToolInfo {
                name: t.name,
                version: t.version,
                path: t.path,
            })
            .collect(),
        last_heartbeat_at: ots(a.last_heartbeat_at),
        enrolled_at: Some(ts(a.enrolled_at)),
        certificate_expires_at: ots(a.cert_expires_at),
    }
}

/// How tools are stored in `agent.tools`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ToolJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Path.
    pub path: String,
}

/// Datasource response (never the password).
pub fn datasource(d: &model::Datasource) -> pb::Datasource {
    pb::Datasource {
        id: d.id.to_string(),
        name: d.name.clone(),
        engine: engine_pb(d.engine) as i32,
        host: d.host.clone(),
        port: u32::try_from(d.port).unwrap_or_default(),
        database: d.database_name.clone(),
        username: d.username.clone(),
        has_password: d.password_ciphertext.is_some(),
        tls_mode: match d.tls_mode {
            TlsMode::Disable => pb::TlsMode::Disable,
            TlsMode::Prefer => pb::TlsMode::Prefer,
            TlsMode::Require => pb::TlsMode::Require,
            TlsMode::VerifyFull => pb::TlsMode::VerifyFull,
        } as i32,
        agent_id: d.agent_id.to_string(),
        labels: serde_json::from_value(d.labels.clone()).unwrap_or_default(),
        created_at: Some(ts(d.created_at)),
        updated_at: Some(ts(d.updated_at)),
    }
}

/// Storage response.
pub fn storage(s: &model::Storage) -> pb::Storage {
    let (kind, config) = match s.kind {
        model::StorageKind::Local => (
            pb::StorageKind::Local,
            Some(pb::storage::Config::Local(pb::LocalStorageConfig {
                path: s
                    .config
                    .get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                agent_id: s.agent_id.map(|a| a.to_string()).unwrap_or_default(),
            })),
        ),
        model::StorageKind::S3 => (pb::StorageKind::S3, None),
        model::StorageKind::Gcs => (pb::StorageKind::Gcs, None),
        model::StorageKind::Azure => (pb::StorageKind::Azure, None),
    };
    pb::Storage {
        id: s.id.to_string(),
        name: s.name.clone(),
        kind: kind as i32,
        config,
        created_at: Some(ts(s.created_at)),
    }
}

/// Job response.
pub fn job(j: &model::BackupJob, storage_ids: &[Uuid]) -> pb::BackupJob {
    let u = |v: i32| u32::try_from(v).unwrap_or_default();
    pb::BackupJob {
        id: j.id.to_string(),
        name: j.name.clone(),
        datasource_id: j.datasource_id.to_string(),
        cron: j.cron.clone(),
        time_zone: j.time_zone.clone(),
        retention: Some(pb::RetentionPolicy {
            max_backups: u(j.max_backups),
            keep_daily: u(j.keep_daily),
            keep_weekly: u(j.keep_weekly),
            keep_monthly: u(j.keep_monthly),
        }),
        storage_strategy: match j.storage_strategy {
            Strategy::Fallback => pb::StorageStrategy::Fallback,
            Strategy::Replicate => pb::StorageStrategy::Replicate,
        } as i32,
        storage_ids: storage_ids.iter().map(Uuid::to_string).collect(),
        compression_level: j.compression_level,
        enabled: j.enabled,
        created_at: Some(ts(j.created_at)),
    }
}

/// Execution response.
pub fn execution(e: &model::Execution) -> pb::Execution {
    pb::Execution {
        id: e.id.to_string(),
        operation: match e.operation {
            model::Operation::Backup => pb::Operation::Backup,
            model::Operation::Restore => pb::Operation::Restore,
            model::Operation::Verify => pb::Operation::Verify,
        } as i32,
        status: match e.status {
            Status::Queued => pb::ExecutionStatus::Queued,
            Status::Running => pb::ExecutionStatus::Running,
            Status::Completed => pb::ExecutionStatus::Completed,
            Status::Failed => pb::ExecutionStatus::Failed,
            Status::Cancelled => pb::ExecutionStatus::Cancelled,
        } as i32,
        job_id: e.job_id.map(|j| j.to_string()).unwrap_or_default(),
        datasource_id: e.datasource_id.to_string(),
        agent_id: e.agent_id.to_string(),
        attempt: u32::try_from(e.attempt).unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
        started_at: ots(e.started_at),
        finished_at: ots(e.finished_at),
        error: e.error.clone().unwrap_or_default(),
        raw_bytes: u64::try_from(e.raw_bytes).unwrap_or_default(),
        stored_bytes: u64::try_from(e.stored_bytes).unwrap_or_default(),
        chunk_count: u32::try_from(e.chunk_count).unwrap_or_default(),
        sha256: e.sha256.clone().unwrap_or_default(),
        source_backup_id: e
            .source_backup_id
            .map(|j| j.to_string())
            .unwrap_or_default(),
        target_database: e.target_database.clone().unwrap_or_default(),
    }
}

/// Backup response.
pub fn backup(e: &model::Execution, storage_ids: &[Uuid], chunks: &[model::Chunk]) -> pb::Backup {
    pb::Backup {
        id: e.id.to_string(),
        job_id: e.job_id.map(|j| j.to_string()).unwrap_or_default(),
        datasource_id: e.datasource_id.to_string(),
        started_at: ots(e.started_at),
        completed_at: ots(e.finished_at),
        raw_bytes: u64::try_from(e.raw_bytes).unwrap_or_default(),
        stored_bytes: u64::try_from(e.stored_bytes).unwrap_or_default(),
        sha256: e.sha256.clone().unwrap_or_default(),
        chunk_count: u32::try_from(e.chunk_count).unwrap_or_default(),
        storage_ids: storage_ids.iter().map(Uuid::to_string).collect(),
        manifest_key: e.manifest_key.clone().unwrap_or_default(),
        chunks: chunks
            .iter()
            .map(|c| pb::BackupChunk {
                seq: u32::try_from(c.seq).unwrap_or_default(),
                storage_id: c.storage_id.to_string(),
                key: c.object_key.clone(),
                size: u64::try_from(c.size).unwrap_or_default(),
                sha256: c.sha256.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds_req() -> pb::CreateDatasourceRequest {
        pb::CreateDatasourceRequest {
            name: "main".into(),
            engine: pb::Engine::Postgres as i32,
            host: "127.0.0.1".into(),
            port: 0,
            database: "app".into(),
            username: "backup".into(),
            password: "pw".into(),
            tls_mode: 0,
            agent_id: Uuid::now_v7().to_string(),
            labels: Default::default(),
        }
    }

    #[test]
    fn datasource_validation_names_the_field() {
        let ok = NewDatasource::try_from(ds_req()).expect("valid");
        assert_eq!(ok.port, 5432);
        assert_eq!(ok.tls_mode, TlsMode::Prefer);
        type Mutation = Box<dyn Fn(&mut pb::CreateDatasourceRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|r| r.name.clear())),
            ("engine", Box::new(|r| r.engine = 0)),
            ("engine", Box::new(|r| r.engine = 99)),
            ("host", Box::new(|r| r.host = "a b".into())),
            ("port", Box::new(|r| r.port = 70000)),
            (
                "database",
                Box::new(|r| r.database = "--file=/etc/passwd".into()),
            ),
            ("database", Box::new(|r| r.database.clear())),
            ("username", Box::new(|r| r.username = "-U".into())),
            ("agent_id", Box::new(|r| r.agent_id = "nope".into())),
            ("tls_mode", Box::new(|r| r.tls_mode = 42)),
        ];
        for (field, mutate) in cases {
            let mut r = ds_req();
            mutate(&mut r);
            let err = NewDatasource::try_from(r).expect_err(field);
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn paths_and_pages() {
        assert!(local_path("p", "/var/backups").is_ok());
        assert!(local_path("p", "relative").is_err());
        assert!(local_path("p", "/var/../etc").is_err());
        assert_eq!(page(0, "", 50, 500).expect("page").limit, 50);
        assert_eq!(page(10_000, "o20", 50, 500).expect("page").offset, 20);
        assert_eq!(page(10_000, "", 50, 500).expect("page").limit, 500);
        assert_eq!(
            page(1, "zz", 50, 500).expect_err("token").field,
            "page_token"
        );
        let p = Page {
            offset: 0,
            limit: 2,
        };
        assert_eq!(p.next_token(2), "o2");
        assert_eq!(p.next_token(1), "");
    }
}
