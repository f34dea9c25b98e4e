//! The restore pipeline. Nothing reaches the target database before every chunk has been read back and
//! matched against its recorded size and sha256 (and the whole stream against its sha256); a chunk with no
//! intact copy in any storage fails the restore naming the chunk. Then the chunks are read again, each
//! verified again before use (it could have changed since), decompressed and piped into `pg_restore`.

use bytes::Bytes;
use dg_proto::v1::{Engine, RestoreResult, RestoreTask};
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::mpsc};
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

/// Decompressed block size written to the restore tool.
const BLOCK: usize = 256 * 1024;

/// Runs one restore attempt. A verification restore (`drop_after`) drops the database it created at the
/// end, whatever the outcome.
pub async fn run(task: RestoreTask, rep: &Reporter, cancel: &CancellationToken) -> PipelineResult<RestoreResult> {
    let verify_target = task.drop_after.then(|| task.target.clone()).flatten();
    let mut created = false;
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run_inner(task, rep, &mut created) => r,
    };
    // Only a database this attempt created is dropped.
    if let Some(t) = verify_target.filter(|_| created) {
        match postgres::drop_database(&t, &t.database).await {
            Ok(()) => rep.log("info", format!("verification database {} dropped", t.database)).await,
            Err(e) => rep.log("warn", format!("verification database {} not dropped: {e}", t.database)).await,
        }
    }
    result
}

async fn fetch_verified(s: &OpenStorage, c: &dg_proto::v1::ChunkRef) -> Result<Bytes, String> {
    let data = s
        .store
        .get(&ObjPath::from(c.key.as_str()))
        .await
        .map_err(|e| format!("storage {}: {e}", s.id))?
        .bytes()
        .await
        .map_err(|e| format!("storage {}: {e}", s.id))?;
    if data.len() as u64 != c.size {
        return Err(format!("storage {}: size {} instead of {}", s.id, data.len(), c.size));
    }
    let sum = hex::encode(Sha256::digest(&data));
    if !sum.eq_ignore_ascii_case(&c.sha256) {
        return Err(format!("storage {}: sha256 mismatch", s.id));
    }
    Ok(data)
}

/// Reads a chunk from the first storage holding an intact copy.
async fn fetch_any(stores: &[OpenStorage], c: &dg_proto::v1::ChunkRef) -> PipelineResult<(usize, Bytes)> {
    let mut reasons = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        match fetch_verified(s, c).await {
            Ok(d) => return Ok((i, d)),
            Err(e) => reasons.push(e),
        }
    }
    Err(PipelineError::Integrity(format!("chunk {} ({}) has no intact copy: {}", c.seq, c.key, reasons.join("; "))))
}

async fn run_inner(task: RestoreTask, rep: &Reporter, created_db: &mut bool) -> PipelineResult<RestoreResult> {
    let target = task.target.clone().ok_or_else(|| PipelineError::Invalid("restore task without a target".into()))?;
    if engine_of(&target)? != Engine::Postgres || task.source_engine != target.engine {
        return Err(PipelineError::Invalid("only PostgreSQL backups restore into PostgreSQL with this agent".into()));
    }
    let mut stores = Vec::new();
    for t in &task.storages {
        match storage::open(t) {
            Ok(s) => stores.push(s),
            Err(e) => rep.log("warn", format!("storage {} unusable: {e}", t.storage_id)).await,
        }
    }
    if stores.is_empty() {
        return Err(PipelineError::Storage {
            storage: "all".into(),
            message: "no storage holding the backup can be opened".into(),
        });
    }
    if task.chunks.is_empty() {
        return Err(PipelineError::Integrity("the backup has no chunks".into()));
    }

    // 1. Verify everything before touching the database.
    let mut whole = Sha256::new();
    let mut total = 0u64;
    let mut sources = Vec::with_capacity(task.chunks.len());
    for (i, c) in task.chunks.iter().enumerate() {
        if c.seq as usize != i {
            return Err(PipelineError::Integrity(format!("chunk list has a gap at position {i}")));
        }
        let (src, data) = fetch_any(&stores, c).await?;
        whole.update(&data);
        total += data.len() as u64;
        sources.push(src);
    }
    let sum = hex::encode(whole.finalize());
    if !task.sha256.is_empty() && !sum.eq_ignore_ascii_case(&task.sha256) {
        return Err(PipelineError::Integrity("the chunks do not add up to the backup's sha256".into()));
    }
    rep.log("info", format!("verified {} chunks ({total} bytes) against their sha256", task.chunks.len())).await;

    // 2. Prepare the target.
    if task.create_database || task.drop_after {
        let created = postgres::ensure_database(&target, &target.database).await?;
        *created_db = created;
        if task.drop_after && !created {
            return Err(PipelineError::Invalid(format!(
                "verification database {} already exists; refusing to restore into it",
                target.database
            )));
        }
        if created {
            rep.log("info", format!("created database {}", target.database)).await;
        }
    }
    let info = postgres::test_connection(&target, &target.database).await?;
    rep.log(
        "info",
        format!("connection test ok: PostgreSQL {} answered in {} ms", info.version, info.latency.as_millis()),
    )
    .await;
    let tool_version = tools::version_of("pg_restore").await.unwrap_or_default();

    // 3. Stream: download (verify again) -> decompress -> pg_restore.
    let pass = postgres::passfile(&target)?;
    let mut child = postgres::restore_command(&target, pass.path(), task.drop_existing)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::Tool(format!("cannot start pg_restore: {e}")))?;
    rep.log("info", format!("pg_restore {tool_version} started")).await;
    let stderr_task =
        tokio::spawn(forward_stderr(child.stderr.take(), "pg_restore", rep.clone(), vec![target.password.clone()]));
    let mut stdin = child.stdin.take().ok_or_else(|| PipelineError::Tool("pg_restore has no stdin".into()))?;

    let (comp_tx, comp_rx) = mpsc::channel::<Bytes>(2);
    let (raw_tx, mut raw_rx) = mpsc::channel::<Bytes>(8);
    let decompressor = tokio::task::spawn_blocking(move || chunker::decompress(comp_rx, raw_tx, BLOCK));
    let chunks = task.chunks.clone();
    let downloader = async move {
        for (c, src) in chunks.iter().zip(sources) {
            let mut order: Vec<OpenStorage> = vec![stores[src].clone()];
            order.extend(stores.iter().enumerate().filter(|(i, _)| *i != src).map(|(_, s)| s.clone()));
            let (_, data) = fetch_any(&order, c).await?;
            if comp_tx.send(data).await.is_err() {
                break; // the decompressor stopped; its error explains why
            }
        }
        Ok::<(), PipelineError>(())
    };
    let writer = async move {
        let mut n = 0u64;
        while let Some(block) = raw_rx.recv().await {
            stdin.write_all(&block).await?;
            n += block.len() as u64;
        }
        stdin.shutdown().await?;
        drop(stdin);
        Ok::<u64, std::io::Error>(n)
    };
    let (down_res, write_res, dec_res) = tokio::join!(downloader, writer, decompressor);
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    drop(pass);

    down_res?;
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure("pg_restore", status, &tail)));
    }
    let written = write_res?;
    let decompressed = dec_res.map_err(|e| PipelineError::Io(std::io::Error::other(e)))??;
    if written != decompressed {
        return Err(PipelineError::Integrity(format!("decompressed {decompressed} bytes but wrote {written}")));
    }
    rep.log("info", format!("restore finished: {written} bytes fed to pg_restore")).await;
    Ok(RestoreResult { raw_bytes: written, tool_version: format!("pg_restore {tool_version}") })
}
