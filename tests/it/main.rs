//! End-to-end tests through the public gRPC API against real PostgreSQL, real `pg_dump`/`pg_restore`,
//! real mTLS agents and real `grpcurl`.

mod access;
mod alert_rules;
mod backup_restore;
mod bad_input;
mod bootstrap;
mod catalog_import;
mod cleartext;
mod cloud;
mod data_path;
mod dgctl;
mod drills;
mod emulators;
mod failures;
mod faults;
mod grpcurl;
mod lifecycle;
mod metrics;
mod notifications;
mod oidc;
mod operator_api;
mod protocol;
mod python_client;
mod redis_tls;
mod restore_trust;
mod retarget;
mod retention_gfs;
mod revocation;
mod scopes;
mod scrub;
mod security;
mod sessions;
mod storage_input;
mod transport;
mod verify;
mod workers;
