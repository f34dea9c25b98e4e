//! Scheduled scrubbing through the public API with a real agent, real PostgreSQL and a local storage: a job
//! with `verify.after_backup` gets a verify of each new backup queued by itself, which finds the copy
//! intact; a backup has one verify queued or running at a time (asking again returns it); a job's verify
//! cron queues verifies of its newest backup; a read-rate limit measurably slows a verify of a few MiB
//! (lower bound only); bad scrubbing input is refused naming the field.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    pg::TestDb,
};
use sqlx::Executor;
use tonic::Code;

/// About 6 MiB of random hex text: zstd stores about half of it, so the backup holds ~3 MiB.
const PG_SEED: &str = "CREATE TABLE t (id int PRIMARY KEY, v text); \
    INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 100000) g";

fn secs(e: &pb::Execution) -> f64 {
    let t =
        |ts: &Option<prost_types::Timestamp>| ts.as_ref().map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
    t(&e.finished_at) - t(&e.started_at)
}

async fn verifies_of(c: &mut Clients, ds: &str, backup: &str) -> anyhow::Result<Vec<pb::Execution>> {
    let req = pb::ListExecutionsRequest {
        datasource_id: ds.into(),
        operation: pb::Operation::Verify as i32,
        page_size: 500,
        ..Default::default()
    };
    let all = c.executions.list_executions(authed(req, &c.token)).await?.into_inner().executions;
    Ok(all.into_iter().filter(|e| e.source_backup_id == backup).collect())
}

async fn set_verify(c: &mut Clients, job: &str, v: pb::VerifySchedule) -> Result<pb::BackupJob, tonic::Status> {
    let req = pb::UpdateBackupJobRequest { id: job.into(), verify: Some(v), ..Default::default() };
    Ok(c.jobs.update_backup_job(authed(req, &c.token)).await?.into_inner())
}

