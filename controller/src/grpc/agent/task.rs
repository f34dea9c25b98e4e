//! One agent session from its accepted Hello to its end. [`open`] reconciles the attempts the Hello lists,
//! registers the session's [`SessionHandle`] (before the agent is marked online, so whoever sees it online can
//! reach it), records the connection and the Redis presence, and returns the outbound stream with the
//! [`SessionTask`], which the tonic handler spawns on the controller's task tracker. The task reads the
//! agent's messages until the stream ends, the agent is revoked or replaced, or the controller shuts down;
//! then it unregisters and records the disconnect. Each heartbeat, and each result (`Completed`) before it
//! is recorded, reads the agent's standing in PostgreSQL: the session of a revoked agent, or one opened with
//! a certificate a renewal has superseded, ends there with the reason as the stream's status (this holds
//! while Redis, which carries the revocation broadcast, is down). Reports are answered here (an `Ack`, and
//! an `Abort` for an attempt the controller has ended), through [`Sessions::deliver`].

use std::{sync::Arc, time::Duration};

use dg_common::{error::FieldError, ids::AgentId, protocol::ExecutionRef, protocol::wire};
use dg_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::handshake::{self, AgentHello};
use crate::session::{ToAgent, deliver::Sessions, handle::SessionHandle, rpc::AgentRpc};
use crate::{
    coordination::Coordination,
    error::{ControllerError, ControllerResult},
    metrics::Metrics,
    service::{
        agents::{AgentsService, HeartbeatError, Refusal},
        executions::ExecutionsService,
    },
};

/// Controller messages waiting for an agent's stream.
const OUTBOUND_QUEUE: usize = 64;

/// Session settings sent to agents.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Lease extended by each heartbeat.
    pub lease_secs: i64,
}

/// What sessions need; cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionEnv {
    /// Agent rows (online, heartbeat, revocation).
    pub agents: AgentsService,
    /// Reports, heartbeats and reconciliation.
    pub executions: ExecutionsService,
    /// Sessions here and the way to the others.
    pub sessions: Sessions,
    /// Pending requests to agents.
    pub rpc: AgentRpc,
    /// Agent presence in Redis.
    pub coord: Coordination,
    /// Connected-agents gauge.
    pub metrics: Metrics,
    /// Heartbeat and lease.
    pub settings: Arc<AgentSettings>,
}

/// The outbound half of a session, as the tonic response stream.
pub type Outbound = ReceiverStream<Result<pb::ControllerMessage, tonic::Status>>;

/// Opens a session for an accepted Hello. `shutdown` is the controller's; the session gets a child of it.
pub async fn open(
    env: &SessionEnv,
    agent: AgentId,
    cert: String,
    hello: AgentHello,
    inbound: Streaming<pb::AgentMessage>,
    shutdown: &CancellationToken,
) -> ControllerResult<(Outbound, SessionTask)> {
    let running: Vec<(uuid::Uuid, i32)> =
        hello.running.iter().map(|r| (r.id.0, i32::try_from(r.attempt.0).unwrap_or(i32::MAX))).collect();
    let stale = env.executions.reconcile(agent.0, &running).await?;
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    tx.send(Ok(handshake::welcome(agent, env.settings.heartbeat)))
        .await
        .map_err(|_| ControllerError::Unavailable("session closed".into()))?;
    let handle = env.sessions.registry().register(agent, tx, shutdown.child_token());
    let tools = serde_json::to_value(&hello.tools).unwrap_or_default();
    if let Err(e) = env.agents.connected(agent.0, &hello.hostname, &hello.agent_version, tools).await {
        env.sessions.registry().unregister(&handle);
        return Err(e);
    }
    env.metrics.agents_connected.set(i64::try_from(env.sessions.registry().connected().len()).unwrap_or(0));
    env.coord.set_presence(agent.0, env.settings.heartbeat * 3).await;
    info!(agent_id = %agent, hostname = %hello.hostname, version = %hello.agent_version, "agent session opened");
    Ok((ReceiverStream::new(rx), SessionTask { env: env.clone(), handle, cert, inbound, stale }))
}

/// The private task of one session (see the module documentation).
pub struct SessionTask {
    env: SessionEnv,
    handle: SessionHandle,
    /// `sha256:<hex>` of the certificate the session was opened with.
    cert: String,
    inbound: Streaming<pb::AgentMessage>,
    /// Attempts the Hello listed that the controller has ended: aborted first thing.
    stale: Vec<ExecutionRef>,
}

