//! Validation of notification requests: channel configs (http(s) URLs without credentials, SMTP security
//! `none` only towards a loopback host, addresses, CA PEM), event kinds, selectors, attempts and timeouts.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use dg_common::error::FieldError;
use dg_proto::v1 as pb;
use secrecy::SecretString;
use uuid::Uuid;

use super::{V, id, name};
use crate::{
    db::DeliveryFilter,
    service::notify::{
        EventKind,
        channels::{ChannelConfig, ChannelPatch, EmailSettings, NewChannel, SmtpSecurity},
    },
};

fn http_url(field: &'static str, s: &str) -> V<url::Url> {
    let u = url::Url::parse(s).map_err(|_| FieldError::new(field, "must be an absolute http(s) URL"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new(field, "must be an absolute http(s) URL"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(FieldError::new(field, "must not carry credentials"));
    }
    if s.len() > 2048 {
        return Err(FieldError::new(field, "must be at most 2048 characters"));
    }
    Ok(u)
}

/// Whether `host` is a loopback name or address.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn secret(field: &'static str, s: &str, min: usize) -> V<Option<SecretString>> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() < min || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(FieldError::new(field, format!("must be {min}-256 printable bytes")));
    }
    Ok(Some(SecretString::from(s.to_owned())))
}

fn address(field: &'static str, s: &str) -> V<String> {
    s.parse::<lettre::message::Mailbox>().map_err(|_| FieldError::new(field, "must be an email address"))?;
    Ok(s.to_owned())
}

fn webhook(w: pb::WebhookConfig) -> V<ChannelConfig> {
    Ok(ChannelConfig::Webhook {
        url: http_url("webhook.url", &w.url)?,
        secret: secret("webhook.secret", &w.secret, 16)?,
    })
}

fn slack(s: pb::SlackConfig) -> V<ChannelConfig> {
    if s.url.is_empty() {
        return Ok(ChannelConfig::Slack { url: None, url_host: String::new() });
    }
    let u = http_url("slack.url", &s.url)?;
    Ok(ChannelConfig::Slack {
        url_host: u.host_str().unwrap_or_default().to_owned(),
        url: Some(SecretString::from(s.url)),
    })
}

fn email(e: pb::EmailConfig) -> V<ChannelConfig> {
    let host = e.host.trim();
    if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(FieldError::new("email.host", "must be a host name or address"));
    }
    let security = match pb::SmtpSecurity::try_from(e.security) {
        Ok(pb::SmtpSecurity::Unspecified | pb::SmtpSecurity::Starttls) => SmtpSecurity::StartTls,
        Ok(pb::SmtpSecurity::Tls) => SmtpSecurity::Tls,
        Ok(pb::SmtpSecurity::None) => SmtpSecurity::None,
        Err(_) => return Err(FieldError::new("email.security", format!("unknown security {}", e.security))),
    };
    if security == SmtpSecurity::None && !is_loopback(host) {
        return Err(FieldError::new("email.security", "NONE (no TLS) is allowed only for a loopback host"));
    }
    let port = match e.port {
        0 => match security {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        },
        p => u16::try_from(p).map_err(|_| FieldError::new("email.port", "must be 1-65535"))?,
    };
    if e.to.is_empty() || e.to.len() > 50 {
        return Err(FieldError::new("email.to", "must list 1-50 recipients"));
    }
    let to = e.to.iter().map(|t| address("email.to", t)).collect::<V<Vec<_>>>()?;
    if !e.ca_pem.is_empty() && pem::parse_many(&e.ca_pem).map_or(true, |v| v.is_empty()) {
        return Err(FieldError::new("email.ca_pem", "must be PEM certificates"));
    }
    if e.username.len() > 256 || e.username.chars().any(char::is_control) {
        return Err(FieldError::new("email.username", "must be at most 256 printable characters"));
    }
    let password = secret("email.password", &e.password, 1)?;
    if password.is_some() && e.username.is_empty() {
        return Err(FieldError::new("email.username", "is required with a password"));
    }
    Ok(ChannelConfig::Email {
        settings: EmailSettings {
            host: host.to_owned(),
            port,
            security: security.as_str().into(),
            username: e.username,
            from: address("email.from", &e.from)?,
            to,
            ca_pem: e.ca_pem,
        },
        password,
    })
}

