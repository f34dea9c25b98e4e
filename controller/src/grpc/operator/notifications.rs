//! NotificationService: channels, tests, deliveries and the inbox. Channel responses carry `has_secret` /
//! `has_url` / `has_password` and never a secret, a Slack URL or a webhook URL's query string.

use dg_proto::v1::{self as pb, notification_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    db::{ChannelRow, DeliveryRow, InboxRow},
    grpc::{actor, convert::ts, validate},
    service::notify::channels::{EmailSettings, NewChannel},
};

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("NotificationService", "CreateChannel", Permission::NotificationWrite),
    ("NotificationService", "GetChannel", Permission::NotificationRead),
    ("NotificationService", "ListChannels", Permission::NotificationRead),
    ("NotificationService", "UpdateChannel", Permission::NotificationWrite),
    ("NotificationService", "DeleteChannel", Permission::NotificationWrite),
    ("NotificationService", "TestChannel", Permission::NotificationWrite),
    ("NotificationService", "ListDeliveries", Permission::NotificationRead),
    ("NotificationService", "ListInbox", Permission::NotificationInbox),
    ("NotificationService", "MarkInboxRead", Permission::NotificationInbox),
    ("NotificationService", "MarkAllInboxRead", Permission::NotificationInbox),
    ("NotificationService", "DeleteInboxItem", Permission::NotificationInbox),
];

#[tonic::async_trait]
impl notification_service_server::NotificationService for OperatorSvc {
    async fn create_channel(
        &self,
        req: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::NotificationChannel>, Status> {
        let who = actor(&req);
        let n = NewChannel::try_from(req.into_inner())?;
        let res = self.ctx.notifications.create(n).await;
        let c = self
            .audited(&who, "notification.create_channel", "notification_channel", |c| c.id.to_string(), res)
            .await?;
        Ok(Response::new(channel(&c)))
    }

    async fn get_channel(
        &self,
        req: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::NotificationChannel>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(channel(&self.ctx.notifications.get(id).await?)))
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let cs = self.ctx.notifications.list(page).await?;
        Ok(Response::new(pb::ListChannelsResponse {
            next_page_token: page.next_token(cs.len()),
            channels: cs.iter().map(channel).collect(),
        }))
    }

    async fn update_channel(
        &self,
        req: Request<pb::UpdateChannelRequest>,
    ) -> Result<Response<pb::NotificationChannel>, Status> {
        let who = actor(&req);
        let (id, p) = validate::channel_patch(req.into_inner())?;
        let res = self.ctx.notifications.update(id, p).await;
        let c = self.audited_on(&who, "notification.update_channel", "notification_channel", id, res).await?;
        Ok(Response::new(channel(&c)))
    }

    async fn delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::DeleteChannelResponse>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.notifications.delete(id).await;
        self.audited_on(&who, "notification.delete_channel", "notification_channel", id, res).await?;
        Ok(Response::new(pb::DeleteChannelResponse {}))
    }

    async fn test_channel(&self, req: Request<pb::TestChannelRequest>) -> Result<Response<pb::Delivery>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.notifications.test(id).await;
        let d = self.audited_on(&who, "notification.test_channel", "notification_channel", id, res).await?;
        Ok(Response::new(delivery(&d)))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let r = req.into_inner();
        let f = validate::delivery_filter(&r)?;
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let ds = self.ctx.notifications.deliveries(&f, page).await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            next_page_token: page.next_token(ds.len()),
            deliveries: ds.iter().map(delivery).collect(),
        }))
    }

    async fn list_inbox(&self, req: Request<pb::ListInboxRequest>) -> Result<Response<pb::ListInboxResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let (items, unread) = self.ctx.notifications.inbox(r.unread_only, page).await?;
        Ok(Response::new(pb::ListInboxResponse {
            next_page_token: page.next_token(items.len()),
            items: items.iter().map(inbox_item).collect(),
            unread_count: u32::try_from(unread).unwrap_or(u32::MAX),
        }))
    }

    async fn mark_inbox_read(
        &self,
        req: Request<pb::MarkInboxReadRequest>,
    ) -> Result<Response<pb::MarkInboxReadResponse>, Status> {
        let r = req.into_inner();
        if r.ids.is_empty() || r.ids.len() > 500 {
            return Err(dg_common::error::FieldError::new("ids", "must list 1-500 ids").into());
        }
        let ids = r.ids.iter().map(|i| validate::id("ids", i)).collect::<Result<Vec<_>, _>>()?;
        let n = self.ctx.notifications.mark_read(Some(&ids)).await?;
        Ok(Response::new(pb::MarkInboxReadResponse { marked: u32::try_from(n).unwrap_or(u32::MAX) }))
    }

    async fn mark_all_inbox_read(
        &self,
        _req: Request<pb::MarkAllInboxReadRequest>,
    ) -> Result<Response<pb::MarkInboxReadResponse>, Status> {
        let n = self.ctx.notifications.mark_read(None).await?;
        Ok(Response::new(pb::MarkInboxReadResponse { marked: u32::try_from(n).unwrap_or(u32::MAX) }))
    }

    async fn delete_inbox_item(
        &self,
        req: Request<pb::DeleteInboxItemRequest>,
    ) -> Result<Response<pb::DeleteInboxItemResponse>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.notifications.delete_inbox_item(id).await;
        self.audited_on(&who, "notification.delete_inbox_item", "notification_event", id, res).await?;
        Ok(Response::new(pb::DeleteInboxItemResponse {}))
    }
}

