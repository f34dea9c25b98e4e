//! Domain services: the controller's logic between the gRPC edge and persistence. Each takes validated domain
//! input and returns domain records or a [`crate::error::ControllerError`].

pub mod agents;
pub mod auth;
pub mod catalog;
pub mod dispatch;
pub mod executions;
pub mod registry;
