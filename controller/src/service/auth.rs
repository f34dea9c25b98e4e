//! Operator authentication: users with passwords (argon2), session tokens and API tokens (random, stored as
//! sha256, expiring, revocable), and the [`Principal`] each request runs as.

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use dg_common::error::FieldError;

use super::login_limit::LoginLimits;
use crate::{
    access::{Principal, Rule, RuleSet, Scope, Selector, Via, permissions_of},
    crypto,
    db::{Db, PrincipalRow},
    error::{ControllerError, ControllerResult},
    service::oidc::{OidcClientInfo, OidcConfig, OidcVerifier},
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
    oidc: Option<std::sync::Arc<Oidc>>,
}

/// The configured OpenID provider: discovered at first need (and retried on each sign-in until it answers),
/// so a provider that is down when the controller starts does not stop the controller.
pub struct Oidc {
    config: OidcConfig,
    verifier: tokio::sync::OnceCell<OidcVerifier>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").field("issuer", &self.config.issuer.as_str()).finish()
    }
}

impl Oidc {
    /// The verifier, discovering the provider when not done yet.
    pub async fn verifier(&self) -> ControllerResult<&OidcVerifier> {
        self.verifier.get_or_try_init(|| OidcVerifier::discover(&self.config)).await
    }
}

const BAD_CREDENTIALS: &str = "invalid user name or password";

impl AuthService {
    /// New service.
    pub fn new(db: Db, session_ttl: Duration) -> Self {
        Self { db, session_ttl, limits: LoginLimits::default(), oidc: None }
    }

    /// Enables OIDC sign-in with this provider.
    pub fn with_oidc(mut self, config: Option<OidcConfig>) -> Self {
        self.oidc = config.map(|config| std::sync::Arc::new(Oidc { config, verifier: tokio::sync::OnceCell::new() }));
        self
    }

    /// The configured provider, if any.
    pub fn oidc(&self) -> Option<&Oidc> {
        self.oidc.as_deref()
    }

    /// The configured provider, shared with a background task.
    pub fn oidc_shared(&self) -> Option<std::sync::Arc<Oidc>> {
        self.oidc.clone()
    }

    /// The provider's sign-in settings.
    pub async fn oidc_client_info(&self) -> ControllerResult<OidcClientInfo> {
        let o = self.oidc().ok_or_else(not_configured)?;
        Ok(o.verifier().await?.client_info().clone())
    }

