//! The backup manifest and the object key layout. The manifest is the last object written for a backup: it
//! lists every chunk with its size and sha256, the engine and tool versions, and carries a sha256 of its own
//! body, so a backup can be verified and restored without the controller's database.
//!
//! Keys are built from ids only: `<datasource>/<execution>/<attempt>/<seq>.zst` and
//! `<datasource>/<execution>/<attempt>/manifest.json`, below the storage's own root or prefix.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::ids::{DatasourceId, ExecutionId};

/// Current manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// The cipher encrypted chunks are sealed with (the manifest's `encryption`).
pub const CIPHER: &str = "AES-256-GCM";

/// The key prefix of one attempt of one backup.
pub fn attempt_prefix(datasource: DatasourceId, execution: ExecutionId, attempt: u32) -> String {
    format!("{datasource}/{execution}/{attempt}")
}

/// The key of chunk `seq` below an attempt prefix.
pub fn chunk_key(prefix: &str, seq: u32) -> String {
    format!("{prefix}/{seq:08}.zst")
}

/// The key of the PostgreSQL globals object below an attempt prefix.
pub fn globals_key(prefix: &str) -> String {
    format!("{prefix}/globals.sql.zst")
}

/// The key of the manifest below an attempt prefix.
pub fn manifest_key(prefix: &str) -> String {
    format!("{prefix}/manifest.json")
}

/// The binding of a wrapped data key that the controller records: hex sha256 of the manifest's
/// `wrapped_key` text exactly as written.
pub fn wrapped_key_binding(wrapped_hex: &str) -> String {
    hex::encode(Sha256::digest(wrapped_hex.as_bytes()))
}

/// One chunk as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestChunk {
    /// Position from 0.
    pub seq: u32,
    /// Object key.
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    /// Hex sha256 of the stored bytes.
    pub sha256: String,
}

/// A single extra object of a backup (e.g. the PostgreSQL globals).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// Object key.
    pub key: String,
    /// Stored size.
    pub size: u64,
    /// Hex sha256 of the stored bytes.
    pub sha256: String,
}

/// Everything needed to check and restore a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// Backup (execution) id.
    pub execution_id: String,
    /// Attempt that produced it.
    pub attempt: u32,
    /// Datasource it was taken from.
    pub datasource_id: String,
    /// "postgres", "mysql" or "mariadb".
    pub engine: String,
    /// Dump tool and version.
    pub tool_version: String,
    /// Server version reported by the database.
    pub server_version: String,
    /// Dump options that matter for restore (e.g. "format=custom").
    pub options: Vec<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Always "zstd".
    pub compression: String,
    /// zstd level used.
    pub compression_level: i32,
    /// Uncompressed bytes.
    pub raw_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Hex sha256 of the whole stored stream (all chunks concatenated in order).
    pub sha256: String,
    /// Chunks in order.
    pub chunks: Vec<ManifestChunk>,
    /// Key id of the data-encryption key wrapper, when the chunks are encrypted.
    pub encryption_key_id: Option<String>,
    /// The backup's data key, wrapped by that key (hex; AES-256-GCM with the backup id as associated data).
    #[serde(default)]
    pub wrapped_key: Option<String>,
    /// Cipher of the chunks ("AES-256-GCM"), when encrypted.
    #[serde(default)]
    pub encryption: Option<String>,
    /// PostgreSQL globals (roles without passwords, tablespaces), zstd-compressed SQL, sealed like a chunk
    /// at position `u32::MAX` when encrypted.
    #[serde(default)]
    pub globals: Option<ManifestObject>,
}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
    body_sha256: String,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest is malformed: {0}")]
    Malformed(String),
    /// The self-checksum does not match the body.
    #[error("manifest checksum mismatch")]
    ChecksumMismatch,
    /// Written by a newer format.
    #[error("manifest format {0} is not supported")]
    UnsupportedFormat(u32),
}

