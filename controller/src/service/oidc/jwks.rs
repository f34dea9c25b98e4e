//! The provider's signing keys as fetched from its `jwks_uri`, reduced to what may verify an ID token: public
//! signature keys of an asymmetric type. Pure; fetched and cached by [`super::OidcVerifier`].

use std::collections::HashMap;

use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse},
};

/// One usable key.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) key: DecodingKey,
    /// The `alg` the JWK is restricted to, when it names one.
    pub(crate) alg: Option<Algorithm>,
}

/// Usable keys by key id; keys without an id are kept apart (used only when the set has a single key).
#[derive(Clone, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, SigningKey>,
    without_kid: Vec<SigningKey>,
}

impl KeySet {
    /// Parses a JWKS document; keys that cannot verify signatures (HMAC secrets, encryption keys, unknown
    /// types) are skipped, so one odd key does not lose the others. Returns the set and how many were skipped.
    pub(crate) fn parse(body: &[u8]) -> Result<(Self, usize), String> {
        let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut out = KeySet::default();
        let mut skipped = 0;
        for jwk in &set.keys {
            match usable(jwk) {
                Some(k) => match &jwk.common.key_id {
                    Some(kid) => {
                        out.by_kid.insert(kid.clone(), k);
                    }
                    None => out.without_kid.push(k),
                },
                None => skipped += 1,
            }
        }
        Ok((out, skipped))
    }

    /// The key a token's header points at.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&SigningKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.by_kid.len() + self.without_kid.len() == 1 => {
                self.by_kid.values().next().or_else(|| self.without_kid.first())
            }
            None => None,
        }
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }
}

fn usable(jwk: &Jwk) -> Option<SigningKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    if !matches!(
        jwk.algorithm,
        AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::OctetKeyPair(_)
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Some(Algorithm::try_from(ka).ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    Some(SigningKey { key, alg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_signature_keys_are_kept() {
        let doc = br#"{"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "alg": "ES256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "XYZ", "kid": "odd"}
        ]}"#;
        let (set, skipped) = KeySet::parse(doc).expect("parses");
        assert_eq!((set.len(), skipped), (2, 3));
        assert!(set.find(Some("r1")).is_some_and(|k| k.alg.is_none()));
        assert!(set.find(Some("e1")).is_some_and(|k| k.alg == Some(Algorithm::ES256)));
        assert!(set.find(Some("h1")).is_none(), "an HMAC secret never verifies a token");
        assert!(set.find(Some("enc")).is_none(), "an encryption key never verifies a token");
        assert!(set.find(None).is_none(), "no kid and two keys: ambiguous");
        assert!(KeySet::parse(b"{}").is_err());
    }
}
