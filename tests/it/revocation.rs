//! Revocation everywhere, through the public interfaces with the scripted fake agent over real mTLS and two
//! controller replicas on one database: an agent revoked through the replica that does not hold its session
//! is cut off on the one that does at once (Redis broadcast), or at its next heartbeat while Redis is down
//! (PostgreSQL check), or at a result it reports before then (not recorded; the attempts it ran ended at
//! the revocation, saying so); it cannot come back, nothing is assigned to it, and queued work of its
//! datasource waits saying why (once) until the datasource is bound to another agent, which then runs it.
//! A certificate superseded by a renewal opens no session and renews nothing, and a session it opened ends
//! at its next heartbeat, while the new certificate works.

use std::time::{Duration, Instant};

use dg_proto::v1::{self as pb, controller_message::Kind};
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    fake_agent::{FakeAgent, FakeSession},
    suffix,
};
use tonic::Code;

use crate::{
    protocol::{WAIT, run_now, status},
    sessions::second_replica,
    workers::PrivateRedis,
};

/// The cluster's heartbeat interval (`Cluster::start_with`).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Slack over one heartbeat interval for the controller to act.
const SLACK: Duration = Duration::from_secs(1);
/// What a queued execution's log says while its datasource's agent is revoked.
const WAITING: &str = "is revoked; waiting for the datasource to be bound to another agent";

/// Reads the session as a live agent would, heartbeating once per interval, until the controller ends it:
/// how long that took from the call, and the status the stream ended with. An `Assign` meanwhile fails.
async fn heartbeat_until_closed(s: &mut FakeSession, limit: Duration) -> anyhow::Result<(Duration, Option<Code>)> {
    let started = Instant::now();
    loop {
        anyhow::ensure!(started.elapsed() < limit, "the session is still open after {limit:?}");
        match s.next(HEARTBEAT).await {
            Ok(Kind::Assign(a)) => anyhow::bail!("assigned to a revoked agent: {}", a.execution_id),
            Ok(_) => {}
            Err(e) if e.to_string().starts_with("no controller message") => {}
            Err(e) => return Ok((started.elapsed(), e.downcast_ref::<tonic::Status>().map(tonic::Status::code))),
        }
        if s.heartbeat(&[]).await.is_err() {
            return Ok((started.elapsed(), None));
        }
    }
}

/// The status code a refused connection attempt ended with.
fn refusal(r: anyhow::Result<FakeSession>) -> anyhow::Result<Code> {
    match r {
        Ok(_) => anyhow::bail!("the session was accepted"),
        Err(e) => e.downcast_ref::<tonic::Status>().map(tonic::Status::code).ok_or(e),
    }
}

/// A job on a datasource bound to `agent`, over an S3 storage that any agent can reach (nothing is ever
/// uploaded: the fake agent only receives the assignment).
async fn job_for_any_agent(c: &mut Clients, agent: &str) -> anyhow::Result<(String, String)> {
    let s3 = pb::S3StorageConfig {
        endpoint: "http://127.0.0.1:9".into(),
        region: "us-east-1".into(),
        bucket: "backups".into(),
        path_style: true,
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        allow_http: true,
        ..Default::default()
    };
    let req = pb::CreateStorageRequest {
        name: format!("s3-{}", suffix()),
        config: Some(pb::create_storage_request::Config::S3(s3)),
        ..Default::default()
    };
    let storage = c.storages.create_storage(authed(req, &c.token)).await?.into_inner();
    let ds = c.datasource(pb::Engine::Postgres, agent, "postgres").await?;
    let req = pb::CreateBackupJobRequest {
        name: format!("job-{}", suffix()),
        datasource_id: ds.id.clone(),
        storage_ids: vec![storage.id],
        retry: Some(pb::RetryPolicy { max_attempts: 1, backoff: Some(prost_types::Duration { seconds: 0, nanos: 0 }) }),
        ..Default::default()
    };
    Ok((c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner().id, ds.id))
}

