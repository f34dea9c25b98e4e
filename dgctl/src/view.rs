//! dgctl's own output model: what `-o json` / `-o yaml` print. These structs, not the wire types, are the
//! stable scripting schema (README, "Operating with dgctl"): fields are only ever added. Times are RFC 3339
//! strings, durations whole seconds, enums lowercase words (`postgres`, `completed`).

use std::collections::BTreeMap;

use dg_proto::v1 as pb;
use serde::Serialize;

use crate::output::{Row, bytes};

/// RFC 3339 of a protobuf timestamp.
pub fn ts(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    chrono::DateTime::from_timestamp(t.seconds, nanos).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Whole seconds of a protobuf duration.
pub fn secs(d: Option<&prost_types::Duration>) -> Option<u64> {
    d.and_then(|d| u64::try_from(d.seconds).ok()).filter(|s| *s > 0)
}

/// `ENGINE_POSTGRES` with prefix `ENGINE_` -> `postgres`.
pub fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// An agent.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub version: String,
    pub tools: Vec<String>,
    pub last_heartbeat_at: Option<String>,
    pub enrolled_at: Option<String>,
    pub certificate_expires_at: Option<String>,
}

impl From<pb::Agent> for Agent {
    fn from(a: pb::Agent) -> Self {
        Self {
            status: word(a.status().as_str_name(), "AGENT_STATUS_"),
            tools: a.tools.iter().map(|t| format!("{} {}", t.name, t.version)).collect(),
            last_heartbeat_at: ts(a.last_heartbeat_at.as_ref()),
            enrolled_at: ts(a.enrolled_at.as_ref()),
            certificate_expires_at: ts(a.certificate_expires_at.as_ref()),
            id: a.id,
            hostname: a.hostname,
            version: a.version,
        }
    }
}

impl Row for Agent {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "HOSTNAME", "STATUS", "VERSION", "LAST HEARTBEAT"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.hostname.clone(),
            self.status.clone(),
            self.version.clone(),
            opt(&self.last_heartbeat_at),
        ]
    }
}

/// A datasource.
#[derive(Debug, Serialize)]
pub struct Datasource {
    pub id: String,
    pub name: String,
    pub engine: String,
    pub host: String,
    pub port: u32,
    pub database: String,
    pub username: String,
    pub has_password: bool,
    pub tls_mode: String,
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<pb::Datasource> for Datasource {
    fn from(d: pb::Datasource) -> Self {
        Self {
            engine: word(d.engine().as_str_name(), "ENGINE_"),
            tls_mode: word(d.tls_mode().as_str_name(), "TLS_MODE_"),
            created_at: ts(d.created_at.as_ref()),
            updated_at: ts(d.updated_at.as_ref()),
            labels: d.labels.into_iter().collect(),
            id: d.id,
            name: d.name,
            host: d.host,
            port: d.port,
            database: d.database,
            username: d.username,
            has_password: d.has_password,
            agent_id: d.agent_id,
        }
    }
}

impl Row for Datasource {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "ENGINE", "HOST", "PORT", "DATABASE", "USER", "ID"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.engine.clone(),
            self.host.clone(),
            self.port.to_string(),
            self.database.clone(),
            self.username.clone(),
            self.id.clone(),
        ]
    }
}

