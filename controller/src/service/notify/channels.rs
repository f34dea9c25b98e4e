//! `NotificationService`: channels (their secrets sealed with the master key, the row id as associated data,
//! never returned), channel tests, the delivery record and the inbox. Called by the gRPC edge with validated
//! input ([`NewChannel`], [`ChannelPatch`]).

use std::{collections::BTreeMap, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use super::{Event, EventKind, Notifier, delivery::Sender};
use crate::{
    crypto::MasterKey,
    db::{ChannelRow, Db, DeliveryFilter, DeliveryRow, InboxRow, Page},
    error::{ControllerError, ControllerResult},
};

/// SMTP transport security.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// STARTTLS, required.
    StartTls,
    /// Implicit TLS.
    Tls,
    /// Plain (loopback hosts only; checked at validation).
    None,
}

impl SmtpSecurity {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::Tls => "tls",
            SmtpSecurity::None => "none",
        }
    }

    /// Parses the stored spelling (unknown: STARTTLS, the safe one).
    pub fn parse(s: &str) -> Self {
        match s {
            "tls" => SmtpSecurity::Tls,
            "none" => SmtpSecurity::None,
            _ => SmtpSecurity::StartTls,
        }
    }
}

/// Non-secret SMTP settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmailSettings {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: String,
    /// AUTH user ("" = no AUTH).
    pub username: String,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Private CA ("" = system roots).
    pub ca_pem: String,
}

/// A validated channel configuration; secrets `None` when not given (an update keeps the stored one).
#[derive(Clone, Debug)]
pub enum ChannelConfig {
    /// Signed JSON webhook.
    Webhook {
        /// http(s) URL.
        url: url::Url,
        /// Signing secret.
        secret: Option<SecretString>,
    },
    /// Slack-compatible incoming webhook; the URL is the secret.
    Slack {
        /// The URL.
        url: Option<SecretString>,
        /// Its host (shown).
        url_host: String,
    },
    /// SMTP.
    Email {
        /// Settings.
        settings: EmailSettings,
        /// AUTH password.
        password: Option<SecretString>,
    },
}

impl ChannelConfig {
    fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook { .. } => "webhook",
            ChannelConfig::Slack { .. } => "slack",
            ChannelConfig::Email { .. } => "email",
        }
    }

    fn stored(&self) -> serde_json::Value {
        match self {
            ChannelConfig::Webhook { url, .. } => json!({"url": url.as_str()}),
            ChannelConfig::Slack { url_host, .. } => json!({"url_host": url_host}),
            ChannelConfig::Email { settings, .. } => serde_json::to_value(settings).unwrap_or_default(),
        }
    }

    fn secret(&self) -> Option<&SecretString> {
        match self {
            ChannelConfig::Webhook { secret, .. } => secret.as_ref(),
            ChannelConfig::Slack { url, .. } => url.as_ref(),
            ChannelConfig::Email { password, .. } => password.as_ref(),
        }
    }
}

/// A validated new channel.
#[derive(Clone, Debug)]
pub struct NewChannel {
    /// Name.
    pub name: String,
    /// Config.
    pub config: ChannelConfig,
    /// Subscribed kinds.
    pub events: Vec<EventKind>,
    /// Label selector.
    pub selector: BTreeMap<String, String>,
    /// Attempts per delivery.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Enabled.
    pub enabled: bool,
}

/// A validated channel change; `None` keeps the current value.
#[derive(Clone, Debug, Default)]
pub struct ChannelPatch {
    /// Name.
    pub name: Option<String>,
    /// Config (a secret left out keeps the stored one when the kind stays).
    pub config: Option<ChannelConfig>,
    /// Kinds.
    pub events: Option<Vec<EventKind>>,
    /// Selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Attempts.
    pub max_attempts: Option<u32>,
    /// Timeout.
    pub timeout: Option<Duration>,
    /// Enabled.
    pub enabled: Option<bool>,
}

/// Operator-facing notifications. Cloneable.
#[derive(Clone, Debug)]
pub struct NotificationService {
    db: Db,
    key: MasterKey,
    notifier: Notifier,
    sender: Sender,
}

impl NotificationService {
    /// New service.
    pub fn new(db: Db, key: MasterKey, notifier: Notifier, sender: Sender) -> Self {
        Self { db, key, notifier, sender }
    }

    fn seal(&self, id: Uuid, secret: Option<&SecretString>) -> ControllerResult<Option<Vec<u8>>> {
        Ok(match secret {
            Some(s) => Some(self.key.encrypt(id.as_bytes(), s.expose_secret().as_bytes())?),
            None => None,
        })
    }

