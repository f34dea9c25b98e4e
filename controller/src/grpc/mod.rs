//! gRPC edge: the operator services (TLS, bearer session tokens checked by [`auth_layer`]), the enrollment
//! service (same port, no client certificate), and the agent session service (its own port, mTLS required).
//! Handlers convert, call a domain service, convert back.

pub mod agent;
pub mod auth_layer;
pub mod convert;
pub mod operator;
pub mod validate;

use crate::{
    access::Principal,
    service::{
        agents::AgentsService, auth::AuthService, backups::BackupsService, catalog::CatalogService,
        executions::ExecutionsService, health::HealthService,
    },
};

/// Everything handlers need; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Authentication.
    pub auth: AuthService,
    /// Users, roles, scopes, tokens, approvals.
    pub access: crate::service::access::AccessService,
    /// Agents.
    pub agents: AgentsService,
    /// Catalog.
    pub catalog: CatalogService,
    /// Executions.
    pub executions: ExecutionsService,
    /// Backup object reads and deletes, pins.
    pub backups: BackupsService,
    /// Restore drills.
    pub drills: crate::service::drills::DrillService,
    /// Retention previews.
    pub retention: crate::service::retention::RetentionService,
    /// Catalog import from a storage.
    pub import: crate::service::import::ImportService,
    /// Health and audit reads.
    pub health: HealthService,
    /// Notification channels, deliveries and the inbox.
    pub notifications: crate::service::notify::channels::NotificationService,
    /// Audit writer.
    pub db: crate::db::Db,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
}

/// The audit name of a request's principal (inserted by the auth layer).
pub fn actor<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Principal>().map(Principal::actor).unwrap_or_else(|| "unknown".into())
}

/// The principal of a request that passed the auth layer.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| tonic::Status::unauthenticated("no principal"))
}

/// The approval id a critical call repeats (metadata `dg-approval`).
pub fn approval_of<T>(req: &tonic::Request<T>) -> Result<Option<uuid::Uuid>, tonic::Status> {
    match req.metadata().get("dg-approval") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok())
            .map(Some)
            .ok_or_else(|| tonic::Status::invalid_argument("metadata dg-approval: must be an approval id (UUID)")),
    }
}
