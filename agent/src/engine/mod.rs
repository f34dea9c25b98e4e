//! Database engines: connection test, dump and restore commands. Every tool runs from argv (never a shell);
//! passwords go through a 0600 passfile, never the command line.

pub mod postgres;

use dg_proto::v1::{DatabaseTarget, Engine};

use crate::error::{PipelineError, PipelineResult};

/// The engine of a target.
pub fn engine_of(t: &DatabaseTarget) -> PipelineResult<Engine> {
    Engine::try_from(t.engine).map_err(|_| PipelineError::Invalid(format!("unknown engine {}", t.engine)))
}
