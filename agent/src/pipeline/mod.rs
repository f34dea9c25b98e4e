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

use std::process::Stdio;

use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::mpsc,
    task::JoinHandle,
};

use dg_common::protocol::{DatabaseTarget, LogLevel};

use crate::{
    engine::{self, ServerInfo, ToolRun},
    error::{PipelineError, PipelineResult},
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

/// Starts a prepared tool with the given stdin and stdout, its stderr forwarded to the execution log under
/// `label` with `secret` redacted; the task returns the stderr's last lines once the tool has closed it.
pub fn start_tool(
    run: &mut ToolRun,
    stdin: Stdio,
    stdout: Stdio,
    label: &'static str,
    rep: &Reporter,
    secret: &str,
) -> PipelineResult<(Child, JoinHandle<Vec<String>>)> {
    let mut child = run
        .cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Tool(format!("cannot start {}: {e}", run.tool)))?;
    let stderr = tokio::spawn(forward_stderr(child.stderr.take(), label, rep.clone(), vec![secret.to_owned()]));
    Ok((child, stderr))
}

/// Writes every block from `blocks` into a restore tool's stdin (widened, see [`backup::widen_pipe`]), then
/// closes it; returns the bytes written.
pub async fn feed(mut stdin: ChildStdin, blocks: mpsc::Receiver<Bytes>) -> std::io::Result<u64> {
    backup::widen_pipe(&stdin);
    let n = write_blocks(&mut stdin, blocks).await?;
    stdin.shutdown().await?;
    Ok(n)
}

/// Writes every block from `blocks` into a new file at `path` and syncs it (an archive staged for a tool that
/// needs a file); returns the bytes written.
pub async fn stage(path: &std::path::Path, blocks: mpsc::Receiver<Bytes>) -> std::io::Result<u64> {
    let mut f = tokio::fs::File::create(path).await?;
    let n = write_blocks(&mut f, blocks).await?;
    f.sync_all().await?;
    Ok(n)
}

async fn write_blocks(w: &mut (impl AsyncWrite + Unpin), mut blocks: mpsc::Receiver<Bytes>) -> std::io::Result<u64> {
    let mut n = 0u64;
    while let Some(block) = blocks.recv().await {
        w.write_all(&block).await?;
        n += block.len() as u64;
    }
    Ok(n)
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
