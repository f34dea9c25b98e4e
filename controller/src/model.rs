//! Domain records of the controller. They are what persistence returns and services work with; the
//! `FromQueryResult` derive is the only persistence concern they carry (rows map onto them by column name).
//! Enums are stored as lowercase strings.

use chrono::{DateTime, Utc};
use sea_orm::{ColIdx, DbErr, FromQueryResult, QueryResult, TryGetError, TryGetable};
use uuid::Uuid;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),* }

        impl $name {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$variant),)* other => Err(format!("unknown {}: {other}", stringify!($name))) }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryGetable for $name {
            fn try_get_by<I: ColIdx>(res: &QueryResult, idx: I) -> Result<Self, TryGetError> {
                let s = String::try_get_by(res, idx)?;
                s.parse().map_err(|e: String| TryGetError::DbErr(DbErr::Type(e)))
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(v: $name) -> Self {
                v.as_str().into()
            }
        }
    };
}

string_enum!(
    /// Database engine.
    Engine { Postgres = "postgres", Mysql = "mysql", Mariadb = "mariadb" }
);
string_enum!(
    /// TLS mode towards a database.
    TlsMode { Disable = "disable", Prefer = "prefer", Require = "require", VerifyFull = "verify-full" }
);
string_enum!(
    /// Object store kind.
    StorageKind { Local = "local", S3 = "s3", Gcs = "gcs", Azure = "azure" }
);
string_enum!(
    /// Storage strategy of a job.
    Strategy { Fallback = "fallback", Replicate = "replicate" }
);
string_enum!(
    /// How a job's retention counts are read (see `service::retention_policy`).
    RetentionMode { Count = "count", Gfs = "gfs" }
);
string_enum!(
    /// What an execution does.
    Operation { Backup = "backup", Restore = "restore", Verify = "verify" }
);
string_enum!(
    /// Execution lifecycle state.
    Status { Queued = "queued", Running = "running", Completed = "completed", Failed = "failed", Cancelled = "cancelled" }
);

