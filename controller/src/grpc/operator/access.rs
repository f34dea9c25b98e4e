//! UserService, RoleService, TokenService and ApprovalService.

use std::time::Duration;

use dg_proto::v1::{
    self as pb, approval_service_server, role_service_server, token_service_server, user_service_server,
};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::{
    access::{Permission, SystemRole},
    grpc::{actor, approval_of, principal, validate},
    model::{ApiTokenRecord, ApprovalRecord, RoleRecord, ScopeRuleRecord, User},
    service::access::{Critical, NewUser, TokenRequest, selector},
};

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("UserService", "CreateUser", Permission::UserWrite),
    ("UserService", "GetUser", Permission::UserRead),
    ("UserService", "ListUsers", Permission::UserRead),
    ("UserService", "UpdateUser", Permission::UserWrite),
    ("UserService", "DeleteUser", Permission::UserWrite),
    ("UserService", "ResetPassword", Permission::UserWrite),
    ("RoleService", "CreateRole", Permission::RoleWrite),
    ("RoleService", "GetRole", Permission::RoleRead),
    ("RoleService", "ListRoles", Permission::RoleRead),
    ("RoleService", "UpdateRole", Permission::RoleWrite),
    ("RoleService", "DeleteRole", Permission::RoleWrite),
    ("RoleService", "ListPermissions", Permission::RoleRead),
    ("RoleService", "CreateScopeRule", Permission::RoleWrite),
    ("RoleService", "ListScopeRules", Permission::RoleRead),
    ("RoleService", "DeleteScopeRule", Permission::RoleWrite),
    ("TokenService", "CreateToken", Permission::TokenCreate),
    ("TokenService", "ListTokens", Permission::TokenCreate),
    ("TokenService", "RevokeToken", Permission::TokenCreate),
    ("ApprovalService", "ListApprovals", Permission::ApprovalRead),
    ("ApprovalService", "GetApproval", Permission::ApprovalRead),
    ("ApprovalService", "ApproveApproval", Permission::ApprovalDecide),
    ("ApprovalService", "RejectApproval", Permission::ApprovalDecide),
];

fn user(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        username: u.username.clone(),
        kind: match u.kind.as_str() {
            "password" => pb::UserKind::Password,
            "oidc" => pb::UserKind::Oidc,
            "service" => pb::UserKind::Service,
            _ => pb::UserKind::Unspecified,
        } as i32,
        roles: u.role_names(),
        disabled_at: u.disabled_at.map(crate::grpc::convert::ts),
        created_at: Some(crate::grpc::convert::ts(u.created_at)),
    }
}

fn role(r: &RoleRecord) -> pb::Role {
    let mut permissions: Vec<String> = r.effective().into_iter().map(|p| p.name().to_owned()).collect();
    permissions.sort();
    pb::Role {
        id: r.id.to_string(),
        name: r.name.clone(),
        description: r.description.clone(),
        permissions,
        system: r.system,
    }
}

fn labels_of(v: &serde_json::Value) -> std::collections::HashMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn rule(r: &ScopeRuleRecord) -> pb::ScopeRule {
    pb::ScopeRule {
        id: r.id.to_string(),
        user: r.username.clone().unwrap_or_default(),
        role: r.role_name.clone().unwrap_or_default(),
        effect: if r.effect == "deny" { pb::ScopeEffect::Deny } else { pb::ScopeEffect::Allow } as i32,
        resource_kind: r.resource_kind.clone(),
        resource_id: r.resource_id.map(|i| i.to_string()).unwrap_or_default(),
        labels: labels_of(&r.labels),
        created_at: Some(crate::grpc::convert::ts(r.created_at)),
    }
}

fn token(t: &ApiTokenRecord) -> pb::ApiToken {
    let scopes: Vec<crate::access::Selector> = serde_json::from_value(t.scopes.clone()).unwrap_or_default();
    pb::ApiToken {
        id: t.id.to_string(),
        name: t.name.clone(),
        user: t.username.clone(),
        created_by: t.created_by.clone(),
        role: t.role_name.clone(),
        scopes: scopes
            .into_iter()
            .map(|s| pb::TokenScope {
                resource_kind: s.kind,
                resource_id: s.id.map(|i| i.to_string()).unwrap_or_default(),
                labels: s.labels.into_iter().collect(),
            })
            .collect(),
        expires_at: Some(crate::grpc::convert::ts(t.expires_at)),
        last_used_at: t.last_used_at.map(crate::grpc::convert::ts),
        revoked_at: t.revoked_at.map(crate::grpc::convert::ts),
        created_at: Some(crate::grpc::convert::ts(t.created_at)),
    }
}

