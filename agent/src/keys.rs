//! Encryption at rest. An agent holds key-encryption keys (KEKs) in `<state dir>/keys/<id>.key` (32 random
//! bytes, hex, mode 0600), made with `dg-agent keygen`. Each encrypted backup gets a fresh 256-bit data key
//! (DEK); every chunk is sealed with AES-256-GCM under the DEK (random 96-bit nonce, the chunk's position as
//! associated data, stored as `nonce || ciphertext || tag`), and the DEK is stored in the manifest wrapped by
//! the KEK (AES-256-GCM, the backup id as associated data). The controller never sees a key or plaintext.
//! Restoring on another agent needs the same key file copied into that agent's `keys/` directory.

use std::path::{Path, PathBuf};

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use rand::RngCore;

use crate::error::{PipelineError, PipelineResult};

const NONCE: usize = 12;

/// Where keys live.
pub fn keys_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("keys")
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Creates a new key file; refuses to overwrite one.
pub fn generate(dir: &Path, id: &str) -> std::io::Result<PathBuf> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if !valid_id(id) {
        return Err(std::io::Error::other("key id must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'"));
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{id}.key"));
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    writeln!(f, "{}", hex::encode(key))?;
    f.sync_all()?;
    Ok(path)
}

fn load(dir: &Path, id: &str) -> PipelineResult<Aes256Gcm> {
    if !valid_id(id) {
        return Err(PipelineError::Invalid(format!("invalid encryption key id \"{id}\"")));
    }
    let path = dir.join(format!("{id}.key"));
    let text = std::fs::read_to_string(&path).map_err(|_| {
        PipelineError::Invalid(format!(
            "encryption key \"{id}\" is not available on this agent (expected {}; copy it from the agent that \
             holds it, mode 0600)",
            path.display()
        ))
    })?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| PipelineError::Invalid(format!("key file of \"{id}\" is not hex")))?;
    Aes256Gcm::new_from_slice(&bytes).map_err(|_| PipelineError::Invalid(format!("key \"{id}\" is not 32 bytes")))
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    // Encryption with a valid key and in-memory buffers cannot fail.
    let ct = cipher.encrypt(&Nonce::from(nonce), Payload { msg: plain, aad }).unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    let nonce: [u8; NONCE] = nonce.try_into().ok()?;
    cipher.decrypt(&Nonce::from(nonce), Payload { msg: ct, aad }).ok()
}

/// The per-backup data key.
pub struct ChunkCipher {
    dek: Aes256Gcm,
}

impl ChunkCipher {
    /// A fresh data key for backup `backup_id`, and its wrapped form (hex) for the manifest.
    pub fn create(dir: &Path, key_id: &str, backup_id: &str) -> PipelineResult<(Self, String)> {
        let kek = load(dir, key_id)?;
        let mut dek = [0u8; 32];
        rand::rng().fill_bytes(&mut dek);
        let wrapped = hex::encode(seal(&kek, backup_id.as_bytes(), &dek));
        let dek = Aes256Gcm::new_from_slice(&dek).map_err(|_| PipelineError::Invalid("data key".into()))?;
        Ok((Self { dek }, wrapped))
    }

    /// Unwraps a backup's data key with the agent-held key.
    pub fn open(dir: &Path, key_id: &str, backup_id: &str, wrapped_hex: &str) -> PipelineResult<Self> {
        let kek = load(dir, key_id)?;
        let wrapped =
            hex::decode(wrapped_hex).map_err(|_| PipelineError::Integrity("wrapped data key is not hex".into()))?;
        let dek = open(&kek, backup_id.as_bytes(), &wrapped).ok_or_else(|| {
            PipelineError::Integrity(format!("key \"{key_id}\" does not unwrap this backup's data key (wrong key?)"))
        })?;
        let dek = Aes256Gcm::new_from_slice(&dek).map_err(|_| PipelineError::Integrity("data key".into()))?;
        Ok(Self { dek })
    }

    /// Seals chunk `seq`.
    pub fn seal(&self, seq: u32, plain: &[u8]) -> Vec<u8> {
        seal(&self.dek, &seq.to_be_bytes(), plain)
    }

    /// Opens chunk `seq`.
    pub fn open_chunk(&self, seq: u32, sealed: &[u8]) -> PipelineResult<Vec<u8>> {
        open(&self.dek, &seq.to_be_bytes(), sealed)
            .ok_or_else(|| PipelineError::Integrity(format!("chunk {seq} does not decrypt with the backup's data key")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_binding_and_missing_keys() {
        let dir = tempfile::tempdir().expect("dir");
        generate(dir.path(), "k1").expect("gen");
        assert!(generate(dir.path(), "k1").is_err(), "never overwrites");
        assert!(generate(dir.path(), "../x").is_err());
        let (c, wrapped) = ChunkCipher::create(dir.path(), "k1", "backup-1").expect("create");
        let sealed = c.seal(3, b"hello chunk");
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let again = ChunkCipher::open(dir.path(), "k1", "backup-1", &wrapped).expect("open");
        assert_eq!(again.open_chunk(3, &sealed).expect("decrypt"), b"hello chunk");
        assert!(again.open_chunk(4, &sealed).is_err(), "position is authenticated");
        assert!(ChunkCipher::open(dir.path(), "k1", "backup-2", &wrapped).is_err(), "bound to the backup");
        generate(dir.path(), "k2").expect("gen");
        assert!(ChunkCipher::open(dir.path(), "k2", "backup-1", &wrapped).is_err(), "other key");
        let missing = ChunkCipher::open(dir.path(), "nope", "backup-1", &wrapped).err().expect("missing");
        assert!(missing.to_string().contains("not available on this agent"));
    }
}