impl Status {
    /// Whether the execution has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// An enrolled agent.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Reported host name.
    pub hostname: String,
    /// Reported version.
    pub version: String,
    /// Reported tools as JSON `[{name, version, path}]`.
    pub tools: serde_json::Value,
    /// Enrollment time.
    pub enrolled_at: DateTime<Utc>,
    /// Last heartbeat.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Whether a session stream is open on some replica.
    pub connected: bool,
    /// Newest certificate expiry.
    pub cert_expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A datasource with its encrypted password.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Datasource {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Engine.
    pub engine: Engine,
    /// Host as seen from the agent.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Database name.
    pub database_name: String,
    /// Login user.
    pub username: String,
    /// AES-256-GCM ciphertext of the password (row id as AAD).
    pub password_ciphertext: Option<Vec<u8>>,
    /// TLS mode.
    pub tls_mode: TlsMode,
    /// Bound agent.
    pub agent_id: Uuid,
    /// Labels as a JSON object.
    pub labels: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A storage.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Storage {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Kind.
    pub kind: StorageKind,
    /// Kind-specific configuration (JSON).
    pub config: serde_json::Value,
    /// Agent that hosts a local storage.
    pub agent_id: Option<Uuid>,
    /// AES-256-GCM ciphertext of the write-only credentials (JSON), row id as AAD.
    pub credentials_ciphertext: Option<Vec<u8>>,
    /// Labels as a JSON object.
    pub labels: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A backup job (storage targets loaded separately, in order).
#[derive(Clone, Debug, FromQueryResult)]
pub struct BackupJob {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Datasource backed up.
    pub datasource_id: Uuid,
    /// Cron expression (empty: on demand only).
    pub cron: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Retention: max backups (0 = use keep_*).
    pub max_backups: i32,
    /// Retention: daily.
    pub keep_daily: i32,
    /// Retention: weekly.
    pub keep_weekly: i32,
    /// Retention: monthly.
    pub keep_monthly: i32,
    /// Retention: how the counts are read.
    pub retention_mode: RetentionMode,
    /// Retention (GFS): hourly.
    pub keep_hourly: i32,
    /// Retention (GFS): yearly.
    pub keep_yearly: i32,
    /// Retention: the newest this many good backups always stay.
    pub min_backups: i32,
    /// Retention: older backups go unless protected (0 = no limit).
    pub max_age_secs: i64,
    /// Strategy.
    pub storage_strategy: Strategy,
    /// zstd level (where an adaptive level starts).
    pub compression_level: i32,
    /// Adaptive compression: lowest level (NULL with `compression_max_level`: a fixed level).
    pub compression_min_level: Option<i32>,
    /// Adaptive compression: highest level.
    pub compression_max_level: Option<i32>,
    /// PostgreSQL: parallel streams for table data (1 = one `pg_dump` stream; above 1 only on PostgreSQL).
    pub parallel: i32,
    /// Enabled for scheduling.
    pub enabled: bool,
    /// Attempts in all (1 = no retry).
    pub retry_max_attempts: i32,
    /// Wait before a retry.
    pub retry_backoff_secs: i32,
    /// Agent-held key encrypting backups ("" = none).
    pub encryption_key_id: String,
    /// PostgreSQL: also dump the globals.
    pub include_globals: bool,
    /// Recovery-point objective in seconds (0 = none).
    pub rpo_secs: i64,
    /// Labels (a JSON object of strings).
    pub labels: serde_json::Value,
    /// Since when the RPO is breached (set and cleared by the RPO task only).
    pub rpo_breached_since: Option<DateTime<Utc>>,
    /// Scrubbing: cron of scheduled verifies of the newest backup ("" = none), in `time_zone`.
    pub verify_cron: String,
    /// Scrubbing: verify each backup right after it completes.
    pub verify_after_backup: bool,
    /// Scrubbing: read-rate limit of the job's verifies, bytes per second (0 = the controller's default).
    pub verify_read_rate: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One execution.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Execution {
    /// Id.
    pub id: Uuid,
    /// Operation.
    pub operation: Operation,
    /// State.
    pub status: Status,
    /// Producing job.
    pub job_id: Option<Uuid>,
    /// Datasource backed up or restored into.
    pub datasource_id: Uuid,
    /// Agent running it.
    pub agent_id: Uuid,
    /// Current attempt.
    pub attempt: i32,
    /// Lease expiry while running.
    pub lease_until: Option<DateTime<Utc>>,
    /// Queue time.
    pub created_at: DateTime<Utc>,
    /// Claim time.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Failure text.
    pub error: Option<String>,
    /// Uncompressed bytes.
    pub raw_bytes: i64,
    /// Stored bytes (one copy).
    pub stored_bytes: i64,
    /// Chunks (one copy).
    pub chunk_count: i32,
    /// Whole-stream sha256.
    pub sha256: Option<String>,
    /// Manifest key.
    pub manifest_key: Option<String>,
    /// Restore: source backup.
    pub source_backup_id: Option<Uuid>,
    /// Restore: target database.
    pub target_database: Option<String>,
    /// Restore options and other per-execution options (JSON).
    pub options: serde_json::Value,
    /// Key id the backup's chunks are encrypted with.
    pub encryption_key_id: Option<String>,
    /// Warnings (JSON array of strings).
    pub warnings: serde_json::Value,
    /// An operator asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// A completed backup whose deletion has started.
    pub deleting: bool,
    /// A heartbeat of its agent listed the current attempt.
    pub agent_listed: bool,
    /// A completed backup whose globals and encryption binding were recorded (agent protocol 4 on).
    pub trust_recorded: bool,
    /// Globals object key, when the backup has one.
    pub globals_key: Option<String>,
    /// Globals object size.
    pub globals_size: Option<i64>,
    /// Globals object sha256.
    pub globals_sha256: Option<String>,
    /// Hex sha256 of the wrapped data key in the manifest, when encrypted.
    pub wrapped_key_sha256: Option<String>,
    /// A completed backup retention must keep.
    pub pinned: bool,
    /// Why it is pinned.
    pub pin_reason: Option<String>,
    /// Registered by a catalog import from a storage's manifest.
    pub imported: bool,
    /// Hex sha256 of a parallel backup's manifest layout ([`dg_common::manifest::layout_binding`]); `None`
    /// for a single-stream backup.
    pub layout_sha256: Option<String>,
}

/// One stored chunk copy.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Chunk {
    /// Storage holding it.
    pub storage_id: Uuid,
    /// Position.
    pub seq: i32,
    /// Object key.
    pub object_key: String,
    /// Stored size.
    pub size: i64,
    /// Hex sha256.
    pub sha256: String,
}

/// One complete copy of a backup with its last verify.
#[derive(Clone, Debug, FromQueryResult)]
pub struct CopyRecord {
    /// Storage holding it.
    pub storage_id: Uuid,
    /// `intact`, `damaged` or `missing`; `None` when never verified.
    pub verify_status: Option<String>,
    /// When it was verified.
    pub verified_at: Option<DateTime<Utc>>,
    /// The verify execution that found it.
    pub verify_execution_id: Option<Uuid>,
    /// `{"damaged_chunks": [{"seq", "fault", "detail"}], "problems": [..]}`.
    pub verify_detail: serde_json::Value,
}

/// One execution log line.
#[derive(Clone, Debug, FromQueryResult)]
pub struct LogLine {
    /// Row id (ordering and paging key).
    pub id: i64,
    /// Time.
    pub at: DateTime<Utc>,
    /// Level.
    pub level: String,
    /// Text.
    pub message: String,
}

/// One persisted health check.
#[derive(Clone, Debug, FromQueryResult)]
pub struct HealthCheck {
    /// When.
    pub checked_at: DateTime<Utc>,
    /// Passed.
    pub ok: bool,
    /// Round trip.
    pub latency_ms: Option<i32>,
    /// Failure text.
    pub error: Option<String>,
    /// Server version (databases).
    pub detail: Option<String>,
}

/// One audit row.
#[derive(Clone, Debug, FromQueryResult)]
pub struct AuditEvent {
    /// Sequence.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Target kind.
    pub target_kind: String,
    /// Target id.
    pub target_id: Option<String>,
    /// Outcome.
    pub outcome: String,
}

/// The options of a verify execution, stored in its `options` column.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VerifyOptions {
    /// Read-rate limit over all copies, bytes per second (0 = unlimited), resolved when queued.
    pub read_rate_bytes_per_second: u64,
    /// What queued it: `operator`, `schedule` or `after_backup`.
    pub trigger: String,
}

impl VerifyOptions {
    /// The options of an execution (defaults for what it does not say).
    pub fn of(options: &serde_json::Value) -> Self {
        serde_json::from_value(options.clone()).unwrap_or_default()
    }

    /// As stored.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// The options of a restore execution, stored in its `options` column as one typed value.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RestoreOptions {
    /// Create the target database when missing.
    pub create_database: bool,
    /// Drop the backup's objects in the target before restoring them.
    pub drop_existing: bool,
    /// A verification restore into a scratch database, dropped afterwards.
    pub verification: bool,
    /// Storage to read first.
    pub source_storage_id: Option<Uuid>,
    /// PostgreSQL parallel restore jobs; `None`: as the backup was taken.
    pub parallel_jobs: Option<u32>,
    /// PostgreSQL: replay the globals first.
    pub restore_globals: bool,
    /// A restore drill's checks (verification restores only): observed before the scratch database is dropped.
    pub drill: Option<dg_common::protocol::drill::DrillChecks>,
}

impl RestoreOptions {
    /// The options of an execution (defaults for what it does not say).
    pub fn of(options: &serde_json::Value) -> Self {
        serde_json::from_value(options.clone()).unwrap_or_default()
    }

    /// What happens to the target database.
    pub fn target_plan(&self) -> dg_common::protocol::TargetDatabasePlan {
        dg_common::protocol::TargetDatabasePlan::decide(self.create_database, self.drop_existing, self.verification)
    }

    /// As stored.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl From<Engine> for dg_common::protocol::Engine {
    fn from(e: Engine) -> Self {
        match e {
            Engine::Postgres => dg_common::protocol::Engine::Postgres,
            Engine::Mysql => dg_common::protocol::Engine::Mysql,
            Engine::Mariadb => dg_common::protocol::Engine::Mariadb,
        }
    }
}

impl From<TlsMode> for dg_common::protocol::TlsMode {
    fn from(t: TlsMode) -> Self {
        match t {
            TlsMode::Disable => dg_common::protocol::TlsMode::Disable,
            TlsMode::Prefer => dg_common::protocol::TlsMode::Prefer,
            TlsMode::Require => dg_common::protocol::TlsMode::Require,
            TlsMode::VerifyFull => dg_common::protocol::TlsMode::VerifyFull,
        }
    }
}

impl From<Strategy> for dg_common::protocol::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Fallback => dg_common::protocol::Strategy::Fallback,
            Strategy::Replicate => dg_common::protocol::Strategy::Replicate,
        }
    }
}

