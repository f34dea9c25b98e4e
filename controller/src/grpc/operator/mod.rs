//! Operator services. Every handler: validate the request (see `validate`), call the domain service,
//! convert back (see `convert`); mutations are audited with their outcome.

mod agents;
mod auth;
mod backups;
mod catalog;
mod drills;
mod executions;
mod health;

use dg_common::error::ServiceError;
use tonic::{Request, Status};

use super::{Ctx, auth_layer::bearer};
use crate::{error::ControllerResult, model::Session};

/// Implements every operator service.
#[derive(Clone, Debug)]
pub struct OperatorSvc {
    ctx: Ctx,
}

impl OperatorSvc {
    /// New handler set.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    /// Records a mutation's outcome in the audit log and passes the result through.
    async fn audited<T>(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        target: impl Fn(&T) -> String,
        r: ControllerResult<T>,
    ) -> Result<T, Status> {
        let (target_id, outcome) = match &r {
            Ok(v) => (Some(target(v)).filter(|t| !t.is_empty()), "ok".to_owned()),
            Err(e) => (None, format!("error: {:?}", e.error_code())),
        };
        if let Err(e) = self.ctx.db.audit(actor, action, kind, target_id, &outcome).await {
            tracing::warn!(error = %e, action, "audit write failed");
        }
        r.map_err(Status::from)
    }

    /// Like [`Self::audited`] for a mutation whose target id is known up front.
    async fn audited_on<T>(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        id: uuid::Uuid,
        r: ControllerResult<T>,
    ) -> Result<T, Status> {
        let outcome = match &r {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("error: {:?}", e.error_code()),
        };
        if let Err(e) = self.ctx.db.audit(actor, action, kind, Some(id.to_string()), &outcome).await {
            tracing::warn!(error = %e, action, "audit write failed");
        }
        r.map_err(Status::from)
    }

    async fn session_of<T>(&self, req: &Request<T>) -> Result<Session, Status> {
        let token = bearer(req.metadata().as_ref())
            .ok_or_else(|| Status::unauthenticated("missing metadata authorization: Bearer <token>"))?;
        Ok(self.ctx.auth.authenticate(token).await?)
    }
}
