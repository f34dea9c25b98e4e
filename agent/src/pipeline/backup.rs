//! The backup pipeline: dump tool stdout -> zstd (blocking thread; optional encryption per chunk) -> fixed
//! size chunks with sha256 -> concurrent uploads -> manifest last.
//!
//! Storage strategies. `fallback`: the job's storages are probed in order and the backup goes to the first
//! that accepts a probe object; if that storage fails part-way, the dump is run again into the next one (a
//! dump cannot be rewound, and chunks are never kept around to replay). `replicate`: every chunk goes to
//! every storage that accepted the probe; a storage that fails (at the probe or part-way) is dropped with a
//! warning and the backup completes while at least one storage holds a complete copy: a degraded copy is
//! better than no backup, and the warning on the execution says which copy is missing.
//!
//! Every object key comes from the plan's [`ObjectLayout`] (ids only), and so do the manifest's attempt and
//! datasource; chunk size, level, concurrency and workers arrive already clamped by the protocol model.

use secrecy::ExposeSecret;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use dg_common::{
    chunk as chunker,
    ids::StorageId,
    manifest::{self, MANIFEST_FORMAT, Manifest, ManifestChunk},
    protocol::{BackupPlan, BackupResult, DatabaseTarget, Engine, LogLevel, ObjectLayout, StoredObject, Strategy},
};

use super::tool_failure;
use crate::{
    context::AgentContext,
    engine::{self, ServerInfo},
    error::{PipelineError, PipelineResult},
    keys::ChunkCipher,
    report::Reporter,
    storage::{self, OpenStorage},
};

/// Sealed chunks waiting for an upload slot.
pub(super) const CHUNK_QUEUE: usize = 1;
/// Pipe buffer asked for on the dump tool's stdout (Linux caps it at /proc/sys/fs/pipe-max-size).
const PIPE_SIZE: i32 = 1 << 20;

/// Asks for a larger pipe buffer on a restore tool's stdin, so that the tool rarely waits for the agent and
/// the agent wakes less often (best effort: Linux caps it at /proc/sys/fs/pipe-max-size).
pub(super) fn widen_pipe(stdin: &tokio::process::ChildStdin) {
    use nix::fcntl::{FcntlArg, fcntl};
    let _ = fcntl(stdin, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// Turns the tool's stdout into a blocking reader for the compressor thread, with a larger pipe buffer so
/// the tool rarely waits for us.
pub(super) fn blocking_pipe(stdout: tokio::process::ChildStdout) -> PipelineResult<std::fs::File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let fd = stdout.into_owned_fd()?;
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK)).map_err(std::io::Error::from)?;
    let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok(std::fs::File::from(fd))
}

/// Runs one backup attempt.
pub async fn run(
    plan: &BackupPlan,
    rep: &Reporter,
    cancel: &CancellationToken,
    ctx: &AgentContext,
) -> PipelineResult<BackupResult> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(plan, rep, ctx) => r,
    }
}

/// Settings of one pass, derived from the plan.
pub(super) struct PassSettings {
    pub(super) layout: ObjectLayout,
    pub(super) chunk_size: usize,
    /// The starting level (the whole stream's, when fixed).
    pub(super) level: i32,
    /// Bounds of an adaptive level.
    pub(super) adaptive: Option<dg_common::protocol::LevelBounds>,
    pub(super) workers: u32,
    pub(super) concurrency: usize,
    pub(super) cipher: Option<Arc<ChunkCipher>>,
    pub(super) tools: crate::tools::Tools,
    /// Parallel data streams (PostgreSQL; 1: one `pg_dump` stream).
    pub(super) parallel: u32,
}

impl PassSettings {
    /// The level setting of a stream compressed with `workers` threads.
    pub(super) fn level(&self) -> chunker::Level {
        match self.adaptive {
            Some(b) => chunker::Level::Adaptive { min: b.min, max: b.max },
            None => chunker::Level::Fixed(self.level),
        }
    }

