//! Conversions between the protocol model and the generated `pb` messages. Receiving is `TryFrom` (the only
//! validation of protocol input; an error names the field), sending is `From`. Only the two connection
//! modules (the controller's session handling and the agent's session) call these.

use dg_proto::v1 as pb;
use secrecy::ExposeSecret;

use super::{
    AgentReport, Assignment, Attempt, BackupPlan, BackupResult, CHUNK_SIZE_RANGE, CONCURRENCY_RANGE, ChunkDamage,
    ChunkFault, ChunkRef, ChunkStored, CopyFindings, DEFAULT_LEVEL, DatabaseTarget, Engine, ExecutionRef, LEVEL_RANGE,
    LevelBounds, LogLevel, LogReport, MAX_LOG_CHARS, MAX_WARNING_CHARS, MAX_WARNINGS, MAX_WORKERS, ObjectLayout,
    PARALLEL_RANGE, Plan, Progress, ProtocolError, ProtocolResult, RecordedBackup, RecordedEncryption, RestorePlan,
    RestoreResult, StorageTarget, StoredObject, Strategy, TargetDatabasePlan, TlsMode, VerifyCopy, VerifyPlan,
    VerifyResult,
};
use crate::{
    ids::{DatasourceId, ExecutionId, StorageId},
    store::{self, StoreConfig},
};

/// Most storages an assignment may name.
const MAX_STORAGES: usize = 16;
/// Most chunks a restore may name (256 MiB chunks: 256 TiB).
const MAX_CHUNKS: usize = 1 << 20;

fn required<T>(v: Option<T>, field: &str) -> ProtocolResult<T> {
    v.ok_or_else(|| ProtocolError::new(field, "is required"))
}

fn uuid_field<T: From<uuid::Uuid>>(field: &str, s: &str) -> ProtocolResult<T> {
    uuid::Uuid::parse_str(s).map(T::from).map_err(|_| ProtocolError::new(field, "must be a UUID"))
}

fn sha256_field(field: &str, s: &str) -> ProtocolResult<String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(s.to_owned())
    } else {
        Err(ProtocolError::new(field, "must be 64 lowercase hex characters"))
    }
}

/// Printable text of at most `max` characters (control characters other than tab dropped).
fn text(s: &str, max: usize) -> String {
    s.chars().filter(|c| *c == '\t' || !c.is_control()).take(max).collect()
}

/// An object key from the wire: relative, no `..`, no empty segment, no backslash or control character.
fn key_field(field: &str, s: &str) -> ProtocolResult<String> {
    let ok = !s.is_empty()
        && s.len() <= 1024
        && !s.starts_with('/')
        && s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !s.chars().any(|c| c == '\\' || c.is_control());
    if ok { Ok(s.to_owned()) } else { Err(ProtocolError::new(field, "must be a relative object key")) }
}

/// An encryption key id (`encryption_key_id`): empty is `None`, else 1 to 64 of `[A-Za-z0-9._-]`.
fn key_id_field(k: &str) -> ProtocolResult<Option<String>> {
    match k {
        "" => Ok(None),
        k if k.len() <= 64
            && !k.starts_with('.')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ProtocolError::new("encryption_key_id", "must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'")),
    }
}

/// The encryption of a backup result or record: a key id and the wrapped key's binding, both or neither.
fn encryption_fields(key_id: &str, wrapped_sha256: &str) -> ProtocolResult<Option<RecordedEncryption>> {
    match (key_id_field(key_id)?, wrapped_sha256) {
        (None, "") => Ok(None),
        (None, _) => Err(ProtocolError::new("wrapped_key_sha256", "must be empty when not encrypted")),
        (Some(key_id), w) => {
            Ok(Some(RecordedEncryption { key_id, wrapped_key_sha256: sha256_field("wrapped_key_sha256", w)? }))
        }
    }
}

impl TryFrom<pb::StoredObject> for StoredObject {
    type Error = ProtocolError;
    fn try_from(o: pb::StoredObject) -> ProtocolResult<Self> {
        Ok(Self { key: key_field("key", &o.key)?, size: o.size, sha256: sha256_field("sha256", &o.sha256)? })
    }
}

impl From<StoredObject> for pb::StoredObject {
    fn from(o: StoredObject) -> Self {
        pb::StoredObject { key: o.key, size: o.size, sha256: o.sha256 }
    }
}

