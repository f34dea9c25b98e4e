//! The chunk format shared by agents (which write and read chunks) and the controller (which streams
//! downloads). Compression and chunking on a blocking thread: raw blocks in, zstd-compressed chunks of a fixed size out,
//! each with its sha256, plus the sha256 of the whole stored stream. And the reverse: compressed chunks in,
//! decompressed blocks out.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// One sealed chunk, ready to upload.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// Position from 0.
    pub seq: u32,
    /// Compressed bytes.
    pub data: Bytes,
    /// Hex sha256 of `data`.
    pub sha256: String,
    /// Raw bytes consumed since the previous chunk (approximate).
    pub raw_bytes: u64,
}

/// Totals of a compressed stream.
#[derive(Debug, Clone)]
pub struct StreamTotals {
    /// Raw bytes in.
    pub raw_bytes: u64,
    /// Compressed bytes out.
    pub stored_bytes: u64,
    /// Chunks out.
    pub chunks: u32,
    /// Hex sha256 of all compressed bytes in order.
    pub sha256: String,
    /// Raw bytes compressed at each level (one entry for a fixed level).
    pub levels: BTreeMap<i32, u64>,
    /// The positions of the stream's chunks, in stream order (`0..chunks` unless numbered by [`Positions`]).
    pub seqs: Vec<u32>,
}

/// Chunk positions shared by the streams of one backup: every stream takes the next position as it seals a
/// chunk and hands the chunk on before the next position is taken, so chunks arrive on the shared channel
/// in position order whatever the number of streams.
#[derive(Clone, Debug, Default)]
pub struct Positions(Arc<Mutex<u32>>);

/// A blocking reader over blocks arriving on a channel (e.g. `COPY` output read by an async task), for
/// [`compress_stream`]. Ends when the channel closes.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads the blocks sent on `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { rx, current: Bytes::new() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// How the compression level is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// One level for the whole stream.
    Fixed(i32),
    /// Within `min..=max`, moved after every [`ADAPT_WINDOW`] of input (see [`Adapt`]). Needs compression
    /// workers (a new level applies from the next zstd job).
    Adaptive { min: i32, max: i32 },
}

/// Input between two decisions of the adaptive level (several zstd jobs, so each decision is measured over
/// work done at one level).
pub const ADAPT_WINDOW: u64 = 16 << 20;
/// A level is kept while the input rate stays above this share of the best rate seen.
const KEEP_RATE: f64 = 0.9;
/// Below this share of time spent waiting for input, the compressor is the bottleneck.
const SLACK_DOWN: f64 = 0.05;
/// The best rate forgets a little every window, so a slower part of the dump lowers the reference.
const BEST_DECAY: f64 = 0.99;
/// Windows before a higher level is tried again after one was given up, doubled each time up to the cap.
const FIRST_BACKOFF: u32 = 2;
const MAX_BACKOFF: u32 = 32;

/// The adaptive level: the highest level at which the dump still runs at its full rate.
///
/// Waiting for input does not by itself mean there is time to spare: on a machine with few cores the
/// compressor's threads slow the dump tool and its server down, and the reader waits *because* of them. So the
/// level starts at the lower bound, where the dump runs at its own speed, and the input rate there is the
/// reference. After every window the level is probed one step up; it stays while the rate holds (at least
/// [`KEEP_RATE`] of the best rate seen), and goes back down, with a growing back-off before the next probe,
/// when the rate falls or when the compressor never waits for input at all.
struct Adapt {
    min: i32,
    max: i32,
    level: i32,
    /// Time spent waiting for input in this window.
    waited: Duration,
    /// Time spent handing input to the compressor (not counting the upload side holding it back).
    pushed: Duration,
    window: u64,
    window_start: Instant,
    /// Time the upload side held the compressor back in this window (a level does not change it).
    held: Duration,
    best_rate: f64,
    backoff: u32,
    wait: u32,
}

