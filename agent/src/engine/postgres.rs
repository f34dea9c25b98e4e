//! PostgreSQL: connection test (sqlx), `pg_dump` in custom format and `pg_restore`. Connection parameters
//! reach the tools through libpq environment variables and a 0600 passfile; the only argv value derived from
//! user input is `--dbname=dbname='…'`, which cannot be read as an option. Unless TLS verifies the server,
//! every client connects through a [`PgGuard`], which refuses a clear-text password request.

use secrecy::ExposeSecret;
use std::time::Duration;

use dg_common::protocol::{DatabaseTarget, TlsMode};
use sqlx::{
    ConnectOptions, Connection, Row,
    postgres::{PgConnectOptions, PgSslMode},
};
use tokio::process::Command;

use super::{AuthGuard, ServerInfo, ToolRun, credentials_file, find_tool, pg_guard::PgGuard};
use crate::error::{PipelineError, PipelineResult};
use crate::tools::Tools;

fn ssl_mode(t: &DatabaseTarget) -> (PgSslMode, &'static str) {
    match t.tls_mode {
        TlsMode::Disable => (PgSslMode::Disable, "disable"),
        TlsMode::Prefer => (PgSslMode::Prefer, "prefer"),
        TlsMode::Require => (PgSslMode::Require, "require"),
        TlsMode::VerifyFull => (PgSslMode::VerifyFull, "verify-full"),
    }
}

/// Where the agent's clients connect for a target: the server itself when TLS verifies it (or there is no
/// password to protect), else a [`PgGuard`] on loopback, reached without TLS (the guard does the TLS).
pub struct Route {
    host: String,
    port: u16,
    ssl: (PgSslMode, &'static str),
    guard: Option<PgGuard>,
}

impl Route {
    /// The route for `t`, starting its guard when it needs one.
    pub async fn to(t: &DatabaseTarget) -> PipelineResult<Self> {
        if t.tls_mode == TlsMode::VerifyFull || t.password.expose_secret().is_empty() {
            return Ok(Self { host: t.host.clone(), port: t.port, ssl: ssl_mode(t), guard: None });
        }
        let guard = PgGuard::start(&t.host, t.port, t.tls_mode).await?;
        Ok(Self {
            host: "127.0.0.1".into(),
            port: guard.port(),
            ssl: (PgSslMode::Disable, "disable"),
            guard: Some(guard),
        })
    }

    /// Keeps the guard (if any) running for as long as the returned value lives.
    pub fn into_guard(self) -> Option<AuthGuard> {
        self.guard.map(AuthGuard::Postgres)
    }
}

pub(super) async fn connect(t: &DatabaseTarget, database: &str) -> PipelineResult<(sqlx::PgConnection, Route)> {
    let fail = |e: String| PipelineError::Connection(dg_common::redact::redact(&e, &[t.password.expose_secret()]));
    let route = Route::to(t).await?;
    let conn = tokio::time::timeout(Duration::from_secs(10), options(&route, t, database).connect())
        .await
        .map_err(|_| fail(format!("{}:{} did not answer within 10 s", t.host, t.port)))?
        .map_err(|e| fail(e.to_string()))?;
    Ok((conn, route))
}

fn options(route: &Route, t: &DatabaseTarget, database: &str) -> PgConnectOptions {
    let mut o = PgConnectOptions::new_without_pgpass()
        .host(&route.host)
        .port(route.port)
        .username(&t.username)
        .database(database)
        .ssl_mode(route.ssl.0)
        .application_name("dataguardian-agent")
        .disable_statement_logging();
    if !t.password.expose_secret().is_empty() {
        o = o.password(t.password.expose_secret());
    }
    o
}

/// Connects to `database` and reads the server version.
pub async fn test_connection(t: &DatabaseTarget, database: &str) -> PipelineResult<ServerInfo> {
    let started = std::time::Instant::now();
    let fail = |e: String| PipelineError::Connection(dg_common::redact::redact(&e, &[t.password.expose_secret()]));
    let (mut conn, _route) = connect(t, database).await?;
    let row =
        sqlx::query("SELECT current_setting('server_version') AS v, current_setting('server_version_num')::int AS n")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| fail(e.to_string()))?;
    let version: String = row.try_get("v").map_err(|e| fail(e.to_string()))?;
    let num: i32 = row.try_get("n").map_err(|e| fail(e.to_string()))?;
    let _ = conn.close().await;
    Ok(ServerInfo { version, major: u32::try_from(num / 10000).unwrap_or(0), latency: started.elapsed() })
}

