//! Transport limits: a connection that never finishes its TLS handshake is dropped after the handshake
//! timeout on both ports, while an agent enrolls and keeps its session through hundreds of such idle
//! connections.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::cluster::{Cluster, ClusterOptions};
use tokio::{io::AsyncReadExt, net::TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_dropped_after_the_handshake_timeout_and_agents_still_connect() -> anyhow::Result<()> {
    let opts = ClusterOptions { tls_handshake_timeout_secs: Some(2), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let mut c = cluster.clients().await?;
    // 500 connections to each port that never send a ClientHello.
    let mut idle = Vec::new();
    for addr in [cluster.api_addr, cluster.agent_addr] {
        for _ in 0..500 {
            idle.push(TcpStream::connect(addr).await?);
        }
    }
    // Meanwhile an agent enrolls on the operator port and opens its session on the agent port.
    let agent = cluster.start_agent(&mut c).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut still_open = 0;
    let mut buf = [0u8; 16];
    for s in &mut idle {
        // The server closed it: EOF or a reset. Still open: the read waits.
        if tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await.is_err() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "every idle connection is dropped after the 2 s handshake timeout");
    // The timeout bounds the handshake only: the agent's session outlived it.
    c.wait_agent_status(&agent.id, pb::AgentStatus::Online, Duration::from_secs(5)).await?;
    let a =
        c.agents.get_agent(dg_tests::cluster::authed(pb::GetAgentRequest { id: agent.id.clone() }, &c.token)).await?;
    assert_eq!(a.into_inner().status, pb::AgentStatus::Online as i32);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// The peak resident memory of this process (the controller runs in it), from /proc.
fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// 200 concurrent wrong logins: at most the account's budget is hashed, the rest are refused at once, memory
/// stays bounded, and the right password from another client address still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_refused_before_hashing_and_the_right_password_from_elsewhere_gets_in() -> anyhow::Result<()> {
    use dg_controller::service::login_limit::ACCOUNT_BURST;
    use pb::auth_service_client::AuthServiceClient;
    use tonic::{
        Code,
        transport::{Certificate, ClientTlsConfig, Endpoint},
    };
    let mut cluster = Cluster::start().await?;
    let before = vm_hwm_mib();
    let auth = AuthServiceClient::new(cluster.channel().await?);
    let tries = (0..200).map(|i| {
        let mut a = auth.clone();
        async move {
            let req = pb::LoginRequest { username: "admin".into(), password: format!("wrong-password-{i}") };
            a.login(req).await.map(|_| ()).map_err(|e| e.code())
        }
    });
    let results = futures::future::join_all(tries).await;
    let evaluated = results.iter().filter(|r| **r == Err(Code::Unauthenticated)).count();
    let refused = results.iter().filter(|r| **r == Err(Code::ResourceExhausted)).count();
    let after = vm_hwm_mib();
    println!("200 wrong logins: {evaluated} evaluated, {refused} refused; peak RSS {before:.0} → {after:.0} MiB");
    assert_eq!(evaluated + refused, 200, "{results:?}");
    assert!(evaluated >= 1 && evaluated <= ACCOUNT_BURST as usize, "{evaluated} hashed, budget {ACCOUNT_BURST}");
    assert!(after - before < 160.0, "peak RSS grew {:.0} MiB", after - before);
    // The right password from here is refused (this address spent the account's budget)…
    let mut here = auth.clone();
    let r = here
        .login(pb::LoginRequest { username: "admin".into(), password: dg_tests::cluster::ADMIN_PASSWORD.into() })
        .await;
    assert_eq!(r.map(|_| ()).map_err(|e| e.code()), Err(Code::ResourceExhausted));
    // …and from another client address it logs in.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cluster.ca_pem)).domain_name("127.0.0.1");
    let elsewhere = Endpoint::from_shared(cluster.api_endpoint())?
        .tls_config(tls)?
        .local_address(Some(std::net::IpAddr::from([127, 0, 0, 2])))
        .connect()
        .await?;
    let ok = AuthServiceClient::new(elsewhere)
        .login(pb::LoginRequest { username: "admin".into(), password: dg_tests::cluster::ADMIN_PASSWORD.into() })
        .await?;
    assert!(!ok.into_inner().token.is_empty());
    cluster.stop().await;
    Ok(())
}

/// 300 concurrent enrollments with random tokens while a multi-chunk backup runs: at most the address's
/// budget reaches the token lookup (none reaches the CSR), every refusal of a token is audited, and the
/// backup completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_flood_is_refused_cheaply_while_a_backup_completes() -> anyhow::Result<()> {
    use dg_controller::service::login_limit::ENROLL_BURST;
    use dg_tests::cluster::authed;
    use pb::agent_enrollment_service_client::AgentEnrollmentServiceClient;
    use sqlx::Executor as _;
    use tonic::Code;
    let src = dg_tests::pg::TestDb::create("enroll_flood").await?;
    src.connect()
        .await?
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, (SELECT string_agg(md5(g::text || j), '') \
             FROM generate_series(1, 16) j) FROM generate_series(1, 12000) g",
        )
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (_, _, job) =
        c.setup_pg_job(&agent.id, &cluster.dir.path().join("s"), &src.name, &dg_tests::pg_server()).await?;
    let ex = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &c.token)).await?.into_inner();

    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?.pem()?;
    let enroll = AgentEnrollmentServiceClient::new(cluster.channel().await?);
    let flood = (0..300).map(|i| {
        let mut e = enroll.clone();
        let req = pb::EnrollRequest {
            join_token: format!("dgj_{}{i}", dg_tests::suffix()),
            csr_pem: csr.clone(),
            hostname: "flood".into(),
            agent_version: "x".into(),
        };
        async move { e.enroll(req).await.map(|_| ()).map_err(|s| s.code()) }
    });
    let results = futures::future::join_all(flood).await;
    let looked_up = results.iter().filter(|r| **r == Err(Code::Unauthenticated)).count();
    let refused = results.iter().filter(|r| **r == Err(Code::ResourceExhausted)).count();
    println!("300 enrollments with random tokens: {looked_up} looked up, {refused} refused at once");
    assert_eq!(looked_up + refused, 300, "{results:?}");
    assert!(looked_up <= ENROLL_BURST as usize, "{looked_up} reached the token lookup, budget {ENROLL_BURST}");

    let done = c.wait_execution(&ex.id, Duration::from_secs(120)).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);
    assert!(done.chunk_count > 1, "a multi-chunk backup: {}", done.chunk_count);
    let mut audit = pb::audit_service_client::AuditServiceClient::new(cluster.channel().await?);
    let events = audit
        .list_audit_events(authed(pb::ListAuditEventsRequest { page_size: 500, ..Default::default() }, &c.token))
        .await?
        .into_inner()
        .events;
    let audited = events.iter().filter(|e| e.action == "agent.enroll" && e.outcome.starts_with("error")).count();
    assert_eq!(audited, looked_up, "every refused token is audited");
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