/// A storage; `config` holds the kind's fields (never a secret).
#[derive(Debug, Serialize)]
pub struct Storage {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub config: BTreeMap<String, serde_json::Value>,
    pub has_credentials: bool,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<pb::Storage> for Storage {
    fn from(s: pb::Storage) -> Self {
        use pb::storage::Config;
        use serde_json::json;
        let config: BTreeMap<&str, serde_json::Value> = match &s.config {
            Some(Config::Local(l)) => [("path", json!(l.path)), ("agent_id", json!(l.agent_id))].into(),
            Some(Config::S3(c)) => [
                ("endpoint", json!(c.endpoint)),
                ("region", json!(c.region)),
                ("bucket", json!(c.bucket)),
                ("prefix", json!(c.prefix)),
                ("path_style", json!(c.path_style)),
                ("access_key_id", json!(c.access_key_id)),
                ("allow_http", json!(c.allow_http)),
                ("ambient_credentials", json!(c.ambient_credentials)),
            ]
            .into(),
            Some(Config::Gcs(c)) => [
                ("bucket", json!(c.bucket)),
                ("prefix", json!(c.prefix)),
                ("endpoint", json!(c.endpoint)),
                ("allow_http", json!(c.allow_http)),
                ("ambient_credentials", json!(c.ambient_credentials)),
            ]
            .into(),
            Some(Config::Azure(c)) => [
                ("account", json!(c.account)),
                ("container", json!(c.container)),
                ("prefix", json!(c.prefix)),
                ("endpoint", json!(c.endpoint)),
                ("allow_http", json!(c.allow_http)),
                ("ambient_credentials", json!(c.ambient_credentials)),
            ]
            .into(),
            None => [].into(),
        };
        let config = config.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Self {
            kind: word(s.kind().as_str_name(), "STORAGE_KIND_"),
            created_at: ts(s.created_at.as_ref()),
            updated_at: ts(s.updated_at.as_ref()),
            id: s.id,
            name: s.name,
            config,
            has_credentials: s.has_credentials,
            labels: s.labels.into_iter().collect(),
        }
    }
}

impl Row for Storage {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "KIND", "WHERE", "ID"]
    }
    fn cells(&self) -> Vec<String> {
        let at = |k: &str| self.config.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let place = match self.kind.as_str() {
            "local" => at("path"),
            "azure" => format!("{}/{}/{}", at("account"), at("container"), at("prefix")),
            _ => format!("{}/{}", at("bucket"), at("prefix")),
        };
        vec![self.name.clone(), self.kind.clone(), place, self.id.clone()]
    }
}

/// A retention policy.
#[derive(Debug, Serialize)]
pub struct Retention {
    pub mode: String,
    pub max_backups: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub min_backups: u32,
    pub max_age_secs: Option<u64>,
}

impl From<&pb::RetentionPolicy> for Retention {
    fn from(r: &pb::RetentionPolicy) -> Self {
        Self {
            mode: word(r.mode().as_str_name(), "RETENTION_MODE_"),
            max_backups: r.max_backups,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            min_backups: r.min_backups,
            max_age_secs: secs(r.max_age.as_ref()),
        }
    }
}

/// A backup job.
#[derive(Debug, Serialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub datasource_id: String,
    pub cron: String,
    pub time_zone: String,
    pub enabled: bool,
    pub storage_strategy: String,
    pub storage_ids: Vec<String>,
    pub compression_level: i32,
    /// `fixed`, or `adaptive:MIN..MAX` (the level starts at compression_level).
    pub compression: String,
    /// PostgreSQL: parallel streams for table data (1: one pg_dump stream).
    pub parallel: u32,
    pub retention: Option<Retention>,
    pub retry_max_attempts: u32,
    pub retry_backoff_secs: Option<u64>,
    pub encryption_key_id: String,
    pub include_globals: bool,
    pub rpo_secs: Option<u64>,
    pub rpo_breached_since: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub verify_cron: String,
    pub verify_after_backup: bool,
    pub next_runs: Vec<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<pb::BackupJob> for Job {
    fn from(j: pb::BackupJob) -> Self {
        Self {
            storage_strategy: word(j.storage_strategy().as_str_name(), "STORAGE_STRATEGY_"),
            compression: crate::compression::text(j.adaptive_compression.as_ref()),
            retention: j.retention.as_ref().map(Retention::from),
            retry_max_attempts: j.retry.as_ref().map(|r| r.max_attempts).unwrap_or(1),
            retry_backoff_secs: j.retry.as_ref().and_then(|r| secs(r.backoff.as_ref())),
            rpo_secs: secs(j.rpo.as_ref()),
            rpo_breached_since: ts(j.rpo_breached_since.as_ref()),
            verify_cron: j.verify.as_ref().map(|v| v.cron.clone()).unwrap_or_default(),
            verify_after_backup: j.verify.as_ref().is_some_and(|v| v.after_backup),
            next_runs: j.next_runs.iter().filter_map(|t| ts(Some(t))).collect(),
            created_at: ts(j.created_at.as_ref()),
            updated_at: ts(j.updated_at.as_ref()),
            labels: j.labels.into_iter().collect(),
            id: j.id,
            name: j.name,
            datasource_id: j.datasource_id,
            cron: j.cron,
            time_zone: j.time_zone,
            enabled: j.enabled,
            storage_ids: j.storage_ids,
            compression_level: j.compression_level,
            parallel: j.parallel.max(1),
            encryption_key_id: j.encryption_key_id,
            include_globals: j.include_globals,
        }
    }
}

