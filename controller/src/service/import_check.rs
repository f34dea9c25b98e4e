//! Catalog import, the pure part: where a manifest may sit (`<datasource>/<execution>/<attempt>/manifest.json`
//! below the storage's prefix, ids only) and what a manifest read back from a bucket must satisfy before
//! the controller registers it. The manifest is input, not truth: beyond its own sha256 and format (checked
//! by `Manifest::from_bytes`), every field is validated here — ids match the key it was found at, every
//! object key is the one the layout gives for that prefix (so none points outside it), sizes are bounded and
//! add up, checksums are hex sha256, seqs are contiguous from 0, encryption fields come whole, a parallel
//! backup's layout (format 2) is whole and recorded by its binding. Called by the import service
//! ([`super::import`]); no I/O.

use chrono::{DateTime, Utc};
use dg_common::manifest::{self, CIPHER, MANIFEST_FORMAT, Manifest, SINGLE_STREAM_FORMAT};
use uuid::Uuid;

/// Most chunks an imported backup may list (the agent protocol's bound).
pub const MAX_CHUNKS: usize = 1 << 20;
/// Largest stored object (chunk or globals) accepted: the largest chunk size plus sealing overhead.
pub const MAX_OBJECT_BYTES: u64 = (256 << 20) + (64 << 10);
/// Largest manifest object read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Longest free-text field kept (tool and server versions).
const MAX_TEXT: usize = 256;

/// Where a manifest was found: the ids its key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLocation {
    /// Original datasource id (first key segment).
    pub datasource: Uuid,
    /// Backup (execution) id.
    pub execution: Uuid,
    /// Attempt that wrote it.
    pub attempt: u32,
    /// The manifest's key.
    pub key: String,
}

impl ManifestLocation {
    /// The attempt's key prefix.
    pub fn prefix(&self) -> String {
        format!("{}/{}/{}", self.datasource, self.execution, self.attempt)
    }
}

/// The ids a manifest key names, when it is one: exactly `<uuid>/<uuid>/<attempt>/manifest.json`, with the
/// ids in their canonical lowercase form (what agents write), attempt 1 to `i32::MAX`.
pub fn locate(key: &str) -> Option<ManifestLocation> {
    let parts: Vec<&str> = key.split('/').collect();
    let [ds, ex, attempt, "manifest.json"] = parts.as_slice() else { return None };
    let datasource = Uuid::parse_str(ds).ok().filter(|u| u.to_string() == *ds)?;
    let execution = Uuid::parse_str(ex).ok().filter(|u| u.to_string() == *ex)?;
    let attempt: u32 = attempt.parse().ok().filter(|a: &u32| *a >= 1 && i32::try_from(*a).is_ok())?;
    (attempt.to_string() == parts[2]).then(|| ManifestLocation { datasource, execution, attempt, key: key.to_owned() })
}

/// One chunk of a checked manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedChunk {
    /// Position from 0.
    pub seq: i32,
    /// Object key (the layout's, below the manifest's prefix).
    pub key: String,
    /// Stored size.
    pub size: i64,
    /// Hex sha256.
    pub sha256: String,
}

/// A manifest that passed every check: what the catalog records for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedBackup {
    /// Backup id (the original execution id).
    pub id: Uuid,
    /// Attempt.
    pub attempt: i32,
    /// Datasource it was taken from (on the controller that made it).
    pub original_datasource: Uuid,
    /// Manifest key.
    pub manifest_key: String,
    /// When the backup was taken.
    pub created_at: DateTime<Utc>,
    /// Uncompressed bytes.
    pub raw_bytes: i64,
    /// Stored bytes (sum of the chunks).
    pub stored_bytes: i64,
    /// Whole-stream sha256.
    pub sha256: String,
    /// Dump tool version.
    pub tool_version: String,
    /// Server version.
    pub server_version: String,
    /// Chunks in order.
    pub chunks: Vec<CheckedChunk>,
    /// Globals object (key, size, sha256).
    pub globals: Option<(String, i64, String)>,
    /// Encryption key id, when encrypted.
    pub encryption_key_id: Option<String>,
    /// Binding of the wrapped data key (`manifest::wrapped_key_binding`), when encrypted.
    pub wrapped_key_sha256: Option<String>,
    /// Binding of a parallel backup's layout (`manifest::layout_binding`); `None` for a single stream.
    pub layout_sha256: Option<String>,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn size(what: &str, n: u64) -> Result<i64, String> {
    if n == 0 || n > MAX_OBJECT_BYTES {
        return Err(format!("{what}: size {n} is not between 1 and {MAX_OBJECT_BYTES} bytes"));
    }
    i64::try_from(n).map_err(|_| format!("{what}: size {n} is too large"))
}

