//! Users, roles, scope rules, API tokens and approvals: the rules about who may grant what. A caller never
//! grants more than it holds (a custom role's permissions, a token's role), never removes the last enabled
//! admin, and a critical call by a non-admin needs another user's approval (see [`AccessService::gate`]).

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use dg_common::error::FieldError;
use uuid::Uuid;

use super::auth::{API_TOKEN_PREFIX, AuthService, hash_password, validate_password, validate_username};
use crate::{
    access::{Permission, Principal, ResourceKind, Selector, SystemRole},
    crypto,
    db::{Db, NewScopeRule, NewToken, Page, UserChange},
    error::{ControllerError, ControllerResult},
    model::{ApiTokenRecord, ApprovalRecord, RoleRecord, ScopeRuleRecord, User},
};

/// A new user.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// Name.
    pub username: String,
    /// "password" or "service".
    pub kind: &'static str,
    /// Password (password users).
    pub password: Option<String>,
    /// Role names.
    pub roles: Vec<String>,
}

/// A new API token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Name.
    pub name: String,
    /// A service account to make it for (else the caller).
    pub service_account: Option<String>,
    /// Role name.
    pub role: String,
    /// Lifetime.
    pub ttl: Duration,
    /// Limits.
    pub scopes: Vec<Selector>,
}

/// A critical call to gate: what it is and the exact parameters an approval binds to.
#[derive(Clone, Debug)]
pub struct Critical {
    /// Action, e.g. "backup.restore".
    pub action: &'static str,
    /// Target kind.
    pub target_kind: &'static str,
    /// Target id.
    pub target_id: String,
    /// Readable summary for the approver.
    pub summary: String,
    /// Parameters the repeated call must match.
    pub parameters: serde_json::Value,
}

/// The access service.
#[derive(Clone, Debug)]
pub struct AccessService {
    db: Db,
    auth: AuthService,
    approval_ttl: Duration,
    /// `key=value` pairs marking a datasource protected (any one suffices).
    protected_labels: std::sync::Arc<[(String, String)]>,
}

const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 86_400);
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

impl AccessService {
    /// New service; `protected_labels` are `key=value` strings (checked by the configuration).
    pub fn new(db: Db, auth: AuthService, approval_ttl: Duration, protected_labels: &[String]) -> Self {
        let protected_labels = protected_labels
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self { db, auth, approval_ttl, protected_labels }
    }

    /// Whether a datasource with these labels is protected: restoring into it is a critical call.
    pub fn is_protected(&self, labels: &serde_json::Value) -> bool {
        self.protected_labels.iter().any(|(k, v)| labels.get(k).and_then(|x| x.as_str()) == Some(v.as_str()))
    }

    /// A user by id or name.
    pub async fn user(&self, id_or_name: &str) -> ControllerResult<User> {
        let u = match Uuid::parse_str(id_or_name) {
            Ok(id) => self.db.user_by_id(id).await?,
            Err(_) => self.db.user_by_name(id_or_name).await?,
        };
        u.ok_or_else(|| ControllerError::NotFound(format!("user {id_or_name}")))
    }

    /// Users by name.
    pub async fn list_users(&self, page: Page) -> ControllerResult<Vec<User>> {
        Ok(self.db.list_users(page).await?)
    }

    /// Creates a user; the caller must hold every permission the roles grant.
    pub async fn create_user(&self, caller: &Principal, n: NewUser) -> ControllerResult<User> {
        validate_username("username", &n.username)?;
        let hash = match (n.kind, &n.password) {
            ("password", Some(p)) => {
                validate_password("password", p)?;
                Some(hash_password(p).await?)
            }
            ("password", None) => return Err(FieldError::new("password", "is required for a password user").into()),
            (_, Some(_)) => return Err(FieldError::new("password", "must be empty for a service account").into()),
            (_, None) => None,
        };
        let roles = self.grantable_roles(caller, "roles", &n.roles).await?;
        let ids: Vec<Uuid> = roles.iter().map(|r| r.id).collect();
        let id = self
            .db
            .create_user(&n.username, n.kind, hash.as_deref(), &ids)
            .await?
            .ok_or_else(|| ControllerError::AlreadyExists(format!("user {} exists", n.username)))?;
        self.user(&id.to_string()).await
    }

