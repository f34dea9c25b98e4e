//! Coordination through Redis: a watch on Redis health (queue operations answer `UNAVAILABLE` at once while
//! it is down, scheduler and dispatch pause, and everything resumes by itself when it returns), and the
//! scheduler's leader lock. Redis holds nothing that cannot be rebuilt: PostgreSQL stays the source of
//! truth, so losing Redis loses no job.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{clients::Client as RedisClient, prelude::*};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{ControllerError, ControllerResult};

/// Takes or renews a lock held by `ARGV[1]` for `ARGV[2]` milliseconds; 1 when held. The lock key never
/// lives without a TTL: it is only written with `PX` and renewed with `PEXPIRE`, and a lock found without
/// one (written by hand, or by something else) gets the TTL too, so a replica that dies always frees it.
const LEAD_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
    if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
    if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
    return 0";

/// Shared view of Redis.
#[derive(Clone)]
pub struct Coordination {
    client: RedisClient,
    up: Arc<AtomicBool>,
    replica: String,
}

impl std::fmt::Debug for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordination").field("up", &self.is_up()).field("replica", &self.replica).finish()
    }
}

impl Coordination {
    /// A view over `client`; down until the first successful ping.
    pub fn new(client: RedisClient) -> Self {
        Self { client, up: Arc::new(AtomicBool::new(false)), replica: uuid::Uuid::new_v4().to_string() }
    }

    /// Whether the last ping succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `UNAVAILABLE` while Redis is down: for operations that need the queue.
    pub fn require(&self) -> ControllerResult<()> {
        if self.is_up() {
            Ok(())
        } else {
            Err(ControllerError::Unavailable("the job queue is unavailable (Redis is down); retry later".into()))
        }
    }

    /// Takes or renews the lock `key` for `ttl`; false when another replica holds it or Redis is down.
    pub async fn lead(&self, key: &str, ttl: Duration) -> bool {
        if !self.is_up() {
            return false;
        }
        // `PX 0` is an error, and a huge TTL keeps a dead leader's lock: 1 ms to a day.
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).clamp(1, 86_400_000);
        let call = self.client.eval::<i64, _, _, _>(
            LEAD_SCRIPT,
            vec![key.to_owned()],
            vec![self.replica.clone(), ms.to_string()],
        );
        matches!(tokio::time::timeout(Duration::from_secs(2), call).await, Ok(Ok(1)))
    }

    async fn ping(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(1), self.client.ping::<String>(None)).await, Ok(Ok(_)))
    }

    /// The underlying client (health pings).
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Publishes a message; best effort (a lost wake-up is covered by the dispatch tick).
    pub async fn publish(&self, channel: &str, payload: String) {
        if self.is_up() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.client.publish::<i64, _, _>(channel.to_owned(), payload),
            )
            .await;
        }
    }

    /// Publishes a message and returns how many subscribers received it (`None`: Redis is down or did not
    /// answer in time).
    pub async fn publish_counted(&self, channel: &str, payload: String) -> Option<i64> {
        if !self.is_up() {
            return None;
        }
        let call = self.client.publish::<i64, _, _>(channel.to_owned(), payload);
        tokio::time::timeout(Duration::from_secs(1), call).await.ok()?.ok()
    }

    /// Records that `agent`'s session is on this replica, for `ttl` (refreshed by heartbeats).
    pub async fn set_presence(&self, agent: uuid::Uuid, ttl: Duration) {
        if self.is_up() {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let call = self.client.set::<(), _, _>(
                presence_key(agent),
                self.replica.clone(),
                Some(Expiration::PX(ms)),
                None,
                false,
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
        }
    }

    /// Forgets `agent`'s presence if it still points at this replica.
    pub async fn clear_presence(&self, agent: uuid::Uuid) {
        if self.is_up() {
            let script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
            let call = self.client.eval::<i64, _, _, _>(script, vec![presence_key(agent)], vec![self.replica.clone()]);
            let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
        }
    }

    /// The replica holding `agent`'s session, if known.
    pub async fn presence(&self, agent: uuid::Uuid) -> Option<String> {
        if !self.is_up() {
            return None;
        }
        tokio::time::timeout(Duration::from_secs(1), self.client.get::<Option<String>, _>(presence_key(agent)))
            .await
            .ok()?
            .ok()?
    }
}

/// Channel every replica listens on for dispatch wake-ups.
pub const WAKE_CHANNEL: &str = "dataguardian:wake";

/// Channel every replica listens on for revocations: the payload is the agent id, whose session the replica
/// holding it closes at once.
pub const REVOKED_CHANNEL: &str = "dataguardian:revoked";

fn presence_key(agent: uuid::Uuid) -> String {
    format!("dataguardian:agent:{agent}")
}

/// The channel a replica listens on for messages addressed to it.
pub fn replica_channel(replica: &str) -> String {
    format!("dataguardian:replica:{replica}")
}

/// Pings Redis every half second and flips the shared flag on transitions.
pub struct RedisWatchTask {
    coord: Coordination,
    metrics: crate::metrics::Metrics,
}

impl RedisWatchTask {
    /// New task.
    pub fn new(coord: Coordination, metrics: crate::metrics::Metrics) -> Self {
        Self { coord, metrics }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            let now = self.coord.ping().await;
            let before = self.coord.up.swap(now, Ordering::Relaxed);
            self.metrics.redis_up.set(i64::from(now));
            match (before, now) {
                (false, true) => info!("redis is reachable: scheduler and dispatch run"),
                (true, false) => warn!("redis is down: scheduler and dispatch paused, queue operations refused"),
                _ => {}
            }
        }
    }
}
