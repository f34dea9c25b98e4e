//! Request validation: the only place it happens. Every generated request type is converted into a
//! validated domain value here; a failure is a [`FieldError`] naming the field as the `.proto` file does.

use std::collections::BTreeMap;

use dg_common::{
    error::FieldError,
    protocol::{self, LevelBounds},
};
use dg_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    db::Page,
    model::{self, Engine, RetentionMode, Status, Strategy, TlsMode},
    service::{
        catalog::{DatasourcePatch, JobPatch, NewDatasource, NewJob},
        executions::RestoreRequest,
        import::ImportRequest,
        retention_policy::{MAX_COUNT, RetentionPolicy},
        schedule,
        scrub::{self, VerifySchedule},
    },
};

mod drills;
mod notify;
mod storage;

pub use drills::*;

pub use notify::{channel_patch, delivery_filter};
pub use storage::*;

type V<T> = Result<T, FieldError>;

/// A required UUID field.
pub fn id(field: &'static str, s: &str) -> V<Uuid> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Uuid::parse_str(s).map_err(|_| FieldError::new(field, "must be a UUID"))
}

/// An optional UUID field (empty = none).
pub fn opt_id(field: &'static str, s: &str) -> V<Option<Uuid>> {
    if s.is_empty() { Ok(None) } else { id(field, s).map(Some) }
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
        return Err(FieldError::new(field, format!("must be at most {max} printable characters")));
    }
    if s.starts_with('-') {
        return Err(FieldError::new(field, "must not start with '-'"));
    }
    Ok(s.to_owned())
}

fn host(s: &str) -> V<String> {
    let h = tool_arg("host", s, 253)?;
    if h.chars().any(|c| c.is_whitespace() || c == '/' || c == '\\' || c == '@' || c == '?' || c == '#') {
        return Err(FieldError::new("host", "must be a host name or an IP address"));
    }
    Ok(h)
}

fn port(p: u32) -> V<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| FieldError::new("port", "must be 1-65535"))
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

fn password(p: &str) -> V<()> {
    if p.len() > 1024 || p.contains('\0') {
        return Err(FieldError::new("password", "must be at most 1024 bytes without NUL"));
    }
    // A line break would end the line of the passfile or option file the agent writes it into, and let a
    // password add settings of its own.
    if p.contains('\n') || p.contains('\r') {
        return Err(FieldError::new("password", "must not contain a line break (CR or LF)"));
    }
    Ok(())
}

fn labels(l: &std::collections::HashMap<String, String>) -> V<BTreeMap<String, String>> {
    if l.len() > 64
        || l.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256 || k.chars().any(char::is_control))
    {
        return Err(FieldError::new("labels", "at most 64 labels, keys 1-63 and values up to 256 characters"));
    }
    Ok(l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// An absolute local path without `..`, NUL or a leading '-'.
pub fn local_path(field: &'static str, s: &str) -> V<String> {
    if !s.starts_with('/') {
        return Err(FieldError::new(field, "must be an absolute path"));
    }
    if s.len() > 4096 || s.chars().any(char::is_control) || s.split('/').any(|c| c == "..") {
        return Err(FieldError::new(field, "must not contain '..' or control characters"));
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
            p => port(p)?,
        };
        password(&r.password)?;
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
            labels: labels(&r.labels)?,
        })
    }
}

/// Validates a datasource change.
pub fn datasource_patch(r: pb::UpdateDatasourceRequest) -> V<(Uuid, DatasourcePatch)> {
    let id = id("id", &r.id)?;
    if let Some(p) = &r.password {
        password(p)?;
    }
    Ok((
        id,
        DatasourcePatch {
            name: r.name.as_deref().map(|n| name("name", n)).transpose()?,
            host: r.host.as_deref().map(host).transpose()?,
            port: r.port.map(port).transpose()?,
            database: r.database.as_deref().map(|d| tool_arg("database", d, 63)).transpose()?,
            username: r.username.as_deref().map(|u| tool_arg("username", u, 63)).transpose()?,
            password: r.password,
            tls_mode: r.tls_mode.map(tls_mode).transpose()?,
            agent_id: r.agent_id.as_deref().map(|a| id_of("agent_id", a)).transpose()?,
            labels: labels(&r.labels)?,
            replace_labels: r.replace_labels,
        },
    ))
}

