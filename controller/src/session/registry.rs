//! The agent sessions open on this replica: agent id -> its [`SessionHandle`]. A newer session of the same
//! agent replaces (and closes) the older one; revocation closes it. Only the session task registers and
//! unregisters; everyone else reads.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use dg_common::ids::AgentId;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handle::{SessionHandle, SessionSender};

/// Sessions open on this replica.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    inner: Arc<Mutex<HashMap<Uuid, SessionHandle>>>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry").field("connected", &self.connected().len()).finish()
    }
}

impl AgentRegistry {
    /// Registers a session under a fresh number; closes an older session of the same agent.
    pub fn register(&self, agent: AgentId, tx: SessionSender, close: CancellationToken) -> SessionHandle {
        let session = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = SessionHandle::new(agent, session, tx, close);
        let old = self.lock().insert(agent.0, handle.clone());
        if let Some(old) = old {
            old.close();
        }
        handle
    }

    /// Removes a session if it is still the agent's current one; returns whether it was.
    pub fn unregister(&self, handle: &SessionHandle) -> bool {
        let mut map = self.lock();
        if map.get(&handle.agent().0).is_some_and(|e| e.session() == handle.session()) {
            map.remove(&handle.agent().0);
            true
        } else {
            false
        }
    }

    /// Closes an agent's session (revocation), telling the agent why; whether it had one here.
    pub fn disconnect(&self, agent: Uuid, status: tonic::Status) -> bool {
        let removed = self.lock().remove(&agent);
        match removed {
            Some(e) => {
                e.end(status);
                true
            }
            None => false,
        }
    }

    /// The handle of an agent's session on this replica.
    pub fn handle(&self, agent: Uuid) -> Option<SessionHandle> {
        self.lock().get(&agent).cloned()
    }

    /// Whether an agent has a session on this replica.
    pub fn holds(&self, agent: Uuid) -> bool {
        self.lock().contains_key(&agent)
    }

    /// Agents with a session on this replica.
    pub fn connected(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SessionHandle>> {
        // A poisoned map is still a valid map: every mutation is a single insert or remove.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
