//! The background workers: the scheduler turns cron slots into backups, retention keeps the newest
//! `max_backups`, and without Redis the queue answers UNAVAILABLE at once while health keeps working,
//! everything resuming by itself when Redis returns.

use std::{process::Stdio, time::Duration};

use dg_proto::v1 as pb;
use dg_tests::pg_server;
use dg_tests::{
    cluster::{Cluster, ClusterOptions, authed},
    pg::TestDb,
};
use sqlx::Executor;
use tonic::Code;

async fn completed_backups(c: &mut dg_tests::cluster::Clients, job: &str) -> anyhow::Result<Vec<pb::Backup>> {
    let all = c
        .backups
        .list_backups(authed(pb::ListBackupsRequest { page_size: 500, ..Default::default() }, &c.token))
        .await?
        .into_inner();
    Ok(all.backups.into_iter().filter(|b| b.job_id == job).collect())
}

async fn execution_ids(c: &mut dg_tests::cluster::Clients, job: &str) -> anyhow::Result<Vec<String>> {
    let l = c
        .executions
        .list_executions(authed(
            pb::ListExecutionsRequest { job_id: job.into(), page_size: 500, ..Default::default() },
            &c.token,
        ))
        .await?
        .into_inner();
    Ok(l.executions.into_iter().map(|e| e.id).collect())
}

async fn scheduled_count(c: &mut dg_tests::cluster::Clients, job: &str) -> anyhow::Result<usize> {
    let l = c
        .executions
        .list_executions(authed(
            pb::ListExecutionsRequest { job_id: job.into(), page_size: 500, ..Default::default() },
            &c.token,
        ))
        .await?
        .into_inner();
    Ok(l.executions.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_backups_and_retention_keeps_the_newest() -> anyhow::Result<()> {
    let src = TestDb::create("sched").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)")
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("s");
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &pg_server()).await?;
    let upd = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        cron: Some("*/2 * * * * *".into()),
        retention: Some(pb::RetentionPolicy { max_backups: 2, ..Default::default() }),
        ..Default::default()
    };
    c.jobs.update_backup_job(authed(upd, &c.token)).await?;

    // Backups arrive on their own, and never more than two are kept.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut seen = std::collections::HashSet::new();
    loop {
        seen.extend(execution_ids(&mut c, &job.id).await?);
        let runs = seen.len();
        let kept = completed_backups(&mut c, &job.id).await?;
        assert!(kept.len() <= 2 + 1, "retention keeps the newest two (one may be in flight): {}", kept.len());
        if runs >= 4 && kept.len() == 2 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "scheduler produced {runs} runs, {} kept", kept.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Disabled: no new slots. (Checked first, so what follows looks at a settled set of backups.)
    c.jobs.disable_backup_job(authed(pb::DisableBackupJobRequest { id: job.id.clone() }, &c.token)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: std::collections::HashSet<String> = execution_ids(&mut c, &job.id).await?.into_iter().collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: std::collections::HashSet<String> = execution_ids(&mut c, &job.id).await?.into_iter().collect();
    assert!(after.is_subset(&before), "a disabled job is not scheduled");

    // The kept backups came from the schedule, and deleted backups left no objects behind.
    let kept = completed_backups(&mut c, &job.id).await?;
    assert_eq!(kept.len(), 2, "retention keeps the newest two");
    let logs = c.logs(&kept[0].id).await?;
    assert!(logs.contains("queued by the schedule"), "{logs}");
    let ds_dir =
        std::fs::read_dir(&dir)?.flatten().find(|e| e.path().is_dir()).map(|e| e.path()).expect("datasource dir");
    let mut on_disk: Vec<String> = std::fs::read_dir(&ds_dir)?
        .flatten()
        .filter(|e| has_files(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut kept_ids: Vec<String> = kept.iter().map(|b| b.id.clone()).collect();
    kept_ids.sort();
    assert!(
        on_disk.iter().all(|d| kept_ids.contains(d)),
        "only kept backups have objects: {on_disk:?} vs {kept_ids:?}"
    );

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// Whether any file lies below `dir` (emptied directories may stay behind).
fn has_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| if e.path().is_dir() { has_files(&e.path()) } else { true }))
        .unwrap_or(false)
}

/// A private Redis on a free port that the test can stop and start again on the same port.
pub(crate) struct PrivateRedis {
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub(crate) async fn start(port: u16) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(Self { child: Some(child) });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server did not start")
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_queue_refuses_at_once_and_everything_resumes() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut redis = PrivateRedis::start(port).await?;
    let src = TestDb::create("redis").await?;
    src.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await?;
    let mut cluster = Cluster::start_with(ClusterOptions {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        ..Default::default()
    })
    .await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (ds, _, job) = c.setup_pg_job(&agent.id, &cluster.dir.path().join("r"), &src.name, &pg_server()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.run_job(&job.id).await?.status, pb::ExecutionStatus::Completed as i32);

    // Redis goes away.
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let refused = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &c.token)).await;
    assert_eq!(refused.expect_err("no queue").code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered at once, not after a timeout: {:?}",
        started.elapsed()
    );
    // Health keeps working.
    let t = c
        .datasources
        .test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &c.token))
        .await?
        .into_inner();
    assert!(t.ok, "{t:?}");
    let mut health = pb::health_service_client::HealthServiceClient::new(cluster.channel().await?);
    let sys = health.get_system_health(authed(pb::GetSystemHealthRequest {}, &c.token)).await?.into_inner();
    assert!(!sys.redis.expect("redis").ok && sys.postgres.expect("pg").ok);
    // The scheduler pauses.
    let upd = pb::UpdateBackupJobRequest { id: job.id.clone(), cron: Some("* * * * * *".into()), ..Default::default() };
    c.jobs.update_backup_job(authed(upd, &c.token)).await?;
    let before = scheduled_count(&mut c, &job.id).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scheduled_count(&mut c, &job.id).await?, before, "no slot queued while Redis is down");

    // Redis returns on the same port: everything resumes by itself.
    let _redis = PrivateRedis::start(port).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &c.token)).await {
            Ok(ex) => {
                let done = c.wait_execution(&ex.into_inner().id, Duration::from_secs(60)).await?;
                assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);
                break;
            }
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while scheduled_count(&mut c, &job.id).await? <= before + 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the scheduler did not resume");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    c.jobs.disable_backup_job(authed(pb::DisableBackupJobRequest { id: job.id.clone() }, &c.token)).await?;
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
