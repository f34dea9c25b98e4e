//! OpenID Connect ID-token verification: turns an ID token that an operator obtained from the configured
//! provider (through the `dg` CLI's device or authorization-code flow) into an [`OidcIdentity`] with
//! DataGuardian roles. The session layer calls [`OidcVerifier::verify_id_token`] and issues its own session
//! token; the ID token itself is never stored, logged or quoted in an error.
//!
//! What is verified, and why:
//! - **The provider.** At start the discovery document (`<issuer>/.well-known/openid-configuration`) is
//!   fetched and its `issuer` must equal the configured one (a mix-up of two providers, or a proxy answering
//!   for another, stops here). Provider URLs (issuer, `jwks_uri`) must be `https`, except `http` on a loopback
//!   host; redirects are not followed; a private CA can be given (`oidc.ca_file`).
//! - **The signature.** Only asymmetric algorithms (RS*, PS*, ES256/384, EdDSA): `none` carries no signature,
//!   and HMAC would make the public key (or a client secret the CLI cannot keep) the verification secret. The
//!   key is the JWKS key named by the header's `kid`; it must be a public signature key, of the algorithm's
//!   type, and of the header's `alg` when the JWK names one.
//! - **Key rotation without trusting the token.** The JWKS is cached, fetched again periodically
//!   ([`OidcJwksRefreshTask`]) and when a token names an unknown `kid`, but that fetch happens at most once per
//!   `jwks_min_refetch_secs`: made-up key ids cannot make the controller hammer the provider, and only keys
//!   served by the provider's own `jwks_uri` ever verify anything.
//! - **The claims.** `iss` is exactly the discovered issuer; `aud` holds one of the accepted audiences (default
//!   the client id) and `azp`, when present, is the client id (a token issued to another application of the
//!   same provider is refused); `exp`, `nbf` and `iat` hold with a small leeway; `sub` is present; `nonce` is
//!   present and equals the nonce the caller started the sign-in with, so a token captured from another sign-in
//!   cannot be replayed into this one.
//! - **The roles.** The role claim (a string or an array) is mapped through `oidc.role_map`; with no mapped
//!   value the `default_role` applies, and without one the user is refused (`PermissionDenied`), never let in
//!   with no role.

mod claims;
pub mod config;
mod jwks;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::{sync::Mutex, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

pub use self::config::OidcConfig;
use self::{
    claims::refused,
    jwks::{KeySet, SigningKey},
};
use crate::error::{ControllerError, ControllerResult};

/// Longest ID token looked at; real ones are a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest discovery or JWKS document read from the provider.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Who signed in, as the provider asserts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The issuer, as in the token's `iss`.
    pub issuer: String,
    /// The provider's stable user id (`sub`); `(issuer, subject)` identifies the user.
    pub subject: String,
    /// Display and login name: the configured claim, else `email`, else `sub`.
    pub username: String,
    /// E-mail address, when the token carries one.
    pub email: Option<String>,
    /// DataGuardian role names, at least one.
    pub roles: Vec<String>,
}

/// What a CLI needs to start a sign-in flow with the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcClientInfo {
    /// The issuer identifier.
    pub issuer: String,
    /// The client id to request tokens as.
    pub client_id: String,
    /// Device authorization endpoint (RFC 8628), when the provider has one.
    pub device_authorization_endpoint: Option<Url>,
    /// Authorization endpoint (authorization code + PKCE).
    pub authorization_endpoint: Option<Url>,
    /// Token endpoint.
    pub token_endpoint: Option<Url>,
}

/// The parts of the discovery document used here.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

/// Verifies ID tokens of one provider; cheap to clone (one shared key cache).
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The issuer exactly as the discovery document states it (what `iss` must equal).
    issuer: String,
    client_id: String,
    audiences: Vec<String>,
    role_claim: String,
    role_map: std::collections::BTreeMap<String, String>,
    default_role: Option<String>,
    username_claim: String,
    leeway_secs: u64,
    jwks_uri: Url,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    client_info: OidcClientInfo,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last fetched (or tried); held across a fetch so that fetches never overlap.
    last_fetch: Mutex<Instant>,
    fetches: AtomicU64,
}

