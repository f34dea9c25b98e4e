//! DataGuardian agent: enrolls with a join token, keeps one mTLS session to the controller, and runs the
//! backups and restores assigned to it. It is the only component that touches databases and moves backup
//! bytes: dump -> zstd -> sha256 -> chunks -> object store, and back.

pub mod context;
pub mod engine;
pub mod enroll;
pub mod error;
pub mod executor;
pub mod keys;
pub mod outbox;
pub mod pipeline;
pub mod report;
pub mod requests;
pub mod session;
pub mod state;
pub mod storage;
pub mod tools;
pub mod verifier;

/// Agent software version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
