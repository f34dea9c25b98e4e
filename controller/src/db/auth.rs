//! Persistence of users, sessions, the bootstrap token and the audit log (tokens stored as sha256).

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::User;

/// The columns of a [`User`], `u` being `app_user`.
const USER_COLS: &str = "u.id, u.username, u.kind, u.password_hash, u.disabled_at, u.created_at, \
     (SELECT COALESCE(jsonb_agg(r.name ORDER BY r.name), '[]') FROM user_role ur JOIN role r ON r.id = ur.role_id \
      WHERE ur.user_id = u.id) AS roles";

/// The id of the system role `admin` (fixed by the migration).
pub const ADMIN_ROLE_ID: Uuid = Uuid::from_u128(0x00000000_0000_7000_8000_000000000003);

/// The row behind an authenticated request: the user, its roles and rules, and for a token its role and limits.
#[derive(Clone, Debug, FromQueryResult)]
pub struct PrincipalRow {
    /// Session or token id.
    pub via_id: Uuid,
    /// Token name (empty for a session).
    pub via_name: String,
    /// User id.
    pub user_id: Uuid,
    /// User name.
    pub username: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// The user's roles: `[{name, permissions}]`.
    pub roles: serde_json::Value,
    /// The user's and its roles' scope rules: `[{deny, kind, id, labels}]`.
    pub rules: serde_json::Value,
    /// A token's role `{name, permissions}` (null for a session).
    pub token_role: Option<serde_json::Value>,
    /// A token's own limits: `[{kind, id, labels}]`.
    pub token_scopes: serde_json::Value,
    /// A token's last use.
    pub last_used_at: Option<DateTime<Utc>>,
}

const PRINCIPAL_COLS: &str = "u.id AS user_id, u.username, \
     (SELECT COALESCE(jsonb_agg(jsonb_build_object('name', r.name, 'permissions', r.permissions)), '[]') \
      FROM user_role ur JOIN role r ON r.id = ur.role_id WHERE ur.user_id = u.id) AS roles, \
     (SELECT COALESCE(jsonb_agg(jsonb_build_object('deny', sr.effect = 'deny', 'kind', sr.resource_kind, \
        'id', sr.resource_id, 'labels', sr.labels)), '[]') \
      FROM scope_rule sr WHERE sr.user_id = u.id \
        OR sr.role_id IN (SELECT role_id FROM user_role WHERE user_id = u.id)) AS rules";