/// A parallel backup's layout binding (`layout_sha256`): empty is `None` (a single stream).
fn layout_sha256_field(s: &str) -> ProtocolResult<Option<String>> {
    if s.is_empty() { Ok(None) } else { sha256_field("layout_sha256", s).map(Some) }
}

fn stored_object_field(o: Option<pb::StoredObject>, field: &str) -> ProtocolResult<Option<StoredObject>> {
    o.map(|o| StoredObject::try_from(o).map_err(|e| e.within(field))).transpose()
}

impl TryFrom<pb::RecordedBackup> for RecordedBackup {
    type Error = ProtocolError;
    fn try_from(r: pb::RecordedBackup) -> ProtocolResult<Self> {
        Ok(Self {
            globals: stored_object_field(r.globals, "globals")?,
            encryption: encryption_fields(&r.encryption_key_id, &r.wrapped_key_sha256)?,
            layout_sha256: layout_sha256_field(&r.layout_sha256)?,
        })
    }
}

impl From<RecordedBackup> for pb::RecordedBackup {
    fn from(r: RecordedBackup) -> Self {
        let (encryption_key_id, wrapped_key_sha256) =
            r.encryption.map(|e| (e.key_id, e.wrapped_key_sha256)).unwrap_or_default();
        pb::RecordedBackup {
            globals: r.globals.map(Into::into),
            encryption_key_id,
            wrapped_key_sha256,
            layout_sha256: r.layout_sha256.unwrap_or_default(),
        }
    }
}

// ---- identities ---------------------------------------------------------------------------------------------

impl TryFrom<pb::ExecutionRef> for ExecutionRef {
    type Error = ProtocolError;
    fn try_from(r: pb::ExecutionRef) -> ProtocolResult<Self> {
        let id: ExecutionId = uuid_field("execution_id", &r.execution_id)?;
        if r.attempt == 0 {
            return Err(ProtocolError::new("attempt", "must be at least 1"));
        }
        Ok(Self { id, attempt: Attempt(r.attempt) })
    }
}

impl From<ExecutionRef> for pb::ExecutionRef {
    fn from(r: ExecutionRef) -> Self {
        pb::ExecutionRef { execution_id: r.id.to_string(), attempt: r.attempt.0 }
    }
}

fn execution_field(r: Option<pb::ExecutionRef>) -> ProtocolResult<ExecutionRef> {
    ExecutionRef::try_from(required(r, "execution")?).map_err(|e| e.within("execution"))
}

// ---- enums --------------------------------------------------------------------------------------------------

impl TryFrom<i32> for Engine {
    type Error = ProtocolError;
    fn try_from(v: i32) -> ProtocolResult<Self> {
        match pb::Engine::try_from(v) {
            Ok(pb::Engine::Postgres) => Ok(Engine::Postgres),
            Ok(pb::Engine::Mysql) => Ok(Engine::Mysql),
            Ok(pb::Engine::Mariadb) => Ok(Engine::Mariadb),
            _ => Err(ProtocolError::new("engine", format!("unknown engine {v}"))),
        }
    }
}

impl From<Engine> for pb::Engine {
    fn from(e: Engine) -> Self {
        match e {
            Engine::Postgres => pb::Engine::Postgres,
            Engine::Mysql => pb::Engine::Mysql,
            Engine::Mariadb => pb::Engine::Mariadb,
        }
    }
}

impl TryFrom<i32> for TlsMode {
    type Error = ProtocolError;
    fn try_from(v: i32) -> ProtocolResult<Self> {
        match pb::TlsMode::try_from(v) {
            Ok(pb::TlsMode::Unspecified | pb::TlsMode::Prefer) => Ok(TlsMode::Prefer),
            Ok(pb::TlsMode::Disable) => Ok(TlsMode::Disable),
            Ok(pb::TlsMode::Require) => Ok(TlsMode::Require),
            Ok(pb::TlsMode::VerifyFull) => Ok(TlsMode::VerifyFull),
            Err(_) => Err(ProtocolError::new("tls_mode", format!("unknown TLS mode {v}"))),
        }
    }
}

impl From<TlsMode> for pb::TlsMode {
    fn from(t: TlsMode) -> Self {
        match t {
            TlsMode::Disable => pb::TlsMode::Disable,
            TlsMode::Prefer => pb::TlsMode::Prefer,
            TlsMode::Require => pb::TlsMode::Require,
            TlsMode::VerifyFull => pb::TlsMode::VerifyFull,
        }
    }
}

