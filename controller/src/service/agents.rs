//! Agents: one-time join tokens, enrollment (CSR -> short-lived client certificate naming the agent id),
//! renewal over the mTLS session port, inventory and revocation.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use dg_common::ids::AgentId;
use uuid::Uuid;

use crate::session::registry::AgentRegistry;
use crate::{
    crypto,
    db::{Db, Page},
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

/// Agent service.
#[derive(Clone, Debug)]
pub struct AgentsService {
    db: Db,
    pki: Arc<Pki>,
    registry: AgentRegistry,
    cert_ttl: Duration,
    agent_endpoint: String,
    api_endpoint: String,
    enroll_limits: super::login_limit::EnrollLimits,
}

impl AgentsService {
    /// New service.
    pub fn new(
        db: Db,
        pki: Arc<Pki>,
        registry: AgentRegistry,
        cert_ttl: Duration,
        agent_endpoint: String,
        api_endpoint: String,
    ) -> Self {
        Self { db, pki, registry, cert_ttl, agent_endpoint, api_endpoint, enroll_limits: Default::default() }
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

    /// Issues a new certificate to an authenticated, non-revoked agent.
    pub async fn renew(&self, agent: AgentId, csr_pem: &str) -> ControllerResult<(String, DateTime<Utc>)> {
        let (pem, issued) = self.pki.sign_agent_csr(csr_pem, agent, self.cert_ttl)?;
        if !self.db.record_renewal(agent.0, &issued).await? {
            return Err(ControllerError::Unauthenticated("agent is revoked".into()));
        }
        tracing::info!(agent_id = %agent, not_after = %issued.not_after, "agent certificate renewed");
        Ok((pem, issued.not_after))
    }

    /// An agent allowed to hold a session: enrolled and not revoked.
    pub async fn active(&self, id: Uuid) -> ControllerResult<Agent> {
        match self.db.agent(id).await? {
            Some(a) if a.revoked_at.is_none() => Ok(a),
            Some(_) => Err(ControllerError::Unauthenticated("agent is revoked".into())),
            None => Err(ControllerError::Unauthenticated("unknown agent".into())),
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

    /// Revokes an agent and closes its session on this replica.
    pub async fn revoke(&self, id: Uuid) -> ControllerResult<Agent> {
        if !self.db.revoke_agent(id).await? {
            return Err(ControllerError::NotFound(format!("agent {id}")));
        }
        self.registry.disconnect(id);
        self.get(id).await
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

    /// Heartbeat.
    pub async fn heartbeat(&self, id: Uuid) -> ControllerResult<()> {
        Ok(self.db.agent_heartbeat(id).await?)
    }

    /// Session closed.
    pub async fn disconnected(&self, id: Uuid) -> ControllerResult<()> {
        Ok(self.db.agent_disconnected(id).await?)
    }
}
