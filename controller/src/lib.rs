//! DataGuardian controller: keeps all state in PostgreSQL, serves the operator API (TLS, session tokens) and
//! the agent API (mTLS), signs agent certificates with its own CA, and dispatches executions to agents.

pub mod access;
pub mod app;
pub mod config;
pub mod coordination;
pub mod crypto;
pub mod db;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod redis;
pub mod service;
pub mod session;
