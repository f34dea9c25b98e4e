//! Controller configuration: a TOML file plus `DG_*` environment overrides (figment). Validated once at
//! start; nothing else reads the environment.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::crypto::MasterKey;

/// Serializes a secret as its text: only figment's defaults pass through serialization (see [`Config::load`]);
/// `Debug` of the configuration shows no secret.
pub(crate) fn expose<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

fn expose_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

/// Everything the controller is configured with. Secrets (database URL, master key, admin password, the
/// Redis URL's password) are held as [`SecretString`]s: `Debug` hides them and they are zeroed on drop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// PostgreSQL URL of the controller's own database.
    #[serde(serialize_with = "expose")]
    pub database_url: SecretString,
    /// Master key as 64 hex characters (prefer `master_key_file`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "expose_opt")]
    pub master_key: Option<SecretString>,
    /// File holding the master key as 64 hex characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Redis URL (queue wake-ups, presence, scheduler leader lock): `redis://host:port` or, for TLS,
    /// `rediss://host:port`; an ACL user authenticates with `rediss://user:password@host:port` (percent-encode
    /// reserved characters of the password). Logged and shown with the password replaced by `***`.
    pub redis_url: RedisUrl,
    /// CA bundle (PEM, one or more certificates) that verifies the Redis server of a `rediss://` URL; none:
    /// the system's trust store (`/etc/ssl/certs` and the usual `SSL_CERT_FILE`/`SSL_CERT_DIR`). The
    /// certificate must name the URL's host (a DNS name, or an IP address SAN for an IP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for Redis mTLS (`tls-auth-clients yes`); needs `redis_client_key_file`
    /// and a `rediss://` URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_client_cert_file: Option<PathBuf>,
    /// Private key (PEM, PKCS#8, SEC1 or PKCS#1) of `redis_client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_client_key_file: Option<PathBuf>,
    /// Operator API and agent enrollment (TLS, no client certificate).
    pub api_listen: SocketAddr,
    /// Agent sessions (mTLS, client certificate from the controller CA required).
    pub agent_listen: SocketAddr,
    /// Address agents are told to open their session on; empty: `https://<first server name>:<agent port>`.
    pub agent_endpoint: String,
    /// Names and addresses in the controller's TLS certificate.
    pub server_names: Vec<String>,
    /// Operator session lifetime.
    pub session_ttl_secs: u64,
    /// How long an approval of a critical call stays valid (requested, then approved and used), in seconds.
    pub approval_ttl_secs: u64,
    /// Labels marking a datasource protected (`key=value`): restoring into one needs an approval unless the
    /// caller is an admin.
    pub protected_labels: Vec<String>,
    /// Agent client certificate lifetime.
    pub agent_cert_ttl_secs: u64,
    /// Interval agents send heartbeats at.
    pub heartbeat_interval_secs: u64,
    /// A running execution is failed when its agent is silent this long.
    pub lease_secs: u64,
    /// Interval of the periodic datasource and storage health checks.
    pub health_interval_secs: u64,
    /// How often the scheduler leader looks for due cron slots.
    pub scheduler_interval_secs: u64,
    /// Read-rate limit (bytes per second) of verifies whose request and job set none; 0: unlimited.
    pub verify_read_rate_bytes_per_second: u64,
    /// Interval of the periodic retention round (it also runs after each successful backup).
    pub retention_interval_secs: u64,
    /// Objects of failed attempts and partial copies are removed this long after their execution ended.
    pub orphan_grace_secs: u64,
    /// How often recovery-point objectives and offline agents are checked (also right after each backup).
    pub rpo_interval_secs: u64,
    /// How often due notification deliveries are looked for.
    pub notify_interval_secs: u64,
    /// First wait before a failed delivery is retried; it doubles per attempt up to `notify_retry_max_secs`.
    pub notify_retry_base_secs: u64,
    /// Longest wait between delivery attempts.
    pub notify_retry_max_secs: u64,
    /// An `agent_offline` event fires when an agent has been offline this long.
    pub agent_offline_secs: u64,
    /// Stored chunk size agents cut backups into.
    pub chunk_size_bytes: u64,
    /// Chunks an agent uploads concurrently.
    pub upload_concurrency: u32,
    /// zstd worker threads on the agent (0: compress on the pipeline thread).
    pub compression_workers: u32,
    /// Prometheus metrics (`GET /metrics`); none disables them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the catalog gauges (per-job last success, queue depth, agents) are read from PostgreSQL.
    pub metrics_refresh_interval_secs: u64,
    /// "text" or "json".
    pub log_format: String,
    /// OTLP gRPC endpoint for traces; none disables export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// A client that has not finished its TLS handshake this long after connecting is dropped (both ports).
    pub tls_handshake_timeout_secs: u64,
    /// TCP keepalive on operator connections (0: off).
    pub api_tcp_keepalive_secs: u64,
    /// HTTP/2 keepalive pings on operator connections (0: off); a ping unanswered as long closes it.
    pub api_http2_keepalive_secs: u64,
    /// Concurrent HTTP/2 streams a client may open on one connection (both ports).
    pub max_concurrent_streams: u32,
    /// Requests served at once per connection (both ports); more wait.
    pub concurrency_per_connection: usize,
    /// Admin user created at start when no admin exists and a password is configured.
    pub admin_username: String,
    /// Where the one-time bootstrap token of `AuthService/Setup` is written (0600) at first start, when no
    /// admin exists and no `admin_password` is set; none: it is printed once in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Password of that bootstrap admin.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "expose_opt")]
    pub admin_password: Option<SecretString>,
    /// Lets a keyless S3, GCS or Azure storage set `ambient_credentials`: the controller and agents then use
    /// their hosts' own cloud credentials (environment, web or workload identity, instance metadata) for it.
    /// Off: such storages are refused, and keyless storages are accessed anonymously.
    pub allow_ambient_credentials: bool,
    /// OpenID Connect sign-in (`[oidc]`); none: passwords only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<crate::service::oidc::OidcConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/dataguardian".into(),
            master_key: None,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            master_key_file: None,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            agent_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            agent_endpoint: String::new(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            session_ttl_secs: 12 * 3600,
            approval_ttl_secs: 24 * 3600,
            protected_labels: vec!["env=production".into(), "protected=true".into()],
            agent_cert_ttl_secs: 24 * 3600,
            heartbeat_interval_secs: 10,
            lease_secs: 60,
            chunk_size_bytes: 4 * 1024 * 1024,
            health_interval_secs: 300,
            scheduler_interval_secs: 5,
            retention_interval_secs: 3600,
            verify_read_rate_bytes_per_second: 0,
            orphan_grace_secs: 3600,
            rpo_interval_secs: 60,
            notify_interval_secs: 2,
            notify_retry_base_secs: 10,
            notify_retry_max_secs: 3600,
            agent_offline_secs: 600,
            upload_concurrency: 2,
            compression_workers: 2,
            log_format: "text".into(),
            tls_handshake_timeout_secs: 10,
            api_tcp_keepalive_secs: 60,
            api_http2_keepalive_secs: 30,
            max_concurrent_streams: 128,
            concurrency_per_connection: 64,
            metrics_listen: None,
            metrics_refresh_interval_secs: 15,
            otlp_endpoint: None,
            admin_username: "admin".into(),
            admin_password: None,
            bootstrap_token_file: None,
            allow_ambient_credentials: false,
            oidc: None,
        }
    }
}

/// Configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parse failure from the file or the environment.
    #[error("configuration: {0}")]
    Load(String),
    /// A value is out of range.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (when given), then `DG_*` environment variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        let cfg: Config = fig.merge(Env::prefixed("DG_")).extract().map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server_names.is_empty() {
            return Err(ConfigError::Invalid("server_names must not be empty".into()));
        }
        if self.agent_cert_ttl_secs < 10 || self.session_ttl_secs < 10 {
            return Err(ConfigError::Invalid("ttl values must be at least 10 seconds".into()));
        }
        // A stolen certificate or token is good until it expires: keep that bounded.
        if self.agent_cert_ttl_secs > 30 * 86_400 {
            return Err(ConfigError::Invalid("agent_cert_ttl_secs must be at most 30 days".into()));
        }
        if !(60..=30 * 86_400).contains(&self.approval_ttl_secs) {
            return Err(ConfigError::Invalid("approval_ttl_secs must be between 60 seconds and 30 days".into()));
        }
        if let Some(l) = self.protected_labels.iter().find(|l| l.split_once('=').is_none_or(|(k, _)| k.is_empty())) {
            return Err(ConfigError::Invalid(format!("protected_labels: {l:?} is not key=value")));
        }
        if self.session_ttl_secs > 7 * 86_400 {
            return Err(ConfigError::Invalid("session_ttl_secs must be at most 7 days".into()));
        }
        if !(1024 * 1024..=256 * 1024 * 1024).contains(&self.chunk_size_bytes) {
            return Err(ConfigError::Invalid("chunk_size_bytes must be between 1 MiB and 256 MiB".into()));
        }
        if !(1..=32).contains(&self.upload_concurrency) || self.compression_workers > 16 {
            return Err(ConfigError::Invalid(
                "upload_concurrency must be 1-32 and compression_workers at most 16".into(),
            ));
        }
        if !(1..=300).contains(&self.tls_handshake_timeout_secs) {
            return Err(ConfigError::Invalid("tls_handshake_timeout_secs must be 1-300".into()));
        }
        if self.max_concurrent_streams == 0 || self.concurrency_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_streams and concurrency_per_connection must be at least 1".into(),
            ));
        }
        self.redis_url.validate()?;
        let tls_files = [&self.redis_ca_file, &self.redis_client_cert_file, &self.redis_client_key_file];
        if tls_files.iter().any(|f| f.is_some()) && !self.redis_url.uses_tls() {
            return Err(ConfigError::Invalid(
                "redis_ca_file and redis_client_cert_file/redis_client_key_file need a rediss:// redis_url".into(),
            ));
        }
        if self.redis_client_cert_file.is_some() != self.redis_client_key_file.is_some() {
            return Err(ConfigError::Invalid("redis_client_cert_file and redis_client_key_file go together".into()));
        }
        if self.log_format != "text" && self.log_format != "json" {
            return Err(ConfigError::Invalid("log_format must be \"text\" or \"json\"".into()));
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        Ok(())
    }

    /// The master key, from `master_key` or `master_key_file`.
    pub fn master_key(&self) -> Result<MasterKey, ConfigError> {
        let hex_key: SecretString = match (&self.master_key, &self.master_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Load(format!("master_key_file {}: {e}", path.display())))?
                .into(),
            (None, None) => {
                return Err(ConfigError::Invalid("master_key or master_key_file is required".into()));
            }
        };
        MasterKey::from_hex(hex_key.expose_secret().trim())
            .map_err(|e| ConfigError::Invalid(format!("master key: {e}")))
    }

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs.max(1))
    }
}

