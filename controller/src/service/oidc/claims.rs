//! Pure checks on an ID token's header and claims once its signature, `iss`, `aud`, `exp` and `nbf` have been
//! verified by the JWT library: the algorithm allow-list, `iat`, `azp`, `nonce`, and the mapping of claims to a
//! user name, an e-mail address and DataGuardian roles. No I/O; called by [`super::OidcVerifier`].

use std::collections::BTreeMap;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::ControllerError;

/// Algorithms an ID token may be signed with: asymmetric only. `none` is refused (no signature at all), and so
/// are the HMAC algorithms: their key would be the client secret (public clients have none), and accepting
/// them is the classic confusion where a public key is used as an HMAC secret.
pub(crate) const ACCEPTED_ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

pub(crate) fn refused(why: impl std::fmt::Display) -> ControllerError {
    ControllerError::Unauthenticated(format!("oidc id token refused: {why}"))
}

/// The algorithm named by the token's `alg` header, when it is one we accept.
pub(crate) fn accepted_algorithm(alg: &str) -> Result<Algorithm, ControllerError> {
    if let Some((_, a)) = ACCEPTED_ALGORITHMS.iter().find(|(name, _)| *name == alg) {
        return Ok(*a);
    }
    Err(refused(if alg.eq_ignore_ascii_case("none") {
        "it is unsigned (alg \"none\")".to_owned()
    } else if alg.to_ascii_uppercase().starts_with("HS") {
        format!("HMAC algorithm \"{}\" is not accepted for ID tokens", alg.escape_debug())
    } else {
        format!("algorithm \"{}\" is not accepted", alg.escape_debug())
    }))
}

