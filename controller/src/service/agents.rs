//! Agents: one-time join tokens, enrollment (CSR -> short-lived client certificate naming the agent id),
//! renewal over the mTLS session port, inventory and revocation.
//!
//! Revocation holds on every replica: [`AgentsService::revoke`] records it in PostgreSQL, closes the agent's
//! session here and broadcasts "disconnect agent X" on the channel every replica listens to (the relay task
//! closes it wherever it is); and since Redis may be down, each session's heartbeat reads the agent's
//! standing in PostgreSQL ([`AgentsService::heartbeat`]), so a revoked agent's stream closes within one
//! heartbeat interval anyway. Dispatch claims only for a non-revoked agent currently bound to the datasource.
//!
//! Per-certificate revocation: the agent row names its current certificate (sha256 of the last one issued,
//! by enrollment or renewal). A session or renewal presenting another one (superseded by a renewal) is
//! refused ([`admission`]). A session opened with a certificate that a renewal then supersedes is closed
//! at its next heartbeat (or result); the agent itself reconnects with its new certificate right after
//! renewing, and its running attempts keep their leases across the short disconnect.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dg_common::ids::AgentId;
use uuid::Uuid;

use super::{
    attempts::{AttemptEnder, EndCause},
    notify::Event,
};
use crate::session::deliver::Sessions;
use crate::{
    crypto,
    db::{AgentStanding, Db, Page},
    error::{ControllerError, ControllerResult},
    model::Agent,
    pki::Pki,
};

/// A new join token (shown once).
#[derive(Debug)]
pub struct JoinToken {
    /// Token.
    pub token: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// CA fingerprint to pin.
    pub ca_fingerprint: String,
    /// Command line to enroll with.
    pub enroll_command: String,
}

/// What an enrolled agent receives.
#[derive(Debug)]
pub struct Enrolled {
    /// Assigned id.
    pub agent_id: AgentId,
    /// Client certificate.
    pub certificate_pem: String,
    /// CA certificate.
    pub ca_pem: String,
    /// Session endpoint.
    pub agent_endpoint: String,
    /// Expiry.
    pub not_after: DateTime<Utc>,
}

/// Why a certificate may not hold a session or renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such agent.
    Unknown,
    /// The agent is revoked (every certificate it was issued is refused).
    Revoked,
    /// A renewal issued the agent a newer certificate.
    Superseded,
}

impl From<Refusal> for ControllerError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unknown => ControllerError::Unauthenticated("unknown agent".into()),
            Refusal::Revoked => ControllerError::Unauthenticated("agent is revoked".into()),
            Refusal::Superseded => ControllerError::PermissionDenied(
                "this certificate was superseded by a renewal; connect with the agent's current certificate".into(),
            ),
        }
    }
}

/// What a revoked agent's stream ends with.
pub fn revoked_status() -> tonic::Status {
    ControllerError::from(Refusal::Revoked).into()
}

/// Whether the certificate `presented` (its `sha256:<hex>`) of an agent with `standing` may hold a session or
/// renew: the agent exists, is not revoked, and `presented` is its current certificate. An agent enrolled
/// before certificates were tracked has none recorded: any certificate of it (signed by the CA, naming it)
/// is accepted until its next renewal records one.
pub fn admission(standing: Option<&AgentStanding>, presented: &str) -> Result<(), Refusal> {
    match standing {
        None => Err(Refusal::Unknown),
        Some(s) if s.revoked => Err(Refusal::Revoked),
        Some(AgentStanding { current_cert_sha256: Some(current), .. }) if current != presented => {
            Err(Refusal::Superseded)
        }
        Some(_) => Ok(()),
    }
}

/// A heartbeat not recorded.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The session may not go on.
    #[error("{}", ControllerError::from(*.0))]
    Refused(Refusal),
    /// It could not be recorded (the session goes on).
    #[error(transparent)]
    Failed(ControllerError),
}

/// Agent service.
#[derive(Clone, Debug)]
pub struct AgentsService {
    db: Db,
    pki: Arc<Pki>,
    sessions: Sessions,
    ender: AttemptEnder,
    cert_ttl: Duration,
    agent_endpoint: String,
    api_endpoint: String,
    enroll_limits: super::login_limit::EnrollLimits,
    heartbeats: super::heartbeats::Heartbeats,
}