/// Creates `database` on the target server unless it exists (through the `postgres` maintenance database).
pub async fn ensure_database(t: &DatabaseTarget, database: &str) -> PipelineResult<bool> {
    let fail = |e: String| PipelineError::Connection(dg_common::redact::redact(&e, &[t.password.expose_secret()]));
    let (mut conn, _route) = connect(t, "postgres").await?;
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| fail(e.to_string()))?
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

/// Drops `database` on the target server (verification restores clean up after themselves).
pub async fn drop_database(t: &DatabaseTarget, database: &str) -> PipelineResult<()> {
    let (mut conn, _route) = connect(t, "postgres").await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(database))))
        .execute(&mut conn)
        .await
        .map_err(|e| PipelineError::Tool(format!("drop database: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A libpq conninfo value, single-quoted with `\` and `'` escaped.
pub fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A 0600 passfile holding the target's password for the route's host and port; removed on drop.
pub fn passfile(route: &Route, t: &DatabaseTarget, tools: &Tools) -> PipelineResult<tempfile::NamedTempFile> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    credentials_file(
        tools,
        "dg-pgpass-",
        &format!("{}:{}:*:{}:{}\n", esc(&route.host), route.port, esc(&t.username), esc(t.password.expose_secret())),
    )
}

/// A command for a libpq tool with connection parameters (the route's host, port and TLS mode) in the
/// environment.
pub fn command(tool: &std::path::Path, route: &Route, t: &DatabaseTarget, passfile: &std::path::Path) -> Command {
    let mut c = Command::new(tool);
    for var in ["PGPASSWORD", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGHOSTADDR", "PGREQUIREAUTH"] {
        c.env_remove(var);
    }
    if route.guard.is_some() {
        c.env("PGGSSENCMODE", "disable");
    }
    c.env("PGHOST", &route.host)
        .env("PGPORT", route.port.to_string())
        .env("PGUSER", &t.username)
        .env("PGPASSFILE", passfile)
        .env("PGSSLMODE", route.ssl.1)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "dataguardian-agent")
        .kill_on_drop(true);
    c
}

/// `pg_dump` of the target database in custom format, uncompressed (the pipeline compresses), after checking
/// that this `pg_dump` can dump that server.
pub async fn dump(t: &DatabaseTarget, server: &ServerInfo, tools: &Tools) -> PipelineResult<ToolRun> {
    let mut run = pg_dump(t, server, tools, &[]).await?;
    // Exact counts in the snapshot the dump reads, counted beside the dump: the exporting transaction stays
    // open (held by the counting task's result) until the dump has ended. Export refused: the dump runs on
    // its own snapshot, without counts.
    let counts = match super::observe::pg_export_snapshot(t).await {
        Ok(hold) => {
            run.cmd.arg(format!("--snapshot={}", hold.snapshot));
            super::RowCounts::counting(tokio::spawn(super::observe::pg_count_in(hold, t.clone())))
        }
        Err(e) => super::RowCounts::refused(e),
    };
    run.counts = counts;
    Ok(run)
}

/// `pg_dump` of the target database in custom format, uncompressed, with `extra` options before the
/// database, after checking that this `pg_dump` can dump that server.
async fn pg_dump(t: &DatabaseTarget, server: &ServerInfo, tools: &Tools, extra: &[String]) -> PipelineResult<ToolRun> {
    let (tool, path, version) = find_tool(tools, &["pg_dump"]).await?;
    check_dump_compat(&version, server.major)?;
    let route = Route::to(t).await?;
    let creds = passfile(&route, t, tools)?;
    let mut cmd = command(&path, &route, t, creds.path());
    cmd.arg("--format=custom")
        .arg("--compress=0")
        .arg("--no-password")
        .args(extra)
        .arg(format!("--dbname=dbname={}", conninfo_value(&t.database)));
    Ok(ToolRun {
        cmd,
        tool: tool.into(),
        version,
        options: vec!["format=custom".into(), "compress=0".into()],
        creds,
        guard: route.into_guard(),
        counts: Default::default(),
    })
}

/// `pg_dump --section=SECTION` (`pre-data`, `post-data`, or `data` without any table's or sequence's data:
/// the large objects), reading the exported snapshot `snapshot`: what surrounds a parallel backup's table
/// data.
pub async fn dump_section(
    t: &DatabaseTarget,
    server: &ServerInfo,
    tools: &Tools,
    snapshot: &str,
    section: &'static str,
) -> PipelineResult<ToolRun> {
    let mut extra = vec![format!("--section={section}"), format!("--snapshot={snapshot}")];
    if section == "data" {
        extra.push("--exclude-table-data=*.*".into());
    }
    let mut run = pg_dump(t, server, tools, &extra).await?;
    run.options.push(format!("section={section}"));
    Ok(run)
}

/// `pg_restore` into the target database from stdin, or from `file` with `jobs` parallel jobs.
pub async fn restore(
    t: &DatabaseTarget,
    drop_existing: bool,
    file: Option<&std::path::Path>,
    jobs: u32,
    tools: &Tools,
) -> PipelineResult<ToolRun> {
    let (tool, path, version) = find_tool(tools, &["pg_restore"]).await?;
    let route = Route::to(t).await?;
    let creds = passfile(&route, t, tools)?;
    let mut cmd = command(&path, &route, t, creds.path());
    cmd.arg("--no-password").arg("--exit-on-error");
    if drop_existing {
        cmd.arg("--clean").arg("--if-exists");
    }
    cmd.arg(format!("--dbname=dbname={}", conninfo_value(&t.database)));
    if let Some(f) = file {
        cmd.arg(format!("--jobs={}", jobs.clamp(1, 16))).arg(f);
    }
    Ok(ToolRun {
        cmd,
        tool: tool.into(),
        version,
        options: Vec::new(),
        creds,
        guard: route.into_guard(),
        counts: Default::default(),
    })
}

/// Refuses a dump the client would fail on: pg_dump cannot dump a server of a newer major version.
pub fn check_dump_compat(tool_version: &str, server_major: u32) -> PipelineResult<()> {
    let tool_major: u32 = tool_version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if tool_major != 0 && server_major > tool_major {
        return Err(PipelineError::Tool(format!(
            "pg_dump {tool_version} cannot dump a PostgreSQL {server_major} server; install pg_dump {server_major} or newer on the agent host"
        )));
    }
    Ok(())
}

/// Position used as associated data when the globals object is sealed (never a chunk position).
pub const GLOBALS_SEQ: u32 = u32::MAX;

/// `pg_dumpall --globals-only --no-role-passwords`: roles (without their passwords, so a non-superuser can
/// run it) and tablespaces, as SQL. Small, so it is collected whole.
pub async fn dump_globals(t: &DatabaseTarget, tools: &Tools) -> PipelineResult<(Vec<u8>, String)> {
    let (tool, path, version) = find_tool(tools, &["pg_dumpall"]).await?;
    let route = Route::to(t).await?;
    let creds = passfile(&route, t, tools)?;
    let out = command(&path, &route, t, creds.path())
        .arg("--globals-only")
        .arg("--no-role-passwords")
        .arg("--no-password")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| PipelineError::Tool(format!("cannot start {tool}: {e}")))?;
    if !out.status.success() {
        let err = dg_common::redact::redact(&String::from_utf8_lossy(&out.stderr), &[t.password.expose_secret()]);
        return Err(PipelineError::Tool(format!("{tool} failed ({}): {}", out.status, err.trim())));
    }
    Ok((out.stdout, format!("{tool} {version}")))
}

