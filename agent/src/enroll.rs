//! `dg-agent enroll`: fetch the controller CA over TLS, accepting it only if its sha256 equals the pinned
//! fingerprint (and the server certificate chains to it), generate a key locally, send a CSR with the join
//! token, and store key, certificate and CA (key and certificate mode 0600).

use std::sync::{Arc, Mutex};

use dg_common::tls;
use dg_proto::v1::{EnrollRequest, agent_enrollment_service_client::AgentEnrollmentServiceClient};
use rcgen::{CertificateParams, KeyPair};
use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::{
    error::ConnectionError,
    state::{AgentState, StateDir},
    verifier::CheckedBy,
};

/// Host and port of an `https://host:port` endpoint.
pub fn host_port(endpoint: &str) -> Result<(String, u16), ConnectionError> {
    let uri: http_uri::Uri =
        endpoint.parse().map_err(|_| ConnectionError::Config(format!("bad endpoint {endpoint}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(ConnectionError::Config(format!("endpoint {endpoint} must start with https://")));
    }
    let host = uri.host().ok_or_else(|| ConnectionError::Config(format!("endpoint {endpoint} has no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

use tonic::codegen::http::uri as http_uri;

/// Fetches the CA certificate (PEM) from `endpoint`, trusting it only if it matches `pin`.
pub async fn fetch_pinned_ca(endpoint: &str, pin: &str) -> Result<String, ConnectionError> {
    let (host, port) = host_port(endpoint)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Accepts a server whose chain contains the pinned CA and verifies to it; remembers the CA.
    let found: Arc<Mutex<Option<CertificateDer<'static>>>> = Arc::default();
    let (pin, slot, webpki_provider) = (pin.trim().to_owned(), found.clone(), provider.clone());
    let check = move |end_entity: &CertificateDer<'_>,
                      intermediates: &[CertificateDer<'_>],
                      server_name: &ServerName<'_>,
                      ocsp_response: &[u8],
                      now: UnixTime| {
        let ca = intermediates
            .iter()
            .find(|c| tls::fingerprint(c).eq_ignore_ascii_case(&pin))
            .ok_or_else(|| rustls::Error::General("no certificate matching the pinned CA fingerprint".into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), webpki_provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(ca.clone().into_owned());
        }
        Ok(verified)
    };
    let mut config =
        CheckedBy::new(provider, Box::new(check)).client_config().map_err(|e| ConnectionError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server_name = ServerName::try_from(host.clone()).map_err(|e| ConnectionError::Tls(e.to_string()))?;
    let tcp =
        tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| ConnectionError::Config(format!("connect to {endpoint}: timed out")))??;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| ConnectionError::Tls(format!("controller at {endpoint} failed CA pinning: {e}")))?;
    let ca = found
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .ok_or_else(|| ConnectionError::Tls("controller did not present its CA".into()))?;
    Ok(der_to_pem(&ca))
}

fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// A new key and a CSR for it (the subject is irrelevant: the controller ignores it).
pub fn new_key_and_csr() -> Result<(KeyPair, String), ConnectionError> {
    let key = KeyPair::generate().map_err(|e| ConnectionError::Tls(e.to_string()))?;
    let csr = CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|c| c.pem())
        .map_err(|e| ConnectionError::Tls(e.to_string()))?;
    Ok((key, csr))
}

/// A TLS channel to `endpoint` trusting only `ca_pem`.
pub async fn channel(
    endpoint: &str,
    ca_pem: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<Channel, ConnectionError> {
    Ok(self::endpoint(endpoint, ca_pem, identity)?.connect().await?)
}

/// Like [`channel`], but connects on first use (the agent's object uploads: most sessions never make one).
pub fn lazy_channel(
    endpoint: &str,
    ca_pem: &str,
    identity: tonic::transport::Identity,
) -> Result<Channel, ConnectionError> {
    Ok(self::endpoint(endpoint, ca_pem, Some(identity))?.connect_lazy())
}

fn endpoint(
    endpoint: &str,
    ca_pem: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<tonic::transport::Endpoint, ConnectionError> {
    let (host, _) = host_port(endpoint)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    Ok(Channel::from_shared(endpoint.to_owned())
        .map_err(|e| ConnectionError::Config(e.to_string()))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(20)))
}

/// Runs enrollment and writes the state directory. Returns the agent id.
pub async fn enroll(controller: &str, token: &str, pin: &str, dir: &StateDir) -> Result<String, ConnectionError> {
    let ca_pem = fetch_pinned_ca(controller, pin).await?;
    let (key, csr_pem) = new_key_and_csr()?;
    let mut client = AgentEnrollmentServiceClient::new(channel(controller, &ca_pem, None).await?);
    let resp = client
        .enroll(EnrollRequest {
            join_token: token.to_owned(),
            csr_pem,
            hostname: hostname(),
            agent_version: crate::VERSION.to_owned(),
        })
        .await?
        .into_inner();
    dir.write("key.pem", key.serialize_pem().as_bytes(), 0o600)?;
    dir.write("cert.pem", resp.certificate_pem.as_bytes(), 0o600)?;
    dir.write("ca.pem", ca_pem.as_bytes(), 0o644)?;
    dir.save(&AgentState {
        agent_id: resp.agent_id.clone(),
        controller: controller.to_owned(),
        agent_endpoint: resp.agent_endpoint,
    })?;
    Ok(resp.agent_id)
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