    /// Exchanges a verified OIDC ID token for a session: the user of (issuer, subject) is created at first
    /// sign-in, its roles are set from the mapped claim every time, and a disabled user is refused. Attempts
    /// count against the same per-user login budget as passwords.
    pub async fn login_oidc(
        &self,
        client: Option<IpAddr>,
        id_token: &str,
        nonce: &str,
    ) -> ControllerResult<IssuedSession> {
        let o = self.oidc().ok_or_else(not_configured)?;
        if id_token.is_empty() {
            return Err(FieldError::new("id_token", "is required").into());
        }
        let verifier = o.verifier().await?;
        let identity = match verifier.verify_id_token(id_token, nonce).await {
            Ok(i) => i,
            Err(e) => {
                self.db.audit("anonymous", "auth.login_oidc", "session", None, "error: Unauthenticated").await?;
                return Err(e);
            }
        };
        let _permit = self.limits.admit(&identity.username, client).map_err(|r| r.into_error("login"))?;
        let mut role_ids = Vec::new();
        for r in &identity.roles {
            match self.db.role(r).await? {
                Some(role) => role_ids.push(role.id),
                None => tracing::warn!(role = %r, "an OIDC role mapping names a role that does not exist"),
            }
        }
        if role_ids.is_empty() {
            return Err(ControllerError::PermissionDenied("no DataGuardian role is mapped to this identity".into()));
        }
        validate_username("username", &identity.username).map_err(|_| {
            ControllerError::FailedPrecondition(
                "the identity's user name is not 1-64 characters of [A-Za-z0-9._-]; set oidc.username_claim".into(),
            )
        })?;
        match self.db.upsert_oidc_user(&identity.issuer, &identity.subject, &identity.username, &role_ids).await? {
            crate::db::OidcUser::NameTaken => Err(ControllerError::FailedPrecondition(format!(
                "the user name {} belongs to another user",
                identity.username
            ))),
            crate::db::OidcUser::Known { disabled: true, .. } => {
                self.limits.failed(&identity.username, client);
                Err(ControllerError::Unauthenticated("this user is disabled".into()))
            }
            crate::db::OidcUser::Known { id, .. } => {
                self.limits.succeeded(&identity.username, client);
                self.db.audit(&identity.username, "auth.login_oidc", "session", None, "ok").await?;
                self.issue(id).await
            }
        }
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
        self.db.audit(username, "auth.setup", "user", Some(id.to_string()), "ok").await?;
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
        let user = self.db.user_by_name(username).await?.filter(|u| u.disabled_at.is_none());
        let phc = user.as_ref().and_then(|u| u.password_hash.clone());
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

    /// The principal of a bearer token: a session token (`dgs_…`) or an API token (`dgt_…`).
    pub async fn authenticate(&self, token: &str) -> ControllerResult<Principal> {
        let hash = crypto::token_hash(token);
        let row = if token.starts_with(API_TOKEN_PREFIX) {
            self.db.token_principal(hash).await?
        } else {
            self.db.session_principal(hash).await?
        };
        let row = row.ok_or_else(|| {
            ControllerError::Unauthenticated("session or API token is invalid, expired or revoked".into())
        })?;
        let principal = principal(&row);
        if let Via::Token { id, .. } = principal.via
            && row.last_used_at.is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60))
            && let Err(e) = self.db.touch_token(id).await
        {
            tracing::warn!(error = %e, "could not record an API token's use");
        }
        Ok(principal)
    }

    /// Revokes the caller's session (an API token is revoked through TokenService instead).
    pub async fn logout(&self, p: &Principal) -> ControllerResult<()> {
        match p.via {
            Via::Session { id } => Ok(self.db.revoke_session(id).await?),
            Via::Token { .. } => Err(ControllerError::FailedPrecondition(
                "an API token has no session to end; revoke it with TokenService/RevokeToken".into(),
            )),
        }
    }

    /// Changes the caller's own password (the current one must be right) and ends its other sessions.
    pub async fn change_password(&self, p: &Principal, current: &str, new: &str) -> ControllerResult<()> {
        validate_password("new_password", new)?;
        let Via::Session { id: session_id } = p.via else {
            return Err(ControllerError::PermissionDenied("an API token cannot change a password".into()));
        };
        let user = self.db.user_by_id(p.user_id).await?.ok_or_else(|| ControllerError::NotFound("user".into()))?;
        let Some(phc) = user.password_hash else {
            return Err(ControllerError::FailedPrecondition("this user signs in without a password".into()));
        };
        let permit = self.limits.admit(&user.username, None).map_err(|r| r.into_error("password change"))?;
        let cur = current.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = crypto::verify_password(&cur, &phc);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        if !ok {
            self.limits.failed(&user.username, None);
            return Err(ControllerError::PermissionDenied("current_password is wrong".into()));
        }
        self.set_password(p.user_id, new, Some(session_id)).await
    }

    /// Sets a user's password and ends its sessions except `keep`.
    pub async fn set_password(&self, user_id: uuid::Uuid, new: &str, keep: Option<uuid::Uuid>) -> ControllerResult<()> {
        validate_password("new_password", new)?;
        let hash = hash(new).await?;
        if !self.db.set_password(user_id, &hash).await? {
            return Err(ControllerError::FailedPrecondition("only password users have a password".into()));
        }
        self.db.revoke_user_sessions(user_id, keep).await?;
        Ok(())
    }

    async fn issue(&self, user_id: uuid::Uuid) -> ControllerResult<IssuedSession> {
        let token = crypto::new_token("dgs");
        let expires_at = Utc::now() + self.session_ttl;
        self.db.create_session(user_id, crypto::token_hash(&token), expires_at).await?;
        Ok(IssuedSession { token, expires_at })
    }
}