fn config(
    kind: Option<i32>,
    w: Option<pb::WebhookConfig>,
    s: Option<pb::SlackConfig>,
    e: Option<pb::EmailConfig>,
) -> V<Option<ChannelConfig>> {
    let kind = match kind.map(pb::ChannelKind::try_from) {
        None => None,
        Some(Ok(pb::ChannelKind::Unspecified)) | Some(Err(_)) => {
            return Err(FieldError::new("kind", "must be WEBHOOK, SLACK or EMAIL"));
        }
        Some(Ok(k)) => Some(k),
    };
    let given = [w.is_some(), s.is_some(), e.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        return Err(FieldError::new("kind", "exactly one of webhook, slack or email may be set"));
    }
    match (kind, w, s, e) {
        (Some(pb::ChannelKind::Webhook) | None, Some(w), None, None) => webhook(w).map(Some),
        (Some(pb::ChannelKind::Slack) | None, None, Some(s), None) => slack(s).map(Some),
        (Some(pb::ChannelKind::Email) | None, None, None, Some(e)) => email(e).map(Some),
        (None, None, None, None) => Ok(None),
        (Some(pb::ChannelKind::Webhook), ..) => Err(FieldError::new("webhook", "is required for a WEBHOOK channel")),
        (Some(pb::ChannelKind::Slack), ..) => Err(FieldError::new("slack", "is required for a SLACK channel")),
        (Some(_), ..) => Err(FieldError::new("email", "is required for an EMAIL channel")),
        (None, ..) => Err(FieldError::new("kind", "exactly one of webhook, slack or email may be set")),
    }
}