/// Queued work of a revoked agent's datasource stays queued (past several dispatch rounds) and its log says
/// why exactly once.
async fn waits_with_the_reason(c: &mut Clients, id: &str, agent: &str) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status(c, id).await?.status, pb::ExecutionStatus::Queued as i32, "never dispatched");
    let logs = c.logs(id).await?;
    assert_eq!(logs.matches(WAITING).count(), 1, "said once, not every round:\n{logs}");
    assert!(logs.contains(&format!("agent {agent} {WAITING}")), "{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_revoked_through_another_replica_is_cut_off_at_once_and_its_work_follows_the_datasource()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut a = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut a).await?;
    let other = FakeAgent::enroll(&cluster, &mut a).await?;
    let (job, ds) = job_for_any_agent(&mut a, &fake.id).await?;
    let mut s = fake.connect(&[]).await?; // on replica A
    let b_ctl = second_replica(&cluster).await?;
    let mut b = cluster.clients_at(b_ctl.api_addr).await?;

    // Revoked through B: the stream on A ends at once (the broadcast), well before a heartbeat is due.
    b.agents.revoke_agent(authed(pb::RevokeAgentRequest { id: fake.id.clone() }, &b.token)).await?;
    let (took, code) = heartbeat_until_closed(&mut s, HEARTBEAT + SLACK).await?;
    assert!(took < HEARTBEAT, "closed by the broadcast, not at a heartbeat: {took:?}");
    assert_eq!(code, Some(Code::Unauthenticated), "the agent is told why");
    let got = a.agents.get_agent(authed(pb::GetAgentRequest { id: fake.id.clone() }, &a.token)).await?.into_inner();
    assert_eq!(got.status, pb::AgentStatus::Revoked as i32);
    assert_eq!(refusal(fake.connect(&[]).await)?, Code::Unauthenticated, "it cannot come back");
    let renewal = fake.renew(&cluster).await?.err().map(|s| s.code());
    assert_eq!(renewal, Some(Code::Unauthenticated), "nor renew");

    // RunNow on B: nothing reaches the revoked agent; the execution waits and says why.
    let id = run_now(&mut b, &job).await?;
    waits_with_the_reason(&mut b, &id, &fake.id).await?;

    // The datasource is bound to another agent (through B): the queued execution follows it.
    let mut t = other.connect(&[]).await?; // on replica A too
    // (Another agent receives the password: it must be given again.)
    let upd = pb::UpdateDatasourceRequest {
        id: ds.clone(),
        agent_id: Some(other.id.clone()),
        password: Some(dg_tests::pg_server().password),
        ..Default::default()
    };
    b.datasources.update_datasource(authed(upd, &b.token)).await?;
    let assign = t.next_assign(WAIT).await?;
    assert_eq!(assign.execution_id, id, "the queued execution went to the datasource's current agent");
    let ex = status(&mut b, &id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Running as i32);
    assert_eq!(ex.agent_id, other.id, "recorded as run by the agent it was claimed for");

    b_ctl.shutdown().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_revocation_through_another_replica_still_ends_the_session_within_a_heartbeat()
-> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut redis = PrivateRedis::start(port).await?;
    let opts = ClusterOptions { redis_url: Some(format!("redis://127.0.0.1:{port}")), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let mut a = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut a).await?;
    let (job, _) = job_for_any_agent(&mut a, &fake.id).await?;
    let mut s = fake.connect(&[]).await?; // on replica A
    let b_ctl = second_replica(&cluster).await?;
    let mut b = cluster.clients_at(b_ctl.api_addr).await?;

    // The agent runs a backup.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = run_now(&mut a, &job).await?;
    let assign = s.next_assign(WAIT).await?;
    assert_eq!(assign.execution_id, running);
    let listed = [(assign.execution_id.clone(), assign.attempt)];

    // Redis goes away; the agent heartbeats as usual, and is revoked through B right after a heartbeat.
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.heartbeat(&listed).await?;
    b.agents.revoke_agent(authed(pb::RevokeAgentRequest { id: fake.id.clone() }, &b.token)).await?;
    let (took, code) = heartbeat_until_closed(&mut s, HEARTBEAT + SLACK).await?;
    assert!(took <= HEARTBEAT + SLACK, "{took:?}");
    assert_eq!(code, Some(Code::Unauthenticated), "ended at its next heartbeat, saying why");
    assert_eq!(refusal(fake.connect(&[]).await)?, Code::Unauthenticated);

    // Redis returns: RunNow on B never reaches the revoked agent; the execution waits and says why.
    let _redis = PrivateRedis::start(port).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        match b.jobs.run_now(authed(pb::RunNowRequest { job_id: job.clone() }, &b.token)).await {
            Ok(ex) => break ex.into_inner().id,
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    waits_with_the_reason(&mut b, &id, &fake.id).await?;
    // The attempt the agent was running ended at the revocation, saying why (one attempt allowed: failed).
    let ended = status(&mut b, &running).await?;
    assert_eq!(ended.status, pb::ExecutionStatus::Failed as i32);
    assert!(ended.error.contains("revoked"), "{}", ended.error);

    b_ctl.shutdown().await;
    cluster.stop().await;
    Ok(())
}

/// A result reported after the revocation, before the next heartbeat (Redis down, so no broadcast closed the
/// session), is not recorded nor even acknowledged: the session ends there. The attempt itself was ended by
/// the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_revoked_agent_cannot_complete_the_attempt_it_runs() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut redis = PrivateRedis::start(port).await?;
    let opts = ClusterOptions { redis_url: Some(format!("redis://127.0.0.1:{port}")), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let mut a = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut a).await?;
    let (job, _) = job_for_any_agent(&mut a, &fake.id).await?;
    let mut s = fake.connect(&[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = run_now(&mut a, &job).await?;
    let assign = s.next_assign(WAIT).await?;
    s.heartbeat(&[(assign.execution_id.clone(), assign.attempt)]).await?;
    let b_ctl = second_replica(&cluster).await?;
    let mut b = cluster.clients_at(b_ctl.api_addr).await?;

    // Revoked through B while Redis is down: A does not hear of it until the session's next heartbeat.
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.heartbeat(&[(assign.execution_id.clone(), assign.attempt)]).await?;
    b.agents.revoke_agent(authed(pb::RevokeAgentRequest { id: fake.id.clone() }, &b.token)).await?;
    let completed = pb::Completed {
        execution: Some(dg_tests::fake_agent::exec_ref(&assign)),
        result: Some(pb::completed::Result::Backup(pb::BackupResult { chunk_count: 0, ..Default::default() })),
    };
    // On a loaded machine A may handle the heartbeat above only after the revocation, and end the session
    // then: the result cannot even be sent. Either way the session ends UNAUTHENTICATED and the result is
    // neither acknowledged nor applied.
    let sent = s.send_numbered(pb::agent_message::Kind::Completed(completed), 1).await.is_ok();
    let started = Instant::now();
    let ended = loop {
        match s.next(SLACK).await {
            Ok(other) => anyhow::ensure!(started.elapsed() < SLACK, "still open, got {other:?}"),
            Err(e) => break e.downcast_ref::<tonic::Status>().map(tonic::Status::code),
        }
    };
    assert_eq!(ended, Some(Code::Unauthenticated), "the session ends at the result (sent: {sent})");
    assert!(s.acks.is_empty(), "the result was not acknowledged: {:?}", s.acks);
    let ex = status(&mut a, &id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32, "ended by the revocation, not completed");
    assert!(ex.error.contains("revoked"), "{}", ex.error);

    b_ctl.shutdown().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_superseded_by_a_renewal_is_refused_and_its_open_session_ends_at_the_next_heartbeat()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let old = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = old.connect(&[]).await?;

    // Renewed while connected (as the agent does two thirds into the certificate's life).
    let new = old.renew(&cluster).await?.map_err(|e| anyhow::anyhow!("renewal refused: {e}"))?;
    assert_eq!(new.id, old.id);

    // The superseded certificate opens no session and renews nothing.
    assert_eq!(refusal(old.connect(&[]).await)?, Code::PermissionDenied);
    let again = old.renew(&cluster).await?.err().map(|s| s.code());
    assert_eq!(again, Some(Code::PermissionDenied), "a second renewal with the old certificate");

    // Its open session ends at the next heartbeat, with the reason.
    s.heartbeat(&[]).await?;
    let (_, code) = heartbeat_until_closed(&mut s, HEARTBEAT + SLACK).await?;
    assert_eq!(code, Some(Code::PermissionDenied));

    // The new certificate reconnects and stays connected across heartbeats, and renews in turn.
    let mut fresh = new.connect(&[]).await?;
    for _ in 0..2 {
        fresh.heartbeat(&[]).await?;
        fresh.drain(Duration::from_millis(700)).await?;
    }
    c.wait_agent_status(&new.id, pb::AgentStatus::Online, WAIT).await?;
    let newer = new.renew(&cluster).await?.map_err(|e| anyhow::anyhow!("renewal refused: {e}"))?;
    assert_eq!(refusal(new.connect(&[]).await)?, Code::PermissionDenied, "superseded in turn");
    newer.connect(&[]).await?;

    cluster.stop().await;
    Ok(())
}

/// The last heartbeat the controller recorded for an agent, as (seconds, nanos).
async fn last_heartbeat(c: &mut Clients, id: &str) -> anyhow::Result<(i64, i32)> {
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: id.into() }, &c.token)).await?.into_inner();
    let t = a.last_heartbeat_at.ok_or_else(|| anyhow::anyhow!("agent {id} has no heartbeat recorded"))?;
    Ok((t.seconds, t.nanos))
}

