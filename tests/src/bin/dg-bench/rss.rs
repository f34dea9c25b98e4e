//! Agent memory: reading /proc/<pid>/status and a background thread sampling the agent's VmRSS every 100 ms,
//! with a per-phase peak (`begin`/`end` around each timed step) and a whole-run peak.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// A field of /proc/<pid>/status in bytes (the file gives kB).
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        let kb: u64 = l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Samples the agent's VmRSS every 100 ms and keeps the peak of the current phase and of the whole run.
pub(crate) struct RssSampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    overall: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let now = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(now));
        let overall = Arc::new(AtomicU64::new(now));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, o, s) = (peak.clone(), overall.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    p.fetch_max(rss, Ordering::Relaxed);
                    o.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { pid, peak, overall, stop }
    }

    fn sample(&self) -> Option<u64> {
        let rss = proc_status_bytes(self.pid, "VmRSS")?;
        self.overall.fetch_max(rss, Ordering::Relaxed);
        Some(rss)
    }

    pub(crate) fn begin(&self) {
        self.peak.store(self.sample().unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn end(&self) -> u64 {
        if let Some(rss) = self.sample() {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }

    /// Highest VmRSS sampled since the start.
    pub(crate) fn overall(&self) -> u64 {
        self.sample();
        self.overall.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