/// Refuses globals SQL that could make `psql` run a meta-command (`\!` runs a shell command, `\o` writes
/// files, `\i` reads them…). A meta-command needs a backslash, so every line holding one is refused, except
/// the `\restrict KEY` … `\unrestrict KEY` pair that `pg_dumpall` 17+/15.14+ writes around its output (one
/// of each, in that order, the same alphanumeric key). Quoting is not interpreted: a backslash inside a quoted
/// name also fails, which is rare in globals and fails safe. The error names the line (from 1).
pub fn check_globals_sql(sql: &[u8]) -> Result<(), String> {
    fn pair_line<'a>(line: &'a [u8], command: &[u8]) -> Option<&'a [u8]> {
        let key = line.strip_prefix(command)?.strip_prefix(b" ")?;
        (!key.is_empty() && key.len() <= 128 && key.iter().all(u8::is_ascii_alphanumeric)).then_some(key)
    }
    let mut restrict_key: Option<&[u8]> = None;
    let mut unrestricted = false;
    for (i, line) in sql.split(|b| *b == b'\n').enumerate() {
        if !line.contains(&b'\\') {
            continue;
        }
        let n = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(key) = pair_line(line, b"\\restrict") {
            if restrict_key.is_some() {
                return Err(format!("globals line {n}: a second \\restrict"));
            }
            restrict_key = Some(key);
        } else if let Some(key) = pair_line(line, b"\\unrestrict") {
            if restrict_key != Some(key) || unrestricted {
                return Err(format!("globals line {n}: \\unrestrict does not close the \\restrict before it"));
            }
            unrestricted = true;
        } else {
            return Err(format!(
                "globals line {n} holds a backslash (a psql meta-command could run); refusing to replay the globals"
            ));
        }
    }
    Ok(())
}

