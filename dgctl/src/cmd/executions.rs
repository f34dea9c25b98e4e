//! `dgctl executions` and `dgctl watch`: listing, logs, cancel, and following an execution live
//! (WatchExecution) with a progress bar. An awaited execution that ends FAILED or CANCELLED exits 5.

use dg_proto::v1::{
    self as pb, backup_service_client::BackupServiceClient, execution_service_client::ExecutionServiceClient,
};

use crate::{
    App,
    connect::Session,
    error::{CliError, CliResult},
    output::{self, Format},
    progress, resolve, view,
};

/// Execution commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List executions, newest first.
    List {
        /// Only this job's (name or id).
        #[arg(long)]
        job: Option<String>,
        /// Only this datasource's (name or id).
        #[arg(long)]
        datasource: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
    /// Show one execution.
    Get {
        /// Execution id.
        execution: String,
    },
    /// Print an execution's log.
    Logs {
        /// Execution id.
        execution: String,
    },
    /// Cancel a queued or running execution.
    Cancel {
        /// Execution id.
        execution: String,
    },
}

/// `dgctl watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Execution id.
    execution: String,
}

/// Runs an execution command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = ExecutionServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List { job, datasource, limit } => {
            let job_id = match job {
                Some(j) => resolve::job(&s, &j).await?.id,
                None => String::new(),
            };
            let datasource_id = match datasource {
                Some(d) => resolve::datasource(&s, &d).await?.id,
                None => String::new(),
            };
            let req = pb::ListExecutionsRequest { job_id, datasource_id, page_size: limit, ..Default::default() };
            let r = c.list_executions(s.req(req)).await?.into_inner();
            let all: Vec<view::Execution> = r.executions.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { execution } => output::one(app.format, &view::Execution::from(get(&s, &execution).await?)),
        Cmd::Logs { execution } => {
            let id = get(&s, &execution).await?.id;
            let (mut lines, mut token) = (Vec::new(), String::new());
            loop {
                let req = pb::ListExecutionLogsRequest { execution_id: id.clone(), page_size: 1000, page_token: token };
                let r = c.list_execution_logs(s.req(req)).await?.into_inner();
                lines.extend(r.lines.into_iter().map(view::LogLine::from));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            if app.format == Format::Table {
                for l in &lines {
                    println!("{} [{}] {}", l.at.clone().unwrap_or_default(), l.level, l.message);
                }
                Ok(())
            } else {
                output::list(app.format, &lines)
            }
        }
        Cmd::Cancel { execution } => {
            let id = get(&s, &execution).await?.id;
            let e = c.cancel_execution(s.req(pb::CancelExecutionRequest { id })).await?.into_inner();
            output::one(app.format, &view::Execution::from(e))
        }
    }
}

/// GetExecution, with a readable not-found error.
pub async fn get(s: &Session, id: &str) -> CliResult<pb::Execution> {
    let mut c = ExecutionServiceClient::new(s.channel.clone());
    match c.get_execution(s.req(pb::GetExecutionRequest { id: id.into() })).await {
        Ok(r) => Ok(r.into_inner()),
        Err(e) if matches!(e.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
            Err(CliError::NotFound(format!("no execution \"{id}\"")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `dgctl watch EXECUTION`.
pub async fn watch_cmd(app: &App, a: WatchArgs) -> CliResult<()> {
    let s = app.session().await?;
    let id = get(&s, &a.execution).await?.id;
    let ex = watch(&s, app.format, &id).await?;
    report(app.format, ex)
}

/// Prints the final execution; FAILED or CANCELLED is an error with exit code 5.
pub fn report(format: Format, ex: pb::Execution) -> CliResult<()> {
    let status = ex.status();
    let (id, error) = (ex.id.clone(), ex.error.clone());
    output::one(format, &view::Execution::from(ex))?;
    match status {
        pb::ExecutionStatus::Failed => Err(CliError::ExecutionFailed(format!("execution {id} failed: {error}"))),
        pb::ExecutionStatus::Cancelled => Err(CliError::ExecutionFailed(format!("execution {id} was cancelled"))),
        _ => Ok(()),
    }
}

fn finished(e: &pb::Execution) -> bool {
    matches!(e.status(), pb::ExecutionStatus::Completed | pb::ExecutionStatus::Failed | pb::ExecutionStatus::Cancelled)
}

/// Follows an execution until it ends and returns its final state. The bar knows the size for restores and
/// verifies (the source backup's raw size); a backup's final size is unknown until it ends.
pub async fn watch(s: &Session, format: Format, id: &str) -> CliResult<pb::Execution> {
    let mut c = ExecutionServiceClient::new(s.channel.clone());
    let mut stream = c.watch_execution(s.req(pb::WatchExecutionRequest { id: id.into() })).await?.into_inner();
    let mut last: Option<pb::Execution> = None;
    let mut bar: Option<indicatif::ProgressBar> = None;
    while let Some(ev) = stream.message().await? {
        match ev.event {
            Some(pb::execution_event::Event::Execution(e)) => {
                if bar.is_none() {
                    let total = if e.source_backup_id.is_empty() {
                        None
                    } else {
                        BackupServiceClient::new(s.channel.clone())
                            .get_backup(s.req(pb::GetBackupRequest { id: e.source_backup_id.clone() }))
                            .await
                            .ok()
                            .map(|b| b.into_inner().raw_bytes)
                    };
                    let op = view::word(e.operation().as_str_name(), "OPERATION_");
                    bar = Some(progress::bytes_bar(format, total, &op));
                }
                let done = finished(&e);
                last = Some(e);
                if done {
                    break;
                }
            }
            Some(pb::execution_event::Event::Progress(p)) => {
                if let Some(b) = &bar {
                    b.set_position(p.raw_bytes);
                }
            }
            Some(pb::execution_event::Event::Log(l)) => {
                if let Some(b) = &bar
                    && format == Format::Table
                {
                    b.println(format!("[{}] {}", l.level, l.message));
                }
            }
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match last {
        Some(e) if finished(&e) => Ok(e),
        // The stream ended early (e.g. a controller restart): ask once more.
        _ => get(s, id).await,
    }
}
