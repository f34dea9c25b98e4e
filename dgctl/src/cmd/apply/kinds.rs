//! Per kind: which fields of a spec differ from the stored resource, and the create/update requests that make
//! them equal. Comparisons happen on text in name space (a job's datasource is compared by name) so a plan can
//! be shown before anything it depends on exists; requests are built later with ids from a fresh [`Ctx`].
//! Write-only secrets are never compared (the API does not return them).

use std::{collections::BTreeMap, fmt::Display};

use dg_proto::v1 as pb;
use serde::Serialize;

use super::spec::{ChannelSpec, DatasourceSpec, DrillSpec, JobSpec, RetentionSpec, StorageSpec, duration};
use crate::{
    connect::Session,
    error::{CliError, CliResult},
    resolve,
    secret::SecretRef,
    view::{secs, word},
};

/// One field whose stored value is not the declared one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Field name as written in the file.
    pub field: String,
    /// Stored value.
    pub from: String,
    /// Declared value.
    pub to: String,
}

/// What the controller holds, listed once per plan (and again before dependent kinds are applied).
pub struct Ctx {
    pub agents: Vec<pb::Agent>,
    pub storages: Vec<pb::Storage>,
    pub datasources: Vec<pb::Datasource>,
    pub jobs: Vec<pb::BackupJob>,
    pub drills: Vec<pb::RestoreDrill>,
    pub channels: Vec<pb::NotificationChannel>,
}

impl Ctx {
    /// Lists every managed kind.
    pub async fn load(s: &Session) -> CliResult<Self> {
        Ok(Self {
            agents: resolve::agents(s).await?,
            storages: resolve::storages(s).await?,
            datasources: resolve::datasources(s).await?,
            jobs: resolve::jobs(s).await?,
            drills: resolve::drills(s).await?,
            channels: resolve::channels(s).await?,
        })
    }

    fn agent_id(&self, r: &str) -> CliResult<String> {
        resolve::pick("agent", r, &self.agents, |a| &a.id, |a| &a.hostname).map(|a| a.id.clone())
    }

    fn datasource_id(&self, r: &str) -> CliResult<String> {
        resolve::pick("datasource", r, &self.datasources, |a| &a.id, |a| &a.name).map(|a| a.id.clone())
    }

    fn storage_id(&self, r: &str) -> CliResult<String> {
        resolve::pick("storage", r, &self.storages, |a| &a.id, |a| &a.name).map(|a| a.id.clone())
    }

    /// The name a datasource reference denotes (an id of a stored one becomes its name).
    fn datasource_name(&self, r: &str) -> String {
        self.datasources.iter().find(|d| d.id == r).map_or_else(|| r.to_owned(), |d| d.name.clone())
    }

    fn storage_name(&self, r: &str) -> String {
        self.storages.iter().find(|d| d.id == r).map_or_else(|| r.to_owned(), |d| d.name.clone())
    }
}

/// Accumulates changes.
#[derive(Default)]
struct Diff(Vec<Change>);

impl Diff {
    fn field(&mut self, name: &str, from: impl Display, to: impl Display) {
        let (from, to) = (from.to_string(), to.to_string());
        if from != to {
            self.0.push(Change { field: name.to_owned(), from, to });
        }
    }

    fn opt<T: Display>(&mut self, name: &str, from: impl Display, to: &Option<T>) {
        if let Some(to) = to {
            self.field(name, from, to);
        }
    }
}

/// A field the API cannot change in place.
fn immutable(kind: &str, name: &str, field: &str, from: impl Display, to: impl Display) -> CliResult<()> {
    let (from, to) = (from.to_string(), to.to_string());
    if from == to {
        return Ok(());
    }
    Err(CliError::local(format!(
        "{kind}[{name}].{field}: cannot be changed in place ({from} -> {to}); delete the resource first"
    )))
}