impl TryFrom<i32> for Strategy {
    type Error = ProtocolError;
    fn try_from(v: i32) -> ProtocolResult<Self> {
        match pb::StorageStrategy::try_from(v) {
            Ok(pb::StorageStrategy::Unspecified | pb::StorageStrategy::Fallback) => Ok(Strategy::Fallback),
            Ok(pb::StorageStrategy::Replicate) => Ok(Strategy::Replicate),
            Err(_) => Err(ProtocolError::new("strategy", format!("unknown strategy {v}"))),
        }
    }
}

impl From<Strategy> for pb::StorageStrategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Fallback => pb::StorageStrategy::Fallback,
            Strategy::Replicate => pb::StorageStrategy::Replicate,
        }
    }
}

// ---- targets ------------------------------------------------------------------------------------------------

impl TryFrom<pb::DatabaseTarget> for DatabaseTarget {
    type Error = ProtocolError;
    fn try_from(t: pb::DatabaseTarget) -> ProtocolResult<Self> {
        let port = u16::try_from(t.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ProtocolError::new("port", "must be 1 to 65535"))?;
        if t.host.is_empty() || t.host.len() > 253 || t.host.starts_with('-') || t.host.chars().any(char::is_control) {
            return Err(ProtocolError::new("host", "must be a host name or address"));
        }
        if t.database.is_empty() || t.database.len() > 128 || t.database.starts_with('-') {
            return Err(ProtocolError::new("database", "must be 1 to 128 characters, not starting with '-'"));
        }
        if t.username.is_empty() || t.username.len() > 128 || t.username.starts_with('-') {
            return Err(ProtocolError::new("username", "must be 1 to 128 characters, not starting with '-'"));
        }
        if [&t.host, &t.database, &t.username, &t.password].iter().any(|s| s.contains('\0')) {
            return Err(ProtocolError::new("database", "must not contain NUL characters"));
        }
        if t.password.contains(['\n', '\r']) {
            // It would add lines to the agent's passfile or option file.
            return Err(ProtocolError::new("password", "must not contain line breaks"));
        }
        Ok(Self {
            engine: Engine::try_from(t.engine)?,
            host: t.host,
            port,
            database: t.database,
            username: t.username,
            password: t.password.into(),
            tls_mode: TlsMode::try_from(t.tls_mode)?,
        })
    }
}

impl From<DatabaseTarget> for pb::DatabaseTarget {
    fn from(t: DatabaseTarget) -> Self {
        pb::DatabaseTarget {
            engine: pb::Engine::from(t.engine) as i32,
            host: t.host,
            port: u32::from(t.port),
            database: t.database,
            username: t.username,
            password: t.password.expose_secret().to_owned(),
            tls_mode: pb::TlsMode::from(t.tls_mode) as i32,
        }
    }
}

impl TryFrom<pb::StorageTarget> for StorageTarget {
    type Error = ProtocolError;
    fn try_from(t: pb::StorageTarget) -> ProtocolResult<Self> {
        let id: StorageId = uuid_field("storage_id", &t.storage_id)?;
        let config = store::from_target(&t).map_err(|e| ProtocolError::new("config", e.0))?;
        Ok(Self { id, config })
    }
}

impl From<StorageTarget> for pb::StorageTarget {
    fn from(t: StorageTarget) -> Self {
        // The agent running the task is the one a local storage names; it needs no id of its own here.
        store::to_target(t.id.to_string(), t.config, String::new())
    }
}

fn storages_field(list: Vec<pb::StorageTarget>) -> ProtocolResult<Vec<StorageTarget>> {
    if list.is_empty() || list.len() > MAX_STORAGES {
        return Err(ProtocolError::new("storages", format!("must name 1 to {MAX_STORAGES} storages")));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, s)| StorageTarget::try_from(s).map_err(|e| e.within(&format!("storages[{i}]"))))
        .collect()
}

// ---- plans --------------------------------------------------------------------------------------------------

/// Reads the attempt prefix the controller sent; it must be exactly the one the ids dictate.
fn layout_field(prefix: &str, datasource: &str, execution: ExecutionRef) -> ProtocolResult<ObjectLayout> {
    let datasource: DatasourceId = uuid_field("datasource_id", datasource)?;
    let layout = ObjectLayout { datasource, execution };
    if prefix != layout.prefix() {
        return Err(ProtocolError::new("key_prefix", "must be <datasource>/<execution>/<attempt> of this assignment"));
    }
    Ok(layout)
}

