//! The receiving end of messages between controller replicas over Redis pub/sub: dispatch wake-ups (work
//! queued on one replica for an agent connected to another is assigned at once, not at the next dispatch
//! tick) and the cancels and aborts [`Sessions::deliver`] relays to the replica holding the agent's session
//! (their format is `session::deliver::ReplicaMessage`), and revocations broadcast to every replica (the one
//! holding the revoked agent's session closes it). Best effort: PostgreSQL stays the source of truth,
//! and a lost message only costs latency (wake-ups) or leaves the attempt to its lease and reports (cancels,
//! aborts).

use std::time::Duration;

use fred::{clients::SubscriberClient, prelude::*};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::waker::DispatchWaker;
use crate::{
    coordination::{REVOKED_CHANNEL, WAKE_CHANNEL, replica_channel},
    redis::RedisConnection,
    service::agents::revoked_status,
    session::deliver::{ReplicaMessage, Sessions},
};

/// Listens on the wake channel and on this replica's channel.
pub struct RelayTask {
    redis: RedisConnection,
    replica: String,
    sessions: Sessions,
    waker: DispatchWaker,
}

impl RelayTask {
    /// New task for replica `replica`.
    pub fn new(redis: RedisConnection, replica: String, sessions: Sessions, waker: DispatchWaker) -> Self {
        Self { redis, replica, sessions, waker }
    }

    async fn subscriber(&self) -> Result<(SubscriberClient, tokio::task::JoinHandle<()>), fred::error::Error> {
        let sub = self.redis.subscriber()?;
        sub.connect();
        tokio::time::timeout(Duration::from_secs(3), sub.wait_for_connect())
            .await
            .map_err(|_| fred::error::Error::new(fred::error::ErrorKind::Timeout, "connect"))??;
        sub.subscribe(vec![WAKE_CHANNEL.to_owned(), REVOKED_CHANNEL.to_owned(), replica_channel(&self.replica)])
            .await?;
        // Re-subscribes after every reconnect.
        let resubscribe = sub.manage_subscriptions();
        Ok((sub, resubscribe))
    }

    /// Runs until cancelled; waits for Redis when it is down at start.
    pub async fn run(self, cancel: CancellationToken) {
        let (sub, resubscribe) = loop {
            match self.subscriber().await {
                Ok(s) => break s,
                Err(e) => debug!(error = %e, "relay waiting for redis"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
        };
        let mut rx = sub.message_rx();
        loop {
            let msg = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                m = rx.recv() => m,
            };
            let Ok(msg) = msg else { continue };
            if &*msg.channel == WAKE_CHANNEL {
                self.waker.wake();
                continue;
            }
            let Some(text) = msg.value.as_string() else { continue };
            if &*msg.channel == REVOKED_CHANNEL {
                match text.parse::<uuid::Uuid>() {
                    Ok(agent) if self.sessions.registry().disconnect(agent, revoked_status()) => {
                        info!(%agent, "revoked agent's session closed");
                    }
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "unreadable revocation message"),
                }
                continue;
            }
            match serde_json::from_str::<ReplicaMessage>(&text) {
                Ok(m) => {
                    let (agent, command) = m.into_command();
                    let what = command.kind();
                    if self.sessions.deliver_here(agent, command).await {
                        info!(%agent, command = %what, "relayed command delivered to the agent");
                    } else {
                        debug!(%agent, "relayed command for an agent no longer connected here");
                    }
                }
                Err(e) => debug!(error = %e, "unreadable relay message"),
            }
        }
        resubscribe.abort();
        let _ = sub.quit().await;
    }
}
