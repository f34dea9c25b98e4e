//! The agent protocol as domain types, shared by the controller and the agent: what an assignment asks for
//! ([`Assignment`], [`Plan`]) and what an agent reports back ([`AgentReport`]). The generated `pb` messages
//! appear only in [`wire`], which converts them: `TryFrom<pb::…>` on the receiving side is the one place
//! protocol input is validated (an error names the field), `From<…> for pb::…` on the sending side.
//!
//! It lives in `dg-common` rather than `dg-proto` because it needs what `dg-common` owns (ids, the storage
//! configuration, the object key layout), and `dg-proto` stays generated code plus the descriptor set.
//!
//! Everything an agent needs is a field: the attempt, the datasource, the object key layout, the decided
//! target-database plan of a restore, and chunk size, level and concurrency already clamped to what the
//! agent accepts. Nothing is parsed back out of an object key.

pub mod drill;
pub mod wire;

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

use crate::{
    ids::{DatasourceId, ExecutionId, StorageId},
    manifest,
    store::StoreConfig,
};

/// Why a protocol message was refused: the field (dotted path) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ProtocolError {
    /// The offending field, e.g. `backup.source.port`.
    pub field: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl ProtocolError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error one level down: `parent.field`.
    pub fn within(self, parent: &str) -> Self {
        Self { field: format!("{parent}.{}", self.field), message: self.message }
    }
}

impl crate::error::ServiceError for ProtocolError {
    fn error_code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidArgument
    }
}

/// Result of decoding a protocol message.
pub type ProtocolResult<T> = Result<T, ProtocolError>;

/// The attempt number of an execution, from 1. Every report names the attempt it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt(pub u32);

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One attempt of one execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecutionRef {
    /// The execution.
    pub id: ExecutionId,
    /// Its attempt.
    pub attempt: Attempt,
}

/// Database engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// PostgreSQL (`pg_dump`, `pg_restore`, `psql`).
    Postgres,
    /// MySQL (`mysqldump`, `mysql`).
    Mysql,
    /// MariaDB (`mariadb-dump`, `mariadb`).
    Mariadb,
}

impl Engine {
    /// Short name for manifests and logs.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Mariadb => "mariadb",
        }
    }
}

/// How to use TLS towards a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Never.
    Disable,
    /// When the server offers it.
    #[default]
    Prefer,
    /// Always, without checking the certificate.
    Require,
    /// Always, checking the certificate and the host name.
    VerifyFull,
}

/// A database the agent connects to, with the credentials for this one job. The password is a
/// [`SecretString`] (hidden from `Debug`, zeroed on drop).
#[derive(Clone)]
pub struct DatabaseTarget {
    /// Engine.
    pub engine: Engine,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User.
    pub username: String,
    /// Password (may be empty).
    pub password: SecretString,
    /// TLS mode.
    pub tls_mode: TlsMode,
}

impl PartialEq for DatabaseTarget {
    fn eq(&self, o: &Self) -> bool {
        (self.engine, &self.host, self.port, &self.database, &self.username, self.tls_mode)
            == (o.engine, &o.host, o.port, &o.database, &o.username, o.tls_mode)
            && self.password.expose_secret() == o.password.expose_secret()
    }
}

impl Eq for DatabaseTarget {}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTarget")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("tls_mode", &self.tls_mode)
            .finish_non_exhaustive()
    }
}

/// A storage an agent writes to or reads from, with its credentials (`StoreConfig`'s `Debug` hides them).
#[derive(Clone, Debug)]
pub struct StorageTarget {
    /// Storage id.
    pub id: StorageId,
    /// How to reach it.
    pub config: StoreConfig,
}

/// How a backup uses several storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The first storage that accepts a probe takes the backup; the dump runs again into the next one if it
    /// fails part-way.
    Fallback,
    /// Every chunk goes to every storage that works.
    Replicate,
}

/// Where the objects of one attempt live: `<datasource>/<execution>/<attempt>/…`, from ids only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// The datasource backed up.
    pub datasource: DatasourceId,
    /// The execution and attempt.
    pub execution: ExecutionRef,
}

impl ObjectLayout {
    /// The attempt's key prefix.
    pub fn prefix(&self) -> String {
        manifest::attempt_prefix(self.datasource, self.execution.id, self.execution.attempt.0)
    }

