//! The agent protocol under misbehaving peers, driven by the scripted fake agent over real mTLS: reports that
//! do not fit the plan end the attempt (wrong operation, wrong key, conflicting seq, wrong manifest key); stale
//! attempts and other agents' reports change nothing; an attempt missing from the heartbeats is ended and
//! retried per the job's policy; a cancellation the agent never confirms still ends `cancelled`; a reconnect
//! that lists the attempt keeps it running; a well-formed backup completes.

use std::time::Duration;

use dg_proto::v1::{self as pb, agent_message::Kind};
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    fake_agent::{FakeAgent, FakeSession, chunk_for, exec_ref},
    suffix,
};
use sha2::{Digest, Sha256};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn status(c: &mut Clients, id: &str) -> anyhow::Result<pb::Execution> {
    Ok(c.executions.get_execution(authed(pb::GetExecutionRequest { id: id.into() }, &c.token)).await?.into_inner())
}

/// A job on a local storage of `agent` and a datasource bound to it, with `max_attempts`.
pub(crate) async fn job_for(
    c: &mut Clients,
    cluster: &Cluster,
    agent: &str,
    max_attempts: u32,
) -> anyhow::Result<(String, String)> {
    let storage = c.local_storage(agent, &cluster.dir.path().join(format!("s-{}", suffix()))).await?;
    let ds = c.datasource(pb::Engine::Postgres, agent, "postgres").await?;
    let req = pb::CreateBackupJobRequest {
        name: format!("job-{}", suffix()),
        datasource_id: ds.id,
        storage_ids: vec![storage.id.clone()],
        retry: Some(pb::RetryPolicy { max_attempts, backoff: Some(prost_types::Duration { seconds: 0, nanos: 0 }) }),
        ..Default::default()
    };
    let job = c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner();
    Ok((job.id, storage.id))
}

pub(crate) async fn run_now(c: &mut Clients, job: &str) -> anyhow::Result<String> {
    Ok(c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.into() }, &c.token)).await?.into_inner().id)
}

/// Waits for an assignment while heartbeating with `listed` (the assignment itself is listed once it arrives).
pub(crate) async fn assigned(s: &mut FakeSession) -> anyhow::Result<pb::Assign> {
    let a = s.next_assign(WAIT).await?;
    s.heartbeat(&[(a.execution_id.clone(), a.attempt)]).await?;
    Ok(a)
}

