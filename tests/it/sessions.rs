//! The controller's session layer through its public interfaces: a cancel sent to a replica that does not
//! hold the agent's session is relayed to the one that does, and with the agent connected nowhere the
//! attempt is ended at once and says so; an object upload (`SendObject`) is accepted only from the agent the
//! read was sent to; a download that nobody reads holds back neither the agent's heartbeats nor its reports.

use std::time::Duration;

use dg_proto::v1::{self as pb, agent_message::Kind};
use dg_tests::{
    cluster::{Cluster, ClusterOptions, authed},
    fake_agent::{FakeAgent, chunk_for, exec_ref},
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::protocol::{WAIT, assigned, backup_prefix, job_for, run_now, status};

/// A second replica on the cluster's database and Redis, with ports of its own.
pub(crate) async fn second_replica(cluster: &Cluster) -> anyhow::Result<dg_controller::app::RunningController> {
    let mut cfg = cluster.config.clone();
    cfg.api_listen = "127.0.0.1:0".parse()?;
    cfg.agent_listen = "127.0.0.1:0".parse()?;
    let b = dg_controller::app::start(cfg).await?;
    // Both replicas' relay subscriptions are up before anything is relayed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_agent_through_the_replica_holding_its_session_or_ends_the_attempt_here()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut a = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut a).await?;
    let mut s = fake.connect(&[]).await?; // on replica A
    let (job, _) = job_for(&mut a, &cluster, &fake.id, 3).await?;
    let b_ctl = second_replica(&cluster).await?;
    let mut b = cluster.clients_at(b_ctl.api_addr).await?;

    // Queued and cancelled through B; the Cancel reaches the agent's session on A.
    let id = run_now(&mut b, &job).await?;
    let first = assigned(&mut s).await?;
    assert_eq!(first.execution_id, id);
    let asked = b.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: id.clone() }, &b.token)).await?;
    assert_eq!(asked.into_inner().status, pb::ExecutionStatus::Running as i32, "the agent is asked first");
    match s.next(WAIT).await? {
        pb::controller_message::Kind::Cancel(k) => assert_eq!(k.execution, Some(exec_ref(&first))),
        other => anyhow::bail!("expected the relayed Cancel, got {other:?}"),
    }
    s.send_numbered(
        Kind::Failed(pb::Failed { execution: Some(exec_ref(&first)), error: "cancelled".into(), cancelled: true }),
        1,
    )
    .await?;
    let done = b.wait_execution(&id, Duration::from_secs(10)).await?;
    let logs = b.logs(&id).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Cancelled as i32, "{}\n{logs}", done.error);
    assert_eq!(done.attempt, 1, "a cancellation is not retried");
    assert!(logs.contains("forwarded to the replica holding the agent's session"), "{logs}");

    // The agent connected nowhere: the cancel ends the attempt at once, and the execution's log says why.
    let id = run_now(&mut b, &job).await?;
    let second = assigned(&mut s).await?;
    assert_eq!(second.execution_id, id);
    s.close();
    a.wait_agent_status(&fake.id, pb::AgentStatus::Offline, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // its presence is cleared right after
    let ended = b.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: id.clone() }, &b.token)).await?;
    assert_eq!(ended.into_inner().status, pb::ExecutionStatus::Cancelled as i32, "ended without the agent");
    let logs = b.logs(&id).await?;
    assert!(logs.contains("the agent is not connected to any controller replica"), "{logs}");
    // When the agent comes back listing that attempt, it is told to drop it.
    let mut back = fake.connect(&[(second.execution_id.clone(), second.attempt)]).await?;
    back.drain(Duration::from_millis(700)).await?;
    assert_eq!(back.aborts.iter().map(|x| x.execution.clone()).collect::<Vec<_>>(), vec![Some(exec_ref(&second))]);
    assert_eq!(status(&mut a, &id).await?.status, pb::ExecutionStatus::Cancelled as i32);

    b_ctl.shutdown().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_upload_is_taken_only_from_the_agent_the_read_was_sent_to() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let other = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = fake.connect(&[]).await?;
    let (job, storage) = job_for(&mut c, &cluster, &fake.id, 1).await?;

    // A one-chunk backup on the fake agent's local storage.
    let data = b"object bytes that only the fake agent holds".to_vec();
    let sha = hex::encode(Sha256::digest(&data));
    let id = run_now(&mut c, &job).await?;
    let a = assigned(&mut s).await?;
    s.send(chunk_for(&a, &storage, 0, &data)).await?;
    s.send(Kind::Completed(pb::Completed {
        execution: Some(exec_ref(&a)),
        result: Some(pb::completed::Result::Backup(pb::BackupResult {
            raw_bytes: data.len() as u64,
            stored_bytes: data.len() as u64,
            chunk_count: 1,
            sha256: sha.clone(),
            manifest_key: dg_common::manifest::manifest_key(&backup_prefix(&a)),
            storage_ids: vec![storage.clone()],
            tool_version: "fake".into(),
            server_version: "15".into(),
            warnings: vec![],
            encryption_key_id: String::new(),
            ..Default::default()
        })),
    }))
    .await?;
    assert_eq!(c.wait_execution(&id, WAIT).await?.status, pb::ExecutionStatus::Completed as i32);

    // A download reads the chunk through the agent that holds the storage.
    let mut backups = c.backups.clone();
    let token = c.token.clone();
    let download = tokio::spawn(async move {
        let mut stream = backups
            .download_backup(authed(pb::DownloadBackupRequest { id, decompress: false }, &token))
            .await?
            .into_inner();
        let mut got = Vec::new();
        while let Some(piece) = stream.next().await {
            got.extend(piece?.data);
        }
        anyhow::Ok(got)
    });
    let read = s.next_request(WAIT).await?;
    let Some(pb::agent_request::Kind::ReadObject(r)) = &read.kind else { anyhow::bail!("a read, got {read:?}") };
    assert_eq!(r.key, dg_common::manifest::chunk_key(&backup_prefix(&a), 0));
    let piece = |request_id: &str, data: &[u8]| pb::ObjectChunk { request_id: request_id.into(), data: data.to_vec() };

    // Another agent's upload for this read, an unknown read, and a first message without a read are refused.
    let code = |r: Result<pb::SendObjectResponse, tonic::Status>| r.map(|_| ()).map_err(|e| e.code());
    let stolen = other.send_object(vec![piece(&read.request_id, b"forged")]).await?;
    assert_eq!(code(stolen), Err(Code::PermissionDenied));
    let unknown = fake.send_object(vec![piece(&uuid::Uuid::new_v4().to_string(), b"x")]).await?;
    assert_eq!(code(unknown), Err(Code::NotFound));
    let anonymous = fake.send_object(vec![piece("", b"x")]).await?;
    assert_eq!(code(anonymous), Err(Code::InvalidArgument));

    // The agent's own upload, in pieces after the naming message; a second upload of the same read is refused.
    let (head, tail) = data.split_at(10);
    let sent = fake.send_object(vec![piece(&read.request_id, b""), piece("", head), piece("", tail)]).await?;
    assert_eq!(sent?.received_bytes, data.len() as u64);
    let again = fake.send_object(vec![piece(&read.request_id, b"more")]).await?;
    assert_eq!(code(again), Err(Code::FailedPrecondition));
    s.respond(pb::AgentResponse {
        request_id: read.request_id.clone(),
        error: String::new(),
        kind: Some(pb::agent_response::Kind::ReadBytes(data.len() as u64)),
    })
    .await?;
    let got = tokio::time::timeout(WAIT, download).await???;
    assert_eq!(hex::encode(Sha256::digest(&got)), sha, "the download is the agent's upload, checked");

    cluster.stop().await;
    Ok(())
}

