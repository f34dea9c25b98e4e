//! The controller's certificate authority (rcgen). Created once, on the first start of the first replica, and
//! kept in PostgreSQL with its key encrypted under the master key, so every replica signs with the same CA.
//! Issues the controller's server certificate and short-lived agent client certificates whose only identity
//! is the agent id in a URI SAN; the subject an agent requests in its CSR is ignored.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use dg_common::{ids::AgentId, tls};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, string::Ia5String,
};
use time::OffsetDateTime;

use crate::{
    crypto::MasterKey,
    db::{Db, IssuedCert},
    error::{ControllerError, ControllerResult},
};

/// Associated data binding the encrypted CA key to its row.
const CA_AAD: &[u8] = b"pki_ca:1";

/// The loaded CA.
pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

/// A server identity (certificate chain and key, PEM).
pub struct ServerIdentity {
    /// Leaf then CA.
    pub chain_pem: String,
    /// PKCS#8 key.
    pub key_pem: String,
}

impl Pki {
    /// Loads the CA, creating it when none exists. Two replicas creating at once both end up with the one
    /// that was inserted first.
    pub async fn load_or_create(db: &Db, key: &MasterKey) -> ControllerResult<Self> {
        if db.load_ca().await?.is_none() {
            let (cert_pem, key_pem) = new_ca()?;
            let ct = key.encrypt(CA_AAD, key_pem.as_bytes())?;
            if db.insert_ca(&cert_pem, ct).await? {
                tracing::info!("created the controller certificate authority");
            }
        }
        let stored = db.load_ca().await?.ok_or_else(|| ControllerError::Pki("CA vanished".into()))?;
        let key_pem = String::from_utf8(key.decrypt(CA_AAD, &stored.key_ciphertext)?)
            .map_err(|_| ControllerError::Pki("CA key is not UTF-8".into()))?;
        let key_pair = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&stored.cert_pem, key_pair)?;
        let ca_der =
            tls::certs_from_pem(&stored.cert_pem).map_err(|e| ControllerError::Pki(e.to_string()))?.remove(0).to_vec();
        Ok(Self { ca_pem: stored.cert_pem, ca_der, issuer })
    }

    /// CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `sha256:<hex>` of the CA certificate.
    pub fn fingerprint(&self) -> String {
        tls::fingerprint(&self.ca_der)
    }

    /// A fresh server certificate for `names` (DNS names or IP addresses), valid one year.
    pub fn server_identity(&self, names: &[String]) -> ControllerResult<ServerIdentity> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("DataGuardian controller");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ia5String::try_from(n.as_str()).map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity { chain_pem: format!("{}{}", cert.pem(), self.ca_pem), key_pem: key.serialize_pem() })
    }

    /// Signs an agent's CSR. Only the CSR's public key is used: the subject and SAN come from `agent`.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent: AgentId,
        ttl: std::time::Duration,
    ) -> ControllerResult<(String, IssuedCert)> {
        check_csr_key(csr_pem).map_err(ControllerError::Invalid)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            ControllerError::Invalid(dg_common::error::FieldError::new("csr_pem", format!("invalid CSR: {e}")))
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("dataguardian-agent {agent}"));
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(tls::agent_uri(agent))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        let not_before = now - time::Duration::minutes(5);
        let not_after = now + time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2));
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let issued = IssuedCert {
            serial: hex::encode(serial.to_bytes()),
            sha256: tls::fingerprint(cert.der()),
            not_before: to_chrono(not_before),
            not_after: to_chrono(not_after),
        };
        Ok((cert.pem(), issued))
    }
}

fn new_ca() -> ControllerResult<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("DataGuardian CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "DataGuardian");
    dn.push(DnType::CommonName, cn);
    dn
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default()
}

/// The key of a CSR must be strong enough: RSA of at least 2048 bits, ECDSA on P-256 or a larger curve, or
/// Ed25519.
fn check_csr_key(csr_pem: &str) -> Result<(), dg_common::error::FieldError> {
    use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer, public_key::PublicKey};
    let weak = || {
        dg_common::error::FieldError::new(
            "csr_pem",
            "the key must be RSA of at least 2048 bits, ECDSA on P-256 or larger, or Ed25519",
        )
    };
    let der =
        pem::parse(csr_pem).map_err(|e| dg_common::error::FieldError::new("csr_pem", format!("invalid CSR: {e}")))?;
    let (_, req) = X509CertificationRequest::from_der(der.contents())
        .map_err(|e| dg_common::error::FieldError::new("csr_pem", format!("invalid CSR: {e}")))?;
    let spki = &req.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(k)) if k.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::EC(k)) if k.key_size() >= 256 => Ok(()),
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(()),
        _ => Err(weak()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR for a new key made by `openssl req` with `-newkey <spec>`.
    fn openssl_csr(spec: &str) -> String {
        let out = std::process::Command::new("openssl")
            .args(["req", "-new", "-newkey", spec, "-nodes", "-subj", "/CN=x", "-keyout", "/dev/null"])
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("pem")
    }

    #[test]
    fn weak_csr_keys_are_refused() {
        let p256 = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&KeyPair::generate()?))
            .and_then(|r| r.pem())
            .expect("csr");
        assert!(check_csr_key(&p256).is_ok());
        assert!(check_csr_key(&openssl_csr("rsa:2048")).is_ok());
        assert!(check_csr_key(&openssl_csr("ed25519")).is_ok());
        let weak = check_csr_key(&openssl_csr("rsa:1024")).expect_err("1024-bit RSA");
        assert!(weak.to_string().contains("csr_pem"), "{weak}");
        assert!(check_csr_key("not a csr").is_err());
    }
}