fn approval(a: &ApprovalRecord) -> pb::Approval {
    let state = match a.state.as_str() {
        "pending" if a.expires_at <= chrono::Utc::now() => pb::ApprovalState::Expired,
        "approved" if a.expires_at <= chrono::Utc::now() => pb::ApprovalState::Expired,
        "pending" => pb::ApprovalState::Pending,
        "approved" => pb::ApprovalState::Approved,
        "rejected" => pb::ApprovalState::Rejected,
        "used" => pb::ApprovalState::Used,
        _ => pb::ApprovalState::Unspecified,
    };
    pb::Approval {
        id: a.id.to_string(),
        action: a.action.clone(),
        target_kind: a.target_kind.clone(),
        target_id: a.target_id.clone(),
        summary: a.summary.clone(),
        parameters_json: a.parameters.to_string(),
        requested_by: a.requested_by_name.clone(),
        requested_at: Some(crate::grpc::convert::ts(a.requested_at)),
        state: state as i32,
        decided_by: a.decided_by.clone().unwrap_or_default(),
        decided_at: a.decided_at.map(crate::grpc::convert::ts),
        reason: a.reason.clone(),
        expires_at: Some(crate::grpc::convert::ts(a.expires_at)),
    }
}

fn required(field: &'static str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    Ok(())
}

impl OperatorSvc {
    /// Gates a user or role change: a non-admin needs an approval of this exact change.
    async fn gate_access_change<T>(
        &self,
        req: &Request<T>,
        action: &'static str,
        target_kind: &'static str,
        target_id: &str,
        summary: String,
        parameters: serde_json::Value,
    ) -> Result<(), Status> {
        let p = principal(req)?;
        let c = Critical { action, target_kind, target_id: target_id.to_owned(), summary, parameters };
        self.gated(&p, approval_of(req)?, c).await
    }
}

#[tonic::async_trait]
impl user_service_server::UserService for OperatorSvc {
    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        let kind = match pb::UserKind::try_from(r.kind).unwrap_or_default() {
            pb::UserKind::Password | pb::UserKind::Unspecified => "password",
            pb::UserKind::Service => "service",
            pb::UserKind::Oidc => {
                return Err(Status::invalid_argument("kind: OIDC users are created by their first sign-in"));
            }
        };
        let params = serde_json::json!({"username": r.username, "kind": kind, "roles": r.roles});
        self.gate_access_change(
            &req,
            "user.create",
            "user",
            &r.username,
            format!("create user {} with roles {:?}", r.username, r.roles),
            params,
        )
        .await?;
        let n = NewUser {
            username: r.username,
            kind,
            password: (!r.password.is_empty()).then_some(r.password),
            roles: r.roles,
        };
        let res = self.ctx.access.create_user(&p, n).await;
        let u = self.audited(&p.actor(), "user.create", "user", |u: &User| u.id.to_string(), res).await?;
        Ok(Response::new(user(&u)))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let r = req.into_inner();
        required("id", &r.id)?;
        Ok(Response::new(user(&self.ctx.access.user(&r.id).await?)))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.access.list_users(page).await?;
        Ok(Response::new(pb::ListUsersResponse {
            next_page_token: page.next_token(list.len()),
            users: list.iter().map(user).collect(),
        }))
    }

    async fn update_user(&self, req: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        required("id", &r.id)?;
        let target = self.ctx.access.user(&r.id).await?;
        let params = serde_json::json!({"roles": r.roles, "disabled": r.disabled});
        self.gate_access_change(
            &req,
            "user.update",
            "user",
            &target.id.to_string(),
            format!("change user {}: roles {:?}, disabled {:?}", target.username, r.roles, r.disabled),
            params,
        )
        .await?;
        let roles = (!r.roles.is_empty()).then_some(r.roles);
        let res = self.ctx.access.update_user(&p, &target.id.to_string(), roles, r.disabled).await;
        let u = self.audited_on(&p.actor(), "user.update", "user", target.id, res).await?;
        Ok(Response::new(user(&u)))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        required("id", &r.id)?;
        let target = self.ctx.access.user(&r.id).await?;
        self.gate_access_change(
            &req,
            "user.delete",
            "user",
            &target.id.to_string(),
            format!("delete user {}", target.username),
            serde_json::json!({}),
        )
        .await?;
        let res = self.ctx.access.delete_user(&p, &target.id.to_string()).await;
        self.audited_on(&p.actor(), "user.delete", "user", target.id, res).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        required("id", &r.id)?;
        let target = self.ctx.access.user(&r.id).await?;
        crate::service::auth::validate_password("new_password", &r.new_password)
            .map_err(crate::error::ControllerError::from)?;
        self.gate_access_change(
            &req,
            "user.reset_password",
            "user",
            &target.id.to_string(),
            format!("reset the password of {}", target.username),
            serde_json::json!({}),
        )
        .await?;
        let res = self.ctx.access.reset_password(&target.id.to_string(), &r.new_password).await;
        self.audited_on(&p.actor(), "user.reset_password", "user", target.id, res).await?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }
}

