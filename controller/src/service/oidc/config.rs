//! The `[oidc]` section of the controller configuration: which OpenID provider operators sign in with, which
//! client the ID tokens are issued to, and how a token's claims become DataGuardian roles. Validated once at
//! start by [`OidcConfig::validate`] (called from `Config::validate`); every message names the key.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::ConfigError;

/// OpenID Connect sign-in. Durations are whole seconds, as elsewhere in the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer identifier, exactly as its discovery document states it. `https://` is required,
    /// except `http://` on a loopback host (127.0.0.0/8, `::1`, `localhost`) for tests and local providers.
    pub issuer: Url,
    /// The client id ID tokens are issued to (the `dg` CLI's registration at the provider).
    pub client_id: String,
    /// Accepted `aud` values; empty: just `client_id`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claim holding the user's groups or roles (a string or an array of strings). A dotted name
    /// (`realm_access.roles`) walks into nested objects when no claim of that exact name exists.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim value -> DataGuardian role name (`viewer`, `operator`, `admin` or a custom role).
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    /// Role of a user none of whose claim values is mapped; none: such a user is refused.
    #[serde(default)]
    pub default_role: Option<String>,
    /// Claim the user name is read from; when absent: `email`, then `sub`.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// How often the provider's signing keys (JWKS) are fetched again.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// A token signed by a key not in the cached set makes the keys be fetched again, at most once per this
    /// many seconds, so that a flood of tokens with made-up key ids cannot hammer the provider.
    #[serde(default = "default_jwks_min_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// Bound on each request to the provider (discovery, JWKS).
    #[serde(default = "default_http_timeout_secs")]
    pub http_timeout_secs: u64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// CA bundle (PEM) that verifies the provider's TLS certificate; none: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_role_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_jwks_refresh_secs() -> u64 {
    3600
}
fn default_jwks_min_refetch_secs() -> u64 {
    30
}
fn default_http_timeout_secs() -> u64 {
    10
}
fn default_leeway_secs() -> u64 {
    30
}

impl OidcConfig {
    /// A configuration with the defaults for everything but the issuer and client id.
    pub fn new(issuer: Url, client_id: impl Into<String>) -> Self {
        Self {
            issuer,
            client_id: client_id.into(),
            audiences: Vec::new(),
            role_claim: default_role_claim(),
            role_map: BTreeMap::new(),
            default_role: None,
            username_claim: default_username_claim(),
            jwks_refresh_secs: default_jwks_refresh_secs(),
            jwks_min_refetch_secs: default_jwks_min_refetch_secs(),
            http_timeout_secs: default_http_timeout_secs(),
            leeway_secs: default_leeway_secs(),
            ca_file: None,
        }
    }

    /// The accepted audiences: `audiences`, or `[client_id]` when none are set.
    pub fn allowed_audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() { vec![self.client_id.clone()] } else { self.audiences.clone() }
    }

    /// JWKS refresh interval.
    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwks_refresh_secs)
    }

    /// Least time between two key fetches caused by unknown key ids.
    pub fn jwks_min_refetch(&self) -> Duration {
        Duration::from_secs(self.jwks_min_refetch_secs)
    }

    /// Per-request bound on calls to the provider.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout_secs)
    }

    /// Checks every key; the message names it as `oidc.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("oidc.{key}: {why}")));
        if let Err(why) = check_provider_url(&self.issuer) {
            return bad("issuer", why);
        }
        if self.issuer.query().is_some() || self.issuer.fragment().is_some() {
            return bad("issuer", "an issuer has no query or fragment".into());
        }
        if self.client_id.trim().is_empty() {
            return bad("client_id", "must not be empty".into());
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            return bad("audiences", "must not hold an empty value".into());
        }
        if self.role_claim.trim().is_empty() {
            return bad("role_claim", "must not be empty".into());
        }
        if self.username_claim.trim().is_empty() {
            return bad("username_claim", "must not be empty".into());
        }
        for (value, role) in &self.role_map {
            if let Err(why) = check_role_name(role) {
                return bad("role_map", format!("the role for \"{value}\": {why}"));
            }
        }
        if let Some(role) = &self.default_role
            && let Err(why) = check_role_name(role)
        {
            return bad("default_role", why);
        }
        if !(10..=7 * 86_400).contains(&self.jwks_refresh_secs) {
            return bad("jwks_refresh_secs", "must be between 10 seconds and 7 days".into());
        }
        if !(1..=3600).contains(&self.jwks_min_refetch_secs) || self.jwks_min_refetch_secs > self.jwks_refresh_secs {
            return bad("jwks_min_refetch_secs", "must be 1-3600 and at most jwks_refresh_secs".into());
        }
        if !(1..=120).contains(&self.http_timeout_secs) {
            return bad("http_timeout_secs", "must be 1-120".into());
        }
        // A larger leeway lets an expired token live on: keep it to minutes.
        if self.leeway_secs > 300 {
            return bad("leeway_secs", "must be at most 300".into());
        }
        Ok(())
    }
}