/// What a redacted password reads as.
const REDACTED: &str = "***";

/// URL schemes fred accepts, each with whether it is TLS and its plain twin.
const SCHEMES: &[(&str, bool, &str)] = &[
    ("redis", false, "redis"),
    ("rediss", true, "redis"),
    ("valkey", false, "valkey"),
    ("valkeys", true, "valkey"),
    ("redis-cluster", false, "redis-cluster"),
    ("rediss-cluster", true, "redis-cluster"),
    ("valkey-cluster", false, "valkey-cluster"),
    ("valkeys-cluster", true, "valkey-cluster"),
    ("redis-sentinel", false, "redis-sentinel"),
    ("rediss-sentinel", true, "redis-sentinel"),
    ("valkey-sentinel", false, "valkey-sentinel"),
    ("valkeys-sentinel", true, "valkey-sentinel"),
];

/// A Redis URL that may hold a password: `Display` and `Debug` print it with the password replaced by
/// `***` (the user name stays, it helps find a misconfigured ACL user). [`RedisUrl::expose`] is the only
/// way to the raw text, for the Redis client itself.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(#[serde(serialize_with = "crate::config::expose")] SecretString);

impl RedisUrl {
    /// The URL as configured, password included: only for building the client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the scheme asks for TLS (`rediss://`, `valkeys://`, their cluster and sentinel forms).
    pub fn uses_tls(&self) -> bool {
        url::Url::parse(self.0.expose_secret()).ok().and_then(|u| scheme(u.scheme())).is_some_and(|(tls, _)| tls)
    }

