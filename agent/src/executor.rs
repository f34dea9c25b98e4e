//! Runs assigned executions: one task per [`Assignment`], with its own cancellation token and a
//! [`Reporter`]. The executor lives as long as the agent, not a session: a short disconnect does not stop
//! running attempts (the next Hello lists them, and the controller keeps them while their leases hold, or
//! aborts them). Reports and heartbeats go to one bounded, ordered channel ([`Outbound`]), which the
//! session drains into the stream: no code past the session sees a wire message, and a heartbeat that no
//! longer lists an attempt always leaves after that attempt's final report. An aborted attempt (the
//! controller ended it) stops at once, reports nothing more, and its objects are deleted best-effort.
//! Called by the session only (assign, refuse, cancel, abort, heartbeat, drain).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use dg_common::{
    ids::ExecutionId,
    protocol::{Assignment, Attempt, BackupPlan, ExecutionRef, LogLevel, Plan},
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    context::AgentContext,
    error::PipelineError,
    outbox::Outbox,
    pipeline,
    report::{Finished, Outbound, Reporter},
};

/// Attempts running on this agent, by execution: attempt, cancellation, aborted by the controller.
type Running = HashMap<ExecutionId, (Attempt, CancellationToken, Arc<AtomicBool>)>;

/// Executions running on this agent.
#[derive(Clone)]
pub struct Executor {
    reports: mpsc::Sender<Outbound>,
    outbox: Outbox,
    running: Arc<Mutex<Running>>,
    tracker: TaskTracker,
    session: CancellationToken,
    ctx: AgentContext,
}

impl Executor {
    /// An executor whose jobs report on `reports` (acknowledged through `outbox`) and stop when `root` is
    /// cancelled (the agent stops).
    pub fn new(reports: mpsc::Sender<Outbound>, outbox: Outbox, root: CancellationToken, ctx: AgentContext) -> Self {
        Self { reports, outbox, running: Arc::default(), tracker: TaskTracker::new(), session: root, ctx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        lock(&self.running)
    }

    /// What is running.
    pub fn running(&self) -> Vec<ExecutionRef> {
        self.lock().iter().map(|(id, (attempt, ..))| ExecutionRef { id: *id, attempt: *attempt }).collect()
    }

    /// What a heartbeat or Hello lists: the attempts running, and those whose final report the controller has
    /// not acknowledged yet (for the controller they still run; dropping them would end them as lost).
    pub fn listed(&self) -> Vec<ExecutionRef> {
        let mut list = self.running();
        for e in self.outbox.pending_attempts() {
            if !list.contains(&e) {
                list.push(e);
            }
        }
        list
    }

    /// Queues a heartbeat listing [`Executor::listed`], behind every report already queued (an attempt leaves
    /// the running list only after its final report is queued). False when the session is gone.
    pub async fn heartbeat(&self) -> bool {
        let listed = self.listed();
        self.reports.send(Outbound::Heartbeat(listed)).await.is_ok()
    }

    /// Starts an assigned execution.
    pub fn assign(&self, a: Assignment) {
        let execution = a.execution;
        let cancel = self.session.child_token();
        let aborted = Arc::new(AtomicBool::new(false));
        self.lock().insert(execution.id, (execution.attempt, cancel.clone(), aborted.clone()));
        let rep = Reporter::new(self.reports.clone(), self.outbox.clone(), execution);
        let outbox = self.outbox.clone();
        let span = info_span!("execution", execution_id = %execution.id, attempt = %execution.attempt);
        dg_common::telemetry::set_parent(&span, &a.trace_context);
        let running = self.running.clone();
        let ctx = self.ctx.clone();
        self.tracker.spawn(
            async move {
                let result = match &a.plan {
                    Plan::Backup(p) => {
                        pipeline::backup::run(p, &rep, &cancel, &ctx).await.map(|r| Finished::Backup(Box::new(r)))
                    }
                    Plan::Restore(p) => pipeline::restore::run(p, &rep, &cancel, &ctx).await.map(Finished::Restore),
                    Plan::Verify(p) => pipeline::verify::run(p, &rep, &cancel, &ctx).await.map(Finished::Verify),
                };
                if aborted.load(Ordering::SeqCst) {
                    // The controller ended this attempt: nothing it does counts any more.
                    warn!("attempt aborted by the controller");
                    outbox.forget(execution);
                    if let Plan::Backup(p) = &a.plan {
                        remove_attempt_objects(p, &ctx).await;
                    }
                } else {
                    match result {
                        Ok(r) => {
                            info!("execution finished");
                            rep.completed(r).await;
                        }
                        Err(PipelineError::Cancelled) => {
                            rep.log(LogLevel::Warn, "cancelled").await;
                            rep.failed("cancelled".into(), true).await;
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            rep.log(LogLevel::Error, msg.clone()).await;
                            rep.failed(msg, false).await;
                        }
                    }
                }
                // A newer attempt of the same execution may have replaced this one meanwhile; leave it listed.
                let mut running = lock(&running);
                if running.get(&execution.id).is_some_and(|(attempt, ..)| *attempt == execution.attempt) {
                    running.remove(&execution.id);
                }
            }
            .instrument(span),
        );
    }

    /// Reports an attempt that cannot start (its assignment did not convert) the way a failed one is
    /// reported, so the controller ends it at once instead of waiting for its lease to expire.
    pub async fn refuse(&self, execution: ExecutionRef, error: String) {
        let rep = Reporter::new(self.reports.clone(), self.outbox.clone(), execution);
        rep.log(LogLevel::Error, error.clone()).await;
        rep.failed(error, false).await;
    }

    /// Stops an execution if it runs with this attempt.
    pub fn cancel(&self, execution: ExecutionRef) {
        if let Some((attempt, token, _)) = self.lock().get(&execution.id)
            && *attempt == execution.attempt
        {
            token.cancel();
        }
    }

    /// Stops an attempt the controller has ended: its tool is killed (the pipeline is dropped), it reports
    /// nothing more, writes no manifest, and what it wrote is deleted. Returns whether it was running.
    pub fn abort(&self, execution: ExecutionRef) -> bool {
        if let Some((attempt, token, aborted)) = self.lock().get(&execution.id)
            && *attempt == execution.attempt
        {
            aborted.store(true, Ordering::SeqCst);
            token.cancel();
            return true;
        }
        self.outbox.forget(execution);
        false
    }

    /// Stops every attempt (the agent was cut off from the controller for longer than any lease).
    pub fn cancel_all(&self) {
        for (_, token, _) in self.lock().values() {
            token.cancel();
        }
    }

    /// Waits (bounded) for every job to stop after the agent was stopped.
    pub async fn drain(&self, deadline: std::time::Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
    }
}

/// Deletes, best-effort, every object below an aborted backup attempt's prefix in each of its storages (the
/// controller's cleanup sweeps whatever this misses).
async fn remove_attempt_objects(plan: &BackupPlan, ctx: &AgentContext) {
    let prefix = plan.layout.prefix();
    for t in &plan.storages {
        let Ok(s) = crate::storage::open(t, ctx) else { continue };
        if let Err(e) = dg_common::store::delete_prefix(s.store.as_ref(), &prefix).await {
            warn!(storage = %t.id, error = %e, "cannot delete an aborted attempt's objects");
        }
    }
}

fn lock(running: &Mutex<Running>) -> std::sync::MutexGuard<'_, Running> {
    running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dg_common::{
        ids::{DatasourceId, StorageId},
        protocol::{AgentReport, BackupPlan, DatabaseTarget, Engine, ObjectLayout, StorageTarget, Strategy, TlsMode},
        store::StoreConfig,
    };

