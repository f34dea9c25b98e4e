//! What the fleet is asked to do beyond heartbeating: jobs for some agents (a local storage, a PostgreSQL
//! datasource and a job bound to each, created through the operator API), a queue of executions that wait
//! (RunNow of jobs whose agents never connect: dispatch claims only for connected agents), RunNow → Assign
//! latency timed one sample at a time, and chunk reports streamed as fast as the controller acknowledges them.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use dg_proto::v1::{self as pb, agent_message::Kind, controller_message::Kind as CKind};
use dg_tests::{
    cluster::{Clients, authed},
    fake_agent::{chunk_for, exec_ref},
    suffix,
};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    fleet::{Event, Fleet},
    stats::{Latency, per_sec},
    world::World,
};

/// Longest wait for an Assign after RunNow.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for an acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Operator calls in flight while the queue fills or drains.
const QUEUE_CONCURRENCY: usize = 16;

/// An agent with a job of its own.
#[derive(Clone, Debug)]
pub(crate) struct Worker {
    /// Identity index (its session is the fleet's session of that index).
    pub(crate) index: usize,
    pub(crate) job_id: String,
    pub(crate) storage_id: String,
}

/// A local storage, a datasource and a job (one attempt, no retry) bound to `agent_id`; (job, storage).
pub(crate) async fn make_job(c: &mut Clients, agent_id: &str) -> anyhow::Result<(String, String)> {
    // The path is never written: the fake agent stores nothing.
    let storage = c.local_storage(agent_id, Path::new("/var/tmp/dg-fleet-unused")).await?;
    let ds = c.datasource(pb::Engine::Postgres, agent_id, "postgres").await?;
    let req = pb::CreateBackupJobRequest {
        name: format!("fleet-{}", suffix()),
        datasource_id: ds.id,
        storage_ids: vec![storage.id.clone()],
        retry: Some(pb::RetryPolicy { max_attempts: 1, backoff: Some(prost_types::Duration { seconds: 0, nanos: 0 }) }),
        ..Default::default()
    };
    let job = c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner();
    Ok((job.id, storage.id))
}

/// Queues `n` executions over `jobs` (round robin); their ids.
pub(crate) async fn fill_queue(c: &Clients, jobs: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..n)
        .map(|i| {
            let (mut client, token, job) = (c.jobs.clone(), c.token.clone(), jobs[i % jobs.len()].clone());
            async move {
                let ex = client.run_now(authed(pb::RunNowRequest { job_id: job }, &token)).await?;
                anyhow::Ok(ex.into_inner().id)
            }
        })
        .buffer_unordered(QUEUE_CONCURRENCY)
        .try_collect()
        .await
}

