//! The backup pipeline: dump tool stdout -> zstd (blocking thread; optional encryption per chunk) -> fixed
//! size chunks with sha256 -> concurrent uploads -> manifest last.
//!
//! Storage strategies. `fallback`: the job's storages are probed in order and the backup goes to the first
//! that accepts a probe object; if that storage fails part-way, the dump is run again into the next one (a
//! dump cannot be rewound, and chunks are never kept around to replay). `replicate`: every chunk goes to
//! every storage that accepted the probe; a storage that fails (at the probe or part-way) is dropped with a
//! warning and the backup completes while at least one storage holds a complete copy: a degraded copy is
//! better than no backup, and the warning on the execution says which copy is missing.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use dg_common::{
    chunk as chunker,
    manifest::{self, MANIFEST_FORMAT, Manifest, ManifestChunk},
};
use dg_proto::v1::{BackupResult, BackupTask, DatabaseTarget, StorageStrategy};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{forward_stderr, tool_failure};
use crate::{
    context::AgentContext,
    engine::{self, ServerInfo, engine_name, engine_of},
    error::{PipelineError, PipelineResult},
    executor::Reporter,
    keys::ChunkCipher,
    storage::{self, OpenStorage},
};

/// Sealed chunks waiting for an upload slot.
const CHUNK_QUEUE: usize = 1;
/// Pipe buffer asked for on the dump tool's stdout (Linux caps it at /proc/sys/fs/pipe-max-size).
const PIPE_SIZE: i32 = 1 << 20;

/// Turns the tool's stdout into a blocking reader for the compressor thread, with a larger pipe buffer so
/// the tool rarely waits for us.
fn blocking_pipe(stdout: tokio::process::ChildStdout) -> PipelineResult<std::fs::File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let fd = stdout.into_owned_fd()?;
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK)).map_err(std::io::Error::from)?;
    let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok(std::fs::File::from(fd))
}

/// Runs one backup attempt.
pub async fn run(
    task: BackupTask,
    rep: &Reporter,
    cancel: &CancellationToken,
    ctx: &AgentContext,
) -> PipelineResult<BackupResult> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(task, rep, ctx) => r,
    }
}

/// Settings of one pass, derived from the task.
struct PassSettings {
    prefix: String,
    chunk_size: usize,
    level: i32,
    workers: u32,
    concurrency: usize,
    cipher: Option<Arc<ChunkCipher>>,
    tools: crate::tools::Tools,
}

/// What one pass of the dump produced.
struct PassOutput {
    chunks: Vec<ManifestChunk>,
    complete: Vec<OpenStorage>,
    dropped: Vec<String>,
    totals: chunker::StreamTotals,
    tool: String,
    options: Vec<String>,
}