string_enum!(
    /// State of a restore drill run.
    DrillRunStatus { Running = "running", Passed = "passed", Failed = "failed" }
);

/// A restore drill (`restore_drill`). Assertions and schema minimums are JSON columns read through
/// [`RestoreDrill::sql`] and [`RestoreDrill::schema`].
#[derive(Clone, Debug, FromQueryResult)]
pub struct RestoreDrill {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Datasource whose backups are drilled.
    pub datasource_id: Uuid,
    /// Where scratch databases are created.
    pub target_datasource_id: Uuid,
    /// Cron (None: manual only).
    pub cron: Option<String>,
    /// Time zone of the cron.
    pub time_zone: String,
    /// Newest backup may be this old.
    pub max_backup_age_secs: i64,
    /// Row count tolerance, percent.
    pub tolerance_percent: f64,
    /// Compare row counts.
    pub assert_row_counts: bool,
    /// SQL assertions (JSON list of `drill_judge::SqlAssertion`).
    pub sql_assertions: serde_json::Value,
    /// Schema minimums (JSON `drill_judge::SchemaExpect`).
    pub schema_expect: serde_json::Value,
    /// Scheduled runs happen.
    pub enabled: bool,
    /// Scratch database name prefix.
    pub scratch_prefix: String,
    /// Next scheduled slot.
    pub next_run_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl RestoreDrill {
    /// The SQL assertions.
    pub fn sql(&self) -> Vec<crate::service::drill_judge::SqlAssertion> {
        serde_json::from_value(self.sql_assertions.clone()).unwrap_or_default()
    }

    /// The schema minimums.
    pub fn schema(&self) -> crate::service::drill_judge::SchemaExpect {
        serde_json::from_value(self.schema_expect.clone()).unwrap_or_default()
    }
}

/// What a finished run proved, kept as JSON in `restore_drill_run.evidence`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DrillEvidence {
    /// Every assertion checked.
    pub assertions: Vec<crate::service::drill_judge::AssertionOutcome>,
    /// What was not checked, and why.
    pub notes: Vec<String>,
    /// Recovery time, ms (see `drill_judge::rto_ms`).
    pub rto_ms: Option<u64>,
    /// Start to finish, ms.
    pub duration_ms: Option<u64>,
}

