//! Persistence of user management, roles, scope rules, API tokens and approvals.

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, auth::ADMIN_ROLE_ID, execute, fetch_all, fetch_one};
use crate::model::{ApiTokenRecord, ApprovalRecord, RoleRecord, ScopeRuleRecord};

const ROLE_COLS: &str = "id, name, description, permissions, system";
const RULE_COLS: &str = "sr.id, u.username, r.name AS role_name, sr.effect, sr.resource_kind, sr.resource_id, \
     sr.labels, sr.created_at";
const RULE_FROM: &str = "scope_rule sr LEFT JOIN app_user u ON u.id = sr.user_id LEFT JOIN role r ON r.id = sr.role_id";
const TOKEN_COLS: &str = "t.id, t.name, u.username, t.created_by, r.name AS role_name, t.scopes, t.expires_at, \
     t.last_used_at, t.revoked_at, t.created_at";
const TOKEN_FROM: &str = "api_token t JOIN app_user u ON u.id = t.user_id JOIN role r ON r.id = t.role_id";
const APPROVAL_COLS: &str = "a.id, a.action, a.target_kind, a.target_id, a.summary, a.parameters, a.requested_by, \
     u.username AS requested_by_name, a.requested_at, a.expires_at, a.state, a.decided_by, a.decided_at, a.reason";
const APPROVAL_FROM: &str = "approval a JOIN app_user u ON u.id = a.requested_by";

/// A new scope rule.
#[derive(Clone, Debug)]
pub struct NewScopeRule {
    /// The user it applies to.
    pub user_id: Option<Uuid>,
    /// Or the role.
    pub role_id: Option<Uuid>,
    /// Deny (else allow).
    pub deny: bool,
    /// Resource kind name.
    pub resource_kind: &'static str,
    /// One resource.
    pub resource_id: Option<Uuid>,
    /// Or a label selector.
    pub labels: serde_json::Value,
}

/// A new API token.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// Secret's sha256.
    pub token_hash: Vec<u8>,
    /// The user it acts as.
    pub user_id: Uuid,
    /// Creator (audit name).
    pub created_by: String,
    /// Its role.
    pub role_id: Uuid,
    /// Its limits.
    pub scopes: serde_json::Value,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// What happened to a user change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserChange {
    /// Done.
    Done,
    /// No such user.
    Missing,
    /// It would leave no enabled admin.
    LastAdmin,
}