async fn run_inner(task: BackupTask, rep: &Reporter, ctx: &AgentContext) -> PipelineResult<BackupResult> {
    let source = task.source.clone().ok_or_else(|| PipelineError::Invalid("backup task without a source".into()))?;
    let engine = engine_of(&source)?;
    if task.key_prefix.is_empty() || task.key_prefix.contains("..") {
        return Err(PipelineError::Invalid("bad key prefix".into()));
    }
    let mut warnings = Vec::new();
    let candidates = probe_storages(&task, rep, ctx, &mut warnings).await?;

    let info = super::test_connection(&source, rep).await?;

    let (cipher, wrapped) = if task.encryption_key_id.is_empty() {
        (None, None)
    } else {
        let (c, w) = ChunkCipher::create(&ctx.keys_dir, &task.encryption_key_id, rep.execution_id())?;
        rep.log(
            "info",
            format!("chunks are encrypted (AES-256-GCM) with a data key wrapped by key \"{}\"", task.encryption_key_id),
        )
        .await;
        (Some(Arc::new(c)), Some(w))
    };
    let settings = PassSettings {
        prefix: task.key_prefix.clone(),
        chunk_size: usize::try_from(task.chunk_size).unwrap_or(0).clamp(1 << 20, 256 << 20),
        level: if (1..=19).contains(&task.compression_level) { task.compression_level } else { 3 },
        workers: task.compression_workers.min(16),
        concurrency: usize::try_from(task.upload_concurrency).unwrap_or(3).clamp(1, 32),
        cipher,
        tools: ctx.tools.clone(),
    };

    let replicate = StorageStrategy::try_from(task.strategy) == Ok(StorageStrategy::Replicate);
    let out = if replicate {
        one_pass(&source, &info, &candidates, &settings, rep).await?
    } else {
        let mut result = None;
        for (i, s) in candidates.iter().enumerate() {
            match one_pass(&source, &info, std::slice::from_ref(s), &settings, rep).await {
                Ok(out) => {
                    result = Some(out);
                    break;
                }
                Err(e @ PipelineError::Storage { .. }) if i + 1 < candidates.len() => {
                    let w =
                        format!("storage {} failed during the backup ({e}); dumping again into the next storage", s.id);
                    rep.log("warn", w.clone()).await;
                    warnings.push(w);
                }
                Err(e) => return Err(e),
            }
        }
        result.ok_or_else(|| PipelineError::Storage {
            storage: "all".into(),
            message: "no storage took the backup".into(),
        })?
    };
    warnings.extend(out.dropped.iter().cloned());

    let globals = if task.include_globals && engine == dg_proto::v1::Engine::Postgres {
        let (sql, tool) = engine::postgres::dump_globals(&source, &ctx.tools).await?;
        let compressed = zstd::encode_all(sql.as_slice(), settings.level)?;
        let stored = match &settings.cipher {
            Some(c) => c.seal(engine::postgres::GLOBALS_SEQ, &compressed),
            None => compressed,
        };
        let key = manifest::globals_key(&task.key_prefix);
        let sha256 = hex::encode(Sha256::digest(&stored));
        let body = Bytes::from(stored);
        for s in &out.complete {
            s.store
                .put(&ObjPath::from(key.as_str()), PutPayload::from(body.clone()))
                .await
                .map_err(|e| PipelineError::Storage { storage: s.id.clone(), message: format!("globals: {e}") })?;
        }
        rep.log("info", format!("globals dumped with {tool} ({} bytes of SQL)", sql.len())).await;
        Some(manifest::ManifestObject { key, size: body.len() as u64, sha256 })
    } else {
        if task.include_globals {
            warnings.push("include_globals applies to PostgreSQL only; ignored".into());
        }
        None
    };

    let m = Manifest {
        format: MANIFEST_FORMAT,
        execution_id: rep.execution_id().to_owned(),
        attempt: task.key_prefix.rsplit('/').next().and_then(|a| a.parse().ok()).unwrap_or(0),
        datasource_id: task.key_prefix.split('/').next().unwrap_or_default().to_owned(),
        engine: engine_name(engine).into(),
        tool_version: out.tool.clone(),
        server_version: info.version.clone(),
        options: out.options.clone(),
        created_at: chrono::Utc::now().to_rfc3339(),
        compression: "zstd".into(),
        compression_level: settings.level,
        raw_bytes: out.totals.raw_bytes,
        stored_bytes: out.totals.stored_bytes,
        sha256: out.totals.sha256.clone(),
        chunks: out.chunks,
        encryption_key_id: (!task.encryption_key_id.is_empty()).then(|| task.encryption_key_id.clone()),
        wrapped_key: wrapped,
        encryption: settings.cipher.as_ref().map(|_| "AES-256-GCM".to_owned()),
        globals,
    };
    let manifest_key = manifest::manifest_key(&task.key_prefix);
    let body = Bytes::from(m.to_bytes());
    let mut holders = Vec::new();
    for s in &out.complete {
        match s.store.put(&ObjPath::from(manifest_key.as_str()), PutPayload::from(body.clone())).await {
            Ok(_) => holders.push(s.id.clone()),
            Err(e) => {
                let w = format!("storage {}: manifest write failed: {e}", s.id);
                rep.log("warn", w.clone()).await;
                warnings.push(w);
            }
        }
    }
    if holders.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "manifest could not be written".into() });
    }
    let t = &out.totals;
    rep.log(
        "info",
        format!(
            "dump finished: {} raw bytes, {} stored bytes in {} chunks, sha256 {}",
            t.raw_bytes, t.stored_bytes, t.chunks, t.sha256
        ),
    )
    .await;
    Ok(BackupResult {
        raw_bytes: t.raw_bytes,
        stored_bytes: t.stored_bytes,
        chunk_count: t.chunks,
        sha256: t.sha256.clone(),
        manifest_key,
        storage_ids: holders,
        tool_version: out.tool,
        server_version: info.version,
        warnings,
        encryption_key_id: task.encryption_key_id,
    })
}