impl OidcVerifier {
    /// Fetches the discovery document and the signing keys. Fails when the provider is unreachable, states
    /// another issuer, or serves no usable key.
    pub async fn discover(cfg: &OidcConfig) -> ControllerResult<Self> {
        cfg.validate().map_err(|e| ControllerError::FailedPrecondition(e.to_string()))?;
        let http = http_client(cfg)?;
        let configured = cfg.issuer.as_str().trim_end_matches('/');
        let discovery_url = Url::parse(&format!("{configured}/.well-known/openid-configuration"))
            .map_err(|e| ControllerError::FailedPrecondition(format!("oidc.issuer: {e}")))?;
        let body = fetch(&http, &discovery_url, "discovery document").await?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
            ControllerError::Unavailable(format!("oidc: the discovery document of {configured} does not parse: {e}"))
        })?;
        // The issuer must be the configured one; the only leniency is the empty path ("https://idp" and
        // "https://idp/" are one URL), which `Url` already normalises.
        if Url::parse(&d.issuer).ok().as_ref() != Some(&cfg.issuer) {
            return Err(ControllerError::FailedPrecondition(format!(
                "oidc: the provider at {configured} names its issuer \"{}\", not the configured oidc.issuer",
                d.issuer.escape_debug()
            )));
        }
        let jwks_uri = provider_url(&d.jwks_uri, "jwks_uri")?;
        let optional = |v: &Option<String>, what| v.as_deref().map(|u| provider_url(u, what)).transpose();
        let client_info = OidcClientInfo {
            issuer: d.issuer.clone(),
            client_id: cfg.client_id.clone(),
            device_authorization_endpoint: optional(&d.device_authorization_endpoint, "device_authorization_endpoint")?,
            authorization_endpoint: optional(&d.authorization_endpoint, "authorization_endpoint")?,
            token_endpoint: optional(&d.token_endpoint, "token_endpoint")?,
        };
        let verifier = Self {
            inner: Arc::new(Inner {
                issuer: d.issuer,
                client_id: cfg.client_id.clone(),
                audiences: cfg.allowed_audiences(),
                role_claim: cfg.role_claim.clone(),
                role_map: cfg.role_map.clone(),
                default_role: cfg.default_role.clone(),
                username_claim: cfg.username_claim.clone(),
                leeway_secs: cfg.leeway_secs,
                jwks_uri,
                jwks_refresh: cfg.jwks_refresh(),
                jwks_min_refetch: cfg.jwks_min_refetch(),
                client_info,
                http,
                keys: RwLock::new(Arc::new(KeySet::default())),
                last_fetch: Mutex::new(Instant::now()),
                fetches: AtomicU64::new(0),
            }),
        };
        verifier.refresh_keys().await?;
        Ok(verifier)
    }

    /// Issuer, client id and endpoints, for a CLI starting a flow.
    pub fn client_info(&self) -> &OidcClientInfo {
        &self.inner.client_info
    }

    /// How many times the signing keys were fetched (start, refreshes, unknown key ids).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Verifies `id_token` (see the module documentation) against the `nonce` the sign-in started with.
    pub async fn verify_id_token(&self, id_token: &str, nonce: &str) -> ControllerResult<OidcIdentity> {
        if nonce.is_empty() {
            return Err(dg_common::error::FieldError::new("nonce", "must not be empty").into());
        }
        if id_token.len() > MAX_TOKEN_BYTES {
            return Err(refused(format!("it is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let (alg_name, kid) = raw_header(id_token)?;
        let alg = claims::accepted_algorithm(&alg_name)?;
        let key = self.key(kid.as_deref()).await?;
        if key.alg.is_some_and(|a| a != alg) {
            return Err(refused(format!("its key is not for algorithm {alg_name}")));
        }
        let inner = &self.inner;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&inner.issuer]);
        validation.set_audience(&inner.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = inner.leeway_secs;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(id_token, &key.key, &validation)
            .map_err(|e| refused(jwt_error_text(e.kind())))?
            .claims;
        claims::check_claims(
            &claims,
            jsonwebtoken::get_current_timestamp(),
            inner.leeway_secs,
            &inner.client_id,
            nonce,
        )?;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(refused("claim sub is not a non-empty string")),
        };
        let username = claims::username(&claims, &inner.username_claim, &subject);
        let roles =
            claims::roles(&claims, &inner.role_claim, &inner.role_map, inner.default_role.as_deref(), &username)?;
        Ok(OidcIdentity { issuer: inner.issuer.clone(), subject, username, email: claims::email(&claims), roles })
    }

    /// Fetches the signing keys now (periodic refresh); waits for a fetch already under way.
    pub async fn refresh_keys(&self) -> ControllerResult<()> {
        let mut last = self.inner.last_fetch.lock().await;
        self.fetch_keys(&mut last).await
    }

    async fn fetch_keys(&self, last: &mut Instant) -> ControllerResult<()> {
        *last = Instant::now();
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let body = fetch(&self.inner.http, &self.inner.jwks_uri, "signing keys (jwks_uri)").await?;
        let (set, skipped) = KeySet::parse(&body)
            .map_err(|e| ControllerError::Unavailable(format!("oidc: the provider's signing keys: {e}")))?;
        if set.len() == 0 {
            return Err(ControllerError::Unavailable("oidc: the provider serves no usable signing key".into()));
        }
        info!(issuer = %self.inner.issuer, keys = set.len(), skipped, "oidc signing keys fetched");
        *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    fn cached_key(&self, kid: Option<&str>) -> Option<SigningKey> {
        self.inner.keys.read().unwrap_or_else(|p| p.into_inner()).find(kid).cloned()
    }

    /// The key for `kid`: from the cache, else after fetching the keys again if the last fetch is older than
    /// the minimum interval (a rotation at the provider), else refused.
    async fn key(&self, kid: Option<&str>) -> ControllerResult<SigningKey> {
        if let Some(k) = self.cached_key(kid) {
            return Ok(k);
        }
        let unknown = || refused("it is signed by a key the provider does not publish (unknown kid)");
        let mut last = self.inner.last_fetch.lock().await;
        // Another caller may have fetched while this one waited for the lock.
        if let Some(k) = self.cached_key(kid) {
            return Ok(k);
        }
        if last.elapsed() < self.inner.jwks_min_refetch {
            return Err(unknown());
        }
        if let Err(e) = self.fetch_keys(&mut last).await {
            warn!(issuer = %self.inner.issuer, error = %e, "oidc signing keys refetch failed; keeping the cached keys");
            return Err(e);
        }
        self.cached_key(kid).ok_or_else(unknown)
    }
}

/// Fetches the provider's signing keys every `oidc.jwks_refresh_secs`; a failure keeps the cached keys.
pub struct OidcJwksRefreshTask {
    verifier: OidcVerifier,
}

impl OidcJwksRefreshTask {
    /// A refresh task for `verifier`.
    pub fn new(verifier: OidcVerifier) -> Self {
        Self { verifier }
    }

    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let period = self.verifier.inner.jwks_refresh;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.verifier.refresh_keys().await {
                        warn!(error = %e, "oidc signing keys refresh failed; keeping the cached keys");
                    }
                }
            }
        }
    }
}

