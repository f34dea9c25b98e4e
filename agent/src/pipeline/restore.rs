//! The restore pipeline. First the manifest read back from storage must agree with what the controller
//! recorded (the plan; see [`trust`]); every object read stops at its recorded size. Nothing reaches the
//! target database before every chunk has been read back and matched against its recorded size and sha256
//! (and the whole stream against its sha256); a chunk with no intact copy in any storage fails the restore
//! naming the chunk. An encrypted backup's data key is unwrapped with the agent-held key first, so a missing
//! key also fails before the target is touched, and so does globals SQL that `psql` could run a
//! meta-command from. Then the chunks are read again, each verified again before use (it could have changed
//! since), decrypted, decompressed (at most to the recorded raw size) and piped into the restore tool (or,
//! for a parallel PostgreSQL restore, written to a temporary file in the agent's work directory first).
//!
//! What happens to the target database is the plan's `TargetDatabasePlan`, decided by the controller; the
//! chunk list arrives validated (in order from seq 0, safe keys, hex sha256s) by the protocol model.

use secrecy::ExposeSecret;
use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use dg_common::{
    chunk as chunker,
    manifest::Manifest,
    protocol::{ChunkRef, Engine, LogLevel, RestorePlan, RestoreResult},
};

use super::{tool_failure, trust};
use crate::{
    context::AgentContext,
    engine,
    error::{PipelineError, PipelineResult},
    keys::ChunkCipher,
    report::Reporter,
    storage::{self, Bounded, OpenStorage},
};

/// Decompressed block size written to the restore tool.
const BLOCK: usize = 256 * 1024;
/// Largest globals SQL replayed (roles and tablespaces: kilobytes in practice).
const MAX_GLOBALS_SQL: u64 = 64 << 20;

/// Runs one restore attempt. A verification restore (a scratch target database) drops the database it
/// created at the end, whatever the outcome.
pub async fn run(
    plan: &RestorePlan,
    rep: &Reporter,
    cancel: &CancellationToken,
    ctx: &AgentContext,
) -> PipelineResult<RestoreResult> {
    let mut created = false;
    let started = std::time::Instant::now();
    let mut result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(plan, rep, ctx, &mut created) => r,
    };
    // A drill observes the restored scratch database before it is dropped (the controller judges).
    if let (Ok(r), Some(checks)) = (&mut result, &plan.checks) {
        let observing = engine::observe::observe(&plan.target, checks, started);
        let observed = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            o = tokio::time::timeout(engine::observe::OBSERVE_DEADLINE, observing) => Some(o.unwrap_or_else(|_| {
                dg_common::protocol::drill::DrillObservation {
                    problem: Some("the drill checks did not finish within 15 minutes".into()),
                    ..Default::default()
                }
            })),
        };
        match observed {
            Some(o) => {
                let line = format!(
                    "drill checks observed: queryable after {} ms, {} queries{}",
                    o.queryable_after_ms,
                    o.queries.len(),
                    o.problem.as_deref().map(|p| format!(", problem: {p}")).unwrap_or_default()
                );
                rep.log(LogLevel::Info, line).await;
                r.observed = Some(o);
            }
            None => result = Err(PipelineError::Cancelled),
        }
    }
    // Only a database this attempt created is dropped: a scratch one always, a new target when the restore
    // failed (a half-restored database is worse than none; the existing ones are never dropped here).
    let t = &plan.target;
    if plan.target_plan.is_scratch() && created {
        match engine::drop_database(t, &t.database).await {
            Ok(()) => rep.log(LogLevel::Info, format!("verification database {} dropped", t.database)).await,
            Err(e) => rep.log(LogLevel::Warn, format!("verification database {} not dropped: {e}", t.database)).await,
        }
    } else if created && result.is_err() {
        match engine::drop_database(t, &t.database).await {
            Ok(()) => rep.log(LogLevel::Warn, format!("the restore failed: new database {} dropped", t.database)).await,
            Err(e) => {
                rep.log(
                    LogLevel::Warn,
                    format!("the restore failed and new database {} was not dropped: {e}", t.database),
                )
                .await
            }
        }
    }
    result
}