/// Opens the task's storages and keeps those that accept a probe object, in the job's order.
async fn probe_storages(
    task: &BackupTask,
    rep: &Reporter,
    ctx: &AgentContext,
    warnings: &mut Vec<String>,
) -> PipelineResult<Vec<OpenStorage>> {
    let mut usable = Vec::new();
    let mut reasons = Vec::new();
    for t in &task.storages {
        let probe = async {
            let s = storage::open(t, ctx)?;
            let key = format!("{}/.probe", task.key_prefix);
            dg_common::store::probe(s.store.as_ref(), &key)
                .await
                .map_err(|e| PipelineError::Storage { storage: s.id.clone(), message: e.0 })?;
            Ok::<_, PipelineError>(s)
        };
        match probe.await {
            Ok(s) => usable.push(s),
            Err(e) => {
                let w = format!("storage {} unusable: {e}", t.storage_id);
                rep.log("warn", w.clone()).await;
                warnings.push(w);
                reasons.push(e.to_string());
            }
        }
    }
    if usable.is_empty() {
        return Err(PipelineError::Storage {
            storage: "all".into(),
            message: format!("no storage usable: {}", reasons.join("; ")),
        });
    }
    let ids: Vec<_> = usable.iter().map(|s| s.id.as_str()).collect();
    rep.log("info", format!("usable storage(s), in order: {}", ids.join(", "))).await;
    Ok(usable)
}

/// Runs the dump tool once, writing every chunk to every target still healthy.
async fn one_pass(
    source: &DatabaseTarget,
    info: &ServerInfo,
    targets: &[OpenStorage],
    s: &PassSettings,
    rep: &Reporter,
) -> PipelineResult<PassOutput> {
    let mut run = engine::dump(source, info, &s.tools).await?;
    let tool = format!("{} {}", run.tool, run.version);
    let mut child = run
        .cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Tool(format!("cannot start {}: {e}", run.tool)))?;
    let ids: Vec<_> = targets.iter().map(|t| t.id.as_str()).collect();
    rep.log("info", format!("{tool} started (zstd level {}), writing to {}", s.level, ids.join(", "))).await;
    let tool_name: &'static str = if run.tool.starts_with("pg_") { "pg_dump" } else { "dump" };
    let stderr_task =
        tokio::spawn(forward_stderr(child.stderr.take(), tool_name, rep.clone(), vec![source.password.clone()]));
    let stdout = child.stdout.take().ok_or_else(|| PipelineError::Tool("dump tool has no stdout".into()))?;
    let input = blocking_pipe(stdout)?;

    // The compressor thread reads the tool's stdout itself: no async hop and no copy between the pipe and zstd.
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let (level, workers, chunk_size) = (s.level, s.workers, s.chunk_size);
    let sealer: Option<chunker::Sealer> =
        s.cipher.clone().map(|c| Box::new(move |seq, data: Vec<u8>| c.seal(seq, &data)) as chunker::Sealer);
    let compressor =
        tokio::task::spawn_blocking(move || chunker::compress(input, chunk_tx, level, workers, chunk_size, sealer));
    let uploader = upload_all(chunk_rx, targets, &s.prefix, s.concurrency, rep);
    let (upload_res, comp_res) = tokio::join!(uploader, compressor);
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    let options = std::mem::take(&mut run.options);
    drop(run);

    let (chunks, complete, dropped) = upload_res?;
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure(&tool, status, &tail)));
    }
    let totals = comp_res.map_err(|e| PipelineError::Io(std::io::Error::other(e)))??;
    if chunks.len() as u32 != totals.chunks {
        return Err(PipelineError::Integrity(format!("{} chunks produced but {} stored", totals.chunks, chunks.len())));
    }
    Ok(PassOutput { chunks, complete, dropped, totals, tool, options })
}