/// Replays globals SQL with `psql` against the `postgres` database, after [`check_globals_sql`] accepted it
/// (checked here again, so no caller can skip it). Objects that already exist make psql report errors and go
/// on (ON_ERROR_STOP off); those lines are returned as warnings.
pub async fn restore_globals(t: &DatabaseTarget, tools: &Tools, sql: &[u8]) -> PipelineResult<Vec<String>> {
    use tokio::io::AsyncWriteExt;
    check_globals_sql(sql).map_err(PipelineError::Integrity)?;
    let (tool, path, _) = find_tool(tools, &["psql"]).await?;
    let route = Route::to(t).await?;
    let creds = passfile(&route, t, tools)?;
    let mut child = command(&path, &route, t, creds.path())
        .args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "--dbname=dbname='postgres'", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Tool(format!("cannot start {tool}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql).await?;
        stdin.shutdown().await?;
    }
    let out = child.wait_with_output().await?;
    let stderr = dg_common::redact::redact(&String::from_utf8_lossy(&out.stderr), &[t.password.expose_secret()]);
    if !out.status.success() {
        return Err(PipelineError::Tool(format!("{tool} failed ({}): {}", out.status, stderr.trim())));
    }
    Ok(stderr.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(conninfo_value("it's\\"), "'it\\'s\\\\'");
        assert!(check_dump_compat("15.19", 16).is_err());
        assert!(check_dump_compat("15.19", 15).is_ok());
        assert!(check_dump_compat("16.1", 12).is_ok());
    }

    #[test]
    fn globals_filter_refuses_every_meta_command_but_the_restrict_pair() {
        let dumped = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict Ab12\r\n\nSET client_encoding = 'UTF8';\n\
                      CREATE ROLE app;\nALTER ROLE app WITH LOGIN;\n\n\\unrestrict Ab12\n";
        assert_eq!(check_globals_sql(dumped.as_bytes()), Ok(()));
        assert_eq!(check_globals_sql(b"CREATE ROLE a;\n"), Ok(()), "older pg_dumpall writes no pair");
        assert_eq!(check_globals_sql(b""), Ok(()));
        for (sql, line) in [
            ("CREATE ROLE a;\n\\! touch /tmp/x\n", 2),
            ("  \\! touch /tmp/x\n", 1),
            ("SELECT 1; \\! id\n", 1),
            ("\\restrict k\n\\o /tmp/out\n\\unrestrict k\n", 2),
            ("\\restrict k\n\\unrestrict j\n", 2),
            ("\\unrestrict k\n", 1),
            ("\\restrict k\n\\restrict k\n", 2),
            ("\\restrict k\n\\unrestrict k\n\\unrestrict k\n", 3),
            ("\\restrict k; \\! id\n", 1),
            ("\\restrict\n", 1),
            ("CREATE ROLE \"a\\b\";\n", 1),
            ("\\i /etc/passwd\n", 1),
            ("\\gexec\n", 1),
        ] {
            let e = check_globals_sql(sql.as_bytes()).expect_err(sql);
            assert!(e.starts_with(&format!("globals line {line}")), "{sql:?}: {e}");
        }
    }
}
