//! The verify pipeline: checksum-only, no database touched. Every copy in the plan is read from its storage:
//! the manifest (bounded by what a manifest of the copy's chunk count can need) is compared with the
//! controller's record ([`trust::check_against_record`]), never trusted; each chunk is streamed, never read
//! past its recorded size, and hashed off the async threads, against its recorded size and sha256; the
//! chunks together against the recorded stream sha256; the recorded globals object likewise. What is wrong
//! is reported as findings per copy (damage is a finding, not a failure of the attempt); a storage that
//! fails outright (not an absent object) makes its copy `unreadable`, which the controller records as no
//! verdict. Memory per read is bounded by [`HASH_BATCH`]. Chunk and globals reads go through one
//! [`ReadLimiter`] per verify (the plan's read-rate limit, over all copies). The executor calls [`run`].

use bytes::BytesMut;
use futures::StreamExt;
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use dg_common::{
    manifest::Manifest,
    protocol::{ChunkDamage, ChunkFault, CopyFindings, CopyStatus, LogLevel, VerifyCopy, VerifyPlan, VerifyResult},
};

use super::{
    throttle::ReadLimiter,
    trust::{self, Record},
};
use crate::{
    context::AgentContext,
    error::{PipelineError, PipelineResult},
    report::Reporter,
    storage::{self, Bounded, OpenStorage},
};

/// Bytes gathered before they are hashed on a blocking thread.
const HASH_BATCH: usize = 4 << 20;

/// Runs one verify attempt.
pub async fn run(
    plan: &VerifyPlan,
    rep: &Reporter,
    cancel: &CancellationToken,
    ctx: &AgentContext,
) -> PipelineResult<VerifyResult> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(plan, rep, ctx) => r,
    }
}

async fn run_inner(plan: &VerifyPlan, rep: &Reporter, ctx: &AgentContext) -> PipelineResult<VerifyResult> {
    let mut copies = Vec::with_capacity(plan.copies.len());
    // One limiter for the whole verify: the limit holds across its copies.
    let limiter = ReadLimiter::new(plan.read_rate_bytes_per_second);
    for copy in &plan.copies {
        let findings = match storage::open(&copy.storage, ctx) {
            Ok(s) => verify_copy(plan, copy, &s, &limiter).await?,
            Err(e) => CopyFindings { unreadable: Some(e.to_string()), ..CopyFindings::clean(copy.storage.id) },
        };
        rep.log(summary_level(&findings, copy.chunks.len()), summary(&findings, copy.chunks.len())).await;
        copies.push(findings);
    }
    Ok(VerifyResult { copies })
}

fn summary_level(f: &CopyFindings, chunks: usize) -> LogLevel {
    match f.status(chunks) {
        Some(CopyStatus::Intact) => LogLevel::Info,
        _ => LogLevel::Warn,
    }
}

/// One log line per copy, for operators.
fn summary(f: &CopyFindings, chunks: usize) -> String {
    let storage = f.storage;
    match (f.status(chunks), &f.unreadable) {
        (None, Some(e)) => format!("copy in storage {storage}: not verified, the storage cannot be read: {e}"),
        (Some(CopyStatus::Intact), _) => format!("copy in storage {storage}: intact ({chunks} chunks)"),
        (status, _) => {
            let mut what: Vec<String> = f
                .damaged_chunks
                .iter()
                .map(|d| format!("chunk {} {}", d.seq, d.fault.as_str()))
                .chain(f.problems())
                .collect();
            what.truncate(20);
            let status = status.map(CopyStatus::as_str).unwrap_or("damaged");
            format!("copy in storage {storage}: {status}: {}", what.join("; "))
        }
    }
}

/// What reading one object found.
enum Read<T> {
    /// The object is absent.
    Absent,
    /// Read (or stopped at the bound).
    Got(T),
}

/// A storage failure that is not an absent object.
fn storage_failure(s: &OpenStorage, e: impl std::fmt::Display) -> String {
    format!("storage {}: {e}", s.id)
}

