//! The controller's connection to Redis: the URL (`redis://` plain or `rediss://` TLS, with an optional ACL
//! user and password: `rediss://user:password@host:port`), the CA bundle that verifies a TLS server and an
//! optional client certificate for Redis mTLS. [`RedisConnection`] is built once at start from the
//! configuration and makes both the command client ([`crate::coordination`], health pings) and the relay's
//! subscriber, so the two always authenticate and verify alike.
//!
//! Invariant: the URL's password never appears in text that leaves the process. [`RedisUrl`] prints itself
//! with the password replaced, configuration errors never quote the URL, and fred's errors (handshake,
//! `WRONGPASS`) carry no credentials.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use fred::{
    clients::{Client as RedisClient, SubscriberClient},
    prelude::*,
    types::config::{Config as FredConfig, TlsConnector},
};
use rustls::RootCertStore;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::config::{Config, ConfigError, RedisUrl, scheme};

/// How the controller reaches Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisConnection {
    config: Arc<FredConfig>,
    url: RedisUrl,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not fred's `Config`: its `Debug` prints the password.
        f.debug_struct("RedisConnection").field("url", &self.url).field("tls", &self.uses_tls()).finish()
    }
}

impl RedisConnection {
    /// From `redis_url` and the `redis_*_file` options (read here, once). A `rediss://` URL verifies the server
    /// against `redis_ca_file` when set, else against the system's trust store.
    pub fn from_config(cfg: &Config) -> Result<Self, ConfigError> {
        let url = cfg.redis_url.clone();
        url.validate()?;
        let mut parsed = url::Url::parse(url.expose()).map_err(|e| ConfigError::Invalid(format!("redis_url: {e}")))?;
        let (tls, plain) = scheme(parsed.scheme()).ok_or_else(|| ConfigError::Invalid("redis_url: scheme".into()))?;
        // fred would build its own TLS connector for a TLS scheme (system roots, no client certificate):
        // parse the plain twin and put ours in its place.
        parsed.set_scheme(plain).map_err(|()| ConfigError::Invalid("redis_url: scheme".into()))?;
        let mut config = FredConfig::from_url(parsed.as_str())
            .map_err(|e| ConfigError::Invalid(format!("redis_url: {}", e.details())))?;
        if tls {
            config.tls = Some(TlsConnector::from(tls_config(cfg)?).into());
        }
        Ok(Self { config: Arc::new(config), url })
    }

    /// The URL (prints redacted).
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.config.tls.is_some()
    }

    /// The ACL user the connection authenticates as (`None`: the `default` user, or no authentication).
    pub fn username(&self) -> Option<&str> {
        self.config.username.as_deref()
    }

    /// A command client that connects in the background, reconnects forever and never blocks a caller for
    /// more than its command timeout.
    pub fn client(&self) -> Result<RedisClient, fred::error::Error> {
        let client = fred::types::Builder::from_config((*self.config).clone())
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
            .set_policy(ReconnectPolicy::new_exponential(0, 200, 5_000, 2))
            .build()?;
        client.connect();
        Ok(client)
    }

    /// A subscriber client (not yet connected) that reconnects forever.
    pub fn subscriber(&self) -> Result<SubscriberClient, fred::error::Error> {
        fred::types::Builder::from_config((*self.config).clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
            .set_policy(ReconnectPolicy::new_exponential(0, 200, 5_000, 2))
            .build_subscriber_client()
    }
}

