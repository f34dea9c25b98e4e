//! The one door to an agent: [`Sessions::deliver`] sends a command to the agent's session on this replica,
//! else relays it (cancels and aborts only) to the replica whose session the agent's Redis presence names,
//! over that replica's pub/sub channel, else answers [`Delivery::NotConnected`] so the caller can say so
//! (a line on the execution) and fall back (a cancel then ends the attempt itself). `Assign` and `Ack` are
//! never relayed: dispatch assigns only agents connected to its own replica, and an ack answers a report
//! that arrived on a local session. Without Redis there is no presence and no relay: `NotConnected`.
//!
//! [`Sessions::revoked`] closes a revoked agent's session wherever it is (here, and a broadcast every
//! replica's relay task reads; without Redis the holding replica finds out at the next heartbeat).
//!
//! Relays are best effort: PostgreSQL stays the source of truth. The receiving replica ([`Sessions::
//! deliver_here`], called by the relay task) delivers only to its own sessions, so a message never bounces.

use dg_common::protocol::{Attempt, ExecutionRef};
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

use super::{ToAgent, registry::AgentRegistry};
use crate::coordination::{Coordination, REVOKED_CHANNEL, replica_channel};

/// Where a command went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// To the agent's session on this replica.
    Here,
    /// Published to the replica holding the agent's session (at least one subscriber received it).
    Relayed {
        /// That replica's id.
        replica: String,
    },
    /// The agent has no session this replica can reach.
    NotConnected,
}

/// A command addressed to the replica holding an agent's session (JSON on that replica's channel).
/// `reason` defaults to empty, so a message of an older replica (which had none) still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplicaMessage {
    /// Ask the agent to stop an attempt.
    Cancel {
        /// Agent.
        agent: Uuid,
        /// Execution.
        execution: Uuid,
        /// Attempt.
        attempt: u32,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Tell the agent the controller has ended an attempt.
    Abort {
        /// Agent.
        agent: Uuid,
        /// Execution.
        execution: Uuid,
        /// Attempt.
        attempt: u32,
        /// Why.
        #[serde(default)]
        reason: String,
    },
}

impl ReplicaMessage {
    /// The relayable form of a command for `agent`; `None` for commands that are never relayed.
    pub fn of(agent: Uuid, m: &ToAgent) -> Option<Self> {
        match m {
            ToAgent::Cancel { execution, reason } => Some(ReplicaMessage::Cancel {
                agent,
                execution: execution.id.0,
                attempt: execution.attempt.0,
                reason: reason.clone(),
            }),
            ToAgent::Abort { execution, reason } => Some(ReplicaMessage::Abort {
                agent,
                execution: execution.id.0,
                attempt: execution.attempt.0,
                reason: reason.clone(),
            }),
            ToAgent::Assign(_) | ToAgent::Ack { .. } => None,
        }
    }

    /// The agent and the command, as the receiving replica delivers them.
    pub fn into_command(self) -> (Uuid, ToAgent) {
        let at = |execution: Uuid, attempt: u32| ExecutionRef { id: execution.into(), attempt: Attempt(attempt) };
        match self {
            ReplicaMessage::Cancel { agent, execution, attempt, reason } => {
                (agent, ToAgent::Cancel { execution: at(execution, attempt), reason: relayed(reason) })
            }
            ReplicaMessage::Abort { agent, execution, attempt, reason } => {
                (agent, ToAgent::Abort { execution: at(execution, attempt), reason: relayed(reason) })
            }
        }
    }
}

fn relayed(reason: String) -> String {
    if reason.is_empty() { "requested through another controller replica".into() } else { reason }
}

/// The replica to relay to, once this replica could not deliver a command itself: the holder named by the
/// agent's presence, unless the command is not relayable, there is no presence (not connected, or Redis is
/// down), or the presence names this replica (a stale record of a session that just closed here).
pub fn relay_target<'a>(relayable: bool, holder: Option<&'a str>, this_replica: &str) -> Option<&'a str> {
    holder.filter(|h| relayable && !h.is_empty() && *h != this_replica)
}

/// The outcome of publishing to `replica`'s channel: relayed when some subscriber received it; nobody
/// listening (that replica is gone, its presence not yet expired) or Redis not answering is "not connected".
pub fn published(replica: &str, receivers: Option<i64>) -> Delivery {
    match receivers {
        Some(n) if n > 0 => Delivery::Relayed { replica: replica.to_owned() },
        _ => Delivery::NotConnected,
    }
}

/// Sessions on this replica plus the way to the others. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sessions {
    registry: AgentRegistry,
    coord: Coordination,
}