    /// Replaces roles and/or disables or enables a user.
    pub async fn update_user(
        &self,
        caller: &Principal,
        id_or_name: &str,
        roles: Option<Vec<String>>,
        disabled: Option<bool>,
    ) -> ControllerResult<User> {
        let u = self.user(id_or_name).await?;
        if u.id == caller.user_id && disabled == Some(true) {
            return Err(ControllerError::FailedPrecondition("you cannot disable yourself".into()));
        }
        let ids = match roles {
            Some(r) => Some(self.grantable_roles(caller, "roles", &r).await?.iter().map(|r| r.id).collect::<Vec<_>>()),
            None => None,
        };
        match self.db.update_user(u.id, ids.as_deref(), disabled).await? {
            UserChange::Done => self.user(&u.id.to_string()).await,
            UserChange::Missing => Err(ControllerError::NotFound(format!("user {id_or_name}"))),
            UserChange::LastAdmin => {
                Err(ControllerError::FailedPrecondition("that would leave no enabled admin".into()))
            }
        }
    }

    /// Deletes a user (not oneself, not the last enabled admin).
    pub async fn delete_user(&self, caller: &Principal, id_or_name: &str) -> ControllerResult<Uuid> {
        let u = self.user(id_or_name).await?;
        if u.id == caller.user_id {
            return Err(ControllerError::FailedPrecondition("you cannot delete yourself".into()));
        }
        match self.db.delete_user(u.id).await? {
            UserChange::Done => Ok(u.id),
            UserChange::Missing => Err(ControllerError::NotFound(format!("user {id_or_name}"))),
            UserChange::LastAdmin => {
                Err(ControllerError::FailedPrecondition("that would leave no enabled admin".into()))
            }
        }
    }

    /// Sets another user's password and ends its sessions.
    pub async fn reset_password(&self, id_or_name: &str, new: &str) -> ControllerResult<Uuid> {
        let u = self.user(id_or_name).await?;
        self.auth.set_password(u.id, new, None).await?;
        Ok(u.id)
    }

    /// A role by id or name.
    pub async fn role(&self, id_or_name: &str) -> ControllerResult<RoleRecord> {
        self.db.role(id_or_name).await?.ok_or_else(|| ControllerError::NotFound(format!("role {id_or_name}")))
    }

    /// Every role.
    pub async fn list_roles(&self) -> ControllerResult<Vec<RoleRecord>> {
        Ok(self.db.list_roles().await?)
    }

    /// Creates a custom role.
    pub async fn create_role(
        &self,
        caller: &Principal,
        name: &str,
        description: &str,
        permissions: &[String],
    ) -> ControllerResult<RoleRecord> {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        {
            return Err(FieldError::new("name", "must be 1-64 characters of [a-z0-9._-]").into());
        }
        if SystemRole::from_name(name).is_some() {
            return Err(FieldError::new("name", "is a system role's name").into());
        }
        let perms = grantable_permissions(caller, permissions)?;
        self.db
            .create_role(name, description, perms)
            .await?
            .ok_or_else(|| ControllerError::AlreadyExists(format!("role {name} exists")))
    }