async fn verify_now(c: &mut Clients, backup: &str, rate: u64) -> Result<pb::Execution, tonic::Status> {
    let req = pb::VerifyBackupRequest { backup_id: backup.into(), read_rate_bytes_per_second: rate };
    Ok(c.backups.verify_backup(authed(req, &c.token)).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_backup_verifies_queue_themselves_once_and_a_read_rate_limit_slows_them() -> anyhow::Result<()> {
    let src = TestDb::create("scrub").await?;
    src.connect().await?.execute(PG_SEED).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (ds, storage, job) =
        c.setup_pg_job(&agent.id, &cluster.dir.path().join("store"), &src.name, &dg_tests::pg_server()).await?;
    // After each backup, a verify limited to 1 MiB/s (the job's limit).
    let rate: u64 = 1 << 20;
    let scrub = pb::VerifySchedule { after_backup: true, read_rate_bytes_per_second: rate, ..Default::default() };
    let job = set_verify(&mut c, &job.id, scrub).await?;
    assert_eq!(job.verify.as_ref().map(|v| (v.after_backup, v.read_rate_bytes_per_second)), Some((true, rate)));

    // The backup commits; a verify of it is queued by itself, right after the commit.
    let backup = c.run_job(&job.id).await?;
    assert_eq!(backup.status, pb::ExecutionStatus::Completed as i32, "{}", backup.error);
    let stored = backup.stored_bytes;
    assert!(stored >= 2 << 20, "a backup of a few MiB: {stored} bytes stored");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let vs = loop {
        let vs = verifies_of(&mut c, &ds.id, &backup.id).await?;
        if !vs.is_empty() || tokio::time::Instant::now() > deadline {
            break vs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vs.len(), 1, "exactly one after-backup verify: {vs:?}");
    // It reads ~3 MiB at 1 MiB/s, so it is still queued or running now: asking again returns it.
    let again = verify_now(&mut c, &backup.id, 0).await?;
    assert_eq!(again.id, vs[0].id, "one verify per backup at a time");
    let v = c.wait_execution(&vs[0].id, Duration::from_secs(120)).await?;
    let logs = c.logs(&v.id).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", v.error);
    assert!(logs.contains("queued by after_backup"), "{logs}");
    assert!(logs.contains(&format!("reading at most {rate} bytes/s")), "{logs}");
    let detail =
        c.backups.get_backup(authed(pb::GetBackupRequest { id: backup.id.clone() }, &c.token)).await?.into_inner();
    let copy = detail.copies.iter().find(|cp| cp.storage_id == storage.id).expect("the copy");
    assert_eq!(copy.verify_status, pb::CopyVerifyStatus::Intact as i32, "{copy:?}");
    assert_eq!(copy.verify_execution_id, v.id);
    // Reading `stored` bytes at `rate` takes at least (stored - one burst) / rate seconds.
    let floor = (stored as f64 - 128.0 * 1024.0) / rate as f64;
    let limited = secs(&v);
    assert!(limited >= floor, "a verify limited to {rate} B/s of {stored} bytes took {limited:.2}s < {floor:.2}s");

    // Without a limit anywhere the same verify runs unthrottled (a figure, not an assertion).
    set_verify(&mut c, &job.id, pb::VerifySchedule::default()).await?;
    let free = verify_now(&mut c, &backup.id, 0).await?;
    let free = c.wait_execution(&free.id, Duration::from_secs(120)).await?;
    assert_eq!(free.status, pb::ExecutionStatus::Completed as i32, "{}", free.error);
    assert!(c.logs(&free.id).await?.contains("no read-rate limit"));
    // A request's own limit wins over the job's.
    set_verify(&mut c, &job.id, pb::VerifySchedule { read_rate_bytes_per_second: rate, ..Default::default() }).await?;
    let own = verify_now(&mut c, &backup.id, 4 << 20).await?;
    let own = c.wait_execution(&own.id, Duration::from_secs(120)).await?;
    assert!(c.logs(&own.id).await?.contains(&format!("reading at most {} bytes/s", 4u64 << 20)));
    eprintln!(
        "scrub figures: {stored} bytes stored; verify at 1 MiB/s {limited:.2}s, unlimited {:.2}s, at 4 MiB/s {:.2}s",
        secs(&free),
        secs(&own)
    );

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_verify_cron_verifies_the_newest_backup_and_bad_input_names_the_field() -> anyhow::Result<()> {
    let src = TestDb::create("scrubcron").await?;
    src.connect().await?.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (ds, _, job) =
        c.setup_pg_job(&agent.id, &cluster.dir.path().join("store"), &src.name, &dg_tests::pg_server()).await?;

    // Bad input names the field.
    for (v, field) in [
        (pb::VerifySchedule { cron: "61 * * * *".into(), ..Default::default() }, "verify.cron"),
        (pb::VerifySchedule { cron: "not a cron".into(), ..Default::default() }, "verify.cron"),
        (
            pb::VerifySchedule { read_rate_bytes_per_second: 5, ..Default::default() },
            "verify.read_rate_bytes_per_second",
        ),
    ] {
        let e = set_verify(&mut c, &job.id, v.clone()).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
        let req = pb::CreateBackupJobRequest {
            name: "bad-verify".into(),
            datasource_id: ds.id.clone(),
            storage_ids: job.storage_ids.clone(),
            verify: Some(v),
            ..Default::default()
        };
        let e = c.jobs.create_backup_job(authed(req, &c.token)).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }

    // Two backups, then a verify cron firing every 2 s (6-field cron): the newest backup is verified.
    let older = c.run_job(&job.id).await?;
    let newest = c.run_job(&job.id).await?;
    assert_eq!(newest.status, pb::ExecutionStatus::Completed as i32, "{}", newest.error);
    let cron = pb::VerifySchedule { cron: "*/2 * * * * *".into(), ..Default::default() };
    let updated = set_verify(&mut c, &job.id, cron).await?;
    assert_eq!(updated.verify.map(|v| v.cron).as_deref(), Some("*/2 * * * * *"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        let vs = verifies_of(&mut c, &ds.id, &newest.id).await?;
        if let Some(v) = vs.into_iter().next() {
            break v;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no scheduled verify within 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let v = c.wait_execution(&found.id, Duration::from_secs(60)).await?;
    let logs = c.logs(&v.id).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", v.error);
    assert!(logs.contains("queued by schedule"), "{logs}");
    assert!(verifies_of(&mut c, &ds.id, &older.id).await?.is_empty(), "only the newest backup is scrubbed");

    // Turning the cron off stops it: no verify is queued after the change settles.
    set_verify(&mut c, &job.id, pb::VerifySchedule::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = verifies_of(&mut c, &ds.id, &newest.id).await?.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(verifies_of(&mut c, &ds.id, &newest.id).await?.len(), before, "no verify after the cron is cleared");

    // VerifyBackup's own rate is validated too.
    let e = verify_now(&mut c, &newest.id, 7).await.expect_err("tiny rate");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("read_rate_bytes_per_second"), "{}", e.message());

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
