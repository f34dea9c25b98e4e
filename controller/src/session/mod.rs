//! The controller's side of agent sessions: which agents are connected here ([`registry`]), what can be sent
//! to them ([`ToAgent`], converted to the wire here and nowhere else), and short request/response exchanges
//! ([`rpc`]). The tonic stream handler in `grpc::agent` hands each stream to this layer; services above it
//! speak the protocol model of `dg_common::protocol`, never generated types.

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
