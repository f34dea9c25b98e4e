//! MariaDB and MySQL: connection test (sqlx), `mariadb-dump`/`mysqldump` with a consistent snapshot
//! (`--single-transaction`), routines, triggers and events, and restore through the `mariadb`/`mysql`
//! client. Credentials go in a 0600 option file passed with `--defaults-extra-file` (which must come first).

use secrecy::ExposeSecret;
use std::time::Duration;

use dg_common::protocol::{DatabaseTarget, Engine, TlsMode};
use sqlx::{
    ConnectOptions, Connection, Row,
    mysql::{MySqlConnectOptions, MySqlSslMode},
};
use tokio::process::Command;

use super::{
    AuthGuard, ServerInfo, ToolRun, credentials_file, find_tool,
    my_guard::{HandshakeGuard, PluginDir},
};
use crate::error::{PipelineError, PipelineResult};
use crate::tools::Tools;

/// Whether the password needs guarding: there is one, and TLS does not verify the server.
fn guarded(t: &DatabaseTarget) -> bool {
    t.tls_mode != TlsMode::VerifyFull && !t.password.expose_secret().is_empty()
}

fn options(t: &DatabaseTarget, database: Option<&str>, via: Option<&HandshakeGuard>) -> MySqlConnectOptions {
    let ssl = match t.tls_mode {
        TlsMode::Disable => MySqlSslMode::Disabled,
        TlsMode::Prefer => MySqlSslMode::Preferred,
        TlsMode::Require => MySqlSslMode::Required,
        TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
    };
    let (host, port) = match via {
        Some(g) => ("127.0.0.1", g.port()),
        None => (t.host.as_str(), t.port),
    };
    let mut o = MySqlConnectOptions::new()
        .host(host)
        .port(port)
        .username(&t.username)
        .ssl_mode(ssl)
        .disable_statement_logging();
    if !t.password.expose_secret().is_empty() {
        o = o.password(t.password.expose_secret());
    }
    if let Some(db) = database {
        o = o.database(db);
    }
    o
}

/// A driver connection, through a [`HandshakeGuard`] (returned with it) when the password needs guarding.
pub(super) async fn connect(
    t: &DatabaseTarget,
    database: Option<&str>,
) -> PipelineResult<(sqlx::MySqlConnection, Option<HandshakeGuard>)> {
    let fail = |e: String| {
        let e = if e.contains("mysql_cleartext_plugin disabled") {
            super::my_guard::cleartext_refused(&t.host, t.port, "mysql_clear_password")
        } else {
            e
        };
        PipelineError::Connection(dg_common::redact::redact(&e, &[t.password.expose_secret()]))
    };
    let guard = if guarded(t) { Some(HandshakeGuard::start(&t.host, t.port).await?) } else { None };
    let conn = tokio::time::timeout(Duration::from_secs(10), options(t, database, guard.as_ref()).connect())
        .await
        .map_err(|_| fail(format!("{}:{} did not answer within 10 s", t.host, t.port)))?
        .map_err(|e| fail(e.to_string()))?;
    Ok((conn, guard))
}

/// Connects to `database` and reads the server version.
pub async fn test_connection(t: &DatabaseTarget, database: &str) -> PipelineResult<ServerInfo> {
    let started = std::time::Instant::now();
    let (mut conn, _guard) = connect(t, Some(database)).await?;
    let row = sqlx::query("SELECT VERSION() AS v")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?;
    let version: String = row.try_get("v").map_err(|e| PipelineError::Connection(e.to_string()))?;
    let _ = conn.close().await;
    let major = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Ok(ServerInfo { version, major, latency: started.elapsed() })
}

/// `` `name` `` with embedded backticks doubled.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Creates `database` unless it exists.
pub async fn ensure_database(t: &DatabaseTarget, database: &str) -> PipelineResult<bool> {
    let (mut conn, _guard) = connect(t, None).await?;
    let exists = sqlx::query("SELECT 1 FROM information_schema.schemata WHERE schema_name = ?")
        .bind(database)
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?
        .is_some();
    if !exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", quote_ident(database))))
            .execute(&mut conn)
            .await
            .map_err(|e| PipelineError::Tool(format!("create database: {e}")))?;
    }
    let _ = conn.close().await;
    Ok(!exists)
}

