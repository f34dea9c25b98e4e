//! One delivery attempt over the wire: the JSON webhook (signed `sha256=<hex HMAC-SHA256(secret,
//! timestamp + "." + body)>`), the Slack-compatible `{"text": …}` webhook and SMTP (lettre). Pure helpers
//! (body, text, signature, whether an HTTP status is worth a retry) are plain functions with unit tests.
//! Errors never contain a secret or a URL's query string.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, CertificateStore, Tls, TlsParameters},
    },
};
use serde_json::json;

use super::channels::{EmailSettings, SmtpSecurity};
use crate::db::{DeliveryRow, EventRow};

/// What one attempt achieved.
#[derive(Debug)]
pub struct SendResult {
    /// HTTP status, when HTTP.
    pub http_status: Option<u16>,
    /// `None`: delivered; else what went wrong.
    pub error: Option<String>,
    /// Whether another attempt can help (a 4xx other than 408/429 will not).
    pub retryable: bool,
}

impl SendResult {
    fn failed(error: String) -> Self {
        Self { http_status: None, error: Some(error), retryable: true }
    }
}

/// The JSON body of a webhook delivery.
pub fn webhook_body(e: &EventRow, d: &DeliveryRow) -> serde_json::Value {
    let id = |v: Option<uuid::Uuid>| v.map(|u| u.to_string());
    json!({
        "id": e.id.to_string(),
        "delivery_id": d.id.to_string(),
        "kind": e.kind,
        "occurred_at": e.created_at.to_rfc3339(),
        "summary": e.summary,
        "subject": {
            "job_id": id(e.job_id),
            "datasource_id": id(e.datasource_id),
            "storage_id": id(e.storage_id),
            "agent_id": id(e.agent_id),
            "execution_id": id(e.execution_id),
        },
        "labels": e.labels,
        "payload": e.payload,
    })
}

/// The one-line text of a Slack message or an email subject.
pub fn text(e: &EventRow) -> String {
    format!("[DataGuardian] {}: {}", e.kind, e.summary)
}

/// `sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm cannot be taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether a receiver's HTTP status is worth another attempt.
pub fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// A URL fit for logs and errors: scheme, host and port only.
pub fn redacted(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// POSTs `body` to `url` with `headers`.
pub async fn post(
    http: &reqwest::Client,
    url: &url::Url,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> SendResult {
    let mut req = http.post(url.clone()).timeout(timeout).header("content-type", "application/json").body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                SendResult { http_status: Some(status), error: None, retryable: false }
            } else {
                SendResult {
                    http_status: Some(status),
                    error: Some(format!("{} answered HTTP {status}", redacted(url))),
                    retryable: retryable_status(status),
                }
            }
        }
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // reqwest's own text may name the full URL; say only what kind of failure it was.
            SendResult::failed(format!("{}: {what}", redacted(url)))
        }
    }
}

/// Sends one email.
pub async fn email(
    s: &EmailSettings,
    password: Option<&str>,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> SendResult {
    match try_email(s, password, subject, body, timeout).await {
        Ok(()) => SendResult { http_status: None, error: None, retryable: false },
        Err(e) => SendResult::failed(e),
    }
}

async fn try_email(
    s: &EmailSettings,
    password: Option<&str>,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let from: Mailbox = s.from.parse().map_err(|e| format!("from: {e}"))?;
    let mut msg = Message::builder().from(from).subject(subject).header(ContentType::TEXT_PLAIN);
    for to in &s.to {
        msg = msg.to(to.parse().map_err(|e| format!("to: {e}"))?);
    }
    let msg = msg.body(body.to_owned()).map_err(|e| format!("message: {e}"))?;
    let security = SmtpSecurity::parse(&s.security);
    let tls = match security {
        SmtpSecurity::None => Tls::None,
        SmtpSecurity::StartTls | SmtpSecurity::Tls => {
            let mut b = TlsParameters::builder(s.host.clone());
            if !s.ca_pem.is_empty() {
                b = b.certificate_store(CertificateStore::None);
                for block in pem::parse_many(&s.ca_pem).map_err(|e| format!("ca_pem: {e}"))? {
                    let cert = Certificate::from_der(block.contents().to_vec()).map_err(|e| format!("ca_pem: {e}"))?;
                    b = b.add_root_certificate(cert);
                }
            }
            let params = b.build().map_err(|e| format!("tls: {e}"))?;
            if security == SmtpSecurity::Tls { Tls::Wrapper(params) } else { Tls::Required(params) }
        }
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(timeout));
    if !s.username.is_empty() {
        t = t.credentials(Credentials::new(s.username.clone(), password.unwrap_or_default().to_owned()));
    }
    let transport = t.build();
    match tokio::time::timeout(timeout.saturating_mul(3), transport.send(msg)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("smtp {}:{}: {e}", s.host, s.port)),
        Err(_) => Err(format!("smtp {}:{}: timed out", s.host, s.port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 key and data, split around the '.' the scheme inserts.
        let sig = signature(b"Jefe", "what do ya want ", b" for nothing?");
        assert_ne!(sig, signature(b"Jefe", "what do ya want", b" for nothing?"));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want . for nothing?");
        assert_eq!(sig, format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
    }

    #[test]
    fn retries_follow_the_status() {
        for s in [500, 502, 503, 408, 429] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn redaction_drops_path_and_query() {
        let u = url::Url::parse("https://hooks.example.com:8443/services/T0/B0/XXXX?token=secret").expect("url");
        assert_eq!(redacted(&u), "https://hooks.example.com:8443");
    }
}
