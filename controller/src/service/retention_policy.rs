//! Retention decisions: which of a job's completed backups stay, and why. A pure function of the backups,
//! the policy, the job's time zone and `now` (no I/O, no clock), so the cleanup worker and
//! `BackupJobService/PreviewRetention` give the same answer for the same input. Called by
//! [`super::retention`].
//!
//! Invariants: a pinned backup, the newest good backup and a backup read by a queued or running
//! execution are never deleted; the newest `min_backups` good backups are never deleted; a backup is
//! otherwise kept only when the mode selects it and it is not older than `max_age`. Applying the decision
//! to the kept set deletes nothing more (idempotent).

use std::{collections::HashSet, fmt};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::model::{BackupJob, RetentionMode};

/// Upper bound of every count in a policy.
pub const MAX_COUNT: u32 = 10_000;

/// A validated retention policy. In `Count` mode the newest `max_backups` good backups are selected, or
/// when that is 0 the newest `keep_daily + keep_weekly + keep_monthly` (the original rule), or all of them
/// when every count is 0. In `Gfs` mode each `keep_<tier>` selects the newest good backup of each of the
/// last N periods of that tier (local time of the job's zone) that hold a good backup. In both modes
/// `min_backups` always keeps the newest N good backups and `max_age_secs` (0: none) drops the selection
/// of older backups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// How the counts are read.
    pub mode: RetentionMode,
    /// Count mode: newest backups kept (0: the sum of the keep_daily/weekly/monthly counts).
    pub max_backups: u32,
    /// GFS: hours.
    pub keep_hourly: u32,
    /// Daily backups (count mode: part of the sum).
    pub keep_daily: u32,
    /// Weekly backups (count mode: part of the sum).
    pub keep_weekly: u32,
    /// Monthly backups (count mode: part of the sum).
    pub keep_monthly: u32,
    /// GFS: years.
    pub keep_yearly: u32,
    /// The newest this many good backups are always kept.
    pub min_backups: u32,
    /// Backups older than this are deleted unless protected or within `min_backups` (0: no limit).
    pub max_age_secs: u64,
}

impl Default for RetentionPolicy {
    /// What a job without a policy gets: 7 backups (count mode).
    fn default() -> Self {
        Self {
            mode: RetentionMode::Count,
            max_backups: 0,
            keep_hourly: 0,
            keep_daily: 7,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            min_backups: 0,
            max_age_secs: 0,
        }
    }
}

impl RetentionPolicy {
    /// The policy stored on a job (negative stored counts read as 0).
    pub fn of(job: &BackupJob) -> Self {
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        Self {
            mode: job.retention_mode,
            max_backups: u(job.max_backups),
            keep_hourly: u(job.keep_hourly),
            keep_daily: u(job.keep_daily),
            keep_weekly: u(job.keep_weekly),
            keep_monthly: u(job.keep_monthly),
            keep_yearly: u(job.keep_yearly),
            min_backups: u(job.min_backups),
            max_age_secs: u64::try_from(job.max_age_secs).unwrap_or(0),
        }
    }

    /// Count mode: how many newest good backups are selected; `None` selects all.
    pub fn count(&self) -> Option<usize> {
        let n = if self.max_backups > 0 {
            self.max_backups
        } else {
            self.keep_daily.saturating_add(self.keep_weekly).saturating_add(self.keep_monthly)
        };
        usize::try_from(n).ok().filter(|n| *n > 0)
    }

    fn tiers(&self) -> [(Tier, u32); 5] {
        [
            (Tier::Hourly, self.keep_hourly),
            (Tier::Daily, self.keep_daily),
            (Tier::Weekly, self.keep_weekly),
            (Tier::Monthly, self.keep_monthly),
            (Tier::Yearly, self.keep_yearly),
        ]
    }
}

/// A GFS tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Local clock hour.
    Hourly,
    /// Local calendar day.
    Daily,
    /// ISO week (Monday to Sunday, local time).
    Weekly,
    /// Local calendar month.
    Monthly,
    /// Local calendar year.
    Yearly,
}

impl Tier {
    /// The period of `at` in `tz`, spelled as it is shown ("2026-11-30T14", "2026-11-30", "2026-W49",
    /// "2026-11", "2026"). Local wall-clock time: the repeated hour of a DST fall-back is one period.
    pub fn period(self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = at.with_timezone(&tz);
        let fmt = match self {
            Tier::Hourly => "%Y-%m-%dT%H",
            Tier::Daily => "%Y-%m-%d",
            Tier::Weekly => "%G-W%V",
            Tier::Monthly => "%Y-%m",
            Tier::Yearly => "%Y",
        };
        local.format(fmt).to_string()
    }

    fn name(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Yearly => "yearly",
        }
    }
}

/// One completed backup as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionCandidate {
    /// Backup id.
    pub id: Uuid,
    /// Completion time.
    pub completed_at: DateTime<Utc>,
    /// Usable for a restore (not known to be damaged).
    pub good: bool,
    /// Pin reason when pinned.
    pub pin: Option<String>,
    /// Read by a queued or running restore or verification.
    pub in_use: bool,
}

/// Why a backup stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// Pinned by an operator.
    Pinned(String),
    /// Read by a queued or running execution.
    InUse,
    /// The newest good backup of the job.
    NewestGood,
    /// Within the newest `min_backups` good backups.
    MinCount,
    /// Count mode: the `rank`-th newest good backup of `of` kept.
    Count {
        /// 1 = newest.
        rank: usize,
        /// Backups the count keeps.
        of: usize,
    },
    /// Count mode with every count 0: everything is kept.
    KeepAll,
    /// GFS: the newest good backup of this period.
    Tier(Tier, String),
}