/// The real agent with a multi-MiB backup on its local storage: a download nobody reads for longer than the
/// lease leaves the agent online, and a backup it runs meanwhile completes (its heartbeats and reports flow);
/// read afterwards, the download is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_holds_back_neither_heartbeats_nor_reports_of_its_agent() -> anyhow::Result<()> {
    use sqlx::Executor as _;
    let src = dg_tests::pg::TestDb::create("stall").await?;
    src.connect()
        .await?
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 150000) g",
        )
        .await?;
    let lease = Duration::from_secs(6);
    let opts = ClusterOptions { lease_secs: Some(lease.as_secs()), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("stall");
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &dg_tests::pg_server()).await?;
    let big = c.run_job(&job.id).await?;
    assert_eq!(big.status, pb::ExecutionStatus::Completed as i32, "{}", big.error);
    assert!(big.stored_bytes > 4 << 20, "several chunks of 1 MiB: {}", big.stored_bytes);

    // Open the download, take its first piece, then stop reading.
    let mut stream = c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: big.id.clone(), decompress: false }, &c.token))
        .await?
        .into_inner();
    let mut got = tokio::time::timeout(WAIT, stream.next()).await?.ok_or_else(|| anyhow::anyhow!("empty"))??.data;

    // Meanwhile the agent runs a backup to completion and stays online, past the lease.
    let stalled_since = tokio::time::Instant::now();
    let during = c.run_job(&job.id).await?;
    assert_eq!(during.status, pb::ExecutionStatus::Completed as i32, "{}", during.error);
    assert_eq!(during.attempt, 1, "not reaped and retried");
    tokio::time::sleep((lease + Duration::from_secs(4)).saturating_sub(stalled_since.elapsed())).await;
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(a.status, pb::AgentStatus::Online as i32, "heartbeats kept coming");

    // The download resumes and is whole.
    while let Some(piece) = tokio::time::timeout(WAIT, stream.next()).await? {
        got.extend(piece?.data);
    }
    assert_eq!(got.len() as u64, big.stored_bytes);
    assert_eq!(hex::encode(Sha256::digest(&got)), big.sha256);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