fn events(v: &[String]) -> V<Vec<EventKind>> {
    if v.is_empty() {
        return Ok(EventKind::default_subscription());
    }
    let mut out = Vec::new();
    for s in v {
        let k: EventKind = s.parse().map_err(|e: String| FieldError::new("events", e))?;
        if k == EventKind::Test {
            return Err(FieldError::new("events", "test events go only to TestChannel"));
        }
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

fn selector(m: &std::collections::HashMap<String, String>) -> V<BTreeMap<String, String>> {
    if m.len() > 16 || m.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 256) {
        return Err(FieldError::new("label_selector", "at most 16 entries, keys 1-63 and values up to 256 characters"));
    }
    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn attempts(n: u32) -> V<u32> {
    match n {
        0 => Ok(5),
        1..=20 => Ok(n),
        _ => Err(FieldError::new("max_attempts", "must be 1-20")),
    }
}

fn timeout(d: Option<prost_types::Duration>) -> V<Duration> {
    match d {
        None => Ok(Duration::from_secs(10)),
        Some(d) if d.nanos == 0 && (1..=60).contains(&d.seconds) => Ok(Duration::from_secs(d.seconds.unsigned_abs())),
        Some(_) => Err(FieldError::new("timeout", "must be whole seconds, 1-60")),
    }
}

impl TryFrom<pb::CreateChannelRequest> for NewChannel {
    type Error = FieldError;
    fn try_from(r: pb::CreateChannelRequest) -> V<Self> {
        let name = name("name", &r.name)?;
        let config = config(Some(r.kind), r.webhook, r.slack, r.email)?
            .ok_or_else(|| FieldError::new("kind", "needs its webhook, slack or email config"))?;
        Ok(NewChannel {
            name,
            config,
            events: events(&r.events)?,
            selector: selector(&r.label_selector)?,
            max_attempts: attempts(r.max_attempts)?,
            timeout: timeout(r.timeout)?,
            enabled: r.enabled.unwrap_or(true),
        })
    }
}

/// Validates a channel change.
pub fn channel_patch(r: pb::UpdateChannelRequest) -> V<(Uuid, ChannelPatch)> {
    let id = id("id", &r.id)?;
    Ok((
        id,
        ChannelPatch {
            name: r.name.as_deref().map(|n| name("name", n)).transpose()?,
            config: config(None, r.webhook, r.slack, r.email)?,
            events: r.set_events.then(|| events(&r.events)).transpose()?,
            selector: r.set_label_selector.then(|| selector(&r.label_selector)).transpose()?,
            max_attempts: r
                .max_attempts
                .map(|n| if n == 0 { Err(FieldError::new("max_attempts", "must be 1-20")) } else { attempts(n) })
                .transpose()?,
            timeout: r.timeout.map(|t| timeout(Some(t))).transpose()?,
            enabled: r.enabled,
        },
    ))
}

/// Validates a delivery listing filter.
pub fn delivery_filter(r: &pb::ListDeliveriesRequest) -> V<DeliveryFilter> {
    let opt = |f: &'static str, s: &str| if s.is_empty() { Ok(None) } else { id(f, s).map(Some) };
    let status = match r.status.as_str() {
        "" => None,
        s @ ("pending" | "delivered" | "failed") => Some(s.to_owned()),
        _ => return Err(FieldError::new("status", "must be pending, delivered or failed")),
    };
    Ok(DeliveryFilter {
        channel_id: opt("channel_id", &r.channel_id)?,
        event_id: opt("event_id", &r.event_id)?,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(kind: pb::ChannelKind) -> pb::CreateChannelRequest {
        pb::CreateChannelRequest { name: "ops".into(), kind: kind as i32, ..Default::default() }
    }

    fn field(r: pb::CreateChannelRequest) -> &'static str {
        NewChannel::try_from(r).map(|_| ()).expect_err("invalid").field
    }

    #[test]
    fn bad_channels_name_their_field() {
        let mut r = create(pb::ChannelKind::Webhook);
        r.webhook =
            Some(pb::WebhookConfig { url: "ftp://x/".into(), secret: "0123456789abcdef".into(), ..Default::default() });
        assert_eq!(field(r.clone()), "webhook.url");
        r.webhook = Some(pb::WebhookConfig {
            url: "https://u:p@x/".into(),
            secret: "0123456789abcdef".into(),
            ..Default::default()
        });
        assert_eq!(field(r.clone()), "webhook.url");
        r.webhook = Some(pb::WebhookConfig { url: "https://x/".into(), secret: "short".into(), ..Default::default() });
        assert_eq!(field(r.clone()), "webhook.secret");
        r.webhook = Some(pb::WebhookConfig {
            url: "https://x/".into(),
            secret: "0123456789abcdef".into(),
            ..Default::default()
        });
        assert!(NewChannel::try_from(r.clone()).is_ok());
        r.events = vec!["rpo_breached".into(), "nope".into()];
        assert_eq!(field(r.clone()), "events");
        r.events = vec![];
        r.max_attempts = 21;
        assert_eq!(field(r), "max_attempts");
        assert_eq!(field(create(pb::ChannelKind::Unspecified)), "kind");
        assert_eq!(field(create(pb::ChannelKind::Slack)), "slack");
    }

    #[test]
    fn smtp_without_tls_only_towards_loopback() {
        let mut r = create(pb::ChannelKind::Email);
        let cfg = |host: &str, sec: pb::SmtpSecurity| pb::EmailConfig {
            host: host.into(),
            security: sec as i32,
            from: "dg@example.com".into(),
            to: vec!["ops@example.com".into()],
            ..Default::default()
        };
        r.email = Some(cfg("smtp.example.com", pb::SmtpSecurity::None));
        assert_eq!(field(r.clone()), "email.security");
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            r.email = Some(cfg(host, pb::SmtpSecurity::None));
            assert!(NewChannel::try_from(r.clone()).is_ok(), "{host}");
        }
        r.email = Some(cfg("smtp.example.com", pb::SmtpSecurity::Unspecified));
        let ok = NewChannel::try_from(r.clone()).expect("starttls");
        assert!(
            matches!(ok.config, ChannelConfig::Email { ref settings, .. } if settings.port == 587 && settings.security == "starttls")
        );
        let mut bad = cfg("smtp.example.com", pb::SmtpSecurity::Tls);
        bad.to = vec!["not an address".into()];
        r.email = Some(bad);
        assert_eq!(field(r), "email.to");
    }

    #[test]
    fn the_default_subscription_skips_completions() {
        let mut r = create(pb::ChannelKind::Webhook);
        r.webhook = Some(pb::WebhookConfig {
            url: "https://x/".into(),
            secret: "0123456789abcdef".into(),
            ..Default::default()
        });
        let c = NewChannel::try_from(r).expect("valid");
        assert!(!c.events.contains(&EventKind::ExecutionCompleted));
        assert!(c.events.contains(&EventKind::ExecutionFailed));
    }
}
