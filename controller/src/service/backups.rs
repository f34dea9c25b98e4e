//! Operator reads and deletes of backup objects. Cloud storages are opened by the controller itself; a local
//! storage lives on one agent's host, so reads and deletes there go through that agent's session. Every
//! chunk is checked against its size and sha256 before any of its bytes are sent, and a chunk is read from
//! the next storage holding a copy when one fails. Copies a verify found damaged or missing are not read.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as ObjPath};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::storages;
use crate::session::rpc::AgentRpc;
use crate::{
    crypto::MasterKey,
    db::{Db, DeleteMark},
    error::{ControllerError, ControllerResult},
    model::{Chunk, Execution, Operation, Status, Storage, StorageKind},
};

/// Size of the pieces a download is sent in.
const PIECE: usize = 1024 * 1024;

/// Backup object access.
#[derive(Clone, Debug)]
pub struct BackupsService {
    db: Db,
    key: MasterKey,
    rpc: AgentRpc,
}

/// An opened source of objects.
enum Source {
    Cloud(Arc<dyn ObjectStore>),
    Agent { agent: Uuid, target: dg_common::protocol::StorageTarget },
}

impl BackupsService {
    /// New service.
    pub fn new(db: Db, key: MasterKey, rpc: AgentRpc) -> Self {
        Self { db, key, rpc }
    }

    async fn completed_backup(&self, id: Uuid) -> ControllerResult<Execution> {
        match self.db.execution(id).await? {
            Some(e) if e.operation == Operation::Backup && e.status == Status::Completed => Ok(e),
            _ => Err(ControllerError::NotFound(format!("backup {id}"))),
        }
    }

    fn source(&self, s: &Storage) -> ControllerResult<Source> {
        if s.kind == StorageKind::Local {
            let agent =
                s.agent_id.ok_or_else(|| ControllerError::FailedPrecondition("local storage without agent".into()))?;
            return Ok(Source::Agent { agent, target: storages::target(s, &self.key)? });
        }
        let cfg = storages::store_config(s, &self.key)?;
        let store = dg_common::store::open(&cfg)
            .map_err(|e| ControllerError::Unavailable(format!("storage {}: {}", s.name, e.0)))?;
        Ok(Source::Cloud(store))
    }

