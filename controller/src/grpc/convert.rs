//! Domain records into responses. Never a secret: passwords, keys and tokens have no path out of here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dg_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    model::{self, RetentionMode, Status, Strategy, TlsMode},
    service::{
        catalog::TestOutcome, retention::RetentionPreview, retention_policy::RetentionPolicy, schedule, storages,
    },
};

/// A timestamp for responses.
pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn ots(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(ts)
}

/// A duration for responses.
pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// How tools are stored in `agent.tools`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ToolJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Path.
    pub path: String,
}

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
        tools: tools.into_iter().map(|t| pb::ToolInfo { name: t.name, version: t.version, path: t.path }).collect(),
        last_heartbeat_at: ots(a.last_heartbeat_at),
        enrolled_at: Some(ts(a.enrolled_at)),
        certificate_expires_at: ots(a.cert_expires_at),
    }
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

/// Storage response (never the credentials).
pub fn storage(s: &model::Storage) -> pb::Storage {
    let kind = match s.kind {
        model::StorageKind::Local => pb::StorageKind::Local,
        model::StorageKind::S3 => pb::StorageKind::S3,
        model::StorageKind::Gcs => pb::StorageKind::Gcs,
        model::StorageKind::Azure => pb::StorageKind::Azure,
    };
    pb::Storage {
        id: s.id.to_string(),
        name: s.name.clone(),
        kind: kind as i32,
        config: storage_config(s),
        created_at: Some(ts(s.created_at)),
        has_credentials: s.credentials_ciphertext.is_some(),
        updated_at: Some(ts(s.updated_at)),
        labels: serde_json::from_value(s.labels.clone()).unwrap_or_default(),
    }
}

/// Job response, with the next 5 run times.
pub fn job(j: &model::BackupJob, storage_ids: &[Uuid]) -> pb::BackupJob {
    let u = |v: i32| u32::try_from(v).unwrap_or_default();
    let next_runs = match schedule::parse(&j.cron, &j.time_zone) {
        Ok(Some(s)) => s.next_runs(Utc::now(), 5).into_iter().map(ts).collect(),
        _ => Vec::new(),
    };
    pb::BackupJob {
        id: j.id.to_string(),
        name: j.name.clone(),
        datasource_id: j.datasource_id.to_string(),
        cron: j.cron.clone(),
        time_zone: j.time_zone.clone(),
        retention: Some(retention(&RetentionPolicy::of(j))),
        storage_strategy: match j.storage_strategy {
            Strategy::Fallback => pb::StorageStrategy::Fallback,
            Strategy::Replicate => pb::StorageStrategy::Replicate,
        } as i32,
        storage_ids: storage_ids.iter().map(Uuid::to_string).collect(),
        compression_level: j.compression_level,
        adaptive_compression: j
            .compression_min_level
            .zip(j.compression_max_level)
            .map(|(min_level, max_level)| pb::AdaptiveCompression { min_level, max_level }),
        parallel: u(j.parallel).max(1),
        enabled: j.enabled,
        created_at: Some(ts(j.created_at)),
        retry: Some(pb::RetryPolicy {
            max_attempts: u(j.retry_max_attempts),
            backoff: Some(prost_types::Duration { seconds: i64::from(j.retry_backoff_secs), nanos: 0 }),
        }),
        next_runs,
        encryption_key_id: j.encryption_key_id.clone(),
        include_globals: j.include_globals,
        updated_at: Some(ts(j.updated_at)),
        rpo: (j.rpo_secs > 0).then_some(prost_types::Duration { seconds: j.rpo_secs, nanos: 0 }),
        labels: serde_json::from_value(j.labels.clone()).unwrap_or_default(),
        rpo_breached_since: j.rpo_breached_since.map(ts),
        verify: Some(pb::VerifySchedule {
            cron: j.verify_cron.clone(),
            after_backup: j.verify_after_backup,
            read_rate_bytes_per_second: u64::try_from(j.verify_read_rate).unwrap_or(0),
        }),
    }
}

/// Retention policy response.
pub fn retention(p: &RetentionPolicy) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        max_backups: p.max_backups,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
        mode: match p.mode {
            RetentionMode::Count => pb::RetentionMode::Count,
            RetentionMode::Gfs => pb::RetentionMode::Gfs,
        } as i32,
        keep_hourly: p.keep_hourly,
        keep_yearly: p.keep_yearly,
        min_backups: p.min_backups,
        max_age: (p.max_age_secs > 0).then(|| dur(Duration::from_secs(p.max_age_secs))),
    }
}