/// Reads at most `max` bytes of object `key`: an object larger than that fails without being read further
/// (every size a restore reads by is recorded by the controller, or a bound derived from it).
async fn read_bounded(s: &OpenStorage, key: &str, max: u64) -> Result<Bytes, String> {
    match s.read_bounded(key, max).await.map_err(|e| format!("storage {}: {e}", s.id))? {
        Bounded::Got(b) => Ok(b),
        Bounded::Absent => Err(format!("storage {}: {key} not found", s.id)),
        Bounded::TooLarge(Some(size)) => {
            Err(format!("storage {}: {key} is {size} bytes, more than the {max} recorded", s.id))
        }
        Bounded::TooLarge(None) => Err(format!("storage {}: {key} is more than the {max} bytes recorded", s.id)),
    }
}

async fn fetch_verified(s: &OpenStorage, c: &ChunkRef) -> Result<Bytes, String> {
    let data = read_bounded(s, &c.key, c.size).await?;
    if data.len() as u64 != c.size {
        return Err(format!("storage {}: size {} instead of {}", s.id, data.len(), c.size));
    }
    if !hex::encode(Sha256::digest(&data)).eq_ignore_ascii_case(&c.sha256) {
        return Err(format!("storage {}: sha256 mismatch", s.id));
    }
    Ok(data)
}

/// Reads a chunk from the first storage (in `order`) holding an intact copy.
pub(super) async fn fetch_any(stores: &[OpenStorage], order: &[usize], c: &ChunkRef) -> PipelineResult<(usize, Bytes)> {
    let mut reasons = Vec::new();
    for &i in order {
        match fetch_verified(&stores[i], c).await {
            Ok(d) => return Ok((i, d)),
            Err(e) => reasons.push(e),
        }
    }
    Err(PipelineError::Integrity(format!("chunk {} ({}) has no intact copy: {}", c.seq, c.key, reasons.join("; "))))
}

/// Reads the manifest, bounded by what a manifest of `chunks` chunks can need.
async fn read_manifest(stores: &[OpenStorage], key: &str, chunks: usize) -> PipelineResult<Manifest> {
    let max = storage::manifest_bound(chunks);
    let mut reasons = Vec::new();
    for s in stores {
        let got = async { Manifest::from_bytes(&read_bounded(s, key, max).await?).map_err(|e| e.to_string()) };
        match got.await {
            Ok(m) => return Ok(m),
            Err(e) => reasons.push(format!("storage {}: {e}", s.id)),
        }
    }
    Err(PipelineError::Integrity(format!("manifest {key} unreadable: {}", reasons.join("; "))))
}

/// Decompresses the globals object, refusing SQL longer than [`MAX_GLOBALS_SQL`].
fn decompress_globals(data: &[u8]) -> PipelineResult<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)?.take(MAX_GLOBALS_SQL + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_GLOBALS_SQL {
        return Err(PipelineError::Integrity(format!("globals SQL is larger than {MAX_GLOBALS_SQL} bytes")));
    }
    Ok(out)
}