pub(crate) fn backup_prefix(a: &pb::Assign) -> String {
    match &a.task {
        Some(pb::assign::Task::Backup(b)) => b.key_prefix.clone(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_that_do_not_fit_the_plan_end_the_attempt_and_strangers_change_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let other = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = fake.connect(&[]).await?;
    // A Hello that lists an attempt this agent does not run on the controller gets it aborted at once.
    let ghost = (uuid::Uuid::now_v7().to_string(), 1);
    let mut haunted = other.connect(std::slice::from_ref(&ghost)).await?;
    haunted.drain(Duration::from_millis(500)).await?;
    assert_eq!(
        haunted
            .aborts
            .iter()
            .filter_map(|x| x.execution.as_ref().map(|e| (e.execution_id.clone(), e.attempt)))
            .collect::<Vec<_>>(),
        vec![ghost]
    );
    drop(haunted);
    let stranger = other.connect(&[]).await?;
    let (job, storage) = job_for(&mut c, &cluster, &fake.id, 1).await?;

    // A restore result for a backup.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    assert_eq!(a.execution_id, id);
    s.send(Kind::Completed(pb::Completed {
        execution: Some(exec_ref(&a)),
        result: Some(pb::completed::Result::Restore(pb::RestoreResult {
            raw_bytes: 1,
            tool_version: "x".into(),
            observed: None,
        })),
    }))
    .await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("a restore result for a backup execution"), "{}", ex.error);

    // The same chunk twice is fine; the same seq with other contents ends the attempt.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    s.send(chunk_for(&a, &storage, 0, b"first")).await?;
    s.send(chunk_for(&a, &storage, 0, b"first")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&mut c, &id).await?.status, pb::ExecutionStatus::Running as i32, "a resend is idempotent");
    s.send(chunk_for(&a, &storage, 0, b"other")).await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("reported twice with different contents"), "{}", ex.error);

    // A key outside the plan.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    let Kind::ChunkReported(mut bad) = chunk_for(&a, &storage, 0, b"x") else { unreachable!() };
    bad.key = format!("{}/../../elsewhere.zst", backup_prefix(&a));
    s.send(Kind::ChunkReported(bad)).await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("chunk_reported.key: must be a relative object key"), "{}", ex.error);
    // A well-formed key of another attempt's layout is refused against the plan.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    let Kind::ChunkReported(mut bad) = chunk_for(&a, &storage, 0, b"x") else { unreachable!() };
    bad.key = dg_common::manifest::chunk_key(&format!("{}9", backup_prefix(&a)), 0);
    s.send(Kind::ChunkReported(bad)).await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert!(ex.error.contains("the plan says"), "{}", ex.error);
    assert_eq!(
        c.backups
            .get_backup(authed(pb::GetBackupRequest { id: id.clone() }, &c.token))
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err(tonic::Code::NotFound),
        "nothing of it is a backup"
    );

    // Stale attempts and other agents' reports change nothing; a wrong manifest key ends the attempt.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    let mut stale = a.clone();
    stale.attempt += 7;
    s.send(Kind::Failed(pb::Failed { execution: Some(exec_ref(&stale)), error: "stale".into(), cancelled: false }))
        .await?;
    stranger
        .send(Kind::Failed(pb::Failed { execution: Some(exec_ref(&a)), error: "not mine".into(), cancelled: false }))
        .await?;
    stranger.send(chunk_for(&a, &storage, 0, b"x")).await?;
    s.drain(Duration::from_millis(700)).await?;
    let mut stranger = stranger;
    stranger.drain(Duration::from_millis(300)).await?;
    let ex = status(&mut c, &id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Running as i32, "stale and foreign reports are ignored: {}", ex.error);
    // ... and answered with an Abort of the attempt they name, so a zombie stops.
    assert!(s.aborts.iter().any(|x| x.execution == Some(exec_ref(&stale))), "{:?}", s.aborts);
    assert!(stranger.aborts.iter().any(|x| x.execution == Some(exec_ref(&a))), "{:?}", stranger.aborts);
    assert!(!s.aborts.iter().any(|x| x.execution == Some(exec_ref(&a))), "the live attempt is not aborted");
    // A numbered report is acknowledged once it is recorded; a resend of it is acknowledged again.
    s.send_numbered(chunk_for(&a, &storage, 0, b"data"), 41).await?;
    s.send_numbered(chunk_for(&a, &storage, 0, b"data"), 41).await?;
    // Both acknowledgements, however busy the machine (a loaded one answers the second late).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.acks.len() < 2 && std::time::Instant::now() < deadline {
        s.drain(Duration::from_millis(200)).await?;
    }
    s.drain(Duration::from_millis(300)).await?;
    let acks: Vec<(u64, bool)> = s.acks.iter().map(|k| (k.report_seq, k.retry_later)).collect();
    assert_eq!(acks, vec![(41, false), (41, false)]);
    s.send(chunk_for(&a, &storage, 0, b"data")).await?;
    let sha = hex::encode(Sha256::digest(b"data"));
    let result = |manifest_key: String| {
        Kind::Completed(pb::Completed {
            execution: Some(exec_ref(&a)),
            result: Some(pb::completed::Result::Backup(pb::BackupResult {
                raw_bytes: 4,
                stored_bytes: 4,
                chunk_count: 1,
                sha256: sha.clone(),
                manifest_key,
                storage_ids: vec![storage.clone()],
                tool_version: "fake".into(),
                server_version: "15".into(),
                warnings: vec![],
                encryption_key_id: String::new(),
                ..Default::default()
            })),
        })
    };
    s.send(result("somewhere/else/manifest.json".into())).await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("manifest key"), "{}", ex.error);

    // A backup that fits its plan completes and is listed.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    s.send(chunk_for(&a, &storage, 0, b"data")).await?;
    let good = match result(String::new()) {
        Kind::Completed(mut done) => {
            done.execution = Some(exec_ref(&a));
            if let Some(pb::completed::Result::Backup(b)) = done.result.as_mut() {
                b.manifest_key = dg_common::manifest::manifest_key(&backup_prefix(&a));
            }
            Kind::Completed(done)
        }
        other => other,
    };
    s.send(good).await?;
    let ex = c.wait_execution(&id, WAIT).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let backups = c.backups.list_backups(authed(pb::ListBackupsRequest::default(), &c.token)).await?.into_inner();
    assert_eq!(backups.backups.iter().map(|b| b.id.clone()).collect::<Vec<_>>(), vec![id.clone()], "only the good one");

    // A backup that a restore reads cannot be deleted; a backup whose deletion started cannot be restored.
    let restore = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: id.clone(),
                target_database: "dgt_scratch".into(),
                confirm_target_database: "dgt_scratch".into(),
                create_database: true,
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    let r = assigned(&mut s).await?;
    assert_eq!(r.execution_id, restore.id);
    let refused = c.backups.delete_backup(authed(pb::DeleteBackupRequest { id: id.clone() }, &c.token)).await;
    assert_eq!(refused.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::FailedPrecondition), "in use by a restore");
    s.send(Kind::Completed(pb::Completed {
        execution: Some(exec_ref(&r)),
        result: Some(pb::completed::Result::Restore(pb::RestoreResult {
            raw_bytes: 4,
            tool_version: "fake".into(),
            observed: None,
        })),
    }))
    .await?;
    assert_eq!(c.wait_execution(&restore.id, WAIT).await?.status, pb::ExecutionStatus::Completed as i32);
    // The fake agent refuses the object deletion, so the deletion stops part-way with the backup marked.
    let mut deleter = c.backups.clone();
    let delete = deleter.delete_backup(authed(pb::DeleteBackupRequest { id: id.clone() }, &c.token));
    // The fake answers the DeleteObjects request (with an error) while it reads its session.
    let (stopped, _) = tokio::join!(delete, s.next(Duration::from_secs(3)));
    assert_eq!(stopped.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::Unavailable));
    let again = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest { backup_id: id.clone(), verification_mode: true, ..Default::default() },
            &c.token,
        ))
        .await;
    assert_eq!(again.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::FailedPrecondition), "being deleted");

    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_the_agent_does_not_run_is_ended_and_retried_and_a_cancel_holds() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = fake.connect(&[]).await?;
    let (job, _) = job_for(&mut c, &cluster, &fake.id, 2).await?;

    // The agent takes the assignment but never lists it (a lost Completed, a crash of the attempt…): it is
    // ended after the grace and retried; the second attempt is ended the same way and fails for good.
    let id = run_now(&mut c, &job).await?;
    let first = s.next_assign(WAIT).await?;
    assert_eq!((first.execution_id.as_str(), first.attempt), (id.as_str(), 1));
    let second = assign_while_heartbeating(&mut s, &[], Duration::from_secs(30)).await?;
    assert_eq!((second.execution_id.as_str(), second.attempt), (id.as_str(), 2), "retried per policy");
    let heartbeat_nothing = async {
        loop {
            let _ = s.heartbeat(&[]).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let ex = tokio::select! {
        _ = heartbeat_nothing => unreachable!(),
        ex = c.wait_execution(&id, Duration::from_secs(40)) => ex?,
    };
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("not running this attempt"), "{}", ex.error);
    assert!(c.logs(&id).await?.contains("attempt 2 of 2"), "the retry is logged");

    // A cancellation the agent never confirms: the attempt still ends `cancelled`, not retried, once the agent
    // stops listing it.
    let mut s = fake.connect(&[]).await?;
    let (job, _) = job_for(&mut c, &cluster, &fake.id, 3).await?;
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    let cancelled =
        c.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: id.clone() }, &c.token)).await?;
    assert_eq!(cancelled.into_inner().status, pb::ExecutionStatus::Running as i32, "the agent is asked first");
    match s.next(WAIT).await? {
        pb::controller_message::Kind::Cancel(k) => {
            assert_eq!(k.execution.map(|e| e.attempt), Some(a.attempt))
        }
        other => anyhow::bail!("expected Cancel, got {other:?}"),
    }
    let ex = loop {
        s.heartbeat(&[]).await?;
        let ex = status(&mut c, &id).await?;
        if ex.status != pb::ExecutionStatus::Running as i32 {
            break ex;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(ex.status, pb::ExecutionStatus::Cancelled as i32, "{}", ex.error);

    // A short disconnect: the agent reconnects and lists its attempt in Hello; the attempt keeps running.
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    s.close();
    let s = fake.connect(&[(a.execution_id.clone(), a.attempt)]).await?;
    for _ in 0..12 {
        s.heartbeat(&[(a.execution_id.clone(), a.attempt)]).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status(&mut c, &id).await?.status, pb::ExecutionStatus::Running as i32, "kept through a reconnect");
    // The agent-reported failure goes through the same ending path: attempt 2 is queued (policy 3).
    s.send(Kind::Failed(pb::Failed { execution: Some(exec_ref(&a)), error: "pg_dump died".into(), cancelled: false }))
        .await?;
    let mut s = s;
    let again = assign_while_heartbeating(&mut s, &[], WAIT).await?;
    assert_eq!((again.execution_id.as_str(), again.attempt), (id.as_str(), 2));
    assert!(c.logs(&id).await?.contains("attempt 1 ended: pg_dump died"), "{}", c.logs(&id).await?);
    cluster.stop().await;
    Ok(())
}

/// Heartbeats with `listed` every half second until an assignment arrives.
async fn assign_while_heartbeating(
    s: &mut FakeSession,
    listed: &[(String, u32)],
    limit: Duration,
) -> anyhow::Result<pb::Assign> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        s.heartbeat(listed).await?;
        match s.next(Duration::from_millis(500)).await {
            Ok(pb::controller_message::Kind::Assign(a)) => return Ok(a),
            Ok(other) => anyhow::bail!("expected Assign, got {other:?}"),
            Err(e) if e.to_string().starts_with("no controller message") => {}
            Err(e) => return Err(e),
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no assignment within {limit:?}");
    }
}