fn backup_plan(t: pb::BackupTask, execution: ExecutionRef) -> ProtocolResult<BackupPlan> {
    let source = DatabaseTarget::try_from(required(t.source, "source")?).map_err(|e| e.within("source"))?;
    let encryption_key_id = key_id_field(&t.encryption_key_id)?;
    Ok(BackupPlan {
        layout: layout_field(&t.key_prefix, &t.datasource_id, execution)?,
        source,
        storages: storages_field(t.storages)?,
        strategy: Strategy::try_from(t.strategy)?,
        compression_level: if LEVEL_RANGE.contains(&t.compression_level) { t.compression_level } else { DEFAULT_LEVEL },
        chunk_size: t.chunk_size.clamp(*CHUNK_SIZE_RANGE.start(), *CHUNK_SIZE_RANGE.end()),
        upload_concurrency: t.upload_concurrency.clamp(*CONCURRENCY_RANGE.start(), *CONCURRENCY_RANGE.end()),
        compression_workers: t.compression_workers.min(MAX_WORKERS),
        // Bounds that do not hold are refused, not guessed at.
        adaptive_compression: t
            .adaptive_compression
            .map(|b| {
                LevelBounds::new(b.min_level, b.max_level)
                    .ok_or_else(|| ProtocolError::new("adaptive_compression", "bounds out of range or reversed"))
            })
            .transpose()?,
        encryption_key_id,
        include_globals: t.include_globals,
        parallel: parallel_field(t.parallel)?,
    })
}

/// Parallel streams: 0 (a controller that does not know the field) is one stream; beyond
/// [`PARALLEL_RANGE`] is refused rather than clamped, as it changes what the backup is.
fn parallel_field(n: u32) -> ProtocolResult<u32> {
    match n {
        0 => Ok(1),
        n if PARALLEL_RANGE.contains(&n) => Ok(n),
        n => Err(ProtocolError::new(
            "parallel",
            format!("must be {} to {}, not {n}", PARALLEL_RANGE.start(), PARALLEL_RANGE.end()),
        )),
    }
}

impl From<BackupPlan> for pb::BackupTask {
    fn from(p: BackupPlan) -> Self {
        pb::BackupTask {
            source: Some(p.source.into()),
            storages: p.storages.into_iter().map(Into::into).collect(),
            strategy: pb::StorageStrategy::from(p.strategy) as i32,
            key_prefix: p.layout.prefix(),
            compression_level: p.compression_level,
            chunk_size: p.chunk_size,
            upload_concurrency: p.upload_concurrency,
            compression_workers: p.compression_workers,
            adaptive_compression: p
                .adaptive_compression
                .map(|b| pb::LevelBounds { min_level: b.min, max_level: b.max }),
            encryption_key_id: p.encryption_key_id.unwrap_or_default(),
            include_globals: p.include_globals,
            datasource_id: p.layout.datasource.to_string(),
            parallel: p.parallel,
        }
    }
}

impl TryFrom<pb::ChunkRef> for ChunkRef {
    type Error = ProtocolError;
    fn try_from(c: pb::ChunkRef) -> ProtocolResult<Self> {
        Ok(Self {
            seq: c.seq,
            key: key_field("key", &c.key)?,
            size: c.size,
            sha256: sha256_field("sha256", &c.sha256)?,
        })
    }
}

impl From<ChunkRef> for pb::ChunkRef {
    fn from(c: ChunkRef) -> Self {
        pb::ChunkRef { seq: c.seq, key: c.key, size: c.size, sha256: c.sha256 }
    }
}

/// A recorded chunk list: 1 to [`MAX_CHUNKS`] chunks, in order from seq 0.
fn chunks_field(list: Vec<pb::ChunkRef>) -> ProtocolResult<Vec<ChunkRef>> {
    if list.len() > MAX_CHUNKS {
        return Err(ProtocolError::new("chunks", format!("must list at most {MAX_CHUNKS} chunks")));
    }
    let chunks = list
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let c = ChunkRef::try_from(c).map_err(|e| e.within(&format!("chunks[{i}]")))?;
            if c.seq as usize != i {
                return Err(ProtocolError::new(format!("chunks[{i}].seq"), "chunks must be listed in order from 0"));
            }
            Ok(c)
        })
        .collect::<ProtocolResult<Vec<_>>>()?;
    if chunks.is_empty() {
        return Err(ProtocolError::new("chunks", "must list at least one chunk"));
    }
    Ok(chunks)
}

