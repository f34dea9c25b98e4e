//! Enrolling the fleet through the public API, as real agents do: one `CreateJoinToken` per agent (a join
//! token is one-time: `Db::enroll_agent` consumes it), then `Enroll` with a fresh key's CSR. The controller
//! budgets `Enroll` per client address (`login_limit::EnrollLimits`: a burst of [`ENROLL_BURST`], then one
//! every two seconds) and refuses more than `MAX_CONCURRENT_ENROLLMENTS` in progress per replica, so each
//! enrollment comes from its own loopback source address (at most a burst per address, like agents on
//! different hosts), a few per replica at once, and a refusal for "in progress" is retried. Each identity
//! is written as an agent state directory the fake agent speaks with.

use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use dg_agent::state::{AgentState, StateDir};
use dg_controller::service::login_limit::ENROLL_BURST;
use dg_proto::v1::{self as pb, agent_enrollment_service_client::AgentEnrollmentServiceClient};
use dg_tests::{cluster::authed, fake_agent::FakeAgent};
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::{stats::enroll_source, world::World};

/// Tokens created at once.
const TOKEN_CONCURRENCY: usize = 16;
/// Refusals ("too many enrollments in progress") retried per enrollment before giving up.
const MAX_BUSY_RETRIES: u32 = 400;

/// What enrolling a batch took.
#[derive(Debug, Default)]
pub(crate) struct EnrollReport {
    pub(crate) count: usize,
    pub(crate) took: Duration,
    /// Enrollments refused for "in progress" (or the per-address budget) and retried.
    pub(crate) retried: u64,
}

/// Enrolls the agents with global indices `first..first + count` (the index picks the source address), each
/// into `<ids_dir>/<index>`; `per_replica` enrollments in flight per replica, spread over the replicas.
pub(crate) async fn enroll(
    world: &World,
    first: usize,
    count: usize,
    ids_dir: &Path,
    per_replica: usize,
) -> anyhow::Result<(Vec<FakeAgent>, EnrollReport)> {
    let started = Instant::now();
    let c = &world.clients[0];
    let tokens: Vec<String> = futures::stream::iter(0..count)
        .map(|_| {
            let mut agents = c.agents.clone();
            let token = c.token.clone();
            async move {
                let jt = agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &token)).await?;
                anyhow::Ok(jt.into_inner().token)
            }
        })
        .buffered(TOKEN_CONCURRENCY)
        .try_collect()
        .await
        .context("CreateJoinToken")?;
    let retried = AtomicU64::new(0);
    let apis: Vec<String> = world.controllers.iter().map(|c| c.api_endpoint()).collect();
    let agent_endpoints = world.agent_endpoints();
    let in_flight = per_replica.max(1) * apis.len();
    let (ca, retried_ref) = (world.ca_pem.as_str(), &retried);
    let agents: Vec<FakeAgent> = futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(k, token)| {
            let index = first + k;
            let replica = index % apis.len();
            let (api, agent_endpoint) = (apis[replica].clone(), agent_endpoints[replica].clone());
            let dir = ids_dir.join(index.to_string());
            async move {
                let source = IpAddr::V4(enroll_source(index, ENROLL_BURST as usize));
                let id = enroll_one(&api, &agent_endpoint, ca, &token, source, &dir, index, retried_ref)
                    .await
                    .with_context(|| format!("enroll agent #{index} from {source}"))?;
                FakeAgent::of(&id, &dir)
            }
        })
        .buffered(in_flight)
        .try_collect()
        .await?;
    let report = EnrollReport { count, took: started.elapsed(), retried: retried.load(Ordering::Relaxed) };
    Ok((agents, report))
}

/// One enrollment from `source`; returns the agent id.
#[allow(clippy::too_many_arguments)]
async fn enroll_one(
    api: &str,
    agent_endpoint: &str,
    ca_pem: &str,
    token: &str,
    source: IpAddr,
    dir: &Path,
    index: usize,
    retried: &AtomicU64,
) -> anyhow::Result<String> {
    let (key, csr_pem) = dg_agent::enroll::new_key_and_csr()?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("127.0.0.1");
    let channel = Channel::from_shared(api.to_owned())?
        .tls_config(tls)?
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect")?;
    let mut client = AgentEnrollmentServiceClient::new(channel);
    let mut busy = 0;
    let resp = loop {
        let req = pb::EnrollRequest {
            join_token: token.to_owned(),
            csr_pem: csr_pem.clone(),
            hostname: format!("fleet-{index}"),
            agent_version: "dg-fleet".into(),
        };
        match client.enroll(req).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted && busy < MAX_BUSY_RETRIES => {
                busy += 1;
                retried.fetch_add(1, Ordering::Relaxed);
                // "in progress": a moment; "retry in N s" (the per-address budget): a refill.
                let wait = if s.message().contains("in progress") { 10 + index as u64 % 20 } else { 2100 };
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(s) => return Err(s.into()),
        }
    };
    let state = StateDir::open(dir)?;
    state.write("key.pem", key.serialize_pem().as_bytes(), 0o600)?;
    state.write("cert.pem", resp.certificate_pem.as_bytes(), 0o600)?;
    state.write("ca.pem", ca_pem.as_bytes(), 0o644)?;
    state.save(&AgentState {
        agent_id: resp.agent_id.clone(),
        controller: api.to_owned(),
        agent_endpoint: agent_endpoint.to_owned(),
    })?;
    Ok(resp.agent_id)
}
