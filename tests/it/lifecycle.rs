//! Agent and controller lifecycle: capabilities in Hello, certificate renewal before expiry, reconnection
//! after a controller restart, revocation closing a live session, a renewal interrupted by a kill at any
//! point leaving a working agent, and two replicas starting together on one database (migrations and CA
//! creation race-free).

use std::time::Duration;

use dg_common::tls;
use dg_proto::v1 as pb;
use dg_tests::cluster::{Cluster, ClusterOptions, authed};
use dg_tests::pg::TestDb;
use dg_tests::pg_server;

fn cert_not_after(path: &std::path::Path) -> anyhow::Result<i64> {
    let der = tls::certs_from_pem(&std::fs::read_to_string(path)?)?.remove(0);
    Ok(tls::validity_unix(&der)?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_reconnects_and_is_revoked() -> anyhow::Result<()> {
    // 12 s certificates: renewal is due 8 s into their life.
    let mut cluster = Cluster::start_with(ClusterOptions { agent_cert_ttl_secs: 12, ..Default::default() }).await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;

    // Capabilities reported in Hello.
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?.into_inner();
    let pg_dump = a.tools.iter().find(|t| t.name == "pg_dump").expect("pg_dump reported");
    assert!(pg_dump.version.starts_with(|ch: char| ch.is_ascii_digit()), "{pg_dump:?}");
    assert!(!a.hostname.is_empty() && !a.version.is_empty());

    // Renewal: a new certificate is written before the first expires, and the controller records it.
    let cert = agent.state_dir.join("cert.pem");
    let first = cert_not_after(&cert)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cert_not_after(&cert)? == first {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "certificate never renewed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(chrono::Utc::now().timestamp() < first, "renewed before expiry");
    let renewed = cert_not_after(&cert)?;
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(a.certificate_expires_at.map(|t| t.seconds), Some(renewed));

    // Controller restart on the same ports and database: the agent reconnects by itself (with the renewed
    // certificate) and work flows again.
    let mut config = cluster.config.clone();
    config.api_listen = cluster.api_addr;
    config.agent_listen = cluster.agent_addr;
    cluster.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.controller = Some(dg_controller::app::start(config).await?);
    let mut c = cluster.clients().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?.into_inner();
        if a.status == pb::AgentStatus::Online as i32 && a.last_heartbeat_at.is_some_and(|t| t.seconds >= renewed - 12)
        {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "agent did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Revocation closes the live session: the agent drops offline and cannot come back.
    c.agents.revoke_agent(authed(pb::RevokeAgentRequest { id: agent.id.clone() }, &c.token)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(a.status, pb::AgentStatus::Revoked as i32);
    let online = c
        .agents
        .list_agents(authed(pb::ListAgentsRequest::default(), &c.token))
        .await?
        .into_inner()
        .agents
        .iter()
        .filter(|a| a.status == pb::AgentStatus::Online as i32)
        .count();
    assert_eq!(online, 0);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// Renews the stopped agent's certificate (as its renewal would: the old certificate is superseded from
/// then on) and returns the new key and certificate.
async fn renew_offline(cluster: &Cluster, id: &str, state: &std::path::Path) -> anyhow::Result<(String, String)> {
    let renewed = dg_tests::fake_agent::FakeAgent::of(id, state)?
        .renew(cluster)
        .await?
        .map_err(|s| anyhow::anyhow!("renewal refused: {s}"))?;
    let read = |f: &str| std::fs::read_to_string(renewed.state_dir().join(f));
    Ok((read("key.pem")?, read("cert.pem")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_killed_at_any_point_leaves_an_agent_that_connects() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (id, state) = (agent.id.clone(), agent.state_dir.clone());
    agent.stop().await;
    c.wait_agent_status(&id, pb::AgentStatus::Offline, Duration::from_secs(30)).await?;
    let file = |f: &str| state.join(f);
    let write = |f: &str, data: &str| std::fs::write(file(f), data);

    // Killed between renaming the new key and the new certificate into place: the new key is key.pem, the
    // superseded certificate still cert.pem, the new certificate cert.pem.next.
    let old_cert = std::fs::read_to_string(file("cert.pem"))?;
    let (key, cert) = renew_offline(&cluster, &id, &state).await?;
    write("key.pem", &key)?;
    write("cert.pem", &old_cert)?;
    write("cert.pem.next", &cert)?;
    let agent = cluster.resume_agent(&mut c, &id, &state).await?;
    assert_eq!(std::fs::read_to_string(file("cert.pem"))?, cert, "the renewal was finished at start");
    assert!(!file("cert.pem.next").exists());
    agent.stop().await;
    c.wait_agent_status(&id, pb::AgentStatus::Offline, Duration::from_secs(30)).await?;

    // Killed after the answer was written, before either rename.
    let (key, cert) = renew_offline(&cluster, &id, &state).await?;
    write("key.pem.next", &key)?;
    write("cert.pem.next", &cert)?;
    let agent = cluster.resume_agent(&mut c, &id, &state).await?;
    assert_eq!((std::fs::read_to_string(file("key.pem"))?, std::fs::read_to_string(file("cert.pem"))?), (key, cert));
    agent.stop().await;
    c.wait_agent_status(&id, pb::AgentStatus::Offline, Duration::from_secs(30)).await?;

    // Killed while asking (the new key written, no answer yet): the current pair stays, the key goes.
    let (stray, _) = dg_agent::enroll::new_key_and_csr()?;
    write("key.pem.next", &stray.serialize_pem())?;
    let agent = cluster.resume_agent(&mut c, &id, &state).await?;
    assert!(!file("key.pem.next").exists(), "the unanswered renewal's key is removed");
    // A certificate for another key is not installed over a working pair.
    agent.stop().await;
    c.wait_agent_status(&id, pb::AgentStatus::Offline, Duration::from_secs(30)).await?;
    write("cert.pem.next", &old_cert)?;
    let agent = cluster.resume_agent(&mut c, &id, &state).await?;
    assert!(!file("cert.pem.next").exists());
    agent.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_together_on_one_database() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    // Two more replicas against the same (already migrated) database, plus the migration lock path of a
    // fresh database exercised by Cluster::start itself.
    let mut a = cluster.config.clone();
    let mut b = cluster.config.clone();
    a.api_listen = "127.0.0.1:0".parse()?;
    a.agent_listen = "127.0.0.1:0".parse()?;
    b.api_listen = "127.0.0.1:0".parse()?;
    b.agent_listen = "127.0.0.1:0".parse()?;
    let (ra, rb) = tokio::join!(dg_controller::app::start(a), dg_controller::app::start(b));
    let (ra, rb) = (ra?, rb?);
    assert_eq!(ra.ca_fingerprint, cluster.ca_fingerprint(), "every replica signs with the same CA");
    assert_eq!(rb.ca_fingerprint, cluster.ca_fingerprint());
    ra.shutdown().await;
    rb.shutdown().await;

    // A fresh database migrated by two replicas at once.
    let db = dg_tests::pg::TestDb::create("race").await?;
    let mut x = cluster.config.clone();
    x.database_url = db.url().into();
    x.api_listen = "127.0.0.1:0".parse()?;
    x.agent_listen = "127.0.0.1:0".parse()?;
    let y = x.clone();
    let (rx, ry) = tokio::join!(dg_controller::app::start(x), dg_controller::app::start(y));
    let (rx, ry) = (rx?, ry?);
    assert_eq!(rx.ca_fingerprint, ry.ca_fingerprint, "one CA even when created concurrently");
    rx.shutdown().await;
    ry.shutdown().await;
    cluster.stop().await;
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    anyhow::ensure!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_happened() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions { metrics: true, ..Default::default() }).await?;
    let addr = cluster.controller.as_ref().and_then(|c| c.metrics_addr).expect("metrics enabled");
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let src = TestDb::create("metrics").await?;
    let (_, _, job) = c.setup_pg_job(&agent.id, &cluster.dir.path().join("m"), &src.name, &pg_server()).await?;
    let (_, _, bad) = c.setup_pg_job(&agent.id, &cluster.dir.path().join("m"), "dgt_missing_db", &pg_server()).await?;
    assert_eq!(c.run_job(&job.id).await?.status, pb::ExecutionStatus::Completed as i32);
    assert_eq!(c.run_job(&bad.id).await?.status, pb::ExecutionStatus::Failed as i32);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let text = scrape(addr).await?;
    assert!(text.contains("dg_executions_finished_total{operation=\"backup\",status=\"completed\"} 1"), "{text}");
    assert!(text.contains("dg_executions_finished_total{operation=\"backup\",status=\"failed\"} 1"), "{text}");
    assert!(text.contains("dg_agents_connected 1"), "{text}");
    assert!(text.contains("dg_redis_up 1"), "{text}");
    let stored: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dg_backup_bytes_stored_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(stored > 0, "{text}");
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_reaches_an_agent_connected_to_the_first() -> anyhow::Result<()> {
    use sqlx::Executor;
    let src = dg_tests::pg::TestDb::create("relay").await?;
    src.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await?;
    let mut cluster = Cluster::start().await?;
    let mut a = cluster.clients().await?;
    let agent = cluster.start_agent(&mut a).await?;
    let (_, _, job) = a.setup_pg_job(&agent.id, &cluster.dir.path().join("r"), &src.name, &pg_server()).await?;

    // Replica B: same database and Redis, its own ports, no agent session.
    let mut cfg = cluster.config.clone();
    cfg.api_listen = "127.0.0.1:0".parse()?;
    cfg.agent_listen = "127.0.0.1:0".parse()?;
    let b_ctl = dg_controller::app::start(cfg).await?;
    let mut b = cluster.clients_at(b_ctl.api_addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Queued through B, run by the agent on A.
    let ok = b.run_job(&job.id).await?;
    assert_eq!(ok.status, pb::ExecutionStatus::Completed as i32, "{}", ok.error);

    // A dump held by a lock, cancelled through B: the cancel reaches the agent through A.
    let mut locker = src.connect().await?;
    locker.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await?;
    let run = b.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &b.token)).await?.into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !b.logs(&run.id).await?.contains("started") {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "dump never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: run.id.clone() }, &b.token)).await?;
    let done = b.wait_execution(&run.id, Duration::from_secs(30)).await?;
    locker.execute("ROLLBACK").await?;
    let logs = b.logs(&run.id).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Cancelled as i32, "{}\n{logs}", done.error);
    assert!(logs.contains("forwarded to the replica"), "{logs}");
    assert_eq!(done.error, "cancelled", "stopped by the agent, not ended from afar: {}", done.error);

    b_ctl.shutdown().await;
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