fn restore_plan(t: pb::RestoreTask) -> ProtocolResult<RestorePlan> {
    let target = DatabaseTarget::try_from(required(t.target, "target")?).map_err(|e| e.within("target"))?;
    let chunks = chunks_field(t.chunks)?;
    if t.drop_after && (t.drop_existing || !t.create_database) {
        return Err(ProtocolError::new("drop_after", "a scratch database is created new and never cleaned first"));
    }
    Ok(RestorePlan {
        target_plan: TargetDatabasePlan::decide(t.create_database, t.drop_existing, t.drop_after),
        target,
        storages: storages_field(t.storages)?,
        chunks,
        sha256: sha256_field("sha256", &t.sha256)?,
        source_engine: Engine::try_from(t.source_engine).map_err(|e| e.within("source"))?,
        manifest_key: key_field("manifest_key", &t.manifest_key)?,
        parallel_jobs: (t.parallel_jobs > 0).then(|| t.parallel_jobs.min(16)),
        restore_globals: t.restore_globals,
        recorded: t.recorded.map(|r| RecordedBackup::try_from(r).map_err(|e| e.within("recorded"))).transpose()?,
        raw_bytes: (t.raw_bytes > 0).then_some(t.raw_bytes),
        checks: match t.checks {
            Some(_) if !t.drop_after => {
                return Err(ProtocolError::new("checks", "drill checks need a scratch database (drop_after)"));
            }
            c => c.map(|c| super::drill::DrillChecks::try_from(c).map_err(|e| e.within("checks"))).transpose()?,
        },
    })
}

impl From<RestorePlan> for pb::RestoreTask {
    fn from(p: RestorePlan) -> Self {
        pb::RestoreTask {
            target: Some(p.target.into()),
            storages: p.storages.into_iter().map(Into::into).collect(),
            chunks: p.chunks.into_iter().map(Into::into).collect(),
            sha256: p.sha256,
            create_database: p.target_plan.creates(),
            drop_existing: p.target_plan.drops_existing(),
            source_engine: pb::Engine::from(p.source_engine) as i32,
            drop_after: p.target_plan.is_scratch(),
            manifest_key: p.manifest_key,
            parallel_jobs: p.parallel_jobs.unwrap_or(0),
            restore_globals: p.restore_globals,
            recorded: p.recorded.map(Into::into),
            raw_bytes: p.raw_bytes.unwrap_or_default(),
            checks: p.checks.map(Into::into),
        }
    }
}

fn verify_plan(t: pb::VerifyTask) -> ProtocolResult<VerifyPlan> {
    if t.copies.is_empty() || t.copies.len() > MAX_STORAGES {
        return Err(ProtocolError::new("copies", format!("must name 1 to {MAX_STORAGES} copies")));
    }
    let mut copies = Vec::with_capacity(t.copies.len());
    for (i, c) in t.copies.into_iter().enumerate() {
        let within = |e: ProtocolError| e.within(&format!("copies[{i}]"));
        let storage = StorageTarget::try_from(required(c.storage, "storage").map_err(within)?)
            .map_err(|e| within(e.within("storage")))?;
        if copies.iter().any(|c: &VerifyCopy| c.storage.id == storage.id) {
            return Err(within(ProtocolError::new("storage", "names a storage twice")));
        }
        copies.push(VerifyCopy { storage, chunks: chunks_field(c.chunks).map_err(within)? });
    }
    Ok(VerifyPlan {
        copies,
        sha256: sha256_field("sha256", &t.sha256)?,
        manifest_key: key_field("manifest_key", &t.manifest_key)?,
        recorded: t.recorded.map(|r| RecordedBackup::try_from(r).map_err(|e| e.within("recorded"))).transpose()?,
        read_rate_bytes_per_second: t.read_rate_bytes_per_second,
    })
}

impl From<VerifyPlan> for pb::VerifyTask {
    fn from(p: VerifyPlan) -> Self {
        pb::VerifyTask {
            copies: p
                .copies
                .into_iter()
                .map(|c| pb::VerifyCopy {
                    storage: Some(c.storage.into()),
                    chunks: c.chunks.into_iter().map(Into::into).collect(),
                })
                .collect(),
            sha256: p.sha256,
            manifest_key: p.manifest_key,
            recorded: p.recorded.map(Into::into),
            read_rate_bytes_per_second: p.read_rate_bytes_per_second,
        }
    }
}