impl SessionTask {
    /// The session's agent.
    pub fn agent(&self) -> AgentId {
        self.handle.agent()
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let (env, agent) = (&self.env, self.handle.agent());
        for execution in std::mem::take(&mut self.stale) {
            let reason = "the controller ended this attempt while the agent was away".to_owned();
            env.sessions.deliver(agent.0, ToAgent::Abort { execution, reason }).await;
        }
        // The agent may have queued work.
        env.executions.wake();
        let closed = self.handle.closed();
        loop {
            let msg = tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                m = self.inbound.message() => m,
            };
            match msg {
                Ok(Some(m)) => match handle(env, agent, &self.cert, m).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::End(refusal)) => {
                        let status = tonic::Status::from(ControllerError::from(refusal));
                        warn!(reason = %status.message(), "agent session ended: revoked or superseded");
                        self.handle.end(status);
                        break;
                    }
                    Err(e) => warn!(error = %e, "agent report rejected"),
                },
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "agent stream error");
                    break;
                }
            }
        }
        if env.sessions.registry().unregister(&self.handle)
            && let Err(e) = env.agents.disconnected(agent.0).await
        {
            warn!(error = %e, "cannot record disconnect");
        }
        env.metrics.agents_connected.set(i64::try_from(env.sessions.registry().connected().len()).unwrap_or(0));
        env.coord.clear_presence(agent.0).await;
        info!("agent session closed");
    }
}

/// Whether a session goes on after a message.
enum Flow {
    Continue,
    /// The agent is revoked or its certificate superseded.
    End(Refusal),
}

async fn handle(env: &SessionEnv, agent: AgentId, cert: &str, m: pb::AgentMessage) -> ControllerResult<Flow> {
    use pb::agent_message::Kind;
    let report_seq = m.report_seq;
    let Some(kind) = m.kind else { return Ok(Flow::Continue) };
    match kind {
        Kind::Heartbeat(h) => {
            let running = wire::running_of(h.running).map_err(|e| ControllerError::Protocol(e.within("heartbeat")))?;
            let busy = match env.agents.heartbeat(agent.0, cert).await {
                Ok(busy) => busy,
                Err(HeartbeatError::Refused(r)) => return Ok(Flow::End(r)),
                Err(HeartbeatError::Failed(e)) => return Err(e),
            };
            env.coord.set_presence(agent.0, env.settings.heartbeat * 3).await;
            // An idle agent that lists nothing has no lease to extend and no attempt to reconcile (one claimed
            // after the heartbeat was read is within its grace anyway).
            if busy || !running.is_empty() {
                let s = &env.settings;
                // An assignment gets one heartbeat interval (plus delivery slack) to show up in the agent's list.
                let grace = i64::try_from(s.heartbeat.as_secs()).unwrap_or(10) * 2 + 1;
                env.executions.heartbeat(agent, &running, s.lease_secs, grace).await?;
            }
        }
        Kind::Response(r) => env.rpc.on_response(r),
        Kind::Hello(_) => return Err(FieldError::new("hello", "sent twice").into()),
        report => {
            // A result is the report that commits work: it is taken only from an agent in good standing (a
            // revocation broadcast may not have reached this replica while Redis is down). Not acknowledged,
            // a refused result of a superseded certificate comes again on the agent's next session.
            if matches!(report, Kind::Completed(_))
                && let Err(refusal) = env.agents.standing(agent.0, cert).await?
            {
                return Ok(Flow::End(refusal));
            }
            let execution = wire::execution_of(&report);
            let outcome = match wire::report_of(report) {
                Some(Ok(r)) => env.executions.report(agent, r).await,
                // A report that does not decode is input that does not fit the attempt: it ends the attempt
                // (when it names one this agent runs).
                Some(Err(e)) => match execution {
                    Some(execution) => env.executions.refuse_report(agent, execution, e.to_string()).await,
                    None => Err(ControllerError::Protocol(e)),
                },
                None => Ok(()),
            };
            answer(env, agent, report_seq, execution, &outcome).await;
            return outcome.map(|()| Flow::Continue);
        }
    }
    Ok(Flow::Continue)
}

/// Answers a report: an `Abort` when the controller has ended (or never gave this agent) the attempt it is
/// about, and for a report with a sequence number an `Ack`, asking for a resend when the report could not be
/// recorded now (the controller's database is unavailable): a report is never dropped silently.
async fn answer(
    env: &SessionEnv,
    agent: AgentId,
    report_seq: u64,
    execution: Option<ExecutionRef>,
    outcome: &ControllerResult<()>,
) {
    let retry_later = matches!(outcome, Err(ControllerError::Unavailable(_) | ControllerError::Database(_)));
    let ended = matches!(outcome, Err(ControllerError::FailedPrecondition(_) | ControllerError::NotFound(_)));
    if ended && let (Some(execution), Err(e)) = (execution, outcome) {
        let reason = e.to_string();
        env.sessions.deliver(agent.0, ToAgent::Abort { execution, reason }).await;
    }
    if report_seq != 0 {
        env.sessions.deliver(agent.0, ToAgent::Ack { report_seq, retry_later }).await;
    }
}