    use super::*;

    fn backup(execution: ExecutionRef) -> Assignment {
        Assignment {
            execution,
            trace_context: Default::default(),
            plan: Plan::Backup(BackupPlan {
                source: DatabaseTarget {
                    engine: Engine::Postgres,
                    host: "db.invalid".into(),
                    port: 5432,
                    database: "app".into(),
                    username: "backup".into(),
                    password: Default::default(),
                    tls_mode: TlsMode::Disable,
                },
                // No local root is configured below, so the storage is refused before anything is dumped.
                storages: vec![StorageTarget {
                    id: StorageId::new(),
                    config: StoreConfig::Local { path: "/x".into() },
                }],
                strategy: Strategy::Replicate,
                layout: ObjectLayout { datasource: DatasourceId::new(), execution },
                compression_level: 3,
                chunk_size: 1 << 20,
                upload_concurrency: 1,
                compression_workers: 0,
                adaptive_compression: None,
                encryption_key_id: None,
                include_globals: false,
                parallel: 1,
            }),
        }
    }

    async fn until_failed(rx: &mut mpsc::Receiver<Outbound>) -> Vec<AgentReport> {
        let mut got = Vec::new();
        while let Ok(Some(o)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            let Outbound::Report(r) = o else { continue };
            let last = matches!(*r, AgentReport::Failed { .. });
            got.push(*r);
            if last {
                break;
            }
        }
        got
    }

    #[tokio::test]
    async fn attempts_report_failures_for_their_own_attempt_and_leave_the_running_list() {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, mut rx) = mpsc::channel(16);
        let session = CancellationToken::new();
        let ctx = AgentContext::new(dir.path(), vec![], Default::default());
        let executor = Executor::new(tx, Outbox::default(), session.clone(), ctx);

        let execution = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(2) };
        executor.assign(backup(execution));
        let got = until_failed(&mut rx).await;
        assert!(got.iter().all(|r| r.execution() == execution), "{got:?}");
        let Some(AgentReport::Failed { error, cancelled: false, .. }) = got.last() else { panic!("{got:?}") };
        assert!(error.contains("no storage usable"), "{error}");
        assert!(
            got.iter().any(|r| matches!(r, AgentReport::Log(l) if l.level == LogLevel::Error && l.message == *error)),
            "the failure is in the execution log too: {got:?}"
        );
        executor.drain(Duration::from_secs(5)).await;
        assert!(executor.running().is_empty());

        let refused = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(1) };
        executor.refuse(refused, "invalid assignment: backup.source.port: must be 1 to 65535".into()).await;
        let got = until_failed(&mut rx).await;
        assert_eq!(got.len(), 2, "a log line, then the failure: {got:?}");
        assert!(matches!(&got[1], AgentReport::Failed { execution, cancelled: false, .. } if *execution == refused));
    }
}
