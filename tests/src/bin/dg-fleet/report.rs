//! Printing: one block per step as it completes, then a summary per replica configuration (tables of sessions,
//! memory, CPU, PostgreSQL writes, latency and chunk rates) with what broke, and whether heartbeat writes
//! dominate the database's write load.

use std::time::Duration;

use crate::{
    args::Args,
    enroll::EnrollReport,
    measure::Window,
    stats::{Stepper, per_sec},
    workload::{ChunkRun, LatencyRun},
};

/// The table every heartbeat updates (`Db::agents_heartbeat`, a batch of them per statement).
pub(crate) const HEARTBEAT_TABLE: &str = "agent";

/// Figures of one step.
#[derive(Debug, Default)]
pub(crate) struct StepReport {
    pub(crate) sessions: usize,
    pub(crate) enroll: Option<EnrollReport>,
    /// Time to open this step's new sessions.
    pub(crate) connect: Option<(usize, Duration)>,
    pub(crate) window: Option<Window>,
    /// With the queue in place.
    pub(crate) queued_window: Option<Window>,
    pub(crate) queue_fill: Option<(usize, Duration)>,
    pub(crate) latency: Option<LatencyRun>,
    pub(crate) chunks: Vec<ChunkRun>,
    /// Measurements that failed or were skipped, and why.
    pub(crate) notes: Vec<String>,
}

/// One replica configuration.
#[derive(Debug, Default)]
pub(crate) struct ConfigReport {
    pub(crate) replicas: usize,
    pub(crate) steps: Vec<StepReport>,
    pub(crate) stepper: Stepper,
    /// Counts above what the descriptor limit allows.
    pub(crate) not_tried: Vec<usize>,
    /// The configuration could not run at all.
    pub(crate) error: Option<String>,
    /// Assignments that arrived for sessions nobody watched.
    pub(crate) unasked_assigns: u64,
}

impl ConfigReport {
    fn idle(&self) -> Option<&Window> {
        self.steps.iter().find(|s| s.sessions == 0).and_then(|s| s.window.as_ref())
    }
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}

fn per_session_kib(rss: u64, idle: u64, sessions: usize) -> String {
    if sessions == 0 {
        return "-".into();
    }
    format!("{:.1}", (rss as f64 - idle as f64) / sessions as f64 / 1024.0)
}

/// Prints one step as soon as it is done.
pub(crate) fn print_step(replicas: usize, s: &StepReport, idle: Option<&Window>) {
    println!("\n[replicas={replicas} sessions={}]", s.sessions);
    if let Some(e) = &s.enroll {
        println!(
            "  enrolled {} agents in {:.1} s ({:.0}/s, {} refusals retried)",
            e.count,
            e.took.as_secs_f64(),
            per_sec(e.count as f64, e.took),
            e.retried
        );
    }
    if let Some((n, d)) = s.connect {
        println!("  opened {n} sessions in {:.1} s ({:.0}/s)", d.as_secs_f64(), per_sec(n as f64, d));
    }
    if let Some(w) = &s.window {
        print_window("heartbeats", w, idle, s.sessions);
    }
    if let Some((n, d)) = s.queue_fill {
        println!("  queued {n} executions in {:.1} s", d.as_secs_f64());
    }
    if let Some(w) = &s.queued_window {
        print_window("with the queue", w, idle, s.sessions);
    }
    if let Some(l) = &s.latency {
        let budget = if l.budget_hit { " (latency budget ran out)" } else { "" };
        println!("  RunNow -> Assign p50/p99/max: {}{budget}", l.all.show());
        if replicas > 1 {
            println!(
                "    agent on the RunNow replica: {}; on another replica: {}",
                l.same_replica.show(),
                l.other_replica.show()
            );
        }
        println!("    the RunNow call alone: {}", l.run_now.show());
    }
    for c in &s.chunks {
        println!(
            "  chunk reports, {} session(s): {:.0}/s ({} acked in {:.1} s{})",
            c.sessions,
            c.per_sec(),
            c.acked,
            c.took.as_secs_f64(),
            if c.retry_later > 0 { format!(", {} retry-later", c.retry_later) } else { String::new() }
        );
    }
    for n in &s.notes {
        println!("  NOTE: {n}");
    }
}

