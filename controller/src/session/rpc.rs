//! Short request/response exchanges with an agent over its session (tests, object reads and deletes on the
//! agent's host). A request is registered under a fresh id, sent as `AgentRequest`, and completed when the
//! agent's `AgentResponse` with that id arrives. The bytes of an object read do not travel on the session:
//! the agent opens a `SendObject` call for the request, whose handler takes the read's bounded data channel
//! with [`AgentRpc::accept_object`] (once, and only for the agent the request was sent to), so a slow reader
//! throttles that call alone, never the session's heartbeats and reports. Callers use the typed operations
//! ([`AgentRpc::test_database`], [`AgentRpc::test_storage`], [`AgentRpc::read`], [`AgentRpc::delete`]); the
//! wire messages stay in this module.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use dg_common::{
    error::FieldError,
    ids::AgentId,
    protocol::{DatabaseTarget, StorageTarget},
};
use dg_proto::v1::{self as pb, agent_request};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::registry::AgentRegistry;
use crate::error::{ControllerError, ControllerResult};

/// How long an agent gets to answer a test.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pieces of an object read buffered between its `SendObject` call and the reader (at most 1 MiB each).
const READ_BUFFER: usize = 4;

/// An agent's answer to a connection or storage test.
#[derive(Clone, Debug)]
pub struct TestReport {
    /// The test passed.
    pub ok: bool,
    /// Round trip measured by the agent.
    pub latency: Duration,
    /// Why it failed.
    pub error: String,
    /// Database server version (database tests).
    pub server_version: String,
}

impl TestReport {
    fn failed(error: String) -> Self {
        Self { ok: false, latency: Duration::ZERO, error, server_version: String::new() }
    }
}

