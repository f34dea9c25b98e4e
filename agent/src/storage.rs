//! Opening the object stores a task names, through the shared builders in `dg_common::store`.

use std::sync::Arc;

use dg_proto::v1::StorageTarget;
use object_store::ObjectStore;

use crate::error::{PipelineError, PipelineResult};

/// An opened storage.
#[derive(Clone, Debug)]
pub struct OpenStorage {
    /// Storage id.
    pub id: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
}

/// Opens a storage target.
pub fn open(t: &StorageTarget) -> PipelineResult<OpenStorage> {
    let err = |e: dg_common::store::StoreError| PipelineError::Storage { storage: t.storage_id.clone(), message: e.0 };
    let cfg = dg_common::store::from_target(t).map_err(err)?;
    let store = dg_common::store::open(&cfg).map_err(err)?;
    Ok(OpenStorage { id: t.storage_id.clone(), store })
}