/// Checks a manifest found at `loc` for a target datasource of engine `engine`; `Err` says what is wrong.
pub fn check_manifest(loc: &ManifestLocation, m: &Manifest, engine: &str) -> Result<CheckedBackup, String> {
    if m.format == 0 || m.format > MANIFEST_FORMAT {
        return Err(format!("format {} is not supported", m.format));
    }
    if m.execution_id != loc.execution.to_string() {
        return Err(format!("execution_id {:?} is not the {} its key names", m.execution_id, loc.execution));
    }
    if m.datasource_id != loc.datasource.to_string() {
        return Err(format!("datasource_id {:?} is not the {} its key names", m.datasource_id, loc.datasource));
    }
    if m.attempt != loc.attempt {
        return Err(format!("attempt {} is not the {} its key names", m.attempt, loc.attempt));
    }
    if m.engine != engine {
        return Err(format!("engine {:?} does not match the target datasource's engine {engine}", m.engine));
    }
    if m.compression != "zstd" {
        return Err(format!("compression {:?} is not zstd", m.compression));
    }
    if !is_sha256(&m.sha256) {
        return Err("sha256: must be 64 lowercase hex characters".into());
    }
    let created_at = DateTime::parse_from_rfc3339(&m.created_at)
        .map_err(|e| format!("created_at {:?} is not an RFC 3339 time: {e}", m.created_at))?
        .with_timezone(&Utc);
    if m.chunks.is_empty() || m.chunks.len() > MAX_CHUNKS {
        return Err(format!("must list 1 to {MAX_CHUNKS} chunks, lists {}", m.chunks.len()));
    }
    let prefix = loc.prefix();
    let mut chunks = Vec::with_capacity(m.chunks.len());
    let mut total: i64 = 0;
    for (i, c) in m.chunks.iter().enumerate() {
        let what = format!("chunk {i}");
        if c.seq as usize != i {
            return Err(format!("{what}: seq {} breaks the order from 0", c.seq));
        }
        if c.key != manifest::chunk_key(&prefix, c.seq) {
            return Err(format!("{what}: key {:?} is not {:?}", c.key, manifest::chunk_key(&prefix, c.seq)));
        }
        if !is_sha256(&c.sha256) {
            return Err(format!("{what}: sha256 must be 64 lowercase hex characters"));
        }
        let n = size(&what, c.size)?;
        total = total.checked_add(n).ok_or_else(|| "stored sizes overflow".to_owned())?;
        chunks.push(CheckedChunk { seq: c.seq as i32, key: c.key.clone(), size: n, sha256: c.sha256.clone() });
    }
    if u64::try_from(total).ok() != Some(m.stored_bytes) {
        return Err(format!("stored_bytes {} is not the chunks' sum {total}", m.stored_bytes));
    }
    let raw_bytes = i64::try_from(m.raw_bytes).map_err(|_| format!("raw_bytes {} is too large", m.raw_bytes))?;
    let globals = match &m.globals {
        None => None,
        Some(g) => {
            if g.key != manifest::globals_key(&prefix) {
                return Err(format!("globals: key {:?} is not {:?}", g.key, manifest::globals_key(&prefix)));
            }
            if !is_sha256(&g.sha256) {
                return Err("globals: sha256 must be 64 lowercase hex characters".into());
            }
            Some((g.key.clone(), size("globals", g.size)?, g.sha256.clone()))
        }
    };
    let (encryption_key_id, wrapped_key_sha256) = match (&m.encryption_key_id, &m.wrapped_key, &m.encryption) {
        (None, None, None) => (None, None),
        (Some(k), Some(w), Some(cipher)) => {
            let key_ok = !k.is_empty()
                && k.len() <= 64
                && !k.starts_with('.')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !key_ok {
                return Err("encryption_key_id: must be 1 to 64 of [A-Za-z0-9._-], not starting with '.'".into());
            }
            if w.is_empty() || w.len() > 1024 || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("wrapped_key: must be 1 to 1024 hex characters".into());
            }
            if cipher != CIPHER {
                return Err(format!("encryption {cipher:?} is not {CIPHER}"));
            }
            (Some(k.clone()), Some(manifest::wrapped_key_binding(w)))
        }
        _ => return Err("encryption_key_id, wrapped_key and encryption must be all present or all absent".into()),
    };
    // `Manifest::from_bytes` checks the same; repeated so this check holds for any manifest it is given.
    let layout_sha256 = match (&m.layout, m.format) {
        (None, SINGLE_STREAM_FORMAT) => None,
        (None, f) => return Err(format!("format {f} needs a layout")),
        (Some(_), SINGLE_STREAM_FORMAT) => return Err(format!("a layout in a format {SINGLE_STREAM_FORMAT} manifest")),
        (Some(l), _) => {
            l.check(m.chunks.len()).map_err(|e| format!("layout: {e}"))?;
            if m.engine != "postgres" {
                return Err(format!("layout: a parallel backup of engine {:?}; only PostgreSQL has one", m.engine));
            }
            Some(manifest::layout_binding(l))
        }
    };
    let text = |s: &str| s.chars().filter(|c| !c.is_control()).take(MAX_TEXT).collect::<String>();
    Ok(CheckedBackup {
        id: loc.execution,
        attempt: i32::try_from(loc.attempt).map_err(|_| "attempt is too large".to_owned())?,
        original_datasource: loc.datasource,
        manifest_key: loc.key.clone(),
        created_at,
        raw_bytes,
        stored_bytes: total,
        sha256: m.sha256.clone(),
        tool_version: text(&m.tool_version),
        server_version: text(&m.server_version),
        chunks,
        globals,
        encryption_key_id,
        wrapped_key_sha256,
        layout_sha256,
    })
}

