//! The plain tools: spawning and timing them, finding them on PATH, the shell pipeline step (b), and the
//! PostgreSQL CHECKPOINT that runs before every timed step. Called by `engine`, `source`, `bench` and `dg`.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::process::Command;

use crate::{
    ZSTD_LEVEL,
    bench::Ctx,
    engine::{Kind, pg_url},
    report::mib,
    samples::EngineReport,
};

/// A child process that is killed if the bench stops waiting for it.
pub(crate) fn tool(program: &str) -> Command {
    let mut c = Command::new(program);
    c.kill_on_drop(true).stdin(Stdio::null());
    c
}

/// Runs a prepared command to completion; returns the wall time. Stdout must have been set by the caller.
pub(crate) async fn timed(mut cmd: Command, what: &str) -> anyhow::Result<f64> {
    cmd.stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("start {what}"))?;
    let out = child.wait_with_output().await.with_context(|| format!("wait for {what}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(secs)
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

pub(crate) fn first_line_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "not found".into())
}

/// (b) dump | zstd -3 -T2 | tee >(sha256sum > sum) > file.zst
pub(crate) async fn pipeline(r: &mut EngineReport, ctx: &mut Ctx<'_>, tag: &str) -> anyhow::Result<()> {
    let kind = r.kind;
    let k = kind.short();
    let zst_path = ctx.dir.join(format!("{k}.dump.zst"));
    let sum_path = ctx.dir.join(format!("{k}.dump.zst.sha256"));
    let _ = std::fs::remove_file(&sum_path);
    let script = format!(
        "set -o pipefail; {} {} | zstd -{ZSTD_LEVEL} -T2 | tee >(sha256sum > \"$2\") > \"$3\"",
        kind.dump_tool(),
        kind.dump_args("\"$1\"").join(" ")
    );
    let mut c = tool("bash");
    c.arg("-c").arg(&script).arg("dg-bench").arg(&r.source.name).arg(&sum_path).arg(&zst_path).stdout(Stdio::null());
    settle(kind).await;
    ctx.rss.begin();
    let secs = timed(c, "the dump | zstd | tee pipeline").await?;
    let rss = ctx.rss.end();
    let zst_bytes = std::fs::metadata(&zst_path)?.len();
    r.pipeline.push(secs, Some(zst_bytes), rss);
    // The checksum comes from a process substitution bash does not wait for; give it a moment.
    for _ in 0..50 {
        if std::fs::metadata(&sum_path).is_ok_and(|m| m.len() >= 64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum = std::fs::read_to_string(&sum_path).unwrap_or_default();
    anyhow::ensure!(sum.len() >= 64, "the pipeline wrote no sha256");
    println!("{tag} (b) pipeline: {secs:.2} s, {} (sha256 {}…)", mib(zst_bytes), &sum[..12]);
    let _ = std::fs::remove_file(&zst_path);
    Ok(())
}

/// Before each timed step: a PostgreSQL CHECKPOINT, so no step pays for the dirty pages of the one before
/// (restores write the WAL of a whole database). MariaDB flushes in the background; nothing to do there.
pub(crate) async fn settle(kind: Kind) {
    if kind == Kind::Postgres {
        let r = async {
            let mut c = PgConnection::connect(&pg_url("postgres")).await?;
            c.execute("CHECKPOINT").await?;
            c.close().await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("dg-bench: CHECKPOINT failed (figures may include checkpoint work): {e:#}");
        }
    }
}
