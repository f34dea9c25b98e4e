//! The controller's side of agent sessions, as the services see them: the cloneable [`handle::SessionHandle`]
//! of each open session
//! and the registry of those on this replica ([`registry`]), the one door to an agent wherever its session is
//! ([`deliver::Sessions::deliver`]: here, relayed to the replica holding it, or "not connected"), what can be
//! sent ([`ToAgent`], converted to the wire here and nowhere else), and short request/response exchanges
//! with their object uploads ([`rpc`]). The inbound side lives at the edge: `grpc::agent` authenticates,
//! runs the opening handshake (plain functions, `grpc::agent::handshake`) and spawns the session task that
//! owns each stream (`grpc::agent::task`), which registers its handle here; services above it speak the protocol model of `dg_common::protocol`, never
//! generated types.

pub mod deliver;
pub mod handle;
pub mod registry;
pub mod rpc;

use dg_common::protocol::{Assignment, ExecutionRef};
use dg_proto::v1 as pb;

/// A command for an agent.
#[derive(Clone, Debug)]
pub enum ToAgent {
    /// Run one attempt of an execution.
    Assign(Box<Assignment>),
    /// Stop an attempt.
    Cancel {
        /// The attempt.
        execution: ExecutionRef,
        /// Why (shown in the agent's log).
        reason: String,
    },
    /// The controller has ended this attempt: stop it, delete what it wrote, write no manifest.
    Abort {
        /// The attempt.
        execution: ExecutionRef,
        /// Why (shown in the agent's log).
        reason: String,
    },
    /// A report is durable (`retry_later`: it could not be recorded now; send it again).
    Ack {
        /// The report's sequence number.
        report_seq: u64,
        /// Send it again later.
        retry_later: bool,
    },
}

impl ToAgent {
    /// The command's name, for logs (an assignment's contents include credentials).
    pub fn kind(&self) -> &'static str {
        match self {
            ToAgent::Assign(_) => "assign",
            ToAgent::Cancel { .. } => "cancel",
            ToAgent::Abort { .. } => "abort",
            ToAgent::Ack { .. } => "ack",
        }
    }
}

impl From<ToAgent> for pb::ControllerMessage {
    fn from(m: ToAgent) -> Self {
        use pb::controller_message::Kind;
        let kind = match m {
            ToAgent::Assign(a) => Kind::Assign((*a).into()),
            ToAgent::Cancel { execution, reason } => {
                Kind::Cancel(pb::Cancel { execution: Some(execution.into()), reason })
            }
            ToAgent::Abort { execution, reason } => {
                Kind::Abort(pb::Abort { execution: Some(execution.into()), reason })
            }
            ToAgent::Ack { report_seq, retry_later } => Kind::Ack(pb::Ack { report_seq, retry_later }),
        };
        pb::ControllerMessage { kind: Some(kind) }
    }
}