/// Reads a small object whole, at most `max` bytes (`Err` on a storage failure; an object past the bound is
/// `Got(None)`).
async fn read_small(s: &OpenStorage, key: &str, max: u64) -> Result<Read<Option<bytes::Bytes>>, String> {
    Ok(match s.read_bounded(key, max).await.map_err(|e| storage_failure(s, e))? {
        Bounded::Absent => Read::Absent,
        Bounded::TooLarge(_) => Read::Got(None),
        Bounded::Got(b) => Read::Got(Some(b)),
    })
}

/// What hashing one object found.
enum Hashed {
    /// Its size differs from the recorded one (the size found, or `None` when it grew past it while read).
    Size(Option<u64>),
    /// Read whole at the recorded size: its hex sha256.
    Sha256(String),
}

/// Hashes `batch` into `hasher` (and `whole`, when given) on a blocking thread.
async fn hash_batch(
    hasher: Sha256,
    whole: Option<Sha256>,
    batch: BytesMut,
) -> PipelineResult<(Sha256, Option<Sha256>)> {
    tokio::task::spawn_blocking(move || {
        let (mut h, mut w) = (hasher, whole);
        h.update(&batch);
        if let Some(w) = w.as_mut() {
            w.update(&batch);
        }
        (h, w)
    })
    .await
    .map_err(|e| PipelineError::Io(std::io::Error::other(e)))
}

/// Streams object `key`, never past `size` bytes, hashing it (and feeding `whole`, which is dropped when the
/// object does not match its size). `Err(Ok(text))` is a storage failure.
async fn hash_object(
    s: &OpenStorage,
    key: &str,
    size: u64,
    whole: &mut Option<Sha256>,
    limiter: &ReadLimiter,
) -> PipelineResult<Result<Read<Hashed>, String>> {
    let got = match s.store.get(&ObjPath::from(key)).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(Ok(Read::Absent)),
        Err(e) => return Ok(Err(storage_failure(s, e))),
    };
    if got.meta.size != size {
        return Ok(Ok(Read::Got(Hashed::Size(Some(got.meta.size)))));
    }
    let mut hasher = Sha256::new();
    let mut batch = BytesMut::new();
    let mut total = 0u64;
    let mut parts = got.into_stream();
    while let Some(part) = parts.next().await {
        let part = match part {
            Ok(p) => p,
            Err(e) => return Ok(Err(storage_failure(s, e))),
        };
        limiter.take(part.len()).await;
        total += part.len() as u64;
        if total > size {
            return Ok(Ok(Read::Got(Hashed::Size(None))));
        }
        batch.extend_from_slice(&part);
        if batch.len() >= HASH_BATCH {
            let (h, w) = hash_batch(hasher, whole.take(), std::mem::take(&mut batch)).await?;
            (hasher, *whole) = (h, w);
        }
    }
    if total != size {
        return Ok(Ok(Read::Got(Hashed::Size(Some(total)))));
    }
    let (h, w) = hash_batch(hasher, whole.take(), batch).await?;
    *whole = w;
    Ok(Ok(Read::Got(Hashed::Sha256(hex::encode(h.finalize())))))
}