impl Adapt {
    fn new(min: i32, max: i32) -> Self {
        Self {
            min,
            max,
            level: min,
            waited: Duration::ZERO,
            pushed: Duration::ZERO,
            window: 0,
            window_start: Instant::now(),
            held: Duration::ZERO,
            best_rate: 0.0,
            backoff: FIRST_BACKOFF,
            wait: 0,
        }
    }

    /// After `n` more input bytes: the new level, when it changes.
    fn observe(&mut self, n: u64) -> Option<i32> {
        self.window += n;
        if self.window < ADAPT_WINDOW {
            return None;
        }
        let elapsed = self.window_start.elapsed().saturating_sub(self.held).as_secs_f64().max(1e-6);
        let rate = self.window as f64 / elapsed;
        let busy = self.waited + self.pushed;
        let slack = if busy.is_zero() { 0.0 } else { self.waited.as_secs_f64() / busy.as_secs_f64() };
        (self.window, self.waited, self.pushed, self.held) = (0, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        self.window_start = Instant::now();
        self.decide(rate, slack)
    }

    /// The decision after a window read at `rate` bytes/s with `slack` (share of time waiting for input).
    fn decide(&mut self, rate: f64, slack: f64) -> Option<i32> {
        self.best_rate = (self.best_rate * BEST_DECAY).max(rate);
        let next = if rate < KEEP_RATE * self.best_rate || slack < SLACK_DOWN {
            // This level slows the dump (or cannot keep up with it): back down, and wait longer before the
            // next probe.
            self.wait = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            (self.level - 1).max(self.min)
        } else if self.wait > 0 {
            self.wait -= 1;
            self.level
        } else {
            (self.level + 1).min(self.max)
        };
        (next != self.level).then(|| {
            self.level = next;
            next
        })
    }
}

/// Turns a chunk's compressed bytes into its stored bytes (e.g. encryption), given its position.
pub type Sealer = Box<dyn FnMut(u32, Vec<u8>) -> Vec<u8> + Send>;

struct ChunkWriter {
    seal: Option<Sealer>,
    buf: Vec<u8>,
    chunk_size: usize,
    /// Chunks emitted so far.
    seq: u32,
    /// Positions taken from a shared counter; `None`: this stream's own `0..`.
    positions: Option<Positions>,
    seqs: Vec<u32>,
    tx: mpsc::Sender<SealedChunk>,
    total: Sha256,
    stored: u64,
    raw_seen: u64,
    raw_reported: u64,
    /// Time spent waiting for the upload side to take a chunk.
    held: Duration,
}

impl ChunkWriter {
    fn seal(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
        match self.positions.clone() {
            None => self.emit(self.seq, data),
            Some(Positions(next)) => {
                // Held while the chunk is handed on, so the channel sees positions in order.
                let mut next = next.lock().unwrap_or_else(PoisonError::into_inner);
                self.emit(*next, data)?;
                *next += 1;
                Ok(())
            }
        }
    }

