//! Security negatives: the agent port requires a client certificate from the controller CA; join tokens are
//! one-time and expire; enrollment pins the CA; the CSR's subject is ignored; revocation closes and refuses
//! sessions; operator RPCs need a live session token.

use std::time::Duration;

use dg_agent::{enroll, state::StateDir};
use dg_common::tls;
use dg_proto::{
    AGENT_PROTOCOL_VERSION,
    v1::{
        self as pb, agent_enrollment_service_client::AgentEnrollmentServiceClient,
        agent_session_service_client::AgentSessionServiceClient,
    },
};
use dg_tests::cluster::{Cluster, authed};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Identity};

/// Opens a session with `identity` (or none) and returns the first controller message or the error.
async fn try_session(cluster: &Cluster, identity: Option<Identity>) -> anyhow::Result<pb::ControllerMessage> {
    let endpoint = format!("https://127.0.0.1:{}", cluster.agent_addr.port());
    let channel = enroll::channel(&endpoint, &cluster.ca_pem, identity).await?;
    let mut client = AgentSessionServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            protocol_version: AGENT_PROTOCOL_VERSION,
            agent_version: "test".into(),
            hostname: "test".into(),
            tools: vec![],
            running: vec![],
        })),
        report_seq: 0,
    })
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await??;
    first.ok_or_else(|| anyhow::anyhow!("stream closed"))
}

