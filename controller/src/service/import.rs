//! Catalog import, the controller's own disaster recovery: a controller with a new (or damaged) database is
//! pointed at a storage that still holds backups and registers every backup its catalog does not know.
//! The storage is listed through the controller's own object store (cloud storages only: a local storage
//! sits on one agent's disk, which the controller cannot list, and is refused). Each `manifest.json` found
//! at a layout key is read bounded by its listed size and [`import_check::MAX_MANIFEST_BYTES`], checked
//! (its own sha256 and format, then every field, [`import_check::check_manifest`]), optionally every chunk
//! is read bounded by its size and hashed off the async threads, and only then is it registered, in one
//! transaction per backup. A dry run does every check and registers nothing. Called by the
//! `BackupService/ImportCatalog` handler and the `dg-controller import` command, with the same inputs.

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tracing::info;
use uuid::Uuid;

use dg_common::manifest::Manifest;

use super::{
    import_check::{self, CheckedBackup, ManifestLocation},
    storages,
};
use crate::{
    crypto::MasterKey,
    db::Db,
    error::{ControllerError, ControllerResult},
    model::StorageKind,
};

/// Most manifests one import looks at.
const MAX_MANIFESTS: usize = 100_000;
/// Bytes gathered before they are hashed on a blocking thread.
const HASH_BATCH: usize = 4 << 20;

/// A validated import request.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// Storage to scan.
    pub storage_id: Uuid,
    /// Datasource the backups are registered to.
    pub datasource_id: Uuid,
    /// Only manifests of this original datasource.
    pub from_datasource_id: Option<Uuid>,
    /// Read and hash every chunk too.
    pub verify_chunks: bool,
    /// Register nothing.
    pub dry_run: bool,
}

/// What an import did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Backups registered (or that would be).
    pub imported: Vec<Uuid>,
    /// (manifest key, backup id, reason) of manifests whose backup is known.
    pub skipped: Vec<(String, Uuid, String)>,
    /// (manifest key, reason) of manifests that failed a check.
    pub failed: Vec<(String, String)>,
}

/// The import service.
#[derive(Clone, Debug)]
pub struct ImportService {
    db: Db,
    key: MasterKey,
}

impl ImportService {
    /// New service.
    pub fn new(db: Db, key: MasterKey) -> Self {
        Self { db, key }
    }

    /// Runs one import.
    pub async fn import(&self, r: &ImportRequest) -> ControllerResult<ImportReport> {
        let storage = self
            .db
            .storage(r.storage_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("storage {}", r.storage_id)))?;
        if storage.kind == StorageKind::Local {
            return Err(ControllerError::FailedPrecondition(format!(
                "storage_id: {} is a local storage, a path on one agent's host that the controller cannot list; \
                 import from a cloud storage (s3, gcs, azure), or copy the local storage's directory into one first",
                storage.name
            )));
        }
        let ds = self
            .db
            .datasource(r.datasource_id)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {}", r.datasource_id)))?;
        let cfg = storages::store_config(&storage, &self.key)?;
        let store = dg_common::store::open(&cfg).map_err(|e| ControllerError::FailedPrecondition(e.0))?;

        let mut found = self.list_manifests(&store, r.from_datasource_id).await?;
        // Newest attempt of a backup first: when two attempts left a manifest, the later one is the backup.
        found.sort_by(|a, b| {
            (a.0.execution, std::cmp::Reverse(a.0.attempt)).cmp(&(b.0.execution, std::cmp::Reverse(b.0.attempt)))
        });
        let mut report = ImportReport::default();
        for (loc, size) in found {
            if report.imported.contains(&loc.execution) || self.db.execution_known(loc.execution).await? {
                let why = "already in the catalog".to_owned();
                report.skipped.push((loc.key.clone(), loc.execution, why));
                continue;
            }
            let checked = match self.check(&store, &loc, size, ds.engine.as_str(), r.verify_chunks).await? {
                Ok(c) => c,
                Err(why) => {
                    info!(storage_id = %storage.id, manifest = %loc.key, reason = %why, "import: manifest refused");
                    report.failed.push((loc.key.clone(), why));
                    continue;
                }
            };
            if r.dry_run {
                report.imported.push(checked.id);
            } else if self.db.register_import(&checked, ds.id, ds.agent_id, storage.id).await? {
                info!(storage_id = %storage.id, backup_id = %checked.id, "import: backup registered");
                report.imported.push(checked.id);
            } else {
                report.skipped.push((loc.key.clone(), loc.execution, "registered meanwhile".into()));
            }
        }
        Ok(report)
    }

    /// Every layout manifest key in the store (with its listed size), optionally of one original datasource.
    async fn list_manifests(
        &self,
        store: &Arc<dyn ObjectStore>,
        from: Option<Uuid>,
    ) -> ControllerResult<Vec<(ManifestLocation, u64)>> {
        let prefix = from.map(|d| ObjPath::from(d.to_string()));
        let mut listing = store.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| ControllerError::Unavailable(format!("listing the storage failed: {e}")))?;
            let Some(loc) = import_check::locate(meta.location.as_ref()) else { continue };
            if from.is_some_and(|d| d != loc.datasource) {
                continue;
            }
            if out.len() >= MAX_MANIFESTS {
                return Err(ControllerError::ResourceExhausted(format!(
                    "the storage holds more than {MAX_MANIFESTS} manifests; import one datasource at a time \
                     (from_datasource_id)"
                )));
            }
            out.push((loc, meta.size));
        }
        Ok(out)
    }

    /// Reads and checks one manifest (and, with `chunks`, its objects): `Ok(Err(why))` when it fails a check.
    async fn check(
        &self,
        store: &Arc<dyn ObjectStore>,
        loc: &ManifestLocation,
        listed: u64,
        engine: &str,
        chunks: bool,
    ) -> ControllerResult<Result<CheckedBackup, String>> {
        let max = import_check::MAX_MANIFEST_BYTES;
        if listed > max {
            return Ok(Err(format!("the manifest is {listed} bytes, more than the {max} a manifest may have")));
        }
        let bytes = match read_bounded(store, &loc.key, max).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Err(format!("the manifest grew past {max} bytes while read"))),
            Err(e) => return Ok(Err(format!("the manifest cannot be read: {e}"))),
        };
        let m = match Manifest::from_bytes(&bytes) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let checked = match import_check::check_manifest(loc, &m, engine) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if chunks && let Err(why) = verify_objects(store, &checked).await? {
            return Ok(Err(why));
        }
        Ok(Ok(checked))
    }
}