#[tonic::async_trait]
impl role_service_server::RoleService for OperatorSvc {
    async fn create_role(&self, req: Request<pb::CreateRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        let params = serde_json::json!({"name": r.name, "permissions": r.permissions});
        self.gate_access_change(
            &req,
            "role.create",
            "role",
            &r.name,
            format!("create role {} with {:?}", r.name, r.permissions),
            params,
        )
        .await?;
        let res = self.ctx.access.create_role(&p, &r.name, &r.description, &r.permissions).await;
        let x = self.audited(&p.actor(), "role.create", "role", |x: &RoleRecord| x.id.to_string(), res).await?;
        Ok(Response::new(role(&x)))
    }

    async fn get_role(&self, req: Request<pb::GetRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let r = req.into_inner();
        required("id", &r.id)?;
        Ok(Response::new(role(&self.ctx.access.role(&r.id).await?)))
    }

    async fn list_roles(&self, _req: Request<pb::ListRolesRequest>) -> Result<Response<pb::ListRolesResponse>, Status> {
        let list = self.ctx.access.list_roles().await?;
        Ok(Response::new(pb::ListRolesResponse { roles: list.iter().map(role).collect() }))
    }

    async fn update_role(&self, req: Request<pb::UpdateRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        required("id", &r.id)?;
        let target = self.ctx.access.role(&r.id).await?;
        let params = serde_json::json!({"description": r.description, "permissions": r.permissions});
        self.gate_access_change(
            &req,
            "role.update",
            "role",
            &target.id.to_string(),
            format!("change role {}: {:?}", target.name, r.permissions),
            params,
        )
        .await?;
        let res =
            self.ctx.access.update_role(&p, &target.id.to_string(), r.description.as_deref(), &r.permissions).await;
        let x = self.audited_on(&p.actor(), "role.update", "role", target.id, res).await?;
        Ok(Response::new(role(&x)))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        required("id", &r.id)?;
        let target = self.ctx.access.role(&r.id).await?;
        self.gate_access_change(
            &req,
            "role.delete",
            "role",
            &target.id.to_string(),
            format!("delete role {}", target.name),
            serde_json::json!({}),
        )
        .await?;
        let res = self.ctx.access.delete_role(&target.id.to_string()).await;
        self.audited_on(&p.actor(), "role.delete", "role", target.id, res).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn list_permissions(
        &self,
        _req: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        let mut permissions: Vec<pb::Permission> = Permission::ALL
            .iter()
            .map(|p| pb::Permission {
                name: p.name().into(),
                description: p.description().into(),
                system_roles: p.system_roles().iter().map(|r: &SystemRole| r.name().to_owned()).collect(),
            })
            .collect();
        permissions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListPermissionsResponse { permissions }))
    }

    async fn create_scope_rule(
        &self,
        req: Request<pb::CreateScopeRuleRequest>,
    ) -> Result<Response<pb::ScopeRule>, Status> {
        let p = principal(&req)?;
        let r = req.get_ref().clone();
        let deny = match pb::ScopeEffect::try_from(r.effect).unwrap_or_default() {
            pb::ScopeEffect::Allow => false,
            pb::ScopeEffect::Deny => true,
            pb::ScopeEffect::Unspecified => return Err(Status::invalid_argument("effect: must be allow or deny")),
        };
        let labels: std::collections::BTreeMap<_, _> = r.labels.clone().into_iter().collect();
        let params = serde_json::json!({"user": r.user, "role": r.role, "deny": deny, "kind": r.resource_kind,
            "id": r.resource_id, "labels": labels});
        self.gate_access_change(
            &req,
            "scope_rule.create",
            "scope_rule",
            "",
            format!(
                "add a {} rule on {} for {}{}",
                if deny { "deny" } else { "allow" },
                r.resource_kind,
                r.user,
                r.role
            ),
            params,
        )
        .await?;
        let res =
            self.ctx.access.create_scope_rule(&r.user, &r.role, deny, &r.resource_kind, &r.resource_id, labels).await;
        let x = self
            .audited(&p.actor(), "scope_rule.create", "scope_rule", |x: &ScopeRuleRecord| x.id.to_string(), res)
            .await?;
        Ok(Response::new(rule(&x)))
    }

    async fn list_scope_rules(
        &self,
        req: Request<pb::ListScopeRulesRequest>,
    ) -> Result<Response<pb::ListScopeRulesResponse>, Status> {
        let r = req.into_inner();
        let list = self.ctx.access.list_scope_rules(&r.user, &r.role).await?;
        Ok(Response::new(pb::ListScopeRulesResponse { rules: list.iter().map(rule).collect() }))
    }

    async fn delete_scope_rule(
        &self,
        req: Request<pb::DeleteScopeRuleRequest>,
    ) -> Result<Response<pb::DeleteScopeRuleResponse>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.get_ref().id)?;
        self.gate_access_change(
            &req,
            "scope_rule.delete",
            "scope_rule",
            &id.to_string(),
            format!("delete scope rule {id}"),
            serde_json::json!({}),
        )
        .await?;
        let res = self.ctx.access.delete_scope_rule(id).await;
        self.audited_on(&p.actor(), "scope_rule.delete", "scope_rule", id, res).await?;
        Ok(Response::new(pb::DeleteScopeRuleResponse {}))
    }
}