/// Retention preview response.
pub fn retention_preview(p: &RetentionPreview) -> pb::PreviewRetentionResponse {
    pb::PreviewRetentionResponse {
        backups: p
            .decisions
            .iter()
            .map(|d| pb::RetentionDecision {
                backup_id: d.backup.id.to_string(),
                completed_at: Some(ts(d.backup.completed_at)),
                keep: d.verdict.keeps(),
                reasons: d.verdict.reasons(),
                pinned: d.backup.pin.is_some(),
            })
            .collect(),
        policy: Some(retention(&p.policy)),
        time_zone: p.time_zone.clone(),
        evaluated_at: Some(ts(p.evaluated_at)),
    }
}

/// Status to pb.
pub fn status(s: Status) -> pb::ExecutionStatus {
    match s {
        Status::Queued => pb::ExecutionStatus::Queued,
        Status::Running => pb::ExecutionStatus::Running,
        Status::Completed => pb::ExecutionStatus::Completed,
        Status::Failed => pb::ExecutionStatus::Failed,
        Status::Cancelled => pb::ExecutionStatus::Cancelled,
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
        status: status(e.status) as i32,
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
        source_backup_id: e.source_backup_id.map(|j| j.to_string()).unwrap_or_default(),
        target_database: e.target_database.clone().unwrap_or_default(),
        warnings: warnings(e),
        encryption_key_id: e.encryption_key_id.clone().unwrap_or_default(),
    }
}

/// Log line response.
pub fn log_line(l: &model::LogLine) -> pb::ExecutionLogLine {
    pb::ExecutionLogLine { at: Some(ts(l.at)), level: l.level.clone(), message: l.message.clone() }
}

/// Backup response.
pub fn backup(
    e: &model::Execution,
    storage_ids: &[Uuid],
    chunks: &[model::Chunk],
    copies: &[model::CopyRecord],
) -> pb::Backup {
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
        encryption_key_id: e.encryption_key_id.clone().unwrap_or_default(),
        warnings: warnings(e),
        pinned: e.pinned,
        pin_reason: if e.pinned { e.pin_reason.clone().unwrap_or_default() } else { String::new() },
        imported: e.imported,
        parallel: e.layout_sha256.is_some(),
        copies: copies.iter().map(backup_copy).collect(),
        table_counts: Vec::new(),
    }
}

/// A copy and its last verify, as `GetBackup` shows it.
fn backup_copy(c: &model::CopyRecord) -> pb::BackupCopy {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Damaged {
        seq: u32,
        fault: String,
        detail: String,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Detail {
        damaged_chunks: Vec<Damaged>,
        problems: Vec<String>,
    }
    let detail: Detail = serde_json::from_value(c.verify_detail.clone()).unwrap_or_default();
    pb::BackupCopy {
        storage_id: c.storage_id.to_string(),
        verify_status: match c.verify_status.as_deref() {
            Some("intact") => pb::CopyVerifyStatus::Intact,
            Some("damaged") => pb::CopyVerifyStatus::Damaged,
            Some("missing") => pb::CopyVerifyStatus::Missing,
            _ => pb::CopyVerifyStatus::Unspecified,
        } as i32,
        verified_at: ots(c.verified_at),
        verify_execution_id: c.verify_execution_id.map(|v| v.to_string()).unwrap_or_default(),
        damaged_chunks: detail
            .damaged_chunks
            .into_iter()
            .map(|d| pb::DamagedChunk { seq: d.seq, fault: d.fault, detail: d.detail })
            .collect(),
        problems: detail.problems,
    }
}

fn warnings(e: &model::Execution) -> Vec<String> {
    serde_json::from_value(e.warnings.clone()).unwrap_or_default()
}

/// Test result response.
pub fn test_result(o: &TestOutcome) -> pb::TestResult {
    pb::TestResult {
        ok: o.ok,
        latency: Some(dur(o.latency)),
        error: o.error.clone(),
        server_version: o.server_version.clone(),
        checked_at: Some(ts(o.checked_at)),
    }
}

/// A persisted check as a test result.
pub fn health_check(h: &model::HealthCheck) -> pb::TestResult {
    pb::TestResult {
        ok: h.ok,
        latency: h.latency_ms.map(|ms| dur(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))),
        error: h.error.clone().unwrap_or_default(),
        server_version: h.detail.clone().unwrap_or_default(),
        checked_at: Some(ts(h.checked_at)),
    }
}