fn identity_of(dir: &StateDir) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(std::fs::read(dir.path("cert.pem"))?, std::fs::read(dir.path("key.pem"))?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_port_and_enrollment_are_locked_down() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let t = c.token.clone();
    let api = cluster.api_endpoint();

    // A properly enrolled agent gets a Welcome naming its id (positive control for the negatives below).
    let jt = c.agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &t)).await?.into_inner();
    assert!(jt.enroll_command.contains(&jt.token) && jt.ca_fingerprint.starts_with("sha256:"));
    let dir = StateDir::open(&cluster.dir.path().join("a1"))?;
    let agent_id = enroll::enroll(&api, &jt.token, &jt.ca_fingerprint, &dir).await?;
    for f in ["key.pem", "cert.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path(f))?.permissions());
        assert_eq!(mode & 0o777, 0o600, "{f} must be 0600");
    }
    match try_session(&cluster, Some(identity_of(&dir)?)).await?.kind {
        Some(pb::controller_message::Kind::Welcome(w)) => assert_eq!(w.agent_id, agent_id),
        other => panic!("expected Welcome, got {other:?}"),
    }

    // The same join token a second time is refused.
    let again =
        enroll::enroll(&api, &jt.token, &jt.ca_fingerprint, &StateDir::open(&cluster.dir.path().join("a2"))?).await;
    let err = again.expect_err("second use of a join token must fail");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");

    // An expired join token is refused.
    let short = c
        .agents
        .create_join_token(authed(
            pb::CreateJoinTokenRequest {
                ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                description: "short".into(),
            },
            &t,
        ))
        .await?
        .into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired =
        enroll::enroll(&api, &short.token, &short.ca_fingerprint, &StateDir::open(&cluster.dir.path().join("a3"))?)
            .await;
    assert!(expired.expect_err("expired token").to_string().contains("Unauthenticated"));

    // Pinning: a wrong CA fingerprint stops enrollment before the token is sent.
    let fresh = c.agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &t)).await?.into_inner();
    let wrong_pin = format!("sha256:{}", "00".repeat(32));
    let pinned = enroll::enroll(&api, &fresh.token, &wrong_pin, &StateDir::open(&cluster.dir.path().join("a4"))?).await;
    assert!(pinned.expect_err("wrong pin").to_string().contains("pinn"), "pinning error expected");

    // The CSR's requested identity is ignored: ask for another agent's URI, get our own id.
    let (key, _) = enroll::new_key_and_csr()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(tls::agent_uri(agent_id.parse()?).try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut enroll_client = AgentEnrollmentServiceClient::new(cluster.channel().await?);
    let resp = enroll_client
        .enroll(pb::EnrollRequest {
            join_token: fresh.token.clone(),
            csr_pem: csr,
            hostname: "h".into(),
            agent_version: "t".into(),
        })
        .await?
        .into_inner();
    let der = tls::certs_from_pem(&resp.certificate_pem)?.remove(0);
    let issued_id = tls::agent_id_from_cert(&der)?;
    assert_eq!(issued_id.to_string(), resp.agent_id);
    assert_ne!(resp.agent_id, agent_id, "the subject the CSR asked for must be ignored");

    // No client certificate: refused.
    assert!(try_session(&cluster, None).await.is_err(), "session without client certificate must be refused");

    // A certificate from another CA, even naming a real agent: refused.
    let rogue_ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let rogue_ca = ca_params.self_signed(&rogue_ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, rogue_ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![SanType::URI(tls::agent_uri(agent_id.parse()?).try_into()?)];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    drop(rogue_ca);
    let rogue = Identity::from_pem(leaf_cert.pem(), leaf_key.serialize_pem());
    assert!(try_session(&cluster, Some(rogue)).await.is_err(), "foreign CA must be refused");

    // Revocation: the agent's certificate no longer opens a session.
    c.agents.revoke_agent(authed(pb::RevokeAgentRequest { id: agent_id.clone() }, &t)).await?;
    let revoked = try_session(&cluster, Some(identity_of(&dir)?)).await;
    let err = revoked.expect_err("revoked agent must be refused");
    assert!(err.to_string().contains("revoked"), "{err}");
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent_id }, &t)).await?.into_inner();
    assert_eq!(a.status, pb::AgentStatus::Revoked as i32);

    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rpcs_need_a_live_session() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;

    let none = c.agents.list_agents(pb::ListAgentsRequest::default()).await.expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    let bad = c.agents.list_agents(authed(pb::ListAgentsRequest::default(), "dgs_not-a-token")).await.expect_err("bad");
    assert_eq!(bad.code(), Code::Unauthenticated);
    let good = c.agents.list_agents(authed(pb::ListAgentsRequest::default(), &c.token)).await?;
    assert!(good.into_inner().agents.is_empty());

    // Wrong password: refused, and Setup is closed once an admin exists.
    let mut auth = pb::auth_service_client::AuthServiceClient::new(cluster.channel().await?);
    let wrong = auth.login(pb::LoginRequest { username: "admin".into(), password: "nope-nope-nope".into() }).await;
    assert_eq!(wrong.expect_err("wrong password").code(), Code::Unauthenticated);
    let setup = auth
        .setup(pb::SetupRequest {
            username: "admin2".into(),
            password: "another-long-password".into(),
            bootstrap_token: String::new(),
        })
        .await;
    assert_eq!(setup.expect_err("setup twice").code(), Code::FailedPrecondition);

    // Me works, Logout revokes.
    let me = auth.me(authed(pb::MeRequest {}, &c.token)).await?.into_inner();
    assert_eq!(me.username, "admin");
    auth.logout(authed(pb::LogoutRequest {}, &c.token)).await?;
    let after = c.agents.list_agents(authed(pb::ListAgentsRequest::default(), &c.token)).await.expect_err("revoked");
    assert_eq!(after.code(), Code::Unauthenticated);
    assert_eq!(auth.me(authed(pb::MeRequest {}, &c.token)).await.expect_err("me").code(), Code::Unauthenticated);

    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_expire() -> anyhow::Result<()> {
    let mut cluster = dg_tests::cluster::Cluster::start_with(dg_tests::cluster::ClusterOptions {
        session_ttl_secs: 10,
        ..Default::default()
    })
    .await?;
    let mut c = cluster.clients().await?;
    c.agents.list_agents(authed(pb::ListAgentsRequest::default(), &c.token)).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let expired = c.agents.list_agents(authed(pb::ListAgentsRequest::default(), &c.token)).await;
    assert_eq!(expired.expect_err("expired").code(), Code::Unauthenticated);
    cluster.stop().await;
    Ok(())
}