#[cfg(test)]
mod tests {
    use dg_common::manifest::{Layout, ManifestChunk, ManifestObject, POSTGRES_PARALLEL};

    use super::*;

    fn loc() -> ManifestLocation {
        let (d, e) = (Uuid::now_v7(), Uuid::now_v7());
        locate(&format!("{d}/{e}/2/manifest.json")).expect("a manifest key")
    }

    fn good(l: &ManifestLocation) -> Manifest {
        let p = l.prefix();
        Manifest {
            format: SINGLE_STREAM_FORMAT,
            execution_id: l.execution.to_string(),
            attempt: l.attempt,
            datasource_id: l.datasource.to_string(),
            engine: "postgres".into(),
            tool_version: "pg_dump 15".into(),
            server_version: "15.8".into(),
            options: vec![],
            created_at: "2026-12-01T10:00:00Z".into(),
            compression: "zstd".into(),
            compression_level: 3,
            raw_bytes: 10,
            stored_bytes: 30,
            sha256: "a".repeat(64),
            chunks: (0..3)
                .map(|s| ManifestChunk { seq: s, key: manifest::chunk_key(&p, s), size: 10, sha256: "b".repeat(64) })
                .collect(),
            encryption_key_id: None,
            wrapped_key: None,
            encryption: None,
            globals: None,
            layout: None,
        }
    }