    /// Changes a custom role.
    pub async fn update_role(
        &self,
        caller: &Principal,
        id_or_name: &str,
        description: Option<&str>,
        permissions: &[String],
    ) -> ControllerResult<RoleRecord> {
        let r = self.role(id_or_name).await?;
        if r.system {
            return Err(ControllerError::FailedPrecondition(format!("{} is a system role and cannot change", r.name)));
        }
        let perms = if permissions.is_empty() { None } else { Some(grantable_permissions(caller, permissions)?) };
        self.db
            .update_role(r.id, description, perms)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("role {id_or_name}")))
    }

    /// Deletes a custom role no one holds.
    pub async fn delete_role(&self, id_or_name: &str) -> ControllerResult<Uuid> {
        let r = self.role(id_or_name).await?;
        if r.system {
            return Err(ControllerError::FailedPrecondition(format!("{} is a system role", r.name)));
        }
        if !self.db.delete_role(r.id).await? {
            return Err(ControllerError::FailedPrecondition(format!(
                "role {} is held by a user or a live API token",
                r.name
            )));
        }
        Ok(r.id)
    }

    /// Adds a scope rule to a user or a role.
    pub async fn create_scope_rule(
        &self,
        user: &str,
        role: &str,
        deny: bool,
        kind: &str,
        resource_id: &str,
        labels: BTreeMap<String, String>,
    ) -> ControllerResult<ScopeRuleRecord> {
        let (user_id, role_id) = match (user.is_empty(), role.is_empty()) {
            (false, true) => (Some(self.user(user).await?.id), None),
            (true, false) => (None, Some(self.role(role).await?.id)),
            _ => return Err(FieldError::new("user", "exactly one of user and role is required").into()),
        };
        let selector = selector(kind, resource_id, labels, "resource_kind", "resource_id")?;
        Ok(self
            .db
            .create_scope_rule(NewScopeRule {
                user_id,
                role_id,
                deny,
                resource_kind: ResourceKind::from_name(&selector.kind).map_or("datasource", ResourceKind::name),
                resource_id: selector.id,
                labels: serde_json::to_value(&selector.labels).unwrap_or_default(),
            })
            .await?)
    }

    /// Scope rules of a user, a role, or all.
    pub async fn list_scope_rules(&self, user: &str, role: &str) -> ControllerResult<Vec<ScopeRuleRecord>> {
        let u = if user.is_empty() { None } else { Some(self.user(user).await?.id) };
        let r = if role.is_empty() { None } else { Some(self.role(role).await?.id) };
        Ok(self.db.list_scope_rules(u, r).await?)
    }

    /// Deletes a scope rule.
    pub async fn delete_scope_rule(&self, id: Uuid) -> ControllerResult<()> {
        if !self.db.delete_scope_rule(id).await? {
            return Err(ControllerError::NotFound(format!("scope rule {id}")));
        }
        Ok(())
    }

    /// Creates an API token no wider than its creator: its role's permissions must all be held by the caller,
    /// and at use it holds only those its user also holds, within its user's scope and its own limits.
    pub async fn create_token(
        &self,
        caller: &Principal,
        t: TokenRequest,
    ) -> ControllerResult<(ApiTokenRecord, String)> {
        validate_username("name", &t.name)?;
        if caller_is_token(caller) {
            return Err(ControllerError::PermissionDenied("an API token cannot create API tokens".into()));
        }
        let user_id = match &t.service_account {
            None => caller.user_id,
            Some(sa) => {
                if !caller.can(Permission::UserWrite) {
                    return Err(ControllerError::PermissionDenied(
                        "permission user.write is required to make a service account's token".into(),
                    ));
                }
                let u = self.user(sa).await?;
                if u.kind != "service" {
                    return Err(FieldError::new("service_account", "is not a service account").into());
                }
                u.id
            }
        };
        let role = self.grantable_roles(caller, "role", std::slice::from_ref(&t.role)).await?.remove(0);
        let ttl = if t.ttl.is_zero() { DEFAULT_TOKEN_TTL } else { t.ttl };
        if ttl > MAX_TOKEN_TTL {
            return Err(FieldError::new("ttl_seconds", "must be at most one year").into());
        }
        let secret = crypto::new_token(API_TOKEN_PREFIX.trim_end_matches('_'));
        let rec = self
            .db
            .create_token(NewToken {
                name: t.name.clone(),
                token_hash: crypto::token_hash(&secret),
                user_id,
                created_by: caller.username.clone(),
                role_id: role.id,
                scopes: serde_json::to_value(&t.scopes).unwrap_or_default(),
                expires_at: Utc::now() + ttl,
            })
            .await?
            .ok_or_else(|| ControllerError::AlreadyExists(format!("a token named {} exists", t.name)))?;
        Ok((rec, secret))
    }

    /// The caller's tokens (made for or by it), or all with `user.read`.
    pub async fn list_tokens(
        &self,
        caller: &Principal,
        include_inactive: bool,
    ) -> ControllerResult<Vec<ApiTokenRecord>> {
        let filter = (!caller.can(Permission::UserRead)).then_some((caller.user_id, caller.username.as_str()));
        Ok(self.db.list_tokens(filter, include_inactive).await?)
    }

    /// Revokes a token the caller made or acts as (any token with `user.write`).
    pub async fn revoke_token(&self, caller: &Principal, id: Uuid) -> ControllerResult<ApiTokenRecord> {
        let t = self.db.token(id).await?.ok_or_else(|| ControllerError::NotFound(format!("API token {id}")))?;
        let own = t.username == caller.username || t.created_by == caller.username;
        if !own && !caller.can(Permission::UserWrite) {
            return Err(ControllerError::NotFound(format!("API token {id}")));
        }
        self.db.revoke_token(id).await?;
        self.db.token(id).await?.ok_or_else(|| ControllerError::NotFound(format!("API token {id}")))
    }

    /// Gates a critical call: admins pass; anyone else passes only with an approved, unexpired approval of
    /// this exact call that they requested (consumed here, once). Without one, a pending approval is made and
    /// the call is refused with FAILED_PRECONDITION naming it.
    pub async fn gate(&self, caller: &Principal, approval: Option<Uuid>, c: Critical) -> ControllerResult<()> {
        if caller.admin {
            return Ok(());
        }
        if let Some(id) = approval {
            if self.db.use_approval(id, caller.user_id, c.action, &c.target_id, c.parameters.clone()).await? {
                return Ok(());
            }
            return Err(ControllerError::FailedPrecondition(format!(
                "approval {id} is not an approved, unused and unexpired approval of this exact call by you"
            )));
        }
        let a = self
            .db
            .create_approval(
                c.action,
                c.target_kind,
                &c.target_id,
                &c.summary,
                c.parameters,
                caller.user_id,
                Utc::now() + self.approval_ttl,
            )
            .await?;
        Err(ControllerError::FailedPrecondition(format!(
            "approval required: approval {} is pending; once another user with approval.decide approves it, repeat \
             the same call with the metadata `dg-approval: {}`",
            a.id, a.id
        )))
    }

    /// An approval.
    pub async fn approval(&self, id: Uuid) -> ControllerResult<ApprovalRecord> {
        self.db.approval(id).await?.ok_or_else(|| ControllerError::NotFound(format!("approval {id}")))
    }

    /// Approvals, newest first.
    pub async fn list_approvals(&self, pending_only: bool, page: Page) -> ControllerResult<Vec<ApprovalRecord>> {
        Ok(self.db.list_approvals(pending_only, page).await?)
    }

    /// Approves or rejects another user's pending approval.
    pub async fn decide(
        &self,
        caller: &Principal,
        id: Uuid,
        approve: bool,
        reason: &str,
    ) -> ControllerResult<ApprovalRecord> {
        if reason.len() > 1024 {
            return Err(FieldError::new("reason", "must be at most 1024 bytes").into());
        }
        let a = self.approval(id).await?;
        if a.requested_by == caller.user_id {
            return Err(ControllerError::PermissionDenied("you cannot decide your own approval".into()));
        }
        self.db.decide_approval(id, approve, caller.user_id, &caller.actor(), reason).await?.ok_or_else(|| {
            ControllerError::FailedPrecondition(format!("approval {id} is no longer pending (decided or expired)"))
        })
    }

    /// Resolves role names, refusing unknown roles and roles granting what the caller does not hold.
    async fn grantable_roles(
        &self,
        caller: &Principal,
        field: &'static str,
        names: &[String],
    ) -> ControllerResult<Vec<RoleRecord>> {
        if names.is_empty() {
            return Err(FieldError::new(field, "at least one role is required").into());
        }
        let mut out = Vec::new();
        for n in names {
            let r = self.db.role(n).await?.ok_or_else(|| FieldError::new(field, format!("no role {n}")))?;
            if let Some(p) = r.effective().into_iter().find(|p| !caller.can(*p)) {
                return Err(ControllerError::PermissionDenied(format!(
                    "role {} grants {}, which you do not hold",
                    r.name,
                    p.name()
                )));
            }
            out.push(r);
        }
        Ok(out)
    }
}

