//! Operator authentication: the single admin user (argon2), session tokens (random, stored as sha256,
//! expiring, revocable).

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use dg_common::error::FieldError;

use super::login_limit::LoginLimits;
use crate::{
    crypto,
    db::Db,
    error::{ControllerError, ControllerResult},
    model::Session,
};

/// A freshly issued session token (shown once).
#[derive(Debug)]
pub struct IssuedSession {
    /// The bearer token.
    pub token: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// Authentication service.
#[derive(Clone, Debug)]
pub struct AuthService {
    db: Db,
    session_ttl: Duration,
    limits: LoginLimits,
}

const BAD_CREDENTIALS: &str = "invalid user name or password";

impl AuthService {
    /// New service.
    pub fn new(db: Db, session_ttl: Duration) -> Self {
        Self { db, session_ttl, limits: LoginLimits::default() }
    }

    /// Creates the configured admin when none exists (start-up bootstrap).
    pub async fn bootstrap(&self, username: &str, password: &str) -> ControllerResult<()> {
        if !self.db.admin_exists().await? {
            validate_credentials(username, password)?;
            let hash = hash(password).await?;
            if self.db.create_admin(username, &hash).await?.is_some() {
                tracing::info!(%username, "created the admin user from configuration");
            }
        }
        Ok(())
    }

    /// Until an admin exists, makes sure a bootstrap token exists for `Setup`: the replica that creates it
    /// writes it to `file` (0600) or, without a file, prints it once in the log. Returns whether it made one.
    pub async fn prepare_bootstrap(&self, file: Option<&std::path::Path>) -> ControllerResult<bool> {
        if self.db.admin_exists().await? {
            return Ok(false);
        }
        let token = crypto::new_token("dgb");
        if !self.db.create_bootstrap_token(crypto::token_hash(&token)).await? {
            return Ok(false);
        }
        hand_out_bootstrap(&token, file)?;
        Ok(true)
    }

    /// A new bootstrap token replacing a lost one (`dg-controller bootstrap-token`); refused once an admin
    /// exists.
    pub async fn new_bootstrap_token(&self) -> ControllerResult<String> {
        if self.db.admin_exists().await? {
            return Err(ControllerError::FailedPrecondition("setup is already done; log in instead".into()));
        }
        let token = crypto::new_token("dgb");
        self.db.replace_bootstrap_token(crypto::token_hash(&token)).await?;
        Ok(token)
    }

    /// First-run setup: with the one-time bootstrap token, creates the admin (once) and logs in.
    pub async fn setup(
        &self,
        username: &str,
        password: &str,
        bootstrap_token: &str,
    ) -> ControllerResult<IssuedSession> {
        validate_credentials(username, password)?;
        if self.db.admin_exists().await? {
            return Err(ControllerError::FailedPrecondition("setup is already done; log in instead".into()));
        }
        if bootstrap_token.is_empty() {
            return Err(FieldError::new(
                "bootstrap_token",
                "is required: the controller wrote it to its bootstrap_token_file (or its log) at first start",
            )
            .into());
        }
        let hash = hash(password).await?;
        let id = self
            .db
            .create_admin_with_bootstrap(username, &hash, crypto::token_hash(bootstrap_token))
            .await?
            .ok_or_else(|| ControllerError::PermissionDenied("bootstrap_token is wrong or was used".into()))?;
        self.db.audit(username, "auth.setup", "admin_user", Some(id.to_string()), "ok").await?;
        self.issue(id).await
    }

    /// Exchanges credentials for a session. Each attempt is counted before its password is hashed (see
    /// [`LoginLimits`]): over a budget, or with too many hashes running, it is refused with
    /// `RESOURCE_EXHAUSTED` at once.
    pub async fn login(
        &self,
        client: Option<IpAddr>,
        username: &str,
        password: &str,
    ) -> ControllerResult<IssuedSession> {
        let permit = self.limits.admit(username, client).map_err(|r| r.into_error("login"))?;
        let user = self.db.admin_by_name(username).await?;
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let pw = password.to_owned();
        // Verify even for an unknown user so timing does not reveal which names exist.
        let ok = tokio::task::spawn_blocking(move || {
            let ok = match phc {
                Some(h) => crypto::verify_password(&pw, &h),
                None => {
                    let _ = crypto::verify_password(&pw, DUMMY_HASH);
                    false
                }
            };
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        match user {
            Some(u) if ok => {
                self.limits.succeeded(username, client);
                self.db.audit(&u.username, "auth.login", "session", None, "ok").await?;
                self.issue(u.id).await
            }
            _ => {
                self.limits.failed(username, client);
                self.db.audit("anonymous", "auth.login", "session", None, "error: Unauthenticated").await?;
                Err(ControllerError::Unauthenticated(BAD_CREDENTIALS.into()))
            }
        }
    }

    /// The live session for a bearer token.
    pub async fn authenticate(&self, token: &str) -> ControllerResult<Session> {
        self.db
            .live_session(crypto::token_hash(token))
            .await?
            .ok_or_else(|| ControllerError::Unauthenticated("session token is invalid, expired or revoked".into()))
    }

    /// Revokes a session.
    pub async fn logout(&self, session: &Session) -> ControllerResult<()> {
        self.db.revoke_session(session.id).await?;
        Ok(())
    }

    async fn issue(&self, user_id: uuid::Uuid) -> ControllerResult<IssuedSession> {
        let token = crypto::new_token("dgs");
        let expires_at = Utc::now() + self.session_ttl;
        self.db.create_session(user_id, crypto::token_hash(&token), expires_at).await?;
        Ok(IssuedSession { token, expires_at })
    }
}

/// Gives the operator the bootstrap token: a 0600 file, or one log line.
fn hand_out_bootstrap(token: &str, file: Option<&std::path::Path>) -> ControllerResult<()> {
    match file {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new();
            f.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
            let mut out = f.open(path).map_err(|e| {
                ControllerError::FailedPrecondition(format!("bootstrap_token_file {}: {e}", path.display()))
            })?;
            out.write_all(format!("{token}\n").as_bytes()).map_err(|e| {
                ControllerError::FailedPrecondition(format!("bootstrap_token_file {}: {e}", path.display()))
            })?;
            tracing::warn!(file = %path.display(), "no admin yet: call AuthService/Setup with the bootstrap token in this file");
        }
        None => tracing::warn!(
            bootstrap_token = %token,
            "no admin yet: call AuthService/Setup with this one-time bootstrap token (shown once; \
             `dg-controller bootstrap-token` makes a new one)"
        ),
    }
    Ok(())
}

/// A valid argon2id hash of a random string, verified against for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

async fn hash(password: &str) -> ControllerResult<String> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || crypto::hash_password(&pw))
        .await
        .map_err(|_| ControllerError::Cancelled)?
        .map_err(Into::into)
}

fn validate_credentials(username: &str, password: &str) -> Result<(), FieldError> {
    if username.is_empty()
        || username.len() > 64
        || !username.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(FieldError::new("username", "must be 1-64 characters of [A-Za-z0-9._-]"));
    }
    if password.chars().count() < 12 {
        return Err(FieldError::new("password", "must be at least 12 characters"));
    }
    Ok(())
}
