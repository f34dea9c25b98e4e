//! The parallel, consistent PostgreSQL backup, streamed to object storage, and its restore.
//!
//! Backup: one transaction exports a snapshot and holds it (and ACCESS SHARE locks on the tables) for the
//! whole backup ([`pg_parallel::export`]). `pg_dump --snapshot --section=pre-data` and `--section=post-data`
//! each make one stream; N data streams each import the snapshot on their own connection and take the next
//! part (a table, or a ctid page range of a large one, largest first) from a shared queue, writing its
//! `COPY … TO STDOUT` text to their stream. Every stream goes through its own zstd and sha256, and all of
//! them into the one chunk channel and the uploads of a single-stream backup, numbered from shared
//! positions ([`chunker::Positions`]), so memory stays bounded per stream as before. The manifest's
//! [`Layout`] names each stream's chunks and each data stream's segments (table, columns, page range, bytes,
//! rows); the controller records its binding. Rows are counted exactly from the `COPY` text (one line a
//! row), so the backup's table counts come for free.
//!
//! Large objects are in the data section too: `pg_dump --section=data --exclude-table-data=*.*` makes a
//! fourth stream of them (that pattern also leaves out the sequences, whose values the snapshot's
//! transaction reads and the layout records). A database with extension configuration tables
//! (whose data `pg_dump` selects by the extension's own condition) is backed up in one stream instead.
//!
//! Restore ([`restore`]): the pre-data stream into `pg_restore`, then the data streams through up to M
//! loaders at once (any M: the streams are independent), each segment by `COPY … FROM STDIN` with its
//! exact byte length and its row count checked, then sequence values and large objects, then the post-data
//! stream staged to a file and restored by
//! `pg_restore --jobs M` (parallel index builds). Every chunk is checked against its recorded sha256 as it
//! is read, and every stream against the layout's sha256.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{Bytes, BytesMut};
use futures::{TryStreamExt, future::try_join_all};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use dg_common::{
    chunk::{self as chunker, ChannelReader, Positions, SealedChunk, StreamTotals},
    manifest::{Layout, POSTGRES_PARALLEL, Segment, Stream, StreamRole},
    protocol::{ChunkRef, DatabaseTarget, LogLevel, drill::TableCount},
};

use super::{
    backup::{CHUNK_QUEUE, PassOutput, PassSettings, blocking_pipe, upload_all},
    tool_failure,
};
use crate::{
    engine::{self, ServerInfo, pg_parallel},
    error::{PipelineError, PipelineResult},
    keys::ChunkCipher,
    report::Reporter,
    storage::OpenStorage,
};

/// Oldest server a parallel backup reads (`pg_attribute.attgenerated`).
pub const MIN_SERVER_MAJOR: u32 = 12;
/// Oldest server whose large tables are split into ctid ranges (TID range scans).
const SPLIT_SERVER_MAJOR: u32 = 14;
/// `COPY` output gathered before it is handed to the stream's compressor.
const BATCH: usize = 256 * 1024;
/// Decompressed block size of a restore.
const BLOCK: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one stream of the backup produced.
struct StreamOut {
    role: StreamRole,
    totals: StreamTotals,
    segments: Vec<Segment>,
    /// The dump tool and version (schema streams).
    tool: Option<String>,
}

