//! Persistence for the metrics that describe the whole catalog rather than one replica's work: per-job
//! recovery state, drill results, queue depth and agent presence. Read-only; the metrics refresher calls these on an
//! interval, so every replica exports the same values (aggregate them with `max`, not `sum`).

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult};
use uuid::Uuid;

use super::{Db, fetch_all};

/// What the metrics say about one job.
#[derive(Clone, Debug, FromQueryResult)]
pub struct JobGauge {
    /// Job id.
    pub id: Uuid,
    /// Job name.
    pub name: String,
    /// When its newest completed backup finished.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Stored bytes (one copy) of that backup.
    pub last_size_bytes: Option<i64>,
}

/// Queued executions of one operation.
#[derive(Clone, Debug, FromQueryResult)]
pub struct QueueGauge {
    /// Operation.
    pub operation: String,
    /// Queued executions.
    pub depth: i64,
}

/// What the metrics say about one agent.
#[derive(Clone, Debug, FromQueryResult)]
pub struct AgentGauge {
    /// Agent id.
    pub id: Uuid,
    /// Host it reported.
    pub hostname: String,
    /// Its last heartbeat.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// A replica holds its session.
    pub connected: bool,
    /// Revoked.
    pub revoked: bool,
}

/// The newest finished run of one drill.
#[derive(Clone, Debug, FromQueryResult)]
pub struct DrillGauge {
    /// Drill id.
    pub id: Uuid,
    /// Drill name.
    pub name: String,
    /// That run passed.
    pub passed: bool,
}

impl Db {
    /// Every job with its newest completed backup (time and stored size).
    pub async fn job_gauges(&self) -> Result<Vec<JobGauge>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT j.id, j.name, b.finished_at AS last_success_at, b.stored_bytes AS last_size_bytes \
             FROM backup_job j LEFT JOIN LATERAL ( \
               SELECT e.finished_at, e.stored_bytes FROM execution e \
               WHERE e.job_id = j.id AND e.operation = 'backup' AND e.status = 'completed' \
               ORDER BY e.finished_at DESC NULLS LAST LIMIT 1) b ON true",
            [],
        )
        .await
    }

    /// Queued executions per operation (operations with none are absent).
    pub async fn queue_gauges(&self) -> Result<Vec<QueueGauge>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT operation, count(*)::bigint AS depth FROM execution WHERE status = 'queued' GROUP BY operation",
            [],
        )
        .await
    }

    /// Every enrolled agent with its presence.
    pub async fn agent_gauges(&self) -> Result<Vec<AgentGauge>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT id, hostname, last_heartbeat_at AS last_seen_at, connected, revoked_at IS NOT NULL AS revoked \
             FROM agent",
            [],
        )
        .await
    }

    /// Every drill that has a finished run, with whether its newest finished run passed.
    pub async fn drill_gauges(&self) -> Result<Vec<DrillGauge>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT DISTINCT ON (d.id) d.id, d.name, r.status = 'passed' AS passed \
             FROM restore_drill d JOIN restore_drill_run r ON r.drill_id = d.id \
             WHERE r.status <> 'running' ORDER BY d.id, r.finished_at DESC NULLS LAST, r.started_at DESC",
            [],
        )
        .await
    }
}