impl AgentsService {
    /// New service, and the task that writes its sessions' heartbeats (run it until shutdown).
    pub fn new(
        db: Db,
        pki: Arc<Pki>,
        sessions: Sessions,
        ender: AttemptEnder,
        cert_ttl: Duration,
        agent_endpoint: String,
        api_endpoint: String,
    ) -> (Self, super::heartbeats::HeartbeatTask) {
        let (heartbeats, task) = super::heartbeats::Heartbeats::new(db.clone());
        let service = Self {
            db,
            pki,
            sessions,
            ender,
            cert_ttl,
            agent_endpoint,
            api_endpoint,
            enroll_limits: Default::default(),
            heartbeats,
        };
        (service, task)
    }

    /// Creates a one-time join token.
    pub async fn create_join_token(&self, ttl: Duration, description: &str) -> ControllerResult<JoinToken> {
        let token = crypto::new_token("dgj");
        let expires_at = Utc::now() + ttl;
        self.db.create_join_token(crypto::token_hash(&token), description, expires_at).await?;
        let ca_fingerprint = self.pki.fingerprint();
        let enroll_command = format!(
            "dg-agent enroll --controller {} --token {token} --ca-fingerprint {ca_fingerprint} \
             --state-dir /var/lib/dataguardian-agent",
            self.api_endpoint
        );
        Ok(JoinToken { token, expires_at, ca_fingerprint, enroll_command })
    }

