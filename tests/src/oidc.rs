//! A real OpenID provider for tests: npm `oidc-provider` (installed by `tests/ensure-services.sh`) run by
//! `tests/oidc_provider.mjs` on a free loopback port, plain HTTP (the verifier allows `http` on loopback only),
//! with fixed test accounts and clients (listed in that script). Also the two parties of a sign-in: the user's
//! part (the provider's development login and consent forms, submitted over HTTP with a cookie jar) and the
//! client's part (device authorization and polling, or authorization code + PKCE and the code exchange).
//!
//! Nonces: `oidc-provider` keeps a `nonce` sent to its device authorization endpoint but does not put it into
//! the ID token of the device grant (the device flow has no standard nonce), so [`id_token_with_nonce`] uses
//! the authorization code + PKCE flow; [`device_flow_id_token`] returns a token without a nonce.
//!
//! Lifetime: the provider runs in its own process group, killed when [`OidcProvider`] drops (see
//! [`crate::emulators`]). [`OidcProvider::restart`] starts it again on the same port: same issuer, new keys.

use std::{
    ffi::OsStr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use url::Url;

use crate::emulators::ServerProcess;

/// How long the provider may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each HTTP request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The redirect URI every test client is registered with. The clients are native applications, so the provider
/// also accepts it with any port (RFC 8252 §7.3), which is how `dgctl login --oidc` listens; for the harness's
/// own flows nothing listens there: the code is read from the redirect itself.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// Whether `url` is the registered redirect URI, on any port.
fn is_callback(url: &Url) -> bool {
    url.scheme() == "http" && url.host_str() == Some("127.0.0.1") && url.path() == "/callback"
}
/// Scopes the test flows ask for; `profile` carries `preferred_username` and `groups`.
pub const SCOPE: &str = "openid profile email";

/// The running provider.
pub struct OidcProvider {
    issuer: String,
    port: u16,
    module: PathBuf,
    proc: Option<ServerProcess>,
}

/// The `node_modules/oidc-provider` directory: next to a `node_modules/.bin` on `DG_TOOLS_PATH` or `PATH`.
fn provider_module() -> anyhow::Result<PathBuf> {
    let paths = [crate::test_env("DG_TOOLS_PATH"), std::env::var("PATH").ok()];
    paths
        .iter()
        .flatten()
        .flat_map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .filter(|d| d.ends_with("node_modules/.bin"))
        .filter_map(|d| d.parent().map(|m| m.join("oidc-provider")))
        .find(|m| m.join("package.json").is_file())
        .context("npm package oidc-provider not found next to a node_modules/.bin on DG_TOOLS_PATH or PATH; run tests/ensure-services.sh")
}

impl OidcProvider {
    /// Starts the provider on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let mut p = Self { issuer: String::new(), port: 0, module: provider_module()?, proc: None };
        p.spawn().await?;
        Ok(p)
    }

    /// Stops the provider and starts it again on the same port: the same issuer with fresh signing keys (and
    /// no sessions).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc_provider.mjs");
        let dir = tempfile::Builder::new().prefix("dg-oidc-").tempdir()?;
        let port = self.port.to_string();
        let envs: [(&str, &OsStr); 2] =
            [("DG_OIDC_PROVIDER_MODULE", self.module.as_os_str()), ("DG_OIDC_PORT", port.as_ref())];
        let mut proc = ServerProcess::spawn(
            "oidc-provider",
            "node".as_ref(),
            &[script.to_string_lossy().into_owned()],
            &envs,
            dir,
        )?;
        let issuer = proc.wait_for_log(deadline, |l| l.strip_prefix("listening on ").map(str::to_owned)).await?;
        let url = Url::parse(&issuer).context("issuer the provider printed")?;
        self.port = url.port().context("issuer port")?;
        self.issuer = issuer;
        self.proc = Some(proc);
        Ok(())
    }

    /// The issuer identifier, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer as a URL.
    pub fn issuer_url(&self) -> Url {
        Url::parse(&self.issuer).expect("the issuer was parsed at start")
    }

    /// The provider's discovery document.
    pub async fn discovery(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let r = client(false)?.get(&url).send().await?;
        ensure!(r.status().is_success(), "GET {url}: {}", r.status());
        Ok(r.json().await?)
    }

    async fn endpoint(&self, name: &str) -> anyhow::Result<Url> {
        let d = self.discovery().await?;
        let raw = d.get(name).and_then(|v| v.as_str()).with_context(|| format!("discovery has no {name}"))?;
        Ok(Url::parse(raw)?)
    }
}

