//! Recovery-point objectives. [`decide`] (pure) says whether a job's breach begins or ends; [`RpoTask`] (every
//! replica, every `interval` and right after a backup commits) applies it. The breach start is the deadline
//! itself (newest good backup, or the job's creation, plus the RPO), so every replica computes the same start
//! and the same dedup key. The event is emitted first and the job's `rpo_breached_since` set by
//! compare-and-set after: a crash between the two repeats the emit next round, which is a no-op.
//! The same rounds look for agents offline longer than a threshold (`agent_offline`, once per offline
//! period: the key names the agent and its last heartbeat).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::{sync::Notify, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Event, Notifier};
use crate::{
    db::{Db, RpoJobRow},
    error::ControllerResult,
};

/// A change of a job's RPO state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpoChange {
    /// The job has no good backup within its RPO since `since`.
    Breached {
        /// The deadline that passed.
        since: DateTime<Utc>,
    },
    /// The breach that began at `since` is over.
    Recovered {
        /// The breach start.
        since: DateTime<Utc>,
    },
}

/// The change, if any, for a job with objective `rpo_secs` created at `created`, whose newest good backup
/// completed at `newest_good`, currently breached since `breached_since`, at time `now`.
pub fn decide(
    now: DateTime<Utc>,
    rpo_secs: i64,
    created: DateTime<Utc>,
    newest_good: Option<DateTime<Utc>>,
    breached_since: Option<DateTime<Utc>>,
) -> Option<RpoChange> {
    if rpo_secs <= 0 {
        return None;
    }
    let deadline = newest_good.unwrap_or(created) + chrono::Duration::seconds(rpo_secs);
    match breached_since {
        None if now > deadline => Some(RpoChange::Breached { since: deadline }),
        Some(since) if now <= deadline => Some(RpoChange::Recovered { since }),
        _ => None,
    }
}

/// Wakes the RPO task early (after a backup commits). Cloneable.
#[derive(Clone, Debug, Default)]
pub struct RpoHandle(Arc<Notify>);

impl RpoHandle {
    /// Asks for a round soon.
    pub fn poke(&self) {
        self.0.notify_one();
    }
}

/// Background RPO evaluation.
pub struct RpoTask {
    db: Db,
    notifier: Notifier,
    interval: Duration,
    wake: RpoHandle,
    offline_after: Duration,
}

impl RpoTask {
    /// New task; `wake` is the handle given to the [`Notifier`].
    pub fn new(db: Db, notifier: Notifier, interval: Duration, wake: RpoHandle, offline_after: Duration) -> Self {
        Self { db, notifier, interval, wake, offline_after }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.wake.0.notified() => {}
            }
            if let Err(e) = self.round(Utc::now()).await {
                tracing::warn!(error = %e, "rpo round failed");
            }
        }
    }

    async fn round(&self, now: DateTime<Utc>) -> ControllerResult<()> {
        for job in self.db.rpo_jobs().await? {
            self.apply(&job, now).await?;
        }
        let secs = i64::try_from(self.offline_after.as_secs()).unwrap_or(i64::MAX);
        for (agent, hostname, last) in self.db.agents_offline_for(secs).await? {
            self.notifier.emit(Event::agent_offline(agent, &hostname, last)).await;
        }
        Ok(())
    }

    async fn apply(&self, j: &RpoJobRow, now: DateTime<Utc>) -> ControllerResult<()> {
        match decide(now, j.rpo_secs, j.created_at, j.newest_good, j.rpo_breached_since) {
            None => {
                // Repeat the emit of a breach already recorded: a no-op unless a crash lost it.
                if let Some(since) = j.rpo_breached_since {
                    self.notifier.emit(Event::rpo_breached(j.id, &j.name, j.datasource_id, since, j.rpo_secs)).await;
                }
            }
            Some(RpoChange::Breached { since }) => {
                self.notifier.emit(Event::rpo_breached(j.id, &j.name, j.datasource_id, since, j.rpo_secs)).await;
                if self.db.set_rpo_breached(j.id, None, Some(since)).await? {
                    tracing::info!(job = %j.id, %since, "rpo breached");
                }
            }
            Some(RpoChange::Recovered { since }) => {
                self.notifier.emit(Event::rpo_recovered(j.id, &j.name, j.datasource_id, since, j.rpo_secs)).await;
                if self.db.set_rpo_breached(j.id, Some(since), None).await? {
                    tracing::info!(job = %j.id, %since, "rpo recovered");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    #[test]
    fn a_job_without_backups_breaches_one_rpo_after_creation() {
        assert_eq!(decide(t(60), 60, t(0), None, None), None, "exactly at the deadline is still fine");
        assert_eq!(decide(t(61), 60, t(0), None, None), Some(RpoChange::Breached { since: t(60) }));
        assert_eq!(decide(t(1000), 60, t(0), None, Some(t(60))), None, "a breach fires once");
    }

    #[test]
    fn a_good_backup_within_the_rpo_ends_the_breach_and_a_later_gap_is_a_new_breach() {
        assert_eq!(decide(t(100), 60, t(0), Some(t(90)), Some(t(60))), Some(RpoChange::Recovered { since: t(60) }));
        assert_eq!(decide(t(100), 60, t(0), Some(t(90)), None), None);
        assert_eq!(decide(t(151), 60, t(0), Some(t(90)), None), Some(RpoChange::Breached { since: t(150) }));
        assert_eq!(
            decide(t(200), 60, t(0), Some(t(90)), Some(t(60))),
            None,
            "a backup older than the RPO does not end a breach"
        );
    }

    #[test]
    fn every_replica_computes_the_same_breach_start() {
        let a = decide(t(500), 60, t(0), Some(t(10)), None);
        let b = decide(t(900), 60, t(0), Some(t(10)), None);
        assert_eq!(a, b);
        assert_eq!(decide(t(500), 0, t(0), None, None), None, "no objective, no breach");
    }
}