struct Pending {
    agent: AgentId,
    reply: oneshot::Sender<pb::AgentResponse>,
    /// A read's data channel, until the agent's `SendObject` call takes it.
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
        let session = self
            .registry
            .handle(agent)
            .ok_or_else(|| ControllerError::Unavailable(format!("agent {agent} is not connected")))?;
        let id = Uuid::new_v4().to_string();
        let (reply, rx) = oneshot::channel();
        self.lock().insert(id.clone(), Pending { agent: AgentId(agent), reply, data });
        let request = pb::AgentRequest { request_id: id.clone(), kind: Some(kind) };
        if session.request(request).await.is_err() {
            self.lock().remove(&id);
            return Err(ControllerError::Unavailable(format!("agent {agent} disconnected")));
        }
        Ok((id, rx))
    }

    /// Sends a request and waits for its answer.
    async fn call(
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

    /// Reads one object through an agent: returns a receiver of its bytes and of the final answer (the
    /// number of bytes sent, or the agent's error).
    pub async fn read(
        &self,
        agent: Uuid,
        storage: StorageTarget,
        key: String,
    ) -> ControllerResult<(mpsc::Receiver<Bytes>, oneshot::Receiver<Result<u64, String>>, ReadGuard)> {
        let (data_tx, data_rx) = mpsc::channel(READ_BUFFER);
        let kind = agent_request::Kind::ReadObject(pb::ReadObject { storage: Some(storage.into()), key });
        let (id, rx) = self.send(agent, kind, Some(data_tx)).await?;
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Ok(r) = rx.await {
                let _ = done_tx.send(match r.kind {
                    _ if !r.error.is_empty() => Err(r.error),
                    Some(pb::agent_response::Kind::ReadBytes(n)) => Ok(n),
                    _ => Err("unexpected answer from the agent".into()),
                });
            }
        });
        Ok((data_rx, done_rx, ReadGuard { rpc: self.clone(), id }))
    }

    /// Tests a database connection from an agent.
    pub async fn test_database(&self, agent: Uuid, target: DatabaseTarget) -> ControllerResult<TestReport> {
        let kind = agent_request::Kind::TestDatabase(pb::TestDatabase { target: Some(target.into()) });
        self.test(agent, kind).await
    }

    /// Tests a storage from an agent (write, read back and delete a probe object).
    pub async fn test_storage(&self, agent: Uuid, storage: StorageTarget) -> ControllerResult<TestReport> {
        let kind = agent_request::Kind::TestStorage(pb::TestStorage { storage: Some(storage.into()) });
        self.test(agent, kind).await
    }

    async fn test(&self, agent: Uuid, kind: agent_request::Kind) -> ControllerResult<TestReport> {
        let r = self.call(agent, kind, TEST_TIMEOUT).await?;
        Ok(match r.kind {
            Some(pb::agent_response::Kind::Test(t)) => TestReport {
                ok: t.ok,
                latency: t
                    .latency
                    .map(|d| Duration::new(u64::try_from(d.seconds).unwrap_or(0), u32::try_from(d.nanos).unwrap_or(0)))
                    .unwrap_or_default()
                    .min(TEST_TIMEOUT),
                error: t.error.chars().take(4096).collect(),
                server_version: t.server_version.chars().take(256).collect(),
            },
            _ => {
                TestReport::failed(if r.error.is_empty() { "unexpected answer from the agent".into() } else { r.error })
            }
        })
    }

    /// Deletes every object below `prefix` through an agent: the number deleted, or the agent's error.
    pub async fn delete_prefix(
        &self,
        agent: Uuid,
        storage: StorageTarget,
        prefix: String,
    ) -> ControllerResult<Result<u32, String>> {
        let kind = agent_request::Kind::DeleteObjects(pb::DeleteObjects {
            storage: Some(storage.into()),
            keys: vec![],
            prefix,
        });
        let r = self.call(agent, kind, Duration::from_secs(120)).await?;
        Ok(match r.kind {
            _ if !r.error.is_empty() => Err(r.error),
            Some(pb::agent_response::Kind::Deleted(n)) => Ok(n),
            _ => Ok(0),
        })
    }

    /// Deletes objects through an agent: the number deleted, or the agent's error (inner `Err`).
    pub async fn delete(
        &self,
        agent: Uuid,
        storage: StorageTarget,
        keys: Vec<String>,
    ) -> ControllerResult<Result<u32, String>> {
        let kind = agent_request::Kind::DeleteObjects(pb::DeleteObjects {
            storage: Some(storage.into()),
            keys,
            prefix: String::new(),
        });
        let r = self.call(agent, kind, Duration::from_secs(120)).await?;
        Ok(match r.kind {
            _ if !r.error.is_empty() => Err(r.error),
            Some(pb::agent_response::Kind::Deleted(n)) => Ok(n),
            _ => Ok(0),
        })
    }

    /// An answer arrived.
    pub fn on_response(&self, r: pb::AgentResponse) {
        if let Some(p) = self.lock().remove(&r.request_id) {
            let _ = p.reply.send(r);
        }
    }

    /// The data channel of read `request_id`, for the `SendObject` call of `agent`: refused when no read is
    /// pending under that id (unknown, answered or abandoned: `NOT_FOUND`), when it was sent to another agent
    /// (`PERMISSION_DENIED`), or when a call already took it (`FAILED_PRECONDITION`). The channel is bounded:
    /// sending waits while the reader is slow, which stops reading the call and lets HTTP/2 flow control
    /// throttle the agent. The read's bytes end when the returned sender is dropped.
    pub fn accept_object(&self, agent: AgentId, request_id: &str) -> ControllerResult<mpsc::Sender<Bytes>> {
        let mut pending = self.lock();
        let p = pending
            .get_mut(request_id)
            .ok_or_else(|| ControllerError::NotFound(format!("read request {request_id:?}")))?;
        if p.agent != agent {
            return Err(ControllerError::PermissionDenied(format!(
                "read request {request_id:?} was not sent to agent {agent}"
            )));
        }
        p.data.take().ok_or_else(|| {
            ControllerError::FailedPrecondition(format!("read request {request_id:?} has no object to receive"))
        })
    }
}

/// Largest piece of a `SendObject` call.
pub const MAX_PIECE: usize = 1024 * 1024;

impl AgentRpc {
    /// Receives one `SendObject` call of `agent`: its first message names the read request, and every piece
    /// goes into that read's bounded channel, waiting while the reader is slow. Returns the bytes received.
    pub async fn receive_object(
        &self,
        agent: AgentId,
        mut call: tonic::Streaming<pb::ObjectChunk>,
    ) -> ControllerResult<u64> {
        let first = call
            .message()
            .await
            .map_err(|s| ControllerError::Unavailable(format!("object upload: {}", s.message())))?
            .ok_or_else(|| FieldError::new("request_id", "the first message must name the read request"))?;
        if first.request_id.is_empty() {
            return Err(FieldError::new("request_id", "is required in the first message").into());
        }
        let request_id = first.request_id.clone();
        let data = self.accept_object(agent, &request_id)?;
        let mut received = 0u64;
        let mut next = Some(first);
        while let Some(piece) = next {
            if piece.data.len() > MAX_PIECE {
                return Err(FieldError::new("data", "must be at most 1 MiB per message").into());
            }
            received += piece.data.len() as u64;
            if !piece.data.is_empty() && data.send(Bytes::from(piece.data)).await.is_err() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "read request {request_id:?} was abandoned by its reader"
                )));
            }
            next = call
                .message()
                .await
                .map_err(|s| ControllerError::Unavailable(format!("object upload: {}", s.message())))?;
        }
        Ok(received)
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
