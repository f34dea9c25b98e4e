//! Domain services: the controller's logic between the gRPC edge and persistence. Each takes validated domain
//! input and returns domain records or a [`crate::error::ControllerError`].

pub mod agent_rpc;
pub mod agents;
pub mod auth;
pub mod backups;
pub mod catalog;
pub mod coordination;
pub mod dispatch;
pub mod executions;
pub mod health;
pub mod registry;
pub mod relay;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod storages;
