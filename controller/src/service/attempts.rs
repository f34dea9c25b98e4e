//! How an attempt ends: every cause (the agent reported a failure, the lease expired, the agent restarted or
//! never picked the attempt up, the commit check failed, the `Assign` could not be delivered, a report did not
//! fit the plan, a cancellation) is an [`EndCause`], and [`decide`] turns it, with the job's retry policy, into
//! "queue attempt n+1 after the backoff" or "end the execution". Pure: no I/O, tested over every cause.
//! `ExecutionsService::end_attempt` is the one caller that applies the decision.

use std::fmt;

use super::waker::DispatchWaker;
use crate::{
    db::Db,
    error::ControllerResult,
    metrics::Metrics,
    model::{Execution, Operation, Status},
};

/// Why an attempt ended without completing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// The agent reported a failure.
    AgentFailed(String),
    /// The agent reported that it stopped because of a cancellation.
    AgentCancelled,
    /// No heartbeat listed the attempt before its lease expired.
    LeaseExpired,
    /// The agent running the attempt was revoked (nothing it reports is taken any more).
    AgentRevoked,
    /// The agent opened a new session without the attempt (it restarted).
    AgentRestarted,
    /// The agent's heartbeats do not list the attempt after the grace that follows the assignment.
    NotRunning {
        /// A heartbeat listed it before (the agent started it, then lost it).
        was_listed: bool,
    },
    /// The `Assign` could not be delivered (the session closed between claim and send).
    DeliveryFailed,
    /// The backup's records do not match what the agent reported.
    CommitMismatch(String),
    /// A report of the attempt did not fit its plan.
    Refused(String),
    /// An operator cancelled the execution.
    OperatorCancelled,
    /// The controller cannot build the assignment (job or backup deleted, no reachable storage…).
    Unassignable(String),
}

impl EndCause {
    /// The cause as a metric label (a fixed set, never the free text).
    pub fn label(&self) -> &'static str {
        match self {
            EndCause::AgentFailed(_) => "agent_failed",
            EndCause::AgentCancelled => "agent_cancelled",
            EndCause::LeaseExpired => "lease_expired",
            EndCause::AgentRevoked => "agent_revoked",
            EndCause::AgentRestarted => "agent_restarted",
            EndCause::NotRunning { .. } => "not_running",
            EndCause::DeliveryFailed => "delivery_failed",
            EndCause::CommitMismatch(_) => "commit_mismatch",
            EndCause::Refused(_) => "refused",
            EndCause::OperatorCancelled => "operator_cancelled",
            EndCause::Unassignable(_) => "unassignable",
        }
    }

    /// Whether the agent certainly did not touch a restore's target before the attempt ended: the `Assign`
    /// never arrived, or no heartbeat ever listed the attempt. A restore is retried only then.
    fn target_untouched(&self) -> bool {
        matches!(self, EndCause::DeliveryFailed | EndCause::NotRunning { was_listed: false })
    }

    /// Whether trying again can help: a cancellation is final, a report that breaks the protocol is a bug
    /// that would repeat, and so is a commit mismatch (the agent's own bookkeeping disagrees).
    fn retryable(&self) -> bool {
        !matches!(
            self,
            EndCause::AgentCancelled
                | EndCause::OperatorCancelled
                | EndCause::Refused(_)
                | EndCause::CommitMismatch(_)
                | EndCause::Unassignable(_)
        )
    }

    /// Whether the execution ends `cancelled` rather than `failed`.
    pub fn is_cancellation(&self) -> bool {
        matches!(self, EndCause::AgentCancelled | EndCause::OperatorCancelled)
    }
}

impl fmt::Display for EndCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndCause::AgentFailed(e) => f.write_str(e),
            EndCause::AgentCancelled => f.write_str("cancelled"),
            EndCause::LeaseExpired => f.write_str("agent lost: no heartbeat before the lease expired"),
            EndCause::AgentRevoked => f.write_str("the agent running this attempt was revoked"),
            EndCause::AgentRestarted => f.write_str("agent restarted during the execution"),
            EndCause::NotRunning { .. } => {
                f.write_str("the agent is not running this attempt (its heartbeats do not list it)")
            }
            EndCause::DeliveryFailed => f.write_str("agent disconnected before the assignment"),
            EndCause::CommitMismatch(r) => write!(f, "backup not committed: {r}"),
            EndCause::Refused(r) => write!(f, "agent report refused: {r}"),
            EndCause::OperatorCancelled => f.write_str("cancelled by an operator"),
            EndCause::Unassignable(r) => f.write_str(r),
        }
    }
}

