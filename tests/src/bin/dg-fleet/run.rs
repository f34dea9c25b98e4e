//! One replica configuration from start to end: start the world, enroll the queue's agents and give each a
//! job, then step through the session counts (enroll, open, settle, measure heartbeats, queue executions and
//! time RunNow → Assign, stream chunk reports), stopping at the first step that breaks: a session that cannot
//! be opened or ends, a controller that exits, an operator call that fails.

use std::{path::Path, time::Duration};

use dg_tests::fake_agent::FakeAgent;
use tokio::time::Instant;

use crate::{
    args::Args,
    enroll::enroll,
    fleet::Fleet,
    measure,
    report::{ConfigReport, StepReport, print_step},
    stats::plan_steps,
    workload::{self, Worker},
    world::{Created, World},
};

/// What every configuration shares.
pub(crate) struct Env<'a> {
    pub(crate) args: &'a Args,
    pub(crate) controller_bin: &'a Path,
    pub(crate) run_dir: &'a Path,
    pub(crate) ticks_per_sec: u64,
    /// Most sessions the descriptor limit leaves room for.
    pub(crate) max_sessions: usize,
}

/// Runs one configuration; failures end up in the report.
pub(crate) async fn run_config(env: &Env<'_>, replicas: usize, created: &mut Created) -> ConfigReport {
    let args = env.args;
    let dir = env.run_dir.join(format!("replicas-{replicas}"));
    let (steps, not_tried) = plan_steps(&args.sessions, env.max_sessions);
    let mut report = ConfigReport { replicas, not_tried, ..Default::default() };
    println!("\n=== {replicas} replica(s): steps {steps:?} ===");
    let mut world = match World::start(args, replicas, env.controller_bin, &dir, created).await {
        Ok(w) => w,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    println!("  database {}, redis {}, logs in {}", world.db_name, redact(&world.redis_url), dir.display());
    let mut fleet = Fleet::new(Duration::from_secs(args.heartbeat_interval));
    if let Err(e) = steps_of(env, &mut world, &mut fleet, &steps, &mut report).await {
        report.error.get_or_insert(format!("{e:#}"));
    }
    report.unasked_assigns = fleet.unasked_assigns();
    fleet.close_all();
    world.shutdown(created).await;
    report
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn steps_of(
    env: &Env<'_>,
    world: &mut World,
    fleet: &mut Fleet,
    steps: &[usize],
    report: &mut ConfigReport,
) -> anyhow::Result<()> {
    let args = env.args;
    let ids_dir = world.dir.join("ids");
    // The queue's agents: enrolled, never connected, one job each.
    let queue_agents = if args.skip_latency { 0 } else { args.queue_agents as usize };
    let (queue_ids, _) = enroll(world, 0, queue_agents, &ids_dir, args.enroll_concurrency as usize).await?;
    let mut queue_jobs = Vec::new();
    for q in &queue_ids {
        queue_jobs.push(workload::make_job(&mut world.clients[0], &q.id).await?.0);
    }
    let mut ids: Vec<FakeAgent> = Vec::new();
    let mut workers: Vec<Worker> = Vec::new();
    let endpoints = world.agent_endpoints();
    for &n in steps {
        if !report.stepper.go_on() {
            break;
        }
        let mut step = StepReport { sessions: n, ..Default::default() };
        let outcome = step_to(env, world, fleet, &mut ids, &mut workers, &queue_jobs, &endpoints, &mut step).await;
        let idle = report.steps.iter().find(|s| s.sessions == 0).and_then(|s| s.window.clone());
        print_step(world.controllers.len(), &step, idle.as_ref());
        match outcome {
            Ok(()) => report.stepper.held(n),
            Err(e) => {
                println!("  BROKE at {n} sessions: {e:#}");
                report.stepper.broke(n, format!("{e:#}"));
            }
        }
        report.steps.push(step);
    }
    Ok(())
}

/// Grows the fleet to `n` sessions and measures; an error means the step broke.
#[allow(clippy::too_many_arguments)]
async fn step_to(
    env: &Env<'_>,
    world: &mut World,
    fleet: &mut Fleet,
    ids: &mut Vec<FakeAgent>,
    workers: &mut Vec<Worker>,
    queue_jobs: &[String],
    endpoints: &[String],
    step: &mut StepReport,
) -> anyhow::Result<()> {
    let args = env.args;
    let ids_dir = world.dir.join("ids");
    let n = step.sessions;
    if n > ids.len() {
        let first = args.queue_agents as usize + ids.len();
        let (more, r) = enroll(world, first, n - ids.len(), &ids_dir, args.enroll_concurrency as usize)
            .await
            .map_err(|e| e.context(format!("enrolling agents {}..{n}", ids.len())))?;
        ids.extend(more);
        step.enroll = Some(r);
    }
    if n > fleet.len() {
        let (before, t0) = (fleet.len(), Instant::now());
        let grown = fleet.grow(ids, n, endpoints, args.connect_concurrency as usize).await;
        step.connect = Some((fleet.len() - before, t0.elapsed()));
        if let Err(b) = grown {
            anyhow::bail!("{} sessions open, the next would not open: {}", b.open, b.error);
        }
    }
    while workers.len() < n.min(args.workers()) {
        let index = workers.len();
        let (job_id, storage_id) = workload::make_job(&mut world.clients[0], &ids[index].id).await?;
        workers.push(Worker { index, job_id, storage_id });
    }
    // Every new session heartbeats once before the window opens, and the connection storm is over.
    let settle = if n > 0 {
        Duration::from_secs(args.heartbeat_interval) + Duration::from_secs(2)
    } else {
        Duration::from_secs(2)
    };
    tokio::time::sleep(settle).await;
    healthy(world, fleet)?;
    if !args.skip_heartbeat {
        step.window = Some(measure::window(world, fleet, args.window, env.ticks_per_sec).await?);
        healthy(world, fleet)?;
    }
    if n == 0 {
        return Ok(());
    }
    if !args.skip_latency {
        let t0 = Instant::now();
        let queued = workload::fill_queue(&world.clients[0], queue_jobs, args.queued as usize).await?;
        step.queue_fill = Some((queued.len(), t0.elapsed()));
        if !args.skip_heartbeat {
            step.queued_window = Some(measure::window(world, fleet, args.queued_window, env.ticks_per_sec).await?);
        }
        let budget = Duration::from_secs(args.latency_budget);
        let run = workload::latency(world, fleet, workers, args.latency_samples as usize, budget).await;
        workload::drain_queue(&world.clients[0], queued).await?;
        step.latency = Some(run?);
        healthy(world, fleet)?;
    }
    if !args.skip_chunks {
        for &k in &args.chunk_sessions {
            let k = k as usize;
            if k > workers.len() {
                step.notes.push(format!("chunk reports with {k} sessions skipped: only {} sessions", workers.len()));
                continue;
            }
            // A measurement that cannot finish (no Assign in time) is a figure of its own, not a broken fleet.
            match workload::chunks(world, fleet, &workers[..k], args.chunk_secs, args.chunk_window as usize).await {
                Ok(run) => step.chunks.push(run),
                Err(e) => step.notes.push(format!("chunk reports with {k} sessions: {e:#}")),
            }
        }
        healthy(world, fleet)?;
    }
    Ok(())
}

/// Every controller runs and every session is open.
fn healthy(world: &mut World, fleet: &Fleet) -> anyhow::Result<()> {
    if let Some(dead) = world.dead_controller() {
        anyhow::bail!("{dead}");
    }
    let closed = fleet.closed();
    if let Some((i, e)) = closed.first() {
        anyhow::bail!("{} session(s) ended, the first (agent #{i}) with: {e}", closed.len());
    }
    Ok(())
}