/// Runs the parallel backup once into `targets`.
pub(super) async fn one_pass(
    source: &DatabaseTarget,
    info: &ServerInfo,
    targets: &[OpenStorage],
    s: &PassSettings,
    rep: &Reporter,
) -> PipelineResult<PassOutput> {
    let snap = pg_parallel::export(source).await?;
    if !snap.extension_config.is_empty() {
        let line = format!(
            "extension(s) {} keep configuration tables whose data only pg_dump knows how to select: one pg_dump \
             stream instead of parallel streams",
            snap.extension_config.join(", ")
        );
        snap.release().await;
        rep.log(LogLevel::Warn, line).await;
        return super::backup::single_stream(source, info, targets, s, rep).await;
    }
    let parts = pg_parallel::parts(&snap.tables, s.parallel, info.major >= SPLIT_SERVER_MAJOR);
    let streams = s.parallel.min(u32::try_from(parts.len()).unwrap_or(u32::MAX)).max(1);
    let pages: u64 = snap.tables.iter().map(|t| t.pages).sum();
    let line = format!(
        "snapshot {} exported and held; {} tables ({:.1} MiB of heap) locked; table data in {} parts through {streams} \
         parallel streams",
        snap.id,
        snap.tables.len(),
        pages as f64 * 8192.0 / (1024.0 * 1024.0),
        parts.len()
    );
    rep.log(LogLevel::Info, line).await;

    let positions = Positions::default();
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let uploader = upload_all(chunk_rx, targets, &s.layout, s.concurrency, true, rep);
    let queue = Arc::new(Mutex::new(VecDeque::from(parts)));
    // The streams are the parallelism: each compresses on its own thread (a multi-threaded zstd context per
    // stream would cost several MiB each). An adaptive level needs zstd workers, one per stream at least.
    let workers = match (s.adaptive, streams) {
        (Some(_), _) => (s.workers / streams).max(1),
        (None, 1) => s.workers,
        (None, _) => 0,
    };
    let producers = async {
        let pre = schema_stream(source, info, s, &snap.id, "pre-data", chunk_tx.clone(), positions.clone(), rep);
        let objects = schema_stream(source, info, s, &snap.id, "data", chunk_tx.clone(), positions.clone(), rep);
        let post = schema_stream(source, info, s, &snap.id, "post-data", chunk_tx.clone(), positions.clone(), rep);
        let data = try_join_all(
            (0..streams)
                .map(|_| data_stream(source, &snap, queue.clone(), chunk_tx.clone(), positions.clone(), s, workers)),
        );
        let r = tokio::try_join!(pre, objects, post, data);
        drop(chunk_tx);
        r
    };
    let (upload_res, produced) = tokio::join!(uploader, producers);
    let (encoding, id, sequences) = (snap.encoding.clone(), snap.id.clone(), snap.sequences.clone());
    snap.release().await;
    let (chunks, complete, dropped, whole) = upload_res?;
    let (pre, objects, post, data) = produced?;

    let tool = pre.tool.clone().unwrap_or_default();
    let mut all = vec![pre];
    all.extend(data);
    all.extend([objects, post]);
    let mut totals = StreamTotals {
        raw_bytes: 0,
        stored_bytes: 0,
        chunks: 0,
        sha256: whole.unwrap_or_default(),
        levels: BTreeMap::new(),
        seqs: Vec::new(),
    };
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut layout_streams = Vec::with_capacity(all.len());
    for o in all {
        totals.raw_bytes += o.totals.raw_bytes;
        totals.stored_bytes += o.totals.stored_bytes;
        totals.chunks += o.totals.chunks;
        for (l, b) in &o.totals.levels {
            *totals.levels.entry(*l).or_default() += b;
        }
        for g in &o.segments {
            *counts.entry((g.schema.clone(), g.table.clone())).or_default() += g.rows;
        }
        layout_streams.push(Stream {
            role: o.role,
            chunks: o.totals.seqs,
            raw_bytes: o.totals.raw_bytes,
            sha256: o.totals.sha256,
            segments: o.segments,
        });
    }
    if chunks.len() as u32 != totals.chunks {
        return Err(PipelineError::Integrity(format!("{} chunks produced but {} stored", totals.chunks, chunks.len())));
    }
    let layout = Layout {
        kind: POSTGRES_PARALLEL.into(),
        workers: streams,
        snapshot: id,
        encoding,
        streams: layout_streams,
        sequences,
    };
    layout.check(chunks.len()).map_err(|e| PipelineError::Integrity(format!("the backup's own layout: {e}")))?;
    if s.adaptive.is_some() {
        rep.log(LogLevel::Info, format!("adaptive compression: {}", chunker::describe_levels(&totals.levels))).await;
    }
    let (table_counts, count_warning) = if counts.len() > dg_common::protocol::drill::MAX_TABLES {
        (None, Some(format!("row counts not recorded: {} tables", counts.len())))
    } else {
        let c = counts.into_iter().map(|((schema, table), rows)| TableCount { schema, table, rows, exact: true });
        (Some(c.collect()), None)
    };
    let options = vec!["format=parallel".into(), format!("streams={streams}")];
    Ok(PassOutput {
        chunks,
        complete,
        dropped,
        totals,
        tool: format!("{tool} + COPY"),
        options,
        table_counts,
        count_warning,
        layout: Some(layout),
    })
}