    /// The key of chunk `seq`.
    pub fn chunk_key(&self, seq: u32) -> String {
        manifest::chunk_key(&self.prefix(), seq)
    }

    /// The manifest's key.
    pub fn manifest_key(&self) -> String {
        manifest::manifest_key(&self.prefix())
    }

    /// The PostgreSQL globals object's key.
    pub fn globals_key(&self) -> String {
        manifest::globals_key(&self.prefix())
    }

    /// The key of the probe object written to test a storage before a backup.
    pub fn probe_key(&self) -> String {
        format!("{}/.probe", self.prefix())
    }
}

/// Chunk size bounds an agent accepts (bytes).
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(256 << 20);
/// zstd levels an agent accepts; 0 on the wire means the default.
pub const LEVEL_RANGE: std::ops::RangeInclusive<i32> = 1..=19;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;
/// Lowest bound of an adaptive level (zstd's fast modes reach -7 here).
pub const ADAPTIVE_MIN_RANGE: std::ops::RangeInclusive<i32> = -7..=19;

/// Bounds of an adaptive zstd level, `min <= max`, `min` within [`ADAPTIVE_MIN_RANGE`], `max` within
/// [`LEVEL_RANGE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelBounds {
    /// Lowest level.
    pub min: i32,
    /// Highest level.
    pub max: i32,
}

impl LevelBounds {
    /// Bounds that hold, or `None`.
    pub fn new(min: i32, max: i32) -> Option<Self> {
        (ADAPTIVE_MIN_RANGE.contains(&min) && LEVEL_RANGE.contains(&max) && min <= max).then_some(Self { min, max })
    }

    /// `level` moved into the bounds.
    pub fn clamp(self, level: i32) -> i32 {
        level.clamp(self.min, self.max)
    }
}
/// Concurrent uploads an agent accepts.
pub const CONCURRENCY_RANGE: std::ops::RangeInclusive<u32> = 1..=32;
/// Largest zstd worker count.
pub const MAX_WORKERS: u32 = 16;
/// Parallel streams a PostgreSQL backup may use (1: one `pg_dump` stream).
pub const PARALLEL_RANGE: std::ops::RangeInclusive<u32> = 1..=16;

/// A backup to run.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// The database to dump.
    pub source: DatabaseTarget,
    /// Storages in the job's order (at least one).
    pub storages: Vec<StorageTarget>,
    /// Strategy over them.
    pub strategy: Strategy,
    /// Where the attempt's objects go.
    pub layout: ObjectLayout,
    /// zstd level, within [`LEVEL_RANGE`].
    pub compression_level: i32,
    /// Stored chunk size, within [`CHUNK_SIZE_RANGE`].
    pub chunk_size: u64,
    /// Concurrent uploads per storage, within [`CONCURRENCY_RANGE`].
    pub upload_concurrency: u32,
    /// zstd worker threads (0: on the pipeline thread), at most [`MAX_WORKERS`].
    pub compression_workers: u32,
    /// The level adapts within these bounds, starting at `compression_level`; `None`: fixed.
    pub adaptive_compression: Option<LevelBounds>,
    /// Agent-held key that wraps the backup's data key; `None`: not encrypted.
    pub encryption_key_id: Option<String>,
    /// PostgreSQL: also store the cluster globals.
    pub include_globals: bool,
    /// PostgreSQL: table data through this many parallel streams read under one exported snapshot, within
    /// [`PARALLEL_RANGE`]; 1 is one `pg_dump` stream.
    pub parallel: u32,
}

/// A stored chunk to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Position in the stream, from 0.
    pub seq: u32,
    /// Object key.
    pub key: String,
    /// Stored size.
    pub size: u64,
    /// Hex sha256 of the stored bytes (64 lowercase hex characters).
    pub sha256: String,
}

/// An extra stored object of a backup (the PostgreSQL globals), as written and as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// Object key.
    pub key: String,
    /// Stored size.
    pub size: u64,
    /// Hex sha256 of the stored bytes (64 lowercase hex characters).
    pub sha256: String,
}

/// How a backup is encrypted, as recorded by the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEncryption {
    /// Agent-held key that wraps the data key.
    pub key_id: String,
    /// Hex sha256 of the wrapped data key as the manifest holds it ([`manifest::wrapped_key_binding`]).
    pub wrapped_key_sha256: String,
}