/// Reads `key` whole, never past `max` bytes (`None` past it).
async fn read_bounded(store: &Arc<dyn ObjectStore>, key: &str, max: u64) -> object_store::Result<Option<bytes::Bytes>> {
    let got = store.get(&ObjPath::from(key)).await?;
    let mut buf = BytesMut::new();
    let mut parts = got.into_stream();
    while let Some(part) = parts.next().await {
        let part = part?;
        if (buf.len() + part.len()) as u64 > max {
            return Ok(None);
        }
        buf.extend_from_slice(&part);
    }
    Ok(Some(buf.freeze()))
}

/// Hashes `batch` into `h` (and `whole`) on a blocking thread.
async fn hash_batch(h: Sha256, whole: Option<Sha256>, batch: BytesMut) -> ControllerResult<(Sha256, Option<Sha256>)> {
    tokio::task::spawn_blocking(move || {
        let (mut h, mut w) = (h, whole);
        h.update(&batch);
        if let Some(w) = w.as_mut() {
            w.update(&batch);
        }
        (h, w)
    })
    .await
    .map_err(|e| ControllerError::Unavailable(format!("hashing stopped: {e}")))
}

/// Reads `key`, never past `size` bytes, and returns its sha256 (`Err(why)` when absent, unreadable or of
/// another size).
async fn hash_object(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    size: u64,
    whole: &mut Option<Sha256>,
) -> ControllerResult<Result<String, String>> {
    let got = match store.get(&ObjPath::from(key)).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(Err(format!("{key} is absent"))),
        Err(e) => return Ok(Err(format!("{key} cannot be read: {e}"))),
    };
    if got.meta.size != size {
        return Ok(Err(format!("{key} has {} bytes, the manifest says {size}", got.meta.size)));
    }
    let (mut h, mut batch, mut total) = (Sha256::new(), BytesMut::new(), 0u64);
    let mut parts = got.into_stream();
    while let Some(part) = parts.next().await {
        let part = match part {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("{key} cannot be read: {e}"))),
        };
        total += part.len() as u64;
        if total > size {
            return Ok(Err(format!("{key} is larger than the manifest's {size} bytes")));
        }
        batch.extend_from_slice(&part);
        if batch.len() >= HASH_BATCH {
            (h, *whole) = hash_batch(h, whole.take(), std::mem::take(&mut batch)).await?;
        }
    }
    if total != size {
        return Ok(Err(format!("{key} has {total} bytes, the manifest says {size}")));
    }
    (h, *whole) = hash_batch(h, whole.take(), batch).await?;
    Ok(Ok(hex::encode(h.finalize())))
}

/// Every chunk against its size and sha256, the chunks together against the stream sha256, the globals
/// object against its own.
async fn verify_objects(store: &Arc<dyn ObjectStore>, b: &CheckedBackup) -> ControllerResult<Result<(), String>> {
    let mut whole = Some(Sha256::new());
    for c in &b.chunks {
        let size = u64::try_from(c.size).unwrap_or_default();
        match hash_object(store, &c.key, size, &mut whole).await? {
            Err(why) => return Ok(Err(format!("chunk {}: {why}", c.seq))),
            Ok(sha) if sha != c.sha256 => {
                return Ok(Err(format!("chunk {}: sha256 {sha}, the manifest says {}", c.seq, c.sha256)));
            }
            Ok(_) => {}
        }
    }
    if let Some(w) = whole
        && hex::encode(w.finalize()) != b.sha256
    {
        return Ok(Err("the chunks together do not have the manifest's stream sha256".into()));
    }
    if let Some((key, size, sha256)) = &b.globals {
        match hash_object(store, key, u64::try_from(*size).unwrap_or_default(), &mut None).await? {
            Err(why) => return Ok(Err(format!("globals: {why}"))),
            Ok(sha) if &sha != sha256 => return Ok(Err(format!("globals: sha256 {sha}, the manifest says {sha256}"))),
            Ok(_) => {}
        }
    }
    Ok(Ok(()))
}
