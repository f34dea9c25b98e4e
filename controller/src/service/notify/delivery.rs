//! Sending deliveries. [`Sender`] makes one attempt of a claimed delivery and records it (status, attempts,
//! last error, last HTTP status, the next try with exponential backoff, `failed` after the channel's
//! `max_attempts`). [`NotificationTask`] runs on every replica: it claims due deliveries with
//! `FOR UPDATE SKIP LOCKED` and a lease, so two replicas never send one delivery at once.

use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{channels::EmailSettings, retry_delay, send};
use crate::{
    crypto::MasterKey,
    db::{AttemptOutcome, ChannelRow, Db, DeliveryRow},
    error::{ControllerError, ControllerResult},
};

/// Deliveries claimed per round.
const BATCH: i64 = 16;

/// Makes and records delivery attempts. Cloneable.
#[derive(Clone, Debug)]
pub struct Sender {
    db: Db,
    key: MasterKey,
    http: reqwest::Client,
    base_delay: Duration,
    max_delay: Duration,
    metrics: crate::metrics::Metrics,
}

impl Sender {
    /// New sender; retries wait `base_delay`, doubling up to `max_delay`.
    pub fn new(
        db: Db,
        key: MasterKey,
        base_delay: Duration,
        max_delay: Duration,
        metrics: crate::metrics::Metrics,
    ) -> ControllerResult<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("DataGuardian-Notifier/1")
            .build()
            .map_err(|e| ControllerError::FailedPrecondition(format!("http client: {e}")))?;
        Ok(Self { db, key, http, base_delay, max_delay, metrics })
    }

    /// How long a claim keeps other replicas away: longer than any attempt can take.
    pub fn lease_secs(&self, c: &ChannelRow) -> i64 {
        i64::from(c.timeout_secs.max(1)) * 4 + 30
    }

    fn secret(&self, c: &ChannelRow) -> ControllerResult<Option<SecretString>> {
        match &c.secret_ciphertext {
            None => Ok(None),
            Some(ct) => {
                let plain = self.key.decrypt(c.id.as_bytes(), ct)?;
                Ok(Some(SecretString::from(String::from_utf8_lossy(&plain).into_owned())))
            }
        }
    }

    /// One attempt of the claimed delivery `d` to `c`, recorded. Returns whether it was delivered.
    pub async fn attempt(&self, c: &ChannelRow, d: &DeliveryRow) -> ControllerResult<bool> {
        let event = self
            .db
            .event(d.event_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("notification event {}", d.event_id)))?;
        let timeout = Duration::from_secs(u64::try_from(c.timeout_secs.max(1)).unwrap_or(10));
        let r = match self.secret(c) {
            Err(e) => {
                send::SendResult { http_status: None, error: Some(format!("channel secret: {e}")), retryable: false }
            }
            Ok(secret) => self.send(c, &event, d, secret.as_ref(), timeout).await,
        };
        let http_status = r.http_status.map(i32::from);
        let delivered = r.error.is_none();
        let outcome = match r.error {
            None => AttemptOutcome::Delivered { http_status },
            Some(error) => {
                let next = u32::try_from(d.attempts).unwrap_or(u32::MAX).saturating_add(1);
                let more = r.retryable && d.attempts < c.max_attempts;
                let retry_at = more.then(|| {
                    Utc::now()
                        + chrono::Duration::from_std(retry_delay(next, self.base_delay, self.max_delay))
                            .unwrap_or_default()
                });
                tracing::warn!(delivery = %d.id, channel = %c.id, attempt = d.attempts, %error, retry = more, "notification delivery failed");
                AttemptOutcome::Failed { http_status, error, retry_at }
            }
        };
        let gave_up = matches!(outcome, AttemptOutcome::Failed { retry_at: None, .. });
        if !self.db.record_attempt(d.id, d.attempts, &outcome).await? {
            tracing::warn!(delivery = %d.id, attempt = d.attempts, "delivery claim lost before its outcome was recorded");
        } else if gave_up {
            self.metrics.notification_delivery_failures.with_label_values(&[c.kind.as_str()]).inc();
        }
        Ok(delivered)
    }

    async fn send(
        &self,
        c: &ChannelRow,
        e: &crate::db::EventRow,
        d: &DeliveryRow,
        secret: Option<&SecretString>,
        timeout: Duration,
    ) -> send::SendResult {
        let bad = |why: &str| send::SendResult { http_status: None, error: Some(why.to_owned()), retryable: false };
        match c.kind.as_str() {
            "webhook" => {
                let Some(url) = c.config.get("url").and_then(|v| v.as_str()).and_then(|u| url::Url::parse(u).ok())
                else {
                    return bad("webhook url missing");
                };
                let Some(secret) = secret else { return bad("webhook secret missing") };
                let body = send::webhook_body(e, d).to_string().into_bytes();
                let ts = Utc::now().timestamp().to_string();
                let sig = send::signature(secret.expose_secret().as_bytes(), &ts, &body);
                let headers = [
                    ("x-dataguardian-event", e.kind.clone()),
                    ("x-dataguardian-delivery", d.id.to_string()),
                    ("x-dataguardian-timestamp", ts),
                    ("x-dataguardian-signature", sig),
                ];
                send::post(&self.http, &url, body, &headers, timeout).await
            }
            "slack" => {
                let Some(url) = secret.and_then(|s| url::Url::parse(s.expose_secret()).ok()) else {
                    return bad("slack url missing");
                };
                let body = serde_json::json!({ "text": send::text(e) }).to_string().into_bytes();
                send::post(&self.http, &url, body, &[], timeout).await
            }
            "email" => {
                let Ok(settings) = serde_json::from_value::<EmailSettings>(c.config.clone()) else {
                    return bad("email settings unreadable");
                };
                let body = format!(
                    "{}\n\nkind: {}\nevent: {}\ndelivery: {}\noccurred at: {}\n\n{}\n",
                    e.summary,
                    e.kind,
                    e.id,
                    d.id,
                    e.created_at.to_rfc3339(),
                    serde_json::to_string_pretty(&send::webhook_body(e, d)).unwrap_or_default()
                );
                send::email(&settings, secret.map(|s| s.expose_secret()), &send::text(e), &body, timeout).await
            }
            other => bad(&format!("unknown channel kind {other}")),
        }
    }
}

/// Background delivery on every replica.
pub struct NotificationTask {
    db: Db,
    sender: Sender,
    interval: Duration,
}

impl NotificationTask {
    /// New task polling every `interval`.
    pub fn new(db: Db, sender: Sender, interval: Duration) -> Self {
        Self { db, sender, interval }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.round().await {
                        tracing::warn!(error = %e, "notification delivery round failed");
                    }
                }
            }
        }
    }

    /// Claims and sends one batch; claims go per channel so each gets a lease fitting its timeout.
    async fn round(&self) -> ControllerResult<()> {
        // The lease is the longest any channel needs (timeout ≤ 60 s).
        let claimed = self.db.claim_deliveries(BATCH, 4 * 60 + 30).await?;
        let sends = claimed.into_iter().map(|d| async move {
            match self.db.channel(d.channel_id).await {
                Ok(Some(c)) => {
                    if let Err(e) = self.sender.attempt(&c, &d).await {
                        tracing::warn!(delivery = %d.id, error = %e, "notification delivery not recorded");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(delivery = %d.id, error = %e, "notification channel unreadable"),
            }
        });
        futures::future::join_all(sends).await;
        Ok(())
    }
}