fn print_window(what: &str, w: &Window, idle: Option<&Window>, sessions: usize) {
    let cpus: Vec<String> = w.controller_cpu.iter().map(|c| format!("{c:.1}")).collect();
    let rss: Vec<String> = w.controller_rss.iter().map(|r| mib(*r)).collect();
    println!(
        "  {what} ({:.0} s): controller CPU {} % of a core, RSS {} MiB (peak {} MiB), fds {:?}",
        w.secs,
        cpus.join(" + "),
        rss.join(" + "),
        mib(w.controller_hwm.iter().sum()),
        w.controller_fds
    );
    if let Some(i) = idle.filter(|_| sessions > 0) {
        println!("    RSS above idle per session: {} KiB", per_session_kib(w.rss(), i.rss(), sessions));
    }
    println!(
        "    heartbeats {:.0}/s; PostgreSQL: {:.0} xact/s, {:.0} rows written/s ({HEARTBEAT_TABLE}: {:.0}/s), \
         {:.0} rows fetched/s, backends {:.1} % of a core; Redis {}; this process {:.1} % of a core",
        w.heartbeats_per_sec,
        w.xact_per_sec,
        w.writes_per_sec,
        w.table(HEARTBEAT_TABLE),
        w.fetched_per_sec,
        w.pg_cpu,
        w.redis_per_sec.map(|r| format!("{r:.0} commands/s")).unwrap_or_else(|| "-".into()),
        w.fleet_cpu,
    );
    let top = |v: &[(String, f64)]| v.iter().take(5).map(|(t, r)| format!("{t} {r:.0}")).collect::<Vec<_>>().join(", ");
    if !w.table_writes.is_empty() {
        println!("    rows written/s by table: {}", top(&w.table_writes));
    }
    if !w.table_scans.is_empty() {
        println!("    scans/s by table: {}", top(&w.table_scans));
    }
}

/// Whether heartbeat writes dominate a window's row writes, in words.
pub(crate) fn heartbeat_share(w: &Window, idle: Option<&Window>) -> String {
    let idle_writes = idle.map(|i| i.writes_per_sec).unwrap_or(0.0);
    let hb = w.table(HEARTBEAT_TABLE);
    let share = if w.writes_per_sec > 0.0 { hb / w.writes_per_sec * 100.0 } else { 0.0 };
    let per_hb = if w.heartbeats_per_sec > 0.0 { hb / w.heartbeats_per_sec } else { 0.0 };
    let verdict = if share >= 50.0 { "heartbeat writes dominate" } else { "heartbeat writes do not dominate" };
    format!(
        "{verdict}: {hb:.0} of {:.0} rows written/s ({share:.0} %) are `{HEARTBEAT_TABLE}` updates, {per_hb:.2} per \
         heartbeat (idle: {idle_writes:.1} rows/s); transactions {:.0}/s for {:.0} heartbeats/s",
        w.writes_per_sec, w.xact_per_sec, w.heartbeats_per_sec
    )
}

