//! Opening the object stores a task names. Every storage is reached through `object_store`; a local storage
//! is a directory on this host, which must be absolute, free of `..`, and not a symlink.

use std::{path::Path, sync::Arc};

use dg_proto::v1::{StorageTarget, storage_target::Config};
use object_store::{ObjectStore, local::LocalFileSystem};

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
    let err = |m: String| PipelineError::Storage {
        storage: t.storage_id.clone(),
        message: m,
    };
    match &t.config {
        Some(Config::Local(l)) => {
            let path = Path::new(&l.path);
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(err(
                    "local path must be absolute and must not contain '..'".into()
                ));
            }
            if path
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(err("local path is a symlink; refusing it".into()));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| err(format!("create {}: {e}", path.display())))?;
            let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| err(e.to_string()))?;
            Ok(OpenStorage {
                id: t.storage_id.clone(),
                store: Arc::new(fs),
            })
        }
        None => Err(err("no storage configuration".into())),
    }
}
