//! The backup pipeline (see the module above for the shape). Storage choice: `fallback` probes the job's
//! storages in order and writes the whole backup to the first that accepts a probe object; `replicate` writes
//! every chunk to every storage that accepts the probe, drops a storage that fails mid-way (with a warning)
//! and succeeds while at least one storage holds a complete copy.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use dg_common::manifest::{self, MANIFEST_FORMAT, Manifest, ManifestChunk};
use dg_proto::v1::{BackupResult, BackupTask, Engine, StorageStrategy};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, path::Path as ObjPath};
use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use dg_common::chunk as chunker;

use super::{forward_stderr, tool_failure};
use crate::{
    engine::{engine_of, postgres},
    error::{PipelineError, PipelineResult},
    executor::Reporter,
    storage::{self, OpenStorage},
    tools,
};

/// Chunks being uploaded at once.
const UPLOAD_CONCURRENCY: usize = 3;
/// Sealed chunks waiting for an upload slot.
const CHUNK_QUEUE: usize = 2;
/// Raw read size from the dump tool.
const READ_BLOCK: usize = 256 * 1024;

/// Runs one backup attempt.
pub async fn run(task: BackupTask, rep: &Reporter, cancel: &CancellationToken) -> PipelineResult<BackupResult> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(task, rep) => r,
    }
}

async fn run_inner(task: BackupTask, rep: &Reporter) -> PipelineResult<BackupResult> {
    let source = task.source.clone().ok_or_else(|| PipelineError::Invalid("backup task without a source".into()))?;
    if engine_of(&source)? != Engine::Postgres {
        return Err(PipelineError::Invalid("only PostgreSQL backups are supported by this agent version".into()));
    }
    if task.key_prefix.is_empty() || task.key_prefix.contains("..") {
        return Err(PipelineError::Invalid("bad key prefix".into()));
    }
    let chunk_size = usize::try_from(task.chunk_size).unwrap_or(0).clamp(1 << 20, 256 << 20);
    let level = if (1..=19).contains(&task.compression_level) { task.compression_level } else { 3 };

    let targets = choose_storages(&task, rep).await?;

    let info = postgres::test_connection(&source, &source.database).await?;
    rep.log(
        "info",
        format!("connection test ok: PostgreSQL {} answered in {} ms", info.version, info.latency.as_millis()),
    )
    .await;
    let tool_version = tools::version_of("pg_dump").await.unwrap_or_default();
    postgres::check_dump_compat(&tool_version, info.major)?;

    let pass = postgres::passfile(&source)?;
    let mut child = postgres::dump_command(&source, pass.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Tool(format!("cannot start pg_dump: {e}")))?;
    rep.log("info", format!("pg_dump {tool_version} started (custom format, zstd level {level})")).await;
    let stderr_task =
        tokio::spawn(forward_stderr(child.stderr.take(), "pg_dump", rep.clone(), vec![source.password.clone()]));
    let mut stdout = child.stdout.take().ok_or_else(|| PipelineError::Tool("pg_dump has no stdout".into()))?;

    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(4);
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let compressor = tokio::task::spawn_blocking(move || chunker::compress(raw_rx, chunk_tx, level, 0, chunk_size));

    let reader = async move {
        loop {
            let mut buf = BytesMut::with_capacity(READ_BLOCK);
            let n = stdout.read_buf(&mut buf).await?;
            if n == 0 {
                break;
            }
            if raw_tx.send(buf.freeze()).await.is_err() {
                break; // compressor stopped; its error explains why
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let uploader = upload_all(chunk_rx, &targets, &task.key_prefix, rep);
    let (read_res, upload_res, comp_res) = tokio::join!(reader, uploader, compressor);
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    drop(pass);

    let (chunks, complete) = upload_res?;
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure("pg_dump", status, &tail)));
    }
    read_res?;
    let totals = comp_res.map_err(|e| PipelineError::Io(std::io::Error::other(e)))??;
    if chunks.len() as u32 != totals.chunks {
        return Err(PipelineError::Integrity(format!("{} chunks produced but {} stored", totals.chunks, chunks.len())));
    }

    let m = Manifest {
        format: MANIFEST_FORMAT,
        execution_id: rep.execution_id().to_owned(),
        attempt: 0,
        datasource_id: task.key_prefix.split('/').next().unwrap_or_default().to_owned(),
        engine: "postgres".into(),
        tool_version: format!("pg_dump {tool_version}"),
        server_version: info.version.clone(),
        options: vec!["format=custom".into(), "compress=0".into()],
        created_at: chrono::Utc::now().to_rfc3339(),
        compression: "zstd".into(),
        compression_level: level,
        raw_bytes: totals.raw_bytes,
        stored_bytes: totals.stored_bytes,
        sha256: totals.sha256.clone(),
        chunks,
        encryption_key_id: None,
    };
    let m = Manifest { attempt: task.key_prefix.rsplit('/').next().and_then(|a| a.parse().ok()).unwrap_or(0), ..m };
    let manifest_key = manifest::manifest_key(&task.key_prefix);
    let body = Bytes::from(m.to_bytes());
    let mut holders = Vec::new();
    for s in complete {
        match s.store.put(&ObjPath::from(manifest_key.as_str()), PutPayload::from(body.clone())).await {
            Ok(_) => holders.push(s.id.clone()),
            Err(e) => rep.log("warn", format!("storage {}: manifest write failed: {e}", s.id)).await,
        }
    }
    if holders.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "manifest could not be written".into() });
    }
    rep.log(
        "info",
        format!(
            "dump finished: {} raw bytes, {} stored bytes in {} chunks, sha256 {}",
            totals.raw_bytes, totals.stored_bytes, totals.chunks, totals.sha256
        ),
    )
    .await;
    Ok(BackupResult {
        raw_bytes: totals.raw_bytes,
        stored_bytes: totals.stored_bytes,
        chunk_count: totals.chunks,
        sha256: totals.sha256,
        manifest_key,
        storage_ids: holders,
        tool_version: format!("pg_dump {tool_version}"),
        server_version: info.version,
    })
}

