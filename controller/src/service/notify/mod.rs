//! Notifications: events, channels, deliveries and the inbox.
//!
//! A fact that someone should hear about (an execution failed, a job breached its RPO…) becomes an event
//! through [`Notifier::emit`], the one writer: it records the event with a dedup key naming the fact, its
//! inbox item and a delivery per matching channel in one transaction ([`crate::db::Db::emit_event`]); a
//! second emit of the same fact is a no-op, so callers emit right after their state change and a retry is
//! harmless. [`delivery::NotificationTask`] (every replica) sends deliveries; [`rpo::RpoTask`] watches
//! recovery-point objectives; [`channels::NotificationService`] is the operator-facing side.

pub mod channels;
pub mod delivery;
pub mod rpo;
pub mod send;

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::db::{Db, NewEventRow};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An execution ended failed (always subscribed by default).
    ExecutionFailed,
    /// A backup completed (opt-in).
    ExecutionCompleted,
    /// A restore drill passed.
    DrillPassed,
    /// A restore drill failed.
    DrillFailed,
    /// A verify found a damaged or missing copy.
    VerifyDamage,
    /// A job has no good backup newer than its RPO.
    RpoBreached,
    /// A breached job has a good backup again.
    RpoRecovered,
    /// A datasource went healthy ↔ critical.
    DatasourceHealthChanged,
    /// A storage went healthy ↔ critical.
    StorageHealthChanged,
    /// An agent has been offline longer than the threshold.
    AgentOffline,
    /// An agent was revoked.
    AgentRevoked,
    /// A channel test (never in the inbox, never subscribed).
    Test,
}

