//! Opening the object stores a task or request names (the protocol model's [`StorageTarget`], validated
//! where the session received it), through the shared builder in `dg_common::store`. Local storages are
//! confined to the agent's configured roots (see `AgentContext::confine`).

use std::sync::Arc;

use dg_common::{ids::StorageId, protocol::StorageTarget, store::StoreConfig};
use object_store::ObjectStore;

use crate::{
    context::AgentContext,
    error::{PipelineError, PipelineResult},
};

/// An opened storage.
#[derive(Clone, Debug)]
pub struct OpenStorage {
    /// Storage id.
    pub id: StorageId,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
}

/// Opens a storage target.
pub fn open(t: &StorageTarget, ctx: &AgentContext) -> PipelineResult<OpenStorage> {
    let err = |message: String| PipelineError::Storage { storage: t.id.to_string(), message };
    if let StoreConfig::Local { path } = &t.config {
        ctx.confine(std::path::Path::new(path)).map_err(err)?;
    }
    let store = dg_common::store::open(&t.config).map_err(|e| err(e.0))?;
    Ok(OpenStorage { id: t.id, store })
}