/// The closing summary of every configuration.
pub(crate) fn print_summary(args: &Args, configs: &[ConfigReport]) {
    println!("\n================ dg-fleet summary ================");
    println!(
        "heartbeat every {} s, window {} s, {} queued executions, {} latency samples per step, chunk window {}",
        args.heartbeat_interval, args.window, args.queued, args.latency_samples, args.chunk_window
    );
    for c in configs {
        println!("\n--- {} replica(s) ---", c.replicas);
        if let Some(e) = &c.error {
            println!("  could not run: {e}");
            continue;
        }
        let idle = c.idle();
        println!(
            "  {:>8} {:>9} {:>9} {:>10} {:>12} {:>10} {:>8} {:>8} {:>9} {:>12} {:>11}",
            "sessions",
            "enroll/s",
            "open/s",
            "RSS MiB",
            "KiB/session",
            "ctl CPU%",
            "PG CPU%",
            "hb/s",
            "xact/s",
            "rows wr/s",
            "agent wr/s"
        );
        for s in &c.steps {
            let w = s.window.as_ref();
            let f = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
            println!(
                "  {:>8} {:>9} {:>9} {:>10} {:>12} {:>10} {:>8} {:>8} {:>9} {:>12} {:>11}",
                s.sessions,
                f(s.enroll.as_ref().map(|e| per_sec(e.count as f64, e.took)), 0),
                f(s.connect.map(|(n, d)| per_sec(n as f64, d)), 0),
                w.map(|w| mib(w.rss())).unwrap_or_else(|| "-".into()),
                match (w, idle) {
                    (Some(w), Some(i)) => per_session_kib(w.rss(), i.rss(), s.sessions),
                    _ => "-".into(),
                },
                f(w.map(Window::cpu), 1),
                f(w.map(|w| w.pg_cpu), 1),
                f(w.map(|w| w.heartbeats_per_sec), 0),
                f(w.map(|w| w.xact_per_sec), 0),
                f(w.map(|w| w.writes_per_sec), 0),
                f(w.map(|w| w.table(HEARTBEAT_TABLE)), 0),
            );
        }
        let with_latency: Vec<&StepReport> = c.steps.iter().filter(|s| s.latency.is_some()).collect();
        if !with_latency.is_empty() {
            println!(
                "\n  {:>8} {:>38} {:>14} {:>10} {:>12}",
                "sessions", "RunNow->Assign p50/p99/max", "RunNow p50 ms", "ctl CPU%", "xact/s"
            );
            for s in with_latency {
                let Some(l) = &s.latency else { continue };
                let q = s.queued_window.as_ref();
                println!(
                    "  {:>8} {:>38} {:>14} {:>10} {:>12}",
                    s.sessions,
                    l.all.show(),
                    l.run_now.p50.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into()),
                    q.map(|w| format!("{:.1}", w.cpu())).unwrap_or_else(|| "-".into()),
                    q.map(|w| format!("{:.0}", w.xact_per_sec)).unwrap_or_else(|| "-".into()),
                );
            }
        }
        let with_chunks: Vec<&StepReport> = c.steps.iter().filter(|s| !s.chunks.is_empty()).collect();
        if !with_chunks.is_empty() {
            println!("\n  chunk reports acknowledged per second (concurrent sessions: rate)");
            for s in with_chunks {
                let rates: Vec<String> =
                    s.chunks.iter().map(|r| format!("{}: {:.0}/s", r.sessions, r.per_sec())).collect();
                println!("  {:>8}  {}", s.sessions, rates.join(", "));
            }
        }
        if let Some(last) = c.steps.iter().rev().find(|s| s.sessions > 0 && s.window.is_some())
            && let Some(w) = &last.window
        {
            println!("\n  at {} sessions: {}", last.sessions, heartbeat_share(w, idle));
        }
        match &c.stepper.broke {
            Some((n, e)) => println!("\n  held {} sessions; BROKE stepping to {n}: {e}", c.stepper.held),
            None => println!("\n  held every step (up to {} sessions)", c.stepper.held),
        }
        if !c.not_tried.is_empty() {
            println!("  not tried (descriptor limit, see `ulimit -n`): {:?}", c.not_tried);
        }
        if c.unasked_assigns > 0 {
            println!("  {} assignments arrived for sessions nobody watched (failed at once)", c.unasked_assigns);
        }
    }
    println!(
        "\nTargets: 10,000 sessions under 2 GiB controller RSS, RunNow -> Assign p99 < 50 ms. The heartbeat row write \
         is `UPDATE agent SET last_heartbeat_at ...` (controller db/agents.rs Db::agents_heartbeat: one statement \
         per batch of the heartbeats arriving within 50 ms, service/heartbeats.rs)."
    );
}