impl EventKind {
    /// Every kind a channel can subscribe to.
    pub const SUBSCRIBABLE: [EventKind; 11] = [
        EventKind::ExecutionFailed,
        EventKind::ExecutionCompleted,
        EventKind::DrillPassed,
        EventKind::DrillFailed,
        EventKind::VerifyDamage,
        EventKind::RpoBreached,
        EventKind::RpoRecovered,
        EventKind::DatasourceHealthChanged,
        EventKind::StorageHealthChanged,
        EventKind::AgentOffline,
        EventKind::AgentRevoked,
    ];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ExecutionFailed => "execution_failed",
            EventKind::ExecutionCompleted => "execution_completed",
            EventKind::DrillPassed => "drill_passed",
            EventKind::DrillFailed => "drill_failed",
            EventKind::VerifyDamage => "verify_damage",
            EventKind::RpoBreached => "rpo_breached",
            EventKind::RpoRecovered => "rpo_recovered",
            EventKind::DatasourceHealthChanged => "datasource_health_changed",
            EventKind::StorageHealthChanged => "storage_health_changed",
            EventKind::AgentOffline => "agent_offline",
            EventKind::AgentRevoked => "agent_revoked",
            EventKind::Test => "test",
        }
    }

    /// What a channel created without a list subscribes to: everything but the opt-in `execution_completed`.
    pub fn default_subscription() -> Vec<EventKind> {
        Self::SUBSCRIBABLE.into_iter().filter(|k| *k != EventKind::ExecutionCompleted).collect()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::SUBSCRIBABLE
            .into_iter()
            .chain([EventKind::Test])
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// An event about to be emitted: kind, the key of the fact, subjects and details.
#[derive(Clone, Debug)]
pub struct Event {
    row: NewEventRow,
}

impl Event {
    fn new(kind: EventKind, dedup_key: String, summary: String, payload: serde_json::Value) -> Self {
        Self {
            row: NewEventRow {
                kind: kind.as_str().into(),
                dedup_key,
                summary,
                payload,
                inbox: true,
                ..Default::default()
            },
        }
    }

    /// The fact's key (what makes a repeated emit a no-op).
    pub fn dedup_key(&self) -> &str {
        &self.row.dedup_key
    }

    /// An execution ended failed. One per execution.
    pub fn execution_failed(
        execution: Uuid,
        operation: &str,
        job: Option<Uuid>,
        datasource: Uuid,
        error: &str,
    ) -> Self {
        let mut e = Self::new(
            EventKind::ExecutionFailed,
            format!("execution_failed:{execution}"),
            format!("{operation} execution {execution} failed: {error}"),
            json!({"operation": operation, "error": error}),
        );
        (e.row.execution_id, e.row.job_id, e.row.datasource_id) = (Some(execution), job, Some(datasource));
        e
    }

    /// A backup completed. One per execution.
    pub fn execution_completed(execution: Uuid, job: Option<Uuid>, datasource: Uuid, stored_bytes: i64) -> Self {
        let mut e = Self::new(
            EventKind::ExecutionCompleted,
            format!("execution_completed:{execution}"),
            format!("backup {execution} completed ({stored_bytes} bytes stored)"),
            json!({"operation": "backup", "stored_bytes": stored_bytes}),
        );
        (e.row.execution_id, e.row.job_id, e.row.datasource_id) = (Some(execution), job, Some(datasource));
        e
    }

    /// A restore drill run passed or failed. One per run.
    pub fn drill(run: Uuid, drill: Uuid, datasource: Uuid, passed: bool, detail: &str) -> Self {
        let (kind, verdict) =
            if passed { (EventKind::DrillPassed, "passed") } else { (EventKind::DrillFailed, "failed") };
        let mut e = Self::new(
            kind,
            format!("{kind}:{run}"),
            format!("restore drill {drill} {verdict}: {detail}"),
            json!({"drill_id": drill.to_string(), "run_id": run.to_string(), "detail": detail}),
        );
        (e.row.execution_id, e.row.datasource_id) = (Some(run), Some(datasource));
        e
    }

    /// A verify found damaged or missing copies. One per verify execution.
    pub fn verify_damage(verify: Uuid, backup: Uuid, datasource: Uuid, job: Option<Uuid>, bad_copies: &[Uuid]) -> Self {
        let mut e = Self::new(
            EventKind::VerifyDamage,
            format!("verify_damage:{verify}"),
            format!("verify {verify} found {} damaged or missing copies of backup {backup}", bad_copies.len()),
            json!({"backup_id": backup.to_string(), "storages": bad_copies.iter().map(Uuid::to_string).collect::<Vec<_>>()}),
        );
        (e.row.execution_id, e.row.job_id, e.row.datasource_id) = (Some(verify), job, Some(datasource));
        e
    }

    /// A job's RPO breach began at `since`. One per breach.
    pub fn rpo_breached(job: Uuid, name: &str, datasource: Uuid, since: DateTime<Utc>, rpo_secs: i64) -> Self {
        let mut e = Self::new(
            EventKind::RpoBreached,
            format!("rpo_breached:{job}:{}", since.timestamp_micros()),
            format!("job {name}: no good backup within its RPO of {}", humanize(rpo_secs)),
            json!({"job_name": name, "rpo_secs": rpo_secs, "breached_since": since.to_rfc3339()}),
        );
        (e.row.job_id, e.row.datasource_id) = (Some(job), Some(datasource));
        e
    }

    /// A breach that began at `since` ended. One per breach.
    pub fn rpo_recovered(job: Uuid, name: &str, datasource: Uuid, since: DateTime<Utc>, rpo_secs: i64) -> Self {
        let mut e = Self::new(
            EventKind::RpoRecovered,
            format!("rpo_recovered:{job}:{}", since.timestamp_micros()),
            format!("job {name}: back within its RPO of {}", humanize(rpo_secs)),
            json!({"job_name": name, "rpo_secs": rpo_secs, "breached_since": since.to_rfc3339()}),
        );
        (e.row.job_id, e.row.datasource_id) = (Some(job), Some(datasource));
        e
    }

    /// A datasource or storage (`target_kind` "datasource" / "storage") went healthy ↔ critical; `check` is
    /// the health check that saw the flip. One per flip.
    pub fn health_changed(target_kind: &str, target: Uuid, check: i64, healthy: bool, error: &str) -> Self {
        let (kind, subject) = if target_kind == "storage" {
            (EventKind::StorageHealthChanged, "storage")
        } else {
            (EventKind::DatasourceHealthChanged, "datasource")
        };
        let status = if healthy { "healthy" } else { "critical" };
        let summary = if healthy {
            format!("{subject} {target} is healthy again")
        } else {
            format!("{subject} {target} is critical: {error}")
        };
        let mut e = Self::new(
            kind,
            format!("{kind}:{target}:{check}"),
            summary,
            json!({"status": status, "error": if healthy { "" } else { error }}),
        );
        if kind == EventKind::StorageHealthChanged {
            e.row.storage_id = Some(target);
        } else {
            e.row.datasource_id = Some(target);
        }
        e
    }

    /// An agent was revoked. One per agent (revocation is final).
    pub fn agent_revoked(agent: Uuid, name: &str) -> Self {
        let mut e = Self::new(
            EventKind::AgentRevoked,
            format!("agent_revoked:{agent}"),
            format!("agent {name} was revoked"),
            json!({"agent_name": name}),
        );
        e.row.agent_id = Some(agent);
        e
    }

    /// An agent has been offline since its last heartbeat `last`. One per offline period.
    pub fn agent_offline(agent: Uuid, name: &str, last: DateTime<Utc>) -> Self {
        let mut e = Self::new(
            EventKind::AgentOffline,
            format!("agent_offline:{agent}:{}", last.timestamp_micros()),
            format!("agent {name} offline since {}", last.to_rfc3339()),
            json!({"agent_name": name, "last_heartbeat_at": last.to_rfc3339()}),
        );
        e.row.agent_id = Some(agent);
        e
    }

    /// A synthetic event for one channel (never in the inbox).
    pub fn test(channel: Uuid) -> Self {
        let id = Uuid::now_v7();
        let mut e = Self::new(
            EventKind::Test,
            format!("test:{channel}:{id}"),
            "DataGuardian test notification".into(),
            json!({"channel_id": channel.to_string()}),
        );
        (e.row.inbox, e.row.only_channel) = (false, Some(channel));
        e
    }
}

/// "26h", "90m", "45s": an RPO for humans.
fn humanize(secs: i64) -> String {
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// The one writer of events. Cloneable.
#[derive(Clone, Debug)]
pub struct Notifier {
    db: Db,
    rpo: rpo::RpoHandle,
}

impl Notifier {
    /// New notifier; `rpo` wakes the RPO task when a backup commits.
    pub fn new(db: Db, rpo: rpo::RpoHandle) -> Self {
        Self { db, rpo }
    }

    /// A backup committed: its job's RPO state may change now.
    pub fn backup_committed(&self) {
        self.rpo.poke();
    }

    /// Records `event` (with its inbox item and deliveries) unless its fact was recorded before. Returns the
    /// event id when new. Failures are logged and swallowed: a notification never fails the state change that
    /// caused it.
    pub async fn emit(&self, event: Event) -> Option<Uuid> {
        match self.db.emit_event(&event.row).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(kind = %event.row.kind, key = %event.row.dedup_key, error = %e, "notification event not recorded");
                None
            }
        }
    }

    /// Like [`Self::emit`], returning the database error (a channel test reports it).
    pub(crate) async fn try_emit(&self, event: Event) -> Result<Option<Uuid>, sea_orm::DbErr> {
        self.db.emit_event(&event.row).await
    }
}

