//! TLS helpers shared by both binaries: the process-wide rustls crypto provider (aws-lc-rs, the one
//! object_store's S3 backend forces), certificate fingerprints, PEM parsing, and the agent identity carried in
//! a client certificate's SAN as `urn:dataguardian:agent:<uuid>`.

use rustls_pki_types::{CertificateDer, pem::PemObject};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ids::AgentId;

/// URI SAN prefix naming an agent in its client certificate.
pub const AGENT_URI_PREFIX: &str = "urn:dataguardian:agent:";

/// Why a certificate does not identify an agent.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate, or not parseable.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// Parseable, but no agent identity in it.
    #[error("certificate names no agent")]
    NoAgentIdentity,
    /// PEM input without a certificate.
    #[error("no certificate in PEM input")]
    NoPem,
}

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent; call first thing in every binary and
/// test, before any TLS config is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `sha256:<hex>` of a DER certificate: what an agent pins at enrollment.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Every certificate in a PEM bundle, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::InvalidCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoPem);
    }
    Ok(certs)
}

/// The SAN URI of an agent id.
pub fn agent_uri(id: AgentId) -> String {
    format!("{AGENT_URI_PREFIX}{id}")
}

/// Reads the agent id from a DER client certificate's URI SAN.
pub fn agent_id_from_cert(der: &[u8]) -> Result<AgentId, TlsError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::InvalidCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::InvalidCertificate(e.to_string()))?
        .ok_or(TlsError::NoAgentIdentity)?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(AGENT_URI_PREFIX).and_then(|id| id.parse().ok()),
            _ => None,
        })
        .ok_or(TlsError::NoAgentIdentity)
}

/// `(not_before, not_after)` of a DER certificate as unix timestamps.
pub fn validity_unix(der: &[u8]) -> Result<(i64, i64), TlsError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::InvalidCertificate(e.to_string()))?;
    Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When a certificate valid over `[not_before, not_after]` should be renewed: two thirds into its life.
pub fn renewal_due_unix(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}