/// A job's retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    /// Wait before the next attempt.
    pub backoff_secs: u32,
}

impl RetryPolicy {
    /// One attempt, no retry (executions without a job, such as restores).
    pub const ONCE: RetryPolicy = RetryPolicy { max_attempts: 1, backoff_secs: 0 };

    /// Restores and verifications: up to three attempts, 5 s apart; [`decide`] allows a retry only when the
    /// ended attempt certainly did not touch the target (the `Assign` never arrived or was never started).
    pub const UNTOUCHED_ONLY: RetryPolicy = RetryPolicy { max_attempts: 3, backoff_secs: 5 };
}

/// What happens after an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Queue the next attempt after `after_secs`.
    Retry {
        /// The next attempt's number.
        next: u32,
        /// Backoff.
        after_secs: u32,
    },
    /// End the execution.
    End {
        /// As `cancelled` (else `failed`).
        cancelled: bool,
    },
}

/// The decision for attempt `attempt` of an `operation` execution that ended with `cause`. A cancellation
/// requested by an operator wins over any other cause (`cancel_requested`), so a cancelled execution never
/// comes back.
pub fn decide(
    operation: Operation,
    cause: &EndCause,
    attempt: u32,
    policy: RetryPolicy,
    cancel_requested: bool,
) -> Decision {
    if cancel_requested || cause.is_cancellation() {
        return Decision::End { cancelled: true };
    }
    let allowed = match operation {
        Operation::Backup => cause.retryable(),
        Operation::Restore | Operation::Verify => cause.retryable() && cause.target_untouched(),
    };
    if allowed && attempt < policy.max_attempts {
        Decision::Retry { next: attempt + 1, after_secs: policy.backoff_secs }
    } else {
        Decision::End { cancelled: false }
    }
}

/// Applies [`decide`]: the one place an attempt that did not complete is ended or retried. Cloneable.
#[derive(Clone, Debug)]
pub struct AttemptEnder {
    db: Db,
    waker: DispatchWaker,
    metrics: Metrics,
}

impl AttemptEnder {
    /// New ender.
    pub fn new(db: Db, waker: DispatchWaker, metrics: Metrics) -> Self {
        Self { db, waker, metrics }
    }