#[tonic::async_trait]
impl token_service_server::TokenService for OperatorSvc {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        required("role", &r.role)?;
        let ttl =
            u64::try_from(r.ttl_seconds).map_err(|_| Status::invalid_argument("ttl_seconds: must not be negative"))?;
        let scopes = r
            .scopes
            .into_iter()
            .map(|s| {
                selector(
                    &s.resource_kind,
                    &s.resource_id,
                    s.labels.into_iter().collect(),
                    "scopes.resource_kind",
                    "scopes.resource_id",
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::error::ControllerError::from)?;
        let t = TokenRequest {
            name: r.name,
            service_account: (!r.service_account.is_empty()).then_some(r.service_account),
            role: r.role,
            ttl: Duration::from_secs(ttl),
            scopes,
        };
        let res = self.ctx.access.create_token(&p, t).await;
        let (rec, secret) =
            self.audited(&p.actor(), "token.create", "api_token", |(t, _)| t.id.to_string(), res).await?;
        Ok(Response::new(pb::CreateTokenResponse { token: Some(token(&rec)), secret }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let p = principal(&req)?;
        let list = self.ctx.access.list_tokens(&p, req.get_ref().include_inactive).await?;
        Ok(Response::new(pb::ListTokensResponse { tokens: list.iter().map(token).collect() }))
    }

    async fn revoke_token(&self, req: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::ApiToken>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.get_ref().id)?;
        let res = self.ctx.access.revoke_token(&p, id).await;
        let t = self.audited_on(&p.actor(), "token.revoke", "api_token", id, res).await?;
        Ok(Response::new(token(&t)))
    }
}

#[tonic::async_trait]
impl approval_service_server::ApprovalService for OperatorSvc {
    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.access.list_approvals(r.pending_only, page).await?;
        Ok(Response::new(pb::ListApprovalsResponse {
            next_page_token: page.next_token(list.len()),
            approvals: list.iter().map(approval).collect(),
        }))
    }

    async fn get_approval(&self, req: Request<pb::GetApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        let id = validate::id("id", &req.get_ref().id)?;
        Ok(Response::new(approval(&self.ctx.access.approval(id).await?)))
    }

    async fn approve_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        self.decide(req, true).await
    }

    async fn reject_approval(&self, req: Request<pb::DecideApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        self.decide(req, false).await
    }
}

impl OperatorSvc {
    async fn decide(
        &self,
        req: Request<pb::DecideApprovalRequest>,
        approve: bool,
    ) -> Result<Response<pb::Approval>, Status> {
        let who = actor(&req);
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let res = self.ctx.access.decide(&p, id, approve, &r.reason).await;
        let action = if approve { "approval.approve" } else { "approval.reject" };
        let a = self.audited_on(&who, action, "approval", id, res).await?;
        Ok(Response::new(approval(&a)))
    }
}
