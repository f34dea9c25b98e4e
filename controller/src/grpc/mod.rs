//! gRPC edge: the operator services (TLS, bearer session tokens checked by [`auth_layer`]), the enrollment
//! service (same port, no client certificate), and the agent session service (its own port, mTLS required).
//! Handlers convert, call a domain service, convert back.

pub mod agent;
pub mod auth_layer;
pub mod convert;
pub mod operator;
pub mod validate;

use crate::{
    model::Session,
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

/// The authenticated operator of a request (inserted by the auth layer).
pub fn actor<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Session>().map(|s| s.username.clone()).unwrap_or_else(|| "unknown".into())
}
