//! Opening the object stores a task or request names (the protocol model's [`StorageTarget`], validated
//! where the session received it), through the shared builder in `dg_common::store`. Local storages are
//! confined to the agent's configured roots (see `AgentContext::confine`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dg_common::{ids::StorageId, protocol::StorageTarget, store::StoreConfig};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as ObjPath};

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

/// A manifest read back is at most this plus [`MANIFEST_BYTES_PER_CHUNK`] per chunk of its copy.
const MANIFEST_BASE_BYTES: u64 = 64 * 1024;
/// Manifest bytes allowed per chunk (a chunk entry is about 150 bytes).
const MANIFEST_BYTES_PER_CHUNK: u64 = 1024;

/// The most a manifest listing `chunks` chunks may take: the bound its reads are made with.
pub fn manifest_bound(chunks: usize) -> u64 {
    MANIFEST_BASE_BYTES + MANIFEST_BYTES_PER_CHUNK * chunks as u64
}

/// What reading an object whole, never past a bound, found.
pub enum Bounded {
    /// There is no such object.
    Absent,
    /// It is larger than the bound: its size, or `None` when it grew past the bound while read.
    TooLarge(Option<u64>),
    /// Its bytes.
    Got(Bytes),
}

impl OpenStorage {
    /// Reads object `key` whole, at most `max` bytes: a larger object is not read further. `Err` is a
    /// storage failure other than an absent object.
    pub async fn read_bounded(&self, key: &str, max: u64) -> Result<Bounded, object_store::Error> {
        let got = match self.store.get(&ObjPath::from(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(Bounded::Absent),
            Err(e) => return Err(e),
        };
        if got.meta.size > max {
            return Ok(Bounded::TooLarge(Some(got.meta.size)));
        }
        let mut buf = BytesMut::with_capacity(usize::try_from(got.meta.size).unwrap_or(0));
        let mut parts = got.into_stream();
        while let Some(part) = parts.next().await {
            let part = part?;
            if (buf.len() + part.len()) as u64 > max {
                return Ok(Bounded::TooLarge(None));
            }
            buf.extend_from_slice(&part);
        }
        Ok(Bounded::Got(buf.freeze()))
    }
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
