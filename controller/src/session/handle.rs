//! [`SessionHandle`]: the cloneable handle of one open agent session (its outbound sender, its close token
//! and its number), with typed `assign`, `cancel`, `abort`, `ack` and `request` operations. The private
//! task behind it is the session task (`grpc::agent::task`), which owns the inbound half of the stream; the
//! outbound half is the tonic response stream fed by this handle's sender. Handles are stored in the
//! [`super::registry::AgentRegistry`]; callers that want "the agent, wherever it is" use
//! [`super::deliver::Sessions::deliver`] instead of a handle.

use std::time::Duration;

use dg_common::{
    ids::AgentId,
    protocol::{Assignment, ExecutionRef},
};
use dg_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ToAgent;

/// Outbound half of an agent session.
pub type SessionSender = mpsc::Sender<Result<pb::ControllerMessage, tonic::Status>>;

/// How long a command may wait for room in a session's outbound queue: an agent that does not read its
/// stream for that long counts as gone, rather than wedging the caller (dispatch, a cancel, a report's ack).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The session is closed (or its agent stopped reading it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent's session is closed")]
pub struct SessionClosed;

/// One open session of one agent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    agent: AgentId,
    session: u64,
    tx: SessionSender,
    close: CancellationToken,
}

impl SessionHandle {
    /// A handle over a session's outbound sender; `close` ends the session task.
    pub fn new(agent: AgentId, session: u64, tx: SessionSender, close: CancellationToken) -> Self {
        Self { agent, session, tx, close }
    }

    /// The agent.
    pub fn agent(&self) -> AgentId {
        self.agent
    }

    /// This replica's number for the session (a newer session of the same agent has a larger one).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Closes the session (a newer one replaced it, or the agent was revoked).
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Ends the session with `status` as the stream's last word (best effort: with the outbound queue full the
    /// agent sees the stream end without it), then closes it.
    pub fn end(&self, status: tonic::Status) {
        if !self.close.is_cancelled() {
            let _ = self.tx.try_send(Err(status));
        }
        self.close();
    }

    /// A token cancelled when the session is closed.
    pub fn closed(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Whether the session is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.close.is_cancelled() || self.tx.is_closed()
    }

    /// Runs one attempt on the agent.
    pub async fn assign(&self, assignment: Assignment) -> Result<(), SessionClosed> {
        self.send(ToAgent::Assign(Box::new(assignment))).await
    }

    /// Asks the agent to stop an attempt (it confirms with a cancelled `Failed`).
    pub async fn cancel(&self, execution: ExecutionRef, reason: String) -> Result<(), SessionClosed> {
        self.send(ToAgent::Cancel { execution, reason }).await
    }

    /// Tells the agent the controller has ended an attempt.
    pub async fn abort(&self, execution: ExecutionRef, reason: String) -> Result<(), SessionClosed> {
        self.send(ToAgent::Abort { execution, reason }).await
    }

    /// Acknowledges a report.
    pub async fn ack(&self, report_seq: u64, retry_later: bool) -> Result<(), SessionClosed> {
        self.send(ToAgent::Ack { report_seq, retry_later }).await
    }

    /// Sends a short request (answered by an `AgentResponse` with its id; see `session::rpc`).
    pub async fn request(&self, request: pb::AgentRequest) -> Result<(), SessionClosed> {
        self.send_wire(pb::ControllerMessage { kind: Some(pb::controller_message::Kind::Request(request)) }).await
    }

    /// Sends any command.
    pub async fn send(&self, m: ToAgent) -> Result<(), SessionClosed> {
        self.send_wire(m.into()).await
    }

    /// Sends a wire message: the session's first message (`Welcome`) and the typed operations above.
    pub(super) async fn send_wire(&self, m: pb::ControllerMessage) -> Result<(), SessionClosed> {
        if self.close.is_cancelled() {
            return Err(SessionClosed);
        }
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(m))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(SessionClosed),
        }
    }
}
