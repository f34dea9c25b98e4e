//! A scripted fake agent: enrolled through the public API with a real certificate, it opens the real mTLS
//! session and then does exactly what a test tells it (send a Hello listing some attempts, heartbeat with a
//! chosen list, report chunks, results or failures, ignore a Cancel, take a request and upload an object on
//! its own `SendObject` call), so protocol cases run in milliseconds without a database tool. The same peer
//! can drive fleet-scale tests.

use std::time::Duration;

use dg_agent::{enroll, state::StateDir};
use dg_proto::{
    AGENT_PROTOCOL_VERSION,
    v1::{self as pb, agent_message::Kind, agent_session_service_client::AgentSessionServiceClient},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Identity};

use crate::{
    cluster::{Clients, Cluster, authed},
    suffix,
};

/// An enrolled identity that can open sessions.
pub struct FakeAgent {
    /// Agent id.
    pub id: String,
    dir: StateDir,
}

/// One open session of a fake agent. Acks and Aborts the controller sends are collected (not returned by
/// [`FakeSession::next`]), for the test to look at.
pub struct FakeSession {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::ControllerMessage>,
    /// Acknowledgements received.
    pub acks: Vec<pb::Ack>,
    /// Aborts received.
    pub aborts: Vec<pb::Abort>,
}

impl FakeAgent {
    /// Speaks with the identity in an enrolled agent's state directory (the real agent's, when it is stopped).
    pub fn of(id: &str, state_dir: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self { id: id.to_owned(), dir: StateDir::open(state_dir)? })
    }

    /// The state directory holding this identity.
    pub fn state_dir(&self) -> &std::path::Path {
        self.dir.root()
    }

    /// Enrolls a new agent through `CreateJoinToken` + `Enroll`.
    pub async fn enroll(cluster: &Cluster, c: &mut Clients) -> anyhow::Result<Self> {
        let jt =
            c.agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &c.token)).await?.into_inner();
        let dir = StateDir::open(&cluster.dir.path().join(format!("fake-{}", suffix())))?;
        let id = enroll::enroll(&cluster.api_endpoint(), &jt.token, &jt.ca_fingerprint, &dir).await?;
        Ok(Self { id, dir })
    }

    async fn client(&self) -> anyhow::Result<AgentSessionServiceClient<tonic::transport::Channel>> {
        let state = self.dir.load()?;
        let identity = Identity::from_pem(self.dir.read("cert.pem")?, self.dir.read("key.pem")?);
        let channel = enroll::channel(&state.agent_endpoint, &self.dir.read("ca.pem")?, Some(identity)).await?;
        Ok(AgentSessionServiceClient::new(channel))
    }

    /// Renews the certificate over `Renew`, presenting this identity's certificate. The new identity lives in
    /// a state directory of its own, so this one keeps the old certificate (to try it after it is superseded).
    /// The controller's refusal is returned as its status.
    pub async fn renew(&self, cluster: &Cluster) -> anyhow::Result<Result<FakeAgent, tonic::Status>> {
        let (key, csr_pem) = enroll::new_key_and_csr()?;
        let answer = self.client().await?.renew(pb::RenewRequest { csr_pem }).await;
        let resp = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => return Ok(Err(status)),
        };
        let dir = StateDir::open(&cluster.dir.path().join(format!("fake-{}", suffix())))?;
        for entry in std::fs::read_dir(self.dir.root())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), dir.root().join(entry.file_name()))?;
            }
        }
        dir.write("key.pem", key.serialize_pem().as_bytes(), 0o600)?;
        dir.write("cert.pem", resp.certificate_pem.as_bytes(), 0o600)?;
        Ok(Ok(FakeAgent { id: self.id.clone(), dir }))
    }

    /// Uploads an object for a read request on a `SendObject` call of its own, as these pieces (the first
    /// names the request); the controller's answer or its status.
    pub async fn send_object(
        &self,
        pieces: Vec<pb::ObjectChunk>,
    ) -> anyhow::Result<Result<pb::SendObjectResponse, tonic::Status>> {
        let mut client = self.client().await?;
        Ok(client.send_object(tokio_stream::iter(pieces)).await.map(tonic::Response::into_inner))
    }

    /// Opens a session: Hello (listing `running`, as (execution id, attempt)), then waits for Welcome.
    pub async fn connect(&self, running: &[(String, u32)]) -> anyhow::Result<FakeSession> {
        let endpoint = self.dir.load()?.agent_endpoint;
        self.connect_to(&endpoint, running).await
    }
}

/// Fleet helpers: a session on a chosen replica, and every controller message as it comes.
impl FakeAgent {
    /// Like [`FakeAgent::connect`], on `endpoint` (`https://host:port` of one controller replica's agent port)
    /// instead of the endpoint enrollment recorded, so a fleet can be split between replicas.
    pub async fn connect_to(&self, endpoint: &str, running: &[(String, u32)]) -> anyhow::Result<FakeSession> {
        let identity = Identity::from_pem(self.dir.read("cert.pem")?, self.dir.read("key.pem")?);
        let channel = enroll::channel(endpoint, &self.dir.read("ca.pem")?, Some(identity)).await?;
        let mut client = AgentSessionServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::Hello {
            protocol_version: AGENT_PROTOCOL_VERSION,
            agent_version: "fake".into(),
            hostname: "fake-host".into(),
            tools: vec![],
            running: running
                .iter()
                .map(|(id, attempt)| pb::ExecutionRef { execution_id: id.clone(), attempt: *attempt })
                .collect(),
        };
        tx.send(pb::AgentMessage { report_seq: 0, kind: Some(Kind::Hello(hello)) }).await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await?? {
            Some(pb::ControllerMessage { kind: Some(pb::controller_message::Kind::Welcome(_)) }) => {}
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }
        Ok(FakeSession { tx, inbound, acks: Vec::new(), aborts: Vec::new() })
    }
}

