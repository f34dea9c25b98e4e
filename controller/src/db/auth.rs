//! Persistence of the admin user and operator sessions (tokens stored as sha256).

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, TransactionTrait};
use uuid::Uuid;

use super::{Db, execute, fetch_one};
use crate::model::{AdminUser, Session};

impl Db {
    /// The admin user, if set up.
    pub async fn admin_by_name(&self, username: &str) -> Result<Option<AdminUser>, DbErr> {
        fetch_one(
            &self.conn,
            "SELECT id, username, password_hash FROM admin_user WHERE username = $1",
            [username.into()],
        )
        .await
    }

    /// Whether an admin exists.
    pub async fn admin_exists(&self) -> Result<bool, DbErr> {
        Ok(fetch_one::<AdminUser>(&self.conn, "SELECT id, username, password_hash FROM admin_user LIMIT 1", [])
            .await?
            .is_some())
    }

    /// Creates the admin unless one exists (the unique index makes this race-free); returns whether created.
    pub async fn create_admin(&self, username: &str, password_hash: &str) -> Result<Option<Uuid>, DbErr> {
        let id = Uuid::now_v7();
        let n = execute(
            &self.conn,
            "INSERT INTO admin_user (id, username, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [id.into(), username.into(), password_hash.into()],
        )
        .await?;
        Ok((n == 1).then_some(id))
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
        let used = execute(&txn, "DELETE FROM bootstrap_token WHERE token_hash = $1", [token_hash.into()]).await?;
        if used != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        let id = Uuid::now_v7();
        let n = execute(
            &txn,
            "INSERT INTO admin_user (id, username, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [id.into(), username.into(), password_hash.into()],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
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

    /// The live (unexpired, unrevoked) session with this token hash.
    pub async fn live_session(&self, token_hash: Vec<u8>) -> Result<Option<Session>, DbErr> {
        fetch_one(
            &self.conn,
            "SELECT s.id, u.username, s.expires_at FROM session s JOIN admin_user u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()",
            [token_hash.into()],
        )
        .await
    }

    /// Revokes a session.
    pub async fn revoke_session(&self, id: Uuid) -> Result<(), DbErr> {
        execute(&self.conn, "UPDATE session SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", [id.into()])
            .await
            .map(|_| ())
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