fn caller_is_token(p: &Principal) -> bool {
    matches!(p.via, crate::access::Via::Token { .. })
}

/// Parses permission names, refusing unknown ones and ones the caller does not hold.
fn grantable_permissions(caller: &Principal, names: &[String]) -> ControllerResult<serde_json::Value> {
    if names.is_empty() {
        return Err(FieldError::new("permissions", "at least one permission is required").into());
    }
    let mut out = std::collections::BTreeSet::new();
    for n in names {
        let p = Permission::from_name(n)
            .ok_or_else(|| FieldError::new("permissions", format!("unknown permission {n} (see ListPermissions)")))?;
        if !caller.can(p) {
            return Err(ControllerError::PermissionDenied(format!("you do not hold {n}, so you cannot grant it")));
        }
        out.insert(p.name());
    }
    Ok(serde_json::json!(out))
}

/// A selector from a kind and an id or labels.
pub fn selector(
    kind: &str,
    resource_id: &str,
    labels: BTreeMap<String, String>,
    kind_field: &'static str,
    id_field: &'static str,
) -> Result<Selector, FieldError> {
    let k = ResourceKind::from_name(kind)
        .ok_or_else(|| FieldError::new(kind_field, "must be datasource, storage or job"))?;
    let id = if resource_id.is_empty() {
        None
    } else {
        Some(Uuid::parse_str(resource_id).map_err(|_| FieldError::new(id_field, "must be a UUID"))?)
    };
    match (id.is_some(), labels.is_empty()) {
        (true, false) | (false, true) => {
            return Err(FieldError::new(id_field, "exactly one of resource_id and labels is required"));
        }
        _ => {}
    }
    if labels.len() > 16 || labels.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256) {
        return Err(FieldError::new("labels", "at most 16 labels, keys 1-63 and values up to 256 characters"));
    }
    Ok(Selector { kind: k.name().into(), id, labels })
}
