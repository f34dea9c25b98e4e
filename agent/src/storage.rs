//! Opening the object stores a task names, through the shared builders in `dg_common::store`. Local
//! storages are confined to the agent's configured roots (see `AgentContext::confine`).

use std::sync::Arc;

use dg_common::store::StoreConfig;
use dg_proto::v1::StorageTarget;
use object_store::ObjectStore;

use crate::{
    context::AgentContext,
    error::{PipelineError, PipelineResult},
};

/// An opened storage.
#[derive(Clone, Debug)]
pub struct OpenStorage {
    /// Storage id.
    pub id: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
}

/// Opens a storage target.
pub fn open(t: &StorageTarget, ctx: &AgentContext) -> PipelineResult<OpenStorage> {
    let err = |message: String| PipelineError::Storage { storage: t.storage_id.clone(), message };
    let cfg = dg_common::store::from_target(t).map_err(|e| err(e.0))?;
    if let StoreConfig::Local { path } = &cfg {
        ctx.confine(std::path::Path::new(path)).map_err(err)?;
    }
    let store = dg_common::store::open(&cfg).map_err(|e| err(e.0))?;
    Ok(OpenStorage { id: t.storage_id.clone(), store })
}