impl Row for Job {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "CRON", "ENABLED", "NEXT RUN", "ID"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.cron.clone(),
            self.enabled.to_string(),
            self.next_runs.first().cloned().unwrap_or_default(),
            self.id.clone(),
        ]
    }
}

/// An execution.
#[derive(Debug, Serialize)]
pub struct Execution {
    pub id: String,
    pub operation: String,
    pub status: String,
    pub job_id: String,
    pub datasource_id: String,
    pub agent_id: String,
    pub attempt: u32,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub chunk_count: u32,
    pub sha256: String,
    pub source_backup_id: String,
    pub target_database: String,
    pub warnings: Vec<String>,
}

impl From<pb::Execution> for Execution {
    fn from(e: pb::Execution) -> Self {
        Self {
            operation: word(e.operation().as_str_name(), "OPERATION_"),
            status: word(e.status().as_str_name(), "EXECUTION_STATUS_"),
            created_at: ts(e.created_at.as_ref()),
            started_at: ts(e.started_at.as_ref()),
            finished_at: ts(e.finished_at.as_ref()),
            id: e.id,
            job_id: e.job_id,
            datasource_id: e.datasource_id,
            agent_id: e.agent_id,
            attempt: e.attempt,
            error: e.error,
            raw_bytes: e.raw_bytes,
            stored_bytes: e.stored_bytes,
            chunk_count: e.chunk_count,
            sha256: e.sha256,
            source_backup_id: e.source_backup_id,
            target_database: e.target_database,
            warnings: e.warnings,
        }
    }
}

impl Row for Execution {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "OPERATION", "STATUS", "CREATED", "SIZE", "ERROR"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.operation.clone(),
            self.status.clone(),
            opt(&self.created_at),
            bytes(self.raw_bytes),
            self.error.clone(),
        ]
    }
}

/// A completed backup.
#[derive(Debug, Serialize)]
pub struct Backup {
    pub id: String,
    pub job_id: String,
    pub datasource_id: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// SHA-256 (hex) of the whole stored (compressed, possibly encrypted) stream.
    pub sha256: String,
    pub chunk_count: u32,
    pub storage_ids: Vec<String>,
    pub encrypted: bool,
    pub pinned: bool,
    pub pin_reason: String,
    pub imported: bool,
    /// Table data in several streams (restore it; download serves single-stream backups).
    pub parallel: bool,
    pub warnings: Vec<String>,
    pub copies: Vec<BackupCopy>,
}

/// One copy of a backup and its last verify.
#[derive(Debug, Serialize)]
pub struct BackupCopy {
    pub storage_id: String,
    pub verify_status: String,
    pub verified_at: Option<String>,
    pub problems: Vec<String>,
}

impl From<pb::Backup> for Backup {
    fn from(b: pb::Backup) -> Self {
        Self {
            started_at: ts(b.started_at.as_ref()),
            completed_at: ts(b.completed_at.as_ref()),
            encrypted: !b.encryption_key_id.is_empty(),
            copies: b
                .copies
                .iter()
                .map(|c| BackupCopy {
                    storage_id: c.storage_id.clone(),
                    verify_status: match c.verify_status() {
                        pb::CopyVerifyStatus::Unspecified => "unverified".into(),
                        s => word(s.as_str_name(), "COPY_VERIFY_STATUS_"),
                    },
                    verified_at: ts(c.verified_at.as_ref()),
                    problems: c
                        .damaged_chunks
                        .iter()
                        .map(|d| format!("chunk {}: {} {}", d.seq, d.fault, d.detail))
                        .chain(c.problems.iter().cloned())
                        .collect(),
                })
                .collect(),
            id: b.id,
            job_id: b.job_id,
            datasource_id: b.datasource_id,
            raw_bytes: b.raw_bytes,
            stored_bytes: b.stored_bytes,
            sha256: b.sha256,
            chunk_count: b.chunk_count,
            storage_ids: b.storage_ids,
            pinned: b.pinned,
            pin_reason: b.pin_reason,
            imported: b.imported,
            parallel: b.parallel,
            warnings: b.warnings,
        }
    }
}