/// A provider URL (issuer, JWKS, endpoints) must be `https`, or `http` on a loopback host: tokens and keys
/// fetched over plain HTTP from anywhere else could be replaced in transit.
pub(crate) fn check_provider_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => return Err(format!("http:// is allowed only on a loopback host, not {}", host_text(url))),
        other => return Err(format!("scheme \"{other}\" is not https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials".into());
    }
    Ok(())
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
        None => false,
    }
}

fn host_text(url: &Url) -> String {
    url.host_str().unwrap_or("").to_owned()
}

fn check_role_name(role: &str) -> Result<(), String> {
    if role.is_empty() || role.len() > 64 {
        return Err("a role name is 1-64 characters".into());
    }
    if role.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("role name \"{}\" holds whitespace", role.escape_debug()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use figment::{
        Figment,
        providers::{Format, Serialized, Toml},
    };

    use super::*;
    use crate::config::Config;

    fn cfg(issuer: &str) -> OidcConfig {
        OidcConfig::new(Url::parse(issuer).expect("test url"), "dg-cli")
    }

    fn error_of(c: &OidcConfig) -> String {
        c.validate().expect_err("must be refused").to_string()
    }

    #[test]
    fn https_anywhere_and_http_only_on_loopback() {
        for ok in [
            "https://idp.example.com",
            "https://idp.example.com/realms/dg",
            "http://127.0.0.1:8080",
            "http://127.8.9.1",
            "http://[::1]:9000",
            "http://localhost:3000",
            "http://LOCALHOST",
        ] {
            assert!(cfg(ok).validate().is_ok(), "{ok} must be accepted");
        }
        for (bad, why) in [
            ("http://idp.example.com", "loopback"),
            ("http://10.0.0.1", "loopback"),
            ("http://localhost.example.com", "loopback"),
            ("ftp://idp.example.com", "scheme"),
            ("https://user:pw@idp.example.com", "credentials"),
            ("https://idp.example.com/?x=1", "query"),
        ] {
            let e = error_of(&cfg(bad));
            assert!(e.contains("oidc.issuer") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn every_key_is_checked_and_named() {
        let base = cfg("https://idp.example.com");
        let cases: Vec<(OidcConfig, &str)> = vec![
            (OidcConfig { client_id: " ".into(), ..base.clone() }, "oidc.client_id"),
            (OidcConfig { audiences: vec!["".into()], ..base.clone() }, "oidc.audiences"),
            (OidcConfig { role_claim: "".into(), ..base.clone() }, "oidc.role_claim"),
            (OidcConfig { username_claim: "".into(), ..base.clone() }, "oidc.username_claim"),
            (OidcConfig { role_map: [("g".into(), "".into())].into(), ..base.clone() }, "oidc.role_map"),
            (OidcConfig { role_map: [("g".into(), "a b".into())].into(), ..base.clone() }, "oidc.role_map"),
            (OidcConfig { default_role: Some("".into()), ..base.clone() }, "oidc.default_role"),
            (OidcConfig { jwks_refresh_secs: 1, ..base.clone() }, "oidc.jwks_refresh_secs"),
            (OidcConfig { jwks_min_refetch_secs: 0, ..base.clone() }, "oidc.jwks_min_refetch_secs"),
            (OidcConfig { jwks_min_refetch_secs: 4000, ..base.clone() }, "oidc.jwks_min_refetch_secs"),
            (OidcConfig { http_timeout_secs: 0, ..base.clone() }, "oidc.http_timeout_secs"),
            (OidcConfig { leeway_secs: 3600, ..base.clone() }, "oidc.leeway_secs"),
        ];
        for (c, key) in cases {
            let e = error_of(&c);
            assert!(e.contains(key), "expected {key} in: {e}");
        }
        assert_eq!(base.allowed_audiences(), ["dg-cli"]);
        let two = OidcConfig { audiences: vec!["a".into(), "b".into()], ..base };
        assert_eq!(two.allowed_audiences(), ["a", "b"]);
    }

    fn load(toml: &str) -> Result<Config, Box<figment::Error>> {
        Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)).extract().map_err(Box::new)
    }

    #[test]
    fn the_section_is_optional_and_takes_defaults() {
        assert!(load("").expect("no section").oidc.is_none());
        let c = load(
            "[oidc]\nissuer = \"https://idp.example.com/realms/dg\"\nclient_id = \"dg-cli\"\n\
             role_map = { dg-admins = \"admin\", dg-ops = \"operator\" }\n",
        )
        .expect("section loads")
        .oidc
        .expect("section present");
        assert_eq!(c.issuer.as_str(), "https://idp.example.com/realms/dg");
        assert_eq!(c.role_claim, "groups");
        assert_eq!(c.username_claim, "preferred_username");
        assert_eq!(c.role_map.get("dg-admins").map(String::as_str), Some("admin"));
        assert_eq!(c.jwks_refresh(), Duration::from_secs(3600));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_bad_url_or_an_unknown_key_names_the_key() {
        let e = load("[oidc]\nissuer = \"not a url\"\nclient_id = \"dg-cli\"\n").expect_err("bad url").to_string();
        assert!(e.contains("oidc.issuer"), "{e}");
        let e = load("[oidc]\nissuer = \"https://idp\"\nclient_id = \"c\"\nrole_claims = \"x\"\n")
            .expect_err("typo")
            .to_string();
        assert!(e.contains("role_claims"), "{e}");
    }
}
