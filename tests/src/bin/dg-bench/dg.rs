//! The DataGuardian steps through the controller's API: (c) RunNow, (e) RestoreBackup, (f) VerifyBackup and (g)
//! RunRestoreDrill, each timed from the call to seeing the execution (or drill run) end, with the execution's own span, the agent's memory and the failure cases.

use std::time::{Duration, Instant};

use dg_proto::v1 as pb;
use dg_tests::cluster::{Clients, authed};

use crate::{
    bench::Ctx,
    created::Created,
    plain::settle,
    report::{mib, tail},
    samples::{EngineReport, Problem},
};

/// Longest a DataGuardian execution may take before the bench gives up on it.
const EXEC_LIMIT: Duration = Duration::from_secs(4 * 3600);
/// Message of an agent built before the engine existed.
const ONLY_PG: &str = "only PostgreSQL";

/// (c) RunNow → completed. Returns the backup id when it completed.
pub(crate) async fn dg_backup(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    job_id: &str,
    tag: &str,
    plain_bytes: u64,
) -> anyhow::Result<Option<String>> {
    let kind = r.kind;
    let t = ctx.clients.token.clone();
    settle(kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let ex = ctx.clients.jobs.run_now(authed(pb::RunNowRequest { job_id: job_id.into() }, &t)).await?.into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    if done.status == pb::ExecutionStatus::Completed as i32 {
        let exec = span(&done);
        let b = &mut r.dg_backup;
        b.wall.push(wall, Some(done.stored_bytes), rss);
        b.exec.extend(exec);
        (b.raw, b.chunks) = (done.raw_bytes, done.chunk_count);
        println!(
            "{tag} (c) DataGuardian backup: {wall:.2} s (execution {}), raw {}, stored {} in {} chunks, agent VmRSS \
             peak {}",
            exec.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            mib(done.raw_bytes),
            mib(done.stored_bytes),
            done.chunk_count,
            mib(rss)
        );
        if done.raw_bytes != plain_bytes && !r.notes.iter().any(|n| n.starts_with("DataGuardian dumped")) {
            r.notes.push(format!(
                "DataGuardian dumped {} raw bytes, the plain dump {} (its dump options differ slightly)",
                done.raw_bytes, plain_bytes
            ));
        }
        return Ok(Some(ex.id));
    }
    let logs = ctx.clients.logs(&ex.id).await.unwrap_or_default();
    let status = pb::ExecutionStatus::try_from(done.status).map(|s| s.as_str_name()).unwrap_or("?");
    if done.error.contains(ONLY_PG) {
        println!("{tag} (c) DataGuardian {} backups are unavailable in this build: {}", kind.label(), done.error);
        r.dg_backup.problem = Some(Problem::Unavailable(done.error.clone()));
        r.dg_restore.problem = Some(Problem::Unavailable("no backup to restore".into()));
    } else {
        println!(
            "{tag} (c) DataGuardian backup FAILED after {wall:.2} s: {status}: {}\n{}",
            done.error,
            tail(&logs, 15)
        );
        r.dg_backup.problem = Some(Problem::Failed(format!("{status}: {}", done.error)));
    }
    Ok(None)
}

/// Which comparison backup (c1)/(c2) a run records into.
#[derive(Clone, Copy)]
pub(crate) enum Variant {
    /// The same job at fixed level 1.
    Level1,
    /// The same job with an adaptive level.
    Adaptive,
}

/// (c1)/(c2): another backup of the same source with other compression settings; records time, stored bytes
/// and (adaptive) the levels the agent reported. The backup is deleted afterwards (untimed).
pub(crate) async fn dg_backup_variant(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    job_id: &str,
    tag: &str,
    which: Variant,
) -> anyhow::Result<()> {
    let t = ctx.clients.token.clone();
    settle(r.kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let ex = ctx.clients.jobs.run_now(authed(pb::RunNowRequest { job_id: job_id.into() }, &t)).await?.into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    let (label, samples) = match which {
        Variant::Level1 => ("(c1) DataGuardian backup, fixed level 1", &mut r.dg_backup_l1),
        Variant::Adaptive => ("(c2) DataGuardian backup, adaptive", &mut r.dg_backup_adaptive),
    };
    if done.status != pb::ExecutionStatus::Completed as i32 {
        println!("{tag} {label} FAILED after {wall:.2} s: {}", done.error);
        samples.problem = Some(Problem::Failed(done.error.clone()));
        return Ok(());
    }
    samples.wall.push(wall, Some(done.stored_bytes), rss);
    samples.exec.extend(span(&done));
    (samples.raw, samples.chunks) = (done.raw_bytes, done.chunk_count);
    let logs = ctx.clients.logs(&ex.id).await.unwrap_or_default();
    let levels =
        logs.lines().find_map(|l| l.split("adaptive compression: ").nth(1)).map(str::to_owned).unwrap_or_default();
    println!(
        "{tag} {label}: {wall:.2} s, stored {}{}",
        mib(done.stored_bytes),
        if levels.is_empty() { String::new() } else { format!(" ({levels})") }
    );
    if matches!(which, Variant::Adaptive) {
        r.adaptive_levels.push(levels);
    }
    let _ = ctx.clients.backups.delete_backup(authed(pb::DeleteBackupRequest { id: ex.id }, &t)).await;
    Ok(())
}

/// (e) RestoreBackup with create_database → completed, then the row count.
pub(crate) async fn dg_restore(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    created: &mut Created,
    backup_id: String,
    target: &str,
    tag: &str,
) -> anyhow::Result<()> {
    if r.dg_restore.problem.is_some() {
        return Ok(());
    }
    let kind = r.kind;
    let t = ctx.clients.token.clone();
    created.track_db(kind, target);
    settle(kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let ex = ctx
        .clients
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id,
                target_database: target.into(),
                create_database: true,
                confirm_target_database: target.into(),
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    if done.status == pb::ExecutionStatus::Completed as i32 {
        let n = kind.rows(target).await?;
        let exec = span(&done);
        println!(
            "{tag} (e) DataGuardian restore: {wall:.2} s (execution {}), agent VmRSS peak {} ({n} rows restored)",
            exec.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            mib(rss)
        );
        if n == r.source.rows {
            r.dg_restore.wall.push(wall, None, rss);
            r.dg_restore.exec.extend(exec);
        } else {
            let msg = format!("restored {n} rows, the source has {}", r.source.rows);
            r.dg_restore.problem = Some(Problem::Failed(msg));
        }
    } else {
        let logs = ctx.clients.logs(&ex.id).await.unwrap_or_default();
        let status = pb::ExecutionStatus::try_from(done.status).map(|s| s.as_str_name()).unwrap_or("?");
        if done.error.contains(ONLY_PG) {
            println!("{tag} (e) DataGuardian {} restores are unavailable in this build: {}", kind.label(), done.error);
            r.dg_restore.problem = Some(Problem::Unavailable(done.error.clone()));
        } else {
            println!(
                "{tag} (e) DataGuardian restore FAILED after {wall:.2} s: {status}: {}\n{}",
                done.error,
                tail(&logs, 15)
            );
            r.dg_restore.problem = Some(Problem::Failed(format!("{status}: {}", done.error)));
        }
    }
    created.drop_db_now(kind, target).await;
    Ok(())
}

/// (f) VerifyBackup → completed: a checksum-only read of every copy of the backup (no database touched).
pub(crate) async fn dg_verify(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    backup_id: &str,
    tag: &str,
) -> anyhow::Result<()> {
    if r.dg_verify.problem.is_some() {
        return Ok(());
    }
    let t = ctx.clients.token.clone();
    ctx.rss.begin();
    let start = Instant::now();
    let req = pb::VerifyBackupRequest { backup_id: backup_id.into(), ..Default::default() };
    let ex = ctx.clients.backups.verify_backup(authed(req, &t)).await?.into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    let backup = ctx.clients.backups.get_backup(authed(pb::GetBackupRequest { id: backup_id.into() }, &t)).await?;
    let intact = backup.into_inner().copies.iter().all(|c| c.verify_status == pb::CopyVerifyStatus::Intact as i32);
    if done.status == pb::ExecutionStatus::Completed as i32 && intact {
        let exec = span(&done);
        println!(
            "{tag} (f) DataGuardian verify: {wall:.2} s (execution {}), agent VmRSS peak {}, every copy intact",
            exec.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            mib(rss)
        );
        r.dg_verify.wall.push(wall, None, rss);
        r.dg_verify.exec.extend(exec);
    } else {
        let status = pb::ExecutionStatus::try_from(done.status).map(|s| s.as_str_name()).unwrap_or("?");
        println!("{tag} (f) DataGuardian verify FAILED after {wall:.2} s: {status}: {} (intact: {intact})", done.error);
        r.dg_verify.problem = Some(Problem::Failed(format!("{status}: {} (intact: {intact})", done.error)));
    }
    Ok(())
}

/// (g) RunRestoreDrill → passed: picks the newest good backup, restores it into a scratch database, counts
/// every table and compares with the counts recorded at backup time, then drops the scratch database.
pub(crate) async fn dg_drill(r: &mut EngineReport, ctx: &mut Ctx<'_>, drill_id: &str, tag: &str) -> anyhow::Result<()> {
    if r.dg_drill.problem.is_some() {
        return Ok(());
    }
    let t = ctx.clients.token.clone();
    settle(r.kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let req = pb::RunRestoreDrillRequest { id: drill_id.into() };
    let mut run = ctx.clients.drills.run_restore_drill(authed(req, &t)).await?.into_inner();
    let deadline = Instant::now() + EXEC_LIMIT;
    while run.status == pb::DrillRunStatus::Running as i32 {
        anyhow::ensure!(Instant::now() < deadline, "drill run {} still running after {EXEC_LIMIT:?}", run.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let req = pb::GetDrillRunRequest { id: run.id.clone() };
        run = ctx.clients.drills.get_drill_run(authed(req, &t)).await?.into_inner();
    }
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    if run.status == pb::DrillRunStatus::Passed as i32 {
        let rto = (run.rto_ms > 0).then(|| run.rto_ms as f64 / 1000.0);
        println!(
            "{tag} (g) DataGuardian restore drill: {wall:.2} s, RTO {}, {} assertions passed, agent VmRSS peak {}",
            rto.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            run.assertions.len(),
            mib(rss)
        );
        r.dg_drill.wall.push(wall, None, rss);
        r.drill_rto.extend(rto);
    } else {
        println!("{tag} (g) DataGuardian restore drill FAILED after {wall:.2} s: {}", run.error);
        r.dg_drill.problem = Some(Problem::Failed(run.error));
    }
    Ok(())
}

/// Polls the execution every 50 ms until it ends.
pub(crate) async fn wait_exec(c: &mut Clients, id: &str) -> anyhow::Result<pb::Execution> {
    let deadline = Instant::now() + EXEC_LIMIT;
    loop {
        let e =
            c.executions.get_execution(authed(pb::GetExecutionRequest { id: id.into() }, &c.token)).await?.into_inner();
        if matches!(
            pb::ExecutionStatus::try_from(e.status),
            Ok(pb::ExecutionStatus::Completed | pb::ExecutionStatus::Failed | pb::ExecutionStatus::Cancelled)
        ) {
            return Ok(e);
        }
        anyhow::ensure!(Instant::now() < deadline, "execution {id} still running after {EXEC_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn span(e: &pb::Execution) -> Option<f64> {
    let (a, b) = (e.started_at.as_ref()?, e.finished_at.as_ref()?);
    Some((b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9)
}