fn labels(m: impl IntoIterator<Item = (String, String)>) -> String {
    let m: BTreeMap<String, String> = m.into_iter().collect();
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn opt_labels(m: &Option<BTreeMap<String, String>>) -> Option<String> {
    m.as_ref().map(|m| labels(m.clone()))
}

fn read(secret: &Option<SecretRef>, field: &str, send: bool) -> CliResult<Option<String>> {
    match secret {
        Some(s) if send => s.read(field).map(Some),
        _ => Ok(None),
    }
}

fn secs_text(d: Option<&prost_types::Duration>) -> String {
    secs(d).map_or_else(|| "none".to_owned(), |s| format!("{s}s"))
}

fn dur_text(s: &Option<String>, field: &str) -> CliResult<Option<String>> {
    s.as_ref().map(|s| Ok(secs_text(Some(&duration(s, field)?)))).transpose()
}

// ---- datasources

fn engine_word(e: pb::Engine) -> String {
    word(e.as_str_name(), "ENGINE_")
}

fn tls_word(t: pb::TlsMode) -> String {
    word(t.as_str_name(), "TLS_MODE_")
}

/// Differences of a datasource.
pub fn datasource_changes(d: &DatasourceSpec, cur: &pb::Datasource, ctx: &Ctx) -> CliResult<Vec<Change>> {
    immutable("datasources", &d.name, "engine", engine_word(cur.engine()), engine_word(d.engine.into()))?;
    let mut x = Diff::default();
    x.field("host", &cur.host, &d.host);
    x.opt("port", cur.port, &d.port);
    x.field("database", &cur.database, &d.database);
    x.field("username", &cur.username, &d.username);
    x.opt("tls_mode", tls_word(cur.tls_mode()), &d.tls_mode.map(|t| tls_word(t.into())));
    x.field("agent", &cur.agent_id, ctx.agent_id(&d.agent)?);
    x.opt("labels", labels(cur.labels.clone()), &opt_labels(&d.labels));
    Ok(x.0)
}

/// The create request of a datasource (its password read now).
pub fn datasource_create(d: &DatasourceSpec, ctx: &Ctx) -> CliResult<pb::CreateDatasourceRequest> {
    Ok(pb::CreateDatasourceRequest {
        name: d.name.clone(),
        engine: pb::Engine::from(d.engine) as i32,
        host: d.host.clone(),
        port: d.port.unwrap_or(0),
        database: d.database.clone(),
        username: d.username.clone(),
        password: read(&d.password, &format!("datasources[{}].password", d.name), true)?.unwrap_or_default(),
        tls_mode: d.tls_mode.map_or(0, |t| pb::TlsMode::from(t) as i32),
        agent_id: ctx.agent_id(&d.agent)?,
        labels: d.labels.clone().unwrap_or_default().into_iter().collect(),
    })
}

/// The update request setting every declared field; the password only when `secrets`.
pub fn datasource_update(
    d: &DatasourceSpec,
    id: &str,
    ctx: &Ctx,
    secrets: bool,
) -> CliResult<pb::UpdateDatasourceRequest> {
    Ok(pb::UpdateDatasourceRequest {
        id: id.to_owned(),
        name: None,
        host: Some(d.host.clone()),
        port: d.port,
        database: Some(d.database.clone()),
        username: Some(d.username.clone()),
        password: read(&d.password, &format!("datasources[{}].password", d.name), secrets)?,
        tls_mode: d.tls_mode.map(|t| pb::TlsMode::from(t) as i32),
        agent_id: Some(ctx.agent_id(&d.agent)?),
        replace_labels: d.labels.is_some(),
        labels: d.labels.clone().unwrap_or_default().into_iter().collect(),
    })
}

// ---- storages

fn storage_kind(s: &StorageSpec) -> &'static str {
    if s.local.is_some() {
        "local"
    } else if s.s3.is_some() {
        "s3"
    } else if s.gcs.is_some() {
        "gcs"
    } else {
        "azure"
    }
}

