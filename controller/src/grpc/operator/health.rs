//! HealthService and AuditService.

use dg_proto::v1::{self as pb, audit_service_server, health_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::{Permission, Principal};
use crate::{
    db::AuditFilter,
    grpc::{convert, principal, validate},
    service::health::Component,
};

fn history_size(n: i32) -> Result<i64, Status> {
    match n {
        0 => Ok(20),
        n if (1..=200).contains(&n) => Ok(i64::from(n)),
        _ => Err(dg_common::error::FieldError::new("history_size", "must be 1-200").into()),
    }
}

fn component(c: &Component) -> pb::ComponentHealth {
    pb::ComponentHealth { ok: c.ok, latency: Some(convert::dur(c.latency)), error: c.error.clone() }
}

impl OperatorSvc {
    async fn target_health(&self, p: &Principal, kind: &str, id: &str, size: i32) -> Result<pb::TargetHealth, Status> {
        let uuid = validate::id("id", id)?;
        let limit = history_size(size)?;
        match kind {
            "datasource" => self.visible_datasource(p, uuid).await.map(|_| ())?,
            _ => self.visible_storage(p, uuid).await.map(|_| ())?,
        }
        let (history, last_error) = self.ctx.health.target(kind, uuid, limit).await?;
        Ok(pb::TargetHealth {
            id: uuid.to_string(),
            latest: history.first().map(convert::health_check),
            last_error: last_error.and_then(|h| h.error).unwrap_or_default(),
            history: history.iter().map(convert::health_check).collect(),
        })
    }
}

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("HealthService", "GetDatasourceHealth", Permission::HealthRead),
    ("HealthService", "GetStorageHealth", Permission::HealthRead),
    ("HealthService", "GetSystemHealth", Permission::HealthRead),
    ("AuditService", "ListAuditEvents", Permission::AuditRead),
];

#[tonic::async_trait]
impl health_service_server::HealthService for OperatorSvc {
    async fn get_datasource_health(
        &self,
        req: Request<pb::GetDatasourceHealthRequest>,
    ) -> Result<Response<pb::TargetHealth>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.target_health(&p, "datasource", &r.id, r.history_size).await?))
    }

    async fn get_storage_health(
        &self,
        req: Request<pb::GetStorageHealthRequest>,
    ) -> Result<Response<pb::TargetHealth>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.target_health(&p, "storage", &r.id, r.history_size).await?))
    }

    async fn get_system_health(
        &self,
        _req: Request<pb::GetSystemHealthRequest>,
    ) -> Result<Response<pb::SystemHealth>, Status> {
        let s = self.ctx.health.system().await?;
        Ok(Response::new(pb::SystemHealth {
            postgres: Some(component(&s.postgres)),
            redis: Some(component(&s.redis)),
            connected_agents: s.connected_agents,
            enrolled_agents: s.enrolled_agents,
        }))
    }
}

#[tonic::async_trait]
impl audit_service_server::AuditService for OperatorSvc {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter =
            AuditFilter { actor: nonempty(r.actor), action: nonempty(r.action), target_id: nonempty(r.target_id) };
        let events = self.ctx.health.audit(&filter, page).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            next_page_token: page.next_token(events.len()),
            events: events.iter().map(convert::audit_event).collect(),
        }))
    }
}