fn id_of(field: &'static str, s: &str) -> V<Uuid> {
    id(field, s)
}

fn strategy(v: i32) -> V<Strategy> {
    match pb::StorageStrategy::try_from(v) {
        Ok(pb::StorageStrategy::Unspecified | pb::StorageStrategy::Fallback) => Ok(Strategy::Fallback),
        Ok(pb::StorageStrategy::Replicate) => Ok(Strategy::Replicate),
        Err(_) => Err(FieldError::new("storage_strategy", "unknown strategy")),
    }
}

fn storage_ids(ids: &[String]) -> V<Vec<Uuid>> {
    if ids.is_empty() {
        return Err(FieldError::new("storage_ids", "at least one storage is required"));
    }
    if ids.len() > 16 {
        return Err(FieldError::new("storage_ids", "at most 16 storages"));
    }
    let mut out = Vec::new();
    for s in ids {
        let sid = id("storage_ids", s)?;
        if out.contains(&sid) {
            return Err(FieldError::new("storage_ids", "must not repeat a storage"));
        }
        out.push(sid);
    }
    Ok(out)
}

/// Adaptive bounds: 0 means the default (min 1, max 9); `None` when absent or both 0 (off).
fn adaptive(a: Option<pb::AdaptiveCompression>) -> V<Option<Option<LevelBounds>>> {
    let Some(a) = a else { return Ok(None) };
    if a.min_level == 0 && a.max_level == 0 {
        return Ok(Some(None));
    }
    let min = if a.min_level == 0 { 1 } else { a.min_level };
    let max = if a.max_level == 0 { 9 } else { a.max_level };
    if !protocol::ADAPTIVE_MIN_RANGE.contains(&min) {
        return Err(FieldError::new("adaptive_compression.min_level", "must be -7..19"));
    }
    if !protocol::LEVEL_RANGE.contains(&max) {
        return Err(FieldError::new("adaptive_compression.max_level", "must be 1..19"));
    }
    LevelBounds::new(min, max)
        .map(|b| Some(Some(b)))
        .ok_or_else(|| FieldError::new("adaptive_compression.min_level", "must not be above max_level"))
}

/// Parallel streams: 0 means 1 (one stream); beyond [`protocol::PARALLEL_RANGE`] is refused. Whether the
/// datasource's engine allows more than one is the service's check (it needs the datasource).
fn parallel(n: u32) -> V<u32> {
    match n {
        0 => Ok(1),
        n if protocol::PARALLEL_RANGE.contains(&n) => Ok(n),
        _ => Err(FieldError::new(
            "parallel",
            format!("must be {}-{}", protocol::PARALLEL_RANGE.start(), protocol::PARALLEL_RANGE.end()),
        )),
    }
}

fn compression(l: i32) -> V<i32> {
    match l {
        0 => Ok(3),
        l @ 1..=19 => Ok(l),
        _ => Err(FieldError::new("compression_level", "must be 1-19")),
    }
}