/// Differences of a storage.
pub fn storage_changes(s: &StorageSpec, cur: &pb::Storage, ctx: &Ctx) -> CliResult<Vec<Change>> {
    use pb::storage::Config as C;
    let cur_kind = match &cur.config {
        Some(C::Local(_)) => "local",
        Some(C::S3(_)) => "s3",
        Some(C::Gcs(_)) => "gcs",
        Some(C::Azure(_)) => "azure",
        None => "none",
    };
    immutable("storages", &s.name, "kind", cur_kind, storage_kind(s))?;
    let mut x = Diff::default();
    match (&cur.config, &s.local, &s.s3, &s.gcs, &s.azure) {
        (Some(C::Local(c)), Some(d), ..) => {
            x.field("local.path", &c.path, &d.path);
            x.field("local.agent", &c.agent_id, ctx.agent_id(&d.agent)?);
        }
        (Some(C::S3(c)), _, Some(d), ..) => {
            x.field("s3.endpoint", &c.endpoint, &d.endpoint);
            x.field("s3.region", &c.region, &d.region);
            x.field("s3.bucket", &c.bucket, &d.bucket);
            x.field("s3.prefix", &c.prefix, &d.prefix);
            x.field("s3.path_style", c.path_style, d.path_style);
            x.field("s3.access_key_id", &c.access_key_id, &d.access_key_id);
            x.field("s3.allow_http", c.allow_http, d.allow_http);
            x.field("s3.ambient_credentials", c.ambient_credentials, d.ambient_credentials);
        }
        (Some(C::Gcs(c)), _, _, Some(d), _) => {
            x.field("gcs.bucket", &c.bucket, &d.bucket);
            x.field("gcs.prefix", &c.prefix, &d.prefix);
            x.field("gcs.endpoint", &c.endpoint, &d.endpoint);
            x.field("gcs.allow_http", c.allow_http, d.allow_http);
            x.field("gcs.ambient_credentials", c.ambient_credentials, d.ambient_credentials);
        }
        (Some(C::Azure(c)), _, _, _, Some(d)) => {
            x.field("azure.account", &c.account, &d.account);
            x.field("azure.container", &c.container, &d.container);
            x.field("azure.prefix", &c.prefix, &d.prefix);
            x.field("azure.endpoint", &c.endpoint, &d.endpoint);
            x.field("azure.allow_http", c.allow_http, d.allow_http);
            x.field("azure.ambient_credentials", c.ambient_credentials, d.ambient_credentials);
        }
        _ => {}
    }
    x.opt("labels", labels(cur.labels.clone()), &opt_labels(&s.labels));
    Ok(x.0)
}

/// The declared configuration; secrets read only when `secrets` (left empty, the stored ones stay).
fn storage_config(s: &StorageSpec, ctx: &Ctx, secrets: bool) -> CliResult<pb::create_storage_request::Config> {
    use pb::create_storage_request::Config;
    let field = |f: &str| format!("storages[{}].{f}", s.name);
    if let Some(d) = &s.local {
        return Ok(Config::Local(pb::LocalStorageConfig { path: d.path.clone(), agent_id: ctx.agent_id(&d.agent)? }));
    }
    if let Some(d) = &s.s3 {
        return Ok(Config::S3(pb::S3StorageConfig {
            endpoint: d.endpoint.clone(),
            region: d.region.clone(),
            bucket: d.bucket.clone(),
            prefix: d.prefix.clone(),
            path_style: d.path_style,
            access_key_id: d.access_key_id.clone(),
            secret_access_key: read(&d.secret_access_key, &field("s3.secret_access_key"), secrets)?.unwrap_or_default(),
            allow_http: d.allow_http,
            ambient_credentials: d.ambient_credentials,
        }));
    }
    if let Some(d) = &s.gcs {
        return Ok(Config::Gcs(pb::GcsStorageConfig {
            bucket: d.bucket.clone(),
            prefix: d.prefix.clone(),
            service_account_key: read(&d.service_account_key, &field("gcs.service_account_key"), secrets)?
                .unwrap_or_default(),
            endpoint: d.endpoint.clone(),
            allow_http: d.allow_http,
            ambient_credentials: d.ambient_credentials,
        }));
    }
    let d = s.azure.as_ref().ok_or_else(|| CliError::local(format!("storages[{}]: no kind", s.name)))?;
    Ok(Config::Azure(pb::AzureStorageConfig {
        account: d.account.clone(),
        container: d.container.clone(),
        prefix: d.prefix.clone(),
        access_key: read(&d.access_key, &field("azure.access_key"), secrets)?.unwrap_or_default(),
        endpoint: d.endpoint.clone(),
        allow_http: d.allow_http,
        ambient_credentials: d.ambient_credentials,
    }))
}

/// The create request of a storage.
pub fn storage_create(s: &StorageSpec, ctx: &Ctx) -> CliResult<pb::CreateStorageRequest> {
    Ok(pb::CreateStorageRequest {
        name: s.name.clone(),
        config: Some(storage_config(s, ctx, true)?),
        labels: s.labels.clone().unwrap_or_default().into_iter().collect(),
    })
}

/// The update request of a storage.
pub fn storage_update(s: &StorageSpec, id: &str, ctx: &Ctx, secrets: bool) -> CliResult<pb::UpdateStorageRequest> {
    Ok(pb::UpdateStorageRequest {
        id: id.to_owned(),
        name: None,
        config: Some(crate::cmd::storages::update_config(storage_config(s, ctx, secrets)?)),
        replace_labels: s.labels.is_some(),
        labels: s.labels.clone().unwrap_or_default().into_iter().collect(),
    })
}

