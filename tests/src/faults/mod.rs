//! The fault harness: the real `dg-controller` (two replicas behind a balancer), the real `dg-agent`, a
//! private PostgreSQL and Redis for the controllers, and the test PostgreSQL server as the backed-up
//! database. Each trial starts a backup or a restore, injects one fault at a random point (kill -9 or
//! SIGSTOP of the agent, a controller replica killed with one or two replicas running, the controllers'
//! PostgreSQL or Redis restarted, a report the database fails to record, every connection cut), waits for
//! the end and checks:
//!
//! - **lost**: every backup that completed restores, into a fresh database, to the source's exact rows;
//! - **stuck**: no attempt stays `running` past its lease plus one heartbeat (sampled all along), and every
//!   execution ends;
//! - **policy**: a backup fails only after all its attempts, never more attempts than the policy allows;
//! - **leaked**: after the sweep grace, no object is left in the storage but those of completed backups' own
//!   attempts;
//! - **doubled**: never two completed executions for one schedule slot (a job on a schedule runs all along,
//!   through every fault, and every one of its backups is restored at the end).
//!
//! `dg-faults` runs it on demand; the CI suite runs a few fixed trials through [`run`].

pub mod balancer;
pub mod checks;
pub mod procs;
pub mod trial;
pub mod world;

use std::{collections::BTreeMap, fmt, time::Instant};

use dg_proto::v1 as pb;
use rand::{SeedableRng, rngs::StdRng};

use self::trial::{Baseline, Blackout};
pub use self::world::{Timings, World};
use crate::cluster::authed;

/// Attempts a restore may take (one, plus retries only when its target was certainly untouched).
pub const RESTORE_MAX_ATTEMPTS: u32 = 3;

/// What a trial runs when the fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A backup (RunNow).
    Backup,
    /// A restore into a fresh database.
    Restore,
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the agent, restarted after up to 2 s.
    AgentKill(Op),
    /// SIGSTOP of the agent for 1 s to two leases, then SIGCONT.
    AgentPause(Op),
    /// kill -9 of a controller replica (the one holding the agent's session), restarted after up to 5 s,
    /// with one replica running or two.
    ControllerRestart {
        /// Replicas running.
        replicas: u8,
    },
    /// The controllers' PostgreSQL stopped (immediate) for up to 8 s.
    ControllerDbRestart,
    /// Redis killed for up to 8 s, restarted empty.
    RedisRestart,
    /// One chunk report and the commit fail to be recorded once (a trigger in the controllers' database).
    DroppedReport,
    /// Every connection through the balancers cut at once.
    NetworkCut,
}

impl Fault {
    /// Every kind, in the order trials cycle through them.
    pub const ALL: [Fault; 10] = [
        Fault::AgentKill(Op::Backup),
        Fault::AgentPause(Op::Backup),
        Fault::AgentKill(Op::Restore),
        Fault::AgentPause(Op::Restore),
        Fault::ControllerRestart { replicas: 1 },
        Fault::ControllerRestart { replicas: 2 },
        Fault::ControllerDbRestart,
        Fault::RedisRestart,
        Fault::DroppedReport,
        Fault::NetworkCut,
    ];

    /// What runs when it strikes.
    pub fn op(self) -> Op {
        match self {
            Fault::AgentKill(op) | Fault::AgentPause(op) => op,
            _ => Op::Backup,
        }
    }