/// One run of a drill (`restore_drill_run`).
#[derive(Clone, Debug, FromQueryResult)]
pub struct DrillRun {
    /// Id.
    pub id: Uuid,
    /// Drill.
    pub drill_id: Uuid,
    /// State.
    pub status: DrillRunStatus,
    /// "operator:<name>" or "schedule".
    pub trigger: String,
    /// Start (controller database clock).
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// The restore execution (None when none was queued, or it was deleted).
    pub execution_id: Option<Uuid>,
    /// The backup restored.
    pub backup_id: Option<Uuid>,
    /// When that backup completed.
    pub backup_completed_at: Option<DateTime<Utc>>,
    /// Target datasource.
    pub target_datasource_id: Uuid,
    /// Scratch database.
    pub scratch_database: Option<String>,
    /// Evidence (JSON [`DrillEvidence`]).
    pub evidence: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
}

impl DrillRun {
    /// The evidence.
    pub fn evidence(&self) -> DrillEvidence {
        serde_json::from_value(self.evidence.clone()).unwrap_or_default()
    }
}

/// A user of the operator API.
#[derive(Clone, Debug, FromQueryResult)]
pub struct User {
    /// Row id.
    pub id: Uuid,
    /// Unique name.
    pub username: String,
    /// "password", "oidc" or "service".
    pub kind: String,
    /// Argon2 PHC string (password users only).
    pub password_hash: Option<String>,
    /// Role names, a JSON array.
    pub roles: serde_json::Value,
    /// Set when disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl User {
    /// Role names.
    pub fn role_names(&self) -> Vec<String> {
        serde_json::from_value(self.roles.clone()).unwrap_or_default()
    }
}

