//! `dgctl context list|use|delete`: local only, no controller is called.

use serde::Serialize;

use crate::{
    App,
    error::{CliError, CliResult},
    output::{self, Row},
};

/// Context commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List contexts.
    List,
    /// Make a context the current one.
    Use {
        /// Context name.
        name: String,
    },
    /// Delete a context (does not revoke its session; `dgctl logout` first for that).
    Delete {
        /// Context name.
        name: String,
    },
}

#[derive(Serialize)]
struct ContextView {
    name: String,
    current: bool,
    endpoint: String,
    username: String,
    logged_in: bool,
    ca_fingerprint: String,
}

impl Row for ContextView {
    fn headers() -> Vec<&'static str> {
        vec!["CURRENT", "NAME", "ENDPOINT", "USER", "LOGGED IN"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            if self.current { "*".into() } else { String::new() },
            self.name.clone(),
            self.endpoint.clone(),
            self.username.clone(),
            self.logged_in.to_string(),
        ]
    }
}

/// Runs a context command.
pub fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let mut cfg = app.load()?;
    match cmd {
        Cmd::List => {
            let views: Vec<ContextView> = cfg
                .contexts
                .iter()
                .map(|(n, c)| ContextView {
                    name: n.clone(),
                    current: cfg.current_context.as_deref() == Some(n),
                    endpoint: c.endpoint.clone(),
                    username: c.username.clone(),
                    logged_in: c.token.is_some(),
                    ca_fingerprint: c.ca_fingerprint.clone(),
                })
                .collect();
            output::list(app.format, &views)
        }
        Cmd::Use { name } => {
            if !cfg.contexts.contains_key(&name) {
                return Err(CliError::NotFound(format!("no context \"{name}\"")));
            }
            cfg.current_context = Some(name.clone());
            cfg.save(&app.config_path)?;
            output::done(app.format, &format!("using context \"{name}\""), &serde_json::json!({"context": name}))
        }
        Cmd::Delete { name } => {
            if cfg.contexts.remove(&name).is_none() {
                return Err(CliError::NotFound(format!("no context \"{name}\"")));
            }
            if cfg.current_context.as_deref() == Some(&name) {
                cfg.current_context = None;
            }
            cfg.save(&app.config_path)?;
            output::done(app.format, &format!("deleted context \"{name}\""), &serde_json::json!({"deleted": name}))
        }
    }
}