impl Row for Backup {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "COMPLETED", "SIZE", "STORED", "PINNED"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            opt(&self.completed_at),
            bytes(self.raw_bytes),
            bytes(self.stored_bytes),
            if self.pinned { format!("yes: {}", self.pin_reason) } else { String::new() },
        ]
    }
}

/// An execution log line.
#[derive(Debug, Serialize)]
pub struct LogLine {
    pub at: Option<String>,
    pub level: String,
    pub message: String,
}

impl From<pb::ExecutionLogLine> for LogLine {
    fn from(l: pb::ExecutionLogLine) -> Self {
        Self { at: ts(l.at.as_ref()), level: l.level, message: l.message }
    }
}

impl Row for LogLine {
    fn headers() -> Vec<&'static str> {
        vec!["AT", "LEVEL", "MESSAGE"]
    }
    fn cells(&self) -> Vec<String> {
        vec![opt(&self.at), self.level.clone(), self.message.clone()]
    }
}

/// A connection or storage test.
#[derive(Debug, Serialize)]
pub struct TestResult {
    pub ok: bool,
    pub latency_ms: Option<u64>,
    pub error: String,
    pub server_version: String,
}

impl From<pb::TestResult> for TestResult {
    fn from(t: pb::TestResult) -> Self {
        let latency_ms = t
            .latency
            .as_ref()
            .map(|d| u64::try_from(d.seconds).unwrap_or(0) * 1000 + u64::try_from(d.nanos / 1_000_000).unwrap_or(0));
        Self { ok: t.ok, latency_ms, error: t.error, server_version: t.server_version }
    }
}

/// A restore drill.
#[derive(Debug, Serialize)]
pub struct Drill {
    pub id: String,
    pub name: String,
    pub datasource_id: String,
    pub target_datasource_id: String,
    pub cron: String,
    pub time_zone: String,
    pub max_backup_age_secs: Option<u64>,
    pub row_count_tolerance_percent: f64,
    pub assert_row_counts: bool,
    pub sql_assertions: Vec<String>,
    pub enabled: bool,
    pub next_run_at: Option<String>,
    pub scratch_database_prefix: String,
    pub created_at: Option<String>,
}

impl From<pb::RestoreDrill> for Drill {
    fn from(d: pb::RestoreDrill) -> Self {
        Self {
            max_backup_age_secs: secs(d.max_backup_age.as_ref()),
            sql_assertions: d.sql_assertions.iter().map(|a| a.name.clone()).collect(),
            next_run_at: ts(d.next_run_at.as_ref()),
            created_at: ts(d.created_at.as_ref()),
            id: d.id,
            name: d.name,
            datasource_id: d.datasource_id,
            target_datasource_id: d.target_datasource_id,
            cron: d.cron,
            time_zone: d.time_zone,
            row_count_tolerance_percent: d.row_count_tolerance_percent,
            assert_row_counts: d.assert_row_counts,
            enabled: d.enabled,
            scratch_database_prefix: d.scratch_database_prefix,
        }
    }
}

impl Row for Drill {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "CRON", "ENABLED", "NEXT RUN", "ID"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.name.clone(), self.cron.clone(), self.enabled.to_string(), opt(&self.next_run_at), self.id.clone()]
    }
}

/// A drill run.
#[derive(Debug, Serialize)]
pub struct DrillRun {
    pub id: String,
    pub drill_id: String,
    pub status: String,
    pub trigger: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub backup_id: String,
    pub execution_id: String,
    pub rto_ms: u64,
    pub duration_ms: u64,
    pub error: String,
    pub assertions: Vec<String>,
}

impl From<pb::DrillRun> for DrillRun {
    fn from(r: pb::DrillRun) -> Self {
        Self {
            status: word(r.status().as_str_name(), "DRILL_RUN_STATUS_"),
            started_at: ts(r.started_at.as_ref()),
            finished_at: ts(r.finished_at.as_ref()),
            assertions: r
                .assertions
                .iter()
                .map(|a| format!("{} {}: {}", if a.passed { "ok" } else { "FAILED" }, a.name, a.actual))
                .collect(),
            id: r.id,
            drill_id: r.drill_id,
            trigger: r.trigger,
            backup_id: r.backup_id,
            execution_id: r.execution_id,
            rto_ms: r.rto_ms,
            duration_ms: r.duration_ms,
            error: r.error,
        }
    }
}

