//! The declarative file of `dgctl apply` / `dgctl diff`: resources by name, references to other resources
//! by name (or id), secrets only as `{env: VAR}` / `{file: PATH}`, durations as `90s`, `26h`, `7d`. Unknown
//! keys are refused so a typo never passes silently. Absent optional fields are not managed: left as they are
//! on update, server defaults on create.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    cmd::{
        datasources::{Engine, TlsMode},
        jobs::Strategy,
    },
    error::{CliError, CliResult},
    secret::SecretRef,
};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Storages.
    #[serde(default)]
    pub storages: Vec<StorageSpec>,
    /// Datasources.
    #[serde(default)]
    pub datasources: Vec<DatasourceSpec>,
    /// Backup jobs.
    #[serde(default)]
    pub jobs: Vec<JobSpec>,
    /// Restore drills.
    #[serde(default)]
    pub drills: Vec<DrillSpec>,
    /// Notification channels.
    #[serde(default)]
    pub notification_channels: Vec<ChannelSpec>,
}

/// A datasource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceSpec {
    pub name: String,
    pub engine: Engine,
    pub host: String,
    pub port: Option<u32>,
    pub database: String,
    pub username: String,
    pub password: Option<SecretRef>,
    pub tls_mode: Option<TlsMode>,
    /// Agent id or host name.
    pub agent: String,
    pub labels: Option<BTreeMap<String, String>>,
}

/// A storage: exactly one of the kinds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    pub name: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub local: Option<LocalSpec>,
    pub s3: Option<S3Spec>,
    pub gcs: Option<GcsSpec>,
    pub azure: Option<AzureSpec>,
}

/// A directory on an agent's host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    pub path: String,
    /// Agent id or host name.
    pub agent: String,
}

/// An S3-compatible bucket.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Spec {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: Option<SecretRef>,
    pub allow_http: bool,
    pub ambient_credentials: bool,
}

/// A GCS bucket.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsSpec {
    pub bucket: String,
    pub prefix: String,
    pub service_account_key: Option<SecretRef>,
    pub endpoint: String,
    pub allow_http: bool,
    pub ambient_credentials: bool,
}

/// An Azure container.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureSpec {
    pub account: String,
    pub container: String,
    pub prefix: String,
    pub access_key: Option<SecretRef>,
    pub endpoint: String,
    pub allow_http: bool,
    pub ambient_credentials: bool,
}

/// A backup job. Absent optional fields are not managed (left as they are; server defaults on create).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// Datasource name or id.
    pub datasource: String,
    /// Storage names or ids, in preference order.
    pub storages: Vec<String>,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub strategy: Option<Strategy>,
    pub compression_level: Option<i32>,
    /// `fixed`, `adaptive` or `adaptive:MIN..MAX`.
    pub compression: Option<String>,
    /// PostgreSQL: parallel streams for table data (1-16; 1 is one pg_dump stream).
    pub parallel: Option<u32>,
    pub enabled: Option<bool>,
    pub retention: Option<RetentionSpec>,
    pub retry: Option<RetrySpec>,
    pub encryption_key_id: Option<String>,
    pub include_globals: Option<bool>,
    pub rpo: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// A retention policy (compared as a whole).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSpec {
    /// `count` (default) or `gfs`.
    pub mode: Option<String>,
    pub max_backups: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub min_backups: u32,
    pub max_age: Option<String>,
}

/// A retry policy.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub backoff: Option<String>,
}

/// A restore drill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSpec {
    pub name: String,
    /// Datasource whose backups are drilled.
    pub datasource: String,
    /// Datasource where scratch databases are made.
    pub target_datasource: String,
    pub max_backup_age: String,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub row_count_tolerance_percent: Option<f64>,
    pub assert_row_counts: Option<bool>,
    pub enabled: Option<bool>,
    /// Create-only.
    pub scratch_database_prefix: Option<String>,
}

/// A notification channel: exactly one of webhook, slack, email.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub name: String,
    pub webhook: Option<WebhookSpec>,
    pub slack: Option<SlackSpec>,
    pub email: Option<EmailSpec>,
    pub events: Option<Vec<String>>,
    pub label_selector: Option<BTreeMap<String, String>>,
    pub max_attempts: Option<u32>,
    pub timeout: Option<String>,
    pub enabled: Option<bool>,
}

/// Webhook settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    pub secret: SecretRef,
}

/// Slack-compatible settings (the URL carries a token: a secret reference).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    pub url: SecretRef,
}