    /// Enrolls an agent: consumes the token and signs the CSR for a new agent id.
    pub async fn enroll(
        &self,
        client: Option<std::net::IpAddr>,
        token: &str,
        csr_pem: &str,
        hostname: &str,
        version: &str,
    ) -> ControllerResult<Enrolled> {
        // Counted and capped before anything else; the token is checked with one indexed lookup before any
        // certificate work, and consumed atomically with the agent's creation.
        let _slot = self.enroll_limits.admit(client).map_err(|r| r.into_error("enrollment"))?;
        let hash = crypto::token_hash(token);
        if !self.db.join_token_usable(&hash).await? {
            let from = client.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into());
            self.db
                .audit("anonymous", "agent.enroll", "join_token", None, &format!("error: invalid token from {from}"))
                .await?;
            return Err(ControllerError::Unauthenticated("join token is invalid, expired or already used".into()));
        }
        let agent_id = AgentId::new();
        let (certificate_pem, issued) = self.pki.sign_agent_csr(csr_pem, agent_id, self.cert_ttl)?;
        let ok = self.db.enroll_agent(hash, agent_id.0, hostname, version, &issued).await?;
        if !ok {
            return Err(ControllerError::Unauthenticated("join token is invalid, expired or already used".into()));
        }
        self.db.audit("join-token", "agent.enroll", "agent", Some(agent_id.to_string()), "ok").await?;
        tracing::info!(%agent_id, %hostname, "agent enrolled");
        Ok(Enrolled {
            agent_id,
            certificate_pem,
            ca_pem: self.pki.ca_pem().to_owned(),
            agent_endpoint: self.agent_endpoint.clone(),
            not_after: issued.not_after,
        })
    }

    /// Issues a new certificate to an authenticated, non-revoked agent that presents its current certificate
    /// (`presented`, its `sha256:<hex>`); the new one supersedes it.
    pub async fn renew(
        &self,
        agent: AgentId,
        presented: &str,
        csr_pem: &str,
    ) -> ControllerResult<(String, DateTime<Utc>)> {
        admission(self.db.agent_standing(agent.0).await?.as_ref(), presented)?;
        let (pem, issued) = self.pki.sign_agent_csr(csr_pem, agent, self.cert_ttl)?;
        if !self.db.record_renewal(agent.0, presented, &issued).await? {
            // Revoked, or another renewal with the same certificate won meanwhile.
            return Err(admission(self.db.agent_standing(agent.0).await?.as_ref(), presented)
                .err()
                .unwrap_or(Refusal::Superseded)
                .into());
        }
        tracing::info!(agent_id = %agent, not_after = %issued.not_after, "agent certificate renewed");
        Ok((pem, issued.not_after))
    }

    /// Whether `presented` (a certificate's `sha256:<hex>`) may open a session of `id`: see [`admission`].
    pub async fn admit(&self, id: Uuid, presented: &str) -> ControllerResult<()> {
        Ok(self.standing(id, presented).await??)
    }

    /// Whether a session of `id` opened with `presented` may go on (see [`admission`]); an error when the
    /// database cannot say.
    pub async fn standing(&self, id: Uuid, presented: &str) -> ControllerResult<Result<(), Refusal>> {
        Ok(admission(self.db.agent_standing(id).await?.as_ref(), presented))
    }

    /// Refuses a revoked or unknown agent, whatever certificate it presents.
    pub async fn not_revoked(&self, id: Uuid) -> ControllerResult<()> {
        match self.db.agent_standing(id).await? {
            None => Err(Refusal::Unknown.into()),
            Some(s) if s.revoked => Err(Refusal::Revoked.into()),
            Some(_) => Ok(()),
        }
    }

    /// One agent.
    pub async fn get(&self, id: Uuid) -> ControllerResult<Agent> {
        self.db.agent(id).await?.ok_or_else(|| ControllerError::NotFound(format!("agent {id}")))
    }

    /// A page of agents.
    pub async fn list(&self, page: Page) -> ControllerResult<Vec<Agent>> {
        Ok(self.db.list_agents(page).await?)
    }

    /// Revokes an agent: recorded in PostgreSQL, then its session is closed here and on every other replica
    /// (a broadcast; without Redis, the holding replica closes it at the session's next heartbeat), and the
    /// attempts it runs are ended.
    pub async fn revoke(&self, id: Uuid) -> ControllerResult<Agent> {
        if !self.db.revoke_agent(id).await? {
            return Err(ControllerError::NotFound(format!("agent {id}")));
        }
        self.sessions.revoked(id, revoked_status()).await;
        tracing::warn!(agent_id = %id, "agent revoked");
        // Its running attempts end now (their log says why), retried per their job's policy: the retry waits
        // for the datasource to be bound to another agent. Anything the agent still reports is fenced.
        for ex in self.db.running_for_agent(id).await? {
            self.ender.end(&ex, ex.attempt, EndCause::AgentRevoked).await?;
        }
        let agent = self.get(id).await?;
        // After the revocation; keyed by the agent (revocation is final), so a repeated call emits nothing.
        self.ender.notifier().emit(Event::agent_revoked(id, &agent.hostname)).await;
        Ok(agent)
    }

    /// Session opened.
    pub async fn connected(
        &self,
        id: Uuid,
        hostname: &str,
        version: &str,
        tools: serde_json::Value,
    ) -> ControllerResult<()> {
        Ok(self.db.agent_connected(id, hostname, version, tools).await?)
    }

    /// Heartbeat of a session opened with the certificate `presented`: records liveness (with the other
    /// sessions' heartbeats of the moment, see [`super::heartbeats`]) and refuses (so the session closes) when
    /// the agent is revoked or the certificate was superseded. Returns whether an execution runs on the agent.
    pub async fn heartbeat(&self, id: Uuid, presented: &str) -> Result<bool, HeartbeatError> {
        let read = self.heartbeats.beat(id).await.map_err(HeartbeatError::Failed)?;
        admission(read.as_ref().map(|h| &h.standing), presented).map_err(HeartbeatError::Refused)?;
        Ok(read.is_some_and(|h| h.busy))
    }

    /// Session closed.
    pub async fn disconnected(&self, id: Uuid) -> ControllerResult<()> {
        Ok(self.db.agent_disconnected(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(revoked: bool, current: Option<&str>) -> Option<AgentStanding> {
        Some(AgentStanding { revoked, current_cert_sha256: current.map(str::to_owned) })
    }

    #[test]
    fn only_the_current_certificate_of_a_non_revoked_agent_is_admitted() {
        let (old, new) = ("sha256:00", "sha256:11");
        assert_eq!(admission(standing(false, Some(new)).as_ref(), new), Ok(()));
        assert_eq!(admission(standing(false, Some(new)).as_ref(), old), Err(Refusal::Superseded));
        assert_eq!(admission(standing(true, Some(new)).as_ref(), new), Err(Refusal::Revoked), "every cert of it");
        assert_eq!(admission(standing(true, Some(new)).as_ref(), old), Err(Refusal::Revoked));
        assert_eq!(admission(None, new), Err(Refusal::Unknown));
        // Enrolled before certificates were tracked: any of its certificates, until a renewal records one.
        assert_eq!(admission(standing(false, None).as_ref(), old), Ok(()));
        assert_eq!(admission(standing(true, None).as_ref(), old), Err(Refusal::Revoked));
    }

    #[test]
    fn refusals_map_to_authentication_codes_that_say_why() {
        use dg_common::error::{ErrorCode, ServiceError};
        let revoked = ControllerError::from(Refusal::Revoked);
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        assert_eq!(revoked.error_code(), ErrorCode::Unauthenticated);
        let superseded = ControllerError::from(Refusal::Superseded);
        assert!(superseded.to_string().contains("superseded"), "{superseded}");
        assert_eq!(superseded.error_code(), ErrorCode::PermissionDenied);
        assert_eq!(ControllerError::from(Refusal::Unknown).error_code(), ErrorCode::Unauthenticated);
    }
}
