//! Connections to the operator API. First login pins the controller CA the way `dg-agent enroll` does: the
//! TLS handshake is accepted only if the presented chain contains a certificate whose sha256 is the given
//! fingerprint and the server certificate verifies to it; that CA is stored in the context, and every
//! later connection trusts only it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tonic::{
    Request,
    codegen::http::uri::Uri,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
};

use crate::{
    config::Context,
    error::{CliError, CliResult},
};

/// `sha256:<hex>` of a DER certificate (the controller prints and returns it in this form).
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Host and port of an `https://host:port` endpoint.
pub fn host_port(endpoint: &str) -> CliResult<(String, u16)> {
    let uri: Uri = endpoint.parse().map_err(|_| CliError::Usage(format!("bad endpoint {endpoint}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::Usage(format!("endpoint {endpoint} must start with https://")));
    }
    let host = uri.host().ok_or_else(|| CliError::Usage(format!("endpoint {endpoint} has no host")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), uri.port_u16().unwrap_or(443)))
}

/// Fetches the controller CA (PEM) over TLS, accepting it only if it matches `pin`.
pub async fn fetch_pinned_ca(endpoint: &str, pin: &str) -> CliResult<String> {
    let (host, port) = host_port(endpoint)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let found: Arc<Mutex<Option<CertificateDer<'static>>>> = Arc::default();
    let verifier = PinnedCa { pin: pin.trim().to_owned(), provider: provider.clone(), found: found.clone() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::local(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server_name = ServerName::try_from(host.clone()).map_err(|e| CliError::Usage(format!("{host}: {e}")))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| CliError::local(format!("connect to {endpoint}: timed out")))?
        .map_err(|e| CliError::local(format!("connect to {endpoint}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.map_err(|e| {
        CliError::Denied(format!("controller at {endpoint} failed CA pinning (fingerprint {pin}): {e}"))
    })?;
    let ca = found
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .ok_or_else(|| CliError::Denied("controller did not present its CA".into()))?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", ca.to_vec())))
}

/// Accepts a chain containing the pinned CA that the server certificate verifies to; remembers the CA.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
    found: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c).eq_ignore_ascii_case(&self.pin))
            .ok_or_else(|| rustls::Error::General("no certificate matching the pinned CA fingerprint".into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Ok(mut slot) = self.found.lock() {
            *slot = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS channel to `endpoint` trusting only `ca_pem`.
pub async fn channel(endpoint: &str, ca_pem: &str) -> CliResult<Channel> {
    let (host, _) = host_port(endpoint)?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    Ok(Channel::from_shared(endpoint.to_owned())
        .map_err(|e| CliError::Usage(format!("bad endpoint {endpoint}: {e}")))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// An authenticated connection: the channel, the bearer token sent with every call, and the approval id
/// (`--approval`) sent as `dg-approval` metadata so a gated critical call can be repeated once approved.
#[derive(Clone, Debug)]
pub struct Session {
    /// The channel (clone it into any generated client).
    pub channel: Channel,
    token: String,
    approval: Option<String>,
}

impl Session {
    /// Connects with a context's stored CA and token.
    pub async fn open(ctx: &Context) -> CliResult<Self> {
        let token = ctx.token.clone().ok_or_else(|| CliError::Denied("logged out: run dgctl login".into()))?;
        Ok(Self { channel: channel(&ctx.endpoint, &ctx.ca_pem).await?, token, approval: None })
    }

    /// A session over an open channel.
    pub fn new(channel: Channel, token: String) -> Self {
        Self { channel, token, approval: None }
    }

    /// Sends `dg-approval: <id>` with every call.
    pub fn with_approval(mut self, approval: Option<String>) -> Self {
        self.approval = approval;
        self
    }

    /// `msg` with `authorization: Bearer <token>`.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(format!("Bearer {}", self.token)) {
            r.metadata_mut().insert("authorization", v);
        }
        if let Some(v) = self.approval.as_deref().and_then(|a| MetadataValue::try_from(a).ok()) {
            r.metadata_mut().insert("dg-approval", v);
        }
        r
    }
}
