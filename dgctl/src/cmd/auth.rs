//! `dgctl login`, `logout`, `whoami`: sessions stored in contexts. The first login to an endpoint pins its CA
//! by fingerprint; later logins reuse the stored CA unless a new fingerprint is given.

use std::io::IsTerminal as _;

use dg_proto::v1::{self as pb, auth_service_client::AuthServiceClient};
use serde::Serialize;

use crate::{
    App,
    config::Context,
    connect::{self, Session},
    error::{CliError, CliResult},
    output,
    secret::read_stdin,
    view::ts,
};

/// `dgctl login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Operator API, `https://host:port` (default: the context's).
    #[arg(long)]
    endpoint: Option<String>,
    /// CA fingerprint `sha256:<hex>` to pin (required at first login to an endpoint; printed by the
    /// controller and returned with every join token).
    #[arg(long, value_name = "SHA256")]
    ca_fingerprint: Option<String>,
    /// User name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// Read the password from standard input.
    #[arg(long, conflicts_with = "token")]
    password_stdin: bool,
    /// Use this API token as the bearer token instead of logging in with a password.
    #[arg(long, env = "DGCTL_TOKEN", hide_env_values = true, conflicts_with = "oidc")]
    token: Option<String>,
    /// Sign in through the controller's OpenID provider in a browser (authorization code with PKCE; the
    /// provider redirects to a loopback port dgctl listens on).
    #[arg(long, conflicts_with_all = ["password_stdin", "user"])]
    oidc: bool,
    /// Loopback port for the provider's redirect (default: any free one; set it when the provider's client
    /// registration names a fixed port).
    #[arg(long, value_name = "PORT", default_value_t = 0, requires = "oidc")]
    oidc_port: u16,
    /// Scopes to ask the provider for.
    #[arg(long, value_name = "SCOPES", default_value = "openid profile email", requires = "oidc")]
    oidc_scope: String,
    /// How long to wait for the browser sign-in.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, requires = "oidc")]
    oidc_timeout: std::time::Duration,
    /// Print the sign-in URL without trying to open a browser.
    #[arg(long, requires = "oidc")]
    no_browser: bool,
}

#[derive(Serialize)]
struct LoginView<'a> {
    context: &'a str,
    endpoint: &'a str,
    username: &'a str,
    ca_fingerprint: &'a str,
    expires_at: Option<String>,
}

/// Logs in and stores the session (and the pinned CA) in the context.
pub async fn login(app: &App, a: LoginArgs) -> CliResult<()> {
    let mut cfg = app.load()?;
    let name = app.context.clone().or_else(|| cfg.current_context.clone()).unwrap_or_else(|| "default".into());
    let existing = cfg.contexts.get(&name).cloned();
    let endpoint = a
        .endpoint
        .clone()
        .or_else(|| existing.as_ref().map(|c| c.endpoint.clone()))
        .ok_or_else(|| CliError::Usage(format!("context \"{name}\" does not exist: pass --endpoint")))?;
    connect::host_port(&endpoint)?;
    // Reuse the stored CA only for the same endpoint and the same (or no new) fingerprint.
    let reuse = existing.as_ref().filter(|c| {
        c.endpoint == endpoint && a.ca_fingerprint.as_deref().is_none_or(|f| f.eq_ignore_ascii_case(&c.ca_fingerprint))
    });
    let (ca_pem, fingerprint) = match reuse {
        Some(c) => (c.ca_pem.clone(), c.ca_fingerprint.clone()),
        None => {
            let pin = a.ca_fingerprint.clone().ok_or_else(|| {
                CliError::Usage(format!("first login to {endpoint}: pass --ca-fingerprint sha256:<hex>"))
            })?;
            if !pin.starts_with("sha256:") {
                return Err(CliError::Usage("--ca-fingerprint must look like sha256:<hex>".into()));
            }
            (connect::fetch_pinned_ca(&endpoint, &pin).await?, pin.to_ascii_lowercase())
        }
    };
    let channel = connect::channel(&endpoint, &ca_pem).await?;
    let mut auth = AuthServiceClient::new(channel.clone());
    let (token, kind, username, expires_at) = match a.token {
        None if a.oidc => {
            let oidc = auth.get_oidc_config(pb::GetOidcConfigRequest {}).await?.into_inner();
            let opts = crate::oidc::BrowserOptions {
                port: a.oidc_port,
                scope: a.oidc_scope.clone(),
                timeout: a.oidc_timeout,
                open_browser: !a.no_browser && std::io::stderr().is_terminal(),
            };
            let signed = crate::oidc::sign_in(&oidc, &opts).await?;
            let r = auth
                .login_oidc(pb::LoginOidcRequest { id_token: signed.id_token, nonce: signed.nonce })
                .await?
                .into_inner();
            let me = auth.me(Session::new(channel, r.token.clone()).req(pb::MeRequest {})).await?.into_inner();
            (r.token, "session", me.username, ts(r.expires_at.as_ref()))
        }
        Some(token) => {
            let me = auth.me(Session::new(channel, token.clone()).req(pb::MeRequest {})).await?.into_inner();
            (token, "api", me.username, ts(me.expires_at.as_ref()))
        }
        None => {
            let password = password(a.password_stdin)?;
            let r = auth.login(pb::LoginRequest { username: a.user.clone(), password }).await?.into_inner();
            (r.token, "session", a.user.clone(), ts(r.expires_at.as_ref()))
        }
    };
    let ctx = Context {
        endpoint: endpoint.clone(),
        ca_fingerprint: fingerprint.clone(),
        ca_pem,
        username: username.clone(),
        token: Some(token),
        token_kind: kind.into(),
        expires_at: expires_at.clone(),
    };
    cfg.contexts.insert(name.clone(), ctx);
    cfg.current_context = Some(name.clone());
    cfg.save(&app.config_path)?;
    let v = LoginView {
        context: &name,
        endpoint: &endpoint,
        username: &username,
        ca_fingerprint: &fingerprint,
        expires_at,
    };
    output::done(app.format, &format!("logged in to {endpoint} as {username} (context \"{name}\")"), &v)
}