/// SMTP settings.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailSpec {
    pub host: String,
    pub port: u32,
    /// `starttls` (default), `tls` or `none`.
    pub security: Option<String>,
    pub username: String,
    pub password: Option<SecretRef>,
    pub from: String,
    pub to: Vec<String>,
    pub ca_pem: String,
}

/// Parses `text` (YAML) and refuses inline secrets and duplicate names before anything is sent.
pub fn parse(text: &str, origin: &str) -> CliResult<File> {
    let f: File = serde_yaml_ng::from_str(text).map_err(|e| CliError::local(format!("{origin}: {e}")))?;
    let check = |field: String, s: &Option<SecretRef>| s.as_ref().map_or(Ok(()), |s| s.check(&field));
    for d in &f.datasources {
        check(format!("datasources[{}].password", d.name), &d.password)?;
    }
    for s in &f.storages {
        let kinds = [s.local.is_some(), s.s3.is_some(), s.gcs.is_some(), s.azure.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(CliError::local(format!(
                "{origin}: storages[{}]: exactly one of local, s3, gcs, azure is required",
                s.name
            )));
        }
        if let Some(x) = &s.s3 {
            check(format!("storages[{}].s3.secret_access_key", s.name), &x.secret_access_key)?;
        }
        if let Some(x) = &s.gcs {
            check(format!("storages[{}].gcs.service_account_key", s.name), &x.service_account_key)?;
        }
        if let Some(x) = &s.azure {
            check(format!("storages[{}].azure.access_key", s.name), &x.access_key)?;
        }
    }
    for c in &f.notification_channels {
        let kinds = [c.webhook.is_some(), c.slack.is_some(), c.email.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(CliError::local(format!(
                "{origin}: notification_channels[{}]: exactly one of webhook, slack, email is required",
                c.name
            )));
        }
        if let Some(w) = &c.webhook {
            w.secret.check(&format!("notification_channels[{}].webhook.secret", c.name))?;
        }
        if let Some(s) = &c.slack {
            s.url.check(&format!("notification_channels[{}].slack.url", c.name))?;
        }
        if let Some(e) = &c.email {
            check(format!("notification_channels[{}].email.password", c.name), &e.password)?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    let names = f
        .storages
        .iter()
        .map(|x| ("storages", &x.name))
        .chain(f.datasources.iter().map(|x| ("datasources", &x.name)))
        .chain(f.jobs.iter().map(|x| ("jobs", &x.name)))
        .chain(f.drills.iter().map(|x| ("drills", &x.name)))
        .chain(f.notification_channels.iter().map(|x| ("notification_channels", &x.name)));
    for (kind, name) in names {
        if !seen.insert((kind, name.clone())) {
            return Err(CliError::local(format!("{origin}: {kind}: \"{name}\" appears twice")));
        }
    }
    Ok(f)
}

/// `90s`, `26h`, `7d` as a wire duration; `field` names it in errors.
pub fn duration(s: &str, field: &str) -> CliResult<prost_types::Duration> {
    let d = humantime::parse_duration(s).map_err(|e| CliError::local(format!("{field}: {s}: {e}")))?;
    Ok(crate::cmd::jobs::duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secret_refused_with_field_name() {
        let y = "datasources:\n  - {name: app, engine: postgres, host: h, database: d, username: u, agent: a, password: hunter2}\n";
        let err = parse(y, "f.yaml").expect_err("inline refused");
        let msg = err.to_string();
        assert!(msg.contains("datasources[app].password") && msg.contains("inline"), "{msg}");
        assert!(!msg.contains("hunter2"), "the secret is never echoed: {msg}");
        let ok = "datasources:\n  - {name: app, engine: postgres, host: h, database: d, username: u, agent: a, password: {env: PGPASS}}\n";
        assert_eq!(parse(ok, "f.yaml").expect("reference ok").datasources.len(), 1);
    }

    #[test]
    fn typos_duplicates_and_kinds_refused() {
        assert!(parse("jobz: []\n", "f").is_err(), "unknown top-level key");
        let dup = "storages:\n  - {name: a, local: {path: /x, agent: h}}\n  - {name: a, local: {path: /y, agent: h}}\n";
        assert!(parse(dup, "f").expect_err("dup").to_string().contains("twice"));
        let none = "storages:\n  - {name: a}\n";
        assert!(parse(none, "f").expect_err("no kind").to_string().contains("exactly one"));
    }
}