    /// What seals a chunk (encryption), when the backup is encrypted.
    pub(super) fn sealer(&self) -> Option<chunker::Sealer> {
        self.cipher.clone().map(|c| Box::new(move |seq, data: Vec<u8>| c.seal(seq, &data)) as chunker::Sealer)
    }
}

/// What one pass of the dump produced.
pub(super) struct PassOutput {
    pub(super) chunks: Vec<ManifestChunk>,
    pub(super) complete: Vec<OpenStorage>,
    pub(super) dropped: Vec<String>,
    pub(super) totals: chunker::StreamTotals,
    pub(super) tool: String,
    pub(super) options: Vec<String>,
    pub(super) table_counts: Option<Vec<dg_common::protocol::drill::TableCount>>,
    pub(super) count_warning: Option<String>,
    /// A parallel backup's streams.
    pub(super) layout: Option<manifest::Layout>,
}

async fn run_inner(plan: &BackupPlan, rep: &Reporter, ctx: &AgentContext) -> PipelineResult<BackupResult> {
    let source = &plan.source;
    let layout = plan.layout;
    let mut warnings = Vec::new();
    let candidates = probe_storages(plan, rep, ctx, &mut warnings).await?;

    let info = super::test_connection(source, rep).await?;

    let (cipher, wrapped) = match &plan.encryption_key_id {
        None => (None, None),
        Some(key_id) => {
            // The data key is bound to the backup, whose id is its execution id.
            let (c, w) = ChunkCipher::create(&ctx.keys_dir, key_id, &layout.execution.id.to_string())?;
            let line = format!("chunks are encrypted (AES-256-GCM) with a data key wrapped by key \"{key_id}\"");
            rep.log(LogLevel::Info, line).await;
            (Some(Arc::new(c)), Some(w))
        }
    };
    let settings = PassSettings {
        layout,
        chunk_size: usize::try_from(plan.chunk_size)
            .map_err(|_| PipelineError::Invalid(format!("chunk size {} does not fit this host", plan.chunk_size)))?,
        level: plan.adaptive_compression.map_or(plan.compression_level, |b| b.clamp(plan.compression_level)),
        adaptive: plan.adaptive_compression,
        workers: plan.compression_workers,
        concurrency: plan.upload_concurrency as usize,
        cipher,
        tools: ctx.tools.clone(),
        parallel: plan.parallel,
    };

    let out = match plan.strategy {
        Strategy::Replicate => one_pass(source, &info, &candidates, &settings, rep).await?,
        Strategy::Fallback => fallback(source, &info, &candidates, &settings, rep, &mut warnings).await?,
    };
    warnings.extend(out.dropped.iter().cloned());
    if let Some(w) = &out.count_warning {
        rep.log(LogLevel::Warn, w.clone()).await;
        warnings.push(w.clone());
    } else if let Some(c) = &out.table_counts {
        rep.log(LogLevel::Info, format!("row counts of {} tables recorded (exact)", c.len())).await;
    }

    let globals = if plan.include_globals && source.engine == Engine::Postgres {
        let (sql, tool) = engine::postgres::dump_globals(source, &ctx.tools).await?;
        let compressed = zstd::encode_all(sql.as_slice(), settings.level)?;
        let stored = match &settings.cipher {
            Some(c) => c.seal(engine::postgres::GLOBALS_SEQ, &compressed),
            None => compressed,
        };
        let key = layout.globals_key();
        let sha256 = hex::encode(Sha256::digest(&stored));
        let body = Bytes::from(stored);
        for s in &out.complete {
            s.store
                .put(&ObjPath::from(key.as_str()), PutPayload::from(body.clone()))
                .await
                .map_err(|e| PipelineError::Storage { storage: s.id.to_string(), message: format!("globals: {e}") })?;
        }
        rep.log(LogLevel::Info, format!("globals dumped with {tool} ({} bytes of SQL)", sql.len())).await;
        Some(manifest::ManifestObject { key, size: body.len() as u64, sha256 })
    } else {
        if plan.include_globals {
            warnings.push("include_globals applies to PostgreSQL only; ignored".into());
        }
        None
    };

    // The manifest is written only once the controller has acknowledged every chunk of this attempt: an
    // attempt it has ended gets an Abort instead, which stops this pipeline before a manifest exists.
    rep.log(LogLevel::Info, "waiting for the controller to acknowledge every chunk").await;
    rep.settled().await;
    let m = Manifest {
        format: if out.layout.is_some() { MANIFEST_FORMAT } else { manifest::SINGLE_STREAM_FORMAT },
        execution_id: layout.execution.id.to_string(),
        attempt: layout.execution.attempt.0,
        datasource_id: layout.datasource.to_string(),
        engine: source.engine.name().into(),
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
        encryption_key_id: plan.encryption_key_id.clone(),
        wrapped_key: wrapped,
        encryption: settings.cipher.as_ref().map(|_| manifest::CIPHER.to_owned()),
        globals,
        layout: out.layout,
    };
    let manifest_key = layout.manifest_key();
    let body = Bytes::from(m.to_bytes());
    let mut holders = Vec::new();
    for s in &out.complete {
        match s.store.put(&ObjPath::from(manifest_key.as_str()), PutPayload::from(body.clone())).await {
            Ok(_) => holders.push(s.id),
            Err(e) => {
                let w = format!("storage {}: manifest write failed: {e}", s.id);
                rep.log(LogLevel::Warn, w.clone()).await;
                warnings.push(w);
            }
        }
    }
    if holders.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "manifest could not be written".into() });
    }
    let t = &out.totals;
    rep.log(
        LogLevel::Info,
        format!(
            "dump finished: {} raw bytes, {} stored bytes in {} chunks, sha256 {}",
            t.raw_bytes, t.stored_bytes, t.chunks, t.sha256
        ),
    )
    .await;
    let wrapped_key_sha256 = m.wrapped_key.as_deref().map(manifest::wrapped_key_binding);
    let globals = m.globals.clone().map(|g| StoredObject { key: g.key, size: g.size, sha256: g.sha256 });
    Ok(BackupResult {
        raw_bytes: t.raw_bytes,
        stored_bytes: t.stored_bytes,
        chunk_count: t.chunks,
        sha256: t.sha256.clone(),
        manifest_key,
        storages: holders,
        tool_version: out.tool,
        server_version: info.version,
        warnings,
        encryption_key_id: plan.encryption_key_id.clone(),
        wrapped_key_sha256,
        globals,
        table_counts: out.table_counts,
        layout_sha256: m.layout.as_ref().map(manifest::layout_binding),
    })
}