// ---- jobs

fn retention_policy(r: &RetentionSpec, field: &str) -> CliResult<pb::RetentionPolicy> {
    let mode = match r.mode.as_deref() {
        None | Some("count") => pb::RetentionMode::Count,
        Some("gfs") => pb::RetentionMode::Gfs,
        Some(other) => return Err(CliError::local(format!("{field}.mode: {other}: expected count or gfs"))),
    };
    Ok(pb::RetentionPolicy {
        max_backups: r.max_backups,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        mode: mode as i32,
        keep_hourly: r.keep_hourly,
        keep_yearly: r.keep_yearly,
        min_backups: r.min_backups,
        max_age: r.max_age.as_ref().map(|a| duration(a, &format!("{field}.max_age"))).transpose()?,
    })
}

fn retention_text(p: &pb::RetentionPolicy) -> String {
    let mode = if p.mode() == pb::RetentionMode::Gfs { "gfs" } else { "count" };
    format!(
        "{mode} max={} hourly={} daily={} weekly={} monthly={} yearly={} min={} max_age={}",
        p.max_backups,
        p.keep_hourly,
        p.keep_daily,
        p.keep_weekly,
        p.keep_monthly,
        p.keep_yearly,
        p.min_backups,
        secs_text(p.max_age.as_ref())
    )
}

fn retry_policy(j: &JobSpec) -> CliResult<Option<pb::RetryPolicy>> {
    j.retry
        .as_ref()
        .map(|r| {
            Ok(pb::RetryPolicy {
                max_attempts: r.max_attempts,
                backoff: r
                    .backoff
                    .as_ref()
                    .map(|b| duration(b, &format!("jobs[{}].retry.backoff", j.name)))
                    .transpose()?,
            })
        })
        .transpose()
}

fn retry_text(r: &pb::RetryPolicy) -> String {
    format!("attempts={} backoff={}", r.max_attempts, secs_text(r.backoff.as_ref()))
}

fn strategy_word(s: pb::StorageStrategy) -> String {
    word(s.as_str_name(), "STORAGE_STRATEGY_")
}

/// Differences of a job.
pub fn job_changes(j: &JobSpec, cur: &pb::BackupJob, ctx: &Ctx) -> CliResult<Vec<Change>> {
    immutable(
        "jobs",
        &j.name,
        "datasource",
        ctx.datasource_name(&cur.datasource_id),
        ctx.datasource_name(&j.datasource),
    )?;
    let mut x = Diff::default();
    let cur_st: Vec<String> = cur.storage_ids.iter().map(|s| ctx.storage_name(s)).collect();
    let want_st: Vec<String> = j.storages.iter().map(|s| ctx.storage_name(s)).collect();
    x.field("storages", cur_st.join(", "), want_st.join(", "));
    x.opt("cron", &cur.cron, &j.cron);
    x.opt("time_zone", &cur.time_zone, &j.time_zone);
    x.opt("strategy", strategy_word(cur.storage_strategy()), &j.strategy.map(|s| strategy_word(s.into())));
    x.opt("compression_level", cur.compression_level, &j.compression_level);
    if let Some(c) = &j.compression {
        let want = compression(c, &j.name)?;
        let want = (want.min_level != 0 || want.max_level != 0).then_some(want);
        x.field(
            "compression",
            crate::compression::text(cur.adaptive_compression.as_ref()),
            crate::compression::text(want.as_ref()),
        );
    }
    // 0 is 1 on both sides (one stream; a controller without the field reports 0).
    x.opt("parallel", cur.parallel.max(1), &j.parallel.map(|n| n.max(1)));
    x.opt("enabled", cur.enabled, &j.enabled);
    if let Some(r) = &j.retention {
        let want = retention_policy(r, &format!("jobs[{}].retention", j.name))?;
        x.field("retention", cur.retention.as_ref().map(retention_text).unwrap_or_default(), retention_text(&want));
    }
    if let Some(want) = retry_policy(j)? {
        x.field("retry", cur.retry.as_ref().map(retry_text).unwrap_or_default(), retry_text(&want));
    }
    x.opt("encryption_key_id", &cur.encryption_key_id, &j.encryption_key_id);
    x.opt("include_globals", cur.include_globals, &j.include_globals);
    x.opt("rpo", secs_text(cur.rpo.as_ref()), &dur_text(&j.rpo, &format!("jobs[{}].rpo", j.name))?);
    x.opt("labels", labels(cur.labels.clone()), &opt_labels(&j.labels));
    Ok(x.0)
}

