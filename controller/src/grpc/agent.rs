//! Agent-facing services. `Enroll` is served on the operator port (the agent has only a join token);
//! `Renew` and `Session` on the agent port, where TLS requires a client certificate from the controller CA and
//! the agent id is read from that certificate, never from a message.

use std::{pin::Pin, time::Duration};

use dg_common::{
    error::FieldError,
    ids::AgentId,
    protocol::{ExecutionRef, wire},
    tls,
};
use dg_proto::{
    AGENT_PROTOCOL_VERSION,
    v1::{self as pb, agent_enrollment_service_server, agent_session_service_server},
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use uuid::Uuid;

use super::{Ctx, convert};
use crate::{
    error::{ControllerError, ControllerResult},
    session::ToAgent,
};

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
        let r = req.into_inner();
        if r.join_token.is_empty() {
            return Err(FieldError::new("join_token", "is required").into());
        }
        if r.csr_pem.is_empty() || r.csr_pem.len() > 16 * 1024 {
            return Err(FieldError::new("csr_pem", "must be a PEM CSR of at most 16 KiB").into());
        }
        let hostname: String = r.hostname.chars().filter(|c| !c.is_control()).take(253).collect();
        let version: String = r.agent_version.chars().filter(|c| !c.is_control()).take(64).collect();
        let e = self.ctx.agents.enroll(&r.join_token, &r.csr_pem, &hostname, &version).await?;
        Ok(Response::new(pb::EnrollResponse {
            agent_id: e.agent_id.to_string(),
            certificate_pem: e.certificate_pem,
            ca_certificate_pem: e.ca_pem,
            agent_endpoint: e.agent_endpoint,
            not_after: Some(convert::ts(e.not_after)),
        }))
    }
}

/// Session handler.
#[derive(Clone, Debug)]
pub struct SessionSvc {
    ctx: Ctx,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl SessionSvc {
    /// New handler; `shutdown` closes every session, and each session's task runs on `tracker`, so the
    /// controller's shutdown waits for sessions to record their end.
    pub fn new(ctx: Ctx, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self { ctx, shutdown, tracker }
    }
}

/// The agent id in the request's verified client certificate.
fn peer_agent<T>(req: &Request<T>) -> Result<AgentId, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    tls::agent_id_from_cert(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl agent_session_service_server::AgentSessionService for SessionSvc {
    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let agent = peer_agent(&req)?;
        let r = req.into_inner();
        if r.csr_pem.is_empty() || r.csr_pem.len() > 16 * 1024 {
            return Err(FieldError::new("csr_pem", "must be a PEM CSR of at most 16 KiB").into());
        }
        let (pem, not_after) = self.ctx.agents.renew(agent, &r.csr_pem).await?;
        Ok(Response::new(pb::RenewResponse { certificate_pem: pem, not_after: Some(convert::ts(not_after)) }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let agent = peer_agent(&req)?;
        self.ctx.agents.active(agent.0).await?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Hello(h)), .. }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument("hello: the first message must be Hello"));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("hello: not received within 15 s")),
        };
        if hello.protocol_version != AGENT_PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol_version: agent speaks {}, controller speaks {AGENT_PROTOCOL_VERSION}",
                hello.protocol_version
            )));
        }
        let tools: Vec<convert::ToolJson> = hello
            .tools
            .iter()
            .take(32)
            .map(|t| convert::ToolJson { name: t.name.clone(), version: t.version.clone(), path: t.path.clone() })
            .collect();
        let running: Vec<(Uuid, i32)> = wire::running_of(hello.running)
            .map_err(|e| dg_common::error::to_status(e.within("hello")))?
            .into_iter()
            .map(|r| (r.id.0, i32::try_from(r.attempt.0).unwrap_or(i32::MAX)))
            .collect();
        let stale = self.ctx.executions.reconcile(agent.0, &running).await?;

        let (tx, rx) = mpsc::channel(64);
        let welcome = pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::Welcome(pb::Welcome {
                protocol_version: AGENT_PROTOCOL_VERSION,
                agent_id: agent.to_string(),
                heartbeat_interval: Some(prost_types::Duration {
                    seconds: i64::try_from(self.ctx.agent_settings.heartbeat.as_secs()).unwrap_or(10),
                    nanos: 0,
                }),
            })),
        };
        tx.send(Ok(welcome)).await.map_err(|_| Status::unavailable("session closed"))?;
        let cancel = self.shutdown.child_token();
        // Registered before the agent is marked online, so whoever sees it online can reach its session.
        let session = self.ctx.registry.register(agent.0, tx, cancel.clone());
        if let Err(e) = self
            .ctx
            .agents
            .connected(agent.0, &hello.hostname, &hello.agent_version, serde_json::to_value(&tools).unwrap_or_default())
            .await
        {
            self.ctx.registry.unregister(agent.0, session);
            return Err(e.into());
        }
        self.ctx.metrics.agents_connected.set(i64::try_from(self.ctx.registry.connected().len()).unwrap_or(0));
        self.ctx.coord.set_presence(agent.0, self.ctx.agent_settings.heartbeat * 3).await;
        info!(agent_id = %agent, hostname = %hello.hostname, version = %hello.agent_version, "agent session opened");

        let ctx = self.ctx.clone();
        self.tracker.spawn(
            async move {
                read_loop(&ctx, agent, &mut inbound, cancel).await;
                if ctx.registry.unregister(agent.0, session)
                    && let Err(e) = ctx.agents.disconnected(agent.0).await
                {
                    warn!(error = %e, "cannot record disconnect");
                }
                ctx.metrics.agents_connected.set(i64::try_from(ctx.registry.connected().len()).unwrap_or(0));
                ctx.coord.clear_presence(agent.0).await;
                info!("agent session closed");
            }
            .instrument(info_span!("agent_session", agent_id = %agent)),
        );
        // Attempts the agent still runs but the controller has ended are void: stop them.
        for execution in stale {
            let reason = "the controller ended this attempt while the agent was away".to_owned();
            self.ctx.registry.deliver(agent.0, ToAgent::Abort { execution, reason }).await;
        }
        // The agent may have queued work.
        self.ctx.executions.wake();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as SessionStream))
    }
}