/// rustls settings for a `rediss://` URL: the roots from `redis_ca_file` (PEM, one or more certificates) or
/// the system's trust store, and the client certificate when one is configured.
fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    match &cfg.redis_ca_file {
        Some(path) => {
            for cert in dg_common::tls::certs_from_pem(&read(path, "redis_ca_file")?)
                .map_err(|e| ConfigError::Invalid(format!("redis_ca_file {}: {e}", path.display())))?
            {
                roots.add(cert).map_err(|e| ConfigError::Invalid(format!("redis_ca_file {}: {e}", path.display())))?;
            }
        }
        None => {
            // Unreadable entries of the system store are skipped; an empty store could verify nothing.
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(ConfigError::Invalid(
                    "redis_url is rediss:// but the system trust store has no certificate: set redis_ca_file".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&cfg.redis_client_cert_file, &cfg.redis_client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = dg_common::tls::certs_from_pem(&read(cert, "redis_client_cert_file")?)
                .map_err(|e| ConfigError::Invalid(format!("redis_client_cert_file {}: {e}", cert.display())))?;
            let key_der = PrivateKeyDer::from_pem_slice(read(key, "redis_client_key_file")?.as_bytes())
                .map_err(|e| ConfigError::Invalid(format!("redis_client_key_file {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConfigError::Invalid(format!("redis client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ConfigError::Invalid("redis_client_cert_file and redis_client_key_file go together".into())),
    }
}

fn read(path: &Path, option: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Load(format!("{option} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_redacted_and_the_user_kept() {
        let cases = [
            ("rediss://dg:s3cret-pw@redis.example.com:6380/2", "rediss://dg:***@redis.example.com:6380/2"),
            ("redis://:s3cret-pw@127.0.0.1:6379", "redis://:***@127.0.0.1:6379"),
            ("redis://dg:p%40ss%3Aw0rd@h:1", "redis://dg:***@h:1"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://dg@127.0.0.1:6379", "redis://dg@127.0.0.1:6379"),
            ("not a url s3cret-pw", "[unparseable redis url]"),
        ];
        for (raw, shown) in cases {
            let url = RedisUrl::from(raw);
            assert_eq!(url.to_string(), shown, "{raw}");
            assert!(!format!("{url:?}").contains("s3cret"), "{raw}");
            assert!(!format!("{url:?}").contains("p%40ss"), "{raw}");
        }
    }

    #[test]
    fn urls_are_checked_without_quoting_them() {
        for bad in ["http://u:s3cret-pw@h:1", "s3cret-pw", "rediss://u:s3cret-pw@:1"] {
            let e = RedisUrl::from(bad).validate().expect_err(bad).to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
        for good in ["redis://h", "rediss://u:p@h:6380", "redis-cluster://h:1?node=h:2", "valkeys://h"] {
            RedisUrl::from(good).validate().expect(good);
        }
        assert!(RedisUrl::from("rediss://h").uses_tls());
        assert!(RedisUrl::from("rediss-cluster://h").uses_tls());
        assert!(!RedisUrl::from("redis://h").uses_tls());
    }

    #[test]
    fn acl_credentials_come_from_the_url() {
        let cfg = Config { redis_url: "redis://dg:p%40ss@127.0.0.1:6390".into(), ..Config::default() };
        let conn = RedisConnection::from_config(&cfg).expect("plain url");
        assert_eq!(conn.username(), Some("dg"));
        assert_eq!(conn.config.password.as_deref(), Some("p@ss"));
        assert!(!conn.uses_tls());
        assert!(!format!("{conn:?}").contains("p@ss") && !format!("{conn:?}").contains("p%40ss"));
    }

    #[test]
    fn a_tls_url_uses_the_configured_ca_and_client_certificate() {
        let dir = std::env::temp_dir().join(format!("dg-redis-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["redis.test".into()]).expect("params").self_signed(&key).expect("cert");
        let (ca, crt, pk) = (dir.join("ca.pem"), dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&ca, cert.pem()).expect("write");
        std::fs::write(&crt, cert.pem()).expect("write");
        std::fs::write(&pk, key.serialize_pem()).expect("write");
        let base = Config {
            redis_url: "rediss://dg:pw@127.0.0.1:6390".into(),
            redis_ca_file: Some(ca.clone()),
            ..Config::default()
        };
        let conn = RedisConnection::from_config(&base).expect("tls with a CA file");
        assert!(conn.uses_tls());
        assert_eq!(conn.username(), Some("dg"));
        let mtls = Config { redis_client_cert_file: Some(crt), redis_client_key_file: Some(pk), ..base.clone() };
        assert!(RedisConnection::from_config(&mtls).expect("mtls").uses_tls());
        let missing = Config { redis_ca_file: Some(dir.join("absent.pem")), ..base.clone() };
        assert!(matches!(RedisConnection::from_config(&missing), Err(ConfigError::Load(_))));
        let not_pem = Config { redis_ca_file: Some(dir.join("client.key")), ..base };
        assert!(RedisConnection::from_config(&not_pem).is_err(), "a key is no CA bundle");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
