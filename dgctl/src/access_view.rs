//! `-o json|yaml` views of the access model (users, roles, scope rules, API tokens, approvals): the same
//! stable-schema rules as `view` (fields only added, RFC 3339 times, lowercase enum words).

use std::collections::BTreeMap;

use dg_proto::v1 as pb;
use serde::Serialize;

use crate::{
    output::Row,
    view::{ts, word},
};

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

/// A user.
#[derive(Debug, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub disabled_at: Option<String>,
    pub created_at: Option<String>,
}

impl From<pb::User> for User {
    fn from(u: pb::User) -> Self {
        Self {
            kind: word(u.kind().as_str_name(), "USER_KIND_"),
            disabled: u.disabled_at.is_some(),
            disabled_at: ts(u.disabled_at.as_ref()),
            created_at: ts(u.created_at.as_ref()),
            id: u.id,
            username: u.username,
            roles: u.roles,
        }
    }
}

impl Row for User {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "USERNAME", "KIND", "ROLES", "DISABLED"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.username.clone(),
            self.kind.clone(),
            self.roles.join(", "),
            if self.disabled { "yes" } else { "" }.into(),
        ]
    }
}

/// A role.
#[derive(Debug, Serialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub system: bool,
}

impl From<pb::Role> for Role {
    fn from(r: pb::Role) -> Self {
        Self { id: r.id, name: r.name, description: r.description, permissions: r.permissions, system: r.system }
    }
}

impl Row for Role {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "SYSTEM", "PERMISSIONS", "DESCRIPTION"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.system { "yes" } else { "" }.into(),
            self.permissions.len().to_string(),
            self.description.clone(),
        ]
    }
}

/// A permission.
#[derive(Debug, Serialize)]
pub struct Permission {
    pub name: String,
    pub description: String,
    pub system_roles: Vec<String>,
}

impl From<pb::Permission> for Permission {
    fn from(p: pb::Permission) -> Self {
        Self { name: p.name, description: p.description, system_roles: p.system_roles }
    }
}

impl Row for Permission {
    fn headers() -> Vec<&'static str> {
        vec!["NAME", "SYSTEM ROLES", "DESCRIPTION"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.name.clone(), self.system_roles.join(", "), self.description.clone()]
    }
}

/// A scope rule.
#[derive(Debug, Serialize)]
pub struct ScopeRule {
    pub id: String,
    pub user: String,
    pub role: String,
    pub effect: String,
    pub resource_kind: String,
    pub resource_id: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
}

impl From<pb::ScopeRule> for ScopeRule {
    fn from(r: pb::ScopeRule) -> Self {
        Self {
            effect: word(r.effect().as_str_name(), "SCOPE_EFFECT_"),
            created_at: ts(r.created_at.as_ref()),
            id: r.id,
            user: r.user,
            role: r.role,
            resource_kind: r.resource_kind,
            resource_id: r.resource_id,
            labels: r.labels.into_iter().collect(),
        }
    }
}

impl Row for ScopeRule {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "SUBJECT", "EFFECT", "KIND", "MATCH"]
    }
    fn cells(&self) -> Vec<String> {
        let subject = if self.user.is_empty() { format!("role {}", self.role) } else { format!("user {}", self.user) };
        let matches = if self.resource_id.is_empty() {
            self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        } else {
            self.resource_id.clone()
        };
        vec![self.id.clone(), subject, self.effect.clone(), self.resource_kind.clone(), matches]
    }
}

/// An API token (never its secret, except right after creation: see [`CreatedToken`]).
#[derive(Debug, Serialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub user: String,
    pub created_by: String,
    pub role: String,
    pub scopes: Vec<TokenScope>,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_at: Option<String>,
}

/// A limit of a token.
#[derive(Debug, Serialize)]
pub struct TokenScope {
    pub resource_kind: String,
    pub resource_id: String,
    pub labels: BTreeMap<String, String>,
}

impl From<pb::ApiToken> for Token {
    fn from(t: pb::ApiToken) -> Self {
        Self {
            expires_at: ts(t.expires_at.as_ref()),
            last_used_at: ts(t.last_used_at.as_ref()),
            revoked_at: ts(t.revoked_at.as_ref()),
            created_at: ts(t.created_at.as_ref()),
            scopes: t
                .scopes
                .into_iter()
                .map(|s| TokenScope {
                    resource_kind: s.resource_kind,
                    resource_id: s.resource_id,
                    labels: s.labels.into_iter().collect(),
                })
                .collect(),
            id: t.id,
            name: t.name,
            user: t.user,
            created_by: t.created_by,
            role: t.role,
        }
    }
}

impl Row for Token {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "NAME", "USER", "ROLE", "EXPIRES", "REVOKED"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.user.clone(),
            self.role.clone(),
            opt(&self.expires_at),
            opt(&self.revoked_at),
        ]
    }
}

/// A token just created, with its secret (shown only this once).
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    pub secret: String,
}

/// An approval.
#[derive(Debug, Serialize)]
pub struct Approval {
    pub id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub summary: String,
    pub parameters: serde_json::Value,
    pub requested_by: String,
    pub requested_at: Option<String>,
    pub state: String,
    pub decided_by: String,
    pub decided_at: Option<String>,
    pub reason: String,
    pub expires_at: Option<String>,
}

impl From<pb::Approval> for Approval {
    fn from(a: pb::Approval) -> Self {
        Self {
            state: word(a.state().as_str_name(), "APPROVAL_STATE_"),
            parameters: serde_json::from_str(&a.parameters_json).unwrap_or(serde_json::Value::Null),
            requested_at: ts(a.requested_at.as_ref()),
            decided_at: ts(a.decided_at.as_ref()),
            expires_at: ts(a.expires_at.as_ref()),
            id: a.id,
            action: a.action,
            target_kind: a.target_kind,
            target_id: a.target_id,
            summary: a.summary,
            requested_by: a.requested_by,
            decided_by: a.decided_by,
            reason: a.reason,
        }
    }
}

impl Row for Approval {
    fn headers() -> Vec<&'static str> {
        vec!["ID", "STATE", "ACTION", "REQUESTED BY", "SUMMARY"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.id.clone(), self.state.clone(), self.action.clone(), self.requested_by.clone(), self.summary.clone()]
    }
}