    /// Ends attempt `attempt` of `ex` for `cause`: queues the next attempt when the job's retry policy allows,
    /// else ends the execution `failed` (or `cancelled`) with the cause as its error and a log line. A
    /// compare-and-set on (execution, attempt, running): returns false when the attempt had already ended.
    pub async fn end(&self, ex: &Execution, attempt: i32, cause: EndCause) -> ControllerResult<bool> {
        let policy = match (ex.operation, ex.job_id) {
            (Operation::Backup, Some(job)) => match self.db.job(job).await? {
                Some(j) => RetryPolicy {
                    max_attempts: u32::try_from(j.retry_max_attempts).unwrap_or(1).max(1),
                    backoff_secs: u32::try_from(j.retry_backoff_secs).unwrap_or(0),
                },
                None => RetryPolicy::ONCE,
            },
            (Operation::Backup, None) => RetryPolicy::ONCE,
            (Operation::Restore | Operation::Verify, _) => RetryPolicy::UNTOUCHED_ONLY,
        };
        let n = u32::try_from(attempt).unwrap_or(0);
        if ex.operation == Operation::Backup
            && let Some(job) = ex.job_id
        {
            // Whatever this attempt wrote (or a zombie of it writes later) is swept until its prefix is empty.
            let storages: Vec<_> = self.db.job_storages(job).await?.into_iter().map(|s| s.id).collect();
            let prefix = dg_common::manifest::attempt_prefix(ex.datasource_id.into(), ex.id.into(), n);
            self.db.add_sweeps(ex.id, attempt, &prefix, &storages).await?;
        }
        let decision = decide(ex.operation, &cause, n, policy, ex.cancel_requested);
        let ended = match decision {
            Decision::Retry { next, after_secs } => {
                let retried = self
                    .db
                    .requeue(ex.id, attempt, i32::try_from(after_secs).unwrap_or(i32::MAX), &cause.to_string())
                    .await?;
                if retried {
                    let line = format!(
                        "attempt {attempt} ended: {cause}; attempt {next} of {} in {after_secs}s",
                        policy.max_attempts
                    );
                    self.db.append_log(ex.id, "warn", &line).await?;
                }
                retried
            }
            Decision::End { cancelled } => {
                let msg = if cancelled && !cause.is_cancellation() {
                    format!("cancelled by an operator ({cause})")
                } else {
                    cause.to_string()
                };
                let ended = self.db.finish_failed(ex.id, Some(attempt), &msg, cancelled).await?;
                if ended {
                    let status = if cancelled { Status::Cancelled } else { Status::Failed };
                    let ran_for = ex.started_at.and_then(|s| (chrono::Utc::now() - s).to_std().ok());
                    self.metrics.execution_ended(ex.operation.as_str(), status.as_str(), ran_for);
                    self.db.append_log(ex.id, if cancelled { "warn" } else { "error" }, &msg).await?;
                }
                ended
            }
        };
        if ended && !matches!(decision, Decision::End { cancelled: true }) {
            self.metrics.execution_failures.with_label_values(&[ex.operation.as_str(), cause.label()]).inc();
            if matches!(cause, EndCause::LeaseExpired) {
                self.metrics.lease_reaps.inc();
            }
        }
        self.waker.wake();
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_causes() -> Vec<EndCause> {
        vec![
            EndCause::AgentFailed("pg_dump: connection refused".into()),
            EndCause::AgentCancelled,
            EndCause::LeaseExpired,
            EndCause::AgentRevoked,
            EndCause::AgentRestarted,
            EndCause::NotRunning { was_listed: false },
            EndCause::NotRunning { was_listed: true },
            EndCause::DeliveryFailed,
            EndCause::CommitMismatch("2 chunks recorded, 3 reported".into()),
            EndCause::Refused("a restore result for a backup".into()),
            EndCause::OperatorCancelled,
            EndCause::Unassignable("no storage of the job is reachable".into()),
        ]
    }

    const THREE: RetryPolicy = RetryPolicy { max_attempts: 3, backoff_secs: 300 };

    #[test]
    fn every_transient_cause_of_a_backup_is_retried_within_the_policy() {
        for cause in all_causes() {
            let transient = matches!(
                cause,
                EndCause::AgentFailed(_)
                    | EndCause::LeaseExpired
                    | EndCause::AgentRevoked
                    | EndCause::AgentRestarted
                    | EndCause::NotRunning { .. }
                    | EndCause::DeliveryFailed
            );
            for attempt in 1..=4 {
                let d = decide(Operation::Backup, &cause, attempt, THREE, false);
                let expected = if cause.is_cancellation() {
                    Decision::End { cancelled: true }
                } else if transient && attempt < 3 {
                    Decision::Retry { next: attempt + 1, after_secs: 300 }
                } else {
                    Decision::End { cancelled: false }
                };
                assert_eq!(d, expected, "{cause:?} at attempt {attempt}");
            }
            assert!(
                matches!(decide(Operation::Backup, &cause, 1, RetryPolicy::ONCE, false), Decision::End { .. }),
                "no retry without a policy: {cause:?}"
            );
        }
    }

    #[test]
    fn restores_are_retried_only_when_the_target_was_not_touched() {
        for cause in all_causes() {
            let d = decide(Operation::Restore, &cause, 1, THREE, false);
            let untouched = matches!(cause, EndCause::DeliveryFailed | EndCause::NotRunning { was_listed: false });
            assert_eq!(matches!(d, Decision::Retry { .. }), untouched, "{cause:?}");
        }
    }

    #[test]
    fn an_operator_cancellation_wins_over_every_cause() {
        for op in [Operation::Backup, Operation::Restore, Operation::Verify] {
            for cause in all_causes() {
                assert_eq!(decide(op, &cause, 1, THREE, true), Decision::End { cancelled: true }, "{op:?} {cause:?}");
            }
        }
    }

    #[test]
    fn causes_read_as_errors() {
        for cause in all_causes() {
            let text = cause.to_string();
            assert!(!text.is_empty() && text.chars().next().is_some_and(|c| !c.is_uppercase()), "{text}");
        }
    }
}
