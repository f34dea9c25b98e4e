//! The agent sessions open on this replica: agent id -> the sender of its outbound stream. A newer session of
//! the same agent replaces (and closes) the older one; revocation closes it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use dg_proto::v1::ControllerMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Outbound half of an agent session.
pub type SessionSender = mpsc::Sender<Result<ControllerMessage, tonic::Status>>;

struct Entry {
    session: u64,
    tx: SessionSender,
    cancel: CancellationToken,
}

/// Sessions open on this replica.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    inner: Arc<Mutex<HashMap<Uuid, Entry>>>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry").field("connected", &self.connected().len()).finish()
    }
}

impl AgentRegistry {
    /// Registers a session; closes an older session of the same agent. Returns the session number.
    pub fn register(&self, agent: Uuid, tx: SessionSender, cancel: CancellationToken) -> u64 {
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self.lock().insert(agent, Entry { session, tx, cancel });
        if let Some(old) = old {
            old.cancel.cancel();
        }
        session
    }

    /// Removes a session if it is still the agent's current one; returns whether it was.
    pub fn unregister(&self, agent: Uuid, session: u64) -> bool {
        let mut map = self.lock();
        if map.get(&agent).is_some_and(|e| e.session == session) {
            map.remove(&agent);
            true
        } else {
            false
        }
    }

    /// Closes an agent's session (revocation).
    pub fn disconnect(&self, agent: Uuid) {
        if let Some(e) = self.lock().remove(&agent) {
            e.cancel.cancel();
        }
    }

    /// Sends a command to an agent connected here; false when it is not (or its session just closed).
    pub async fn deliver(&self, agent: Uuid, m: super::ToAgent) -> bool {
        match self.sender(agent) {
            Some(tx) => tx.send(Ok(m.into())).await.is_ok(),
            None => false,
        }
    }

    /// The outbound sender of an agent's session.
    pub fn sender(&self, agent: Uuid) -> Option<SessionSender> {
        self.lock().get(&agent).map(|e| e.tx.clone())
    }

    /// Agents with a session on this replica.
    pub fn connected(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        // A poisoned map is still a valid map: every mutation is a single insert or remove.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
