//! What a restore trusts: the controller's record, never the manifest read back from storage. Anyone able
//! to write to a bucket can rewrite a manifest and recompute its (unkeyed) self-checksum, so the manifest is
//! only compared with what the restore plan carries ([`check_manifest`]), before the target is touched: the
//! chunk list and stream sha256, the globals object (key, size, sha256) and the encryption (key id and the
//! wrapped data key's sha256). Any disagreement fails the restore, naming it. Pure: the restore pipeline
//! reads the manifest and calls this.
//!
//! A backup recorded before the controller recorded globals and encryption (`recorded: None`) is restored
//! from its recorded chunks only; its globals are never replayed ([`check_manifest`] refuses
//! `restore_globals`), and its encryption parameters come from the manifest (the chunks are pinned by their
//! recorded sha256, so a rewritten key id or wrapped key can only make the restore fail, not change data).

use dg_common::{
    manifest::{self, CIPHER, Manifest},
    protocol::{ChunkRef, RecordedBackup, RestorePlan},
};

/// The manifest agrees with the plan: `Err` names the first disagreement.
pub fn check_manifest(plan: &RestorePlan, m: &Manifest) -> Result<(), String> {
    check_against_record(
        Record {
            chunks: &plan.chunks,
            sha256: &plan.sha256,
            recorded: plan.recorded.as_ref(),
            restore_globals: plan.restore_globals,
        },
        m,
    )
}

/// What the controller recorded about a backup, as a restore or verify plan carries it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The chunks of the copy, in order.
    pub chunks: &'a [ChunkRef],
    /// Whole-stream sha256.
    pub sha256: &'a str,
    /// Globals and encryption; `None` for a backup recorded before agent protocol 4.
    pub recorded: Option<&'a RecordedBackup>,
    /// The globals are to be replayed (restores only).
    pub restore_globals: bool,
}

