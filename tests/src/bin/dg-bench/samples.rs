//! Measurements: the repeated timings of each step, their median and spread, why a DataGuardian step has no
//! figure, and the per-engine report that `bench` fills and `report` prints.

use crate::{engine::Kind, source::Source};

/// Repeated measurements of one step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Samples {
    pub(crate) secs: Vec<f64>,
    /// Bytes the step wrote (a file, or what DataGuardian stored), from its last run.
    pub(crate) bytes: Option<u64>,
    /// Highest agent VmRSS seen during any run of the step.
    pub(crate) rss: u64,
}

impl Samples {
    pub(crate) fn push(&mut self, secs: f64, bytes: Option<u64>, rss: u64) {
        self.secs.push(secs);
        if bytes.is_some() {
            self.bytes = bytes;
        }
        self.rss = self.rss.max(rss);
    }

    pub(crate) fn median(&self) -> Option<f64> {
        median(&self.secs)
    }
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// "min..max" of several runs; empty for one.
pub(crate) fn spread(v: &[f64]) -> String {
    if v.len() < 2 {
        return String::new();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}..{max:.2}")
}

/// Why a DataGuardian step has no figure.
#[derive(Clone, Debug)]
pub(crate) enum Problem {
    /// The agent build does not support the engine.
    Unavailable(String),
    Failed(String),
}

/// A DataGuardian step: its runs, or why it stopped.
#[derive(Clone, Debug, Default)]
pub(crate) struct DgSamples {
    /// From the RPC call to seeing `completed`; bytes are the stored bytes.
    pub(crate) wall: Samples,
    /// The executions' started_at..finished_at.
    pub(crate) exec: Vec<f64>,
    pub(crate) raw: u64,
    pub(crate) chunks: u32,
    pub(crate) problem: Option<Problem>,
}

impl DgSamples {
    pub(crate) fn median(&self) -> Option<f64> {
        if self.problem.is_some() { None } else { self.wall.median() }
    }
}

pub(crate) struct EngineReport {
    pub(crate) kind: Kind,
    pub(crate) source: Source,
    pub(crate) dump_file: Samples,
    pub(crate) dump_alone: Samples,
    pub(crate) pipeline: Samples,
    pub(crate) dg_backup: DgSamples,
    /// (c1) the same job at fixed level 1.
    pub(crate) dg_backup_l1: DgSamples,
    /// (c2) the same job with an adaptive level.
    pub(crate) dg_backup_adaptive: DgSamples,
    /// The levels each adaptive backup reported.
    pub(crate) adaptive_levels: Vec<String>,
    pub(crate) plain_restore: Samples,
    pub(crate) dg_restore: DgSamples,
    pub(crate) dg_verify: DgSamples,
    /// Restore drills (wall: the call to the run's end; exec: the restore executions' spans).
    pub(crate) dg_drill: DgSamples,
    /// The drills' recovery times.
    pub(crate) drill_rto: Vec<f64>,
    pub(crate) notes: Vec<String>,
    pub(crate) error: Option<String>,
}

impl EngineReport {
    /// "pg hard": the engine and the data set, as log lines are tagged.
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.kind.short(), self.source.dataset)
    }

    /// "PostgreSQL, hard": as the report names it.
    pub(crate) fn title(&self) -> String {
        format!("{}, {}", self.kind.label(), self.source.dataset)
    }
}