    async fn read(&self, src: &Source, key: &str, max: u64) -> Result<Bytes, String> {
        match src {
            Source::Cloud(store) => store
                .get(&ObjPath::from(key))
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string()),
            Source::Agent { agent, target } => {
                let (mut data, done, _guard) =
                    self.rpc.read(*agent, target.clone(), key.to_owned()).await.map_err(|e| e.to_string())?;
                let mut buf = BytesMut::new();
                while let Some(piece) = data.recv().await {
                    if buf.len() as u64 + piece.len() as u64 > max {
                        return Err("object is larger than recorded".into());
                    }
                    buf.extend_from_slice(&piece);
                }
                let r = tokio::time::timeout(Duration::from_secs(30), done)
                    .await
                    .map_err(|_| "agent did not finish the read".to_owned())?
                    .map_err(|_| "agent disconnected".to_owned())?;
                r?;
                Ok(buf.freeze())
            }
        }
    }

    /// Streams a single-stream backup: the stored zstd stream, or the decompressed dump.
    pub async fn download(
        &self,
        id: Uuid,
        decompress: bool,
    ) -> ControllerResult<mpsc::Receiver<ControllerResult<Bytes>>> {
        let ex = self.completed_backup(id).await?;
        // Several streams concatenated are no dump a tool could read: only a restore reassembles them.
        if ex.layout_sha256.is_some() {
            return Err(ControllerError::FailedPrecondition(format!(
                "backup {id} is a parallel backup (its table data is in several streams): download serves \
                 single-stream backups; restore it instead"
            )));
        }
        if decompress && let Some(k) = &ex.encryption_key_id {
            return Err(ControllerError::FailedPrecondition(format!(
                "decompress: the backup is encrypted with agent key \"{k}\"; download the stored stream instead"
            )));
        }
        // Copies a verify found damaged or missing are never read.
        let copies = self.db.usable_copy_ids(id).await?;
        if copies.is_empty() {
            return Err(ControllerError::FailedPrecondition(format!(
                "backup {id}: every copy was found damaged or missing by a verify; nothing intact to download"
            )));
        }
        let mut sources = Vec::new();
        for sid in &copies {
            if let Some(s) = self.db.storage(*sid).await? {
                match self.source(&s) {
                    Ok(src) => sources.push((s.name.clone(), src)),
                    Err(e) => tracing::warn!(storage = %s.name, error = %e, "storage unusable for download"),
                }
            }
        }
        if sources.is_empty() {
            return Err(ControllerError::Unavailable("no storage holding this backup can be opened".into()));
        }
        let first = copies[0];
        let chunks: Vec<Chunk> =
            self.db.chunks(id, ex.attempt).await?.into_iter().filter(|c| c.storage_id == first).collect();
        let (tx, rx) = mpsc::channel::<ControllerResult<Bytes>>(4);
        let this = self.clone();
        // The recorded raw size bounds what the stream may decompress to.
        let limit = u64::try_from(ex.raw_bytes).ok().filter(|n| *n > 0).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            let (chunk_tx, dec) = if decompress {
                let (ctx, crx) = mpsc::channel::<Bytes>(2);
                let (btx, mut brx) = mpsc::channel::<Bytes>(4);
                let worker = tokio::task::spawn_blocking(move || dg_common::chunk::decompress(crx, btx, PIECE, limit));
                let out = tx.clone();
                let forward = tokio::spawn(async move {
                    while let Some(b) = brx.recv().await {
                        if out.send(Ok(b)).await.is_err() {
                            break;
                        }
                    }
                });
                (Some(ctx), Some((worker, forward)))
            } else {
                (None, None)
            };
            for c in &chunks {
                let mut reasons = Vec::new();
                let mut good = None;
                for (name, src) in &sources {
                    match this.read(src, &c.object_key, u64::try_from(c.size).unwrap_or(0)).await {
                        Ok(b) if b.len() as i64 == c.size && hex::encode(Sha256::digest(&b)) == c.sha256 => {
                            good = Some(b);
                            break;
                        }
                        Ok(_) => reasons.push(format!("storage {name}: checksum or size mismatch")),
                        Err(e) => reasons.push(format!("storage {name}: {e}")),
                    }
                }
                let Some(data) = good else {
                    let msg = format!("chunk {} ({}) has no intact copy: {}", c.seq, c.object_key, reasons.join("; "));
                    let _ = tx.send(Err(ControllerError::DataLoss(msg))).await;
                    return;
                };
                let sent = match &chunk_tx {
                    Some(ctx) => ctx.send(data).await.is_ok(),
                    None => {
                        let mut ok = true;
                        for piece in data.chunks(PIECE) {
                            if tx.send(Ok(data.slice_ref(piece))).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        ok
                    }
                };
                if !sent {
                    return;
                }
            }
            drop(chunk_tx);
            if let Some((worker, forward)) = dec {
                let res = worker.await;
                let _ = forward.await;
                let failure = match res {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) if dg_common::chunk::is_truncated(&e) => Some(e.to_string()),
                    Ok(Err(e)) => Some(format!("the stored stream does not decompress: {e}")),
                    Err(e) => Some(format!("the stored stream does not decompress: {e}")),
                };
                if let Some(msg) = failure {
                    let _ = tx.send(Err(ControllerError::DataLoss(msg))).await;
                }
            }
        });
        Ok(rx)
    }

    /// Pins a backup (`Some(reason)`) or unpins it; retention keeps a pinned backup and deletion refuses it.
    pub async fn set_pin(&self, id: Uuid, reason: Option<&str>) -> ControllerResult<()> {
        if self.db.set_pin(id, reason).await? { Ok(()) } else { Err(ControllerError::NotFound(format!("backup {id}"))) }
    }

    /// Deletes a backup, refused while it is pinned or while a queued or running restore reads it (checked atomically with marking
    /// it, so no restore can be queued meanwhile): objects in every storage first (a storage is dropped from the backup's copies as soon
    /// as its objects are gone), then the rows. Returns the number of objects deleted (a store that cannot
    /// tell an absent object from a deleted one, like S3, counts every key it was asked to delete).
    pub async fn delete(&self, id: Uuid) -> ControllerResult<u32> {
        match self.db.mark_deleting(id).await? {
            DeleteMark::Marked => {}
            DeleteMark::NotFound => return Err(ControllerError::NotFound(format!("backup {id}"))),
            DeleteMark::Pinned(why) => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "backup {id} is pinned ({why}); unpin it before deleting it"
                )));
            }
            DeleteMark::InUse(reader) => {
                return Err(ControllerError::FailedPrecondition(format!(
                    "backup {id} is read by execution {reader} (queued or running); delete it once that ends"
                )));
            }
        }
        let mut by_storage: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for c in self.db.chunks_all_attempts(id).await? {
            by_storage.entry(c.storage_id).or_default().push(c.object_key);
        }
        let mut deleted = 0u32;
        for (sid, keys) in by_storage {
            let s = self.db.storage(sid).await?.ok_or_else(|| ControllerError::NotFound(format!("storage {sid}")))?;
            deleted += self.delete_keys(&s, attempt_objects(keys)).await?;
            self.db.drop_copy(id, sid).await?;
        }
        self.db.delete_backup_rows(id).await?;
        Ok(deleted)
    }

    /// Deletes keys from one storage (through its agent for a local storage).
    async fn delete_keys(&self, s: &Storage, keys: Vec<String>) -> ControllerResult<u32> {
        Ok(match self.source(s)? {
            Source::Cloud(store) => {
                let mut n = 0;
                for k in &keys {
                    match store.delete(&ObjPath::from(k.as_str())).await {
                        Ok(()) => n += 1,
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(ControllerError::Unavailable(format!("storage {}: {e}", s.name))),
                    }
                }
                n
            }
            Source::Agent { agent, target } => self
                .rpc
                .delete(agent, target, keys)
                .await?
                .map_err(|e| ControllerError::Unavailable(format!("storage {}: {e}", s.name)))?,
        })
    }

    /// Removes the objects (and chunk rows) of attempts that will never be a backup: failed or cancelled
    /// executions, earlier attempts of a retried backup, and partial copies a backup does not count (a
    /// replica storage dropped mid-way, a fallback storage that failed), once `grace` has passed since the
    /// execution ended. Returns the number of objects deleted; an unreachable storage is retried next round.
    pub async fn sweep_orphans(&self, grace: Duration) -> ControllerResult<u32> {
        let mut deleted = 0;
        for o in self.db.orphan_attempts(grace).await? {
            let Some(s) = self.db.storage(o.storage_id).await? else { continue };
            let keys = self.db.attempt_chunk_keys(o.execution_id, o.attempt, o.storage_id).await?;
            match self.delete_keys(&s, attempt_objects(keys)).await {
                Ok(n) => {
                    deleted += n;
                    self.db.delete_attempt_chunks(o.execution_id, o.attempt, o.storage_id).await?;
                    tracing::info!(execution_id = %o.execution_id, attempt = o.attempt, storage = %s.name, objects = n, "orphaned objects removed");
                }
                Err(e) => tracing::debug!(execution_id = %o.execution_id, error = %e, "orphan sweep deferred"),
            }
        }
        for sweep in self.db.due_sweeps(grace).await? {
            let Some(s) = self.db.storage(sweep.storage_id).await? else {
                self.db.swept(&sweep, true).await?; // the storage is gone, and its objects with it
                continue;
            };
            match self.delete_prefix(&s, &sweep.prefix).await {
                Ok(n) => {
                    deleted += n;
                    self.db.swept(&sweep, n == 0).await?;
                    if n > 0 {
                        tracing::info!(execution_id = %sweep.execution_id, attempt = sweep.attempt, storage = %s.name, objects = n, "ended attempt's objects removed");
                    }
                }
                Err(e) => tracing::debug!(execution_id = %sweep.execution_id, error = %e, "attempt sweep deferred"),
            }
        }
        Ok(deleted)
    }

    /// Deletes every object below `prefix` in one storage (through its agent for a local storage); returns
    /// how many there were.
    async fn delete_prefix(&self, s: &Storage, prefix: &str) -> ControllerResult<u32> {
        match self.source(s)? {
            Source::Cloud(store) => dg_common::store::delete_prefix(store.as_ref(), prefix)
                .await
                .map_err(|e| ControllerError::Unavailable(format!("storage {}: {}", s.name, e.0))),
            Source::Agent { agent, target } => self
                .rpc
                .delete_prefix(agent, target, prefix.to_owned())
                .await?
                .map_err(|e| ControllerError::Unavailable(format!("storage {}: {e}", s.name))),
        }
    }
}

/// Every object key of the attempts whose chunk keys are given: the chunks, plus each attempt's manifest and
/// PostgreSQL globals object (deleting an absent one is harmless).
fn attempt_objects(mut keys: Vec<String>) -> Vec<String> {
    let prefixes: std::collections::BTreeSet<String> =
        keys.iter().filter_map(|k| k.rsplit_once('/').map(|(p, _)| p.to_owned())).collect();
    for p in prefixes {
        keys.push(dg_common::manifest::manifest_key(&p));
        keys.push(dg_common::manifest::globals_key(&p));
    }
    keys
}