/// The fallback strategy: one storage at a time, in order, dumping again into the next one when a storage
/// fails part-way.
async fn fallback(
    source: &DatabaseTarget,
    info: &ServerInfo,
    candidates: &[OpenStorage],
    settings: &PassSettings,
    rep: &Reporter,
    warnings: &mut Vec<String>,
) -> PipelineResult<PassOutput> {
    for (i, s) in candidates.iter().enumerate() {
        match one_pass(source, info, std::slice::from_ref(s), settings, rep).await {
            Ok(out) => return Ok(out),
            Err(e @ PipelineError::Storage { .. }) if i + 1 < candidates.len() => {
                let w = format!("storage {} failed during the backup ({e}); dumping again into the next storage", s.id);
                rep.log(LogLevel::Warn, w.clone()).await;
                warnings.push(w);
            }
            Err(e) => return Err(e),
        }
    }
    Err(PipelineError::Storage { storage: "all".into(), message: "no storage took the backup".into() })
}

/// Opens the plan's storages and keeps those that accept a probe object, in the job's order.
async fn probe_storages(
    plan: &BackupPlan,
    rep: &Reporter,
    ctx: &AgentContext,
    warnings: &mut Vec<String>,
) -> PipelineResult<Vec<OpenStorage>> {
    let mut usable = Vec::new();
    let mut reasons = Vec::new();
    for t in &plan.storages {
        let probe = async {
            let s = storage::open(t, ctx)?;
            dg_common::store::probe(s.store.as_ref(), &plan.layout.probe_key())
                .await
                .map_err(|e| PipelineError::Storage { storage: s.id.to_string(), message: e.0 })?;
            Ok::<_, PipelineError>(s)
        };
        match probe.await {
            Ok(s) => usable.push(s),
            Err(e) => {
                let w = format!("storage {} unusable: {e}", t.id);
                rep.log(LogLevel::Warn, w.clone()).await;
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
    let ids: Vec<_> = usable.iter().map(|s| s.id.to_string()).collect();
    rep.log(LogLevel::Info, format!("usable storage(s), in order: {}", ids.join(", "))).await;
    Ok(usable)
}

/// Dumps once, writing every chunk to every target still healthy: in parallel streams when the plan asks
/// for them and the server allows it, else through one dump tool run.
async fn one_pass(
    source: &DatabaseTarget,
    info: &ServerInfo,
    targets: &[OpenStorage],
    s: &PassSettings,
    rep: &Reporter,
) -> PipelineResult<PassOutput> {
    if s.parallel > 1 && source.engine == Engine::Postgres {
        if info.major >= super::parallel::MIN_SERVER_MAJOR {
            return super::parallel::one_pass(source, info, targets, s, rep).await;
        }
        let line = format!(
            "parallel backups need PostgreSQL {} or newer (this server is {}): one pg_dump stream",
            super::parallel::MIN_SERVER_MAJOR,
            info.version
        );
        rep.log(LogLevel::Warn, line).await;
    }
    single_stream(source, info, targets, s, rep).await
}

/// Runs the dump tool once.
pub(super) async fn single_stream(
    source: &DatabaseTarget,
    info: &ServerInfo,
    targets: &[OpenStorage],
    s: &PassSettings,
    rep: &Reporter,
) -> PipelineResult<PassOutput> {
    let mut run = engine::dump(source, info, &s.tools).await?;
    let tool = format!("{} {}", run.tool, run.version);
    let tool_name: &'static str = if run.tool.starts_with("pg_") { "pg_dump" } else { "dump" };
    let (stdin, stdout) = (std::process::Stdio::null(), std::process::Stdio::piped());
    let secret = source.password.expose_secret();
    let (mut child, stderr_task) = super::start_tool(&mut run, stdin, stdout, tool_name, rep, secret)?;
    let ids: Vec<_> = targets.iter().map(|t| t.id.to_string()).collect();
    let level_text = match s.adaptive {
        Some(b) if s.workers > 0 => format!("zstd level adaptive {}..{}", b.min, b.max),
        Some(_) => format!("zstd level {} (adaptive needs compression workers)", s.level),
        None => format!("zstd level {}", s.level),
    };
    rep.log(LogLevel::Info, format!("{tool} started ({level_text}), writing to {}", ids.join(", "))).await;
    let stdout = child.stdout.take().ok_or_else(|| PipelineError::Tool("dump tool has no stdout".into()))?;
    let input = blocking_pipe(stdout)?;

    // The compressor thread reads the tool's stdout itself: no async hop and no copy between the pipe and zstd.
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let (level, workers, chunk_size, sealer) = (s.level(), s.workers, s.chunk_size, s.sealer());
    let compressor =
        tokio::task::spawn_blocking(move || chunker::compress(input, chunk_tx, level, workers, chunk_size, sealer));
    let uploader = upload_all(chunk_rx, targets, &s.layout, s.concurrency, false, rep);
    let (upload_res, comp_res) = tokio::join!(uploader, compressor);
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    let options = std::mem::take(&mut run.options);
    // The counts (taken beside the dump), then the end of the transaction whose snapshot the dump read.
    let (table_counts, count_warning) = run.counts.finish().await;
    drop(run);

    let (chunks, complete, dropped, _) = upload_res?;
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure(&tool, status, &tail)));
    }
    let totals = comp_res.map_err(|e| PipelineError::Io(std::io::Error::other(e)))??;
    if s.adaptive.is_some() {
        let line = format!("adaptive compression: {}", chunker::describe_levels(&totals.levels));
        rep.log(LogLevel::Info, line).await;
    }
    if chunks.len() as u32 != totals.chunks {
        return Err(PipelineError::Integrity(format!("{} chunks produced but {} stored", totals.chunks, chunks.len())));
    }
    Ok(PassOutput { chunks, complete, dropped, totals, tool, options, table_counts, count_warning, layout: None })
}