/// Heartbeats arriving together are written in one statement; each session still gets its own answer: the
/// session of a superseded certificate ends, the others stay open and their agents' liveness moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_written_together_are_answered_each_on_its_own() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let mut agents = Vec::new();
    for _ in 0..4 {
        agents.push(FakeAgent::enroll(&cluster, &mut c).await?);
    }
    let mut sessions = Vec::new();
    for a in &agents {
        sessions.push(a.connect(&[]).await?);
    }
    agents[0].renew(&cluster).await?.map_err(|e| anyhow::anyhow!("renewal refused: {e}"))?;
    let mut before = Vec::new();
    for a in &agents[1..] {
        before.push(last_heartbeat(&mut c, &a.id).await?);
    }

    // The same moment for all four.
    futures::future::try_join_all(sessions.iter().map(|s| s.heartbeat(&[]))).await?;
    let (_, code) = heartbeat_until_closed(&mut sessions[0], HEARTBEAT + SLACK).await?;
    assert_eq!(code, Some(Code::PermissionDenied), "the superseded certificate's session ends");
    for s in &mut sessions[1..] {
        s.drain(Duration::from_millis(300)).await?;
    }
    for (a, was) in agents[1..].iter().zip(before) {
        let now = last_heartbeat(&mut c, &a.id).await?;
        assert!(now > was, "agent {}: heartbeat recorded at {now:?}, not after {was:?}", a.id);
    }
    // And they go on heartbeating, together again, without being cut off.
    for _ in 0..2 {
        futures::future::try_join_all(sessions[1..].iter().map(|s| s.heartbeat(&[]))).await?;
        for s in &mut sessions[1..] {
            s.drain(Duration::from_millis(300)).await?;
        }
    }
    for a in &agents[1..] {
        c.wait_agent_status(&a.id, pb::AgentStatus::Online, WAIT).await?;
    }

    cluster.stop().await;
    Ok(())
}
