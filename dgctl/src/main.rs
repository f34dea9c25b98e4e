//! `dgctl`, the DataGuardian operator CLI: a crate of its own because it installs on operator workstations
//! without the controller's server dependencies (database, object stores, telemetry).
//!
//! Each top-level command is one module under `cmd/` with its own clap `Subcommand` enum and `run`; adding a
//! command group is one new module and one variant of [`Command`].

mod access_view;
mod cmd;
mod compression;
mod config;
mod connect;
mod error;
mod oidc;
mod output;
mod progress;
mod resolve;
mod secret;
mod view;

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::{config::ConfigFile, connect::Session, error::CliResult, output::Format};

/// DataGuardian operator CLI.
#[derive(Debug, Parser)]
#[command(name = "dgctl", version, about, propagate_version = true)]
struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/dataguardian/dgctl.toml).
    #[arg(long, global = true, env = "DGCTL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Context to use instead of the current one.
    #[arg(long, global = true, env = "DGCTL_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Repeat a critical call that answered "approval required" (exit 6) with this approved approval id
    /// (sent as the `dg-approval` metadata).
    #[arg(long, global = true, value_name = "ID")]
    approval: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in to a controller (pins its CA at first login) and store the session in a context.
    Login(cmd::auth::LoginArgs),
    /// End the session of the context and forget its token.
    Logout,
    /// Show who the current session belongs to.
    Whoami,
    /// Manage contexts (controllers and their sessions).
    #[command(subcommand)]
    Context(cmd::context::Cmd),
    /// Enrolled agents and join tokens.
    #[command(subcommand)]
    Agents(cmd::agents::Cmd),
    /// Databases to back up.
    #[command(subcommand)]
    Datasources(cmd::datasources::Cmd),
    /// Where backups are kept.
    #[command(subcommand)]
    Storages(cmd::storages::Cmd),
    /// Backup jobs.
    #[command(subcommand)]
    Jobs(cmd::jobs::Cmd),
    /// Completed backups.
    #[command(subcommand)]
    Backups(cmd::backups::Cmd),
    /// Backup, restore and verify runs.
    #[command(subcommand)]
    Executions(cmd::executions::Cmd),
    /// Follow an execution to its end with a progress bar.
    Watch(cmd::executions::WatchArgs),
    /// Restore a backup into a datasource.
    Restore(cmd::backups::RestoreArgs),
    /// Restore drills.
    #[command(subcommand)]
    Drills(cmd::drills::Cmd),
    /// Notification channels, deliveries and the inbox.
    #[command(subcommand)]
    Notifications(cmd::notifications::Cmd),
    /// The audit trail.
    Audit(cmd::audit::Args),
    /// Create, update and (with --prune, destructively) delete resources so they match a YAML file.
    Apply(cmd::apply::ApplyArgs),
    /// Show what `apply` would change, per field; prints nothing and exits 0 when nothing differs.
    Diff(cmd::apply::DiffArgs),
    /// Users: create, disable, delete, reset passwords, set roles.
    #[command(subcommand)]
    Users(cmd::users::Cmd),
    /// Roles and the permission catalogue.
    #[command(subcommand)]
    Roles(cmd::roles::Cmd),
    /// Scope rules: which resources a user or a role's holders see.
    #[command(subcommand)]
    Scopes(cmd::scopes::Cmd),
    /// API tokens (the secret is printed once, at creation).
    #[command(subcommand)]
    Tokens(cmd::tokens::Cmd),
    /// Approvals of critical calls (exit code 6 names a pending one).
    #[command(subcommand)]
    Approvals(cmd::approvals::Cmd),
    /// Change one's own password (prompted).
    Passwd(cmd::auth::PasswdArgs),
    /// Print a shell completion script.
    Completion {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// What every command gets: the parsed global options and a way to connect.
pub struct App {
    /// Config file path.
    pub config_path: PathBuf,
    /// `--context`.
    pub context: Option<String>,
    /// `-o`.
    pub format: Format,
    /// `--approval`.
    pub approval: Option<String>,
}

impl App {
    /// The config file.
    pub fn load(&self) -> CliResult<ConfigFile> {
        ConfigFile::load(&self.config_path)
    }

    /// A session with the selected context.
    pub async fn session(&self) -> CliResult<Session> {
        let cfg = self.load()?;
        let (_, ctx) = cfg.context(self.context.as_deref())?;
        Ok(Session::open(ctx).await?.with_approval(self.approval.clone()))
    }
}

async fn run(cli: Cli) -> CliResult<()> {
    let app = App {
        config_path: config::config_path(cli.config.as_deref())?,
        context: cli.context,
        format: cli.output,
        approval: cli.approval,
    };
    match cli.command {
        Command::Login(a) => cmd::auth::login(&app, a).await,
        Command::Logout => cmd::auth::logout(&app).await,
        Command::Whoami => cmd::auth::whoami(&app).await,
        Command::Context(c) => cmd::context::run(&app, c),
        Command::Agents(c) => cmd::agents::run(&app, c).await,
        Command::Datasources(c) => cmd::datasources::run(&app, c).await,
        Command::Storages(c) => cmd::storages::run(&app, c).await,
        Command::Jobs(c) => cmd::jobs::run(&app, c).await,
        Command::Backups(c) => cmd::backups::run(&app, c).await,
        Command::Executions(c) => cmd::executions::run(&app, c).await,
        Command::Watch(a) => cmd::executions::watch_cmd(&app, a).await,
        Command::Restore(a) => cmd::backups::restore(&app, a).await,
        Command::Drills(c) => cmd::drills::run(&app, c).await,
        Command::Notifications(c) => cmd::notifications::run(&app, c).await,
        Command::Audit(a) => cmd::audit::run(&app, a).await,
        Command::Users(c) => cmd::users::run(&app, c).await,
        Command::Roles(c) => cmd::roles::run(&app, c).await,
        Command::Scopes(c) => cmd::scopes::run(&app, c).await,
        Command::Tokens(c) => cmd::tokens::run(&app, c).await,
        Command::Approvals(c) => cmd::approvals::run(&app, c).await,
        Command::Passwd(a) => cmd::auth::passwd(&app, a).await,
        Command::Apply(a) => cmd::apply::apply(&app, a).await,
        Command::Diff(a) => cmd::apply::diff(&app, a).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dgctl", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn main() {
    // Usage errors exit 2 (clap's own convention, kept as dgctl's).
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let code = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => match rt.block_on(run(cli)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            1
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