impl TryFrom<pb::Assign> for Assignment {
    type Error = ProtocolError;
    fn try_from(a: pb::Assign) -> ProtocolResult<Self> {
        let execution = ExecutionRef::try_from(pb::ExecutionRef { execution_id: a.execution_id, attempt: a.attempt })?;
        let plan = match required(a.task, "task")? {
            pb::assign::Task::Backup(t) => Plan::Backup(backup_plan(t, execution).map_err(|e| e.within("backup"))?),
            pb::assign::Task::Restore(t) => Plan::Restore(restore_plan(t).map_err(|e| e.within("restore"))?),
            pb::assign::Task::Verify(t) => Plan::Verify(verify_plan(t).map_err(|e| e.within("verify"))?),
        };
        let trace_context =
            a.trace_context.into_iter().filter(|(k, v)| k.len() <= 64 && v.len() <= 512).take(8).collect();
        Ok(Self { execution, trace_context, plan })
    }
}

impl From<Assignment> for pb::Assign {
    fn from(a: Assignment) -> Self {
        pb::Assign {
            execution_id: a.execution.id.to_string(),
            attempt: a.execution.attempt.0,
            trace_context: a.trace_context,
            task: Some(match a.plan {
                Plan::Backup(p) => pb::assign::Task::Backup(p.into()),
                Plan::Restore(p) => pb::assign::Task::Restore(p.into()),
                Plan::Verify(p) => pb::assign::Task::Verify(p.into()),
            }),
        }
    }
}

// ---- reports ------------------------------------------------------------------------------------------------

fn backup_result(b: pb::BackupResult) -> ProtocolResult<BackupResult> {
    let storages = b
        .storage_ids
        .iter()
        .enumerate()
        .map(|(i, s)| uuid_field(&format!("storage_ids[{i}]"), s))
        .collect::<ProtocolResult<Vec<StorageId>>>()?;
    if storages.is_empty() || storages.len() > MAX_STORAGES {
        return Err(ProtocolError::new("storage_ids", format!("must name 1 to {MAX_STORAGES} storages")));
    }
    let encryption = encryption_fields(&b.encryption_key_id, &b.wrapped_key_sha256)?;
    Ok(BackupResult {
        raw_bytes: b.raw_bytes,
        stored_bytes: b.stored_bytes,
        chunk_count: b.chunk_count,
        sha256: sha256_field("sha256", &b.sha256)?,
        manifest_key: key_field("manifest_key", &b.manifest_key)?,
        storages,
        tool_version: text(&b.tool_version, 256),
        server_version: text(&b.server_version, 256),
        warnings: b.warnings.iter().take(MAX_WARNINGS).map(|w| text(w, MAX_WARNING_CHARS)).collect(),
        encryption_key_id: encryption.as_ref().map(|e| e.key_id.clone()),
        wrapped_key_sha256: encryption.map(|e| e.wrapped_key_sha256),
        globals: stored_object_field(b.globals, "globals")?,
        table_counts: if b.table_counts.is_empty() {
            None
        } else {
            Some(super::drill::table_counts_of(b.table_counts, "table_counts")?)
        },
        layout_sha256: layout_sha256_field(&b.layout_sha256)?,
    })
}

impl From<BackupResult> for pb::BackupResult {
    fn from(b: BackupResult) -> Self {
        pb::BackupResult {
            raw_bytes: b.raw_bytes,
            stored_bytes: b.stored_bytes,
            chunk_count: b.chunk_count,
            sha256: b.sha256,
            manifest_key: b.manifest_key,
            storage_ids: b.storages.iter().map(ToString::to_string).collect(),
            tool_version: b.tool_version,
            server_version: b.server_version,
            warnings: b.warnings,
            encryption_key_id: b.encryption_key_id.unwrap_or_default(),
            globals: b.globals.map(Into::into),
            wrapped_key_sha256: b.wrapped_key_sha256.unwrap_or_default(),
            table_counts: b.table_counts.unwrap_or_default().into_iter().map(Into::into).collect(),
            layout_sha256: b.layout_sha256.unwrap_or_default(),
        }
    }
}

/// Longest problem text kept in a verify finding.
const MAX_FINDING_CHARS: usize = 1024;

fn optional_text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| text(s, MAX_FINDING_CHARS))
}