fn client(cookies: bool) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .cookie_store(cookies)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .build()?)
}

// --- the user's part: the provider's forms -----------------------------------------------------------------

/// One HTML form: where it posts and its hidden fields, and whether it asks for a login or a user code.
#[derive(Debug)]
struct Form {
    action: String,
    fields: Vec<(String, String)>,
    asks_login: bool,
    asks_user_code: bool,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let pat = format!("{name}=\"");
    let start = tag.find(&pat)? + pat.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].replace("&amp;", "&").replace("&#x2F;", "/").replace("&quot;", "\""))
}

/// The first `<form>` of a page, if any.
fn first_form(html: &str) -> Option<Form> {
    let start = html.find("<form")?;
    let end = html[start..].find("</form>").map_or(html.len(), |e| start + e);
    let form = &html[start..end];
    let head = &form[..form.find('>')?];
    let mut out = Form { action: attr(head, "action")?, fields: Vec::new(), asks_login: false, asks_user_code: false };
    for input in form.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap_or(input.len())];
        let Some(name) = attr(tag, "name") else { continue };
        let hidden = attr(tag, "type").as_deref() == Some("hidden");
        match name.as_str() {
            "login" => out.asks_login = true,
            "user_code" if !hidden => out.asks_user_code = true,
            "password" => {}
            _ => out.fields.push((name, attr(tag, "value").unwrap_or_default())),
        }
    }
    Some(out)
}

/// Follows redirects and fills the provider's forms (user code, login as `account` with any password,
/// consent) from `start` until a page with no form, or a redirect to [`REDIRECT_URI`], which is returned.
async fn play_user(start: Url, account: &str, user_code: Option<&str>) -> anyhow::Result<Option<Url>> {
    let http = client(true)?;
    let mut next = http.get(start.clone()).build()?;
    for _ in 0..20 {
        let url = next.url().clone();
        let what = format!("{} {}", next.method(), url.path());
        let resp = http.execute(next).await.with_context(|| what.clone())?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers().get("location").context("redirect without location")?.to_str()?;
            let to = url.join(location)?;
            if is_callback(&to) {
                return Ok(Some(to));
            }
            next = http.get(to).build()?;
            continue;
        }
        let body = resp.text().await?;
        ensure!(status.is_success(), "{what}: HTTP {status}: {}", &body[..body.len().min(2000)]);
        let Some(form) = first_form(&body) else {
            // The device flow ends on the provider's success page; anything else is an error page.
            ensure!(body.contains("Sign-in Success"), "{what}: the provider showed: {}", &body[..body.len().min(2000)]);
            return Ok(None);
        };
        let mut fields = form.fields;
        if form.asks_login {
            fields.push(("login".into(), account.into()));
            fields.push(("password".into(), "any-password".into()));
        }
        if form.asks_user_code {
            let code = user_code.context("the provider asks for a user code")?;
            fields.push(("user_code".into(), code.into()));
        }
        next = http.post(url.join(&form.action)?).form(&fields).build()?;
    }
    bail!("the sign-in did not finish within 20 steps")
}

/// The user's part of a device authorization: opens `verification_uri`, enters `user_code`, logs in as
/// `account` and consents.
pub async fn approve_device(verification_uri: &Url, user_code: &str, account: &str) -> anyhow::Result<()> {
    match play_user(verification_uri.clone(), account, Some(user_code)).await? {
        None => Ok(()),
        Some(u) => bail!("the device flow redirected to {u}"),
    }
}

/// A browser signing in as `account` for a client that listens for the redirect itself (`dgctl login --oidc`):
/// plays the provider's forms from `authorization_url`, then follows the final redirect to the client's
/// loopback listener and requires its answer to be a success. Returns that redirect.
pub async fn browser_sign_in(authorization_url: &Url, account: &str) -> anyhow::Result<Url> {
    let redirect = play_user(authorization_url.clone(), account, None)
        .await?
        .context("the authorization request ended without a redirect")?;
    let r = client(false)?.get(redirect.clone()).send().await.context("the client's redirect listener")?;
    ensure!(r.status().is_success(), "the client's redirect listener answered HTTP {}", r.status());
    Ok(redirect)
}