/// Wait before attempt `next` (2, 3, …) of a delivery: exponential from `base`, capped at `max`.
pub fn retry_delay(next: u32, base: Duration, max: Duration) -> Duration {
    let exp = next.saturating_sub(2).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_the_default_subscription_leaves_out_completions() {
        for k in EventKind::SUBSCRIBABLE.into_iter().chain([EventKind::Test]) {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        assert!("execution_exploded".parse::<EventKind>().is_err());
        let d = EventKind::default_subscription();
        assert!(!d.contains(&EventKind::ExecutionCompleted) && d.contains(&EventKind::ExecutionFailed));
        assert_eq!(d.len(), EventKind::SUBSCRIBABLE.len() - 1);
    }

    #[test]
    fn dedup_keys_name_the_fact() {
        let (job, ds, ex) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let since = Utc::now();
        assert_eq!(
            Event::rpo_breached(job, "j", ds, since, 60).dedup_key(),
            Event::rpo_breached(job, "j", ds, since, 120).dedup_key(),
            "the same breach is one fact whatever the objective says now"
        );
        assert_ne!(
            Event::rpo_breached(job, "j", ds, since, 60).dedup_key(),
            Event::rpo_breached(job, "j", ds, since + chrono::Duration::seconds(1), 60).dedup_key(),
            "a later breach is a new fact"
        );
        assert_ne!(
            Event::rpo_breached(job, "j", ds, since, 60).dedup_key(),
            Event::rpo_recovered(job, "j", ds, since, 60).dedup_key()
        );
        assert_eq!(
            Event::execution_failed(ex, "backup", Some(job), ds, "a").dedup_key(),
            Event::execution_failed(ex, "backup", Some(job), ds, "b").dedup_key()
        );
        assert_ne!(Event::test(job).dedup_key(), Event::test(job).dedup_key(), "every test is its own event");
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(60));
        let d: Vec<_> = (2..=10).map(|n| retry_delay(n, b, m).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, b, m), m);
        assert_eq!(humanize(26 * 3600), "26h");
        assert_eq!(humanize(90 * 60), "90m");
        assert_eq!(humanize(45), "45s");
    }
}
