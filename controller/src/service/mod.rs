//! Domain services: the controller's logic between the gRPC edge and persistence. Each takes validated domain
//! input and returns domain records or a [`crate::error::ControllerError`].

pub mod access;
pub mod agents;
pub mod attempts;
pub mod auth;
pub mod backups;
pub mod catalog;
pub mod commit;
pub mod dispatch;
pub mod drill_judge;
pub mod drills;
pub mod executions;
pub mod gauges;
pub mod health;
pub mod heartbeats;
pub mod import;
pub mod import_check;
pub mod login_limit;
pub mod notify;
pub mod oidc;
pub mod relay;
pub mod retention;
pub mod retention_policy;
pub mod schedule;
pub mod scheduler;
pub mod scrub;
pub mod storages;
pub mod verify;
pub mod waker;