/// What the controller recorded when a backup completed, beyond its chunks: a restore trusts this, and a
/// manifest read back from storage must agree with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedBackup {
    /// The PostgreSQL globals object, when the backup has one.
    pub globals: Option<StoredObject>,
    /// The encryption, when the backup is encrypted.
    pub encryption: Option<RecordedEncryption>,
    /// A parallel backup's stream layout binding ([`manifest::layout_binding`]); `None` for one stream.
    pub layout_sha256: Option<String>,
}

/// What happens to the target database of a restore, decided by the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetDatabasePlan {
    /// Restore into the database as it is; it must exist.
    Existing {
        /// Drop the objects the backup contains before restoring them.
        drop_existing: bool,
    },
    /// Create the database when missing, then restore.
    CreateIfMissing {
        /// Drop the objects the backup contains before restoring them.
        drop_existing: bool,
    },
    /// A scratch database for a verification restore: it must not exist, is created, and is dropped
    /// afterwards whatever the outcome.
    Scratch,
}

impl TargetDatabasePlan {
    /// The plan for a restore request's options.
    pub fn decide(create_database: bool, drop_existing: bool, verification: bool) -> Self {
        match (verification, create_database) {
            (true, _) => TargetDatabasePlan::Scratch,
            (false, true) => TargetDatabasePlan::CreateIfMissing { drop_existing },
            (false, false) => TargetDatabasePlan::Existing { drop_existing },
        }
    }

    /// Whether the database is created when missing.
    pub fn creates(self) -> bool {
        !matches!(self, TargetDatabasePlan::Existing { .. })
    }

    /// Whether existing objects are dropped first.
    pub fn drops_existing(self) -> bool {
        matches!(
            self,
            TargetDatabasePlan::Existing { drop_existing: true }
                | TargetDatabasePlan::CreateIfMissing { drop_existing: true }
        )
    }

    /// Whether the database is a scratch one, dropped after the restore.
    pub fn is_scratch(self) -> bool {
        self == TargetDatabasePlan::Scratch
    }
}

/// A restore to run.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The database to restore into (its `database` is the target database).
    pub target: DatabaseTarget,
    /// What happens to that database.
    pub target_plan: TargetDatabasePlan,
    /// Storages holding a complete copy, in preference order (at least one).
    pub storages: Vec<StorageTarget>,
    /// Chunks in stream order (seq 0, 1, …).
    pub chunks: Vec<ChunkRef>,
    /// Hex sha256 of the whole stored stream.
    pub sha256: String,
    /// Engine the backup was taken from.
    pub source_engine: Engine,
    /// Manifest object key (encryption details).
    pub manifest_key: String,
    /// PostgreSQL parallel restore jobs (1: stream from a pipe); `None`: as the backup was taken (a parallel
    /// backup's worker count, one job for a single stream).
    pub parallel_jobs: Option<u32>,
    /// PostgreSQL: replay the stored globals first.
    pub restore_globals: bool,
    /// What the controller recorded at backup time; `None` for a backup recorded before it recorded these
    /// (agent protocol 4), whose globals are never replayed.
    pub recorded: Option<RecordedBackup>,
    /// Uncompressed bytes the backup recorded; decompression stops with an error past them (`None`: no bound).
    pub raw_bytes: Option<u64>,
    /// A restore drill: what to observe in the restored (scratch) database before it is dropped.
    pub checks: Option<drill::DrillChecks>,
}

/// One copy of a backup to verify: a storage and the chunks the controller recorded for it there.
#[derive(Clone, Debug)]
pub struct VerifyCopy {
    /// The storage holding the copy.
    pub storage: StorageTarget,
    /// Its recorded chunks in stream order (seq 0, 1, …).
    pub chunks: Vec<ChunkRef>,
}

/// A checksum-only verify of a backup's copies (agent protocol 6): every object is read bounded by its
/// recorded size and compared with this record, never with the manifest read back. No database is touched.
#[derive(Clone, Debug)]
pub struct VerifyPlan {
    /// The copies to read (at least one).
    pub copies: Vec<VerifyCopy>,
    /// Hex sha256 of the whole stored stream.
    pub sha256: String,
    /// Manifest object key (the same in every storage).
    pub manifest_key: String,
    /// What the controller recorded beyond the chunks; `None` for a backup recorded before agent protocol 4.
    pub recorded: Option<RecordedBackup>,
    /// Read-rate limit over all copies, bytes per second; 0: unlimited.
    pub read_rate_bytes_per_second: u64,
}

