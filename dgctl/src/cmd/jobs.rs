//! `dgctl jobs`: backup jobs by name; `run --wait` follows the backup to its end.

use dg_proto::v1::{self as pb, backup_job_service_client::BackupJobServiceClient};
use serde::Serialize;

use crate::{
    App,
    connect::Session,
    error::CliResult,
    output::{self, Row},
    resolve, view,
};

/// Storage strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// First storage that accepts the backup.
    Fallback,
    /// Every chunk to every storage.
    Replicate,
}

impl From<Strategy> for pb::StorageStrategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Fallback => pb::StorageStrategy::Fallback,
            Strategy::Replicate => pb::StorageStrategy::Replicate,
        }
    }
}

/// Retention flags (all counts; see `RetentionPolicy` in jobs.proto).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RetentionArgs {
    /// Use grandfather-father-son tiers instead of counts.
    #[arg(long)]
    pub gfs: bool,
    /// COUNT: keep at most this many backups.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// GFS: hourly tier.
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// Daily tier (COUNT: part of the sum).
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Weekly tier.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Monthly tier.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// GFS: yearly tier.
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Always keep the newest N.
    #[arg(long)]
    pub min_backups: Option<u32>,
    /// Delete backups older than this (e.g. `90d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_age: Option<std::time::Duration>,
}

impl RetentionArgs {
    fn policy(&self) -> Option<pb::RetentionPolicy> {
        let any = self.gfs
            || [
                self.keep_last,
                self.keep_hourly,
                self.keep_daily,
                self.keep_weekly,
                self.keep_monthly,
                self.keep_yearly,
                self.min_backups,
            ]
            .iter()
            .any(Option::is_some)
            || self.max_age.is_some();
        any.then(|| pb::RetentionPolicy {
            max_backups: self.keep_last.unwrap_or(0),
            keep_daily: self.keep_daily.unwrap_or(0),
            keep_weekly: self.keep_weekly.unwrap_or(0),
            keep_monthly: self.keep_monthly.unwrap_or(0),
            mode: if self.gfs { pb::RetentionMode::Gfs } else { pb::RetentionMode::Count } as i32,
            keep_hourly: self.keep_hourly.unwrap_or(0),
            keep_yearly: self.keep_yearly.unwrap_or(0),
            min_backups: self.min_backups.unwrap_or(0),
            max_age: self.max_age.map(duration),
        })
    }
}

/// A std duration on the wire.
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: 0 }
}

/// Job commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List jobs.
    List,
    /// Show one job.
    Get {
        /// Name or id.
        job: String,
    },
    /// Create a job.
    Create {
        /// Unique name.
        name: String,
        /// Datasource (name or id).
        #[arg(long)]
        datasource: String,
        /// Storage (name or id), in preference order (repeatable).
        #[arg(long = "storage", required = true)]
        storages: Vec<String>,
        /// Cron expression (empty: on demand only).
        #[arg(long, default_value = "")]
        cron: String,
        /// IANA time zone of the cron.
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Storage strategy.
        #[arg(long, value_enum)]
        strategy: Option<Strategy>,
        /// zstd level 1-19 (where an adaptive level starts).
        #[arg(long)]
        compression_level: Option<i32>,
        /// `fixed` (default), `adaptive` (levels 1..9) or `adaptive:MIN..MAX`: the agent picks the highest
        /// level that keeps up with the dump tool.
        #[arg(long, value_name = "MODE", value_parser = crate::compression::mode)]
        compression: Option<pb::AdaptiveCompression>,
        /// PostgreSQL: dump table data through N parallel streams under one snapshot (1-16; default 1, one
        /// pg_dump stream).
        #[arg(long, value_name = "N")]
        parallel: Option<u32>,
        /// Create disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Attempts in all (1-10).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Agent-held encryption key id.
        #[arg(long, default_value = "")]
        encryption_key_id: String,
        /// Recovery-point objective (e.g. `26h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        rpo: Option<std::time::Duration>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = super::datasources::label)]
        labels: Vec<(String, String)>,
    },
    /// Change the given fields of a job.
    Update {
        /// Name or id.
        job: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New cron ("" for on demand only).
        #[arg(long)]
        cron: Option<String>,
        /// New time zone.
        #[arg(long)]
        time_zone: Option<String>,
        /// New storages (replaces the list; repeatable).
        #[arg(long = "storage")]
        storages: Vec<String>,
        /// New strategy.
        #[arg(long, value_enum)]
        strategy: Option<Strategy>,
        /// New zstd level.
        #[arg(long)]
        compression_level: Option<i32>,
        /// `fixed`, `adaptive` or `adaptive:MIN..MAX`.
        #[arg(long, value_name = "MODE", value_parser = crate::compression::mode)]
        compression: Option<pb::AdaptiveCompression>,
        /// New parallel stream count (1-16; above 1: PostgreSQL only).
        #[arg(long, value_name = "N")]
        parallel: Option<u32>,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Label KEY=VALUE to set (repeatable; merged).
        #[arg(long = "label", value_parser = super::datasources::label)]
        labels: Vec<(String, String)>,
    },
    /// Delete a job (its backups stay).
    Delete {
        /// Name or id.
        job: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Queue a backup now; `--wait` follows it to the end (exit 5 if it fails).
    Run {
        /// Name or id.
        job: String,
        /// Wait for the end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Enable scheduled runs.
    Enable {
        /// Name or id.
        job: String,
    },
    /// Disable scheduled runs.
    Disable {
        /// Name or id.
        job: String,
    },
    /// Show what the retention policy (or the one given) keeps and deletes. Changes nothing.
    PreviewRetention {
        /// Name or id.
        job: String,
        #[command(flatten)]
        retention: RetentionArgs,
    },
}

#[derive(Serialize)]
struct Decision {
    backup_id: String,
    completed_at: Option<String>,
    keep: bool,
    pinned: bool,
    reasons: Vec<String>,
}

impl Row for Decision {
    fn headers() -> Vec<&'static str> {
        vec!["BACKUP", "COMPLETED", "KEEP", "REASONS"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.backup_id.clone(),
            self.completed_at.clone().unwrap_or_default(),
            if self.keep { "keep" } else { "delete" }.into(),
            self.reasons.join("; "),
        ]
    }
}