/// A role: system (permissions in code) or custom (permissions stored).
#[derive(Clone, Debug, FromQueryResult)]
pub struct RoleRecord {
    /// Row id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Stored permission names (custom roles), a JSON array.
    pub permissions: serde_json::Value,
    /// A system role.
    pub system: bool,
}

impl RoleRecord {
    /// Effective permissions.
    pub fn effective(&self) -> std::collections::BTreeSet<crate::access::Permission> {
        let custom: Vec<String> = serde_json::from_value(self.permissions.clone()).unwrap_or_default();
        crate::access::permissions_of([(self.name.as_str(), custom.as_slice())])
    }
}

/// A stored scope rule.
#[derive(Clone, Debug, FromQueryResult)]
pub struct ScopeRuleRecord {
    /// Row id.
    pub id: Uuid,
    /// User name, when it is a user's rule.
    pub username: Option<String>,
    /// Role name, when it is a role's rule.
    pub role_name: Option<String>,
    /// "allow" or "deny".
    pub effect: String,
    /// "datasource", "storage" or "job".
    pub resource_kind: String,
    /// One resource.
    pub resource_id: Option<Uuid>,
    /// Label selector (JSON object).
    pub labels: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A stored API token (never its secret).
#[derive(Clone, Debug, FromQueryResult)]
pub struct ApiTokenRecord {
    /// Row id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The user it acts as.
    pub username: String,
    /// Who created it.
    pub created_by: String,
    /// Its role's name.
    pub role_name: String,
    /// Its own limits (JSON array of selectors).
    pub scopes: serde_json::Value,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
}

/// An approval of one critical call.
#[derive(Clone, Debug, FromQueryResult)]
pub struct ApprovalRecord {
    /// Row id.
    pub id: Uuid,
    /// Action, e.g. "backup.restore".
    pub action: String,
    /// Target kind.
    pub target_kind: String,
    /// Target id.
    pub target_id: String,
    /// Readable summary.
    pub summary: String,
    /// The call's parameters.
    pub parameters: serde_json::Value,
    /// Requester id.
    pub requested_by: Uuid,
    /// Requester name.
    pub requested_by_name: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// "pending", "approved", "rejected" or "used" (expiry is read off `expires_at`).
    pub state: String,
    /// Decider.
    pub decided_by: Option<String>,
    /// When decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Decider's reason.
    pub reason: String,
}
