//! One module per command group. Each has a clap `Cmd` (or `Args`) and a `run`.

pub mod agents;
pub mod apply;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod context;
pub mod datasources;
pub mod drills;
pub mod executions;
pub mod jobs;
pub mod notifications;
pub mod roles;
pub mod scopes;
pub mod storages;
pub mod tokens;
pub mod users;

use std::io::IsTerminal as _;

use crate::error::{CliError, CliResult};

/// Asks `question` on the terminal; `yes` skips it; without a terminal and without `yes` it is a usage error.
pub fn confirm(question: &str, yes: bool) -> CliResult<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(CliError::Usage(format!("{question}\nnot a terminal: pass --yes to confirm")));
    }
    let ok = dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()
        .map_err(|e| CliError::local(format!("confirmation: {e}")))?;
    if ok { Ok(()) } else { Err(CliError::local("cancelled")) }
}