async fn storage_ids(s: &Session, refs: &[String]) -> CliResult<Vec<String>> {
    let all = resolve::storages(s).await?;
    refs.iter().map(|r| resolve::pick("storage", r, &all, |x| &x.id, |x| &x.name).map(|x| x.id.clone())).collect()
}

/// Runs a job command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = BackupJobServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let all: Vec<view::Job> = resolve::jobs(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { job } => output::one(app.format, &view::Job::from(resolve::job(&s, &job).await?)),
        Cmd::Create {
            name,
            datasource,
            storages,
            cron,
            time_zone,
            strategy,
            compression_level,
            compression,
            parallel,
            disabled,
            retention,
            max_attempts,
            encryption_key_id,
            rpo,
            labels,
        } => {
            let req = pb::CreateBackupJobRequest {
                name,
                datasource_id: resolve::datasource(&s, &datasource).await?.id,
                cron,
                time_zone,
                retention: retention.policy(),
                storage_strategy: strategy.map(|x| pb::StorageStrategy::from(x) as i32).unwrap_or(0),
                storage_ids: storage_ids(&s, &storages).await?,
                compression_level: compression_level.unwrap_or(0),
                adaptive_compression: compression,
                parallel: parallel.unwrap_or(0),
                enabled: Some(!disabled),
                retry: max_attempts.map(|m| pb::RetryPolicy { max_attempts: m, backoff: None }),
                encryption_key_id,
                rpo: rpo.map(duration),
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            output::one(app.format, &view::Job::from(c.create_backup_job(s.req(req)).await?.into_inner()))
        }
        Cmd::Update {
            job,
            name,
            cron,
            time_zone,
            storages,
            strategy,
            compression_level,
            compression,
            parallel,
            retention,
            labels,
        } => {
            let j = resolve::job(&s, &job).await?;
            let storages = if storages.is_empty() {
                None
            } else {
                Some(pb::StorageTargets { storage_ids: storage_ids(&s, &storages).await? })
            };
            let req = pb::UpdateBackupJobRequest {
                id: j.id,
                name,
                cron,
                time_zone,
                retention: retention.policy(),
                storage_strategy: strategy.map(|x| pb::StorageStrategy::from(x) as i32),
                storages,
                compression_level,
                adaptive_compression: compression,
                parallel,
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            output::one(app.format, &view::Job::from(c.update_backup_job(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { job, yes } => {
            let j = resolve::job(&s, &job).await?;
            super::confirm(&format!("Delete job \"{}\"? Its backups stay.", j.name), yes)?;
            let r = c.delete_backup_job(s.req(pb::DeleteBackupJobRequest { id: j.id.clone() })).await?.into_inner();
            output::done(
                app.format,
                &format!("deleted job \"{}\"", j.name),
                &serde_json::json!({"deleted": j.id, "cancelled_executions": r.cancelled_executions}),
            )
        }
        Cmd::Run { job, wait } => {
            let j = resolve::job(&s, &job).await?;
            let ex = c.run_now(s.req(pb::RunNowRequest { job_id: j.id })).await?.into_inner();
            if wait {
                let ex = super::executions::watch(&s, app.format, &ex.id).await?;
                super::executions::report(app.format, ex)
            } else {
                output::one(app.format, &view::Execution::from(ex))
            }
        }
        Cmd::Enable { job } => {
            let j = resolve::job(&s, &job).await?;
            output::one(
                app.format,
                &view::Job::from(
                    c.enable_backup_job(s.req(pb::EnableBackupJobRequest { id: j.id })).await?.into_inner(),
                ),
            )
        }
        Cmd::Disable { job } => {
            let j = resolve::job(&s, &job).await?;
            output::one(
                app.format,
                &view::Job::from(
                    c.disable_backup_job(s.req(pb::DisableBackupJobRequest { id: j.id })).await?.into_inner(),
                ),
            )
        }
        Cmd::PreviewRetention { job, retention } => {
            let j = resolve::job(&s, &job).await?;
            let req = pb::PreviewRetentionRequest { job_id: j.id, policy: retention.policy() };
            let r = c.preview_retention(s.req(req)).await?.into_inner();
            let all: Vec<Decision> = r
                .backups
                .into_iter()
                .map(|d| Decision {
                    completed_at: view::ts(d.completed_at.as_ref()),
                    backup_id: d.backup_id,
                    keep: d.keep,
                    pinned: d.pinned,
                    reasons: d.reasons,
                })
                .collect();
            output::list(app.format, &all)
        }
    }
}
