//! Runs assigned executions: one task each, with its own cancellation token (a child of the session's), and
//! a [`Reporter`] that turns progress into session messages tagged with the execution and attempt.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use dg_proto::v1::{self as pb, agent_message::Kind};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use crate::{context::AgentContext, error::PipelineError, pipeline};

/// Sends reports about one execution attempt.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: mpsc::Sender<pb::AgentMessage>,
    execution: pb::ExecutionRef,
}

impl Reporter {
    /// A reporter for one attempt.
    pub fn new(tx: mpsc::Sender<pb::AgentMessage>, execution_id: String, attempt: u32) -> Self {
        Self { tx, execution: pb::ExecutionRef { execution_id, attempt } }
    }

    /// The execution id.
    pub fn execution_id(&self) -> &str {
        &self.execution.execution_id
    }

    async fn send(&self, kind: Kind) {
        // A closed session means the controller will fail this attempt on its own; nothing to do here.
        let _ = self.tx.send(pb::AgentMessage { kind: Some(kind) }).await;
    }

    /// A log line for operators (already free of secrets).
    pub async fn log(&self, level: &str, message: impl Into<String>) {
        let message = message.into();
        match level {
            "error" => {
                warn!(execution_id = %self.execution.execution_id, %message, "execution error")
            }
            _ => info!(execution_id = %self.execution.execution_id, %message, "execution log"),
        }
        self.send(Kind::Log(pb::LogLine {
            execution: Some(self.execution.clone()),
            level: level.to_owned(),
            message,
            at: Some(now_ts()),
        }))
        .await;
    }

    /// A chunk is durably stored in a storage.
    pub async fn chunk(&self, storage_id: &str, seq: u32, key: &str, size: u64, sha256: &str, raw_bytes: u64) {
        self.send(Kind::ChunkReported(pb::ChunkReported {
            execution: Some(self.execution.clone()),
            storage_id: storage_id.to_owned(),
            seq,
            key: key.to_owned(),
            size,
            sha256: sha256.to_owned(),
            raw_bytes,
        }))
        .await;
    }

    /// Progress.
    pub async fn progress(&self, raw_bytes: u64, stored_bytes: u64, chunks: u32) {
        self.send(Kind::Progress(pb::Progress {
            execution: Some(self.execution.clone()),
            raw_bytes,
            stored_bytes,
            chunks,
        }))
        .await;
    }

    async fn completed(&self, result: pb::completed::Result) {
        self.send(Kind::Completed(pb::Completed { execution: Some(self.execution.clone()), result: Some(result) }))
            .await;
    }

    async fn failed(&self, error: String, cancelled: bool) {
        self.send(Kind::Failed(pb::Failed { execution: Some(self.execution.clone()), error, cancelled })).await;
    }
}

fn now_ts() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp { seconds: now.timestamp(), nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// Executions running in this session.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::Sender<pb::AgentMessage>,
    running: Arc<Mutex<HashMap<String, (u32, CancellationToken)>>>,
    tracker: TaskTracker,
    session: CancellationToken,
    ctx: AgentContext,
}

impl Executor {
    /// An executor whose jobs stop when `session` is cancelled.
    pub fn new(tx: mpsc::Sender<pb::AgentMessage>, session: CancellationToken, ctx: AgentContext) -> Self {
        Self { tx, running: Arc::default(), tracker: TaskTracker::new(), session, ctx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, CancellationToken)>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is running, for heartbeats.
    pub fn running(&self) -> Vec<pb::ExecutionRef> {
        self.lock()
            .iter()
            .map(|(id, (attempt, _))| pb::ExecutionRef { execution_id: id.clone(), attempt: *attempt })
            .collect()
    }

    /// Starts an assigned execution.
    pub fn assign(&self, a: pb::Assign) {
        let cancel = self.session.child_token();
        self.lock().insert(a.execution_id.clone(), (a.attempt, cancel.clone()));
        let rep = Reporter::new(self.tx.clone(), a.execution_id.clone(), a.attempt);
        let span = info_span!("execution", execution_id = %a.execution_id, attempt = a.attempt);
        dg_common::telemetry::set_parent(&span, &a.trace_context);
        let running = self.running.clone();
        let id = a.execution_id.clone();
        let ctx = self.ctx.clone();
        self.tracker.spawn(
            async move {
                let result = match a.task {
                    Some(pb::assign::Task::Backup(t)) => {
                        pipeline::backup::run(t, &rep, &cancel, &ctx).await.map(pb::completed::Result::Backup)
                    }
                    Some(pb::assign::Task::Restore(t)) => {
                        pipeline::restore::run(t, &rep, &cancel, &ctx).await.map(pb::completed::Result::Restore)
                    }
                    None => Err(PipelineError::Invalid("assignment without a task".into())),
                };
                match result {
                    Ok(r) => {
                        info!("execution finished");
                        rep.completed(r).await;
                    }
                    Err(PipelineError::Cancelled) => {
                        rep.log("warn", "cancelled").await;
                        rep.failed("cancelled".into(), true).await;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        rep.log("error", msg.clone()).await;
                        rep.failed(msg, false).await;
                    }
                }
                running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
            }
            .instrument(span),
        );
    }

    /// Stops an execution if it runs with this attempt.
    pub fn cancel(&self, execution_id: &str, attempt: u32) {
        if let Some((a, token)) = self.lock().get(execution_id)
            && *a == attempt
        {
            token.cancel();
        }
    }

    /// Waits (bounded) for every job to stop after the session was cancelled.
    pub async fn drain(&self, deadline: std::time::Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
    }
}
