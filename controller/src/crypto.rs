//! Secrets at rest and in transit to the database: the master key (AES-256-GCM with the row id as associated
//! data, so a ciphertext cannot be moved to another row), random tokens stored as sha256 hashes, and argon2
//! password hashes.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// Crypto failures. Messages never contain key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Master key not 32 bytes of hex.
    #[error("master key must be 64 hex characters")]
    BadKey,
    /// Ciphertext does not authenticate (wrong key, wrong row, or tampered).
    #[error("decryption failed")]
    Decrypt,
    /// Password hashing failed.
    #[error("password hashing failed")]
    Hash,
}

/// The controller's master key. Debug output never shows it.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(s).map_err(|_| CryptoError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self(cipher))
    }

    /// Encrypts `plaintext` bound to `aad` (the owning row's id). Output: nonce || ciphertext || tag.
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct =
            self.0.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad }).map_err(|_| CryptoError::Decrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`MasterKey::encrypt`] produced for the same `aad`.
    pub fn decrypt(&self, aad: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = data.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
        self.0.decrypt(&Nonce::from(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Decrypt)
    }
}

/// A new random token (32 bytes, URL-safe hex) with a prefix naming its kind, e.g. `dgs_...`.
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// What is stored for a token: its sha256.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Argon2id PHC string of a password.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|_| CryptoError::Hash)
}

/// Whether `password` matches the PHC string. Malformed hashes never match.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_is_bound_to_the_row() {
        let k = MasterKey::from_hex(&"11".repeat(32)).expect("key");
        let ct = k.encrypt(b"row-1", b"s3cret").expect("encrypt");
        assert!(!ct.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(k.decrypt(b"row-1", &ct).expect("decrypt"), b"s3cret");
        assert!(k.decrypt(b"row-2", &ct).is_err(), "another row's id must not decrypt");
        let other = MasterKey::from_hex(&"22".repeat(32)).expect("key");
        assert!(other.decrypt(b"row-1", &ct).is_err(), "another key must not decrypt");
        assert!(MasterKey::from_hex("abcd").is_err());
    }

    #[test]
    fn passwords_and_tokens() {
        let h = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a phc string"));
        let t = new_token("dgs");
        assert!(t.starts_with("dgs_") && t.len() == 68);
        assert_ne!(token_hash(&t), token_hash(&new_token("dgs")));
    }
}
