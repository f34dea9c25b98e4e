//! `dgctl drills`: restore drills by name, their runs and evidence export.

use dg_proto::v1::{self as pb, restore_drill_service_client::RestoreDrillServiceClient};

use crate::{
    App,
    error::{CliError, CliResult},
    output, resolve, view,
};

/// Drill commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List drills.
    List,
    /// Show one drill.
    Get {
        /// Name or id.
        drill: String,
    },
    /// Create a drill.
    Create {
        /// Unique name.
        name: String,
        /// Datasource whose backups are drilled (name or id).
        #[arg(long)]
        datasource: String,
        /// Datasource where scratch databases are created (name or id).
        #[arg(long)]
        target: String,
        /// Newest backup allowed to be this old (e.g. `2d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_backup_age: std::time::Duration,
        /// Cron expression (empty: manual only).
        #[arg(long, default_value = "")]
        cron: String,
        /// Time zone of the cron.
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Allowed row count difference in percent.
        #[arg(long, default_value_t = 0.0)]
        row_count_tolerance_percent: f64,
        /// Do not compare row counts.
        #[arg(long)]
        no_row_counts: bool,
        /// Create disabled.
        #[arg(long)]
        disabled: bool,
        /// Prefix of scratch database names.
        #[arg(long, default_value = "")]
        scratch_database_prefix: String,
    },
    /// Delete a drill and its evidence.
    Delete {
        /// Name or id.
        drill: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Start a run now.
    Run {
        /// Name or id.
        drill: String,
        /// Wait for the run's end (exit 5 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// List a drill's runs, newest first.
    Runs {
        /// Name or id.
        drill: String,
    },
    /// Print the evidence of a drill's runs as JSON (for auditors).
    Export {
        /// Name or id.
        drill: String,
    },
}

/// Runs a drill command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = RestoreDrillServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let all: Vec<view::Drill> = resolve::drills(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { drill } => output::one(app.format, &view::Drill::from(resolve::drill(&s, &drill).await?)),
        Cmd::Create {
            name,
            datasource,
            target,
            max_backup_age,
            cron,
            time_zone,
            row_count_tolerance_percent,
            no_row_counts,
            disabled,
            scratch_database_prefix,
        } => {
            let req = pb::CreateRestoreDrillRequest {
                name,
                datasource_id: resolve::datasource(&s, &datasource).await?.id,
                target_datasource_id: resolve::datasource(&s, &target).await?.id,
                cron,
                time_zone,
                max_backup_age: Some(super::jobs::duration(max_backup_age)),
                row_count_tolerance_percent,
                assert_row_counts: Some(!no_row_counts),
                enabled: Some(!disabled),
                scratch_database_prefix,
                ..Default::default()
            };
            output::one(app.format, &view::Drill::from(c.create_restore_drill(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { drill, yes } => {
            let d = resolve::drill(&s, &drill).await?;
            super::confirm(&format!("Delete drill \"{}\" and its evidence?", d.name), yes)?;
            c.delete_restore_drill(s.req(pb::DeleteRestoreDrillRequest { id: d.id.clone() })).await?;
            output::done(app.format, &format!("deleted drill \"{}\"", d.name), &serde_json::json!({"deleted": d.id}))
        }
        Cmd::Run { drill, wait } => {
            let d = resolve::drill(&s, &drill).await?;
            let mut run = c.run_restore_drill(s.req(pb::RunRestoreDrillRequest { id: d.id })).await?.into_inner();
            if wait {
                while run.status() == pb::DrillRunStatus::Running {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    run = c.get_drill_run(s.req(pb::GetDrillRunRequest { id: run.id.clone() })).await?.into_inner();
                }
            }
            let failed = run.status() == pb::DrillRunStatus::Failed;
            let (id, error) = (run.id.clone(), run.error.clone());
            output::one(app.format, &view::DrillRun::from(run))?;
            if wait && failed {
                return Err(CliError::ExecutionFailed(format!("drill run {id} failed: {error}")));
            }
            Ok(())
        }
        Cmd::Runs { drill } => {
            let d = resolve::drill(&s, &drill).await?;
            let req = pb::ListDrillRunsRequest { drill_id: d.id, page_size: 500, page_token: String::new() };
            let r = c.list_drill_runs(s.req(req)).await?.into_inner();
            let all: Vec<view::DrillRun> = r.runs.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Export { drill } => {
            let d = resolve::drill(&s, &drill).await?;
            let req = pb::ExportDrillEvidenceRequest { drill_id: d.id, since: None, until: None };
            let r = c.export_drill_evidence(s.req(req)).await?.into_inner();
            println!("{}", r.json);
            Ok(())
        }
    }
}