fn copy_findings(c: pb::CopyFindings) -> ProtocolResult<CopyFindings> {
    if c.damaged_chunks.len() > MAX_CHUNKS {
        return Err(ProtocolError::new("damaged_chunks", format!("must list at most {MAX_CHUNKS} chunks")));
    }
    let damaged_chunks = c
        .damaged_chunks
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let fault = match pb::ChunkFault::try_from(d.fault) {
                Ok(pb::ChunkFault::Missing) => ChunkFault::Missing,
                Ok(pb::ChunkFault::Size) => ChunkFault::Size,
                Ok(pb::ChunkFault::Sha256) => ChunkFault::Sha256,
                _ => return Err(ProtocolError::new(format!("damaged_chunks[{i}].fault"), "unknown fault")),
            };
            Ok(ChunkDamage { seq: d.seq, fault, detail: text(&d.detail, MAX_FINDING_CHARS) })
        })
        .collect::<ProtocolResult<Vec<_>>>()?;
    Ok(CopyFindings {
        storage: uuid_field("storage_id", &c.storage_id)?,
        unreadable: optional_text(&c.unreadable),
        manifest_missing: c.manifest_missing,
        manifest_problem: optional_text(&c.manifest_problem),
        damaged_chunks,
        stream_mismatch: c.stream_mismatch,
        globals_problem: optional_text(&c.globals_problem),
    })
}

fn verify_result(v: pb::VerifyResult) -> ProtocolResult<VerifyResult> {
    if v.copies.is_empty() || v.copies.len() > MAX_STORAGES {
        return Err(ProtocolError::new("copies", format!("must name 1 to {MAX_STORAGES} copies")));
    }
    let copies = v
        .copies
        .into_iter()
        .enumerate()
        .map(|(i, c)| copy_findings(c).map_err(|e| e.within(&format!("copies[{i}]"))))
        .collect::<ProtocolResult<Vec<_>>>()?;
    Ok(VerifyResult { copies })
}