fn job_storage_ids(j: &JobSpec, ctx: &Ctx) -> CliResult<Vec<String>> {
    j.storages.iter().map(|s| ctx.storage_id(s)).collect()
}

/// A job's `compression` value, the file's field named when it does not parse.
fn compression(c: &str, job: &str) -> CliResult<pb::AdaptiveCompression> {
    crate::compression::mode(c).map_err(|e| CliError::Usage(format!("jobs[{job}].compression: {e}")))
}

/// The create request of a job.
pub fn job_create(j: &JobSpec, ctx: &Ctx) -> CliResult<pb::CreateBackupJobRequest> {
    let field = format!("jobs[{}]", j.name);
    Ok(pb::CreateBackupJobRequest {
        name: j.name.clone(),
        datasource_id: ctx.datasource_id(&j.datasource)?,
        cron: j.cron.clone().unwrap_or_default(),
        time_zone: j.time_zone.clone().unwrap_or_default(),
        retention: j.retention.as_ref().map(|r| retention_policy(r, &format!("{field}.retention"))).transpose()?,
        storage_strategy: j.strategy.map_or(0, |s| pb::StorageStrategy::from(s) as i32),
        storage_ids: job_storage_ids(j, ctx)?,
        compression_level: j.compression_level.unwrap_or(0),
        adaptive_compression: j.compression.as_deref().map(|c| compression(c, &j.name)).transpose()?,
        parallel: j.parallel.unwrap_or(0),
        enabled: j.enabled,
        retry: retry_policy(j)?,
        encryption_key_id: j.encryption_key_id.clone().unwrap_or_default(),
        include_globals: j.include_globals.unwrap_or(false),
        rpo: j.rpo.as_ref().map(|r| duration(r, &format!("{field}.rpo"))).transpose()?,
        labels: j.labels.clone().unwrap_or_default().into_iter().collect(),
        ..Default::default()
    })
}

/// The update request of a job (enabled is applied separately: the API has its own calls for it).
pub fn job_update(j: &JobSpec, id: &str, ctx: &Ctx) -> CliResult<pb::UpdateBackupJobRequest> {
    let field = format!("jobs[{}]", j.name);
    Ok(pb::UpdateBackupJobRequest {
        id: id.to_owned(),
        cron: j.cron.clone(),
        time_zone: j.time_zone.clone(),
        retention: j.retention.as_ref().map(|r| retention_policy(r, &format!("{field}.retention"))).transpose()?,
        storage_strategy: j.strategy.map(|s| pb::StorageStrategy::from(s) as i32),
        storages: Some(pb::StorageTargets { storage_ids: job_storage_ids(j, ctx)? }),
        compression_level: j.compression_level,
        adaptive_compression: j.compression.as_deref().map(|c| compression(c, &j.name)).transpose()?,
        parallel: j.parallel,
        retry: retry_policy(j)?,
        encryption_key_id: j.encryption_key_id.clone(),
        include_globals: j.include_globals,
        rpo: j.rpo.as_ref().map(|r| duration(r, &format!("{field}.rpo"))).transpose()?,
        replace_labels: j.labels.is_some(),
        labels: j.labels.clone().unwrap_or_default().into_iter().collect(),
        ..Default::default()
    })
}

// ---- drills

/// Differences of a drill.
pub fn drill_changes(d: &DrillSpec, cur: &pb::RestoreDrill, ctx: &Ctx) -> CliResult<Vec<Change>> {
    let name = &d.name;
    immutable(
        "drills",
        name,
        "datasource",
        ctx.datasource_name(&cur.datasource_id),
        ctx.datasource_name(&d.datasource),
    )?;
    immutable(
        "drills",
        name,
        "target_datasource",
        ctx.datasource_name(&cur.target_datasource_id),
        ctx.datasource_name(&d.target_datasource),
    )?;
    if let Some(p) = &d.scratch_database_prefix {
        immutable("drills", name, "scratch_database_prefix", &cur.scratch_database_prefix, p)?;
    }
    let mut x = Diff::default();
    x.field(
        "max_backup_age",
        secs_text(cur.max_backup_age.as_ref()),
        secs_text(Some(&duration(&d.max_backup_age, &format!("drills[{name}].max_backup_age"))?)),
    );
    x.opt("cron", &cur.cron, &d.cron);
    x.opt("time_zone", &cur.time_zone, &d.time_zone);
    x.opt("row_count_tolerance_percent", cur.row_count_tolerance_percent, &d.row_count_tolerance_percent);
    x.opt("assert_row_counts", cur.assert_row_counts, &d.assert_row_counts);
    x.opt("enabled", cur.enabled, &d.enabled);
    Ok(x.0)
}