    /// The URL with its password replaced by `***`; an unparseable URL prints as a placeholder, since where
    /// its password sits cannot be told.
    pub fn redacted(&self) -> String {
        match url::Url::parse(self.0.expose_secret()) {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Fails only for URLs that cannot have credentials, which then have none to hide.
                    let _ = u.set_password(Some(REDACTED));
                }
                u.to_string()
            }
            Err(_) => "[unparseable redis url]".to_owned(),
        }
    }

    /// Checks the URL without connecting; the message never quotes the URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = url::Url::parse(self.0.expose_secret()).map_err(|e| ConfigError::Invalid(format!("redis_url: {e}")))?;
        if scheme(u.scheme()).is_none() {
            return Err(ConfigError::Invalid(format!(
                "redis_url: scheme \"{}\" is not redis://, rediss:// or a cluster/sentinel form of them",
                u.scheme()
            )));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid("redis_url: no host".into()));
        }
        Ok(())
    }
}

impl From<String> for RedisUrl {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&str> for RedisUrl {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

pub(crate) fn scheme(s: &str) -> Option<(bool, &'static str)> {
    SCHEMES.iter().find(|(name, _, _)| *name == s).map(|&(_, tls, plain)| (tls, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.example.toml");
        let cfg = Config::load(Some(&path)).expect("example config must stay valid");
        assert_eq!(cfg.api_listen.port(), 7443);
        assert_eq!(cfg.agent_endpoint, "https://controller.example.com:7444");
        assert!(cfg.master_key_file.is_some());
    }

    #[test]
    fn invalid_values_are_refused() {
        let cfg = Config { chunk_size_bytes: 10, ..Config::default() };
        assert!(cfg.validate().is_err());
        let cfg = Config { log_format: "xml".into(), ..Config::default() };
        assert!(cfg.validate().is_err());
        assert!(Config { agent_cert_ttl_secs: 365 * 86_400, ..Config::default() }.validate().is_err());
        assert!(Config { session_ttl_secs: 30 * 86_400, ..Config::default() }.validate().is_err());
        assert!(Config { master_key: Some("zz".into()), ..Config::default() }.master_key().is_err());
        assert!(Config::default().master_key().is_err(), "a master key is required");
        assert!(Config { redis_url: "http://h".into(), ..Config::default() }.validate().is_err());
        let ca = Some(PathBuf::from("/etc/redis/ca.pem"));
        assert!(Config { redis_ca_file: ca.clone(), ..Config::default() }.validate().is_err(), "CA without TLS");
        let tls = Config { redis_url: "rediss://dg:pw@h:6380".into(), redis_ca_file: ca, ..Config::default() };
        assert!(tls.validate().is_ok());
        let half = Config { redis_client_cert_file: Some("/c.pem".into()), ..tls.clone() };
        assert!(half.validate().is_err(), "a client certificate needs its key");
    }

    #[test]
    fn the_redis_password_stays_out_of_debug_output() {
        let cfg = Config { redis_url: "rediss://dg:Hunter2-redis@h:6380".into(), ..Config::default() };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("Hunter2-redis") && shown.contains("rediss://dg:***@h:6380"), "{shown}");
        let serialized = serde_json::to_string(&cfg).unwrap_or_default();
        assert!(serialized.contains("Hunter2-redis"), "serialization keeps the real URL (figment's defaults)");
    }
}