/// Audit event response.
pub fn audit_event(a: &model::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: a.id,
        at: Some(ts(a.at)),
        actor: a.actor.clone(),
        action: a.action.clone(),
        target_kind: a.target_kind.clone(),
        target_id: a.target_id.clone().unwrap_or_default(),
        outcome: a.outcome.clone(),
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

/// The operator view of a storage's configuration (no secrets).
fn storage_config(s: &model::Storage) -> Option<pb::storage::Config> {
    let p = storages::public(s);
    Some(match s.kind {
        model::StorageKind::Local => pb::storage::Config::Local(pb::LocalStorageConfig {
            path: p.path,
            agent_id: s.agent_id.map(|a| a.to_string()).unwrap_or_default(),
        }),
        model::StorageKind::S3 => pb::storage::Config::S3(pb::S3StorageConfig {
            endpoint: p.endpoint,
            region: p.region,
            bucket: p.bucket,
            prefix: p.prefix,
            path_style: p.path_style,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        }),
        model::StorageKind::Gcs => pb::storage::Config::Gcs(pb::GcsStorageConfig {
            bucket: p.bucket,
            prefix: p.prefix,
            service_account_key: String::new(),
            endpoint: p.endpoint,
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        }),
        model::StorageKind::Azure => pb::storage::Config::Azure(pb::AzureStorageConfig {
            account: p.account,
            container: p.container,
            prefix: p.prefix,
            access_key: String::new(),
            endpoint: p.endpoint,
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        }),
    })
}

/// An import's report.
pub fn import_report(r: &crate::service::import::ImportReport, dry_run: bool) -> pb::ImportCatalogResponse {
    pb::ImportCatalogResponse {
        imported_backup_ids: r.imported.iter().map(Uuid::to_string).collect(),
        skipped: r
            .skipped
            .iter()
            .map(|(k, id, why)| pb::SkippedManifest {
                manifest_key: k.clone(),
                backup_id: id.to_string(),
                reason: why.clone(),
            })
            .collect(),
        failed: r
            .failed
            .iter()
            .map(|(k, why)| pb::FailedManifest { manifest_key: k.clone(), reason: why.clone() })
            .collect(),
        dry_run,
    }
}

/// A drill.
pub fn drill(d: &model::RestoreDrill) -> pb::RestoreDrill {
    let s = d.schema();
    pb::RestoreDrill {
        id: d.id.to_string(),
        name: d.name.clone(),
        datasource_id: d.datasource_id.to_string(),
        target_datasource_id: d.target_datasource_id.to_string(),
        cron: d.cron.clone().unwrap_or_default(),
        time_zone: d.time_zone.clone(),
        max_backup_age: Some(dur(Duration::from_secs(u64::try_from(d.max_backup_age_secs).unwrap_or(0)))),
        row_count_tolerance_percent: d.tolerance_percent,
        assert_row_counts: d.assert_row_counts,
        sql_assertions: d
            .sql()
            .into_iter()
            .map(|a| pb::SqlAssertion {
                name: a.name,
                query: a.query,
                expect: Some(match a.expect {
                    crate::service::drill_judge::Expect::Scalar(v) => pb::sql_assertion::Expect::Scalar(v),
                    crate::service::drill_judge::Expect::AtLeastOneRow => {
                        pb::sql_assertion::Expect::AtLeastOneRow(true)
                    }
                }),
            })
            .collect(),
        schema: s.any().then_some(pb::SchemaExpectations {
            min_tables: s.min_tables,
            min_views: s.min_views,
            min_functions: s.min_functions,
            min_sequences: s.min_sequences,
        }),
        enabled: d.enabled,
        next_run_at: ots(d.next_run_at.filter(|_| d.enabled && d.cron.is_some())),
        created_at: Some(ts(d.created_at)),
        scratch_database_prefix: d.scratch_prefix.clone(),
    }
}

/// A drill run with its evidence.
pub fn drill_run(r: &model::DrillRun) -> pb::DrillRun {
    let e = r.evidence();
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    pb::DrillRun {
        id: r.id.to_string(),
        drill_id: r.drill_id.to_string(),
        status: match r.status {
            model::DrillRunStatus::Running => pb::DrillRunStatus::Running,
            model::DrillRunStatus::Passed => pb::DrillRunStatus::Passed,
            model::DrillRunStatus::Failed => pb::DrillRunStatus::Failed,
        } as i32,
        trigger: r.trigger.clone(),
        started_at: Some(ts(r.started_at)),
        finished_at: ots(r.finished_at),
        backup_id: opt(r.backup_id),
        backup_completed_at: ots(r.backup_completed_at),
        target_datasource_id: r.target_datasource_id.to_string(),
        scratch_database: r.scratch_database.clone().unwrap_or_default(),
        execution_id: opt(r.execution_id),
        assertions: e
            .assertions
            .into_iter()
            .map(|a| pb::AssertionOutcome {
                name: a.name,
                kind: a.kind,
                expected: a.expected,
                actual: a.actual,
                passed: a.passed,
            })
            .collect(),
        rto_ms: e.rto_ms.unwrap_or_default(),
        duration_ms: e.duration_ms.unwrap_or_default(),
        error: r.error.clone().unwrap_or_default(),
        notes: e.notes,
    }
}

/// Row counts recorded with a backup.
pub fn table_counts(list: &[dg_common::protocol::drill::TableCount]) -> Vec<pb::TableRowCount> {
    list.iter().cloned().map(Into::into).collect()
}