impl Row for DrillRun {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "STATUS", "STARTED", "RTO MS", "ERROR"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.id.clone(), self.status.clone(), opt(&self.started_at), self.rto_ms.to_string(), self.error.clone()]
    }
}

/// A notification channel.
#[derive(Debug, Serialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub events: Vec<String>,
    pub label_selector: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub timeout_secs: Option<u64>,
    pub enabled: bool,
    pub created_at: Option<String>,
}

impl From<pb::NotificationChannel> for Channel {
    fn from(c: pb::NotificationChannel) -> Self {
        let target = match (&c.webhook, &c.slack, &c.email) {
            (Some(w), _, _) => w.url.clone(),
            (_, Some(s), _) => s.url_host.clone(),
            (_, _, Some(e)) => e.to.join(", "),
            _ => String::new(),
        };
        Self {
            kind: word(c.kind().as_str_name(), "CHANNEL_KIND_"),
            timeout_secs: secs(c.timeout.as_ref()),
            created_at: ts(c.created_at.as_ref()),
            label_selector: c.label_selector.into_iter().collect(),
            target,
            id: c.id,
            name: c.name,
            events: c.events,
            max_attempts: c.max_attempts,
            enabled: c.enabled,
        }
    }
}

impl Row for Channel {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "KIND", "TARGET", "ENABLED", "ID"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.name.clone(), self.kind.clone(), self.target.clone(), self.enabled.to_string(), self.id.clone()]
    }
}

/// A notification delivery.
#[derive(Debug, Serialize)]
pub struct Delivery {
    pub id: String,
    pub channel_id: String,
    pub event_id: String,
    pub event_kind: String,
    pub status: String,
    pub attempts: u32,
    pub last_error: String,
    pub created_at: Option<String>,
    pub delivered_at: Option<String>,
}

impl From<pb::Delivery> for Delivery {
    fn from(d: pb::Delivery) -> Self {
        Self {
            created_at: ts(d.created_at.as_ref()),
            delivered_at: ts(d.delivered_at.as_ref()),
            id: d.id,
            channel_id: d.channel_id,
            event_id: d.event_id,
            event_kind: d.event_kind,
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error,
        }
    }
}

impl Row for Delivery {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "EVENT", "STATUS", "ATTEMPTS", "ERROR"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.event_kind.clone(),
            self.status.clone(),
            self.attempts.to_string(),
            self.last_error.clone(),
        ]
    }
}

/// An inbox item.
#[derive(Debug, Serialize)]
pub struct InboxItem {
    pub id: String,
    pub kind: String,
    pub summary: String,
    pub read: bool,
    pub created_at: Option<String>,
}

impl From<pb::InboxItem> for InboxItem {
    fn from(i: pb::InboxItem) -> Self {
        Self { created_at: ts(i.created_at.as_ref()), id: i.id, kind: i.kind, summary: i.summary, read: i.read }
    }
}

impl Row for InboxItem {
    fn headers() -> Vec<&'static str> {
        vec!["CREATED", "KIND", "READ", "SUMMARY"]
    }
    fn cells(&self) -> Vec<String> {
        vec![opt(&self.created_at), self.kind.clone(), self.read.to_string(), self.summary.clone()]
    }
}

/// An audit event.
#[derive(Debug, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: Option<String>,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub outcome: String,
}

impl From<pb::AuditEvent> for AuditEvent {
    fn from(a: pb::AuditEvent) -> Self {
        Self {
            at: ts(a.at.as_ref()),
            id: a.id,
            actor: a.actor,
            action: a.action,
            target_kind: a.target_kind,
            target_id: a.target_id,
            outcome: a.outcome,
        }
    }
}

impl Row for AuditEvent {
    fn headers() -> Vec<&'static str> {
        vec!["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            opt(&self.at),
            self.actor.clone(),
            self.action.clone(),
            format!("{} {}", self.target_kind, self.target_id),
            self.outcome.clone(),
        ]
    }
}
