//! The agent's outbox: reports that change state on the controller (a chunk stored, an attempt completed or
//! failed) get an increasing `report_seq` and are kept until the controller acknowledges them. They are sent
//! again on every new session, and after a "retry later" answer (the controller could not record them: its
//! database is down). A pipeline can wait until every such report of its attempt is acknowledged
//! ([`Outbox::settled`]) — a backup writes its manifest only then, so no manifest is written for chunks the
//! controller never accepted. Shared (cheaply cloned) by reporters, the forwarding task and the session.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dg_common::protocol::{AgentReport, ExecutionRef};
use tokio::sync::Notify;

/// How long a report answered "retry later" waits before it is sent again.
pub const RETRY_LATER: Duration = Duration::from_secs(2);

/// A report on its way out, with its number (`0`: it needs no acknowledgement). The session turns it into
/// the wire message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Numbered {
    /// `report_seq` on the wire.
    pub seq: u64,
    /// The report.
    pub report: AgentReport,
}

struct Entry {
    execution: ExecutionRef,
    report: AgentReport,
    /// Set after a "retry later": not before then.
    resend_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    unacked: BTreeMap<u64, Entry>,
    /// Reports queued by a reporter and not acknowledged yet, per attempt (queued but not stamped included).
    pending: HashMap<ExecutionRef, usize>,
}

/// The outbox (cheap to clone).
#[derive(Clone, Default)]
pub struct Outbox {
    state: Arc<Mutex<State>>,
    settled: Arc<Notify>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("unacked", &self.lock().unacked.len()).finish()
    }
}

/// Whether a report changes state on the controller and so waits for an acknowledgement.
pub fn needs_ack(r: &AgentReport) -> bool {
    matches!(
        r,
        AgentReport::ChunkStored(_)
            | AgentReport::BackupCompleted { .. }
            | AgentReport::RestoreCompleted { .. }
            | AgentReport::VerifyCompleted { .. }
            | AgentReport::Failed { .. }
    )
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attempts with reports not acknowledged yet (still "running" for the controller until they are).
    pub fn pending_attempts(&self) -> Vec<ExecutionRef> {
        self.lock().pending.keys().copied().collect()
    }

    /// A reporter is about to queue a report that needs an acknowledgement.
    pub fn track(&self, execution: ExecutionRef) {
        *self.lock().pending.entry(execution).or_default() += 1;
    }

    /// A report leaving now; one that needs an acknowledgement is numbered and kept until then.
    pub fn stamp(&self, report: AgentReport) -> Numbered {
        if !needs_ack(&report) {
            return Numbered { seq: 0, report };
        }
        let execution = report.execution();
        let mut s = self.lock();
        s.next_seq += 1;
        let seq = s.next_seq;
        s.unacked.insert(seq, Entry { execution, report: report.clone(), resend_at: None });
        Numbered { seq, report }
    }

    /// The controller answered report `seq`: durable (forget it), or "retry later" (send it again soon).
    pub fn ack(&self, seq: u64, retry_later: bool) {
        let mut s = self.lock();
        if retry_later {
            if let Some(e) = s.unacked.get_mut(&seq) {
                e.resend_at = Some(Instant::now() + RETRY_LATER);
            }
            return;
        }
        if let Some(e) = s.unacked.remove(&seq) {
            Self::done(&mut s, e.execution, 1);
            drop(s);
            self.settled.notify_waiters();
        }
    }

    fn done(s: &mut State, execution: ExecutionRef, n: usize) {
        if let Some(p) = s.pending.get_mut(&execution) {
            *p = p.saturating_sub(n);
            if *p == 0 {
                s.pending.remove(&execution);
            }
        }
    }

    /// Every unacknowledged report, oldest first (a new session sends them before anything else).
    pub fn unacked(&self) -> Vec<Numbered> {
        let mut s = self.lock();
        s.unacked
            .iter_mut()
            .map(|(seq, e)| {
                e.resend_at = None;
                Numbered { seq: *seq, report: e.report.clone() }
            })
            .collect()
    }

    /// Reports answered "retry later" whose wait is over.
    pub fn due(&self) -> Vec<Numbered> {
        let now = Instant::now();
        let mut s = self.lock();
        s.unacked
            .iter_mut()
            .filter(|(_, e)| e.resend_at.is_some_and(|t| t <= now))
            .map(|(seq, e)| {
                e.resend_at = None;
                Numbered { seq: *seq, report: e.report.clone() }
            })
            .collect()
    }

    /// The controller ended the attempt: its reports are void; stop sending them.
    pub fn forget(&self, execution: ExecutionRef) {
        let mut s = self.lock();
        s.unacked.retain(|_, e| e.execution != execution);
        s.pending.remove(&execution);
        drop(s);
        self.settled.notify_waiters();
    }

    /// Waits until every report queued so far, of any attempt, is acknowledged.
    pub async fn all_settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().pending.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every report of `execution` queued so far is acknowledged.
    pub async fn settled(&self, execution: ExecutionRef) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().pending.contains_key(&execution) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use dg_common::{
        ids::{ExecutionId, StorageId},
        protocol::{Attempt, ChunkStored, LogLevel, LogReport},
    };

    use super::*;

    fn chunk(execution: ExecutionRef, seq: u32) -> AgentReport {
        AgentReport::ChunkStored(ChunkStored {
            execution,
            storage: StorageId::new(),
            seq,
            key: format!("a/b/1/{seq:08}.zst"),
            size: 1,
            sha256: "a".repeat(64),
            raw_bytes: 1,
        })
    }

    #[tokio::test]
    async fn reports_are_kept_until_acked_resent_in_order_and_settle_per_attempt() {
        let o = Outbox::default();
        let a = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(1) };
        let b = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(3) };
        let log = AgentReport::Log(LogReport { execution: a, level: LogLevel::Info, message: "x".into() });
        assert_eq!(o.stamp(log).seq, 0, "a log line is not acknowledged");
        for (e, seq) in [(a, 0), (b, 0), (a, 1)] {
            o.track(e);
            assert!(o.stamp(chunk(e, seq)).seq > 0);
        }
        let resent: Vec<u64> = o.unacked().iter().map(|m| m.seq).collect();
        assert_eq!(resent, vec![1, 2, 3], "oldest first");

        // "Retry later" keeps the report and makes it due after the wait.
        o.ack(2, true);
        assert!(o.due().is_empty());
        o.lock().unacked.get_mut(&2).expect("kept").resend_at = Some(Instant::now());
        assert_eq!(o.due().iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);

        // Attempt a settles when both of its reports are acknowledged; b is unaffected.
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.settled(a).await }
        });
        o.ack(1, false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one report of a is still unacknowledged");
        o.ack(3, false);
        tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("settles").expect("join");
        assert_eq!(o.unacked().iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);

        // An aborted attempt's reports are dropped and it counts as settled.
        o.forget(b);
        assert!(o.unacked().is_empty());
        tokio::time::timeout(Duration::from_secs(1), o.settled(b)).await.expect("settled");
    }
}
