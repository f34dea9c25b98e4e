//! Short request/response exchanges with an agent over its session (tests, object reads and deletes on the
//! agent's host). A request is registered under a fresh id, sent as `AgentRequest`, and completed when the
//! agent's `AgentResponse` with that id arrives; object reads also receive `ObjectData` pieces first.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use dg_proto::v1::{self as pb, agent_request, controller_message};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::registry::AgentRegistry;
use crate::error::{ControllerError, ControllerResult};

struct Pending {
    reply: oneshot::Sender<pb::AgentResponse>,
    data: Option<mpsc::Sender<Bytes>>,
}

/// Pending requests to agents connected to this replica.
#[derive(Clone, Default)]
pub struct AgentRpc {
    registry: AgentRegistry,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

impl std::fmt::Debug for AgentRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRpc").finish_non_exhaustive()
    }
}

/// Removes a pending entry when the caller gives up (timeout, dropped stream).
struct Guard<'a> {
    rpc: &'a AgentRpc,
    id: String,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.rpc.lock().remove(&self.id);
    }
}

impl AgentRpc {
    /// New request table over a session registry.
    pub fn new(registry: AgentRegistry) -> Self {
        Self { registry, pending: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn send(
        &self,
        agent: Uuid,
        kind: agent_request::Kind,
        data: Option<mpsc::Sender<Bytes>>,
    ) -> ControllerResult<(String, oneshot::Receiver<pb::AgentResponse>)> {
        let tx = self
            .registry
            .sender(agent)
            .ok_or_else(|| ControllerError::Unavailable(format!("agent {agent} is not connected")))?;
        let id = Uuid::new_v4().to_string();
        let (reply, rx) = oneshot::channel();
        self.lock().insert(id.clone(), Pending { reply, data });
        let msg = pb::ControllerMessage {
            kind: Some(controller_message::Kind::Request(pb::AgentRequest {
                request_id: id.clone(),
                kind: Some(kind),
            })),
        };
        if tx.send(Ok(msg)).await.is_err() {
            self.lock().remove(&id);
            return Err(ControllerError::Unavailable(format!("agent {agent} disconnected")));
        }
        Ok((id, rx))
    }

    /// Sends a request and waits for its answer.
    pub async fn call(
        &self,
        agent: Uuid,
        kind: agent_request::Kind,
        timeout: Duration,
    ) -> ControllerResult<pb::AgentResponse> {
        let (id, rx) = self.send(agent, kind, None).await?;
        let _guard = Guard { rpc: self, id };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ControllerError::Unavailable(format!("agent {agent} disconnected"))),
            Err(_) => {
                Err(ControllerError::Unavailable(format!("agent {agent} did not answer within {}s", timeout.as_secs())))
            }
        }
    }

    /// Reads one object through an agent: returns a receiver of its bytes and of the final answer.
    pub async fn read(
        &self,
        agent: Uuid,
        storage: pb::StorageTarget,
        key: String,
    ) -> ControllerResult<(mpsc::Receiver<Bytes>, oneshot::Receiver<pb::AgentResponse>, ReadGuard)> {
        let (data_tx, data_rx) = mpsc::channel(4);
        let kind = agent_request::Kind::ReadObject(pb::ReadObject { storage: Some(storage), key });
        let (id, rx) = self.send(agent, kind, Some(data_tx)).await?;
        Ok((data_rx, rx, ReadGuard { rpc: self.clone(), id }))
    }

    /// An answer arrived.
    pub fn on_response(&self, r: pb::AgentResponse) {
        if let Some(p) = self.lock().remove(&r.request_id) {
            let _ = p.reply.send(r);
        }
    }

    /// Object bytes arrived. Waits while the reader is slow (bounded buffer).
    pub async fn on_data(&self, d: pb::ObjectData) {
        let tx = self.lock().get(&d.request_id).and_then(|p| p.data.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Bytes::from(d.data)).await;
        }
    }
}

/// Keeps a read registered; dropping it abandons the read.
pub struct ReadGuard {
    rpc: AgentRpc,
    id: String,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.rpc.lock().remove(&self.id);
    }
}