type Uploaded = (Vec<ManifestChunk>, Vec<OpenStorage>, Vec<String>);

/// Uploads chunks as they come, `concurrency` at a time, to every target still healthy. Returns the chunk
/// list (by seq), the storages holding every chunk, and a warning per storage dropped on the way.
async fn upload_all(
    rx: mpsc::Receiver<chunker::SealedChunk>,
    targets: &[OpenStorage],
    prefix: &str,
    concurrency: usize,
    rep: &Reporter,
) -> PipelineResult<Uploaded> {
    let failed: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let progress = Arc::new(Mutex::new((0u64, 0u64, 0u32)));
    let is_failed =
        |f: &Mutex<Vec<(String, String)>>, id: &str| f.lock().map(|f| f.iter().any(|(s, _)| s == id)).unwrap_or(true);
    let mut chunks: Vec<ManifestChunk> = ReceiverStream::new(rx)
        .map(|c| {
            let failed = failed.clone();
            let progress = progress.clone();
            async move {
                let key = manifest::chunk_key(prefix, c.seq);
                let path = ObjPath::from(key.as_str());
                let mut stored_somewhere = false;
                let mut last_error = String::new();
                for s in targets {
                    if is_failed(&failed, &s.id) {
                        continue;
                    }
                    match put_with_retry(s, &path, c.data.clone()).await {
                        Ok(()) => {
                            stored_somewhere = true;
                            rep.chunk(&s.id, c.seq, &key, c.data.len() as u64, &c.sha256, c.raw_bytes).await;
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            let w = format!("storage {} dropped from this backup: chunk {}: {e}", s.id, c.seq);
                            rep.log("warn", w.clone()).await;
                            if let Ok(mut f) = failed.lock() {
                                f.push((s.id.clone(), w));
                            }
                        }
                    }
                }
                if !stored_somewhere {
                    let storage = if targets.len() == 1 { targets[0].id.clone() } else { "all".into() };
                    return Err(PipelineError::Storage { storage, message: format!("chunk {}: {last_error}", c.seq) });
                }
                let (raw, stored, n) = {
                    let mut p = progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    p.0 += c.raw_bytes;
                    p.1 += c.data.len() as u64;
                    p.2 += 1;
                    *p
                };
                rep.progress(raw, stored, n).await;
                Ok(ManifestChunk { seq: c.seq, key, size: c.data.len() as u64, sha256: c.sha256 })
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    let failed_ids: HashSet<&str> = failed.iter().map(|(s, _)| s.as_str()).collect();
    let complete: Vec<OpenStorage> = targets.iter().filter(|s| !failed_ids.contains(s.id.as_str())).cloned().collect();
    if complete.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "every storage failed".into() });
    }
    chunks.sort_by_key(|c| c.seq);
    Ok((chunks, complete, failed.into_iter().map(|(_, w)| w).collect()))
}

async fn put_with_retry(s: &OpenStorage, path: &ObjPath, data: Bytes) -> Result<(), object_store::Error> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match s.store.put(path, PutPayload::from(data.clone())).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}