/// A retention policy (see `RetentionPolicy` in jobs.proto for how the fields combine).
pub fn retention(r: Option<pb::RetentionPolicy>) -> V<RetentionPolicy> {
    let Some(r) = r else { return Ok(RetentionPolicy::default()) };
    let mode = match pb::RetentionMode::try_from(r.mode)
        .map_err(|_| FieldError::new("retention.mode", "unknown retention mode"))?
    {
        pb::RetentionMode::Unspecified | pb::RetentionMode::Count => RetentionMode::Count,
        pb::RetentionMode::Gfs => RetentionMode::Gfs,
    };
    let max_age_secs = match r.max_age {
        None => 0,
        Some(d) if d.seconds == 0 && d.nanos == 0 => 0,
        Some(d) if d.nanos != 0 => return Err(FieldError::new("retention.max_age", "must be whole seconds")),
        Some(d) if (1..=100 * 366 * 86_400).contains(&d.seconds) => d.seconds.unsigned_abs(),
        Some(_) => return Err(FieldError::new("retention.max_age", "must be between 1 second and 100 years")),
    };
    let counts = [
        ("retention.max_backups", r.max_backups),
        ("retention.keep_hourly", r.keep_hourly),
        ("retention.keep_daily", r.keep_daily),
        ("retention.keep_weekly", r.keep_weekly),
        ("retention.keep_monthly", r.keep_monthly),
        ("retention.keep_yearly", r.keep_yearly),
        ("retention.min_backups", r.min_backups),
    ];
    if let Some((field, _)) = counts.iter().find(|(_, v)| *v > MAX_COUNT) {
        return Err(FieldError::new(field, format!("must be at most {MAX_COUNT}")));
    }
    let p = RetentionPolicy {
        mode,
        max_backups: r.max_backups,
        keep_hourly: r.keep_hourly,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
        min_backups: r.min_backups,
        max_age_secs,
    };
    match mode {
        RetentionMode::Count => {
            if r.keep_hourly > 0 {
                return Err(FieldError::new("retention.keep_hourly", "needs mode RETENTION_MODE_GFS"));
            }
            if r.keep_yearly > 0 {
                return Err(FieldError::new("retention.keep_yearly", "needs mode RETENTION_MODE_GFS"));
            }
            let empty = RetentionPolicy { keep_daily: 0, ..RetentionPolicy::default() };
            if p == empty {
                return Ok(RetentionPolicy::default());
            }
        }
        RetentionMode::Gfs => {
            if r.max_backups > 0 {
                return Err(FieldError::new(
                    "retention.max_backups",
                    "must be 0 in mode RETENTION_MODE_GFS (use min_backups and the keep_* tiers)",
                ));
            }
            if [r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly].iter().all(|n| *n == 0) {
                return Err(FieldError::new(
                    "retention",
                    "mode RETENTION_MODE_GFS needs at least one of keep_hourly, keep_daily, keep_weekly, \
                     keep_monthly, keep_yearly",
                ));
            }
        }
    }
    Ok(p)
}

/// The policy under edit of `PreviewRetention` (field `policy`, validated like a job's `retention`).
pub fn preview_policy(p: Option<pb::RetentionPolicy>) -> V<Option<RetentionPolicy>> {
    let renamed = |f: &'static str| match f {
        "retention.mode" => "policy.mode",
        "retention.max_age" => "policy.max_age",
        "retention.max_backups" => "policy.max_backups",
        "retention.keep_hourly" => "policy.keep_hourly",
        "retention.keep_daily" => "policy.keep_daily",
        "retention.keep_weekly" => "policy.keep_weekly",
        "retention.keep_monthly" => "policy.keep_monthly",
        "retention.keep_yearly" => "policy.keep_yearly",
        "retention.min_backups" => "policy.min_backups",
        _ => "policy",
    };
    p.map(|p| retention(Some(p)).map_err(|e| FieldError::new(renamed(e.field), e.reason))).transpose()
}

/// The reason of a pin: 1-256 printable characters.
pub fn pin_reason(s: &str) -> V<String> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err(FieldError::new("reason", "must be 1-256 printable characters"));
    }
    Ok(s.to_owned())
}