/// Reads one copy and says what is wrong with it.
async fn verify_copy(
    plan: &VerifyPlan,
    copy: &VerifyCopy,
    s: &OpenStorage,
    limiter: &ReadLimiter,
) -> PipelineResult<CopyFindings> {
    let mut f = CopyFindings::clean(copy.storage.id);
    let unreadable = |f: CopyFindings, e: String| CopyFindings { unreadable: Some(e), ..f };

    let max = storage::manifest_bound(copy.chunks.len());
    match read_small(s, &plan.manifest_key, max).await {
        Err(e) => return Ok(unreadable(f, e)),
        Ok(Read::Absent) => f.manifest_missing = true,
        Ok(Read::Got(None)) => f.manifest_problem = Some(format!("larger than the {max} bytes a manifest may have")),
        Ok(Read::Got(Some(bytes))) => match Manifest::from_bytes(&bytes) {
            Err(e) => f.manifest_problem = Some(format!("unreadable: {e}")),
            Ok(m) => {
                let record = Record {
                    chunks: &copy.chunks,
                    sha256: &plan.sha256,
                    recorded: plan.recorded.as_ref(),
                    restore_globals: false,
                };
                f.manifest_problem = trust::check_against_record(record, &m).err();
            }
        },
    }

    let mut whole = Some(Sha256::new());
    for c in &copy.chunks {
        let damage = match hash_object(s, &c.key, c.size, &mut whole, limiter).await? {
            Err(e) => return Ok(unreadable(f, e)),
            Ok(Read::Absent) => Some((ChunkFault::Missing, format!("{} is absent", c.key))),
            Ok(Read::Got(Hashed::Size(found))) => {
                let found = found.map_or_else(|| "more".to_owned(), |n| n.to_string());
                Some((ChunkFault::Size, format!("{found} bytes, {} recorded", c.size)))
            }
            Ok(Read::Got(Hashed::Sha256(sha))) if !sha.eq_ignore_ascii_case(&c.sha256) => {
                Some((ChunkFault::Sha256, format!("sha256 {sha}, {} recorded", c.sha256)))
            }
            Ok(Read::Got(Hashed::Sha256(_))) => None,
        };
        if let Some((fault, detail)) = damage {
            whole = None; // the stream cannot match; the chunk is named instead
            f.damaged_chunks.push(ChunkDamage { seq: c.seq, fault, detail });
        }
    }
    if let Some(w) = whole
        && !hex::encode(w.finalize()).eq_ignore_ascii_case(&plan.sha256)
    {
        f.stream_mismatch = true;
    }

    if let Some(g) = plan.recorded.as_ref().and_then(|r| r.globals.as_ref()) {
        f.globals_problem = match hash_object(s, &g.key, g.size, &mut None, limiter).await? {
            Err(e) => return Ok(unreadable(f, e)),
            Ok(Read::Absent) => Some(format!("{} is absent", g.key)),
            Ok(Read::Got(Hashed::Size(_))) => Some(format!("{} does not have its recorded {} bytes", g.key, g.size)),
            Ok(Read::Got(Hashed::Sha256(sha))) if !sha.eq_ignore_ascii_case(&g.sha256) => {
                Some(format!("{} has sha256 {sha}, {} recorded", g.key, g.sha256))
            }
            Ok(Read::Got(Hashed::Sha256(_))) => None,
        };
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dg_common::{
        ids::StorageId,
        manifest::{ManifestChunk, SINGLE_STREAM_FORMAT},
        protocol::{ChunkRef, RecordedBackup},
    };
    use object_store::{ObjectStore, memory::InMemory};

    use super::*;

    fn sha_hex(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// A stored copy of three chunks with its manifest, and the plan recording it.
    async fn stored() -> (OpenStorage, VerifyPlan, Vec<Vec<u8>>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let chunks: Vec<ChunkRef> = data
            .iter()
            .enumerate()
            .map(|(i, d)| ChunkRef {
                seq: i as u32,
                key: format!("d/e/1/{i:08}.zst"),
                size: d.len() as u64,
                sha256: sha_hex(d),
            })
            .collect();
        for (c, d) in chunks.iter().zip(&data) {
            store.put(&ObjPath::from(c.key.as_str()), d.clone().into()).await.expect("put");
        }
        let whole = sha_hex(&data.concat());
        let m = Manifest {
            format: SINGLE_STREAM_FORMAT,
            execution_id: "e".into(),
            attempt: 1,
            datasource_id: "d".into(),
            engine: "postgres".into(),
            tool_version: String::new(),
            server_version: String::new(),
            options: vec![],
            created_at: String::new(),
            compression: "zstd".into(),
            compression_level: 3,
            raw_bytes: 0,
            stored_bytes: 3003,
            sha256: whole.clone(),
            chunks: chunks
                .iter()
                .map(|c| ManifestChunk { seq: c.seq, key: c.key.clone(), size: c.size, sha256: c.sha256.clone() })
                .collect(),
            encryption_key_id: None,
            wrapped_key: None,
            encryption: None,
            globals: None,
            layout: None,
        };
        let bytes = m.to_bytes();
        store.put(&ObjPath::from("d/e/1/manifest.json"), bytes.into()).await.expect("put");
        let id = StorageId::new();
        let target = dg_common::protocol::StorageTarget {
            id,
            config: dg_common::store::StoreConfig::Local { path: "/unused".into() },
        };
        let plan = VerifyPlan {
            copies: vec![VerifyCopy { storage: target, chunks }],
            sha256: whole,
            manifest_key: "d/e/1/manifest.json".into(),
            recorded: Some(RecordedBackup { globals: None, encryption: None, layout_sha256: None }),
            read_rate_bytes_per_second: 0,
        };
        (OpenStorage { id, store }, plan, data)
    }

    #[tokio::test]
    async fn an_intact_copy_has_no_findings_and_each_kind_of_damage_is_named() {
        let (s, plan, data) = stored().await;
        let copy = &plan.copies[0];
        let f = verify_copy(&plan, copy, &s, &ReadLimiter::new(0)).await.expect("verify");
        assert_eq!(f, CopyFindings::clean(s.id));
        assert_eq!(f.status(3), Some(CopyStatus::Intact));

        // A flipped byte, a truncated chunk, a deleted chunk.
        let mut flipped = data[0].clone();
        flipped[10] ^= 0xff;
        s.store.put(&ObjPath::from(copy.chunks[0].key.as_str()), flipped.into()).await.expect("put");
        s.store.put(&ObjPath::from(copy.chunks[1].key.as_str()), data[1][..10].to_vec().into()).await.expect("put");
        s.store.delete(&ObjPath::from(copy.chunks[2].key.as_str())).await.expect("delete");
        let f = verify_copy(&plan, copy, &s, &ReadLimiter::new(0)).await.expect("verify");
        let faults: Vec<(u32, ChunkFault)> = f.damaged_chunks.iter().map(|d| (d.seq, d.fault)).collect();
        assert_eq!(faults, vec![(0, ChunkFault::Sha256), (1, ChunkFault::Size), (2, ChunkFault::Missing)]);
        assert!(f.damaged_chunks[1].detail.starts_with("10 bytes"), "{:?}", f.damaged_chunks[1]);
        assert!(!f.stream_mismatch, "a damaged chunk is named, not the stream");
        assert_eq!(f.status(3), Some(CopyStatus::Damaged));
        assert!(summary(&f, 3).contains("chunk 0 sha256; chunk 1 size; chunk 2 missing"), "{}", summary(&f, 3));
    }

    #[tokio::test]
    async fn the_manifest_is_compared_with_the_record_and_a_gone_copy_is_missing() {
        let (s, mut plan, _) = stored().await;
        // The record says another stream sha256: the bucket's manifest (and the stream) disagree with it.
        plan.sha256 = "0".repeat(64);
        let f = verify_copy(&plan, &plan.copies[0], &s, &ReadLimiter::new(0)).await.expect("verify");
        assert!(f.manifest_problem.as_deref().is_some_and(|p| p.contains("stream sha256")), "{f:?}");
        assert!(f.stream_mismatch && f.damaged_chunks.is_empty(), "{f:?}");

        let (s, plan, _) = stored().await;
        let keys: Vec<String> = plan.copies[0].chunks.iter().map(|c| c.key.clone()).collect();
        for k in keys.iter().chain([&plan.manifest_key]) {
            s.store.delete(&ObjPath::from(k.as_str())).await.expect("delete");
        }
        let f = verify_copy(&plan, &plan.copies[0], &s, &ReadLimiter::new(0)).await.expect("verify");
        assert!(f.manifest_missing);
        assert_eq!(f.status(3), Some(CopyStatus::Missing), "{f:?}");
    }
}
