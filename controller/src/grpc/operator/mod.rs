//! Operator services. Every handler: validate the request (see `validate`), call the domain service,
//! convert back (see `convert`); mutations are audited with their outcome.

mod access;
mod agents;
mod auth;
mod backups;
mod catalog;
mod drills;
mod executions;
mod health;
mod notifications;
mod scope;

use dg_common::error::ServiceError;
use tonic::{Request, Status};

use super::{Ctx, auth_layer::bearer};
use crate::{
    access::{Permission, Principal},
    error::ControllerResult,
    service::access::Critical,
};

/// A permission table: (service name in `dataguardian.v1`, method, permission).
pub type Table = &'static [(&'static str, &'static str, Permission)];

/// Every operator RPC and the one permission it checks, gathered from the tables beside the handlers.
pub const TABLES: &[Table] = &[
    access::PERMISSIONS,
    agents::PERMISSIONS,
    backups::PERMISSIONS,
    catalog::PERMISSIONS,
    drills::PERMISSIONS,
    executions::PERMISSIONS,
    health::PERMISSIONS,
    notifications::PERMISSIONS,
];

/// Services callable without a principal: sign-in (Logout, Me and ChangePassword authenticate themselves)
/// and agent enrollment (a join token).
pub const OPEN_SERVICES: &[&str] = &["AuthService", "AgentEnrollmentService"];

/// The permission a request path (`/dataguardian.v1.<Service>/<Method>`) needs; `None` for an unknown path.
pub fn permission_of(path: &str) -> Option<Permission> {
    let (service, method) = path.strip_prefix("/dataguardian.v1.")?.split_once('/')?;
    TABLES.iter().flat_map(|t| t.iter()).find(|(s, m, _)| *s == service && *m == method).map(|(_, _, p)| *p)
}

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

    /// Gates a critical call (see [`crate::service::access::AccessService::gate`]) after validation and scope
    /// checks and before the change; a refusal is audited like any other outcome.
    async fn gated(&self, p: &Principal, approval: Option<uuid::Uuid>, c: Critical) -> Result<(), Status> {
        let (action, target_kind) = (c.action, c.target_kind);
        let target = (!c.target_id.is_empty()).then(|| c.target_id.clone());
        let res = self.ctx.access.gate(p, approval, c).await;
        if let Err(e) = &res {
            let outcome = format!("error: {:?}", e.error_code());
            if let Err(e) = self.ctx.db.audit(&p.actor(), action, target_kind, target, &outcome).await {
                tracing::warn!(error = %e, action, "audit write failed");
            }
        }
        res.map_err(Status::from)
    }

    /// Authenticates a request of an open service itself (Logout, Me, ChangePassword).
    async fn session_of<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let token = bearer(req.metadata().as_ref())
            .ok_or_else(|| Status::unauthenticated("missing metadata authorization: Bearer <token>"))?;
        Ok(self.ctx.auth.authenticate(token).await?)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every RPC of every operator service in the descriptor set has exactly one table entry, and every entry
    /// names a real RPC.
    #[test]
    fn every_operator_rpc_declares_exactly_one_permission() {
        let fds = prost_types::FileDescriptorSet::decode(dg_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut rpcs = Vec::new();
        for f in fds.file.iter().filter(|f| f.package() == "dataguardian.v1") {
            for s in &f.service {
                if OPEN_SERVICES.contains(&s.name()) || s.name() == "AgentSessionService" {
                    continue;
                }
                for m in &s.method {
                    rpcs.push((s.name().to_owned(), m.name().to_owned()));
                }
            }
        }
        let entries: Vec<_> = TABLES.iter().flat_map(|t| t.iter()).collect();
        for (s, m) in &rpcs {
            let n = entries.iter().filter(|(es, em, _)| es == s && em == m).count();
            assert_eq!(n, 1, "{s}/{m} has {n} permission entries");
        }
        for (s, m, _) in &entries {
            assert!(rpcs.iter().any(|(rs, rm)| rs == s && rm == m), "{s}/{m} is not an operator RPC");
        }
        assert_eq!(permission_of("/dataguardian.v1.BackupService/RestoreBackup"), Some(Permission::BackupRestore));
        assert_eq!(permission_of("/dataguardian.v1.BackupService/Nope"), None);
    }
}