/// One `pg_dump --section` run into its own stream.
#[allow(clippy::too_many_arguments)]
async fn schema_stream(
    source: &DatabaseTarget,
    info: &ServerInfo,
    s: &PassSettings,
    snapshot: &str,
    section: &'static str,
    chunk_tx: mpsc::Sender<SealedChunk>,
    positions: Positions,
    rep: &Reporter,
) -> PipelineResult<StreamOut> {
    let mut run = engine::postgres::dump_section(source, info, &s.tools, snapshot, section).await?;
    let tool = format!("{} {}", run.tool, run.version);
    let (stdin, stdout) = (std::process::Stdio::null(), std::process::Stdio::piped());
    let secret = source.password.expose_secret();
    let (mut child, stderr_task) = super::start_tool(&mut run, stdin, stdout, "pg_dump", rep, secret)?;
    let stdout = child.stdout.take().ok_or_else(|| PipelineError::Tool("pg_dump has no stdout".into()))?;
    let input = blocking_pipe(stdout)?;
    // The schema is small: one thread, the job's (lowest) level.
    let (level, chunk_size, sealer) = (chunker::Level::Fixed(s.level), s.chunk_size, s.sealer());
    let compressor = tokio::task::spawn_blocking(move || {
        chunker::compress_stream(input, chunk_tx, Some(positions), level, 0, chunk_size, sealer)
    });
    let totals = compressor.await.map_err(|e| PipelineError::Io(std::io::Error::other(e)))?;
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    drop(run);
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure(&format!("{tool} --section={section}"), status, &tail)));
    }
    let role = match section {
        "pre-data" => StreamRole::PreData,
        "data" => StreamRole::DataObjects,
        _ => StreamRole::PostData,
    };
    Ok(StreamOut { role, totals: totals?, segments: Vec::new(), tool: Some(tool) })
}

/// One data stream: takes parts from the queue until it is empty, each read by `COPY` in the snapshot.
async fn data_stream(
    source: &DatabaseTarget,
    snap: &pg_parallel::Snapshot,
    queue: Arc<Mutex<VecDeque<pg_parallel::Part>>>,
    chunk_tx: mpsc::Sender<SealedChunk>,
    positions: Positions,
    s: &PassSettings,
    workers: u32,
) -> PipelineResult<StreamOut> {
    let mut reader = pg_parallel::reader(source, &snap.id, &snap.encoding).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let (level, chunk_size, sealer) = (s.level(), s.chunk_size, s.sealer());
    let compressor = tokio::task::spawn_blocking(move || {
        chunker::compress_stream(ChannelReader::new(rx), chunk_tx, Some(positions), level, workers, chunk_size, sealer)
    });
    let feed = async {
        let mut segments = Vec::new();
        loop {
            let Some(part) = lock(&queue).pop_front() else { break };
            let mut out = reader.copy_out(source, &part).await?;
            let (mut raw, mut rows) = (0u64, 0u64);
            let mut buf = BytesMut::with_capacity(BATCH);
            while let Some(b) = out.try_next().await.map_err(|e| copy_err(source, &part, e))? {
                raw += b.len() as u64;
                rows += b.iter().filter(|c| **c == b'\n').count() as u64;
                buf.extend_from_slice(&b);
                if buf.len() >= BATCH {
                    let full = std::mem::replace(&mut buf, BytesMut::with_capacity(BATCH)).freeze();
                    tx.send(full).await.map_err(|_| compressor_gone())?;
                }
            }
            drop(out);
            if !buf.is_empty() {
                tx.send(buf.freeze()).await.map_err(|_| compressor_gone())?;
            }
            segments.push(part.segment(raw, rows));
        }
        drop(tx);
        Ok::<_, PipelineError>(segments)
    };
    let (segments, totals) = tokio::join!(feed, compressor);
    let totals = totals.map_err(|e| PipelineError::Io(std::io::Error::other(e)))?;
    let segments = segments?;
    reader.close().await;
    let totals = totals?;
    let copied: u64 = segments.iter().map(|g| g.raw_bytes).sum();
    if copied != totals.raw_bytes {
        return Err(PipelineError::Integrity(format!(
            "COPY gave {copied} bytes but {} were compressed",
            totals.raw_bytes
        )));
    }
    Ok(StreamOut { role: StreamRole::Data, totals, segments, tool: None })
}