/// The real agent through a controller restart in the middle of a backup: the agent keeps the attempt
/// running, lists it in its next Hello, sends again what was not acknowledged, writes the manifest once every
/// chunk is acknowledged, and the backup completes at attempt 1 and restores identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_mid_backup_finishes_the_backup_at_attempt_one() -> anyhow::Result<()> {
    use sqlx::Executor as _;
    let src = dg_tests::pg::TestDb::create("restart").await?;
    src.connect()
        .await?
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 400000) g",
        )
        .await?;
    let before = src.table_fingerprint("t").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("restart");
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &dg_tests::pg_server()).await?;
    let id = run_now(&mut c, &job.id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ex = status(&mut c, &id).await?;
        if ex.chunk_count >= 1 {
            break;
        }
        anyhow::ensure!(ex.status != pb::ExecutionStatus::Completed as i32, "finished before the restart");
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no chunk recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut config = cluster.config.clone();
    config.api_listen = cluster.api_addr;
    config.agent_listen = cluster.agent_addr;
    cluster.stop().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.controller = Some(dg_controller::app::start(config).await?);
    let mut c = cluster.clients().await?;
    let ex = c.wait_execution(&id, Duration::from_secs(120)).await?;
    let logs = c.logs(&id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", ex.error);
    assert_eq!(ex.attempt, 1, "not retried: the attempt survived the restart\n{logs}");
    let dst = dg_tests::pg::TestDb::reserve("restart_dst");
    let r = c.restore_into(&id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, before);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// Dropped reports: the controller's database fails the first chunk insert and the first commit of the
/// backup (triggers on its own tables). Each report is answered "retry later", sent again by the agent, and
/// the backup completes at attempt 1, restorable, instead of staying `running` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_database_could_not_record_is_sent_again_not_lost() -> anyhow::Result<()> {
    use sqlx::Executor as _;
    let src = dg_tests::pg::TestDb::create("dropped").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
        .await?;
    let before = src.table_fingerprint("t").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    // Sequences are not transactional, so "fail the first time" survives the failing statement's rollback.
    cluster
        .db
        .connect()
        .await?
        .execute(
            "CREATE SEQUENCE fault_chunk; CREATE SEQUENCE fault_commit;
             CREATE FUNCTION fail_first_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF nextval('fault_chunk') = 1 THEN RAISE EXCEPTION 'injected: chunk insert lost'; END IF;
               RETURN NEW; END $$;
             CREATE FUNCTION fail_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.status = 'completed' AND nextval('fault_commit') = 1 THEN
                 RAISE EXCEPTION 'injected: commit lost'; END IF;
               RETURN NEW; END $$;
             CREATE TRIGGER fail_chunk BEFORE INSERT ON backup_chunk FOR EACH ROW EXECUTE FUNCTION fail_first_chunk();
             CREATE TRIGGER fail_commit BEFORE UPDATE ON execution FOR EACH ROW EXECUTE FUNCTION fail_first_commit();",
        )
        .await?;
    let (_, _, job) =
        c.setup_pg_job(&agent.id, &cluster.dir.path().join("d"), &src.name, &dg_tests::pg_server()).await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", ex.error, c.logs(&ex.id).await?);
    assert_eq!(ex.attempt, 1, "the lost reports were sent again, not retried as a new attempt");
    let faults: (i64, i64) =
        sqlx::query_as("SELECT (SELECT last_value FROM fault_chunk), (SELECT last_value FROM fault_commit)")
            .fetch_one(&mut cluster.db.connect().await?)
            .await?;
    assert!(faults.0 >= 2 && faults.1 >= 2, "both faults fired and were retried: {faults:?}");
    let dst = dg_tests::pg::TestDb::reserve("dropped_dst");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, before);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// Objects of an ended attempt are swept after the grace period on every round until its prefix is empty,
/// whoever wrote them and whenever (a zombie agent's late chunk included); a completed backup in the same
/// storage is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_attempts_prefix_is_swept_until_empty_and_backups_stay() -> anyhow::Result<()> {
    use sqlx::Executor as _;
    let src = dg_tests::pg::TestDb::create("sweep").await?;
    src.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await?;
    let opts = dg_tests::cluster::ClusterOptions { orphan_grace_secs: Some(3), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("sweep");
    let (_, _, good) = c.setup_pg_job(&agent.id, &dir, &src.name, &dg_tests::pg_server()).await?;
    let kept = c.run_job(&good.id).await?;
    assert_eq!(kept.status, pb::ExecutionStatus::Completed as i32, "{}", kept.error);
    let (ds, _, bad) = c.setup_pg_job(&agent.id, &dir, "dgt_no_such_database", &dg_tests::pg_server()).await?;
    let failed = c.run_job(&bad.id).await?;
    assert_eq!(failed.status, pb::ExecutionStatus::Failed as i32);
    // A zombie of the failed attempt writes a chunk late, where its layout says.
    let late = dir.join(format!("{}/{}/1", ds.id, failed.id));
    std::fs::create_dir_all(&late)?;
    std::fs::write(late.join("00000003.zst"), b"late write")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while late.join("00000003.zst").exists() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the late write was never swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several rounds later the completed backup is whole and restores.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dst = dg_tests::pg::TestDb::reserve("sweep_dst");
    let r = c.restore_into(&kept.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