/// What an assignment asks for.
#[derive(Clone, Debug)]
pub enum Plan {
    /// A backup.
    Backup(BackupPlan),
    /// A restore.
    Restore(RestorePlan),
    /// A checksum-only verify.
    Verify(VerifyPlan),
}

/// One attempt of an execution handed to an agent.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// The attempt.
    pub execution: ExecutionRef,
    /// W3C trace context of the controller's span.
    pub trace_context: HashMap<String, String>,
    /// What to do.
    pub plan: Plan,
}

/// A chunk is durably stored in one storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkStored {
    /// The attempt.
    pub execution: ExecutionRef,
    /// The storage holding it.
    pub storage: StorageId,
    /// Position in the stream.
    pub seq: u32,
    /// Object key.
    pub key: String,
    /// Stored size.
    pub size: u64,
    /// Hex sha256 of the stored bytes.
    pub sha256: String,
    /// Uncompressed bytes it carries (approximate).
    pub raw_bytes: u64,
}

/// Progress of a running attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The attempt.
    pub execution: ExecutionRef,
    /// Uncompressed bytes so far.
    pub raw_bytes: u64,
    /// Stored bytes so far.
    pub stored_bytes: u64,
    /// Chunks stored so far.
    pub chunks: u32,
}

/// Severity of an execution log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Information.
    Info,
    /// Something that did not fail the execution.
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// Its name on the wire and in the execution log.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A log line of a running attempt (secrets already redacted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    /// The attempt.
    pub execution: ExecutionRef,
    /// Severity.
    pub level: LogLevel,
    /// Text, at most [`MAX_LOG_CHARS`] characters.
    pub message: String,
}

/// Longest log line or error kept.
pub const MAX_LOG_CHARS: usize = 8192;
/// Most warnings kept per backup, and their longest text.
pub const MAX_WARNINGS: usize = 32;
/// Longest warning kept.
pub const MAX_WARNING_CHARS: usize = 1024;

/// What a finished backup produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupResult {
    /// Uncompressed dump bytes.
    pub raw_bytes: u64,
    /// Stored bytes of one copy.
    pub stored_bytes: u64,
    /// Chunks in one copy.
    pub chunk_count: u32,
    /// Hex sha256 of the whole stored stream.
    pub sha256: String,
    /// Manifest object key (the same in every storage).
    pub manifest_key: String,
    /// Storages holding a complete copy.
    pub storages: Vec<StorageId>,
    /// Dump tool and version.
    pub tool_version: String,
    /// Database server version.
    pub server_version: String,
    /// Problems that did not fail the backup.
    pub warnings: Vec<String>,
    /// Key id the chunks are encrypted with.
    pub encryption_key_id: Option<String>,
    /// Hex sha256 of the wrapped data key in the manifest; `Some` exactly when `encryption_key_id` is.
    pub wrapped_key_sha256: Option<String>,
    /// The PostgreSQL globals object written with the backup.
    pub globals: Option<StoredObject>,
    /// Rows per table at dump time; `None` when they could not be counted (a warning says why).
    pub table_counts: Option<Vec<drill::TableCount>>,
    /// A parallel backup's stream layout binding ([`manifest::layout_binding`]); `None` for one stream.
    pub layout_sha256: Option<String>,
}

/// What a finished restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreResult {
    /// Bytes fed to the restore tool.
    pub raw_bytes: u64,
    /// Restore tool and version.
    pub tool_version: String,
    /// What a drill observed (`Some` iff the plan carried checks).
    pub observed: Option<drill::DrillObservation>,
}

/// What is wrong with one stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkFault {
    /// The object is absent.
    Missing,
    /// Its size differs from the recorded one.
    Size,
    /// Its sha256 differs from the recorded one.
    Sha256,
}

impl ChunkFault {
    /// Its name in records and for operators.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkFault::Missing => "missing",
            ChunkFault::Size => "size",
            ChunkFault::Sha256 => "sha256",
        }
    }
}

/// One damaged chunk of a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkDamage {
    /// Position in the stream.
    pub seq: u32,
    /// What is wrong.
    pub fault: ChunkFault,
    /// Details for operators (e.g. the size found).
    pub detail: String,
}

/// The verdict on one copy, derived from [`CopyFindings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    /// Manifest, every chunk and the whole stream match the record.
    Intact,
    /// Something is wrong.
    Damaged,
    /// The manifest and every chunk object are gone.
    Missing,
}