    fn emit(&mut self, seq: u32, mut data: Vec<u8>) -> std::io::Result<()> {
        if let Some(seal) = self.seal.as_mut() {
            data = seal(seq, data);
        }
        self.total.update(&data);
        self.stored += data.len() as u64;
        let chunk = SealedChunk {
            seq,
            sha256: hex::encode(Sha256::digest(&data)),
            data: Bytes::from(data),
            raw_bytes: self.raw_seen - self.raw_reported,
        };
        self.raw_reported = self.raw_seen;
        self.seq += 1;
        self.seqs.push(seq);
        let t = Instant::now();
        let r = self
            .tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload side stopped"));
        self.held += t.elapsed();
        r
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.chunk_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk_size {
            self.seal()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads `input` to its end (on a blocking thread), compresses it and emits chunks of `chunk_size` compressed
/// bytes (the last one shorter) on `tx`, each passed through `seal` when given. Checksums cover the stored
/// (sealed) bytes. Stops with an error when `tx` closes. An adaptive `level` without workers stays at its
/// lower bound (a single-threaded frame keeps its level).
pub fn compress(
    input: impl std::io::Read,
    tx: mpsc::Sender<SealedChunk>,
    level: Level,
    workers: u32,
    chunk_size: usize,
    seal: Option<Sealer>,
) -> std::io::Result<StreamTotals> {
    compress_stream(input, tx, None, level, workers, chunk_size, seal)
}

/// [`compress`], numbering the chunks from `positions` when given (one of several streams of a backup).
pub fn compress_stream(
    mut input: impl std::io::Read,
    tx: mpsc::Sender<SealedChunk>,
    positions: Option<Positions>,
    level: Level,
    workers: u32,
    chunk_size: usize,
    seal: Option<Sealer>,
) -> std::io::Result<StreamTotals> {
    let writer = ChunkWriter {
        seal,
        buf: Vec::with_capacity(chunk_size),
        chunk_size,
        seq: 0,
        positions,
        seqs: Vec::new(),
        tx,
        total: Sha256::new(),
        stored: 0,
        raw_seen: 0,
        raw_reported: 0,
        held: Duration::ZERO,
    };
    let mut adapt = match level {
        Level::Adaptive { min, max } if workers > 0 => Some(Adapt::new(min, max)),
        _ => None,
    };
    let mut current = match level {
        Level::Fixed(l) => l,
        Level::Adaptive { min, .. } => min,
    };
    let mut enc = zstd::stream::write::Encoder::new(writer, current)?;
    if workers > 0 {
        enc.multithread(workers)?;
        // Small jobs keep the workers' buffers (and so the agent's memory) small; 1 MiB is still far above
        // the point where job size costs throughput.
        enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(1 << 20))?;
    }
    enc.include_checksum(true)?;
    let mut levels = BTreeMap::new();
    let mut block = vec![0u8; READ_BLOCK];
    loop {
        let t = Instant::now();
        let n = match input.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let waited = t.elapsed();
        enc.get_mut().raw_seen += n as u64;
        *levels.entry(current).or_insert(0u64) += n as u64;
        let (t, held) = (Instant::now(), enc.get_ref().held);
        enc.write_all(&block[..n])?;
        if let Some(a) = adapt.as_mut() {
            let held = enc.get_ref().held.saturating_sub(held);
            a.waited += waited;
            a.held += held;
            a.pushed += t.elapsed().saturating_sub(held);
            if let Some(next) = a.observe(n as u64) {
                enc.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(next))?;
                current = next;
            }
        }
    }
    let mut w = enc.finish()?;
    if !w.buf.is_empty() || w.seq == 0 {
        w.seal()?;
    }
    Ok(StreamTotals {
        raw_bytes: w.raw_seen,
        stored_bytes: w.stored,
        chunks: w.seq,
        sha256: hex::encode(w.total.finalize()),
        levels,
        seqs: w.seqs,
    })
}

/// "level 1: 120 MiB, level 3: 40 MiB": the raw bytes compressed at each level.
pub fn describe_levels(levels: &BTreeMap<i32, u64>) -> String {
    levels
        .iter()
        .map(|(l, b)| format!("level {l}: {:.1} MiB", *b as f64 / (1024.0 * 1024.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read size from the dump tool's output.
const READ_BLOCK: usize = 256 * 1024;

struct BlockWriter {
    buf: Vec<u8>,
    block: usize,
    tx: mpsc::Sender<Bytes>,
    written: u64,
    /// Most bytes the stream may decompress to.
    limit: u64,
}

impl BlockWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.block));
        self.written += data.len() as u64;
        self.tx
            .blocking_send(Bytes::from(data))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "restore tool stopped reading"))
    }
}