/// The user's part of an authorization-code request: opens `authorization_url`, logs in as `account`,
/// consents, and returns the `code` of the final redirect (after checking its `state`).
pub async fn authorize(authorization_url: &Url, account: &str, state: &str) -> anyhow::Result<String> {
    let redirect = play_user(authorization_url.clone(), account, None)
        .await?
        .context("the authorization request ended without a redirect")?;
    let q = |k: &str| redirect.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
    if let Some(e) = q("error") {
        bail!("authorization refused: {e} {}", q("error_description").unwrap_or_default());
    }
    ensure!(q("state").as_deref() == Some(state), "the redirect's state differs");
    q("code").context("the redirect has no code")
}

// --- the client's part -------------------------------------------------------------------------------------

/// A device authorization response (RFC 8628).
#[derive(Debug, serde::Deserialize)]
pub struct DeviceAuthorization {
    /// Polled for at the token endpoint.
    pub device_code: String,
    /// Shown to the user.
    pub user_code: String,
    /// Where the user enters the code.
    pub verification_uri: Url,
}

/// Starts a device authorization for `client_id`.
pub async fn start_device_authorization(
    provider: &OidcProvider,
    client_id: &str,
    nonce: Option<&str>,
) -> anyhow::Result<DeviceAuthorization> {
    let endpoint = provider.endpoint("device_authorization_endpoint").await?;
    let mut form = vec![("client_id", client_id), ("scope", SCOPE)];
    if let Some(n) = nonce {
        form.push(("nonce", n));
    }
    let r = client(false)?.post(endpoint).form(&form).send().await?;
    ensure!(r.status().is_success(), "device authorization: HTTP {}: {}", r.status(), r.text().await?);
    Ok(r.json().await?)
}

async fn token_request(provider: &OidcProvider, form: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
    let endpoint = provider.endpoint("token_endpoint").await?;
    let r = client(false)?.post(endpoint).form(form).send().await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    ensure!(status.is_success(), "token endpoint: HTTP {status}: {body}");
    Ok(body)
}

fn id_token_of(tokens: &serde_json::Value) -> anyhow::Result<String> {
    Ok(tokens.get("id_token").and_then(|v| v.as_str()).context("the token response has no id_token")?.to_owned())
}

/// A whole device flow as a client runs it, with the user's part played as `account`: returns the ID token.
/// `nonce` is sent to the device authorization endpoint (this provider does not echo it into the token).
pub async fn device_flow_id_token(
    provider: &OidcProvider,
    client_id: &str,
    account: &str,
    nonce: Option<&str>,
) -> anyhow::Result<String> {
    let auth = start_device_authorization(provider, client_id, nonce).await?;
    approve_device(&auth.verification_uri, &auth.user_code, account).await?;
    // The user has finished: the first poll answers.
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    let tokens =
        token_request(provider, &[("grant_type", grant), ("device_code", &auth.device_code), ("client_id", client_id)])
            .await?;
    id_token_of(&tokens)
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let verifier = format!("{}{}", crate::suffix(), uuid::Uuid::new_v4().simple());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A whole authorization code + PKCE flow for `client_id`, signing in as `account`, with `nonce` in the
/// request: returns the ID token (which carries that nonce).
pub async fn id_token_with_nonce(
    provider: &OidcProvider,
    client_id: &str,
    account: &str,
    nonce: &str,
) -> anyhow::Result<String> {
    let (verifier, challenge) = pkce_pair();
    let state = crate::suffix();
    let mut url = provider.endpoint("authorization_endpoint").await?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", SCOPE)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", &state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let code = authorize(&url, account, &state).await?;
    let tokens = token_request(
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    id_token_of(&tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_read() {
        let html = r#"<p>x</p><form autocomplete="off" action="/interaction/abc" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" >
  <input required type="password" name="password" placeholder="and password" ></form>"#;
        let f = first_form(html).expect("a form");
        assert_eq!(f.action, "/interaction/abc");
        assert_eq!(f.fields, [("prompt".to_owned(), "login".to_owned())]);
        assert!(f.asks_login && !f.asks_user_code);
        let html = r#"<form id="op.deviceInputForm" novalidate method="post" action="http://h/device">
  <input type="hidden" name="xsrf" value="s3"/>
  <input type="text" name="user_code" placeholder="Enter code"></input></form>"#;
        let f = first_form(html).expect("a form");
        assert!(f.asks_user_code);
        assert_eq!(f.fields, [("xsrf".to_owned(), "s3".to_owned())]);
        assert!(first_form("<h1>Sign-in Success</h1>").is_none());
    }
}