/// Drops `database`.
pub async fn drop_database(t: &DatabaseTarget, database: &str) -> PipelineResult<()> {
    let (mut conn, _guard) = connect(t, None).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {}", quote_ident(database))))
        .execute(&mut conn)
        .await
        .map_err(|e| PipelineError::Tool(format!("drop database: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// An option-file value: double-quoted with `\` and `"` escaped.
fn option_value(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The option file, and the plugin directory it names when the password needs guarding.
fn option_file(t: &DatabaseTarget, tools: &Tools) -> PipelineResult<(tempfile::NamedTempFile, Option<AuthGuard>)> {
    let plugins = if guarded(t) { Some(PluginDir::create(tools.credentials_dir())?) } else { None };
    let mut s = format!(
        "[client]\nhost={}\nport={}\nuser={}\npassword={}\n",
        option_value(&t.host),
        t.port,
        option_value(&t.username),
        option_value(t.password.expose_secret())
    );
    match t.tls_mode {
        TlsMode::Disable => s.push_str("skip-ssl\n"),
        TlsMode::Require => s.push_str("ssl\n"),
        TlsMode::VerifyFull => s.push_str("ssl\nssl-verify-server-cert\n"),
        TlsMode::Prefer => {}
    }
    if let Some(p) = &plugins {
        s.push_str(&format!("plugin-dir={}\n", option_value(&p.path().to_string_lossy())));
    }
    Ok((credentials_file(tools, "dg-my-", &s)?, plugins.map(AuthGuard::Mysql)))
}

fn base(tool: &std::path::Path, creds: &std::path::Path) -> Command {
    let mut c = Command::new(tool);
    for var in ["MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT", "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "MARIADB_PLUGIN_DIR"] {
        c.env_remove(var);
    }
    c.arg(format!("--defaults-extra-file={}", creds.display())).kill_on_drop(true);
    c
}

/// `mariadb-dump`/`mysqldump` of the target database: one consistent snapshot, with routines, triggers and
/// events, binary columns in hex, no CREATE DATABASE (so it restores under any name). The target's engine
/// decides which of the two tool names is tried first.
pub async fn dump(t: &DatabaseTarget, tools: &Tools) -> PipelineResult<ToolRun> {
    let names: &[&'static str] =
        if t.engine == Engine::Mysql { &["mysqldump", "mariadb-dump"] } else { &["mariadb-dump", "mysqldump"] };
    let (tool, path, version) = find_tool(tools, names).await?;
    let (creds, guard) = option_file(t, tools)?;
    let mut cmd = base(&path, creds.path());
    let options = ["--single-transaction", "--routines", "--triggers", "--events", "--hex-blob", "--no-tablespaces"];
    cmd.args(options).arg("--default-character-set=utf8mb4").arg(&t.database);
    // Counted just before the dump starts, in a snapshot of its own (the dump's cannot be shared).
    let counts = match super::observe::my_counts(t).await {
        Ok(c) => super::RowCounts { tables: Some(c), ..Default::default() },
        Err(e) => super::RowCounts { warning: Some(format!("row counts not recorded: {e}")), ..Default::default() },
    };
    Ok(ToolRun {
        cmd,
        tool: tool.to_owned(),
        version,
        options: options.iter().map(|o| o.trim_start_matches('-').to_owned()).collect(),
        creds,
        guard,
        counts,
    })
}

/// The option [`restore`] records in [`ToolRun::options`] when the client runs in its sandbox mode.
pub const SANDBOX: &str = "sandbox";

/// Whether a client's `--help` text lists `--sandbox` (MariaDB clients since 2024, e.g. 10.11.8: client
/// commands that touch the file system or run a shell, such as `\!` or `source`, are refused). MySQL's
/// client has no such mode.
pub fn help_lists_sandbox(help: &str) -> bool {
    help.lines().any(|l| l.split_whitespace().next() == Some("--sandbox"))
}

async fn supports_sandbox(path: &std::path::Path) -> bool {
    let out = Command::new(path)
        .arg("--no-defaults")
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), out).await {
        Ok(Ok(out)) => help_lists_sandbox(&String::from_utf8_lossy(&out.stdout)),
        _ => false,
    }
}

/// The `mariadb`/`mysql` client reading the dump from stdin into the target database, in its sandbox mode
/// when the client has one (then [`SANDBOX`] is among the run's options, for the execution log to say so).
pub async fn restore(t: &DatabaseTarget, tools: &Tools) -> PipelineResult<ToolRun> {
    let names: &[&'static str] = if t.engine == Engine::Mysql { &["mysql", "mariadb"] } else { &["mariadb", "mysql"] };
    let (tool, path, version) = find_tool(tools, names).await?;
    let sandbox = supports_sandbox(&path).await;
    let (creds, guard) = option_file(t, tools)?;
    let mut cmd = base(&path, creds.path());
    if sandbox {
        cmd.arg("--sandbox");
    }
    cmd.arg("--binary-mode").arg("--default-character-set=utf8mb4").arg(format!("--database={}", t.database));
    let options = if sandbox { vec![SANDBOX.to_owned()] } else { Vec::new() };
    Ok(ToolRun { cmd, tool: tool.to_owned(), version, options, creds, guard, counts: Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(option_value("p\"w\\x"), "\"p\\\"w\\\\x\"");
    }

    #[test]
    fn sandbox_is_detected_from_the_help_text() {
        let mariadb = "  --safe-updates      Only allow UPDATE and DELETE that uses keys.\n  -i, --ignore-spaces\n\
                       \x20 --sandbox           Disallow commands that access the file system (except \\P\n\
                       \x20                     without an argument and \\e).\n";
        assert!(help_lists_sandbox(mariadb));
        let older =
            "  --connect-expired-password\n                      expired password sandbox mode even if --batch was\n";
        assert!(!help_lists_sandbox(older), "the word alone is not the option");
        assert!(!help_lists_sandbox(""));
    }
}