fn copy_err(t: &DatabaseTarget, part: &pg_parallel::Part, e: sqlx::Error) -> PipelineError {
    let msg = dg_common::redact::redact(&e.to_string(), &[t.password.expose_secret()]);
    PipelineError::Tool(format!("COPY of {}.{}: {msg}", part.table.schema, part.table.name))
}

fn compressor_gone() -> PipelineError {
    PipelineError::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the stream's compressor stopped"))
}

/// Where a restore reads chunks from: the opened storages, the chunks by position, the cipher.
pub(super) struct ChunkSource<'a> {
    pub(super) stores: &'a [OpenStorage],
    pub(super) chunks: &'a [ChunkRef],
    pub(super) cipher: Option<&'a ChunkCipher>,
}

impl ChunkSource<'_> {
    /// Decompressed blocks of `stream` on a channel; the task checks every chunk as it reads it, and the
    /// stream's sha256 and raw size at its end.
    fn open(&self, stream: &Stream) -> (mpsc::Receiver<Bytes>, impl Future<Output = PipelineResult<u64>> + '_) {
        // Small queues: several streams are read at once.
        let (comp_tx, comp_rx) = mpsc::channel::<Bytes>(1);
        let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(2);
        let limit = stream.raw_bytes;
        let decompressor = tokio::task::spawn_blocking(move || chunker::decompress(comp_rx, raw_tx, BLOCK, limit));
        let seqs = stream.chunks.clone();
        let expected = stream.sha256.clone();
        let all: Vec<usize> = (0..self.stores.len()).collect();
        let task = async move {
            let download = async move {
                let mut whole = Sha256::new();
                for seq in seqs {
                    let c = self.chunks.get(seq as usize).filter(|c| c.seq == seq).ok_or_else(|| {
                        PipelineError::Integrity(format!("the layout names chunk {seq}, which the record lacks"))
                    })?;
                    // A queue slot first, then the read: a stream holds at most the chunk in its decoder
                    // and the one queued (several streams are read at once).
                    let Ok(slot) = comp_tx.reserve().await else {
                        return Ok(false); // the consumer stopped; its error explains why
                    };
                    let (_, data) = super::restore::fetch_any(self.stores, &all, c).await?;
                    whole.update(&data);
                    let data = match self.cipher {
                        Some(k) => Bytes::from(k.open_chunk(c.seq, &data)?),
                        None => data,
                    };
                    slot.send(data);
                }
                drop(comp_tx);
                if !hex::encode(whole.finalize()).eq_ignore_ascii_case(&expected) {
                    return Err(PipelineError::Integrity("a stream's chunks do not add up to its sha256".into()));
                }
                Ok::<bool, PipelineError>(true)
            };
            let (down, dec) = tokio::join!(download, decompressor);
            let whole = down?;
            let n = super::restore::decompressed(dec)?;
            if whole && n != limit {
                return Err(PipelineError::Integrity(format!("a stream decompressed to {n} bytes, not {limit}")));
            }
            Ok(n)
        };
        (raw_rx, task)
    }
}