async fn read_loop(ctx: &Ctx, agent: AgentId, inbound: &mut Streaming<pb::AgentMessage>, cancel: CancellationToken) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            m = inbound.message() => m,
        };
        match msg {
            Ok(Some(m)) => {
                if let Err(e) = handle(ctx, agent, m).await {
                    warn!(error = %e, "agent report rejected");
                }
            }
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "agent stream error");
                break;
            }
        }
    }
}

async fn handle(ctx: &Ctx, agent: AgentId, m: pb::AgentMessage) -> ControllerResult<()> {
    use pb::agent_message::Kind;
    let report_seq = m.report_seq;
    let Some(kind) = m.kind else { return Ok(()) };
    match kind {
        Kind::Heartbeat(h) => {
            let running = wire::running_of(h.running).map_err(|e| ControllerError::Protocol(e.within("heartbeat")))?;
            ctx.agents.heartbeat(agent.0).await?;
            ctx.coord.set_presence(agent.0, ctx.agent_settings.heartbeat * 3).await;
            let s = &ctx.agent_settings;
            // An assignment gets one heartbeat interval (plus delivery slack) to show up in the agent's list.
            let grace = i64::try_from(s.heartbeat.as_secs()).unwrap_or(10) * 2 + 1;
            ctx.executions.heartbeat(agent, &running, s.lease_secs, grace).await?;
        }
        Kind::Response(r) => ctx.rpc.on_response(r),
        Kind::ObjectData(d) => ctx.rpc.on_data(d).await,
        Kind::Hello(_) => return Err(FieldError::new("hello", "sent twice").into()),
        report => {
            let execution = wire::execution_of(&report);
            let outcome = match wire::report_of(report) {
                Some(Ok(r)) => ctx.executions.report(agent, r).await,
                // A report that does not decode is input that does not fit the attempt: it ends the attempt
                // (when it names one this agent runs).
                Some(Err(e)) => match execution {
                    Some(execution) => ctx.executions.refuse_report(agent, execution, e.to_string()).await,
                    None => Err(ControllerError::Protocol(e)),
                },
                None => Ok(()),
            };
            answer(ctx, agent, report_seq, execution, &outcome).await;
            return outcome;
        }
    }
    Ok(())
}

/// Answers a report: an `Abort` when the controller has ended (or never gave this agent) the attempt it is
/// about, and for a report with a sequence number an `Ack`, asking for a resend when the report could not be
/// recorded now (the controller's database is unavailable): a report is never dropped silently.
async fn answer(
    ctx: &Ctx,
    agent: AgentId,
    report_seq: u64,
    execution: Option<ExecutionRef>,
    outcome: &ControllerResult<()>,
) {
    let retry_later = matches!(outcome, Err(ControllerError::Unavailable(_) | ControllerError::Database(_)));
    let ended = matches!(outcome, Err(ControllerError::FailedPrecondition(_) | ControllerError::NotFound(_)));
    if ended && let (Some(execution), Err(e)) = (execution, outcome) {
        let reason = e.to_string();
        ctx.registry.deliver(agent.0, ToAgent::Abort { execution, reason }).await;
    }
    if report_seq != 0 {
        ctx.registry.deliver(agent.0, ToAgent::Ack { report_seq, retry_later }).await;
    }
}