impl Db {
    /// Creates a user with roles; `None` when the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        kind: &str,
        password_hash: Option<&str>,
        role_ids: &[Uuid],
    ) -> Result<Option<Uuid>, DbErr> {
        let txn = self.conn.begin().await?;
        let id = Uuid::now_v7();
        let n = execute(
            &txn,
            "INSERT INTO app_user (id, username, kind, password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [id.into(), username.into(), kind.into(), password_hash.map(str::to_owned).into()],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        for r in role_ids {
            execute(&txn, "INSERT INTO user_role (user_id, role_id) VALUES ($1, $2)", [id.into(), (*r).into()]).await?;
        }
        txn.commit().await?;
        Ok(Some(id))
    }

    /// Replaces roles and/or sets the disabled flag, refusing to leave no enabled admin (serialised so two
    /// concurrent demotions cannot both pass the check).
    pub async fn update_user(
        &self,
        id: Uuid,
        role_ids: Option<&[Uuid]>,
        disabled: Option<bool>,
    ) -> Result<UserChange, DbErr> {
        let txn = self.conn.begin().await?;
        execute(&txn, "SELECT pg_advisory_xact_lock(hashtext('dg_first_admin'))", []).await?;
        if execute(&txn, "SELECT 1 FROM app_user WHERE id = $1 FOR UPDATE", [id.into()]).await? == 0 {
            txn.rollback().await?;
            return Ok(UserChange::Missing);
        }
        if let Some(roles) = role_ids {
            execute(&txn, "DELETE FROM user_role WHERE user_id = $1", [id.into()]).await?;
            for r in roles {
                execute(&txn, "INSERT INTO user_role (user_id, role_id) VALUES ($1, $2)", [id.into(), (*r).into()])
                    .await?;
            }
        }
        if let Some(d) = disabled {
            execute(
                &txn,
                "UPDATE app_user SET disabled_at = CASE WHEN $2 THEN COALESCE(disabled_at, now()) END WHERE id = $1",
                [id.into(), d.into()],
            )
            .await?;
            if d {
                execute(
                    &txn,
                    "UPDATE session SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                    [id.into()],
                )
                .await?;
            }
        }
        if enabled_admins(&txn).await? == 0 {
            txn.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        txn.commit().await?;
        Ok(UserChange::Done)
    }

    /// Deletes a user (cascading to its sessions, tokens, rules and approvals), refusing the last enabled admin.
    pub async fn delete_user(&self, id: Uuid) -> Result<UserChange, DbErr> {
        let txn = self.conn.begin().await?;
        execute(&txn, "SELECT pg_advisory_xact_lock(hashtext('dg_first_admin'))", []).await?;
        if execute(&txn, "DELETE FROM app_user WHERE id = $1", [id.into()]).await? == 0 {
            txn.rollback().await?;
            return Ok(UserChange::Missing);
        }
        if enabled_admins(&txn).await? == 0 {
            txn.rollback().await?;
            return Ok(UserChange::LastAdmin);
        }
        txn.commit().await?;
        Ok(UserChange::Done)
    }

    /// A role by name or id.
    pub async fn role(&self, name_or_id: &str) -> Result<Option<RoleRecord>, DbErr> {
        match Uuid::parse_str(name_or_id) {
            Ok(id) => fetch_one(&self.conn, &format!("SELECT {ROLE_COLS} FROM role WHERE id = $1"), [id.into()]).await,
            Err(_) => {
                fetch_one(&self.conn, &format!("SELECT {ROLE_COLS} FROM role WHERE name = $1"), [name_or_id.into()])
                    .await
            }
        }
    }

    /// Every role, system roles first.
    pub async fn list_roles(&self) -> Result<Vec<RoleRecord>, DbErr> {
        fetch_all(&self.conn, &format!("SELECT {ROLE_COLS} FROM role ORDER BY system DESC, id"), []).await
    }

    /// Creates a custom role; `None` when the name is taken.
    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
        permissions: serde_json::Value,
    ) -> Result<Option<RoleRecord>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO role (id, name, description, permissions) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING RETURNING {ROLE_COLS}"
            ),
            [Uuid::now_v7().into(), name.into(), description.into(), permissions.into()],
        )
        .await
    }

    /// Changes a custom role.
    pub async fn update_role(
        &self,
        id: Uuid,
        description: Option<&str>,
        permissions: Option<serde_json::Value>,
    ) -> Result<Option<RoleRecord>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE role SET description = COALESCE($2, description), permissions = COALESCE($3, permissions) \
                 WHERE id = $1 AND NOT system RETURNING {ROLE_COLS}"
            ),
            [id.into(), description.map(str::to_owned).into(), permissions.into()],
        )
        .await
    }

    /// Deletes a custom role no user or token holds; returns whether deleted.
    pub async fn delete_role(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "DELETE FROM role WHERE id = $1 AND NOT system \
             AND NOT EXISTS (SELECT 1 FROM user_role WHERE role_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM api_token WHERE role_id = $1 AND revoked_at IS NULL)",
            [id.into()],
        )
        .await?
            == 1)
    }

    /// Stores a scope rule.
    pub async fn create_scope_rule(&self, r: NewScopeRule) -> Result<ScopeRuleRecord, DbErr> {
        let id = Uuid::now_v7();
        execute(
            &self.conn,
            "INSERT INTO scope_rule (id, user_id, role_id, effect, resource_kind, resource_id, labels) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                id.into(),
                r.user_id.into(),
                r.role_id.into(),
                (if r.deny { "deny" } else { "allow" }).into(),
                r.resource_kind.into(),
                r.resource_id.into(),
                r.labels.into(),
            ],
        )
        .await?;
        fetch_one(&self.conn, &format!("SELECT {RULE_COLS} FROM {RULE_FROM} WHERE sr.id = $1"), [id.into()])
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("scope rule".into()))
    }

    /// Scope rules, optionally of one user or role.
    pub async fn list_scope_rules(
        &self,
        user_id: Option<Uuid>,
        role_id: Option<Uuid>,
    ) -> Result<Vec<ScopeRuleRecord>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {RULE_COLS} FROM {RULE_FROM} WHERE ($1::uuid IS NULL OR sr.user_id = $1) \
                 AND ($2::uuid IS NULL OR sr.role_id = $2) ORDER BY sr.id"
            ),
            [user_id.into(), role_id.into()],
        )
        .await
    }

    /// Deletes a scope rule; returns whether it existed.
    pub async fn delete_scope_rule(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(&self.conn, "DELETE FROM scope_rule WHERE id = $1", [id.into()]).await? == 1)
    }

    /// Stores a token; `None` when its user already has a token of that name.
    pub async fn create_token(&self, t: NewToken) -> Result<Option<ApiTokenRecord>, DbErr> {
        let id = Uuid::now_v7();
        let n = execute(
            &self.conn,
            "INSERT INTO api_token (id, name, token_hash, user_id, created_by, role_id, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            [
                id.into(),
                t.name.into(),
                t.token_hash.into(),
                t.user_id.into(),
                t.created_by.into(),
                t.role_id.into(),
                t.scopes.into(),
                t.expires_at.into(),
            ],
        )
        .await?;
        if n != 1 {
            return Ok(None);
        }
        self.token(id).await
    }

    /// A token by id.
    pub async fn token(&self, id: Uuid) -> Result<Option<ApiTokenRecord>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {TOKEN_COLS} FROM {TOKEN_FROM} WHERE t.id = $1"), [id.into()]).await
    }

    /// Tokens acting as or created by one user (or all), newest first.
    pub async fn list_tokens(
        &self,
        user: Option<(Uuid, &str)>,
        include_inactive: bool,
    ) -> Result<Vec<ApiTokenRecord>, DbErr> {
        let (uid, uname) = user.map_or((None, None), |(i, n)| (Some(i), Some(n.to_owned())));
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {TOKEN_COLS} FROM {TOKEN_FROM} WHERE ($1::uuid IS NULL OR t.user_id = $1 OR t.created_by = $2) \
                 AND ($3 OR (t.revoked_at IS NULL AND t.expires_at > now())) ORDER BY t.id DESC LIMIT 1000"
            ),
            [uid.into(), uname.into(), include_inactive.into()],
        )
        .await
    }

    /// Revokes a token; returns whether it was live.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE api_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            [id.into()],
        )
        .await?
            == 1)
    }

    /// Stores a pending approval.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_approval(
        &self,
        action: &str,
        target_kind: &str,
        target_id: &str,
        summary: &str,
        parameters: serde_json::Value,
        requested_by: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<ApprovalRecord, DbErr> {
        let id = Uuid::now_v7();
        execute(
            &self.conn,
            "INSERT INTO approval (id, action, target_kind, target_id, summary, parameters, requested_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                id.into(),
                action.into(),
                target_kind.into(),
                target_id.into(),
                summary.into(),
                parameters.into(),
                requested_by.into(),
                expires_at.into(),
            ],
        )
        .await?;
        self.approval(id).await?.ok_or_else(|| DbErr::RecordNotFound("approval".into()))
    }

    /// An approval.
    pub async fn approval(&self, id: Uuid) -> Result<Option<ApprovalRecord>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {APPROVAL_COLS} FROM {APPROVAL_FROM} WHERE a.id = $1"), [id.into()])
            .await
    }

    /// Approvals, newest first.
    pub async fn list_approvals(&self, pending_only: bool, page: Page) -> Result<Vec<ApprovalRecord>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {APPROVAL_COLS} FROM {APPROVAL_FROM} \
                 WHERE NOT $1 OR (a.state = 'pending' AND a.expires_at > now()) \
                 ORDER BY a.requested_at DESC OFFSET $2 LIMIT $3"
            ),
            [pending_only.into(), page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Decides a pending, unexpired approval not requested by `decider_id`; `None` when it was not pending.
    pub async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        decider_id: Uuid,
        decider: &str,
        reason: &str,
    ) -> Result<Option<ApprovalRecord>, DbErr> {
        let n = execute(
            &self.conn,
            "UPDATE approval SET state = $2, decided_by = $4, decided_at = now(), reason = $5 \
             WHERE id = $1 AND state = 'pending' AND expires_at > now() AND requested_by <> $3",
            [
                id.into(),
                (if approve { "approved" } else { "rejected" }).into(),
                decider_id.into(),
                decider.into(),
                reason.into(),
            ],
        )
        .await?;
        if n != 1 {
            return Ok(None);
        }
        self.approval(id).await
    }

    /// Uses an approved approval once: the requester, action, target and parameters must match. Returns whether
    /// this call consumed it.
    pub async fn use_approval(
        &self,
        id: Uuid,
        requested_by: Uuid,
        action: &str,
        target_id: &str,
        parameters: serde_json::Value,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE approval SET state = 'used' WHERE id = $1 AND state = 'approved' AND expires_at > now() \
             AND requested_by = $2 AND action = $3 AND target_id = $4 AND parameters = $5",
            [id.into(), requested_by.into(), action.into(), target_id.into(), parameters.into()],
        )
        .await?
            == 1)
    }
}