/// Restores a parallel backup into `target` (created or emptied by the caller) with up to `jobs` streams
/// loaded at once; returns the bytes restored and the tools.
pub(super) async fn restore(
    layout: &Layout,
    src: &ChunkSource<'_>,
    target: &DatabaseTarget,
    jobs: u32,
    ctx: &crate::context::AgentContext,
    rep: &Reporter,
) -> PipelineResult<(u64, String)> {
    let stream = |r: StreamRole| layout.streams.iter().find(|s| s.role == r);
    let (Some(pre), Some(objects), Some(post)) =
        (stream(StreamRole::PreData), stream(StreamRole::DataObjects), stream(StreamRole::PostData))
    else {
        return Err(PipelineError::Integrity("the layout lacks a schema stream".into()));
    };
    let password = target.password.expose_secret().to_owned();

    // 1. The schema before the data.
    let (mut total, tool) = archive_stream(pre, src, target, ctx, rep).await?;
    rep.log(LogLevel::Info, format!("schema (pre-data) restored: {total} bytes with {tool}")).await;

    // 2. The table data, up to `jobs` streams at once, largest first.
    let mut data: Vec<&Stream> = layout.streams.iter().filter(|s| s.role == StreamRole::Data).collect();
    data.sort_by_key(|s| std::cmp::Reverse(s.raw_bytes));
    let loaders = jobs.clamp(1, 16).min(u32::try_from(data.len()).unwrap_or(1)).max(1);
    let line = format!("loading {} data streams with {loaders} parallel COPY connections", data.len());
    rep.log(LogLevel::Info, line).await;
    let queue = Mutex::new(VecDeque::from(data));
    let loaded = try_join_all((0..loaders).map(|_| async {
        let mut loader = pg_parallel::loader(target, &layout.encoding).await?;
        let mut n = 0u64;
        loop {
            let Some(stream) = lock(&queue).pop_front() else { break };
            n += load_stream(stream, src, target, &mut loader).await?;
        }
        loader.close().await;
        Ok::<u64, PipelineError>(n)
    }))
    .await?;
    let rows: u64 = layout.streams.iter().flat_map(|s| &s.segments).map(|g| g.rows).sum();
    let bytes: u64 = loaded.iter().sum();
    total += bytes;
    rep.log(LogLevel::Info, format!("table data loaded: {bytes} bytes, {rows} rows")).await;
    let (n, _) = archive_stream(objects, src, target, ctx, rep).await?;
    total += n;
    let mut loader = pg_parallel::loader(target, &layout.encoding).await?;
    for q in &layout.sequences {
        loader.set_sequence(target, q).await?;
    }
    loader.close().await;
    let line = format!("{} sequence values and the large objects restored ({n} bytes)", layout.sequences.len());
    rep.log(LogLevel::Info, line).await;

    // 3. Indexes, constraints and the rest, with parallel jobs (pg_restore needs a file for that).
    std::fs::create_dir_all(&ctx.work_dir)?;
    let path = ctx.work_dir.join(format!("restore-{}-post.dump", rep.execution().id));
    let staged = async {
        let (raw_rx, task) = src.open(post);
        let (read, written) = tokio::join!(task, super::stage(&path, raw_rx));
        let n = read?;
        written?;
        let mut run = engine::restore(target, false, Some(&path), jobs, &ctx.tools).await?;
        super::restore::run_tool(&mut run, rep, &password).await?;
        Ok::<u64, PipelineError>(n)
    };
    let r = staged.await;
    let _ = std::fs::remove_file(&path);
    let n = r?;
    total += n;
    rep.log(LogLevel::Info, format!("post-data restored ({n} bytes) with pg_restore --jobs {}", jobs.clamp(1, 16)))
        .await;
    Ok((total, format!("{tool} + COPY")))
}

