//! The opening of an agent session, as plain functions: read the first message ([`read_hello`]), check it
//! ([`accept_hello`]: it must be a Hello in a protocol version this controller speaks, listing well-formed
//! attempts), and build the answer ([`welcome`]). Reconciling the attempts the Hello lists is the
//! executions service's (`ExecutionsService::reconcile`), called by `grpc::agent::task::open`. Every failure is
//! a [`HandshakeError`], with one gRPC code per kind.

use std::time::Duration;

use dg_common::{
    ids::AgentId,
    protocol::{ExecutionRef, ProtocolError, wire},
};
use dg_proto::{AGENT_PROTOCOL_VERSION, v1 as pb};
use tonic::{Status, Streaming};

use crate::grpc::convert::ToolJson;

/// How long an agent has to send its Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Tools kept from a Hello.
const MAX_TOOLS: usize = 32;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The first message is not a Hello.
    #[error("hello: the first message must be Hello")]
    NotHello,
    /// No first message in time.
    #[error("hello: not received within {}s", HELLO_TIMEOUT.as_secs())]
    Timeout,
    /// The stream failed or ended before the Hello.
    #[error("hello: {0}")]
    Stream(Status),
    /// The agent speaks another protocol version.
    #[error("protocol_version: agent speaks {agent}, controller speaks {controller}; upgrade the older side")]
    Version {
        /// The agent's.
        agent: u32,
        /// Ours.
        controller: u32,
    },
    /// A field of the Hello does not decode.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl From<HandshakeError> for Status {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::NotHello | HandshakeError::Protocol(_) => Status::invalid_argument(e.to_string()),
            HandshakeError::Timeout => Status::deadline_exceeded(e.to_string()),
            HandshakeError::Stream(s) => s,
            HandshakeError::Version { .. } => Status::failed_precondition(e.to_string()),
        }
    }
}

/// A Hello as the controller keeps it.
#[derive(Debug)]
pub struct AgentHello {
    /// Host name (informational).
    pub hostname: String,
    /// Agent software version.
    pub agent_version: String,
    /// Tools found on the host, as stored on the agent row.
    pub tools: Vec<ToolJson>,
    /// Attempts the agent still runs from an earlier session.
    pub running: Vec<ExecutionRef>,
}

/// Reads the session's first message, which must be a Hello accepted by [`accept_hello`].
pub async fn read_hello(inbound: &mut Streaming<pb::AgentMessage>) -> Result<AgentHello, HandshakeError> {
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Hello(h)), .. }))) => accept_hello(h),
        Ok(Ok(Some(_))) => Err(HandshakeError::NotHello),
        Ok(Ok(None)) => Err(HandshakeError::Stream(Status::cancelled("hello: the stream ended"))),
        Ok(Err(s)) => Err(HandshakeError::Stream(s)),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Checks a Hello: the protocol version first (an agent of another version gets an error naming both),
/// then the attempts it lists.
pub fn accept_hello(h: pb::Hello) -> Result<AgentHello, HandshakeError> {
    negotiate(h.protocol_version)?;
    let running = wire::running_of(h.running).map_err(|e| e.within("hello"))?;
    let clean = |s: &str, max: usize| s.chars().filter(|c| !c.is_control()).take(max).collect::<String>();
    Ok(AgentHello {
        hostname: clean(&h.hostname, 253),
        agent_version: clean(&h.agent_version, 64),
        tools: h
            .tools
            .iter()
            .take(MAX_TOOLS)
            .map(|t| ToolJson { name: clean(&t.name, 64), version: clean(&t.version, 128), path: clean(&t.path, 4096) })
            .collect(),
        running,
    })
}

/// The protocol version this controller accepts: exactly its own (the version changes only when old and new
/// sides cannot talk).
pub fn negotiate(agent: u32) -> Result<(), HandshakeError> {
    if agent == AGENT_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::Version { agent, controller: AGENT_PROTOCOL_VERSION })
    }
}

/// The answer to an accepted Hello.
pub fn welcome(agent: AgentId, heartbeat: Duration) -> pb::ControllerMessage {
    pb::ControllerMessage {
        kind: Some(pb::controller_message::Kind::Welcome(pb::Welcome {
            protocol_version: AGENT_PROTOCOL_VERSION,
            agent_id: agent.to_string(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: i64::try_from(heartbeat.as_secs()).unwrap_or(10).max(1),
                nanos: 0,
            }),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, running: Vec<pb::ExecutionRef>) -> pb::Hello {
        pb::Hello {
            protocol_version: version,
            agent_version: "1.0\n".into(),
            hostname: "db-host".into(),
            tools: (0..40)
                .map(|i| pb::ToolInfo { name: format!("tool{i}"), version: "15".into(), path: "/usr/bin/x".into() })
                .collect(),
            running,
        }
    }

    #[test]
    fn only_this_protocol_version_is_accepted_and_the_refusal_names_both() {
        assert!(negotiate(AGENT_PROTOCOL_VERSION).is_ok());
        for other in [0, 1, 2, AGENT_PROTOCOL_VERSION + 1, u32::MAX] {
            if other == AGENT_PROTOCOL_VERSION {
                continue;
            }
            let e = accept_hello(hello(other, vec![])).expect_err("another version");
            let status = Status::from(e);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(status.message().contains(&format!("agent speaks {other}")), "{}", status.message());
            assert!(status.message().contains(&format!("controller speaks {AGENT_PROTOCOL_VERSION}")));
        }
    }

    #[test]
    fn a_hello_keeps_its_attempts_and_bounded_clean_text_and_a_bad_attempt_names_the_field() {
        let id = uuid::Uuid::now_v7().to_string();
        let h = accept_hello(hello(
            AGENT_PROTOCOL_VERSION,
            vec![pb::ExecutionRef { execution_id: id.clone(), attempt: 2 }],
        ))
        .expect("accepted");
        assert_eq!(h.running.len(), 1);
        assert_eq!((h.running[0].id.to_string(), h.running[0].attempt.0), (id, 2));
        assert_eq!(h.agent_version, "1.0", "control characters are dropped");
        assert_eq!(h.tools.len(), MAX_TOOLS);

        let bad = hello(AGENT_PROTOCOL_VERSION, vec![pb::ExecutionRef { execution_id: "nope".into(), attempt: 1 }]);
        let status = Status::from(accept_hello(bad).expect_err("bad id"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("hello."), "{}", status.message());
    }

    #[test]
    fn the_welcome_speaks_this_version_and_a_positive_heartbeat() {
        let agent = AgentId::new();
        let Some(pb::controller_message::Kind::Welcome(w)) = welcome(agent, Duration::ZERO).kind else {
            panic!("a welcome")
        };
        assert_eq!((w.protocol_version, w.agent_id), (AGENT_PROTOCOL_VERSION, agent.to_string()));
        assert_eq!(w.heartbeat_interval.map(|d| d.seconds), Some(1));
    }
}