impl Manifest {
    /// Serialises the manifest with a sha256 of its exact body bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a plain struct of strings and numbers cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        let body_sha256 = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{{\"body\":{body},\"body_sha256\":\"{body_sha256}\"}}\n").into_bytes()
    }

    /// Parses and checks a manifest written by [`Manifest::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if hex::encode(Sha256::digest(env.body.get().as_bytes())) != env.body_sha256 {
            return Err(ManifestError::ChecksumMismatch);
        }
        let m: Manifest = serde_json::from_str(env.body.get()).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if m.format > MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat(m.format));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        let chunk = (any::<u32>(), "[a-z0-9/._-]{1,40}", any::<u64>(), "[0-9a-f]{64}")
            .prop_map(|(seq, key, size, sha256)| ManifestChunk { seq, key, size, sha256 });
        (
            (any::<u32>(), "\\PC{0,40}", "\\PC{0,40}", "\\PC{0,40}"),
            (proptest::collection::vec("\\PC{0,20}", 0..4), -5i32..25, any::<u64>(), any::<u64>()),
            (proptest::collection::vec(chunk, 0..20), proptest::option::of("[a-z0-9.-]{1,20}")),
        )
            .prop_map(|((attempt, tool, server, created), (options, level, raw, stored), (chunks, key))| {
                Manifest {
                    format: MANIFEST_FORMAT,
                    execution_id: ExecutionId::new().to_string(),
                    attempt,
                    datasource_id: DatasourceId::new().to_string(),
                    engine: "mariadb".into(),
                    tool_version: tool,
                    server_version: server,
                    options,
                    created_at: created,
                    compression: "zstd".into(),
                    compression_level: level,
                    raw_bytes: raw,
                    stored_bytes: stored,
                    sha256: "0".repeat(64),
                    chunks,
                    encryption: key.as_ref().map(|_| "AES-256-GCM".into()),
                    wrapped_key: key.as_ref().map(|_| "ab".repeat(30)),
                    encryption_key_id: key,
                    globals: None,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Any manifest (unicode text, many chunks, encrypted or not) reads back equal; flipping any one byte
        /// of what was written, or cutting it short, never yields a manifest that differs from the original.
        #[test]
        fn manifest_round_trip_and_any_damage_is_refused(m in arb_manifest(), pos in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
            let bytes = m.to_bytes();
            prop_assert_eq!(Manifest::from_bytes(&bytes).expect("valid"), m.clone());
            let mut flipped = bytes.clone();
            let i = pos.index(flipped.len());
            flipped[i] ^= 0x01;
            if let Ok(back) = Manifest::from_bytes(&flipped) {
                prop_assert_eq!(back, m.clone(), "a flip that still parses must be insignificant (whitespace)");
            }
            // Cut at least the closing brace (the trailing newline alone is whitespace).
            let short = &bytes[..cut.index(bytes.len() - 1)];
            prop_assert!(Manifest::from_bytes(short).is_err(), "a truncated manifest is refused");
        }
    }

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            execution_id: ExecutionId::new().to_string(),
            attempt: 1,
            datasource_id: DatasourceId::new().to_string(),
            engine: "postgres".into(),
            tool_version: "pg_dump 15.19".into(),
            server_version: "15.19".into(),
            options: vec!["format=custom".into()],
            created_at: "2026-11-27T00:00:00Z".into(),
            compression: "zstd".into(),
            compression_level: 3,
            raw_bytes: 10,
            stored_bytes: 5,
            sha256: "ab".into(),
            chunks: vec![ManifestChunk { seq: 0, key: "k".into(), size: 5, sha256: "ab".into() }],
            encryption_key_id: None,
            wrapped_key: None,
            encryption: None,
            globals: None,
        }
    }

    #[test]
    fn round_trips_and_detects_tampering() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).expect("valid"), m);
        let tampered = String::from_utf8(bytes).expect("utf8").replace("\"size\":5", "\"size\":6");
        assert!(matches!(Manifest::from_bytes(tampered.as_bytes()), Err(ManifestError::ChecksumMismatch)));
        assert!(matches!(Manifest::from_bytes(b"{}"), Err(ManifestError::Malformed(_))));
    }

    #[test]
    fn keys_are_built_from_ids_only() {
        let ds = DatasourceId::new();
        let ex = ExecutionId::new();
        let p = attempt_prefix(ds, ex, 2);
        assert_eq!(chunk_key(&p, 7), format!("{ds}/{ex}/2/00000007.zst"));
        assert_eq!(manifest_key(&p), format!("{ds}/{ex}/2/manifest.json"));
    }
}
