//! What the DataGuardian controller and agent share: typed ids, the error-code mapping to gRPC, TLS helpers
//! and the agent identity carried in certificates, telemetry set-up, the backup manifest format and object
//! key layout, the agent protocol model, reconnect backoff and secret redaction. No database and no Redis here.

pub mod backoff;
pub mod chunk;
pub mod error;
pub mod ids;
pub mod manifest;
pub mod protocol;
pub mod redact;
pub mod store;
pub mod telemetry;
pub mod tls;