/// Restores a `pg_dump` stream of the backup (pre-data, or sequence values and large objects) through
/// `pg_restore` reading stdin; returns its bytes and the tool.
async fn archive_stream(
    stream: &Stream,
    src: &ChunkSource<'_>,
    target: &DatabaseTarget,
    ctx: &crate::context::AgentContext,
    rep: &Reporter,
) -> PipelineResult<(u64, String)> {
    let mut run = engine::restore(target, false, None, 1, &ctx.tools).await?;
    let tool = format!("{} {}", run.tool, run.version);
    let (stdin, stdout) = (std::process::Stdio::piped(), std::process::Stdio::null());
    let secret = target.password.expose_secret();
    let (mut child, stderr_task) = super::start_tool(&mut run, stdin, stdout, "restore", rep, secret)?;
    let stdin = child.stdin.take().ok_or_else(|| PipelineError::Tool("pg_restore has no stdin".into()))?;
    let (raw_rx, task) = src.open(stream);
    let (read, written) = tokio::join!(task, super::feed(stdin, raw_rx));
    let status = child.wait().await?;
    let tail = stderr_task.await.unwrap_or_default();
    drop(run);
    // A stream that does not read back whole is the cause, whatever the tool made of the part it got.
    if let Err(e @ PipelineError::Integrity(_)) = read {
        return Err(e);
    }
    if !status.success() {
        return Err(PipelineError::Tool(tool_failure(&tool, status, &tail)));
    }
    let n = read?;
    written?;
    Ok((n, tool))
}

/// Loads one data stream, segment by segment, each with exactly its recorded bytes and rows.
async fn load_stream(
    stream: &Stream,
    src: &ChunkSource<'_>,
    target: &DatabaseTarget,
    loader: &mut pg_parallel::Loader,
) -> PipelineResult<u64> {
    let (mut raw_rx, task) = src.open(stream);
    let load = async {
        let mut pending = Bytes::new();
        for g in &stream.segments {
            let mut copy = loader.copy_in(target, g).await?;
            let mut left = g.raw_bytes;
            while left > 0 {
                if pending.is_empty() {
                    match raw_rx.recv().await {
                        Some(b) => pending = b,
                        None => {
                            let _ = copy.abort("the stream ended early").await;
                            return Err(PipelineError::Integrity(format!(
                                "the stream ended {left} bytes before the end of {}.{}",
                                g.schema, g.table
                            )));
                        }
                    }
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(pending.len());
                let part = pending.split_to(n);
                left -= n as u64;
                copy.send(part).await.map_err(|e| load_err(target, g, e))?;
            }
            let rows = copy.finish().await.map_err(|e| load_err(target, g, e))?;
            if rows != g.rows {
                return Err(PipelineError::Integrity(format!(
                    "{}.{}: {rows} rows loaded where the backup recorded {}",
                    g.schema, g.table, g.rows
                )));
            }
        }
        // Nothing may follow the last segment.
        while let Some(b) = raw_rx.recv().await {
            if !b.is_empty() || !pending.is_empty() {
                return Err(PipelineError::Integrity("a data stream holds more than its segments".into()));
            }
        }
        if !pending.is_empty() {
            return Err(PipelineError::Integrity("a data stream holds more than its segments".into()));
        }
        Ok::<(), PipelineError>(())
    };
    let (read, loaded) = tokio::join!(task, load);
    // A stream that does not read back whole is the cause, whatever the load made of the part it got.
    if let Err(e @ PipelineError::Integrity(_)) = read {
        return Err(e);
    }
    loaded?;
    read
}

fn load_err(t: &DatabaseTarget, g: &Segment, e: sqlx::Error) -> PipelineError {
    let msg = dg_common::redact::redact(&e.to_string(), &[t.password.expose_secret()]);
    PipelineError::Tool(format!("COPY into {}.{}: {msg}", g.schema, g.table))
}