impl Sessions {
    /// Over this replica's registry and the Redis coordination.
    pub fn new(registry: AgentRegistry, coord: Coordination) -> Self {
        Self { registry, coord }
    }

    /// This replica's sessions.
    pub fn registry(&self) -> &AgentRegistry {
        &self.registry
    }

    /// Delivers a command to `agent`: here, else relayed to the replica holding its session, else not.
    pub async fn deliver(&self, agent: Uuid, m: ToAgent) -> Delivery {
        let relay = ReplicaMessage::of(agent, &m);
        if self.deliver_here(agent, m).await {
            return Delivery::Here;
        }
        let Some(relay) = relay else { return Delivery::NotConnected };
        let holder = self.coord.presence(agent).await;
        let Some(replica) = relay_target(true, holder.as_deref(), self.coord.replica()) else {
            return Delivery::NotConnected;
        };
        let payload = match serde_json::to_string(&relay) {
            Ok(p) => p,
            Err(e) => {
                warn!(%agent, error = %e, "cannot encode a relay message");
                return Delivery::NotConnected;
            }
        };
        published(replica, self.coord.publish_counted(&replica_channel(replica), payload).await)
    }

    /// Closes a revoked agent's session wherever it is, ending its stream with `status`: here, and on every
    /// other replica (a broadcast on [`REVOKED_CHANNEL`], which the relay task of each one reads). Best effort
    /// across replicas: without Redis, the holding replica learns it from PostgreSQL at the session's next
    /// heartbeat.
    pub async fn revoked(&self, agent: Uuid, status: tonic::Status) {
        self.registry.disconnect(agent, status);
        self.coord.publish(REVOKED_CHANNEL, agent.to_string()).await;
    }

    /// Delivers a command to `agent`'s session on this replica only; false when it has none here.
    pub async fn deliver_here(&self, agent: Uuid, m: ToAgent) -> bool {
        match self.registry.handle(agent) {
            Some(h) => h.send(m).await.is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use dg_common::ids::ExecutionId;

    use super::*;

    #[test]
    fn only_cancels_and_aborts_are_relayed_to_another_replica_that_holds_the_session() {
        let me = "replica-a";
        assert_eq!(relay_target(true, Some("replica-b"), me), Some("replica-b"));
        assert_eq!(relay_target(false, Some("replica-b"), me), None, "assign and ack stay local");
        assert_eq!(relay_target(true, None, me), None, "no presence (not connected, or Redis down)");
        assert_eq!(relay_target(true, Some(me), me), None, "a stale presence of this replica: never to itself");
        assert_eq!(relay_target(true, Some(""), me), None);

        assert_eq!(published("replica-b", Some(1)), Delivery::Relayed { replica: "replica-b".into() });
        assert_eq!(published("replica-b", Some(0)), Delivery::NotConnected, "nobody listens there any more");
        assert_eq!(published("replica-b", None), Delivery::NotConnected, "redis did not answer");
    }

    #[test]
    fn relay_messages_round_trip_and_older_ones_without_a_reason_still_read() {
        let agent = Uuid::now_v7();
        let execution = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(3) };
        for m in [
            ToAgent::Cancel { execution, reason: "cancelled by an operator".into() },
            ToAgent::Abort { execution, reason: "lease expired".into() },
        ] {
            let relay = ReplicaMessage::of(agent, &m).expect("relayable");
            let text = serde_json::to_string(&relay).expect("encodes");
            let back: ReplicaMessage = serde_json::from_str(&text).expect("decodes");
            assert_eq!(back, relay);
            let (to, command) = back.into_command();
            assert_eq!(to, agent);
            assert_eq!(format!("{command:?}"), format!("{m:?}"));
        }
        assert!(ReplicaMessage::of(agent, &ToAgent::Ack { report_seq: 1, retry_later: false }).is_none());

        // The format replicas of the previous release publish.
        let old = format!(r#"{{"kind":"cancel","agent":"{agent}","execution":"{}","attempt":2}}"#, execution.id);
        let (to, command) = serde_json::from_str::<ReplicaMessage>(&old).expect("reads").into_command();
        assert_eq!(to, agent);
        match command {
            ToAgent::Cancel { execution: e, reason } => {
                assert_eq!((e.id, e.attempt), (execution.id, Attempt(2)));
                assert!(!reason.is_empty(), "the agent's log says why");
            }
            other => panic!("a cancel, got {other:?}"),
        }
        assert!(serde_json::from_str::<ReplicaMessage>(r#"{"kind":"assign"}"#).is_err());
    }
}