/// Discovers the provider (retrying every 30 s while it does not answer), then keeps its signing keys fresh.
pub async fn oidc_keys_task(oidc: std::sync::Arc<Oidc>, cancel: tokio_util::sync::CancellationToken) {
    let verifier = loop {
        match oidc.verifier().await {
            Ok(v) => break v.clone(),
            Err(e) => {
                tracing::warn!(error = %e, issuer = %oidc.config.issuer, "OIDC provider discovery failed; retrying")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    };
    crate::service::oidc::OidcJwksRefreshTask::new(verifier).run(cancel).await;
}

fn not_configured() -> ControllerError {
    ControllerError::FailedPrecondition("OIDC sign-in is not configured on this controller".into())
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

/// Prefix of API token secrets.
pub const API_TOKEN_PREFIX: &str = "dgt_";

fn validate_credentials(username: &str, password: &str) -> Result<(), FieldError> {
    validate_username("username", username)?;
    validate_password("password", password)
}

/// A user or token name: 1-64 characters of `[A-Za-z0-9._-]`.
pub fn validate_username(field: &'static str, username: &str) -> Result<(), FieldError> {
    if username.is_empty()
        || username.len() > 64
        || !username.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(FieldError::new(field, "must be 1-64 characters of [A-Za-z0-9._-]"));
    }
    Ok(())
}

/// A password: at least 12 characters (at most 1024, bounding the hash's work).
pub fn validate_password(field: &'static str, password: &str) -> Result<(), FieldError> {
    let n = password.chars().count();
    if !(12..=1024).contains(&n) {
        return Err(FieldError::new(field, "must be 12-1024 characters"));
    }
    Ok(())
}

/// Hashes a password off the async threads.
pub async fn hash_password(password: &str) -> ControllerResult<String> {
    hash(password).await
}

#[derive(serde::Deserialize)]
struct RoleJson {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
}

/// Builds the principal of an authenticated row: a session holds its user's roles; a token holds the
/// permissions of its role that its user also holds, and its own limits are a second scope layer.
fn principal(row: &PrincipalRow) -> Principal {
    let roles: Vec<RoleJson> = serde_json::from_value(row.roles.clone()).unwrap_or_default();
    let user_perms = permissions_of(roles.iter().map(|r| (r.name.as_str(), r.permissions.as_slice())));
    let user_admin = roles.iter().any(|r| r.name == "admin");
    let rules: Vec<Rule> = serde_json::from_value(row.rules.clone()).unwrap_or_default();
    let mut scope = Scope(vec![RuleSet(rules)]);
    let token_role: Option<RoleJson> = row.token_role.clone().and_then(|v| serde_json::from_value(v).ok());
    match token_role {
        None => Principal {
            user_id: row.user_id,
            username: row.username.clone(),
            via: Via::Session { id: row.via_id },
            roles: roles.into_iter().map(|r| r.name).collect(),
            permissions: user_perms,
            admin: user_admin,
            scope,
            expires_at: row.expires_at,
        },
        Some(tr) => {
            let token_perms = permissions_of([(tr.name.as_str(), tr.permissions.as_slice())]);
            let limits: Vec<Selector> = serde_json::from_value(row.token_scopes.clone()).unwrap_or_default();
            scope.0.push(RuleSet(limits.into_iter().map(|selector| Rule { deny: false, selector }).collect()));
            Principal {
                user_id: row.user_id,
                username: row.username.clone(),
                via: Via::Token { id: row.via_id, name: row.via_name.clone() },
                admin: user_admin && tr.name == "admin",
                roles: vec![tr.name],
                permissions: token_perms.intersection(&user_perms).copied().collect(),
                scope,
                expires_at: row.expires_at,
            }
        }
    }
}
