//! Health: the periodic checks of datasources (from their agents) and storages (local ones from their
//! agent, cloud ones from the controller), their persisted history, and the system view (PostgreSQL,
//! Redis, agents). Needs only PostgreSQL, so it keeps running while Redis is down.

use std::time::{Duration, Instant};

use fred::{clients::Client as RedisClient, prelude::*};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::catalog::CatalogService;
use crate::session::registry::AgentRegistry;
use crate::{
    db::{AuditFilter, Db, Page},
    error::ControllerResult,
    model::{AuditEvent, HealthCheck},
};

/// One dependency's state.
#[derive(Debug, Clone)]
pub struct Component {
    /// Reachable.
    pub ok: bool,
    /// Ping round trip.
    pub latency: Duration,
    /// Why not.
    pub error: String,
}

/// The system view.
#[derive(Debug, Clone)]
pub struct SystemHealth {
    /// Controller database.
    pub postgres: Component,
    /// Redis.
    pub redis: Component,
    /// Sessions on this replica.
    pub connected_agents: u32,
    /// Enrolled, non-revoked agents.
    pub enrolled_agents: u32,
}

/// Health and audit reads.
#[derive(Clone)]
pub struct HealthService {
    db: Db,
    registry: AgentRegistry,
    redis: RedisClient,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService").finish_non_exhaustive()
    }
}

impl HealthService {
    /// New service.
    pub fn new(db: Db, registry: AgentRegistry, redis: RedisClient) -> Self {
        Self { db, registry, redis }
    }

    /// Latest, last error and history of a datasource or storage.
    pub async fn target(
        &self,
        kind: &str,
        id: Uuid,
        limit: i64,
    ) -> ControllerResult<(Vec<HealthCheck>, Option<HealthCheck>)> {
        let history = self.db.health_history(kind, id, limit).await?;
        let last_error = self.db.last_health_error(kind, id).await?;
        Ok((history, last_error))
    }

    /// PostgreSQL, Redis and agents, as this replica sees them.
    pub async fn system(&self) -> ControllerResult<SystemHealth> {
        let started = Instant::now();
        let postgres = match self.db.ping().await {
            Ok(()) => Component { ok: true, latency: started.elapsed(), error: String::new() },
            Err(e) => Component { ok: false, latency: started.elapsed(), error: e.to_string() },
        };
        let started = Instant::now();
        let ping = tokio::time::timeout(Duration::from_secs(2), self.redis.ping::<String>(None)).await;
        let redis = match ping {
            Ok(Ok(_)) => Component { ok: true, latency: started.elapsed(), error: String::new() },
            Ok(Err(e)) => Component { ok: false, latency: started.elapsed(), error: e.to_string() },
            Err(_) => Component { ok: false, latency: started.elapsed(), error: "no answer within 2 s".into() },
        };
        let enrolled = if postgres.ok { self.db.count_active_agents().await.unwrap_or(0) } else { 0 };
        Ok(SystemHealth {
            postgres,
            redis,
            connected_agents: u32::try_from(self.registry.connected().len()).unwrap_or(u32::MAX),
            enrolled_agents: u32::try_from(enrolled).unwrap_or(u32::MAX),
        })
    }

    /// Audit events, newest first.
    pub async fn audit(&self, f: &AuditFilter, page: Page) -> ControllerResult<Vec<AuditEvent>> {
        Ok(self.db.list_audit(f, page).await?)
    }
}

/// Periodic health checks of every datasource and storage.
pub struct HealthTask {
    db: Db,
    catalog: CatalogService,
    registry: AgentRegistry,
    interval: Duration,
}

impl HealthTask {
    /// New task.
    pub fn new(db: Db, catalog: CatalogService, registry: AgentRegistry, interval: Duration) -> Self {
        Self { db, catalog, registry, interval }
    }

    /// Runs until cancelled. Targets whose agent is connected to another replica are left to that replica.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "health round failed");
            }
        }
    }

    async fn round(&self) -> ControllerResult<()> {
        let here = self.registry.connected();
        for id in self.db.all_datasource_ids().await? {
            let ds = self.catalog.datasource(id).await?;
            if here.contains(&ds.agent_id) {
                self.catalog.test_datasource(id).await?;
            }
        }
        for id in self.db.all_storage_ids().await? {
            let s = self.catalog.storage(id).await?;
            if s.agent_id.is_none_or(|a| here.contains(&a)) {
                self.catalog.test_storage(id).await?;
            }
        }
        Ok(())
    }
}