    #[test]
    fn only_layout_keys_locate_a_manifest() {
        let (d, e) = (Uuid::now_v7(), Uuid::now_v7());
        let l = locate(&format!("{d}/{e}/1/manifest.json")).expect("located");
        assert_eq!((l.datasource, l.execution, l.attempt), (d, e, 1));
        assert_eq!(l.prefix(), format!("{d}/{e}/1"));
        for bad in [
            format!("{d}/{e}/0/manifest.json"),
            format!("{d}/{e}/01/manifest.json"),
            format!("{d}/{e}/x/manifest.json"),
            format!("{d}/{e}/1/other.json"),
            format!("x/{d}/{e}/1/manifest.json"),
            format!("{d}/not-a-uuid/1/manifest.json"),
            format!("{}/{e}/1/manifest.json", d.to_string().to_uppercase()),
            format!("{d}/{e}/4294967295/manifest.json"),
            "manifest.json".to_owned(),
        ] {
            assert_eq!(locate(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_good_manifest_is_recorded_as_written() {
        let l = loc();
        let c = check_manifest(&l, &good(&l), "postgres").expect("good");
        assert_eq!((c.id, c.attempt, c.original_datasource), (l.execution, 2, l.datasource));
        assert_eq!((c.stored_bytes, c.raw_bytes, c.chunks.len()), (30, 10, 3));
        assert_eq!(c.chunks[2].key, format!("{}/00000002.zst", l.prefix()));
        assert_eq!(c.created_at.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!((c.encryption_key_id, c.wrapped_key_sha256, c.globals), (None, None, None));

        let mut enc = good(&l);
        enc.encryption_key_id = Some("k1".into());
        enc.wrapped_key = Some("abcd".into());
        enc.encryption = Some(CIPHER.into());
        enc.globals = Some(ManifestObject { key: manifest::globals_key(&l.prefix()), size: 5, sha256: "c".repeat(64) });
        let c = check_manifest(&l, &enc, "postgres").expect("encrypted");
        assert_eq!(c.encryption_key_id.as_deref(), Some("k1"));
        assert_eq!(c.wrapped_key_sha256, Some(manifest::wrapped_key_binding("abcd")));
        assert_eq!(c.globals.map(|g| g.1), Some(5));
    }

    /// A parallel backup's manifest: four chunks, one per stream. The layout is given as the JSON a manifest
    /// holds, so fields the layout gains with a default do not change this test.
    fn parallel(l: &ManifestLocation) -> Manifest {
        let stream = |role: &str, chunk: u32, raw_bytes: u64, segments: serde_json::Value| {
            serde_json::json!({
                "role": role, "chunks": [chunk], "raw_bytes": raw_bytes, "sha256": "d".repeat(64),
                "segments": segments,
            })
        };
        let segment = serde_json::json!({
            "schema": "public", "table": "t", "columns": ["id", "v"], "raw_bytes": 4, "rows": 2,
        });
        let layout: Layout = serde_json::from_value(serde_json::json!({
            "kind": POSTGRES_PARALLEL,
            "workers": 1,
            "snapshot": "00000003-00000002-1",
            "encoding": "UTF8",
            "streams": [
                stream("pre-data", 0, 3, serde_json::json!([])),
                stream("data", 1, 4, serde_json::json!([segment])),
                stream("data-objects", 2, 3, serde_json::json!([])),
                stream("post-data", 3, 3, serde_json::json!([])),
            ],
        }))
        .expect("a layout as a manifest holds it");
        let p = l.prefix();
        Manifest {
            format: MANIFEST_FORMAT,
            chunks: (0..4)
                .map(|s| ManifestChunk { seq: s, key: manifest::chunk_key(&p, s), size: 10, sha256: "b".repeat(64) })
                .collect(),
            stored_bytes: 40,
            layout: Some(layout),
            ..good(l)
        }
    }

    #[test]
    fn a_parallel_manifest_is_recorded_with_its_layout_binding() {
        let l = loc();
        let m = parallel(&l);
        let c = check_manifest(&l, &m, "postgres").expect("a whole layout");
        assert_eq!(c.layout_sha256, m.layout.as_ref().map(manifest::layout_binding));
        assert_eq!(c.layout_sha256.as_deref().map(str::len), Some(64));
        assert_eq!(check_manifest(&l, &good(&l), "postgres").expect("single").layout_sha256, None);

        type Tweak = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (Box::new(|m| m.layout = None), "needs a layout"),
            (Box::new(|m| m.format = SINGLE_STREAM_FORMAT), "a layout in a format 1"),
            (Box::new(|m| m.layout.as_mut().map_or((), |l| l.streams[1].chunks = vec![3])), "layout:"),
            (Box::new(|m| m.layout.as_mut().map_or((), |l| l.kind = "other".into())), "layout:"),
            (Box::new(|m| m.engine = "mysql".into()), "engine"),
        ];
        for (tweak, why) in cases {
            let mut m = parallel(&l);
            tweak(&mut m);
            let engine = m.engine.clone();
            let e = check_manifest(&l, &m, &engine).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn every_field_is_checked() {
        let l = loc();
        type Tweak = Box<dyn Fn(&mut Manifest)>;
        let other = Uuid::now_v7().to_string();
        let outside = format!("{other}/x/1/00000000.zst");
        let cases: Vec<(Tweak, &str)> = vec![
            (Box::new(|m| m.format = 0), "format"),
            (Box::new(|m| m.format = MANIFEST_FORMAT + 1), "format"),
            (Box::new(move |m| m.execution_id = other.clone()), "execution_id"),
            (Box::new(|m| m.datasource_id = "x".into()), "datasource_id"),
            (Box::new(|m| m.attempt = 1), "attempt"),
            (Box::new(|m| m.engine = "mysql".into()), "engine"),
            (Box::new(|m| m.compression = "gzip".into()), "compression"),
            (Box::new(|m| m.sha256 = "A".repeat(64)), "sha256"),
            (Box::new(|m| m.created_at = "yesterday".into()), "created_at"),
            (Box::new(|m| m.chunks.clear()), "1 to"),
            (Box::new(|m| m.chunks.swap(0, 1)), "seq"),
            (Box::new(|m| m.chunks[1].seq = 5), "seq"),
            (Box::new(move |m| m.chunks[0].key = outside.clone()), "key"),
            (Box::new(|m| m.chunks[0].key = "../../etc/passwd".into()), "key"),
            (Box::new(|m| m.chunks[1].sha256 = "zz".into()), "chunk 1: sha256"),
            (Box::new(|m| m.chunks[1].size = 0), "chunk 1: size"),
            (Box::new(|m| m.chunks[1].size = MAX_OBJECT_BYTES + 1), "chunk 1: size"),
            (Box::new(|m| m.stored_bytes = 31), "stored_bytes"),
            (Box::new(|m| m.raw_bytes = u64::MAX), "raw_bytes"),
            (
                Box::new(|m| m.globals = Some(ManifestObject { key: "g".into(), size: 1, sha256: "c".repeat(64) })),
                "globals: key",
            ),
            (Box::new(|m| m.encryption_key_id = Some("k".into())), "all present"),
            (
                Box::new(|m| {
                    (m.encryption_key_id, m.wrapped_key, m.encryption) =
                        (Some("k".into()), Some("not hex".into()), Some(CIPHER.into()))
                }),
                "wrapped_key",
            ),
            (
                Box::new(|m| {
                    (m.encryption_key_id, m.wrapped_key, m.encryption) =
                        (Some("../k".into()), Some("ab".into()), Some(CIPHER.into()))
                }),
                "encryption_key_id",
            ),
            (
                Box::new(|m| {
                    (m.encryption_key_id, m.wrapped_key, m.encryption) =
                        (Some("k".into()), Some("ab".into()), Some("ROT13".into()))
                }),
                "encryption",
            ),
        ];
        for (tweak, why) in cases {
            let mut m = good(&l);
            tweak(&mut m);
            let e = check_manifest(&l, &m, "postgres").expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