impl KeepReason {
    /// Whether this reason survives `max_age`.
    fn protects(&self) -> bool {
        matches!(self, KeepReason::Pinned(_) | KeepReason::InUse | KeepReason::NewestGood | KeepReason::MinCount)
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Pinned(why) => write!(f, "pinned: {why}"),
            KeepReason::InUse => f.write_str("in use by a restore or verification"),
            KeepReason::NewestGood => f.write_str("newest good backup"),
            KeepReason::MinCount => f.write_str("min count"),
            KeepReason::Count { rank, of } => write!(f, "newest {of}: #{rank}"),
            KeepReason::KeepAll => f.write_str("no count limit"),
            KeepReason::Tier(t, p) => write!(f, "{} {p}", t.name()),
        }
    }
}

/// Why a backup goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Count mode: older than the newest `keep` good backups.
    BeyondCount {
        /// Backups the count keeps.
        keep: usize,
    },
    /// GFS: not the newest good backup of any kept period.
    NoTier,
    /// Selected, but older than `max_age_secs`.
    TooOld {
        /// The limit.
        max_age_secs: u64,
    },
    /// Known to be damaged, and nothing protects it.
    Damaged,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::BeyondCount { keep } => write!(f, "beyond the newest {keep}"),
            DeleteReason::NoTier => f.write_str("not the newest of any kept period"),
            DeleteReason::TooOld { max_age_secs } => write!(f, "older than max_age ({max_age_secs} s)"),
            DeleteReason::Damaged => f.write_str("damaged"),
        }
    }
}

/// The decision for one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stays, for these reasons (protections first, then the rules that select it).
    Keep(Vec<KeepReason>),
    /// Goes.
    Delete(DeleteReason),
}

impl Verdict {
    /// Whether the backup stays.
    pub fn keeps(&self) -> bool {
        matches!(self, Verdict::Keep(_))
    }

    /// The reasons as shown to operators.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Verdict::Keep(r) => r.iter().map(ToString::to_string).collect(),
            Verdict::Delete(r) => vec![r.to_string()],
        }
    }
}

/// One backup and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The backup.
    pub backup: RetentionCandidate,
    /// Kept or deleted, and why.
    pub verdict: Verdict,
}

/// Decides every backup, returned newest first (by completion time, then id).
pub fn decide(backups: &[RetentionCandidate], policy: &RetentionPolicy, tz: Tz, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&RetentionCandidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.completed_at.cmp(&a.completed_at).then(b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];
    let good: Vec<usize> = (0..sorted.len()).filter(|i| sorted[*i].good).collect();

    for (i, b) in sorted.iter().enumerate() {
        if let Some(why) = &b.pin {
            reasons[i].push(KeepReason::Pinned(why.clone()));
        }
        if b.in_use {
            reasons[i].push(KeepReason::InUse);
        }
    }
    if let Some(first) = good.first() {
        reasons[*first].push(KeepReason::NewestGood);
    }
    let min = usize::try_from(policy.min_backups).unwrap_or(usize::MAX);
    for i in good.iter().take(min) {
        reasons[*i].push(KeepReason::MinCount);
    }

    // What the mode selects; dropped again below for backups older than max_age.
    let mut selected: Vec<Vec<KeepReason>> = vec![Vec::new(); sorted.len()];
    match policy.mode {
        RetentionMode::Count => match policy.count() {
            None => good.iter().for_each(|i| selected[*i].push(KeepReason::KeepAll)),
            Some(of) => {
                for (rank, i) in good.iter().take(of).enumerate() {
                    selected[*i].push(KeepReason::Count { rank: rank + 1, of });
                }
            }
        },
        RetentionMode::Gfs => {
            for (tier, n) in policy.tiers() {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let mut seen = HashSet::new();
                for i in &good {
                    if seen.len() >= n {
                        break;
                    }
                    let period = tier.period(sorted[*i].completed_at, tz);
                    if seen.insert(period.clone()) {
                        selected[*i].push(KeepReason::Tier(tier, period));
                    }
                }
            }
        }
    }

    let max_age = (policy.max_age_secs > 0).then(|| {
        chrono::Duration::seconds(i64::try_from(policy.max_age_secs).unwrap_or(i64::MAX).min(i64::MAX / 1000))
    });
    let mut out = Vec::with_capacity(sorted.len());
    for (i, b) in sorted.iter().enumerate() {
        let too_old = max_age.is_some_and(|m| now.signed_duration_since(b.completed_at) > m);
        let mut keep = std::mem::take(&mut reasons[i]);
        debug_assert!(keep.iter().all(KeepReason::protects));
        let was_selected = !selected[i].is_empty();
        if !too_old {
            keep.append(&mut selected[i]);
        }
        let verdict = if !keep.is_empty() {
            Verdict::Keep(keep)
        } else if !b.good {
            Verdict::Delete(DeleteReason::Damaged)
        } else if was_selected {
            Verdict::Delete(DeleteReason::TooOld { max_age_secs: policy.max_age_secs })
        } else {
            match (policy.mode, policy.count()) {
                (RetentionMode::Count, Some(keep)) => Verdict::Delete(DeleteReason::BeyondCount { keep }),
                _ => Verdict::Delete(DeleteReason::NoTier),
            }
        };
        out.push(Decision { backup: (*b).clone(), verdict });
    }
    out
}

#[cfg(test)]
#[path = "retention_policy_tests.rs"]
mod tests;