impl CopyStatus {
    /// Its stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Intact => "intact",
            CopyStatus::Damaged => "damaged",
            CopyStatus::Missing => "missing",
        }
    }
}

/// What a verify found in one copy: facts only; [`CopyFindings::status`] is the one place they become a
/// verdict (the controller applies it to what the agent reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyFindings {
    /// The storage.
    pub storage: StorageId,
    /// The copy could not be read at all (the storage failed, not an absent object): no verdict.
    pub unreadable: Option<String>,
    /// The manifest object is absent.
    pub manifest_missing: bool,
    /// The manifest is unreadable or disagrees with the record.
    pub manifest_problem: Option<String>,
    /// Damaged chunks, by seq.
    pub damaged_chunks: Vec<ChunkDamage>,
    /// Every chunk matched but together they do not match the recorded stream sha256.
    pub stream_mismatch: bool,
    /// The recorded globals object is absent or does not match.
    pub globals_problem: Option<String>,
}

impl CopyFindings {
    /// Findings of a copy where nothing was wrong (yet).
    pub fn clean(storage: StorageId) -> Self {
        Self {
            storage,
            unreadable: None,
            manifest_missing: false,
            manifest_problem: None,
            damaged_chunks: Vec::new(),
            stream_mismatch: false,
            globals_problem: None,
        }
    }

    /// The verdict for a copy of `chunk_count` chunks; `None` when it could not be read.
    pub fn status(&self, chunk_count: usize) -> Option<CopyStatus> {
        if self.unreadable.is_some() {
            return None;
        }
        let all_chunks_gone = self.damaged_chunks.len() == chunk_count
            && self.damaged_chunks.iter().all(|d| d.fault == ChunkFault::Missing);
        Some(if self.manifest_missing && all_chunks_gone {
            CopyStatus::Missing
        } else if self.manifest_missing
            || self.manifest_problem.is_some()
            || !self.damaged_chunks.is_empty()
            || self.stream_mismatch
            || self.globals_problem.is_some()
        {
            CopyStatus::Damaged
        } else {
            CopyStatus::Intact
        })
    }

    /// The problems other than damaged chunks, readable.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.manifest_missing {
            out.push("manifest: missing".to_owned());
        }
        if let Some(p) = &self.manifest_problem {
            out.push(format!("manifest: {p}"));
        }
        if self.stream_mismatch {
            out.push("the chunks do not add up to the recorded stream sha256".to_owned());
        }
        if let Some(p) = &self.globals_problem {
            out.push(format!("globals: {p}"));
        }
        out
    }
}

/// What a finished verify found, one entry per copy of its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyResult {
    /// Findings per copy.
    pub copies: Vec<CopyFindings>,
}

/// Everything an agent reports about the attempts it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentReport {
    /// A chunk is stored.
    ChunkStored(ChunkStored),
    /// Progress.
    Progress(Progress),
    /// A log line.
    Log(LogReport),
    /// A backup attempt finished.
    BackupCompleted {
        /// The attempt.
        execution: ExecutionRef,
        /// What it produced.
        result: BackupResult,
    },
    /// A restore attempt finished.
    RestoreCompleted {
        /// The attempt.
        execution: ExecutionRef,
        /// What it did.
        result: RestoreResult,
    },
    /// A verify attempt finished (whatever it found: damage is a finding, not a failure).
    VerifyCompleted {
        /// The attempt.
        execution: ExecutionRef,
        /// What it found.
        result: VerifyResult,
    },
    /// An attempt failed, or stopped because it was cancelled.
    Failed {
        /// The attempt.
        execution: ExecutionRef,
        /// Readable error, secrets redacted.
        error: String,
        /// It stopped because of a cancellation.
        cancelled: bool,
    },
}

impl AgentReport {
    /// The attempt the report is about.
    pub fn execution(&self) -> ExecutionRef {
        match self {
            AgentReport::ChunkStored(c) => c.execution,
            AgentReport::Progress(p) => p.execution,
            AgentReport::Log(l) => l.execution,
            AgentReport::BackupCompleted { execution, .. }
            | AgentReport::RestoreCompleted { execution, .. }
            | AgentReport::VerifyCompleted { execution, .. }
            | AgentReport::Failed { execution, .. } => *execution,
        }
    }
}