/// The manifest agrees with the record: `Err` names the first disagreement (shared by restore and verify).
pub fn check_against_record(plan: Record<'_>, m: &Manifest) -> Result<(), String> {
    let differs = |what: &str, manifest: &dyn std::fmt::Display, recorded: &dyn std::fmt::Display| {
        Err(format!(
            "the manifest disagrees with the controller's record: {what} (manifest: {manifest}, recorded: {recorded})"
        ))
    };
    if m.chunks.len() != plan.chunks.len() {
        return differs("chunk count", &m.chunks.len(), &plan.chunks.len());
    }
    for (mc, pc) in m.chunks.iter().zip(plan.chunks) {
        if mc.seq != pc.seq || mc.key != pc.key {
            return differs(&format!("chunk {} key", pc.seq), &mc.key, &pc.key);
        }
        if mc.size != pc.size {
            return differs(&format!("chunk {} size", pc.seq), &mc.size, &pc.size);
        }
        if !mc.sha256.eq_ignore_ascii_case(&pc.sha256) {
            return differs(&format!("chunk {} sha256", pc.seq), &mc.sha256, &pc.sha256);
        }
    }
    if !m.sha256.eq_ignore_ascii_case(plan.sha256) {
        return differs("stream sha256", &m.sha256, &plan.sha256);
    }
    let Some(RecordedBackup { globals, encryption, layout_sha256 }) = plan.recorded else {
        if m.layout.is_some() {
            return differs("layout", &"parallel streams", &"one stream (recorded before parallel backups)");
        }
        if plan.restore_globals {
            return Err("restore_globals: this backup was recorded before the controller recorded its globals; \
                        they are not replayed (restore without restore_globals)"
                .into());
        }
        return Ok(());
    };
    match (&m.globals, globals) {
        (None, None) => {}
        (Some(mg), None) => return differs("globals", &mg.key, &"none"),
        (None, Some(rg)) => return differs("globals", &"none", &rg.key),
        (Some(mg), Some(rg)) => {
            if mg.key != rg.key {
                return differs("globals key", &mg.key, &rg.key);
            }
            if mg.size != rg.size {
                return differs("globals size", &mg.size, &rg.size);
            }
            if !mg.sha256.eq_ignore_ascii_case(&rg.sha256) {
                return differs("globals sha256", &mg.sha256, &rg.sha256);
            }
        }
    }
    match encryption {
        None => {
            let (key_id, wrapped, cipher) = (&m.encryption_key_id, &m.wrapped_key, &m.encryption);
            if key_id.is_some() || wrapped.is_some() || cipher.is_some() {
                return differs("encryption", &key_id.as_deref().unwrap_or("a wrapped key"), &"not encrypted");
            }
        }
        Some(re) => {
            let (Some(key_id), Some(wrapped)) = (&m.encryption_key_id, &m.wrapped_key) else {
                return differs("encryption", &"not encrypted", &format!("key \"{}\"", re.key_id));
            };
            if *key_id != re.key_id {
                return differs("encryption key id", key_id, &re.key_id);
            }
            let binding = manifest::wrapped_key_binding(wrapped);
            if !binding.eq_ignore_ascii_case(&re.wrapped_key_sha256) {
                return differs("wrapped data key sha256", &binding, &re.wrapped_key_sha256);
            }
            if m.encryption.as_deref() != Some(CIPHER) {
                return differs("cipher", &m.encryption.as_deref().unwrap_or("none"), &CIPHER);
            }
        }
    }
    match (&m.layout, layout_sha256) {
        (None, None) => {}
        (Some(_), None) => return differs("layout", &"parallel streams", &"one stream"),
        (None, Some(_)) => return differs("layout", &"one stream", &"parallel streams"),
        (Some(l), Some(recorded)) => {
            let binding = manifest::layout_binding(l);
            if !binding.eq_ignore_ascii_case(recorded) {
                return differs("layout sha256", &binding, recorded);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dg_common::{
        ids::StorageId,
        manifest::{ManifestChunk, ManifestObject, SINGLE_STREAM_FORMAT},
        protocol::{
            ChunkRef, DatabaseTarget, Engine, RecordedEncryption, StorageTarget, StoredObject, TargetDatabasePlan,
            TlsMode,
        },
        store::StoreConfig,
    };

    use super::*;

    fn sha(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// A change made to a manifest in the bucket.
    type Tamper = Box<dyn Fn(&mut Manifest)>;

    const WRAPPED: &str = "00112233445566778899aabbccddeeff";

    /// A plan and the manifest the backup wrote, agreeing: encrypted, with globals, three chunks.
    fn agreeing() -> (RestorePlan, Manifest) {
        let chunks: Vec<ChunkRef> = (0..3)
            .map(|seq| ChunkRef {
                seq,
                key: format!("d/e/1/{seq:08}.zst"),
                size: 10 + u64::from(seq),
                sha256: sha('a'),
            })
            .collect();
        let globals = StoredObject { key: "d/e/1/globals.sql.zst".into(), size: 42, sha256: sha('g') };
        let plan = RestorePlan {
            target: DatabaseTarget {
                engine: Engine::Postgres,
                host: "db".into(),
                port: 5432,
                database: "app".into(),
                username: "u".into(),
                password: Default::default(),
                tls_mode: TlsMode::Disable,
            },
            target_plan: TargetDatabasePlan::CreateIfMissing { drop_existing: false },
            storages: vec![StorageTarget { id: StorageId::new(), config: StoreConfig::Local { path: "/x".into() } }],
            chunks: chunks.clone(),
            sha256: sha('s'),
            source_engine: Engine::Postgres,
            manifest_key: "d/e/1/manifest.json".into(),
            parallel_jobs: Some(1),
            restore_globals: true,
            recorded: Some(RecordedBackup {
                globals: Some(globals.clone()),
                encryption: Some(RecordedEncryption {
                    key_id: "prod".into(),
                    wrapped_key_sha256: manifest::wrapped_key_binding(WRAPPED),
                }),
                layout_sha256: None,
            }),
            raw_bytes: Some(100),
            checks: None,
        };
        let m = Manifest {
            format: SINGLE_STREAM_FORMAT,
            execution_id: "e".into(),
            attempt: 1,
            datasource_id: "d".into(),
            engine: "postgres".into(),
            tool_version: "pg_dump 15".into(),
            server_version: "15".into(),
            options: vec![],
            created_at: String::new(),
            compression: "zstd".into(),
            compression_level: 3,
            raw_bytes: 100,
            stored_bytes: 33,
            sha256: sha('s'),
            chunks: chunks
                .iter()
                .map(|c| ManifestChunk { seq: c.seq, key: c.key.clone(), size: c.size, sha256: c.sha256.clone() })
                .collect(),
            encryption_key_id: Some("prod".into()),
            wrapped_key: Some(WRAPPED.into()),
            encryption: Some(CIPHER.into()),
            globals: Some(ManifestObject { key: globals.key, size: globals.size, sha256: globals.sha256 }),
            layout: None,
        };
        (plan, m)
    }

    #[test]
    fn every_disagreement_with_the_record_is_refused_and_named() {
        let (plan, m) = agreeing();
        assert_eq!(check_manifest(&plan, &m), Ok(()));
        let planted = ManifestObject { key: "d/e/1/planted.sql.zst".into(), size: 42, sha256: sha('g') };
        let cases: Vec<(&str, Tamper)> = vec![
            ("globals key", Box::new(move |m| m.globals = Some(planted.clone()))),
            ("globals size", Box::new(|m| m.globals.as_mut().expect("g").size = 43)),
            ("globals sha256", Box::new(|m| m.globals.as_mut().expect("g").sha256 = sha('h'))),
            ("globals (manifest: none", Box::new(|m| m.globals = None)),
            ("encryption key id", Box::new(|m| m.encryption_key_id = Some("other".into()))),
            ("wrapped data key sha256", Box::new(|m| m.wrapped_key = Some("ff".repeat(16)))),
            (
                "encryption (manifest: not encrypted",
                Box::new(|m| {
                    m.encryption_key_id = None;
                    m.wrapped_key = None;
                    m.encryption = None;
                }),
            ),
            ("encryption (manifest: not encrypted", Box::new(|m| m.wrapped_key = None)),
            ("cipher", Box::new(|m| m.encryption = None)),
            (
                "chunk count",
                Box::new(|m| {
                    m.chunks.pop();
                }),
            ),
            ("chunk 1 key", Box::new(|m| m.chunks[1].key = "d/e/1/x.zst".into())),
            ("chunk 2 size", Box::new(|m| m.chunks[2].size = 1 << 40)),
            ("chunk 0 sha256", Box::new(|m| m.chunks[0].sha256 = sha('b'))),
            ("stream sha256", Box::new(|m| m.sha256 = sha('t'))),
        ];
        for (named, tamper) in cases {
            let mut bad = m.clone();
            tamper(&mut bad);
            let e = check_manifest(&plan, &bad).expect_err(named);
            assert!(e.contains(&format!("record: {named}")), "{named}: {e}");
        }

        // A record of an unencrypted backup without globals refuses a manifest that adds either.
        let (mut plan, m) = agreeing();
        plan.recorded = Some(RecordedBackup { globals: None, encryption: None, layout_sha256: None });
        let mut plain = m.clone();
        (plain.encryption_key_id, plain.wrapped_key, plain.encryption, plain.globals) = (None, None, None, None);
        assert_eq!(check_manifest(&plan, &plain), Ok(()));
        let e = check_manifest(&plan, &m).expect_err("added globals");
        assert!(e.contains("record: globals (manifest: d/e/1/globals.sql.zst, recorded: none)"), "{e}");
        plain.encryption_key_id = Some("prod".into());
        let e = check_manifest(&plan, &plain).expect_err("added encryption");
        assert!(e.contains("record: encryption (manifest: prod, recorded: not encrypted)"), "{e}");
    }

    fn layout(chunks: u32) -> manifest::Layout {
        use manifest::{Layout, Segment, Stream, StreamRole};
        let stream = |role, chunks: Vec<u32>, segments: Vec<Segment>| Stream {
            role,
            raw_bytes: segments.iter().map(|g| g.raw_bytes).sum::<u64>().max(u64::from(role != StreamRole::Data)),
            chunks,
            sha256: sha('l'),
            segments,
        };
        let seg = Segment {
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["id".into()],
            pages: None,
            raw_bytes: 10,
            rows: 5,
        };
        Layout {
            kind: manifest::POSTGRES_PARALLEL.into(),
            workers: 1,
            snapshot: "00000003-00000002-1".into(),
            encoding: "UTF8".into(),
            sequences: vec![],
            streams: vec![
                stream(StreamRole::PreData, vec![0], vec![]),
                stream(StreamRole::Data, (1..chunks - 2).collect(), vec![seg]),
                stream(StreamRole::DataObjects, vec![chunks - 2], vec![]),
                stream(StreamRole::PostData, vec![chunks - 1], vec![]),
            ],
        }
    }

    #[test]
    fn a_parallel_layout_must_be_the_recorded_one() {
        let (mut plan, mut m) = agreeing();
        let more = (3..5).map(|seq| ChunkRef { seq, key: format!("d/e/1/{seq:08}.zst"), size: 10, sha256: sha('a') });
        plan.chunks.extend(more);
        m.chunks = plan
            .chunks
            .iter()
            .map(|c| ManifestChunk { seq: c.seq, key: c.key.clone(), size: c.size, sha256: c.sha256.clone() })
            .collect();
        let l = layout(m.chunks.len() as u32);
        assert_eq!(l.check(m.chunks.len()), Ok(()));
        m.layout = Some(l.clone());
        let e = check_manifest(&plan, &m).expect_err("a layout the record lacks");
        assert!(e.contains("record: layout (manifest: parallel streams, recorded: one stream)"), "{e}");
        plan.recorded.as_mut().expect("recorded").layout_sha256 = Some(manifest::layout_binding(&l));
        assert_eq!(check_manifest(&plan, &m), Ok(()));
        // The same chunks put in other streams (or any other change) is another layout.
        let mut moved = l.clone();
        let last = moved.streams[1].chunks.pop().expect("a data chunk");
        moved.streams[3].chunks.insert(0, last);
        m.layout = Some(moved);
        let e = check_manifest(&plan, &m).expect_err("moved chunk");
        assert!(e.contains("record: layout sha256"), "{e}");
        m.layout = None;
        let e = check_manifest(&plan, &m).expect_err("layout removed");
        assert!(e.contains("record: layout (manifest: one stream"), "{e}");
        // A backup recorded before parallel backups existed has none.
        plan.recorded = None;
        plan.restore_globals = false;
        m.layout = Some(l);
        assert!(check_manifest(&plan, &m).is_err_and(|e| e.contains("layout")));
    }

    #[test]
    fn a_backup_recorded_before_the_record_restores_without_its_globals() {
        let (mut plan, m) = agreeing();
        plan.recorded = None;
        let e = check_manifest(&plan, &m).expect_err("globals of a legacy backup");
        assert!(e.starts_with("restore_globals:"), "{e}");
        plan.restore_globals = false;
        assert_eq!(check_manifest(&plan, &m), Ok(()));
        // Its chunks are still the controller's.
        let mut bad = m.clone();
        bad.chunks[0].sha256 = sha('b');
        assert!(check_manifest(&plan, &bad).is_err());
    }
}