impl FakeSession {
    /// The next controller message of any kind, Acks and Aborts included (they are returned, not collected,
    /// and requests are not answered); `None` once the controller ends the stream. Cancel-safe (it polls the
    /// stream once), so a driver can `select!` on it next to its own timers.
    pub async fn next_raw(&mut self) -> anyhow::Result<Option<pb::controller_message::Kind>> {
        loop {
            match self.inbound.message().await? {
                None => return Ok(None),
                Some(pb::ControllerMessage { kind: Some(k) }) => return Ok(Some(k)),
                Some(pb::ControllerMessage { kind: None }) => {}
            }
        }
    }
}

impl FakeSession {
    /// Sends one message (no acknowledgement asked).
    pub async fn send(&self, kind: Kind) -> anyhow::Result<()> {
        self.send_numbered(kind, 0).await
    }

    /// Sends one message with a `report_seq` (the controller acknowledges it).
    pub async fn send_numbered(&self, kind: Kind, report_seq: u64) -> anyhow::Result<()> {
        self.tx
            .send(pb::AgentMessage { kind: Some(kind), report_seq })
            .await
            .map_err(|_| anyhow::anyhow!("session closed"))
    }

    /// Reads the session for `d`, collecting Acks and Aborts (answering requests).
    pub async fn drain(&mut self, d: Duration) -> anyhow::Result<()> {
        match self.next(d).await {
            Ok(other) => anyhow::bail!("unexpected {other:?}"),
            Err(e) if e.to_string().starts_with("no controller message") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A heartbeat listing `running`.
    pub async fn heartbeat(&self, running: &[(String, u32)]) -> anyhow::Result<()> {
        self.send(Kind::Heartbeat(pb::Heartbeat {
            sent_at: None,
            running: running
                .iter()
                .map(|(id, attempt)| pb::ExecutionRef { execution_id: id.clone(), attempt: *attempt })
                .collect(),
        }))
        .await
    }

    /// The next controller message other than a request (requests are answered with an error), within `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<pb::controller_message::Kind> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.next_until(deadline, limit).await? {
                pb::controller_message::Kind::Request(r) => {
                    let resp = pb::AgentResponse {
                        request_id: r.request_id,
                        error: "fake agent: requests are not scripted".into(),
                        kind: None,
                    };
                    self.send(Kind::Response(resp)).await?;
                }
                k => return Ok(k),
            }
        }
    }

    /// The next request within `limit`, for the test to answer (other messages but Acks and Aborts are an
    /// error).
    pub async fn next_request(&mut self, limit: Duration) -> anyhow::Result<pb::AgentRequest> {
        match self.next_until(tokio::time::Instant::now() + limit, limit).await? {
            pb::controller_message::Kind::Request(r) => Ok(r),
            other => anyhow::bail!("expected a request, got {other:?}"),
        }
    }

    /// Answers a request.
    pub async fn respond(&self, response: pb::AgentResponse) -> anyhow::Result<()> {
        self.send(Kind::Response(response)).await
    }

    /// The next message other than Acks and Aborts (collected), before `deadline`.
    async fn next_until(
        &mut self,
        deadline: tokio::time::Instant,
        limit: Duration,
    ) -> anyhow::Result<pb::controller_message::Kind> {
        loop {
            let m = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .map_err(|_| anyhow::anyhow!("no controller message within {limit:?}"))??
                .ok_or_else(|| anyhow::anyhow!("session closed by the controller"))?;
            match m.kind {
                Some(pb::controller_message::Kind::Ack(a)) => self.acks.push(a),
                Some(pb::controller_message::Kind::Abort(a)) => self.aborts.push(a),
                Some(k) => return Ok(k),
                None => {}
            }
        }
    }

    /// Waits for the next `Assign`, heartbeating with `running` meanwhile is up to the caller.
    pub async fn next_assign(&mut self, limit: Duration) -> anyhow::Result<pb::Assign> {
        match self.next(limit).await? {
            pb::controller_message::Kind::Assign(a) => Ok(a),
            other => anyhow::bail!("expected Assign, got {other:?}"),
        }
    }

    /// Closes the session (the stream ends).
    pub fn close(self) {
        drop(self);
    }
}

/// The `ExecutionRef` of an assignment.
pub fn exec_ref(a: &pb::Assign) -> pb::ExecutionRef {
    pb::ExecutionRef { execution_id: a.execution_id.clone(), attempt: a.attempt }
}

/// A chunk report for seq `seq` of a backup assignment, with the key its plan dictates.
pub fn chunk_for(a: &pb::Assign, storage_id: &str, seq: u32, data: &[u8]) -> Kind {
    use sha2::{Digest, Sha256};
    let prefix = match &a.task {
        Some(pb::assign::Task::Backup(b)) => b.key_prefix.clone(),
        _ => String::new(),
    };
    Kind::ChunkReported(pb::ChunkReported {
        execution: Some(exec_ref(a)),
        storage_id: storage_id.into(),
        seq,
        key: dg_common::manifest::chunk_key(&prefix, seq),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        raw_bytes: data.len() as u64,
    })
}