impl Write for BlockWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.written + (self.buf.len() + data.len()) as u64 > self.limit {
            let limit = self.limit;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the stored stream decompresses to more than the {limit} bytes recorded"),
            ));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.block {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Decompresses verified chunks from `rx` into blocks on `tx`. Runs on a blocking thread; returns the
/// number of decompressed bytes. A stream that ends mid-frame is an error of kind `InvalidData` (see
/// [`is_truncated`]): the decoder is finished, not just unwrapped, so a cut-off backup never passes as whole.
/// So is a stream that decompresses to more than `limit` bytes (the recorded raw size), stopped there.
pub fn decompress(
    mut rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    block: usize,
    limit: u64,
) -> std::io::Result<u64> {
    let writer = BlockWriter { buf: Vec::with_capacity(block), block, tx, written: 0, limit };
    let mut dec = zstd::stream::write::Decoder::new(writer)?;
    while let Some(chunk) = rx.blocking_recv() {
        dec.write_all(&chunk)?;
    }
    let mut w = dec.finish().map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => e,
        _ => std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{TRUNCATED}: {e}")),
    })?;
    w.send()?;
    Ok(w.written)
}

const TRUNCATED: &str = "the stored stream is not a complete zstd stream (truncated or damaged)";

/// True when a [`decompress`] error means the stream itself is bad (truncated mid-frame or corrupt), as opposed
/// to the consumer going away.
pub fn is_truncated(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Compresses `data` into chunks of `chunk` bytes; returns the chunks and the totals.
    fn chunked(data: &[u8], chunk: usize, level: i32) -> (Vec<SealedChunk>, StreamTotals) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let input = std::io::Cursor::new(data.to_vec());
        let totals = compress(input, tx, Level::Fixed(level), 0, chunk, None).expect("compress");
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        (out, totals)
    }

    /// Decompresses `parts` in order.
    fn unchunked(parts: Vec<Bytes>) -> std::io::Result<Vec<u8>> {
        let (ctx, crx) = mpsc::channel(parts.len().max(1));
        let (btx, mut brx) = mpsc::channel(1 << 16);
        for p in parts {
            ctx.blocking_send(p).expect("send");
        }
        drop(ctx);
        decompress(crx, btx, 4096, u64::MAX)?;
        let mut out = Vec::new();
        while let Ok(b) = brx.try_recv() {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any input, any chunk size: the chunks are full but the last, each checksum covers its bytes, the
        /// whole checksum covers them in order, and decompressing gives back exactly the input.
        #[test]
        fn chunk_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000), chunk in 1usize..70_000, level in 1i32..6) {
            let (chunks, totals) = chunked(&data, chunk, level);
            prop_assert_eq!(totals.raw_bytes, data.len() as u64);
            prop_assert_eq!(chunks.len() as u32, totals.chunks);
            prop_assert!(chunks.iter().rev().skip(1).all(|c| c.data.len() == chunk));
            prop_assert!(chunks.iter().enumerate().all(|(i, c)| c.seq as usize == i));
            let mut whole = Sha256::new();
            for c in &chunks {
                prop_assert_eq!(hex::encode(Sha256::digest(&c.data)), c.sha256.clone());
                whole.update(&c.data);
            }
            prop_assert_eq!(hex::encode(whole.finalize()), totals.sha256);
            let back = unchunked(chunks.into_iter().map(|c| c.data).collect()).expect("decompress");
            prop_assert!(back == data);
        }

        /// A stored stream cut anywhere before its end (a lost last chunk, a short object) is refused as
        /// truncated; it never decompresses "successfully" into a prefix of the data.
        #[test]
        fn truncated_streams_are_refused(data in proptest::collection::vec(any::<u8>(), 1..100_000), cut in 0.0f64..1.0) {
            let (chunks, _) = chunked(&data, 8192, 3);
            let stream: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
            // At least one byte kept: an empty stream is no stream at all, not a truncated one.
            let keep = (((stream.len() as f64) * cut) as usize).max(1);
            prop_assume!(keep < stream.len());
            match unchunked(vec![Bytes::from(stream[..keep].to_vec())]) {
                Err(e) => prop_assert!(is_truncated(&e), "{}", e),
                Ok(out) => prop_assert!(false, "a truncated stream decompressed to {} bytes", out.len()),
            }
        }
    }

    #[test]
    fn chunks_round_trip_and_hash() {
        // Pseudo-random bytes (an LCG) so the compressed stream spans many chunks.
        let mut x: u32 = 12345;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let (chunk_tx, mut chunk_rx) = mpsc::channel(64);
        let input = std::io::Cursor::new(data.clone());
        let comp = std::thread::spawn(move || compress(input, chunk_tx, Level::Fixed(3), 0, 64 * 1024, None));
        let totals = comp.join().expect("thread").expect("compress");
        let mut chunks = Vec::new();
        while let Ok(c) = chunk_rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(totals.raw_bytes, data.len() as u64);
        assert_eq!(chunks.len() as u32, totals.chunks);
        assert!(chunks.len() > 1, "several chunks expected");
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.data.len() == 64 * 1024));
        let mut whole = Sha256::new();
        for c in &chunks {
            assert_eq!(hex::encode(Sha256::digest(&c.data)), c.sha256);
            whole.update(&c.data);
        }
        assert_eq!(hex::encode(whole.finalize()), totals.sha256);

        let (ctx, crx) = mpsc::channel(64);
        let (btx, mut brx) = mpsc::channel(1024);
        for c in chunks {
            ctx.blocking_send(c.data).expect("send");
        }
        drop(ctx);
        let n = decompress(crx, btx, 32 * 1024, data.len() as u64).expect("decompress");
        let mut out = Vec::new();
        while let Ok(b) = brx.try_recv() {
            out.extend_from_slice(&b);
        }
        assert_eq!(n, data.len() as u64);
        assert!(out == data, "round trip must be exact");

        // One byte less than the stream holds is refused as a damaged stream.
        let (ctx, crx) = mpsc::channel(64);
        let (btx, _brx) = mpsc::channel(1024);
        for c in chunked(&data, 64 * 1024, 3).0 {
            ctx.blocking_send(c.data).expect("send");
        }
        drop(ctx);
        let e = decompress(crx, btx, 32 * 1024, data.len() as u64 - 1).expect_err("over the recorded size");
        assert!(is_truncated(&e) && e.to_string().contains("more than the"), "{e}");
    }

    /// Hex text of a cheap pseudo-random stream: compresses about 2:1, like the bench's hard data.
    fn hex_text(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(hex::encode(x.to_le_bytes()).as_bytes());
        }
        out.truncate(len);
        out
    }

    /// A dump tool slower than the compressor: every read waits.
    struct Slow(std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(4));
            self.0.read(buf)
        }
    }

    fn adaptive_run(input: impl std::io::Read + Send + 'static, level: Level) -> (StreamTotals, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(4);
        let comp = std::thread::spawn(move || compress(input, tx, level, 2, 1 << 20, None));
        let mut parts = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            parts.push(c.data);
        }
        let totals = comp.join().expect("thread").expect("compress");
        (totals, unchunked(parts).expect("decompress"))
    }

    #[test]
    fn the_adaptive_level_climbs_while_the_rate_holds_and_backs_off_when_it_falls() {
        let mut a = Adapt::new(1, 4);
        let mut levels = Vec::new();
        // The dump runs at 100 MB/s whatever the level: one step up per window, to the bound.
        for _ in 0..5 {
            a.decide(100e6, 0.5);
            levels.push(a.level);
        }
        assert_eq!(levels, [2, 3, 4, 4, 4]);
        // Level 4 slows the dump to 80 MB/s: back to 3, then two windows before the next try.
        assert_eq!(a.decide(80e6, 0.5), Some(3));
        assert_eq!((a.decide(99e6, 0.5), a.decide(99e6, 0.5)), (None, None));
        assert_eq!(a.decide(99e6, 0.5), Some(4));
        // It fails again: back, and now four windows of waiting (the back-off doubles).
        assert_eq!(a.decide(70e6, 0.5), Some(3));
        let waits: Vec<_> = (0..4).map(|_| a.decide(99e6, 0.5)).collect();
        assert!(waits.iter().all(Option::is_none), "{waits:?}");
        assert_eq!(a.decide(99e6, 0.5), Some(4));
        // A compressor that never waits for input goes down whatever the rate, never below the bound.
        let mut b = Adapt::new(1, 9);
        assert_eq!(b.decide(100e6, 0.5), Some(2));
        assert_eq!(b.decide(100e6, 0.01), Some(1));
        assert_eq!(b.decide(100e6, 0.01), None, "stays at the lower bound");
        assert_eq!(b.level, 1);
    }

    #[test]
    fn an_adaptive_stream_round_trips_within_its_bounds() {
        // Real compression with the level moving (a slow reader gives the dump's rate): whatever levels were
        // used, within the bounds, the stream decompresses to the input and every byte is accounted for.
        let data = hex_text(48 << 20);
        let slow = Slow(std::io::Cursor::new(data.clone()));
        let (t, back) = adaptive_run(slow, Level::Adaptive { min: 1, max: 4 });
        assert!(back == data, "the stream decompresses to the input whatever the levels");
        assert_eq!(t.levels.values().sum::<u64>(), data.len() as u64);
        assert!(t.levels.keys().all(|l| (1..=4).contains(l)), "{:?}", t.levels);
        assert_eq!(t.levels.keys().next(), Some(&1), "it starts at the lower bound: {:?}", t.levels);
        // A fixed level stays where it is.
        let (t, _) = adaptive_run(std::io::Cursor::new(hex_text(20 << 20)), Level::Fixed(2));
        assert_eq!(t.levels.keys().collect::<Vec<_>>(), [&2]);
    }

    /// Streams compressed at once from several threads with shared positions: the channel sees positions
    /// 0, 1, 2… in order, every position belongs to exactly one stream, and each stream's chunks (by its own
    /// list) decompress to exactly its input.
    #[test]
    fn shared_positions_arrive_in_order_and_each_stream_round_trips() {
        let inputs: Vec<Vec<u8>> = (0..4u8)
            .map(|i| (0..200_000u32).map(|j| (j.wrapping_mul(2_654_435_761) >> (i + 3)) as u8 ^ i).collect())
            .collect();
        let (tx, mut rx) = mpsc::channel(1);
        let positions = Positions::default();
        let threads: Vec<_> = inputs
            .iter()
            .cloned()
            .map(|data| {
                let (tx, positions) = (tx.clone(), positions.clone());
                let (btx, brx) = mpsc::channel(2);
                std::thread::spawn(move || {
                    for part in data.chunks(7000) {
                        btx.blocking_send(Bytes::copy_from_slice(part)).expect("reader alive");
                    }
                });
                std::thread::spawn(move || {
                    compress_stream(ChannelReader::new(brx), tx, Some(positions), Level::Fixed(1), 0, 4096, None)
                        .expect("compress")
                })
            })
            .collect();
        drop(tx);
        let mut arrived = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            arrived.push(c);
        }
        let totals: Vec<StreamTotals> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        let order: Vec<u32> = arrived.iter().map(|c| c.seq).collect();
        assert_eq!(order, (0..arrived.len() as u32).collect::<Vec<_>>(), "positions in order on the channel");
        let mut all: Vec<u32> = totals.iter().flat_map(|t| t.seqs.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, order, "every position in exactly one stream");
        for (t, data) in totals.iter().zip(&inputs) {
            assert!(t.seqs.windows(2).all(|w| w[0] < w[1]));
            let parts = t.seqs.iter().map(|s| arrived[*s as usize].data.clone()).collect();
            assert_eq!(&unchunked(parts).expect("decompress"), data);
        }
    }
}
