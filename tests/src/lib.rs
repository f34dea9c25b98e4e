//! End-to-end test harness: a real controller (in-process, on free loopback ports, with its own database in
//! the local PostgreSQL), real agents (in-process, enrolled through the public API with real mTLS), and
//! helpers to make throwaway databases that are dropped when the test ends.

pub mod cluster;
pub mod emulators;
pub mod pg;

/// The PostgreSQL server tests use (`DG_TEST_PG_URL`, default the local trust-auth server).
pub fn pg_admin_url() -> String {
    std::env::var("DG_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
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