/// The create request of a drill.
pub fn drill_create(d: &DrillSpec, ctx: &Ctx) -> CliResult<pb::CreateRestoreDrillRequest> {
    Ok(pb::CreateRestoreDrillRequest {
        name: d.name.clone(),
        datasource_id: ctx.datasource_id(&d.datasource)?,
        target_datasource_id: ctx.datasource_id(&d.target_datasource)?,
        cron: d.cron.clone().unwrap_or_default(),
        time_zone: d.time_zone.clone().unwrap_or_default(),
        max_backup_age: Some(duration(&d.max_backup_age, &format!("drills[{}].max_backup_age", d.name))?),
        row_count_tolerance_percent: d.row_count_tolerance_percent.unwrap_or(0.0),
        assert_row_counts: d.assert_row_counts,
        enabled: d.enabled,
        scratch_database_prefix: d.scratch_database_prefix.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// The update request of a drill.
pub fn drill_update(d: &DrillSpec, id: &str) -> CliResult<pb::UpdateRestoreDrillRequest> {
    Ok(pb::UpdateRestoreDrillRequest {
        id: id.to_owned(),
        cron: d.cron.clone(),
        time_zone: d.time_zone.clone(),
        max_backup_age: Some(duration(&d.max_backup_age, &format!("drills[{}].max_backup_age", d.name))?),
        row_count_tolerance_percent: d.row_count_tolerance_percent,
        assert_row_counts: d.assert_row_counts,
        enabled: d.enabled,
        ..Default::default()
    })
}

// ---- notification channels

fn channel_kind(c: &ChannelSpec) -> pb::ChannelKind {
    if c.webhook.is_some() {
        pb::ChannelKind::Webhook
    } else if c.slack.is_some() {
        pb::ChannelKind::Slack
    } else {
        pb::ChannelKind::Email
    }
}

fn security(s: &Option<String>, field: &str) -> CliResult<pb::SmtpSecurity> {
    Ok(match s.as_deref() {
        None | Some("starttls") => pb::SmtpSecurity::Starttls,
        Some("tls") => pb::SmtpSecurity::Tls,
        Some("none") => pb::SmtpSecurity::None,
        Some(other) => return Err(CliError::local(format!("{field}: {other}: expected starttls, tls or none"))),
    })
}

fn security_word(s: pb::SmtpSecurity) -> String {
    match s {
        pb::SmtpSecurity::Unspecified => "starttls".into(),
        other => word(other.as_str_name(), "SMTP_SECURITY_"),
    }
}

/// Differences of a notification channel.
pub fn channel_changes(c: &ChannelSpec, cur: &pb::NotificationChannel) -> CliResult<Vec<Change>> {
    let kind = |k: pb::ChannelKind| word(k.as_str_name(), "CHANNEL_KIND_");
    immutable("notification_channels", &c.name, "kind", kind(cur.kind()), kind(channel_kind(c)))?;
    let mut x = Diff::default();
    if let (Some(w), Some(cw)) = (&c.webhook, &cur.webhook) {
        x.field("webhook.url", &cw.url, &w.url);
    }
    if let (Some(e), Some(ce)) = (&c.email, &cur.email) {
        let field = format!("notification_channels[{}].email.security", c.name);
        x.field("email.host", &ce.host, &e.host);
        x.field("email.port", ce.port, e.port);
        x.field("email.security", security_word(ce.security()), security_word(security(&e.security, &field)?));
        x.field("email.username", &ce.username, &e.username);
        x.field("email.from", &ce.from, &e.from);
        x.field("email.to", ce.to.join(", "), e.to.join(", "));
        x.field("email.ca_pem", ce.ca_pem.trim(), e.ca_pem.trim());
    }
    x.opt("events", cur.events.join(", "), &c.events.as_ref().map(|e| e.join(", ")));
    x.opt("label_selector", labels(cur.label_selector.clone()), &opt_labels(&c.label_selector));
    x.opt("max_attempts", cur.max_attempts, &c.max_attempts);
    let field = format!("notification_channels[{}].timeout", c.name);
    x.opt("timeout", secs_text(cur.timeout.as_ref()), &dur_text(&c.timeout, &field)?);
    x.opt("enabled", cur.enabled, &c.enabled);
    Ok(x.0)
}

type ChannelConfigs = (Option<pb::WebhookConfig>, Option<pb::SlackConfig>, Option<pb::EmailConfig>);

/// The declared kind configuration; secrets only when `secrets` (a Slack URL is one: without it, no config).
fn channel_configs(c: &ChannelSpec, secrets: bool) -> CliResult<ChannelConfigs> {
    let field = |f: &str| format!("notification_channels[{}].{f}", c.name);
    let webhook = c
        .webhook
        .as_ref()
        .map(|w| -> CliResult<_> {
            let secret = if secrets { w.secret.read(&field("webhook.secret"))? } else { String::new() };
            Ok(pb::WebhookConfig { url: w.url.clone(), secret, has_secret: false })
        })
        .transpose()?;
    let slack = match &c.slack {
        Some(s) if secrets => Some(pb::SlackConfig { url: s.url.read(&field("slack.url"))?, ..Default::default() }),
        _ => None,
    };
    let email = c
        .email
        .as_ref()
        .map(|e| -> CliResult<_> {
            Ok(pb::EmailConfig {
                host: e.host.clone(),
                port: e.port,
                security: security(&e.security, &field("email.security"))? as i32,
                username: e.username.clone(),
                password: read(&e.password, &field("email.password"), secrets)?.unwrap_or_default(),
                has_password: false,
                from: e.from.clone(),
                to: e.to.clone(),
                ca_pem: e.ca_pem.clone(),
            })
        })
        .transpose()?;
    Ok((webhook, slack, email))
}

/// The create request of a channel.
pub fn channel_create(c: &ChannelSpec) -> CliResult<pb::CreateChannelRequest> {
    let (webhook, slack, email) = channel_configs(c, true)?;
    Ok(pb::CreateChannelRequest {
        name: c.name.clone(),
        kind: channel_kind(c) as i32,
        webhook,
        slack,
        email,
        events: c.events.clone().unwrap_or_default(),
        label_selector: c.label_selector.clone().unwrap_or_default().into_iter().collect(),
        max_attempts: c.max_attempts.unwrap_or(0),
        timeout: c
            .timeout
            .as_ref()
            .map(|t| duration(t, &format!("notification_channels[{}].timeout", c.name)))
            .transpose()?,
        enabled: c.enabled,
    })
}

/// The update request of a channel.
pub fn channel_update(c: &ChannelSpec, id: &str, secrets: bool) -> CliResult<pb::UpdateChannelRequest> {
    let (webhook, slack, email) = channel_configs(c, secrets)?;
    Ok(pb::UpdateChannelRequest {
        id: id.to_owned(),
        name: None,
        webhook,
        slack,
        email,
        set_events: c.events.is_some(),
        events: c.events.clone().unwrap_or_default(),
        set_label_selector: c.label_selector.is_some(),
        label_selector: c.label_selector.clone().unwrap_or_default().into_iter().collect(),
        max_attempts: c.max_attempts,
        timeout: c
            .timeout
            .as_ref()
            .map(|t| duration(t, &format!("notification_channels[{}].timeout", c.name)))
            .transpose()?,
        enabled: c.enabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_records_only_differences_and_unmanaged_fields_are_skipped() {
        let mut x = Diff::default();
        x.field("host", "a", "a");
        x.field("port", 5432, 5433);
        x.opt::<String>("cron", "0 * * * *", &None);
        x.opt("labels", "{}", &Some("{env=prod}"));
        assert_eq!(
            x.0,
            vec![
                Change { field: "port".into(), from: "5432".into(), to: "5433".into() },
                Change { field: "labels".into(), from: "{}".into(), to: "{env=prod}".into() },
            ]
        );
        assert_eq!(labels([("b".into(), "2".into()), ("a".into(), "1".into())]), "{a=1, b=2}");
        assert!(immutable("jobs", "j", "datasource", "a", "b").is_err());
        assert!(immutable("jobs", "j", "datasource", "a", "a").is_ok());
    }
}