/// Checks `iat` (present, numeric, not in the future beyond the leeway), `azp` (when present, our client) and
/// `nonce` (present and equal to the one the sign-in started with).
pub(crate) fn check_claims(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
    client_id: &str,
    expected_nonce: &str,
) -> Result<(), ControllerError> {
    match claims.get("iat") {
        Some(Value::Number(n)) => {
            let iat = n.as_f64().unwrap_or(f64::MAX);
            if iat > (now + leeway) as f64 {
                return Err(refused("it was issued in the future (iat); check the clocks"));
            }
        }
        Some(_) => return Err(refused("claim iat is not a number")),
        None => return Err(refused("claim iat is missing")),
    }
    match claims.get("azp") {
        None => {}
        Some(Value::String(azp)) if azp == client_id => {}
        Some(_) => return Err(refused("it was issued to another client (azp)")),
    }
    match claims.get("nonce") {
        Some(Value::String(n)) if constant_time_eq(n.as_bytes(), expected_nonce.as_bytes()) => Ok(()),
        Some(Value::String(_)) => Err(refused("its nonce does not match this sign-in")),
        Some(_) => Err(refused("claim nonce is not a string")),
        None => Err(refused("claim nonce is missing")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A claim by exact name, else, for a dotted name, by walking nested objects (`realm_access.roles`).
pub(crate) fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn non_empty_string(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The user name: `username_claim`, else `email`, else `sub`.
pub(crate) fn username(claims: &Map<String, Value>, username_claim: &str, subject: &str) -> String {
    non_empty_string(claim(claims, username_claim))
        .or_else(|| non_empty_string(claims.get("email")))
        .unwrap_or(subject)
        .to_owned()
}

/// The e-mail address, when the token carries one.
pub(crate) fn email(claims: &Map<String, Value>) -> Option<String> {
    non_empty_string(claims.get("email")).map(str::to_owned)
}

/// Roles mapped from the role claim's values (a string or an array; other element types are ignored), in
/// claim order without duplicates; the default role when none is mapped; an error when there is neither.
pub(crate) fn roles(
    claims: &Map<String, Value>,
    role_claim: &str,
    role_map: &BTreeMap<String, String>,
    default_role: Option<&str>,
    username: &str,
) -> Result<Vec<String>, ControllerError> {
    let values: Vec<&str> = match claim(claims, role_claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for role in values.into_iter().filter_map(|v| role_map.get(v)) {
        if !out.contains(role) {
            out.push(role.clone());
        }
    }
    if out.is_empty() {
        match default_role {
            Some(r) => out.push(r.to_owned()),
            None => {
                return Err(ControllerError::PermissionDenied(format!(
                    "oidc user \"{}\" has no DataGuardian role: no value of its claim \"{role_claim}\" is in \
                     oidc.role_map and no oidc.default_role is set",
                    username.escape_debug()
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn only_asymmetric_algorithms_pass() {
        for (name, _) in ACCEPTED_ALGORITHMS {
            assert!(accepted_algorithm(name).is_ok(), "{name}");
        }
        for (alg, why) in [
            ("none", "unsigned"),
            ("NONE", "unsigned"),
            ("HS256", "HMAC"),
            ("hs512", "HMAC"),
            ("Ed25519", "not accepted"),
            ("", "not accepted"),
        ] {
            let e = accepted_algorithm(alg).expect_err(alg).to_string();
            assert!(e.contains(why), "{alg}: {e}");
        }
    }

    #[test]
    fn iat_azp_and_nonce() {
        let now = 1_000_000;
        let good = obj(json!({"iat": now, "azp": "dg-cli", "nonce": "n-1"}));
        assert!(check_claims(&good, now, 30, "dg-cli", "n-1").is_ok());
        let no_azp = obj(json!({"iat": now - 5, "nonce": "n-1"}));
        assert!(check_claims(&no_azp, now, 30, "dg-cli", "n-1").is_ok());
        let cases = [
            (json!({"iat": now + 31, "nonce": "n-1"}), "future"),
            (json!({"iat": "x", "nonce": "n-1"}), "iat is not"),
            (json!({"nonce": "n-1"}), "iat is missing"),
            (json!({"iat": now, "azp": "other", "nonce": "n-1"}), "another client"),
            (json!({"iat": now, "nonce": "n-2"}), "does not match"),
            (json!({"iat": now, "nonce": "n-1x"}), "does not match"),
            (json!({"iat": now, "nonce": 5}), "not a string"),
            (json!({"iat": now}), "nonce is missing"),
        ];
        for (claims, why) in cases {
            let e = check_claims(&obj(claims.clone()), now, 30, "dg-cli", "n-1").expect_err("refused").to_string();
            assert!(e.contains(why), "{claims}: {e}");
        }
        assert!(check_claims(&obj(json!({"iat": now + 29, "nonce": "n-1"})), now, 30, "dg-cli", "n-1").is_ok());
    }

    #[test]
    fn username_falls_back_to_email_then_sub() {
        let c = obj(json!({"preferred_username": "alice", "email": "a@x", "upn": "A"}));
        assert_eq!(username(&c, "preferred_username", "s"), "alice");
        assert_eq!(username(&c, "upn", "s"), "A");
        assert_eq!(
            username(&obj(json!({"preferred_username": " ", "email": "a@x"})), "preferred_username", "s"),
            "a@x"
        );
        assert_eq!(username(&obj(json!({"preferred_username": 3})), "preferred_username", "s"), "s");
        assert_eq!(email(&obj(json!({"email": "a@x"}))).as_deref(), Some("a@x"));
        assert_eq!(email(&obj(json!({}))), None);
    }

    #[test]
    fn roles_are_mapped_from_a_string_an_array_or_a_nested_claim() {
        let map: BTreeMap<String, String> =
            [("dg-admins", "admin"), ("ops", "operator"), ("ops2", "operator"), ("backup-team", "backup-team")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .into();
        let r = |c: Value, claim: &str, default: Option<&str>| roles(&obj(c), claim, &map, default, "u");
        assert_eq!(r(json!({"groups": "ops"}), "groups", None).expect("string"), ["operator"]);
        assert_eq!(
            r(json!({"groups": ["staff", "ops", 7, "dg-admins", "ops2", "backup-team"]}), "groups", None)
                .expect("array"),
            ["operator", "admin", "backup-team"]
        );
        assert_eq!(
            r(json!({"realm_access": {"roles": ["dg-admins"]}}), "realm_access.roles", None).expect("nested"),
            ["admin"]
        );
        assert_eq!(
            r(json!({"https://x.example/groups": ["ops"]}), "https://x.example/groups", None).expect("dotted"),
            ["operator"]
        );
        assert_eq!(r(json!({"groups": ["staff"]}), "groups", Some("viewer")).expect("default"), ["viewer"]);
        assert_eq!(r(json!({}), "groups", Some("viewer")).expect("default"), ["viewer"]);
        let e = r(json!({"groups": ["staff"]}), "groups", None).expect_err("no role");
        assert!(matches!(e, ControllerError::PermissionDenied(_)), "{e:?}");
        assert!(e.to_string().contains("no DataGuardian role"), "{e}");
    }
}
