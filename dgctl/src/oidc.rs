//! `dgctl login --oidc`: the authorization code flow with PKCE (RFC 7636) for a native application (RFC 8252).
//!
//! dgctl listens on a loopback port for the provider's redirect, prints (and, on a terminal, opens) the
//! authorization URL, and waits for the browser to come back with a code. It checks the `state` it chose,
//! redeems the code at the token endpoint with the PKCE verifier, and hands the ID token and the nonce it chose
//! to the controller, which verifies the token (signature, issuer, audience, expiry, nonce) and opens a session.
//!
//! The device flow is not used: providers do not carry a nonce through it, and the controller refuses an ID
//! token without the nonce its client chose (a replayed token would otherwise sign in).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::Uri, response::Html, routing::get};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use dg_proto::v1 as pb;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, oneshot};
use url::Url;

use crate::error::{CliError, CliResult};

/// How the browser part is run.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Loopback port for the redirect (0: any free one).
    pub port: u16,
    /// Scopes asked for.
    pub scope: String,
    /// How long to wait for the browser to come back.
    pub timeout: Duration,
    /// Try to open the URL in a browser (only on a terminal).
    pub open_browser: bool,
}

/// The outcome: an ID token and the nonce it must carry.
pub struct IdToken {
    pub id_token: String,
    pub nonce: String,
}

/// What the redirect brought back.
struct Callback {
    query: Vec<(String, String)>,
}

impl Callback {
    fn get(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

type Slot = Arc<Mutex<Option<oneshot::Sender<Callback>>>>;

/// Random URL-safe text of `bytes` bytes of entropy.
fn random(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The S256 challenge of a PKCE verifier.
fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An endpoint the controller named: HTTPS, or HTTP on a loopback host only (a provider on the same machine).
fn endpoint(raw: &str, what: &str) -> CliResult<Url> {
    if raw.is_empty() {
        return Err(CliError::Local(format!("the controller's OIDC settings have no {what}")));
    }
    let url = Url::parse(raw).map_err(|e| CliError::Local(format!("OIDC {what} {raw:?}: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(CliError::Local(format!("OIDC {what} {raw}: must be https (http only on a loopback host)"))),
    }
}

/// The authorization request.
fn authorization_url(
    base: &Url,
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    url
}

async fn on_callback(State(slot): State<Slot>, uri: Uri) -> Html<&'static str> {
    let query = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let cb = Callback { query };
    let page = if cb.get("code").is_some() {
        "<!doctype html><title>dgctl</title><p>Signed in. You can close this window and return to dgctl.</p>"
    } else {
        "<!doctype html><title>dgctl</title><p>Sign-in failed; dgctl shows why.</p>"
    };
    // Only the first redirect counts; a second one (a reload) changes nothing.
    if let Some(tx) = slot.lock().await.take() {
        let _ = tx.send(cb);
    }
    Html(page)
}

/// Tries to open `url` in the desktop's browser; failing is fine (the URL is printed).
fn open_browser(url: &Url) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let _ = std::process::Command::new(opener)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Runs the browser part and redeems the code: returns the ID token and the nonce it carries.
pub async fn sign_in(cfg: &pb::OidcConfig, opts: &BrowserOptions) -> CliResult<IdToken> {
    if cfg.issuer.is_empty() || cfg.client_id.is_empty() {
        return Err(CliError::Local("the controller has no OIDC sign-in configured".into()));
    }
    let authz = endpoint(&cfg.authorization_endpoint, "authorization endpoint")?;
    let token_endpoint = endpoint(&cfg.token_endpoint, "token endpoint")?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], opts.port))).await.map_err(|e| {
        CliError::Local(format!("cannot listen on 127.0.0.1:{} for the sign-in redirect: {e}", opts.port))
    })?;
    let port = listener.local_addr()?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let (state, nonce, verifier) = (random(24), random(24), random(48));
    let url = authorization_url(&authz, &cfg.client_id, &redirect_uri, &opts.scope, &state, &nonce, &verifier);

    let (tx, rx) = oneshot::channel();
    let slot: Slot = Arc::new(Mutex::new(Some(tx)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app = Router::new().route("/callback", get(on_callback)).with_state(slot);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });

    eprintln!("Open this URL in a browser to sign in (waiting on {redirect_uri}):");
    eprintln!("  {url}");
    if opts.open_browser {
        open_browser(&url);
    }
    let got = tokio::time::timeout(opts.timeout, rx).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let cb = match got {
        Ok(Ok(cb)) => cb,
        Ok(Err(_)) => return Err(CliError::Local("the sign-in listener stopped".into())),
        Err(_) => {
            return Err(CliError::Local(format!("no sign-in within {}", humantime::format_duration(opts.timeout))));
        }
    };
    if cb.get("state") != Some(state.as_str()) {
        return Err(CliError::Denied("the sign-in redirect carries another state: refused".into()));
    }
    if let Some(e) = cb.get("error") {
        let d = cb.get("error_description").unwrap_or_default();
        return Err(CliError::Denied(format!("the provider refused the sign-in: {e} {d}").trim_end().to_owned()));
    }
    let code = cb.get("code").ok_or_else(|| CliError::Denied("the sign-in redirect carries no code".into()))?;
    let id_token = redeem(&token_endpoint, &cfg.client_id, code, &redirect_uri, &verifier).await?;
    Ok(IdToken { id_token, nonce })
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The token request (authorization_code grant with the PKCE verifier).
async fn redeem(endpoint: &Url, client_id: &str, code: &str, redirect_uri: &str, verifier: &str) -> CliResult<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| CliError::Local(format!("http client: {e}")))?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", client_id),
        ("code_verifier", verifier),
    ];
    let resp = http
        .post(endpoint.clone())
        .form(&form)
        .send()
        .await
        .map_err(|e| CliError::Local(format!("OIDC token endpoint {endpoint}: {e}")))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| CliError::Local(format!("OIDC token endpoint {endpoint}: {e}")))?;
    let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
    match parsed {
        Some(TokenResponse { id_token: Some(t), .. }) if status.is_success() => Ok(t),
        Some(TokenResponse { error: Some(e), error_description, .. }) => Err(CliError::Denied(format!(
            "the provider refused the code: {e} {}",
            error_description.unwrap_or_default()
        ))),
        _ => Err(CliError::Local(format!("OIDC token endpoint {endpoint}: HTTP {status} without an ID token"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_unless_loopback() {
        assert!(endpoint("https://idp.example.com/auth", "x").is_ok());
        assert!(endpoint("http://127.0.0.1:9000/auth", "x").is_ok());
        assert!(endpoint("http://[::1]:9000/auth", "x").is_ok());
        assert!(endpoint("http://localhost/auth", "x").is_ok());
        assert!(endpoint("http://idp.example.com/auth", "x").is_err());
        assert!(endpoint("http://127.0.0.1.example.com/auth", "x").is_err());
        assert!(endpoint("", "x").is_err());
    }

    #[test]
    fn the_request_carries_pkce_state_and_nonce() {
        let base = Url::parse("https://idp.example.com/auth?prompt=login").unwrap();
        let url = authorization_url(&base, "dg-cli", "http://127.0.0.1:5/callback", "openid", "st", "nn", "ver");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["prompt"], "login");
        assert_eq!(q["client_id"], "dg-cli");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5/callback");
        assert_eq!((q["state"].as_str(), q["nonce"].as_str()), ("st", "nn"));
        assert_eq!(q["code_challenge_method"], "S256");
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_ne!(random(24), random(24));
        assert_eq!(random(24).len(), 32);
    }
}