/// A channel as operators see it: no secret, no Slack URL, no query string of a webhook URL.
fn channel(c: &ChannelRow) -> pb::NotificationChannel {
    let has_secret = c.secret_ciphertext.is_some();
    let mut out = pb::NotificationChannel {
        id: c.id.to_string(),
        name: c.name.clone(),
        events: c
            .events
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        label_selector: serde_json::from_value(c.selector.clone()).unwrap_or_default(),
        max_attempts: u32::try_from(c.max_attempts).unwrap_or_default(),
        timeout: Some(prost_types::Duration { seconds: i64::from(c.timeout_secs), nanos: 0 }),
        enabled: c.enabled,
        created_at: Some(ts(c.created_at)),
        updated_at: Some(ts(c.updated_at)),
        ..Default::default()
    };
    let s = |k: &str| c.config.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    match c.kind.as_str() {
        "webhook" => {
            out.kind = pb::ChannelKind::Webhook as i32;
            let url = match url::Url::parse(&s("url")) {
                Ok(mut u) => {
                    u.set_query(None);
                    u.set_fragment(None);
                    u.to_string()
                }
                Err(_) => String::new(),
            };
            out.webhook = Some(pb::WebhookConfig { url, secret: String::new(), has_secret });
        }
        "slack" => {
            out.kind = pb::ChannelKind::Slack as i32;
            out.slack = Some(pb::SlackConfig { url: String::new(), url_host: s("url_host"), has_url: has_secret });
        }
        _ => {
            out.kind = pb::ChannelKind::Email as i32;
            if let Ok(e) = serde_json::from_value::<EmailSettings>(c.config.clone()) {
                let security = match e.security.as_str() {
                    "tls" => pb::SmtpSecurity::Tls,
                    "none" => pb::SmtpSecurity::None,
                    _ => pb::SmtpSecurity::Starttls,
                };
                out.email = Some(pb::EmailConfig {
                    host: e.host,
                    port: u32::from(e.port),
                    security: security as i32,
                    username: e.username,
                    password: String::new(),
                    has_password: has_secret,
                    from: e.from,
                    to: e.to,
                    ca_pem: e.ca_pem,
                });
            }
        }
    }
    out
}

fn delivery(d: &DeliveryRow) -> pb::Delivery {
    pb::Delivery {
        id: d.id.to_string(),
        channel_id: d.channel_id.to_string(),
        event_id: d.event_id.to_string(),
        event_kind: d.event_kind.clone(),
        status: d.status.clone(),
        attempts: u32::try_from(d.attempts).unwrap_or_default(),
        last_error: d.last_error.clone(),
        last_status: d.last_status.and_then(|s| u32::try_from(s).ok()).unwrap_or_default(),
        next_attempt_at: (d.status == "pending").then(|| ts(d.next_attempt_at)),
        delivered_at: d.delivered_at.map(ts),
        created_at: Some(ts(d.created_at)),
    }
}

fn inbox_item(i: &InboxRow) -> pb::InboxItem {
    let id = |v: Option<uuid::Uuid>| v.map(|u| u.to_string()).unwrap_or_default();
    pb::InboxItem {
        id: i.id.to_string(),
        kind: i.kind.clone(),
        summary: i.summary.clone(),
        job_id: id(i.job_id),
        datasource_id: id(i.datasource_id),
        storage_id: id(i.storage_id),
        agent_id: id(i.agent_id),
        execution_id: id(i.execution_id),
        payload_json: i.payload.to_string(),
        read: i.read_at.is_some(),
        created_at: Some(ts(i.created_at)),
    }
}
