//! How a running attempt speaks: a [`Reporter`] per attempt turns what a pipeline does into [`AgentReport`]s
//! tagged with the execution and attempt, and queues them as [`Outbound`] messages on the session's one
//! ordered channel (heartbeats share it, so a heartbeat that no longer lists an attempt leaves after that
//! attempt's final report). Reports the controller must acknowledge are counted in the [`Outbox`] first, so
//! [`Reporter::settled`] can wait for them. Pipelines and the executor depend on this module; it depends on
//! neither.

use dg_common::{
    ids::StorageId,
    protocol::{
        AgentReport, BackupResult, ChunkStored, ExecutionRef, LogLevel, LogReport, Progress, RestoreResult,
        VerifyResult,
    },
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::outbox::{Outbox, needs_ack};

/// What leaves through the session's one ordered queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// A report about an attempt (boxed: a backup's result is large next to a heartbeat).
    Report(Box<AgentReport>),
    /// A heartbeat listing the attempts running when it was queued.
    Heartbeat(Vec<ExecutionRef>),
}

/// Sends reports about one execution attempt.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: mpsc::Sender<Outbound>,
    outbox: Outbox,
    execution: ExecutionRef,
}

/// What a finished attempt produced.
pub(crate) enum Finished {
    /// A backup's result (boxed: large next to a restore's).
    Backup(Box<BackupResult>),
    /// A restore's result.
    Restore(RestoreResult),
    /// A verify's findings.
    Verify(VerifyResult),
}

impl Reporter {
    /// A reporter for one attempt.
    pub fn new(tx: mpsc::Sender<Outbound>, outbox: Outbox, execution: ExecutionRef) -> Self {
        Self { tx, outbox, execution }
    }

    /// Waits until the controller has acknowledged every report of this attempt sent so far (it recorded
    /// them, or it ended the attempt, which an `Abort` then says).
    pub async fn settled(&self) {
        self.outbox.settled(self.execution).await;
    }

    /// The attempt reported on.
    pub fn execution(&self) -> ExecutionRef {
        self.execution
    }

    async fn send(&self, report: AgentReport) {
        if needs_ack(&report) {
            self.outbox.track(self.execution);
        }
        // The queue outlives sessions; it closes only when the agent stops.
        let _ = self.tx.send(Outbound::Report(Box::new(report))).await;
    }

    /// A log line for operators (already free of secrets).
    pub async fn log(&self, level: LogLevel, message: impl Into<String>) {
        let message = message.into();
        let execution_id = self.execution.id;
        match level {
            LogLevel::Error => warn!(%execution_id, %message, "execution error"),
            LogLevel::Info | LogLevel::Warn => info!(%execution_id, %message, "execution log"),
        }
        self.send(AgentReport::Log(LogReport { execution: self.execution, level, message })).await;
    }

    /// A chunk is durably stored in a storage.
    pub async fn chunk(&self, storage: StorageId, seq: u32, key: &str, size: u64, sha256: &str, raw_bytes: u64) {
        self.send(AgentReport::ChunkStored(ChunkStored {
            execution: self.execution,
            storage,
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
        self.send(AgentReport::Progress(Progress { execution: self.execution, raw_bytes, stored_bytes, chunks })).await;
    }

    pub(crate) async fn completed(&self, finished: Finished) {
        let execution = self.execution;
        self.send(match finished {
            Finished::Backup(result) => AgentReport::BackupCompleted { execution, result: *result },
            Finished::Restore(result) => AgentReport::RestoreCompleted { execution, result },
            Finished::Verify(result) => AgentReport::VerifyCompleted { execution, result },
        })
        .await;
    }

    pub(crate) async fn failed(&self, error: String, cancelled: bool) {
        self.send(AgentReport::Failed { execution: self.execution, error, cancelled }).await;
    }
}
