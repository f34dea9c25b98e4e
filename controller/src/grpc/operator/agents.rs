//! AgentService: join tokens, inventory, revocation.

use std::time::Duration;

use dg_common::error::FieldError;
use dg_proto::v1::{self as pb, agent_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::grpc::{actor, convert, validate};

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("AgentService", "CreateJoinToken", Permission::AgentEnroll),
    ("AgentService", "ListAgents", Permission::AgentRead),
    ("AgentService", "GetAgent", Permission::AgentRead),
    ("AgentService", "RevokeAgent", Permission::AgentRevoke),
];

#[tonic::async_trait]
impl agent_service_server::AgentService for OperatorSvc {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let ttl = match r.ttl {
            None => Duration::from_secs(3600),
            Some(d) if d.seconds > 0 && d.seconds <= 7 * 24 * 3600 && d.nanos >= 0 => {
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(3600))
            }
            Some(_) => return Err(FieldError::new("ttl", "must be between 1 second and 7 days").into()),
        };
        if r.description.chars().count() > 256 || r.description.chars().any(char::is_control) {
            return Err(FieldError::new("description", "must be at most 256 printable characters").into());
        }
        let res = self.ctx.agents.create_join_token(ttl, &r.description).await;
        let t = self.audited(&who, "agent.create_join_token", "join_token", |_| String::new(), res).await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: t.token,
            expires_at: Some(convert::ts(t.expires_at)),
            ca_fingerprint: t.ca_fingerprint,
            enroll_command: t.enroll_command,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let agents = self.ctx.agents.list(page).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            next_page_token: page.next_token(agents.len()),
            agents: agents.iter().map(convert::agent).collect(),
        }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::agent(&self.ctx.agents.get(id).await?)))
    }

    async fn revoke_agent(&self, req: Request<pb::RevokeAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.agents.revoke(id).await;
        let a = self.audited_on(&who, "agent.revoke", "agent", id, res).await?;
        Ok(Response::new(convert::agent(&a)))
    }
}
