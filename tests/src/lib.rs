//! End-to-end test harness: a real controller (in-process, on free loopback ports, with its own database in
//! the local PostgreSQL), real agents (in-process, enrolled through the public API with real mTLS), and
//! helpers to make throwaway databases that are dropped when the test ends.
//!
//! The database servers and the logins the tests use come from `DG_TEST_PG_URL` / `DG_TEST_MARIADB_URL` /
//! `DG_TEST_REDIS_URL`, or, when those are not set, from the `test.env` file `tests/ensure-services.sh`
//! writes into the cache directory (so a plain `cargo test` works once that script has run).

pub mod cluster;
pub mod emulators;
pub mod fake_agent;
pub mod fake_db;
pub mod faults;
pub mod oidc;
pub mod pg;

use std::path::PathBuf;

/// A database server and the login the tests use on it.
#[derive(Clone, Debug)]
pub struct DbServer {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password (empty for none).
    pub password: String,
}

impl DbServer {
    fn from_url(url: &str, default_port: u16) -> Self {
        let parsed = url::Url::parse(url).ok();
        let decode = |s: &str| urlencoding::decode(s).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_owned());
        Self {
            host: parsed.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| "127.0.0.1".into()),
            port: parsed.as_ref().and_then(url::Url::port).unwrap_or(default_port),
            user: parsed.as_ref().map(|u| decode(u.username())).unwrap_or_default(),
            password: parsed.as_ref().and_then(|u| u.password().map(decode)).unwrap_or_default(),
        }
    }
}

fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DG_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache"));
    base.join("dataguardian")
}

/// A test setting: the environment variable, else the line `KEY=VALUE` of the cache's `test.env`.
pub fn test_env(key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(key) {
        return Some(v);
    }
    let text = std::fs::read_to_string(cache_dir().join("test.env")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
}

/// The PostgreSQL server tests use, as a URL to its `postgres` database.
pub fn pg_admin_url() -> String {
    test_env("DG_TEST_PG_URL").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The PostgreSQL server tests use.
pub fn pg_server() -> DbServer {
    DbServer::from_url(&pg_admin_url(), 5432)
}

/// The MariaDB server tests use, as a URL without a database.
pub fn mariadb_url() -> String {
    test_env("DG_TEST_MARIADB_URL").unwrap_or_else(|| "mysql://root@127.0.0.1:3306".into())
}

/// The MariaDB server tests use.
pub fn mariadb_server() -> DbServer {
    DbServer::from_url(&mariadb_url(), 3306)
}

/// The Redis server tests use.
pub fn redis_url() -> String {
    test_env("DG_TEST_REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

/// Installs a test log subscriber once (`RUST_LOG` controls it).
pub fn init_logging() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dg_controller=info,dg_agent=info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        dg_common::tls::install_crypto_provider();
    });
}

/// A random lowercase suffix for names.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
