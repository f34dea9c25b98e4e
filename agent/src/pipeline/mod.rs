//! The data path. Backup: dump tool stdout -> zstd (blocking thread) -> fixed-size chunks with sha256 ->
//! concurrent uploads -> manifest last. Restore: verify every chunk against its sha256 first, then download
//! again (verifying each chunk before use) -> zstd decoder -> restore tool stdin. Memory is bounded by channel
//! capacities: at most a few chunks are ever held at once, never the whole dump. Verify: every copy's manifest
//! and chunks read back (bounded by recorded sizes) and checked against the controller's record, no database
//! touched. All take the protocol model's plans (`BackupPlan`, `RestorePlan`, `VerifyPlan`) and return its
//! results; the executor calls them.

pub mod backup;
pub mod parallel;
pub mod restore;
pub mod throttle;
pub mod trust;
pub mod verify;

use tokio::io::{AsyncBufReadExt, BufReader};

use dg_common::protocol::{DatabaseTarget, LogLevel};

use crate::{
    engine::{self, ServerInfo},
    error::PipelineResult,
    report::Reporter,
};

/// How many stderr lines of a tool are kept for the error message.
const STDERR_TAIL: usize = 20;

/// Forwards a tool's stderr to the execution log (secrets redacted) and returns its last lines.
pub async fn forward_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    tool: &'static str,
    rep: Reporter,
    secrets: Vec<String>,
) -> Vec<String> {
    let Some(stderr) = stderr else {
        return Vec::new();
    };
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = std::collections::VecDeque::new();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = dg_common::redact::redact(&line, &refs);
        rep.log(LogLevel::Warn, format!("{tool}: {line}")).await;
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into_iter().collect()
}

/// Tests the connection to the target's database and logs the server version and round trip.
pub async fn test_connection(t: &DatabaseTarget, rep: &Reporter) -> PipelineResult<ServerInfo> {
    let info = engine::test_connection(t, &t.database).await?;
    let engine = t.engine.name();
    let line = format!("connection test ok: {engine} {} answered in {} ms", info.version, info.latency.as_millis());
    rep.log(LogLevel::Info, line).await;
    Ok(info)
}

/// Describes a failed tool run from its exit status and stderr tail.
pub fn tool_failure(tool: &str, status: std::process::ExitStatus, tail: &[String]) -> String {
    let last = tail.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
    match engine::my_guard::tool_hint(&last) {
        _ if last.is_empty() => format!("{tool} failed ({status})"),
        Some(hint) => format!("{tool} failed ({status}): {last}: {hint}"),
        None => format!("{tool} failed ({status}): {last}"),
    }
}
