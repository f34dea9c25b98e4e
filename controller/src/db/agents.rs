//! Persistence of agents, join tokens and issued certificates.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::Agent;

const AGENT_COLS: &str =
    "id, hostname, version, tools, enrolled_at, last_heartbeat_at, connected, cert_expires_at, revoked_at";

/// Whether an agent may keep a session: revoked or not, and the certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq, sea_orm::FromQueryResult)]
pub struct AgentStanding {
    /// The agent is revoked.
    pub revoked: bool,
    /// `sha256:<hex>` of its current certificate (`None`: enrolled before certificates were tracked).
    pub current_cert_sha256: Option<String>,
}

/// What a heartbeat read back: the agent's standing, and whether an execution runs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Revoked or not, and the certificate it must present.
    pub standing: AgentStanding,
    /// An execution is running on it.
    pub busy: bool,
}

/// A certificate to record.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Serial (hex).
    pub serial: String,
    /// `sha256:<hex>` of the certificate (DER): what a session or renewal presenting it is matched on.
    pub sha256: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
}

impl Db {
    /// Stores a join token.
    pub async fn create_join_token(
        &self,
        token_hash: Vec<u8>,
        description: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "INSERT INTO join_token (id, token_hash, description, expires_at) VALUES ($1, $2, $3, $4)",
            [Uuid::now_v7().into(), token_hash.into(), description.into(), expires_at.into()],
        )
        .await
        .map(|_| ())
    }

    /// Whether a join token with this hash exists, is unused and has not expired (one indexed lookup).
    pub async fn join_token_usable(&self, token_hash: &[u8]) -> Result<bool, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Found {
            n: i64,
        }
        let f: Option<Found> = fetch_one(
            &self.conn,
            "SELECT count(*) AS n FROM join_token WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
            [token_hash.to_vec().into()],
        )
        .await?;
        Ok(f.is_some_and(|f| f.n > 0))
    }

    /// Atomically consumes a join token and creates the agent with its first certificate. Returns false (and
    /// changes nothing) when the token is unknown, expired or already used.
    pub async fn enroll_agent(
        &self,
        token_hash: Vec<u8>,
        agent_id: Uuid,
        hostname: &str,
        version: &str,
        cert: &IssuedCert,
    ) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let used = execute(
            &txn,
            "UPDATE join_token SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
            [token_hash.clone().into()],
        )
        .await?;
        if used != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        execute(
            &txn,
            "INSERT INTO agent (id, hostname, version, cert_expires_at, current_cert_sha256) VALUES ($1, $2, $3, $4, $5)",
            [agent_id.into(), hostname.into(), version.into(), cert.not_after.into(), cert.sha256.clone().into()],
        )
        .await?;
        execute(
            &txn,
            "UPDATE join_token SET used_by_agent = $1 WHERE token_hash = $2",
            [agent_id.into(), token_hash.into()],
        )
        .await?;
        insert_cert(&txn, agent_id, cert).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Records a renewed certificate of a non-revoked agent, which becomes its current one, provided the renewal
    /// was asked with the agent's current certificate (`presented`; an agent enrolled before certificates
    /// were tracked has none recorded and may renew with any of its own). A compare-and-set: of two renewals
    /// presenting the same certificate only the first succeeds. False when the agent is revoked or unknown,
    /// or `presented` is not its current certificate.
    pub async fn record_renewal(&self, agent_id: Uuid, presented: &str, cert: &IssuedCert) -> Result<bool, DbErr> {
        let txn = self.conn.begin().await?;
        let n = execute(
            &txn,
            "UPDATE agent SET cert_expires_at = $2, current_cert_sha256 = $3 WHERE id = $1 AND revoked_at IS NULL \
             AND (current_cert_sha256 IS NULL OR current_cert_sha256 = $4)",
            [agent_id.into(), cert.not_after.into(), cert.sha256.clone().into(), presented.into()],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        insert_cert(&txn, agent_id, cert).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// One agent.
    pub async fn agent(&self, id: Uuid) -> Result<Option<Agent>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {AGENT_COLS} FROM agent WHERE id = $1"), [id.into()]).await
    }

    /// Agents, oldest enrollment first.
    pub async fn list_agents(&self, page: Page) -> Result<Vec<Agent>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {AGENT_COLS} FROM agent ORDER BY enrolled_at, id OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Marks an agent revoked; false when unknown.
    pub async fn revoke_agent(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE agent SET revoked_at = COALESCE(revoked_at, now()), connected = false WHERE id = $1",
            [id.into()],
        )
        .await?
            == 1)
    }

    /// Session opened: stores what the agent reported.
    pub async fn agent_connected(
        &self,
        id: Uuid,
        hostname: &str,
        version: &str,
        tools: serde_json::Value,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "UPDATE agent SET hostname = $2, version = $3, tools = $4, connected = true, last_heartbeat_at = now() \
             WHERE id = $1",
            [id.into(), hostname.into(), version.into(), tools.into()],
        )
        .await
        .map(|_| ())
    }

    /// Heartbeats of several agents in one statement: refreshes the liveness of each non-revoked one and
    /// returns, read in the same statement, each one's standing (revoked, current certificate) and whether an
    /// execution runs on it; unknown agents are absent from the answer.
    pub async fn agents_heartbeat(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Heartbeat>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            id: Uuid,
            revoked: bool,
            current_cert_sha256: Option<String>,
            busy: bool,
        }
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list = serde_json::Value::Array(ids.iter().map(|a| serde_json::json!(a)).collect());
        let rows: Vec<Row> = fetch_all(
            &self.conn,
            "UPDATE agent SET last_heartbeat_at = CASE WHEN revoked_at IS NULL THEN now() ELSE last_heartbeat_at END, \
             connected = (revoked_at IS NULL) \
             WHERE id IN (SELECT value::uuid FROM jsonb_array_elements_text($1::jsonb)) \
             RETURNING id, revoked_at IS NOT NULL AS revoked, current_cert_sha256, \
             EXISTS (SELECT 1 FROM execution e WHERE e.agent_id = agent.id AND e.status = 'running') AS busy",
            [list.into()],
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let standing = AgentStanding { revoked: r.revoked, current_cert_sha256: r.current_cert_sha256 };
                (r.id, Heartbeat { standing, busy: r.busy })
            })
            .collect())
    }

    /// An agent's standing (revoked, current certificate); `None` for an unknown agent.
    pub async fn agent_standing(&self, id: Uuid) -> Result<Option<AgentStanding>, DbErr> {
        fetch_one(
            &self.conn,
            "SELECT revoked_at IS NOT NULL AS revoked, current_cert_sha256 FROM agent WHERE id = $1",
            [id.into()],
        )
        .await
    }

    /// Session closed.
    pub async fn agent_disconnected(&self, id: Uuid) -> Result<(), DbErr> {
        execute(&self.conn, "UPDATE agent SET connected = false WHERE id = $1", [id.into()]).await.map(|_| ())
    }
}

async fn insert_cert(c: &impl sea_orm::ConnectionTrait, agent_id: Uuid, cert: &IssuedCert) -> Result<(), DbErr> {
    execute(
        c,
        "INSERT INTO issued_cert (serial, agent_id, not_before, not_after, sha256) VALUES ($1, $2, $3, $4, $5)",
        [
            cert.serial.clone().into(),
            agent_id.into(),
            cert.not_before.into(),
            cert.not_after.into(),
            cert.sha256.clone().into(),
        ],
    )
    .await
    .map(|_| ())
}