/// Cancels queued executions.
pub(crate) async fn drain_queue(c: &Clients, ids: Vec<String>) -> anyhow::Result<()> {
    futures::stream::iter(ids)
        .map(|id| {
            let (mut client, token) = (c.executions.clone(), c.token.clone());
            async move {
                client.cancel_execution(authed(pb::CancelExecutionRequest { id }, &token)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(QUEUE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn run_now(c: &Clients, job: &str) -> anyhow::Result<String> {
    let req = authed(pb::RunNowRequest { job_id: job.into() }, &c.token);
    Ok(c.jobs.clone().run_now(req).await.context("RunNow")?.into_inner().id)
}

/// The next event before `deadline` that `wanted` picks. An assignment nobody wants (a probe that timed out
/// and was cancelled after its claim) is failed on the spot, so its agent is free again.
async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    fleet: &Fleet,
    deadline: Instant,
    wanted: impl Fn(&Event) -> bool,
) -> anyhow::Result<Option<Event>> {
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => anyhow::bail!("every session's sink closed"),
            Ok(Some(ev)) => ev,
        };
        if wanted(&ev) {
            return Ok(Some(ev));
        }
        if let CKind::Assign(a) = &ev.kind {
            let failed = pb::Failed { execution: Some(exec_ref(a)), error: "not expected".into(), cancelled: false };
            fleet.send(ev.agent, Kind::Failed(failed), fleet.next_seq()).await?;
        }
    }
}

/// Ends a worker's attempt (Failed, acknowledged) so its agent is free for the next assignment.
async fn finish(
    fleet: &Fleet,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    index: usize,
    a: &pb::Assign,
) -> anyhow::Result<()> {
    let seq = fleet.next_seq();
    let failed = pb::Failed { execution: Some(exec_ref(a)), error: "dg-fleet: done".into(), cancelled: false };
    fleet.send(index, Kind::Failed(failed), seq).await?;
    let acked = |e: &Event| matches!(&e.kind, CKind::Ack(k) if k.report_seq == seq);
    wait_event(rx, fleet, Instant::now() + ACK_TIMEOUT, acked)
        .await?
        .map(|_| ())
        .ok_or_else(|| anyhow::anyhow!("the Failed report of agent #{index} was not acknowledged"))
}

/// RunNow → Assign latency.
#[derive(Debug, Default)]
pub(crate) struct LatencyRun {
    pub(crate) all: Latency,
    /// Agent on the replica that took the RunNow.
    pub(crate) same_replica: Latency,
    /// Agent on another replica (the wake-up goes through Redis).
    pub(crate) other_replica: Latency,
    /// The RunNow call alone.
    pub(crate) run_now: Latency,
    /// Fewer samples than asked because the budget ran out.
    pub(crate) budget_hit: bool,
}

/// Times `samples` RunNow → Assign round trips, one at a time, through replica 0's API, cycling over the
/// workers; each assignment is then failed (and acknowledged) to free its agent. Stops early after `budget`.
pub(crate) async fn latency(
    world: &World,
    fleet: &Fleet,
    workers: &[Worker],
    samples: usize,
    budget: Duration,
) -> anyhow::Result<LatencyRun> {
    anyhow::ensure!(!workers.is_empty(), "no worker agents");
    let (tx, mut rx) = mpsc::unbounded_channel();
    for w in workers {
        fleet.subscribe(w.index, Some(tx.clone())).await?;
    }
    drop(tx);
    let replicas = world.controllers.len();
    let c = &world.clients[0];
    let started = Instant::now();
    let (mut same, mut other, mut rpc) = (Vec::new(), Vec::new(), Vec::new());
    let (mut timeouts, mut budget_hit) = (0, false);
    for k in 0..samples {
        if started.elapsed() > budget {
            budget_hit = true;
            break;
        }
        let w = &workers[k % workers.len()];
        let t0 = Instant::now();
        let id = run_now(c, &w.job_id).await?;
        rpc.push(t0.elapsed());
        let mine = |e: &Event| matches!(&e.kind, CKind::Assign(a) if a.execution_id == id);
        match wait_event(&mut rx, fleet, t0 + ASSIGN_TIMEOUT, mine).await? {
            Some(Event { at, kind: CKind::Assign(a), .. }) => {
                let took = at - t0;
                if w.index.is_multiple_of(replicas) {
                    same.push(took)
                } else {
                    other.push(took)
                }
                finish(fleet, &mut rx, w.index, &a).await?;
            }
            _ => {
                timeouts += 1;
                let req = authed(pb::CancelExecutionRequest { id }, &c.token);
                let _ = c.executions.clone().cancel_execution(req).await;
            }
        }
    }
    for w in workers {
        fleet.subscribe(w.index, None).await?;
    }
    let all: Vec<Duration> = same.iter().chain(&other).copied().collect();
    Ok(LatencyRun {
        all: Latency::of(all, timeouts),
        same_replica: Latency::of(same, 0),
        other_replica: Latency::of(other, 0),
        run_now: Latency::of(rpc, 0),
        budget_hit,
    })
}

/// Chunk reports ingested by the controller from several sessions at once.
#[derive(Debug, Default)]
pub(crate) struct ChunkRun {
    pub(crate) sessions: usize,
    /// Reports acknowledged as recorded.
    pub(crate) acked: u64,
    /// Acknowledged with "retry later" (not recorded).
    pub(crate) retry_later: u64,
    /// From the common start to the last acknowledgement.
    pub(crate) took: Duration,
}

impl ChunkRun {
    pub(crate) fn per_sec(&self) -> f64 {
        per_sec(self.acked as f64, self.took)
    }
}

/// One assigned backup per worker of `workers`, then every session streams `ChunkReported` (numbered, at most
/// `window` unacknowledged) for `secs`, all from the same instant; counts the acknowledgements.
pub(crate) async fn chunks(
    world: &World,
    fleet: &Fleet,
    workers: &[Worker],
    secs: u64,
    window: usize,
) -> anyhow::Result<ChunkRun> {
    let c = &world.clients[0];
    let mut assigned = Vec::new();
    for w in workers {
        let (tx, mut rx) = mpsc::unbounded_channel();
        fleet.subscribe(w.index, Some(tx)).await?;
        let id = run_now(c, &w.job_id).await?;
        let mine = |e: &Event| matches!(&e.kind, CKind::Assign(a) if a.execution_id == id);
        let Some(Event { kind: CKind::Assign(a), .. }) =
            wait_event(&mut rx, fleet, Instant::now() + ASSIGN_TIMEOUT, mine).await?
        else {
            anyhow::bail!("agent #{}: no Assign within {ASSIGN_TIMEOUT:?} of RunNow", w.index);
        };
        fleet.set_running(w.index, vec![(a.execution_id.clone(), a.attempt)]).await?;
        assigned.push((w, a, rx));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let floods = assigned.iter_mut().map(|(w, a, rx)| flood(fleet, w, a, rx, end, window));
    let results = futures::future::join_all(floods).await;
    let mut run = ChunkRun { sessions: workers.len(), ..Default::default() };
    let mut last = start;
    for r in results {
        let (acked, retry_later, at) = r?;
        run.acked += acked;
        run.retry_later += retry_later;
        last = last.max(at);
    }
    run.took = last - start;
    for (w, a, rx) in &mut assigned {
        finish(fleet, rx, w.index, a).await?;
        fleet.set_running(w.index, Vec::new()).await?;
        fleet.subscribe(w.index, None).await?;
    }
    Ok(run)
}

/// Streams chunk reports of one assignment until `end`; (acked, retry later, time of the last ack).
async fn flood(
    fleet: &Fleet,
    w: &Worker,
    a: &pb::Assign,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    end: Instant,
    window: usize,
) -> anyhow::Result<(u64, u64, Instant)> {
    let (mut in_flight, mut seq, mut acked, mut retry_later) = (0usize, 0u32, 0u64, 0u64);
    let mut last = Instant::now();
    loop {
        while in_flight < window && Instant::now() < end {
            let data = format!("dg-fleet chunk {seq} of {}", a.execution_id);
            fleet.send(w.index, chunk_for(a, &w.storage_id, seq, data.as_bytes()), fleet.next_seq()).await?;
            in_flight += 1;
            seq += 1;
        }
        if in_flight == 0 {
            return Ok((acked, retry_later, last));
        }
        let limit = if Instant::now() < end { end } else { end + ACK_TIMEOUT };
        match tokio::time::timeout_at(limit, rx.recv()).await {
            Ok(Some(Event { at, kind: CKind::Ack(k), .. })) => {
                in_flight -= 1;
                if k.retry_later {
                    retry_later += 1
                } else {
                    acked += 1
                }
                last = at;
            }
            Ok(Some(Event { kind: CKind::Abort(x), .. })) => {
                anyhow::bail!("agent #{}: the controller aborted the attempt: {}", w.index, x.reason)
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("agent #{}: session sink closed", w.index),
            Err(_) if Instant::now() >= end + ACK_TIMEOUT => {
                anyhow::bail!("agent #{}: {in_flight} chunk reports unacknowledged after {ACK_TIMEOUT:?}", w.index)
            }
            Err(_) => {}
        }
    }
}
