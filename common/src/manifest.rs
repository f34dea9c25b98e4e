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

/// Newest manifest format this build reads: 2, a parallel backup (one with a [`Layout`]).
pub const MANIFEST_FORMAT: u32 = 2;
/// Format of a single-stream backup's manifest (unchanged since the first release, so older agents read it).
pub const SINGLE_STREAM_FORMAT: u32 = 1;
/// [`Layout::kind`] of a parallel PostgreSQL backup.
pub const POSTGRES_PARALLEL: &str = "postgres-parallel";

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
    /// A parallel backup's streams (format 2); absent for a single stream, whose manifest is written exactly
    /// as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

/// How a parallel backup's chunks make up its streams. Every chunk belongs to exactly one stream; each
/// stream is one zstd stream over its chunks in the listed order. The controller records
/// [`layout_binding`] of it, so a layout rewritten in the bucket is refused like a rewritten chunk list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// [`POSTGRES_PARALLEL`].
    pub kind: String,
    /// Data streams the backup was written with.
    pub workers: u32,
    /// The exported snapshot every stream read (informational).
    pub snapshot: String,
    /// The source database's encoding, which the `COPY` text is in.
    pub encoding: String,
    /// Streams: one pre-data, the data streams, one data-objects, one post-data.
    pub streams: Vec<Stream>,
    /// Every sequence's value, read after the snapshot was exported (as `pg_dump` reads them: sequences are
    /// not transactional, so a value is never behind the rows the snapshot holds).
    #[serde(default)]
    pub sequences: Vec<SequenceValue>,
}

/// A sequence's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// Schema.
    pub schema: String,
    /// Sequence.
    pub name: String,
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
}

/// What a stream holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamRole {
    /// `pg_dump --section=pre-data` in custom format: the schema before the data.
    PreData,
    /// Table data: `COPY … TO STDOUT` text output of its segments, one after another.
    Data,
    /// `pg_dump --section=data` without any table's or sequence's data: the large objects.
    DataObjects,
    /// `pg_dump --section=post-data` in custom format: indexes, constraints, triggers…
    PostData,
}

/// One stream of a parallel backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// What it holds.
    pub role: StreamRole,
    /// Its chunks' positions, in stream order.
    pub chunks: Vec<u32>,
    /// Uncompressed bytes.
    pub raw_bytes: u64,
    /// Hex sha256 of its stored bytes (its chunks in stream order).
    pub sha256: String,
    /// A data stream's parts, in order; empty for the other roles.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

/// One table's data, or one page range of it, inside a data stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Columns copied, in order (generated columns are not; none for a table without columns).
    pub columns: Vec<String>,
    /// Heap pages read (`[from, to)` by ctid; `to` absent: to the end); absent: the whole table.
    #[serde(default)]
    pub pages: Option<PageRange>,
    /// Uncompressed `COPY` text bytes.
    pub raw_bytes: u64,
    /// Rows (lines of the `COPY` text).
    pub rows: u64,
}

/// A ctid page range `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRange {
    /// First page.
    pub from: u64,
    /// Page after the last; `None`: to the end of the table.
    pub to: Option<u64>,
}

/// The binding of a layout that the controller records: hex sha256 of its JSON as written.
pub fn layout_binding(layout: &Layout) -> String {
    // Serialising a plain struct of strings and numbers cannot fail.
    hex::encode(Sha256::digest(serde_json::to_string(layout).unwrap_or_default().as_bytes()))
}

/// Most characters of a schema, table or column name (PostgreSQL's are at most 63 bytes).
const MAX_NAME: usize = 256;

impl Layout {
    /// The layout is whole for a backup of `chunk_count` chunks: one pre-data, one data-objects and one
    /// post-data stream and at least one data stream, every chunk in exactly one stream, segments only in data streams and adding up to
    /// their stream, names non-empty and without NUL. `Err` names the first problem.
    pub fn check(&self, chunk_count: usize) -> Result<(), String> {
        if self.kind != POSTGRES_PARALLEL {
            return Err(format!("layout kind {:?} is not supported", self.kind));
        }
        let e = &self.encoding;
        if e.is_empty() || e.len() > 32 || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("layout encoding {e:?} is not an encoding name"));
        }
        let count = |r: StreamRole| self.streams.iter().filter(|s| s.role == r).count();
        let schema = [StreamRole::PreData, StreamRole::DataObjects, StreamRole::PostData];
        if schema.into_iter().any(|r| count(r) != 1) || count(StreamRole::Data) == 0 {
            return Err("layout needs one pre-data, one data-objects and one post-data stream and at least one data \
                        stream"
                .into());
        }
        let mut seen = vec![false; chunk_count];
        for (i, s) in self.streams.iter().enumerate() {
            if s.chunks.is_empty() {
                return Err(format!("layout stream {i} has no chunk"));
            }
            for &c in &s.chunks {
                match seen.get_mut(c as usize) {
                    None => return Err(format!("layout stream {i} names chunk {c}, beyond the {chunk_count} chunks")),
                    Some(true) => return Err(format!("layout names chunk {c} twice")),
                    Some(seen) => *seen = true,
                }
            }
            if s.role != StreamRole::Data && !s.segments.is_empty() {
                return Err(format!("layout stream {i} is not a data stream but has segments"));
            }
            let sum = s.segments.iter().try_fold(0u64, |a, g| a.checked_add(g.raw_bytes));
            if s.role == StreamRole::Data && sum != Some(s.raw_bytes) {
                return Err(format!("layout stream {i}: its segments do not add up to its {} bytes", s.raw_bytes));
            }
            for g in &s.segments {
                let names = [&g.schema, &g.table].into_iter().chain(&g.columns);
                for n in names {
                    if n.is_empty() || n.len() > MAX_NAME || n.contains('\0') {
                        return Err(format!("layout stream {i}: name {n:?} is empty, too long or holds NUL"));
                    }
                }
            }
        }
        for q in &self.sequences {
            for n in [&q.schema, &q.name] {
                if n.is_empty() || n.len() > MAX_NAME || n.contains('\0') {
                    return Err(format!("layout sequence name {n:?} is empty, too long or holds NUL"));
                }
            }
        }
        if let Some(c) = seen.iter().position(|s| !s) {
            return Err(format!("layout leaves chunk {c} out of every stream"));
        }
        Ok(())
    }
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
        match (&m.layout, m.format >= MANIFEST_FORMAT) {
            (None, true) => return Err(ManifestError::Malformed("format 2 without a layout".into())),
            (Some(_), false) => return Err(ManifestError::Malformed("a layout in a format 1 manifest".into())),
            (Some(l), true) => l.check(m.chunks.len()).map_err(ManifestError::Malformed)?,
            (None, false) => {}
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
                    format: SINGLE_STREAM_FORMAT,
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
                    layout: None,
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
            format: SINGLE_STREAM_FORMAT,
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
            layout: None,
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