async fn run_inner(
    plan: &RestorePlan,
    rep: &Reporter,
    ctx: &AgentContext,
    created_db: &mut bool,
) -> PipelineResult<RestoreResult> {
    let target = &plan.target;
    let engine = target.engine;
    if plan.source_engine != engine {
        return Err(PipelineError::Invalid("a backup restores only into the engine it was taken from".into()));
    }
    let mut stores = Vec::new();
    for t in &plan.storages {
        match storage::open(t, ctx) {
            Ok(s) => stores.push(s),
            Err(e) => rep.log(LogLevel::Warn, format!("storage {} unusable: {e}", t.id)).await,
        }
    }
    if stores.is_empty() {
        return Err(PipelineError::Storage {
            storage: "all".into(),
            message: "no storage holding the backup can be opened".into(),
        });
    }

    // 1. Everything that can fail without the database: the key, then every chunk.
    let manifest = read_manifest(&stores, &plan.manifest_key, plan.chunks.len()).await?;
    trust::check_manifest(plan, &manifest).map_err(PipelineError::Integrity)?;
    let cipher = match (&manifest.encryption_key_id, &manifest.wrapped_key) {
        (Some(k), Some(w)) => {
            let c = ChunkCipher::open(&ctx.keys_dir, k, &manifest.execution_id, w)?;
            rep.log(LogLevel::Info, format!("backup is encrypted with key \"{k}\"; data key unwrapped")).await;
            Some(c)
        }
        _ => None,
    };
    let globals_sql = if plan.restore_globals {
        // What the controller recorded, never what the manifest says (they agree, checked above).
        let g = plan.recorded.as_ref().and_then(|r| r.globals.clone()).ok_or_else(|| {
            PipelineError::Invalid("restore_globals: this backup has no globals (its job did not include them)".into())
        })?;
        let as_chunk = ChunkRef { seq: 0, key: g.key, size: g.size, sha256: g.sha256 };
        let all: Vec<usize> = (0..stores.len()).collect();
        let (_, data) = fetch_any(&stores, &all, &as_chunk).await?;
        let data = match &cipher {
            Some(c) => c.open_chunk(engine::postgres::GLOBALS_SEQ, &data)?,
            None => data.to_vec(),
        };
        let sql = tokio::task::spawn_blocking(move || decompress_globals(&data))
            .await
            .map_err(|e| PipelineError::Io(std::io::Error::other(e)))??;
        // Refused before the target is touched, naming the line.
        engine::postgres::check_globals_sql(&sql).map_err(PipelineError::Integrity)?;
        Some(sql)
    } else {
        None
    };
    let all: Vec<usize> = (0..stores.len()).collect();
    let target_plan = plan.target_plan;

    // 2. When the restore may create its database and drops nothing, create it now: if it is new, nothing
    // but this restore can be harmed, so the chunks are verified as they stream into the tool (one read), and
    // the database is dropped if any check fails. An existing database (drop_existing, or one that was
    // there already) is only touched after every chunk has been read and verified (two reads).
    let mut single_pass = false;
    if target_plan.creates() && !target_plan.drops_existing() {
        let created = engine::ensure_database(target, &target.database).await?;
        *created_db = created;
        if target_plan.is_scratch() && !created {
            return Err(PipelineError::Invalid(format!(
                "verification database {} already exists; refusing to restore into it",
                target.database
            )));
        }
        if created {
            rep.log(LogLevel::Info, format!("created database {}", target.database)).await;
            let line = "single pass: each chunk is verified as it streams into the new database, which is \
                        dropped if any check fails";
            rep.log(LogLevel::Info, line).await;
            single_pass = true;
        }
    }
    let mut sources = Vec::with_capacity(plan.chunks.len());
    if single_pass {
        sources.resize(plan.chunks.len(), 0);
    } else {
        let mut whole = Sha256::new();
        let mut total = 0u64;
        for c in &plan.chunks {
            let (src, data) = fetch_any(&stores, &all, c).await?;
            whole.update(&data);
            total += data.len() as u64;
            sources.push(src);
        }
        if !hex::encode(whole.finalize()).eq_ignore_ascii_case(&plan.sha256) {
            return Err(PipelineError::Integrity("the chunks do not add up to the backup's sha256".into()));
        }
        let line = format!(
            "verified {} chunks ({total} bytes) against their sha256 before touching the existing database",
            plan.chunks.len()
        );
        rep.log(LogLevel::Info, line).await;
        // MariaDB/MySQL and a parallel PostgreSQL backup: dropping the existing objects is dropping and
        // recreating the database (a parallel backup's schema sections cannot `--clean` each other's objects);
        // a single-stream PostgreSQL backup leaves it to `pg_restore --clean`.
        let recreate = target_plan.drops_existing() && (engine != Engine::Postgres || manifest.layout.is_some());
        if recreate {
            engine::drop_database(target, &target.database).await?;
            rep.log(LogLevel::Info, format!("dropped database {} (drop_existing)", target.database)).await;
        }
        if target_plan.creates() || recreate {
            let created = engine::ensure_database(target, &target.database).await?;
            *created_db = created;
            if created {
                rep.log(LogLevel::Info, format!("created database {}", target.database)).await;
            }
        }
    }
    if let Some(sql) = &globals_sql {
        let notes = engine::postgres::restore_globals(target, &ctx.tools, sql).await?;
        rep.log(LogLevel::Info, format!("globals replayed ({} bytes of SQL)", sql.len())).await;
        for n in notes.into_iter().take(50) {
            rep.log(LogLevel::Warn, format!("globals: {n}")).await;
        }
    }
    super::test_connection(target, rep).await?;

    if let Some(layout) = &manifest.layout {
        let jobs = plan.parallel_jobs.unwrap_or(layout.workers);
        let src = super::parallel::ChunkSource { stores: &stores, chunks: &plan.chunks, cipher: cipher.as_ref() };
        let (written, tool) = super::parallel::restore(layout, &src, target, jobs, ctx, rep).await?;
        rep.log(LogLevel::Info, format!("restore finished: {written} bytes restored with {tool}")).await;
        return Ok(RestoreResult { raw_bytes: written, tool_version: tool, observed: None });
    }

    // 3. Stream: download (verify again) -> decrypt -> decompress -> restore tool (or a file first).
    let jobs = plan.parallel_jobs.unwrap_or(1);
    let to_file: Option<PathBuf> = (engine == Engine::Postgres && jobs > 1)
        .then(|| ctx.work_dir.join(format!("restore-{}.dump", rep.execution().id)));
    let (comp_tx, comp_rx) = mpsc::channel::<Bytes>(2);
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(8);
    let limit = plan.raw_bytes.unwrap_or(u64::MAX);
    let decompressor = tokio::task::spawn_blocking(move || chunker::decompress(comp_rx, raw_tx, BLOCK, limit));
    let chunks = &plan.chunks;
    let whole_sha256 = &plan.sha256;
    let downloader = async move {
        // Every chunk is checked against its recorded sha256 as it is read (again, after a first pass); the
        // whole stream against the backup's.
        let mut whole = Sha256::new();
        for (c, src) in chunks.iter().zip(sources) {
            let mut order = vec![src];
            order.extend(all.iter().copied().filter(|i| *i != src));
            let (_, data) = fetch_any(&stores, &order, c).await?;
            whole.update(&data);
            let data = match &cipher {
                Some(k) => Bytes::from(k.open_chunk(c.seq, &data)?),
                None => data,
            };
            if comp_tx.send(data).await.is_err() {
                return Ok(()); // the decompressor stopped; its error explains why
            }
        }
        if !hex::encode(whole.finalize()).eq_ignore_ascii_case(whole_sha256) {
            return Err(PipelineError::Integrity("the chunks do not add up to the backup's sha256".into()));
        }
        Ok::<(), PipelineError>(())
    };

    let result = if let Some(path) = to_file {
        std::fs::create_dir_all(&ctx.work_dir)?;
        let (down_res, write_res, dec_res) = tokio::join!(downloader, super::stage(&path, raw_rx), decompressor);
        let staged = async {
            down_res?;
            decompressed(dec_res)?;
            let written = write_res?;
            let line = format!("archive staged ({written} bytes); pg_restore with {jobs} jobs");
            rep.log(LogLevel::Info, line).await;
            let drop_existing = target_plan.drops_existing();
            let mut run = engine::restore(target, drop_existing, Some(&path), jobs, &ctx.tools).await?;
            run_tool(&mut run, rep, target.password.expose_secret()).await.map(|tool| (written, tool))
        };
        let r = staged.await;
        let _ = std::fs::remove_file(&path);
        r
    } else {
        let mut run = engine::restore(target, target_plan.drops_existing(), None, 1, &ctx.tools).await?;
        let tool = format!("{} {}", run.tool, run.version);
        if engine != Engine::Postgres {
            if run.options.iter().any(|o| o == engine::mysql::SANDBOX) {
                rep.log(LogLevel::Info, format!("{tool} runs with --sandbox (no client file or shell commands)")).await;
            } else {
                let line = format!("{tool} does not support --sandbox: client commands in the dump are not refused");
                rep.log(LogLevel::Warn, line).await;
            }
        }
        let (stdin, stdout) = (std::process::Stdio::piped(), std::process::Stdio::null());
        let secret = target.password.expose_secret();
        let (mut child, stderr_task) = super::start_tool(&mut run, stdin, stdout, "restore", rep, secret)?;
        rep.log(LogLevel::Info, format!("{tool} started")).await;
        let stdin = child.stdin.take().ok_or_else(|| PipelineError::Tool("restore tool has no stdin".into()))?;
        let (down_res, write_res, dec_res) = tokio::join!(downloader, super::feed(stdin, raw_rx), decompressor);
        let status = child.wait().await?;
        let tail = stderr_task.await.unwrap_or_default();
        drop(run);
        down_res?;
        // A stream that does not decompress whole is the cause, whatever the tool made of the part it got; a
        // tool that stopped reading (it failed) is reported as the tool's failure.
        let decompressed = decompressed(dec_res);
        if let Err(e @ PipelineError::Integrity(_)) = decompressed {
            return Err(e);
        }
        if !status.success() {
            return Err(PipelineError::Tool(tool_failure(&tool, status, &tail)));
        }
        let decompressed = decompressed?;
        let written = write_res?;
        if written != decompressed {
            return Err(PipelineError::Integrity(format!("decompressed {decompressed} bytes but wrote {written}")));
        }
        Ok((written, tool))
    };
    let (written, tool) = result?;
    rep.log(LogLevel::Info, format!("restore finished: {written} bytes restored with {tool}")).await;
    Ok(RestoreResult { raw_bytes: written, tool_version: tool, observed: None })
}