    /// Creates a channel. Webhook and Slack channels need their secret (the signing secret, the URL).
    pub async fn create(&self, n: NewChannel) -> ControllerResult<ChannelRow> {
        let needs_secret = matches!(n.config, ChannelConfig::Webhook { .. } | ChannelConfig::Slack { .. });
        if needs_secret && n.config.secret().is_none() {
            let field = if n.config.kind() == "webhook" { "webhook.secret" } else { "slack.url" };
            return Err(dg_common::error::FieldError::new(field, "is required").into());
        }
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let row = ChannelRow {
            id,
            name: n.name,
            kind: n.config.kind().into(),
            config: n.config.stored(),
            secret_ciphertext: self.seal(id, n.config.secret())?,
            events: events_json(&n.events),
            selector: serde_json::to_value(&n.selector).unwrap_or_default(),
            max_attempts: i32::try_from(n.max_attempts).unwrap_or(5),
            timeout_secs: i32::try_from(n.timeout.as_secs()).unwrap_or(10),
            enabled: n.enabled,
            created_at: now,
            updated_at: now,
        };
        Ok(self.db.insert_channel(&row).await?)
    }

    /// One channel.
    pub async fn get(&self, id: Uuid) -> ControllerResult<ChannelRow> {
        self.db.channel(id).await?.ok_or_else(|| ControllerError::NotFound(format!("notification channel {id}")))
    }

    /// Channels by name.
    pub async fn list(&self, page: Page) -> ControllerResult<Vec<ChannelRow>> {
        Ok(self.db.list_channels(page).await?)
    }

    /// Applies a change.
    pub async fn update(&self, id: Uuid, p: ChannelPatch) -> ControllerResult<ChannelRow> {
        let mut c = self.get(id).await?;
        if let Some(n) = p.name {
            c.name = n;
        }
        if let Some(cfg) = p.config {
            let same_kind = cfg.kind() == c.kind;
            match cfg.secret() {
                Some(s) => c.secret_ciphertext = self.seal(id, Some(s))?,
                None if same_kind || matches!(cfg, ChannelConfig::Email { .. }) => {
                    if !same_kind {
                        c.secret_ciphertext = None;
                    }
                }
                None => {
                    let field = if cfg.kind() == "webhook" { "webhook.secret" } else { "slack.url" };
                    return Err(dg_common::error::FieldError::new(field, "is required when the kind changes").into());
                }
            }
            c.kind = cfg.kind().into();
            c.config = cfg.stored();
        }
        if let Some(e) = p.events {
            c.events = events_json(&e);
        }
        if let Some(s) = p.selector {
            c.selector = serde_json::to_value(&s).unwrap_or_default();
        }
        if let Some(m) = p.max_attempts {
            c.max_attempts = i32::try_from(m).unwrap_or(5);
        }
        if let Some(t) = p.timeout {
            c.timeout_secs = i32::try_from(t.as_secs()).unwrap_or(10);
        }
        if let Some(e) = p.enabled {
            c.enabled = e;
        }
        self.db.update_channel(&c).await?.ok_or_else(|| ControllerError::NotFound(format!("notification channel {id}")))
    }

    /// Deletes a channel with its deliveries.
    pub async fn delete(&self, id: Uuid) -> ControllerResult<()> {
        if self.db.delete_channel(id).await? {
            Ok(())
        } else {
            Err(ControllerError::NotFound(format!("notification channel {id}")))
        }
    }

    /// Sends a `test` event to the channel now (one attempt, whatever the channel's state) and returns the
    /// recorded delivery; a failed test stays `pending` and is retried like any delivery.
    pub async fn test(&self, id: Uuid) -> ControllerResult<DeliveryRow> {
        let channel = self.get(id).await?;
        let event = self
            .notifier
            .try_emit(Event::test(id))
            .await?
            .ok_or_else(|| ControllerError::FailedPrecondition("test event not recorded".into()))?;
        let delivery = self
            .db
            .delivery_of(event, id)
            .await?
            .ok_or_else(|| ControllerError::FailedPrecondition("test delivery not recorded".into()))?;
        if let Some(claimed) = self.db.claim_delivery_now(delivery.id, self.sender.lease_secs(&channel)).await? {
            self.sender.attempt(&channel, &claimed).await?;
        }
        self.db
            .delivery(delivery.id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("delivery {}", delivery.id)))
    }

    /// Deliveries, newest first.
    pub async fn deliveries(&self, f: &DeliveryFilter, page: Page) -> ControllerResult<Vec<DeliveryRow>> {
        Ok(self.db.list_deliveries(f, page).await?)
    }

    /// The inbox page and the unread count.
    pub async fn inbox(&self, unread_only: bool, page: Page) -> ControllerResult<(Vec<InboxRow>, i64)> {
        Ok((self.db.list_inbox(unread_only, page).await?, self.db.inbox_unread().await?))
    }

    /// Marks items (or all, with `None`) read; returns how many changed.
    pub async fn mark_read(&self, ids: Option<&[Uuid]>) -> ControllerResult<u64> {
        Ok(self.db.mark_inbox_read(ids).await?)
    }

    /// Deletes an inbox item.
    pub async fn delete_inbox_item(&self, id: Uuid) -> ControllerResult<()> {
        if self.db.delete_inbox_item(id).await? {
            Ok(())
        } else {
            Err(ControllerError::NotFound(format!("inbox item {id}")))
        }
    }
}

fn events_json(kinds: &[EventKind]) -> serde_json::Value {
    serde_json::Value::Array(kinds.iter().map(|k| serde_json::Value::String(k.as_str().into())).collect())
}