impl Db {
    /// A user by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {USER_COLS} FROM app_user u WHERE u.username = $1"), [username.into()])
            .await
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {USER_COLS} FROM app_user u WHERE u.id = $1"), [id.into()]).await
    }

    /// Users by name.
    pub async fn list_users(&self, page: Page) -> Result<Vec<User>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {USER_COLS} FROM app_user u ORDER BY u.username OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Whether a user holding the admin role exists (setup is then done).
    pub async fn admin_exists(&self) -> Result<bool, DbErr> {
        #[derive(FromQueryResult)]
        struct B {
            b: bool,
        }
        Ok(fetch_one::<B>(
            &self.conn,
            "SELECT EXISTS (SELECT 1 FROM user_role WHERE role_id = $1) AS b",
            [ADMIN_ROLE_ID.into()],
        )
        .await?
        .is_some_and(|r| r.b))
    }

    /// Creates the first admin unless an admin exists (serialised by an advisory lock, so two replicas
    /// bootstrapping together create one); returns its id when created.
    pub async fn create_admin(&self, username: &str, password_hash: &str) -> Result<Option<Uuid>, DbErr> {
        let txn = self.conn.begin().await?;
        execute(&txn, "SELECT pg_advisory_xact_lock(hashtext('dg_first_admin'))", []).await?;
        let id = create_first_admin(&txn, username, password_hash).await?;
        txn.commit().await?;
        Ok(id)
    }

    /// Stores the bootstrap token's hash unless one is stored; returns whether this call stored it.
    pub async fn create_bootstrap_token(&self, token_hash: Vec<u8>) -> Result<bool, DbErr> {
        let n = execute(
            &self.conn,
            "INSERT INTO bootstrap_token (token_hash) VALUES ($1) ON CONFLICT DO NOTHING",
            [token_hash.into()],
        )
        .await?;
        Ok(n == 1)
    }

    /// Replaces the bootstrap token's hash (a lost token).
    pub async fn replace_bootstrap_token(&self, token_hash: Vec<u8>) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "INSERT INTO bootstrap_token (token_hash) VALUES ($1) \
             ON CONFLICT (singleton) DO UPDATE SET token_hash = EXCLUDED.token_hash, created_at = now()",
            [token_hash.into()],
        )
        .await
        .map(|_| ())
    }

    /// Consumes the bootstrap token and creates the first admin, in one transaction; `None` when the token
    /// does not match (or was used) or an admin exists.
    pub async fn create_admin_with_bootstrap(
        &self,
        username: &str,
        password_hash: &str,
        token_hash: Vec<u8>,
    ) -> Result<Option<Uuid>, DbErr> {
        let txn = self.conn.begin().await?;
        execute(&txn, "SELECT pg_advisory_xact_lock(hashtext('dg_first_admin'))", []).await?;
        let used = execute(&txn, "DELETE FROM bootstrap_token WHERE token_hash = $1", [token_hash.into()]).await?;
        if used != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        let Some(id) = create_first_admin(&txn, username, password_hash).await? else {
            txn.rollback().await?;
            return Ok(None);
        };
        txn.commit().await?;
        Ok(Some(id))
    }

    /// Stores a session.
    pub async fn create_session(
        &self,
        user_id: Uuid,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "INSERT INTO session (id, token_hash, user_id, expires_at) VALUES ($1, $2, $3, $4)",
            [Uuid::now_v7().into(), token_hash.into(), user_id.into(), expires_at.into()],
        )
        .await
        .map(|_| ())
    }

    /// The principal behind a live session (unexpired, unrevoked, user enabled).
    pub async fn session_principal(&self, token_hash: Vec<u8>) -> Result<Option<PrincipalRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "SELECT s.id AS via_id, '' AS via_name, s.expires_at, NULL::jsonb AS token_role, \
                 '[]'::jsonb AS token_scopes, NULL::timestamptz AS last_used_at, {PRINCIPAL_COLS} \
                 FROM session s JOIN app_user u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.disabled_at IS NULL"
            ),
            [token_hash.into()],
        )
        .await
    }

    /// The principal behind a live API token (unexpired, unrevoked, user enabled).
    pub async fn token_principal(&self, token_hash: Vec<u8>) -> Result<Option<PrincipalRow>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "SELECT t.id AS via_id, t.name AS via_name, t.expires_at, \
                 jsonb_build_object('name', tr.name, 'permissions', tr.permissions) AS token_role, \
                 t.scopes AS token_scopes, t.last_used_at, {PRINCIPAL_COLS} \
                 FROM api_token t JOIN app_user u ON u.id = t.user_id JOIN role tr ON tr.id = t.role_id \
                 WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now() AND u.disabled_at IS NULL"
            ),
            [token_hash.into()],
        )
        .await
    }

    /// Records a token's use.
    pub async fn touch_token(&self, id: Uuid) -> Result<(), DbErr> {
        execute(&self.conn, "UPDATE api_token SET last_used_at = now() WHERE id = $1", [id.into()]).await.map(|_| ())
    }

    /// Revokes a session.
    pub async fn revoke_session(&self, id: Uuid) -> Result<(), DbErr> {
        execute(&self.conn, "UPDATE session SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", [id.into()])
            .await
            .map(|_| ())
    }

    /// Revokes every live session of a user except `keep`.
    pub async fn revoke_user_sessions(&self, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, DbErr> {
        execute(
            &self.conn,
            "UPDATE session SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL \
             AND ($2::uuid IS NULL OR id <> $2)",
            [user_id.into(), keep.into()],
        )
        .await
    }

    /// Sets a password user's password hash.
    pub async fn set_password(&self, user_id: Uuid, password_hash: &str) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE app_user SET password_hash = $2 WHERE id = $1 AND kind = 'password'",
            [user_id.into(), password_hash.into()],
        )
        .await?
            == 1)
    }

    /// Appends an audit row.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target_kind: &str,
        target_id: Option<String>,
        outcome: &str,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "INSERT INTO audit_log (actor, action, target_kind, target_id, outcome) VALUES ($1, $2, $3, $4, $5)",
            [actor.into(), action.into(), target_kind.into(), target_id.into(), outcome.into()],
        )
        .await
        .map(|_| ())
    }
}

async fn create_first_admin(
    txn: &sea_orm::DatabaseTransaction,
    username: &str,
    password_hash: &str,
) -> Result<Option<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct B {
        b: bool,
    }
    let exists =
        fetch_one::<B>(txn, "SELECT EXISTS (SELECT 1 FROM user_role WHERE role_id = $1) AS b", [ADMIN_ROLE_ID.into()])
            .await?
            .is_some_and(|r| r.b);
    if exists {
        return Ok(None);
    }
    let id = Uuid::now_v7();
    let n = execute(
        txn,
        "INSERT INTO app_user (id, username, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [id.into(), username.into(), password_hash.into()],
    )
    .await?;
    if n != 1 {
        return Ok(None);
    }
    execute(txn, "INSERT INTO user_role (user_id, role_id) VALUES ($1, $2)", [id.into(), ADMIN_ROLE_ID.into()]).await?;
    Ok(Some(id))
}
