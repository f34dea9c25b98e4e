//! The operator API beyond the happy path: updates, tests and health, schedules, watch, cancel, retries,
//! download, deletions with their preconditions, the system view, audit and login rate limiting.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::pg_server;
use dg_tests::{
    cluster::{ADMIN_PASSWORD, Cluster, authed},
    pg::TestDb,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::Executor;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_end_to_end() -> anyhow::Result<()> {
    let source = TestDb::create("api").await?;
    source
        .connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let t = c.token.clone();
    let dir = cluster.dir.path().join("backups");
    let (ds, storage, job) = c.setup_pg_job(&agent.id, &dir, &source.name, &pg_server()).await?;

    // Datasource test, health history, an update that breaks it and one that fixes it.
    let ok =
        c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?.into_inner();
    assert!(ok.ok && ok.server_version.starts_with("15"), "{ok:?}");
    // Moving the stored password to another port (or host, user, TLS mode, agent) needs the password again.
    let moved = pb::UpdateDatasourceRequest { id: ds.id.clone(), port: Some(1), ..Default::default() };
    let refused = c.datasources.update_datasource(authed(moved, &t)).await.expect_err("retargeted");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("password") && refused.message().contains("port"), "{refused:?}");
    let password = Some(pg_server().password);
    let bad = pb::UpdateDatasourceRequest {
        id: ds.id.clone(),
        port: Some(1),
        password: password.clone(),
        ..Default::default()
    };
    assert_eq!(c.datasources.update_datasource(authed(bad, &t)).await?.into_inner().port, 1);
    let fail =
        c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?.into_inner();
    assert!(!fail.ok && !fail.error.is_empty(), "{fail:?}");
    let fix = pb::UpdateDatasourceRequest {
        id: ds.id.clone(),
        port: Some(u32::from(pg_server().port)),
        password,
        ..Default::default()
    };
    c.datasources.update_datasource(authed(fix, &t)).await?;
    let mut health = pb::health_service_client::HealthServiceClient::new(cluster.channel().await?);
    let h = health
        .get_datasource_health(authed(pb::GetDatasourceHealthRequest { id: ds.id.clone(), history_size: 10 }, &t))
        .await?
        .into_inner();
    assert_eq!(h.history.len(), 2);
    assert!(!h.latest.expect("latest").ok, "newest first");
    assert!(!h.last_error.is_empty());

    // Storage tests: saved, unsaved local, unsaved S3 pointing at a closed port.
    let st = c
        .storages
        .test_storage(authed(
            pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Id(storage.id.clone())) },
            &t,
        ))
        .await?
        .into_inner();
    assert!(st.ok, "{st:?}");
    let sh = health
        .get_storage_health(authed(pb::GetStorageHealthRequest { id: storage.id.clone(), history_size: 5 }, &t))
        .await?
        .into_inner();
    assert!(sh.latest.expect("checked").ok && sh.last_error.is_empty());
    let unsaved = |config| pb::TestStorageRequest {
        target: Some(pb::test_storage_request::Target::Config(pb::CreateStorageRequest {
            name: "x".into(),
            config: Some(config),
            ..Default::default()
        })),
    };
    let local = pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
        path: cluster.dir.path().join("probe-here").to_string_lossy().into_owned(),
        agent_id: agent.id.clone(),
    });
    assert!(c.storages.test_storage(authed(unsaved(local), &t)).await?.into_inner().ok);
    // Local storages are confined to the agent's --local-root: outside it, or through a symlink, refused.
    let outside = pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
        path: "/var/tmp/dg-outside-the-root".into(),
        agent_id: agent.id.clone(),
    });
    let r = c.storages.test_storage(authed(unsaved(outside), &t)).await?.into_inner();
    assert!(!r.ok && r.error.contains("outside"), "{r:?}");
    let elsewhere = tempfile::tempdir()?;
    std::os::unix::fs::symlink(elsewhere.path(), cluster.dir.path().join("link"))?;
    let through_link = pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
        path: cluster.dir.path().join("link/x").to_string_lossy().into_owned(),
        agent_id: agent.id.clone(),
    });
    let r = c.storages.test_storage(authed(unsaved(through_link), &t)).await?.into_inner();
    assert!(!r.ok && r.error.contains("symlink"), "{r:?}");
    assert_eq!(std::fs::read_dir(elsewhere.path())?.count(), 0, "nothing written through the link");
    let s3 = pb::create_storage_request::Config::S3(pb::S3StorageConfig {
        endpoint: "http://127.0.0.1:1".into(),
        bucket: "nowhere".into(),
        path_style: true,
        allow_http: true,
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "s3-secret-never-shown".into(),
        ..Default::default()
    });
    let r = c.storages.test_storage(authed(unsaved(s3), &t)).await?.into_inner();
    assert!(!r.ok && !r.error.contains("s3-secret-never-shown"), "{r:?}");

    // Schedules: next runs, update, disable/enable.
    let upd = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        cron: Some("*/5 * * * *".into()),
        time_zone: Some("Europe/Berlin".into()),
        retry: Some(pb::RetryPolicy { max_attempts: 2, backoff: Some(prost_types::Duration { seconds: 0, nanos: 0 }) }),
        ..Default::default()
    };
    let j = c.jobs.update_backup_job(authed(upd, &t)).await?.into_inner();
    assert_eq!(j.next_runs.len(), 5);
    assert!(j.next_runs.windows(2).all(|w| w[1].seconds - w[0].seconds == 300), "{:?}", j.next_runs);
    let j =
        c.jobs.disable_backup_job(authed(pb::DisableBackupJobRequest { id: job.id.clone() }, &t)).await?.into_inner();
    assert!(!j.enabled);
    let j = c.jobs.enable_backup_job(authed(pb::EnableBackupJobRequest { id: job.id.clone() }, &t)).await?.into_inner();
    assert!(j.enabled && j.retry.expect("retry").max_attempts == 2);
    // Back to on-demand only: a run the scheduler starts at the next multiple of five minutes would add a
    // backup the rest of the test does not expect.
    let upd = pb::UpdateBackupJobRequest { id: job.id.clone(), cron: Some(String::new()), ..Default::default() };
    let j = c.jobs.update_backup_job(authed(upd, &t)).await?.into_inner();
    assert!(j.next_runs.is_empty(), "{:?}", j.next_runs);

    // Watch a backup from queue to completion.
    let ex = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &t)).await?.into_inner();
    let mut events =
        c.executions.watch_execution(authed(pb::WatchExecutionRequest { id: ex.id.clone() }, &t)).await?.into_inner();
    let (mut states, mut logs) = (Vec::new(), 0);
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), events.next()).await? {
        match ev?.event {
            Some(pb::execution_event::Event::Execution(e)) => states.push(e.status),
            Some(pb::execution_event::Event::Log(_)) => logs += 1,
            _ => {}
        }
    }
    assert_eq!(
        states.last(),
        Some(&(pb::ExecutionStatus::Completed as i32)),
        "stream ends with the final state: {states:?}"
    );
    assert!(logs >= 3, "log lines are streamed");
    let ex = c.executions.get_execution(authed(pb::GetExecutionRequest { id: ex.id.clone() }, &t)).await?.into_inner();

    // Download: the stored stream matches the recorded checksum; decompressed it is the pg_dump archive.
    let mut stream = c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: ex.id.clone(), decompress: false }, &t))
        .await?
        .into_inner();
    let mut stored = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        assert_eq!(piece.offset, stored.len() as u64);
        stored.extend(piece.data);
    }
    assert_eq!(hex::encode(Sha256::digest(&stored)), ex.sha256);
    let mut stream = c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: ex.id.clone(), decompress: true }, &t))
        .await?
        .into_inner();
    let mut raw = Vec::new();
    while let Some(piece) = stream.next().await {
        raw.extend(piece?.data);
    }
    assert_eq!(raw.len() as u64, ex.raw_bytes);
    assert!(raw.starts_with(b"PGDMP"));

    // Verification restore: restores into a temporary database and drops it.
    let v = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest { backup_id: ex.id.clone(), verification_mode: true, ..Default::default() },
            &t,
        ))
        .await?
        .into_inner();
    let v = c.wait_execution(&v.id, Duration::from_secs(120)).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}", v.error);
    assert!(v.target_database.starts_with("dg_verify_"));
    let mut admin = source.connect().await?;
    let left: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&v.target_database)
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(left.0, 0, "the verification database is dropped");

    // Cancel a running dump: a lock makes pg_dump wait, then the operator cancels it.
    let mut locker = source.connect().await?;
    locker.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await?;
    let run = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &t)).await?.into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e =
            c.executions.get_execution(authed(pb::GetExecutionRequest { id: run.id.clone() }, &t)).await?.into_inner();
        if e.status == pb::ExecutionStatus::Running as i32 && c.logs(&run.id).await?.contains("pg_dump") {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "dump never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: run.id.clone() }, &t)).await?;
    let cancelled = c.wait_execution(&run.id, Duration::from_secs(30)).await?;
    assert_eq!(cancelled.status, pb::ExecutionStatus::Cancelled as i32, "{}", cancelled.error);
    locker.execute("ROLLBACK").await?;
    let again = c.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: run.id.clone() }, &t)).await;
    assert_eq!(again.expect_err("already ended").code(), Code::FailedPrecondition);
    c.executions.delete_execution(authed(pb::DeleteExecutionRequest { id: run.id.clone() }, &t)).await?;
    let gone = c.executions.get_execution(authed(pb::GetExecutionRequest { id: run.id.clone() }, &t)).await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
    let keep = c.executions.delete_execution(authed(pb::DeleteExecutionRequest { id: ex.id.clone() }, &t)).await;
    assert_eq!(keep.expect_err("a backup is deleted through BackupService").code(), Code::FailedPrecondition);

    // Retries: a job whose database is missing fails twice (max_attempts 2), then stays failed.
    let (_, _, broken) = c.setup_pg_job(&agent.id, &dir, "dgt_missing_db", &pg_server()).await?;
    let upd = pb::UpdateBackupJobRequest {
        id: broken.id.clone(),
        retry: Some(pb::RetryPolicy { max_attempts: 2, backoff: Some(prost_types::Duration { seconds: 0, nanos: 0 }) }),
        ..Default::default()
    };
    c.jobs.update_backup_job(authed(upd, &t)).await?;
    let failed = c.run_job(&broken.id).await?;
    assert_eq!((failed.status, failed.attempt), (pb::ExecutionStatus::Failed as i32, 2), "{failed:?}");
    assert!(c.logs(&failed.id).await?.contains("attempt 2 of 2"));

    // Listing filters and pages.
    let page = c
        .executions
        .list_executions(authed(
            pb::ListExecutionsRequest { job_id: job.id.clone(), page_size: 1, ..Default::default() },
            &t,
        ))
        .await?
        .into_inner();
    assert_eq!(page.executions.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let rest = c
        .executions
        .list_executions(authed(
            pb::ListExecutionsRequest {
                job_id: job.id.clone(),
                page_size: 10,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    assert!(rest.executions.iter().all(|e| e.id != page.executions[0].id));
    let only_failed = c
        .executions
        .list_executions(authed(
            pb::ListExecutionsRequest { status: pb::ExecutionStatus::Failed as i32, ..Default::default() },
            &t,
        ))
        .await?
        .into_inner();
    assert!(
        only_failed.executions.iter().all(|e| e.status == pb::ExecutionStatus::Failed as i32)
            && !only_failed.executions.is_empty()
    );

    // Deletions and their preconditions.
    let refused = c
        .datasources
        .delete_datasource(authed(pb::DeleteDatasourceRequest { id: ds.id.clone(), force: false }, &t))
        .await;
    assert_eq!(refused.expect_err("jobs and backups").code(), Code::FailedPrecondition);
    let refused = c
        .datasources
        .delete_datasource(authed(pb::DeleteDatasourceRequest { id: ds.id.clone(), force: true }, &t))
        .await;
    assert!(refused.expect_err("backups").message().contains("backup"));
    let refused =
        c.storages.delete_storage(authed(pb::DeleteStorageRequest { id: storage.id.clone(), force: true }, &t)).await;
    assert_eq!(refused.expect_err("holds a copy").code(), Code::FailedPrecondition);
    let files_before = walk(&dir).len();
    let del = c.backups.delete_backup(authed(pb::DeleteBackupRequest { id: ex.id.clone() }, &t)).await?.into_inner();
    assert_eq!(del.deleted_objects, ex.chunk_count + 1, "chunks and manifest");
    assert_eq!(walk(&dir).len(), files_before - del.deleted_objects as usize);
    let gone = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &t)).await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
    let d = c
        .datasources
        .delete_datasource(authed(pb::DeleteDatasourceRequest { id: ds.id.clone(), force: true }, &t))
        .await?
        .into_inner();
    assert_eq!(d.deleted_jobs, 1);
    assert!(d.deleted_executions >= 1);
    let gone = c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: job.id.clone() }, &t)).await;
    assert_eq!(gone.expect_err("job deleted along").code(), Code::NotFound);
    c.storages.delete_storage(authed(pb::DeleteStorageRequest { id: storage.id.clone(), force: false }, &t)).await?;

    // Storage health recorded by the tests above; time filters on executions.
    let sh = health
        .get_storage_health(authed(pb::GetStorageHealthRequest { id: storage.id.clone(), history_size: 0 }, &t))
        .await;
    assert_eq!(sh.expect_err("the storage is deleted").code(), Code::NotFound);
    let future = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 };
    let later = c
        .executions
        .list_executions(authed(pb::ListExecutionsRequest { created_after: Some(future), ..Default::default() }, &t))
        .await?
        .into_inner();
    assert!(later.executions.is_empty());

    // System view.
    let sys = health.get_system_health(authed(pb::GetSystemHealthRequest {}, &t)).await?.into_inner();
    assert!(sys.postgres.expect("pg").ok);
    assert!(sys.redis.expect("redis").ok, "redis runs on this machine");
    assert_eq!((sys.connected_agents, sys.enrolled_agents), (1, 1));

    // A queued execution is cancelled at once when its agent is away.
    agent.stop().await;
    c.wait_agent_status(&cluster_agent_id(&c, &t).await?, pb::AgentStatus::Offline, Duration::from_secs(10)).await?;
    let queued_src = TestDb::create("queued").await?;
    let (_, _, job2) = c.setup_pg_job(&cluster_agent_id(&c, &t).await?, &dir, &queued_src.name, &pg_server()).await?;
    let q = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job2.id.clone() }, &t)).await?.into_inner();
    let q = c.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: q.id }, &t)).await?.into_inner();
    assert_eq!(q.status, pb::ExecutionStatus::Cancelled as i32);

    // Audit: mutations recorded with their outcome.
    let mut audit = pb::audit_service_client::AuditServiceClient::new(cluster.channel().await?);
    let events = audit
        .list_audit_events(authed(pb::ListAuditEventsRequest { page_size: 500, ..Default::default() }, &t))
        .await?
        .into_inner()
        .events;
    for action in [
        "datasource.update",
        "backup_job.update",
        "execution.cancel",
        "backup.delete",
        "datasource.delete",
        "storage.delete",
    ] {
        assert!(
            events.iter().any(|e| e.action == action && e.outcome == "ok" && e.actor == "admin"),
            "{action} not audited"
        );
    }
    assert!(
        events.iter().any(|e| e.action == "datasource.delete" && e.outcome.starts_with("error")),
        "refusals are audited too"
    );
    assert!(events.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    // Login rate limit: once the account's budget from this address is spent, even the right password from
    // here waits (the budget counts attempts before any password is hashed).
    let mut auth = pb::auth_service_client::AuthServiceClient::new(cluster.channel().await?);
    let mut refused = false;
    for _ in 0..=dg_controller::service::login_limit::ACCOUNT_BURST {
        let r = auth.login(pb::LoginRequest { username: "admin".into(), password: "wrong-password-x".into() }).await;
        match r.expect_err("wrong").code() {
            Code::Unauthenticated => {}
            Code::ResourceExhausted => refused = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused, "the budget ran out");
    let locked = auth.login(pb::LoginRequest { username: "admin".into(), password: ADMIN_PASSWORD.into() }).await;
    assert_eq!(locked.expect_err("rate limited").code(), Code::ResourceExhausted);

    cluster.stop().await;
    Ok(())
}

async fn cluster_agent_id(c: &dg_tests::cluster::Clients, t: &str) -> anyhow::Result<String> {
    let mut agents = c.agents.clone();
    let list = agents.list_agents(authed(pb::ListAgentsRequest::default(), t)).await?.into_inner();
    Ok(list.agents.first().map(|a| a.id.clone()).unwrap_or_default())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