fn http_client(cfg: &OidcConfig) -> ControllerResult<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.http_timeout())
        .user_agent("DataGuardian-Controller/1");
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| ControllerError::FailedPrecondition(format!("oidc.ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ControllerError::FailedPrecondition(format!("oidc.ca_file {}: not a PEM bundle: {e}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(ControllerError::FailedPrecondition(format!(
                "oidc.ca_file {}: holds no certificate",
                path.display()
            )));
        }
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| ControllerError::FailedPrecondition(format!("oidc http client: {e}")))
}

/// A URL from the discovery document, held to the same rule as the issuer.
fn provider_url(raw: &str, what: &str) -> ControllerResult<Url> {
    let u = Url::parse(raw)
        .map_err(|e| ControllerError::Unavailable(format!("oidc: the discovery document's {what}: {e}")))?;
    config::check_provider_url(&u)
        .map_err(|why| ControllerError::Unavailable(format!("oidc: the discovery document's {what}: {why}")))?;
    Ok(u)
}

/// GET `url`, 200 and at most [`MAX_DOCUMENT_BYTES`], or an `Unavailable` naming `what`.
async fn fetch(http: &reqwest::Client, url: &Url, what: &str) -> ControllerResult<Vec<u8>> {
    let unavailable = |why: String| ControllerError::Unavailable(format!("oidc: {what} from {url}: {why}"));
    let mut resp = http
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(unavailable(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.without_url().to_string()))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(unavailable(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `alg` and `kid` of the token's header, read before anything else so that `none` and HMAC get a clear
/// refusal (the JWT library has no name for `none`).
fn raw_header(token: &str) -> ControllerResult<(String, Option<String>)> {
    let malformed = || refused("it is not a well-formed JWT");
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed())?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(refused("its header names no algorithm"));
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(refused("its key id (kid) is not a string")),
    };
    Ok((alg.clone(), kid))
}

/// A readable reason for a JWT library failure; never quotes the token.
fn jwt_error_text(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "it has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "it was issued by another issuer (iss)".into(),
        ErrorKind::InvalidAudience => "it is not meant for this controller (aud)".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim {c} is missing"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c} is malformed"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat | ErrorKind::UnsupportedAlgorithm => {
            "its key does not fit its algorithm".into()
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "it is not a well-formed JWT".into()
        }
        _ => "it does not verify".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn the_raw_header_gives_alg_and_kid_and_refuses_junk() {
        let t = format!("{}.{}.sig", b64(r#"{"alg":"RS256","kid":"k1"}"#), b64("{}"));
        assert_eq!(raw_header(&t).expect("parses"), ("RS256".to_owned(), Some("k1".to_owned())));
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(raw_header(&none).expect("parses").0, "none");
        for bad in ["", "a.b", "a.b.c.d", "!!.b.c", &format!("{}.x.y", b64("[]"))] {
            assert!(raw_header(bad).is_err(), "{bad}");
        }
        let e = raw_header(&format!("{}.x.y", b64(r#"{"kid":"k"}"#))).expect_err("no alg").to_string();
        assert!(e.contains("no algorithm"), "{e}");
        let e = raw_header(&format!("{}.x.y", b64(r#"{"alg":"RS256","kid":3}"#))).expect_err("kid").to_string();
        assert!(e.contains("kid"), "{e}");
    }

    #[test]
    fn library_errors_read_well_and_quote_nothing() {
        for (k, want) in [
            (ErrorKind::ExpiredSignature, "expired"),
            (ErrorKind::InvalidAudience, "aud"),
            (ErrorKind::InvalidIssuer, "iss"),
            (ErrorKind::InvalidSignature, "signature"),
            (ErrorKind::MissingRequiredClaim("sub".into()), "sub is missing"),
        ] {
            assert!(jwt_error_text(&k).contains(want), "{k:?}");
        }
    }
}