    /// Short name (also what `--faults` accepts).
    pub fn name(self) -> &'static str {
        match self {
            Fault::AgentKill(Op::Backup) => "agent-kill-backup",
            Fault::AgentKill(Op::Restore) => "agent-kill-restore",
            Fault::AgentPause(Op::Backup) => "agent-pause-backup",
            Fault::AgentPause(Op::Restore) => "agent-pause-restore",
            Fault::ControllerRestart { replicas: 1 } => "controller-restart-1-replica",
            Fault::ControllerRestart { .. } => "controller-restart-2-replicas",
            Fault::ControllerDbRestart => "controller-db-restart",
            Fault::RedisRestart => "redis-restart",
            Fault::DroppedReport => "dropped-report",
            Fault::NetworkCut => "network-cut",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one trial.
#[derive(Clone, Debug)]
pub struct TrialResult {
    /// Trial number (1-based).
    pub n: usize,
    /// The fault.
    pub fault: Fault,
    /// Where it struck.
    pub point: String,
    /// What was done.
    pub what: String,
    /// The execution.
    pub execution: String,
    /// Its final state (`None`: it never ended).
    pub end: Option<pb::Execution>,
    /// Broken invariants.
    pub violations: Vec<String>,
    /// Attempts seen running past their lease during the trial.
    pub stuck: Vec<String>,
    /// Seconds the trial took.
    pub secs: f64,
}

impl TrialResult {
    /// `completed@1`, `completed@2`, `failed@3`…
    pub fn outcome(&self) -> String {
        match &self.end {
            None => "never ended".into(),
            Some(e) => {
                let s = pb::ExecutionStatus::try_from(e.status).map(|s| s.as_str_name()).unwrap_or("?");
                format!("{}@{}", s.trim_start_matches("EXECUTION_STATUS_").to_lowercase(), e.attempt)
            }
        }
    }

    /// One line for the trial log.
    pub fn line(&self) -> String {
        let err = self.end.as_ref().map(|e| e.error.as_str()).filter(|e| !e.is_empty());
        format!(
            "#{:<3} {:<30} {:<24} {:<14} {:>5.1} s  {}{}{}",
            self.n,
            self.fault.name(),
            self.point,
            self.outcome(),
            self.secs,
            self.what,
            err.map(|e| format!(" — error: {e}")).unwrap_or_default(),
            if self.violations.is_empty() && self.stuck.is_empty() {
                String::new()
            } else {
                format!(
                    " — VIOLATIONS: {}",
                    [self.violations.clone(), self.stuck.iter().map(|s| format!("stuck {s}")).collect()]
                        .concat()
                        .join("; ")
                )
            }
        )
    }
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Trials.
    pub trials: usize,
    /// Seed of the random choices (printed, so that a run can be repeated).
    pub seed: u64,
    /// Fault kinds, cycled through in order.
    pub faults: Vec<Fault>,
    /// Size of the source database's dump, MiB.
    pub data_mib: u32,
    /// Timings.
    pub timings: Timings,
}

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    /// Every trial.
    pub trials: Vec<TrialResult>,
    /// Objects left after the grace period.
    pub leaked: Vec<String>,
    /// Schedule slots completed twice.
    pub doubled: Vec<String>,
    /// Scheduled backups that did not restore.
    pub scheduled_lost: Vec<String>,
    /// Scheduled backups completed (and restored).
    pub scheduled_completed: usize,
    /// Executions of the scheduled job by outcome (`completed@1`…).
    pub scheduled_outcomes: BTreeMap<String, usize>,
    /// Attempts running past their lease outside any trial's window.
    pub stuck: Vec<String>,
    /// Seconds the run took.
    pub secs: f64,
}

impl Report {
    /// Whether every invariant held.
    pub fn clean(&self) -> bool {
        self.trials.iter().all(|t| t.violations.is_empty() && t.stuck.is_empty())
            && self.leaked.is_empty()
            && self.doubled.is_empty()
            && self.scheduled_lost.is_empty()
            && self.stuck.is_empty()
    }

    /// The table: per fault kind, trials and outcomes, then the invariants.
    pub fn table(&self) -> String {
        let mut by: BTreeMap<&str, (usize, BTreeMap<String, usize>, usize)> = BTreeMap::new();
        for t in &self.trials {
            let e = by.entry(t.fault.name()).or_default();
            e.0 += 1;
            *e.1.entry(t.outcome()).or_default() += 1;
            e.2 += t.violations.len() + t.stuck.len();
        }
        let mut out = String::new();
        out.push_str("| fault | trials | outcomes | violations |\n|---|---:|---|---:|\n");
        for (name, (n, outcomes, v)) in &by {
            let o: Vec<String> = outcomes.iter().map(|(k, c)| format!("{k} ×{c}")).collect();
            out.push_str(&format!("| {name} | {n} | {} | {v} |\n", o.join(", ")));
        }
        let count = |p: &str| self.trials.iter().flat_map(|t| &t.violations).filter(|v| v.starts_with(p)).count();
        let stuck = self.trials.iter().map(|t| t.stuck.len()).sum::<usize>() + self.stuck.len() + count("stuck");
        out.push_str(&format!(
            "\n| invariant | result |\n|---|---|\n| trials | {} in {:.0} s ({} struck after the execution had ended) |\n| lost (a completed backup that does not restore) | {} |\n\
             | corrupt (a completed restore that differs) | {} |\n| stuck (running past lease + heartbeat, or never ended) | {stuck} |\n\
             | not retried per policy | {} |\n| leaked objects after the grace period | {} |\n\
             | doubled schedule slots | {} |\n| scheduled backups completed through the faults, all restored | {} (lost {}; outcomes {}) |\n",
            self.trials.len(),
            self.secs,
            self.trials.iter().filter(|t| t.point == "after the end").count(),
            count("lost"),
            count("corrupt"),
            count("not per policy") + count("failed without") + count("ended"),
            self.leaked.len(),
            self.doubled.len(),
            self.scheduled_completed,
            self.scheduled_lost.len(),
            self.scheduled_outcomes.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", "),
        ));
        out
    }
}