impl From<VerifyResult> for pb::VerifyResult {
    fn from(v: VerifyResult) -> Self {
        pb::VerifyResult {
            copies: v
                .copies
                .into_iter()
                .map(|c| pb::CopyFindings {
                    storage_id: c.storage.to_string(),
                    unreadable: c.unreadable.unwrap_or_default(),
                    manifest_missing: c.manifest_missing,
                    manifest_problem: c.manifest_problem.unwrap_or_default(),
                    damaged_chunks: c
                        .damaged_chunks
                        .into_iter()
                        .map(|d| pb::ChunkDamage {
                            seq: d.seq,
                            fault: match d.fault {
                                ChunkFault::Missing => pb::ChunkFault::Missing,
                                ChunkFault::Size => pb::ChunkFault::Size,
                                ChunkFault::Sha256 => pb::ChunkFault::Sha256,
                            } as i32,
                            detail: d.detail,
                        })
                        .collect(),
                    stream_mismatch: c.stream_mismatch,
                    globals_problem: c.globals_problem.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// The report an agent message carries, or `None` for the session-level kinds (Hello, Heartbeat, request
/// answers), which the session layer handles itself.
pub fn report_of(m: pb::agent_message::Kind) -> Option<ProtocolResult<AgentReport>> {
    use pb::agent_message::Kind;
    Some(match m {
        Kind::ChunkReported(c) => chunk_stored(c).map(AgentReport::ChunkStored).map_err(|e| e.within("chunk_reported")),
        Kind::Progress(p) => execution_field(p.execution)
            .map(|execution| {
                AgentReport::Progress(Progress {
                    execution,
                    raw_bytes: p.raw_bytes,
                    stored_bytes: p.stored_bytes,
                    chunks: p.chunks,
                })
            })
            .map_err(|e| e.within("progress")),
        Kind::Log(l) => execution_field(l.execution)
            .map(|execution| {
                let level = match l.level.as_str() {
                    "warn" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    _ => LogLevel::Info,
                };
                AgentReport::Log(LogReport { execution, level, message: text(&l.message, MAX_LOG_CHARS) })
            })
            .map_err(|e| e.within("log")),
        Kind::Completed(c) => completed(c).map_err(|e| e.within("completed")),
        Kind::Failed(f) => execution_field(f.execution)
            .map(|execution| AgentReport::Failed {
                execution,
                error: text(&f.error, MAX_LOG_CHARS),
                cancelled: f.cancelled,
            })
            .map_err(|e| e.within("failed")),
        Kind::Hello(_) | Kind::Heartbeat(_) | Kind::Response(_) => return None,
    })
}

/// The attempt a report message names, when that part decodes (to end the attempt of a report whose other
/// fields are malformed).
pub fn execution_of(m: &pb::agent_message::Kind) -> Option<ExecutionRef> {
    use pb::agent_message::Kind;
    let r = match m {
        Kind::ChunkReported(c) => c.execution.clone(),
        Kind::Progress(p) => p.execution.clone(),
        Kind::Log(l) => l.execution.clone(),
        Kind::Completed(c) => c.execution.clone(),
        Kind::Failed(f) => f.execution.clone(),
        Kind::Hello(_) | Kind::Heartbeat(_) | Kind::Response(_) => None,
    }?;
    ExecutionRef::try_from(r).ok()
}

fn chunk_stored(c: pb::ChunkReported) -> ProtocolResult<ChunkStored> {
    Ok(ChunkStored {
        execution: execution_field(c.execution)?,
        storage: uuid_field("storage_id", &c.storage_id)?,
        seq: c.seq,
        key: key_field("key", &c.key)?,
        size: c.size,
        sha256: sha256_field("sha256", &c.sha256)?,
        raw_bytes: c.raw_bytes,
    })
}

fn completed(c: pb::Completed) -> ProtocolResult<AgentReport> {
    let execution = execution_field(c.execution)?;
    Ok(match required(c.result, "result")? {
        pb::completed::Result::Backup(b) => {
            AgentReport::BackupCompleted { execution, result: backup_result(b).map_err(|e| e.within("backup"))? }
        }
        pb::completed::Result::Restore(r) => AgentReport::RestoreCompleted {
            execution,
            result: RestoreResult {
                raw_bytes: r.raw_bytes,
                tool_version: text(&r.tool_version, 256),
                observed: r
                    .observed
                    .map(|o| super::drill::DrillObservation::try_from(o).map_err(|e| e.within("restore.observed")))
                    .transpose()?,
            },
        },
        pb::completed::Result::Verify(v) => {
            AgentReport::VerifyCompleted { execution, result: verify_result(v).map_err(|e| e.within("verify"))? }
        }
    })
}

impl From<AgentReport> for pb::agent_message::Kind {
    fn from(r: AgentReport) -> Self {
        use pb::agent_message::Kind;
        match r {
            AgentReport::ChunkStored(c) => Kind::ChunkReported(pb::ChunkReported {
                execution: Some(c.execution.into()),
                storage_id: c.storage.to_string(),
                seq: c.seq,
                key: c.key,
                size: c.size,
                sha256: c.sha256,
                raw_bytes: c.raw_bytes,
            }),
            AgentReport::Progress(p) => Kind::Progress(pb::Progress {
                execution: Some(p.execution.into()),
                raw_bytes: p.raw_bytes,
                stored_bytes: p.stored_bytes,
                chunks: p.chunks,
            }),
            AgentReport::Log(l) => Kind::Log(pb::LogLine {
                execution: Some(l.execution.into()),
                level: l.level.as_str().to_owned(),
                message: l.message,
                at: Some(now_ts()),
            }),
            AgentReport::BackupCompleted { execution, result } => Kind::Completed(pb::Completed {
                execution: Some(execution.into()),
                result: Some(pb::completed::Result::Backup(result.into())),
            }),
            AgentReport::RestoreCompleted { execution, result } => Kind::Completed(pb::Completed {
                execution: Some(execution.into()),
                result: Some(pb::completed::Result::Restore(pb::RestoreResult {
                    raw_bytes: result.raw_bytes,
                    tool_version: result.tool_version,
                    observed: result.observed.map(Into::into),
                })),
            }),
            AgentReport::VerifyCompleted { execution, result } => Kind::Completed(pb::Completed {
                execution: Some(execution.into()),
                result: Some(pb::completed::Result::Verify(result.into())),
            }),
            AgentReport::Failed { execution, error, cancelled } => {
                Kind::Failed(pb::Failed { execution: Some(execution.into()), error, cancelled })
            }
        }
    }
}

fn now_ts() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp { seconds: now.timestamp(), nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// The running attempts a heartbeat or Hello lists (malformed entries are refused as a whole).
pub fn running_of(list: Vec<pb::ExecutionRef>) -> ProtocolResult<Vec<ExecutionRef>> {
    if list.len() > 64 {
        return Err(ProtocolError::new("running", "must list at most 64 attempts"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, r)| ExecutionRef::try_from(r).map_err(|e| e.within(&format!("running[{i}]"))))
        .collect()
}

/// A storage configuration as the controller keeps it, to be sent in an assignment or a request.
pub fn storage_target(id: StorageId, config: StoreConfig) -> StorageTarget {
    StorageTarget { id, config }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
