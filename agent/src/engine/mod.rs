//! Database engines behind one interface: connection test, database creation and removal, and the dump and
//! restore commands. Every tool runs from argv (never a shell); credentials go through a 0600 file (libpq
//! passfile, or a MariaDB/MySQL option file), never the command line; values derived from user input are
//! passed in `--option=value` form so they cannot be read as options. Targets are the protocol model's
//! [`DatabaseTarget`] (typed engine, port and TLS mode), already validated where the session received them.

pub mod my_guard;
pub mod mysql;
pub mod observe;
pub mod pg_guard;
pub mod pg_parallel;
pub mod postgres;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use dg_common::protocol::{DatabaseTarget, Engine};
use tokio::process::Command;

use crate::{
    error::{PipelineError, PipelineResult},
    tools::Tools,
};

/// What the connection test learned.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Version string the server reports.
    pub version: String,
    /// Major version number.
    pub major: u32,
    /// Round trip of connect + query.
    pub latency: Duration,
}

/// A prepared tool invocation; the credentials file lives as long as this value.
pub struct ToolRun {
    /// The command (stdio not yet configured).
    pub cmd: Command,
    /// Tool name, e.g. "pg_dump".
    pub tool: String,
    /// Tool version.
    pub version: String,
    /// Options in effect: for a dump, those that matter for restore (recorded in the manifest); for a
    /// MariaDB/MySQL restore, [`mysql::SANDBOX`] when the client runs sandboxed.
    pub options: Vec<String>,
    /// Credentials file, removed on drop.
    pub creds: tempfile::NamedTempFile,
    /// What keeps the tool from sending the password in clear text to a server TLS does not verify; held as
    /// long as the tool runs.
    pub guard: Option<AuthGuard>,
    /// A dump's row counts (see [`observe`]); empty for a restore.
    pub counts: RowCounts,
}

/// Row counts taken with a dump, counted beside it (not before it, so a lock that holds the dump back does not
/// hold back its start, and the dump does not wait for the counts).
#[derive(Default)]
pub struct RowCounts {
    /// The counting task; it returns, with the counts, whatever keeps the dump's snapshot alive (PostgreSQL),
    /// dropped by [`RowCounts::finish`] after the dump ended. Aborted if the run is dropped first.
    task: Option<tokio_util::task::AbortOnDropHandle<CountResult>>,
    /// Why there are no counts, when known before counting started.
    warning: Option<String>,
}

/// What a counting task returns: its counts and what it kept open for the dump.
type CountResult = (PipelineResult<Vec<dg_common::protocol::drill::TableCount>>, Option<Box<dyn std::any::Any + Send>>);

impl RowCounts {
    /// Counting that could not start.
    pub fn refused(why: impl std::fmt::Display) -> Self {
        Self { task: None, warning: Some(format!("row counts not recorded: {why}")) }
    }

    /// Counting running in `task`.
    pub fn counting(task: tokio::task::JoinHandle<CountResult>) -> Self {
        Self { task: Some(tokio_util::task::AbortOnDropHandle::new(task)), warning: None }
    }

    /// Waits for the counts (call after the dump ended) and releases the snapshot: the counts, or why none.
    pub async fn finish(&mut self) -> (Option<Vec<dg_common::protocol::drill::TableCount>>, Option<String>) {
        let Some(task) = self.task.take() else { return (None, self.warning.take()) };
        match task.await {
            Ok((Ok(tables), _hold)) => (Some(tables), None),
            Ok((Err(e), _hold)) => (None, Some(format!("row counts not recorded: {e}"))),
            Err(e) => (None, Some(format!("row counts not recorded: counting stopped: {e}"))),
        }
    }
}

/// See [`ToolRun::guard`].
pub enum AuthGuard {
    /// The loopback listener a libpq tool connects through.
    Postgres(pg_guard::PgGuard),
    /// The client plugin directory without the clear-text plugins.
    Mysql(my_guard::PluginDir),
}

/// Connects to `database` and reads the server version.
pub async fn test_connection(t: &DatabaseTarget, database: &str) -> PipelineResult<ServerInfo> {
    match t.engine {
        Engine::Postgres => postgres::test_connection(t, database).await,
        Engine::Mysql | Engine::Mariadb => mysql::test_connection(t, database).await,
    }
}

/// Creates `database` unless it exists; returns whether it was created.
pub async fn ensure_database(t: &DatabaseTarget, database: &str) -> PipelineResult<bool> {
    match t.engine {
        Engine::Postgres => postgres::ensure_database(t, database).await,
        Engine::Mysql | Engine::Mariadb => mysql::ensure_database(t, database).await,
    }
}

/// Drops `database`.
pub async fn drop_database(t: &DatabaseTarget, database: &str) -> PipelineResult<()> {
    match t.engine {
        Engine::Postgres => postgres::drop_database(t, database).await,
        Engine::Mysql | Engine::Mariadb => mysql::drop_database(t, database).await,
    }
}

/// The dump command for the target's database, after checking the tool can dump that server.
pub async fn dump(t: &DatabaseTarget, server: &ServerInfo, tools: &Tools) -> PipelineResult<ToolRun> {
    match t.engine {
        Engine::Postgres => postgres::dump(t, server, tools).await,
        Engine::Mysql | Engine::Mariadb => mysql::dump(t, tools).await,
    }
}

/// The restore command reading the archive from stdin, or from `file` (PostgreSQL parallel restore).
pub async fn restore(
    t: &DatabaseTarget,
    drop_existing: bool,
    file: Option<&Path>,
    jobs: u32,
    tools: &Tools,
) -> PipelineResult<ToolRun> {
    match t.engine {
        Engine::Postgres => postgres::restore(t, drop_existing, file, jobs, tools).await,
        Engine::Mysql | Engine::Mariadb => mysql::restore(t, tools).await,
    }
}

/// The first of `names` that is installed, with its path and version.
pub async fn find_tool(tools: &Tools, names: &[&'static str]) -> PipelineResult<(&'static str, PathBuf, String)> {
    for name in names {
        if let Some(path) = tools.resolve(name) {
            let version = crate::tools::version_of(&path.to_string_lossy()).await.unwrap_or_default();
            return Ok((name, path, version));
        }
    }
    Err(PipelineError::Tool(format!("none of {} is installed on the agent host", names.join(", "))))
}

fn io_err(e: std::io::Error) -> PipelineError {
    PipelineError::Io(e)
}

/// Writes a 0600 credentials file (tempfile creates files with mode 0600) in the agent's credentials
/// directory (0700, emptied at start, so a killed agent leaves nothing readable behind for long), or the
/// system's temporary directory when it has none.
pub fn credentials_file(tools: &Tools, prefix: &str, contents: &str) -> PipelineResult<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    let mut f = match tools.credentials_dir() {
        Some(dir) => b.tempfile_in(dir),
        None => b.tempfile(),
    }
    .map_err(io_err)?;
    f.write_all(contents.as_bytes()).map_err(io_err)?;
    f.flush().map_err(io_err)?;
    Ok(f)
}