/// Starts the world, runs the trials, checks what only the end can show, stops everything.
pub async fn run(opts: &RunOptions, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.faults.is_empty(), "no fault kinds");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut w = World::start(opts.timings, opts.data_mib).await?;
    progress(&format!("system up in {:.1} s (run directory {})", started.elapsed().as_secs_f64(), w.dir.display()));
    let result = trials(&mut w, opts, &mut rng, &mut progress).await;
    let report = match result {
        Ok(mut r) => {
            r.secs = started.elapsed().as_secs_f64();
            Ok(r)
        }
        Err(e) => Err(e.context(format!(
            "agent log tail:\n{}\ncontroller-0 log tail:\n{}",
            w.agent.log_tail(15),
            w.replicas[0].proc.log_tail(15)
        ))),
    };
    w.shutdown().await;
    report
}

async fn trials(
    w: &mut World,
    opts: &RunOptions,
    rng: &mut StdRng,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<Report> {
    let mut blackout = Blackout::default();
    let mut stuck = Vec::new();
    // A clean baseline: how many chunks a backup has and how long a restore runs.
    let id = w.run_now().await?;
    let end = w
        .wait_end(&id, std::time::Duration::from_secs(300), &blackout, &mut stuck)
        .await
        .ok_or_else(|| anyhow::anyhow!("the baseline backup did not end"))?;
    anyhow::ensure!(end.status == pb::ExecutionStatus::Completed as i32, "baseline backup: {}", end.error);
    let expected = w.source_fingerprint.clone();
    let restore = w.verify_restores(&id, &expected, &blackout, &mut stuck).await.map_err(anyhow::Error::msg)?;
    let span = |e: &pb::Execution| -> Option<f64> {
        let (s, f) = (e.started_at.as_ref()?, e.finished_at.as_ref()?);
        Some((f.seconds - s.seconds) as f64 + f64::from(f.nanos - s.nanos) / 1e9)
    };
    let restore_secs = span(&restore).unwrap_or(1.0);
    let mut base = Baseline { chunks: end.chunk_count, restore_secs, good_backup: id };
    progress(&format!(
        "baseline: backup of {:.1} MiB in {} chunks, restore {:.1} s",
        end.stored_bytes as f64 / 1048576.0,
        base.chunks,
        base.restore_secs
    ));
    let mut results = Vec::new();
    for n in 1..=opts.trials {
        let fault = opts.faults[(n - 1) % opts.faults.len()];
        let r = w.trial(n, fault, &mut base, rng, &mut blackout).await?;
        progress(&r.line());
        results.push(r);
    }

    // The end: stop the schedule, let everything finish, wait out the grace, look at what is left.
    let job = w.scheduled_job_id.clone();
    let req = pb::DisableBackupJobRequest { id: job.clone() };
    w.clients.jobs.disable_backup_job(authed(req, &w.clients.token)).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(240);
    while !checks::all_ended(&w.ctl_db).await.unwrap_or(false) {
        anyhow::ensure!(Instant::now() < deadline, "executions still queued or running 240 s after the last trial");
        w.sample_stuck(&blackout, &mut stuck).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(w.timings.orphan_grace_secs + 4)).await;
    let leaked = checks::leaked_objects(&w.ctl_db, &w.storage_dir).await?;
    let doubled = checks::doubled_slots(&w.ctl_db).await?;
    let mut scheduled_lost = Vec::new();
    let scheduled = checks::completed_of_job(&w.ctl_db, job.parse()?).await?;
    let mut scheduled_outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (status, attempt, error) in checks::executions_of_job(&w.ctl_db, job.parse()?).await? {
        *scheduled_outcomes.entry(format!("{status}@{attempt}")).or_default() += 1;
        if status != "completed" && (status != "failed" || attempt < i32::try_from(w.timings.max_attempts)?) {
            scheduled_lost.push(format!("scheduled backup ended {status} at attempt {attempt}: {error}"));
        }
    }
    progress(&format!("restoring the {} backups the schedule completed", scheduled.len()));
    let small = w.small_fingerprint.clone();
    for b in &scheduled {
        if let Err(e) = w.verify_restores(&b.to_string(), &small, &blackout, &mut stuck).await {
            scheduled_lost.push(format!("{b}: {e}"));
        }
    }
    Ok(Report {
        trials: results,
        leaked,
        doubled,
        scheduled_lost,
        scheduled_completed: scheduled.len(),
        scheduled_outcomes,
        stuck,
        secs: 0.0,
    })
}
