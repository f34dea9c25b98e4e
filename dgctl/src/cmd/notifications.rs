//! `dgctl notifications`: channels by name, the inbox, delivery records.

use dg_proto::v1::{self as pb, notification_service_client::NotificationServiceClient};

use crate::{
    App,
    error::{CliError, CliResult},
    output, resolve,
    secret::SecretArgs,
    view,
};

/// Notification commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Notification channels.
    #[command(subcommand)]
    Channels(ChannelCmd),
    /// The in-app inbox, newest first.
    Inbox {
        /// Only unread items.
        #[arg(long)]
        unread: bool,
        /// Mark every item read afterwards.
        #[arg(long)]
        mark_read: bool,
    },
    /// Delivery records, newest first.
    Deliveries {
        /// Only this channel's (name or id).
        #[arg(long)]
        channel: Option<String>,
        /// Only this status (pending, delivered, failed).
        #[arg(long, default_value = "")]
        status: String,
    },
}

/// Channel commands.
#[derive(Debug, clap::Subcommand)]
pub enum ChannelCmd {
    /// List channels.
    List,
    /// Show one channel.
    Get {
        /// Name or id.
        channel: String,
    },
    /// Create a webhook channel (signing secret from --secret-env/--secret-file/--secret-stdin).
    CreateWebhook {
        /// Unique name.
        name: String,
        /// http(s) URL.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Event kind to subscribe to (repeatable; default all but execution_completed).
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// Create a Slack-compatible channel (its URL is a secret: --secret-env/--secret-file/--secret-stdin).
    CreateSlack {
        /// Unique name.
        name: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Event kind (repeatable).
        #[arg(long = "event")]
        events: Vec<String>,
    },
    /// Delete a channel and its deliveries.
    Delete {
        /// Name or id.
        channel: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Send a test event now.
    Test {
        /// Name or id.
        channel: String,
    },
}

/// Runs a notification command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = NotificationServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::Channels(ChannelCmd::List) => {
            let all: Vec<view::Channel> = resolve::channels(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Channels(ChannelCmd::Get { channel }) => {
            output::one(app.format, &view::Channel::from(resolve::channel(&s, &channel).await?))
        }
        Cmd::Channels(ChannelCmd::CreateWebhook { name, url, secret, events }) => {
            let secret = secret
                .read()?
                .ok_or_else(|| CliError::Usage("a webhook needs --secret-env/--secret-file/--secret-stdin".into()))?;
            let req = pb::CreateChannelRequest {
                name,
                kind: pb::ChannelKind::Webhook as i32,
                webhook: Some(pb::WebhookConfig { url, secret, has_secret: false }),
                events,
                ..Default::default()
            };
            output::one(app.format, &view::Channel::from(c.create_channel(s.req(req)).await?.into_inner()))
        }
        Cmd::Channels(ChannelCmd::CreateSlack { name, secret, events }) => {
            let url = secret.read()?.ok_or_else(|| {
                CliError::Usage("a Slack channel needs its URL via --secret-env/--secret-file/--secret-stdin".into())
            })?;
            let req = pb::CreateChannelRequest {
                name,
                kind: pb::ChannelKind::Slack as i32,
                slack: Some(pb::SlackConfig { url, ..Default::default() }),
                events,
                ..Default::default()
            };
            output::one(app.format, &view::Channel::from(c.create_channel(s.req(req)).await?.into_inner()))
        }
        Cmd::Channels(ChannelCmd::Delete { channel, yes }) => {
            let ch = resolve::channel(&s, &channel).await?;
            super::confirm(&format!("Delete channel \"{}\"?", ch.name), yes)?;
            c.delete_channel(s.req(pb::DeleteChannelRequest { id: ch.id.clone() })).await?;
            output::done(
                app.format,
                &format!("deleted channel \"{}\"", ch.name),
                &serde_json::json!({"deleted": ch.id}),
            )
        }
        Cmd::Channels(ChannelCmd::Test { channel }) => {
            let ch = resolve::channel(&s, &channel).await?;
            let d = c.test_channel(s.req(pb::TestChannelRequest { id: ch.id })).await?.into_inner();
            output::one(app.format, &view::Delivery::from(d))
        }
        Cmd::Inbox { unread, mark_read } => {
            let req = pb::ListInboxRequest { unread_only: unread, page_size: 500, page_token: String::new() };
            let r = c.list_inbox(s.req(req)).await?.into_inner();
            let all: Vec<view::InboxItem> = r.items.into_iter().map(Into::into).collect();
            output::list(app.format, &all)?;
            if mark_read {
                c.mark_all_inbox_read(s.req(pb::MarkAllInboxReadRequest {})).await?;
            }
            Ok(())
        }
        Cmd::Deliveries { channel, status } => {
            let channel_id = match channel {
                Some(ch) => resolve::channel(&s, &ch).await?.id,
                None => String::new(),
            };
            let req = pb::ListDeliveriesRequest { channel_id, status, page_size: 500, ..Default::default() };
            let r = c.list_deliveries(s.req(req)).await?.into_inner();
            let all: Vec<view::Delivery> = r.deliveries.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
    }
}
