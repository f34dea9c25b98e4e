//! Agent-facing services. `Enroll` is served on the operator port (the agent has only a join token);
//! `Renew`, `Session` and `SendObject` on the agent port, where TLS requires a client certificate from the
//! controller CA and the agent id is read from that certificate, never from a message. The handlers only
//! authenticate and hand over to the session layer (`crate::session`): `Session` reads the Hello through the
//! handshake functions and spawns the session task; `SendObject` feeds one object read.

use std::pin::Pin;

use dg_common::{error::FieldError, ids::AgentId, tls};
use dg_proto::v1::{self as pb, agent_enrollment_service_server, agent_session_service_server};
use futures::Stream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info_span};

use self::task::SessionEnv;
use super::{Ctx, convert};

mod handshake;
pub mod task;

/// Enrollment handler.
#[derive(Clone, Debug)]
pub struct EnrollmentSvc {
    ctx: Ctx,
}

impl EnrollmentSvc {
    /// New handler.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl agent_enrollment_service_server::AgentEnrollmentService for EnrollmentSvc {
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        if r.join_token.is_empty() {
            return Err(FieldError::new("join_token", "is required").into());
        }
        if r.csr_pem.is_empty() || r.csr_pem.len() > 16 * 1024 {
            return Err(FieldError::new("csr_pem", "must be a PEM CSR of at most 16 KiB").into());
        }
        let hostname: String = r.hostname.chars().filter(|c| !c.is_control()).take(253).collect();
        let version: String = r.agent_version.chars().filter(|c| !c.is_control()).take(64).collect();
        let e = self.ctx.agents.enroll(client, &r.join_token, &r.csr_pem, &hostname, &version).await?;
        Ok(Response::new(pb::EnrollResponse {
            agent_id: e.agent_id.to_string(),
            certificate_pem: e.certificate_pem,
            ca_certificate_pem: e.ca_pem,
            agent_endpoint: e.agent_endpoint,
            not_after: Some(convert::ts(e.not_after)),
        }))
    }
}

/// Session handler: `Renew`, `Session` and `SendObject`, each authenticated by the client certificate.
#[derive(Clone, Debug)]
pub struct SessionSvc {
    env: SessionEnv,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl SessionSvc {
    /// New handler; `shutdown` closes every session, and each session's task runs on `tracker`, so the
    /// controller's shutdown waits for sessions to record their end.
    pub fn new(env: SessionEnv, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self { env, shutdown, tracker }
    }
}

/// The agent id in the request's verified client certificate.
fn peer_agent<T>(req: &Request<T>) -> Result<AgentId, Status> {
    peer(req).map(|(agent, _)| agent)
}

/// The agent id in the request's verified client certificate and that certificate's `sha256:<hex>` (what
/// per-certificate revocation matches on).
fn peer<T>(req: &Request<T>) -> Result<(AgentId, String), Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    let agent = tls::agent_id_from_cert(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok((agent, tls::fingerprint(leaf)))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl agent_session_service_server::AgentSessionService for SessionSvc {
    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let (agent, cert) = peer(&req)?;
        let r = req.into_inner();
        if r.csr_pem.is_empty() || r.csr_pem.len() > 16 * 1024 {
            return Err(FieldError::new("csr_pem", "must be a PEM CSR of at most 16 KiB").into());
        }
        let (pem, not_after) = self.env.agents.renew(agent, &cert, &r.csr_pem).await?;
        Ok(Response::new(pb::RenewResponse { certificate_pem: pem, not_after: Some(convert::ts(not_after)) }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (agent, cert) = peer(&req)?;
        self.env.agents.admit(agent.0, &cert).await?;
        let mut inbound = req.into_inner();
        let hello = handshake::read_hello(&mut inbound).await?;
        let (outbound, session) = task::open(&self.env, agent, cert, hello, inbound, &self.shutdown).await?;
        self.tracker.spawn(session.run().instrument(info_span!("agent_session", agent_id = %agent)));
        Ok(Response::new(Box::pin(outbound) as SessionStream))
    }

    async fn send_object(
        &self,
        req: Request<Streaming<pb::ObjectChunk>>,
    ) -> Result<Response<pb::SendObjectResponse>, Status> {
        let agent = peer_agent(&req)?;
        // A revoked agent uploads nothing. Any of its certificates will do otherwise: the uploads connection
        // may still carry the one a renewal just superseded, until the agent's next session.
        self.env.agents.not_revoked(agent.0).await?;
        let received_bytes = self.env.rpc.receive_object(agent, req.into_inner()).await?;
        Ok(Response::new(pb::SendObjectResponse { received_bytes }))
    }
}