async fn enabled_admins(txn: &sea_orm::DatabaseTransaction) -> Result<i64, DbErr> {
    #[derive(FromQueryResult)]
    struct N {
        n: i64,
    }
    Ok(fetch_one::<N>(
        txn,
        "SELECT count(*) AS n FROM app_user u JOIN user_role ur ON ur.user_id = u.id \
         WHERE ur.role_id = $1 AND u.disabled_at IS NULL",
        [ADMIN_ROLE_ID.into()],
    )
    .await?
    .map_or(0, |r| r.n))
}

/// The user an OIDC sign-in maps to.
#[derive(Clone, Debug)]
pub enum OidcUser {
    /// This user (created now or before), with its roles set; `disabled` when it may not sign in.
    Known {
        /// User id.
        id: Uuid,
        /// Disabled by an admin.
        disabled: bool,
    },
    /// The user name is held by another user.
    NameTaken,
}

impl Db {
    /// Finds or creates the user of an OIDC identity (issuer, subject) and sets its roles to `role_ids`.
    pub async fn upsert_oidc_user(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        role_ids: &[Uuid],
    ) -> Result<OidcUser, DbErr> {
        #[derive(FromQueryResult)]
        struct Row {
            id: Uuid,
            disabled: bool,
        }
        let txn = self.conn.begin().await?;
        let found = fetch_one::<Row>(
            &txn,
            "SELECT id, disabled_at IS NOT NULL AS disabled FROM app_user \
             WHERE oidc_issuer = $1 AND oidc_subject = $2 FOR UPDATE",
            [issuer.into(), subject.into()],
        )
        .await?;
        let (id, disabled) = match found {
            Some(r) => (r.id, r.disabled),
            None => {
                let id = Uuid::now_v7();
                let n = execute(
                    &txn,
                    "INSERT INTO app_user (id, username, kind, oidc_issuer, oidc_subject) \
                     VALUES ($1, $2, 'oidc', $3, $4) ON CONFLICT DO NOTHING",
                    [id.into(), username.into(), issuer.into(), subject.into()],
                )
                .await?;
                if n != 1 {
                    txn.rollback().await?;
                    return Ok(OidcUser::NameTaken);
                }
                (id, false)
            }
        };
        execute(&txn, "DELETE FROM user_role WHERE user_id = $1", [id.into()]).await?;
        for r in role_ids {
            execute(&txn, "INSERT INTO user_role (user_id, role_id) VALUES ($1, $2)", [id.into(), (*r).into()]).await?;
        }
        txn.commit().await?;
        Ok(OidcUser::Known { id, disabled })
    }
}