fn retry(r: Option<pb::RetryPolicy>) -> V<(u32, u32)> {
    let Some(r) = r else { return Ok((1, 60)) };
    let attempts = if r.max_attempts == 0 { 1 } else { r.max_attempts };
    if attempts > 10 {
        return Err(FieldError::new("retry.max_attempts", "must be 1-10"));
    }
    let backoff = match r.backoff {
        None => 60,
        Some(d) if (0..=86_400).contains(&d.seconds) && d.nanos >= 0 => u32::try_from(d.seconds).unwrap_or(60),
        Some(_) => return Err(FieldError::new("retry.backoff", "must be between 0 and 1 day")),
    };
    Ok((attempts, backoff))
}

/// A recovery-point objective: absent or zero means none, else whole seconds from 1 minute to 1 year.
fn rpo(d: Option<prost_types::Duration>) -> V<i64> {
    match d {
        None => Ok(0),
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(0),
        Some(d) if d.nanos == 0 && (1..=366 * 86_400).contains(&d.seconds) => Ok(d.seconds),
        Some(_) => Err(FieldError::new("rpo", "must be whole seconds between 1 second and 1 year, or zero for none")),
    }
}

fn key_id(s: &str) -> V<String> {
    if s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) || s.starts_with('.') {
        return Err(FieldError::new(
            "encryption_key_id",
            "must be at most 64 characters of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    Ok(s.to_owned())
}

fn cron_and_zone(cron: &str, tz: &str) -> V<(String, String)> {
    let tz = if tz.is_empty() { "UTC" } else { tz };
    schedule::parse(cron, tz)?;
    Ok((cron.split_whitespace().collect::<Vec<_>>().join(" "), tz.to_owned()))
}

/// Scrubbing settings, the cron read in `tz`: errors name `verify.*`.
fn verify_schedule(v: Option<pb::VerifySchedule>, tz: &str) -> V<VerifySchedule> {
    let Some(v) = v else { return Ok(VerifySchedule::default()) };
    Ok(VerifySchedule {
        cron: scrub::verify_cron(&v.cron, tz)?,
        after_backup: v.after_backup,
        read_rate_bytes_per_second: scrub::read_rate(
            "verify.read_rate_bytes_per_second",
            v.read_rate_bytes_per_second,
        )?,
    })
}

impl TryFrom<pb::CreateBackupJobRequest> for NewJob {
    type Error = FieldError;
    fn try_from(r: pb::CreateBackupJobRequest) -> V<Self> {
        let (cron, time_zone) = cron_and_zone(&r.cron, &r.time_zone)?;
        let verify = verify_schedule(r.verify, &time_zone)?;
        let (retry_max_attempts, retry_backoff_secs) = retry(r.retry)?;
        Ok(NewJob {
            name: name("name", &r.name)?,
            datasource_id: id("datasource_id", &r.datasource_id)?,
            cron,
            time_zone,
            retention: retention(r.retention)?,
            strategy: strategy(r.storage_strategy)?,
            storage_ids: storage_ids(&r.storage_ids)?,
            compression_level: compression(r.compression_level)?,
            adaptive_compression: adaptive(r.adaptive_compression)?.flatten(),
            parallel: parallel(r.parallel)?,
            enabled: r.enabled.unwrap_or(true),
            retry_max_attempts,
            retry_backoff_secs,
            encryption_key_id: key_id(&r.encryption_key_id)?,
            include_globals: r.include_globals,
            rpo_secs: rpo(r.rpo)?,
            labels: labels(&r.labels)?,
            verify,
        })
    }
}

/// Validates a job change (the schedule is checked against the stored one by the service).
pub fn job_patch(r: pb::UpdateBackupJobRequest) -> V<(Uuid, JobPatch)> {
    let id = id("id", &r.id)?;
    if let Some(tz) = &r.time_zone {
        schedule::time_zone(tz)?;
    }
    let tz = r.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
    if let Some(c) = &r.cron {
        schedule::parse(c, &tz)?;
    }
    Ok((
        id,
        JobPatch {
            name: r.name.as_deref().map(|n| name("name", n)).transpose()?,
            cron: r.cron.map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ")),
            time_zone: r.time_zone,
            retention: r.retention.map(|p| retention(Some(p))).transpose()?,
            strategy: r.storage_strategy.map(strategy).transpose()?,
            storage_ids: r.storages.map(|s| storage_ids(&s.storage_ids)).transpose()?,
            compression_level: r.compression_level.map(compression).transpose()?,
            adaptive_compression: adaptive(r.adaptive_compression)?,
            parallel: r.parallel.map(parallel).transpose()?,
            retry: r.retry.map(|p| retry(Some(p))).transpose()?,
            encryption_key_id: r.encryption_key_id.as_deref().map(key_id).transpose()?,
            include_globals: r.include_globals,
            rpo_secs: r.rpo.map(|d| rpo(Some(d))).transpose()?,
            labels: labels(&r.labels)?,
            replace_labels: r.replace_labels,
            verify: r.verify.map(|v| verify_schedule(Some(v), &tz)).transpose()?,
        },
    ))
}

impl TryFrom<pb::ImportCatalogRequest> for ImportRequest {
    type Error = FieldError;
    fn try_from(r: pb::ImportCatalogRequest) -> V<Self> {
        Ok(ImportRequest {
            storage_id: id("storage_id", &r.storage_id)?,
            datasource_id: id("datasource_id", &r.datasource_id)?,
            from_datasource_id: (!r.from_datasource_id.is_empty())
                .then(|| id("from_datasource_id", &r.from_datasource_id))
                .transpose()?,
            verify_chunks: r.verify_chunks,
            dry_run: r.dry_run,
        })
    }
}

impl TryFrom<pb::RestoreBackupRequest> for RestoreRequest {
    type Error = FieldError;
    fn try_from(r: pb::RestoreBackupRequest) -> V<Self> {
        if !r.verification_mode && r.confirm_target_database.is_empty() {
            return Err(FieldError::new("confirm_target_database", "is required: repeat the target database name"));
        }
        if r.parallel_jobs > 16 {
            return Err(FieldError::new("parallel_jobs", "must be 1-16 (0 or unset: as the backup was taken)"));
        }
        if r.verification_mode && !r.target_database.is_empty() {
            return Err(FieldError::new(
                "target_database",
                "must be empty in verification_mode (a temporary database is used)",
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
            source_storage_id: opt_id("source_storage_id", &r.source_storage_id)?,
            verification_mode: r.verification_mode,
            parallel_jobs: (r.parallel_jobs > 0).then_some(r.parallel_jobs),
            restore_globals: r.restore_globals,
            scratch_database: None,
            drill: None,
        })
    }
}

/// Execution status filter.
pub fn status_filter(v: i32) -> V<Option<Status>> {
    Ok(match pb::ExecutionStatus::try_from(v).map_err(|_| FieldError::new("status", "unknown status"))? {
        pb::ExecutionStatus::Unspecified => None,
        pb::ExecutionStatus::Queued => Some(Status::Queued),
        pb::ExecutionStatus::Running => Some(Status::Running),
        pb::ExecutionStatus::Completed => Some(Status::Completed),
        pb::ExecutionStatus::Failed => Some(Status::Failed),
        pb::ExecutionStatus::Cancelled => Some(Status::Cancelled),
    })
}

/// Operation filter.
pub fn operation_filter(v: i32) -> V<Option<model::Operation>> {
    Ok(match pb::Operation::try_from(v).map_err(|_| FieldError::new("operation", "unknown operation"))? {
        pb::Operation::Unspecified => None,
        pb::Operation::Backup => Some(model::Operation::Backup),
        pb::Operation::Restore => Some(model::Operation::Restore),
        pb::Operation::Verify => Some(model::Operation::Verify),
    })
}

/// A timestamp filter.
pub fn time(field: &'static str, t: Option<prost_types::Timestamp>) -> V<Option<chrono::DateTime<chrono::Utc>>> {
    t.map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .ok_or_else(|| FieldError::new(field, "is out of range"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::storages::StorageSpec;

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
            ("database", Box::new(|r| r.database = "--file=/etc/passwd".into())),
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
    fn paths_prefixes_and_pages() {
        assert!(local_path("p", "/var/backups").is_ok());
        assert!(local_path("p", "relative").is_err());
        assert!(local_path("p", "/var/../etc").is_err());
        assert!(prefix("s3.prefix", "a/../b").is_err());
        assert_eq!(prefix("s3.prefix", "a/b/").expect("ok"), "a/b");
        assert_eq!(page(0, "", 50, 500).expect("page").limit, 50);
        assert_eq!(page(10_000, "o20", 50, 500).expect("page").offset, 20);
        assert_eq!(page(10_000, "", 50, 500).expect("page").limit, 500);
        assert_eq!(page(1, "zz", 50, 500).expect_err("token").field, "page_token");
        let p = Page { offset: 0, limit: 2 };
        assert_eq!(p.next_token(2), "o2");
        assert_eq!(p.next_token(1), "");
    }

    #[test]
    fn cloud_storages_choose_plain_http_and_ambient_credentials_explicitly() {
        let http = "http://127.0.0.1:10000".to_owned();
        let gcs = |allow_http, key: &str, ambient| {
            StorageConfigIn::Gcs(pb::GcsStorageConfig {
                bucket: "bbb".into(),
                endpoint: http.clone(),
                allow_http,
                service_account_key: key.into(),
                ambient_credentials: ambient,
                ..Default::default()
            })
        };
        let azure = |allow_http, key: &str, ambient| {
            StorageConfigIn::Azure(pb::AzureStorageConfig {
                account: "acct".into(),
                container: "ccc".into(),
                endpoint: http.clone(),
                allow_http,
                access_key: key.into(),
                ambient_credentials: ambient,
                ..Default::default()
            })
        };
        let s3 = |key: &str, ambient| {
            StorageConfigIn::S3(pb::S3StorageConfig {
                bucket: "bbb".into(),
                access_key_id: if key.is_empty() { String::new() } else { "id".into() },
                secret_access_key: key.into(),
                ambient_credentials: ambient,
                ..Default::default()
            })
        };
        let field = |c| storage_spec(c).map(|_| ()).map_err(|e| e.field);
        assert_eq!(field(gcs(false, "", false)), Err("gcs.endpoint"));
        assert_eq!(field(azure(false, "", false)), Err("azure.endpoint"));
        assert_eq!(field(gcs(true, "", false)), Ok(()));
        assert_eq!(field(azure(true, "k", false)), Ok(()));
        assert!(matches!(storage_spec(gcs(true, "", true)), Ok(StorageSpec::Gcs { ambient_credentials: true, .. })));
        assert_eq!(field(gcs(true, "k", true)), Err("gcs.ambient_credentials"));
        assert_eq!(field(azure(true, "k", true)), Err("azure.ambient_credentials"));
        assert_eq!(field(s3("k", true)), Err("s3.ambient_credentials"));
        assert_eq!(field(s3("", true)), Ok(()));
    }

    #[test]
    fn parallel_zero_is_one_stream_and_beyond_sixteen_is_refused() {
        let create = |parallel| pb::CreateBackupJobRequest {
            name: "nightly".into(),
            datasource_id: Uuid::now_v7().to_string(),
            storage_ids: vec![Uuid::now_v7().to_string()],
            parallel,
            ..Default::default()
        };
        let update =
            |parallel| pb::UpdateBackupJobRequest { id: Uuid::now_v7().to_string(), parallel, ..Default::default() };
        for (given, stored) in [(0, 1), (1, 1), (4, 4), (16, 16)] {
            assert_eq!(NewJob::try_from(create(given)).expect("in range").parallel, stored, "{given}");
            assert_eq!(job_patch(update(Some(given))).expect("in range").1.parallel, Some(stored), "{given}");
        }
        assert_eq!(job_patch(update(None)).expect("absent").1.parallel, None, "absent: kept");
        for n in [17, u32::MAX] {
            assert_eq!(NewJob::try_from(create(n)).expect_err("out of range").field, "parallel");
            assert_eq!(job_patch(update(Some(n))).expect_err("out of range").field, "parallel");
        }
    }

    #[test]
    fn retry_and_retention_defaults() {
        assert_eq!(retry(None).expect("default"), (1, 60));
        assert_eq!(
            retry(Some(pb::RetryPolicy { max_attempts: 11, backoff: None })).expect_err("max").field,
            "retry.max_attempts"
        );
        assert_eq!(retention(None).expect("default"), RetentionPolicy::default());
        assert_eq!(retention(Some(pb::RetentionPolicy::default())).expect("empty"), RetentionPolicy::default());
        let r = pb::RetentionPolicy { max_backups: 3, ..Default::default() };
        assert_eq!(
            retention(Some(r)).expect("max"),
            RetentionPolicy { max_backups: 3, keep_daily: 0, ..RetentionPolicy::default() }
        );
        let gfs = |p: pb::RetentionPolicy| pb::RetentionPolicy { mode: pb::RetentionMode::Gfs as i32, ..p };
        let day = |s: i64| Some(prost_types::Duration { seconds: s, nanos: 0 });
        let ok = retention(Some(gfs(pb::RetentionPolicy {
            keep_hourly: 24,
            keep_yearly: 3,
            min_backups: 2,
            max_age: day(86_400 * 400),
            ..Default::default()
        })))
        .expect("gfs");
        assert_eq!(
            (ok.mode, ok.keep_hourly, ok.keep_daily, ok.max_age_secs),
            (RetentionMode::Gfs, 24, 0, 86_400 * 400)
        );
        // Only max_age in count mode: keep everything younger (not the 7-daily default).
        let young = retention(Some(pb::RetentionPolicy { max_age: day(3600), ..Default::default() })).expect("age");
        assert_eq!((young.keep_daily, young.count(), young.max_age_secs), (0, None, 3600));
        let field = |p| retention(Some(p)).expect_err("refused").field;
        assert_eq!(field(pb::RetentionPolicy { keep_hourly: 1, ..Default::default() }), "retention.keep_hourly");
        assert_eq!(field(pb::RetentionPolicy { keep_yearly: 1, ..Default::default() }), "retention.keep_yearly");
        assert_eq!(
            field(gfs(pb::RetentionPolicy { max_backups: 1, keep_daily: 1, ..Default::default() })),
            "retention.max_backups"
        );
        assert_eq!(field(gfs(pb::RetentionPolicy { min_backups: 3, ..Default::default() })), "retention");
        assert_eq!(field(pb::RetentionPolicy { min_backups: 10_001, ..Default::default() }), "retention.min_backups");
        assert_eq!(field(pb::RetentionPolicy { mode: 9, ..Default::default() }), "retention.mode");
        assert_eq!(field(pb::RetentionPolicy { max_age: day(-5), ..Default::default() }), "retention.max_age");
        let frac = Some(prost_types::Duration { seconds: 1, nanos: 5 });
        assert_eq!(field(pb::RetentionPolicy { max_age: frac, ..Default::default() }), "retention.max_age");
        let bad = pb::RetentionPolicy { keep_yearly: 2, ..Default::default() };
        assert_eq!(preview_policy(Some(bad)).expect_err("renamed").field, "policy.keep_yearly");
        assert_eq!(preview_policy(None).expect("absent"), None);
        assert_eq!(pin_reason(" before upgrade ").expect("ok"), "before upgrade");
        assert_eq!(pin_reason("").expect_err("empty").field, "reason");
        assert_eq!(pin_reason(&"x".repeat(257)).expect_err("long").field, "reason");
    }
}