/// The chunk list (by seq), the storages holding every chunk, a warning per storage dropped on the way, and,
/// when asked for, the hex sha256 of every chunk's bytes in position order.
pub(super) type Uploaded = (Vec<ManifestChunk>, Vec<OpenStorage>, Vec<String>, Option<String>);

/// Uploads chunks as they come (in position order: see [`chunker::Positions`]), `concurrency` at a time, to
/// every target still healthy; hashes the whole sequence when `hash_whole` (a single stream's compressor
/// hashes its own output, so only a parallel backup asks).
pub(super) async fn upload_all(
    rx: mpsc::Receiver<chunker::SealedChunk>,
    targets: &[OpenStorage],
    layout: &ObjectLayout,
    concurrency: usize,
    hash_whole: bool,
    rep: &Reporter,
) -> PipelineResult<Uploaded> {
    let failed: Arc<Mutex<Vec<(StorageId, String)>>> = Arc::default();
    let progress = Arc::new(Mutex::new((0u64, 0u64, 0u32)));
    let is_failed = |f: &Mutex<Vec<(StorageId, String)>>, id: StorageId| {
        f.lock().map(|f| f.iter().any(|(s, _)| *s == id)).unwrap_or(true)
    };
    let mut whole = hash_whole.then(Sha256::new);
    let mut next_seq = 0u32;
    let mut chunks: Vec<ManifestChunk> = ReceiverStream::new(rx)
        .map(|c| {
            if c.seq != next_seq {
                return Err(PipelineError::Integrity(format!("chunk {} arrived where {next_seq} was due", c.seq)));
            }
            next_seq += 1;
            if let Some(h) = whole.as_mut() {
                h.update(&c.data);
            }
            Ok(c)
        })
        .map_ok(|c| {
            let failed = failed.clone();
            let progress = progress.clone();
            async move {
                let key = layout.chunk_key(c.seq);
                let path = ObjPath::from(key.as_str());
                let mut stored_somewhere = false;
                let mut last_error = String::new();
                for s in targets {
                    if is_failed(&failed, s.id) {
                        continue;
                    }
                    match put_with_retry(s, &path, c.data.clone()).await {
                        Ok(()) => {
                            stored_somewhere = true;
                            rep.chunk(s.id, c.seq, &key, c.data.len() as u64, &c.sha256, c.raw_bytes).await;
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            let w = format!("storage {} dropped from this backup: chunk {}: {e}", s.id, c.seq);
                            rep.log(LogLevel::Warn, w.clone()).await;
                            if let Ok(mut f) = failed.lock() {
                                f.push((s.id, w));
                            }
                        }
                    }
                }
                if !stored_somewhere {
                    let storage = if targets.len() == 1 { targets[0].id.to_string() } else { "all".into() };
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
        .try_buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    let failed_ids: HashSet<StorageId> = failed.iter().map(|(s, _)| *s).collect();
    let complete: Vec<OpenStorage> = targets.iter().filter(|s| !failed_ids.contains(&s.id)).cloned().collect();
    if complete.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "every storage failed".into() });
    }
    chunks.sort_by_key(|c| c.seq);
    let whole = whole.map(|h| hex::encode(h.finalize()));
    Ok((chunks, complete, failed.into_iter().map(|(_, w)| w).collect(), whole))
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