/// Opens the task's storages and picks the ones to write per strategy, probing each with a small object.
async fn choose_storages(task: &BackupTask, rep: &Reporter) -> PipelineResult<Vec<OpenStorage>> {
    let replicate = StorageStrategy::try_from(task.strategy) == Ok(StorageStrategy::Replicate);
    let mut chosen = Vec::new();
    let mut reasons = Vec::new();
    for t in &task.storages {
        let probe = async {
            let s = storage::open(t)?;
            let key = ObjPath::from(format!("{}/.probe", task.key_prefix));
            s.store
                .put(&key, PutPayload::from_static(b"dataguardian probe"))
                .await
                .map_err(|e| PipelineError::Storage { storage: s.id.clone(), message: e.to_string() })?;
            let _ = s.store.delete(&key).await;
            Ok::<_, PipelineError>(s)
        };
        match probe.await {
            Ok(s) => {
                chosen.push(s);
                if !replicate {
                    break;
                }
            }
            Err(e) => {
                rep.log("warn", format!("storage {} skipped: {e}", t.storage_id)).await;
                reasons.push(e.to_string());
            }
        }
    }
    if chosen.is_empty() {
        return Err(PipelineError::Storage {
            storage: "all".into(),
            message: format!("no storage usable: {}", reasons.join("; ")),
        });
    }
    let ids: Vec<_> = chosen.iter().map(|s| s.id.as_str()).collect();
    rep.log("info", format!("writing to storage(s) {}", ids.join(", "))).await;
    Ok(chosen)
}

/// Uploads chunks as they come, `UPLOAD_CONCURRENCY` at a time, to every target still healthy. Returns the
/// chunk list (by seq) and the storages holding every chunk.
async fn upload_all(
    rx: mpsc::Receiver<chunker::SealedChunk>,
    targets: &[OpenStorage],
    prefix: &str,
    rep: &Reporter,
) -> PipelineResult<(Vec<ManifestChunk>, Vec<OpenStorage>)> {
    let failed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let progress = Arc::new(Mutex::new((0u64, 0u64, 0u32)));
    let mut chunks: Vec<ManifestChunk> = ReceiverStream::new(rx)
        .map(|c| {
            let failed = failed.clone();
            let progress = progress.clone();
            async move {
                let key = manifest::chunk_key(prefix, c.seq);
                let path = ObjPath::from(key.as_str());
                let mut stored_somewhere = false;
                for s in targets {
                    if failed.lock().map(|f| f.contains(&s.id)).unwrap_or(false) {
                        continue;
                    }
                    match put_with_retry(s, &path, c.data.clone()).await {
                        Ok(()) => {
                            stored_somewhere = true;
                            rep.chunk(&s.id, c.seq, &key, c.data.len() as u64, &c.sha256, c.raw_bytes).await;
                        }
                        Err(e) => {
                            rep.log("warn", format!("storage {} dropped from this backup: chunk {}: {e}", s.id, c.seq))
                                .await;
                            if let Ok(mut f) = failed.lock() {
                                f.insert(s.id.clone());
                            }
                        }
                    }
                }
                if !stored_somewhere {
                    return Err(PipelineError::Storage {
                        storage: "all".into(),
                        message: format!("chunk {} could not be stored anywhere", c.seq),
                    });
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
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect()
        .await?;
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    let complete: Vec<OpenStorage> = targets.iter().filter(|s| !failed.contains(&s.id)).cloned().collect();
    if complete.is_empty() {
        return Err(PipelineError::Storage { storage: "all".into(), message: "every storage failed".into() });
    }
    chunks.sort_by_key(|c| c.seq);
    Ok((chunks, complete))
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