/// Runs a prepared tool that reads a file to completion, failing on a non-zero exit.
pub(super) async fn run_tool(run: &mut engine::ToolRun, rep: &Reporter, password: &str) -> PipelineResult<String> {
    let tool = format!("{} {}", run.tool, run.version);
    let (stdin, stdout) = (std::process::Stdio::null(), std::process::Stdio::null());
    let (mut child, stderr_task) = super::start_tool(run, stdin, stdout, "restore", rep, password)?;
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure(&tool, status, &tail)));
    }
    Ok(tool)
}

/// The decompressor's outcome: a stream that is not complete zstd is an integrity failure, not an i/o one.
pub(super) fn decompressed(r: Result<std::io::Result<u64>, tokio::task::JoinError>) -> PipelineResult<u64> {
    match r {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) if chunker::is_truncated(&e) => Err(PipelineError::Integrity(e.to_string())),
        Ok(Err(e)) => Err(PipelineError::Io(e)),
        Err(e) => Err(PipelineError::Io(std::io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::{ObjectStoreExt, PutPayload, memory::InMemory, path::Path as ObjPath};

    use dg_common::ids::StorageId;

    use super::*;

    #[tokio::test]
    async fn reads_are_bounded_by_the_recorded_size() {
        let store = Arc::new(InMemory::new());
        let s = OpenStorage { id: StorageId::new(), store: store.clone() };
        store.put(&ObjPath::from("a/1.zst"), PutPayload::from(vec![7u8; 100])).await.expect("put");
        assert_eq!(read_bounded(&s, "a/1.zst", 100).await.expect("exact").len(), 100);
        assert_eq!(read_bounded(&s, "a/1.zst", 1 << 20).await.expect("room").len(), 100);
        let e = read_bounded(&s, "a/1.zst", 99).await.expect_err("longer than recorded");
        assert!(e.contains("more than the 99"), "{e}");

        let sha = hex::encode(Sha256::digest([7u8; 100]));
        let c = ChunkRef { seq: 0, key: "a/1.zst".into(), size: 100, sha256: sha.clone() };
        assert!(fetch_verified(&s, &c).await.is_ok());
        let short = ChunkRef { size: 60, ..c.clone() };
        assert!(fetch_verified(&s, &short).await.is_err_and(|e| e.contains("more than the 60")));
        let long = ChunkRef { size: 101, ..c.clone() };
        assert!(fetch_verified(&s, &long).await.is_err_and(|e| e.contains("size 100 instead of 101")));
        let other = ChunkRef { sha256: "0".repeat(64), ..c };
        assert!(fetch_verified(&s, &other).await.is_err_and(|e| e.contains("sha256 mismatch")));
    }

    #[test]
    fn globals_decompression_is_capped() {
        let sql = zstd::encode_all(&b"CREATE ROLE a;\n"[..], 3).expect("zstd");
        assert_eq!(decompress_globals(&sql).expect("small"), b"CREATE ROLE a;\n");
        let bomb = zstd::encode_all(vec![b' '; (MAX_GLOBALS_SQL + 1) as usize].as_slice(), 19).expect("zstd");
        assert!(bomb.len() < 1 << 20, "a small object");
        assert!(decompress_globals(&bomb).is_err_and(|e| e.to_string().contains("larger than")));
    }
}