/// `--password-stdin`, else `DGCTL_PASSWORD`, else a prompt on the terminal.
fn password(stdin: bool) -> CliResult<String> {
    if stdin {
        return read_stdin();
    }
    if let Ok(p) = std::env::var("DGCTL_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage("no password: use --password-stdin, DGCTL_PASSWORD or a terminal".into()));
    }
    dialoguer::Password::new().with_prompt("Password").interact().map_err(|e| CliError::local(format!("password: {e}")))
}

/// Revokes the session on the controller (API tokens are only forgotten) and removes the token.
pub async fn logout(app: &App) -> CliResult<()> {
    let mut cfg = app.load()?;
    let (name, ctx) = cfg.context(app.context.as_deref())?;
    let (name, ctx) = (name, ctx.clone());
    if ctx.token.is_some() && ctx.token_kind != "api" {
        let s = Session::open(&ctx).await?;
        match AuthServiceClient::new(s.channel.clone()).logout(s.req(pb::LogoutRequest {})).await {
            Ok(_) => {}
            // An expired session is as logged out as it gets.
            Err(e) if e.code() == tonic::Code::Unauthenticated => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(c) = cfg.contexts.get_mut(&name) {
        c.token = None;
        c.expires_at = None;
    }
    cfg.save(&app.config_path)?;
    output::done(app.format, &format!("logged out of context \"{name}\""), &serde_json::json!({"context": name}))
}

#[derive(Serialize)]
struct WhoamiView {
    context: String,
    endpoint: String,
    username: String,
    expires_at: Option<String>,
}

/// AuthService/Me.
pub async fn whoami(app: &App) -> CliResult<()> {
    let cfg = app.load()?;
    let (name, ctx) = cfg.context(app.context.as_deref())?;
    let s = Session::open(ctx).await?;
    let me = AuthServiceClient::new(s.channel.clone()).me(s.req(pb::MeRequest {})).await?.into_inner();
    let v = WhoamiView {
        context: name,
        endpoint: ctx.endpoint.clone(),
        username: me.username,
        expires_at: ts(me.expires_at.as_ref()),
    };
    output::one(app.format, &v)
}

/// `dgctl passwd`.
#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// Read the current password from this environment variable (default: a prompt).
    #[arg(long, value_name = "VAR")]
    current_password_env: Option<String>,
    /// The new password: --password-env/--password-file/--password-stdin (default: a prompt, asked twice).
    #[command(flatten)]
    new_password: crate::secret::PasswordArgs,
}

/// AuthService/ChangePassword: one's own password; the controller ends the user's other sessions.
pub async fn passwd(app: &App, a: PasswdArgs) -> CliResult<()> {
    let current_password = match &a.current_password_env {
        Some(var) => crate::secret::SecretRef::Env { env: var.clone() }.read("--current-password-env")?,
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::Usage("no current password: use --current-password-env or a terminal".into()));
            }
            dialoguer::Password::new()
                .with_prompt("Current password")
                .interact()
                .map_err(|e| CliError::local(format!("password: {e}")))?
        }
    };
    let new_password = crate::secret::password_or_prompt(&a.new_password, "New password")?;
    let s = app.session().await?;
    AuthServiceClient::new(s.channel.clone())
        .change_password(s.req(pb::ChangePasswordRequest { current_password, new_password }))
        .await?;
    output::done(app.format, "password changed", &serde_json::json!({"changed": true}))
}
