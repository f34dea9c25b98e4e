//! Persistence of the cleanup worker's bookkeeping: attempts whose objects no backup counts, and the sweeps
//! of ended attempts' prefixes, repeated until a round finds them empty.

use sea_orm::DbErr;
use uuid::Uuid;

use super::{Db, execute, fetch_all};

/// An ended attempt's prefix to sweep in one storage.
#[derive(Clone, Debug, sea_orm::FromQueryResult)]
pub struct Sweep {
    /// Execution.
    pub execution_id: Uuid,
    /// Attempt.
    pub attempt: i32,
    /// Storage.
    pub storage_id: Uuid,
    /// `<datasource>/<execution>/<attempt>`.
    pub prefix: String,
}

/// An attempt's chunks in one storage that no backup counts.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct OrphanAttempt {
    /// Execution.
    pub execution_id: Uuid,
    /// Attempt.
    pub attempt: i32,
    /// Storage.
    pub storage_id: Uuid,
}

impl Db {
    /// Attempts whose objects are orphans (see `BackupsService::sweep_orphans`), ended more than `grace` ago.
    pub async fn orphan_attempts(&self, grace: std::time::Duration) -> Result<Vec<OrphanAttempt>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT DISTINCT c.execution_id, c.attempt, c.storage_id FROM backup_chunk c \
             JOIN execution e ON e.id = c.execution_id \
             WHERE (e.status IN ('failed', 'cancelled') \
                    OR (e.status = 'completed' AND (c.attempt <> e.attempt OR NOT EXISTS \
                        (SELECT 1 FROM backup_copy b WHERE b.execution_id = e.id AND b.storage_id = c.storage_id)))) \
               AND coalesce(e.finished_at, e.created_at) < now() - make_interval(secs => $1) LIMIT 100",
            [grace.as_secs_f64().into()],
        )
        .await
    }

    /// Records that attempt `attempt` of a backup ended without becoming the backup: each of `storages` gets
    /// the attempt's prefix swept until it is empty.
    pub async fn add_sweeps(&self, id: Uuid, attempt: i32, prefix: &str, storages: &[Uuid]) -> Result<(), DbErr> {
        for s in storages {
            execute(
                &self.conn,
                "INSERT INTO attempt_sweep (execution_id, attempt, storage_id, prefix) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                [id.into(), attempt.into(), (*s).into(), prefix.into()],
            )
            .await?;
        }
        Ok(())
    }

    /// Sweeps whose grace has passed and whose prefix has not been found empty yet.
    pub async fn due_sweeps(&self, grace: std::time::Duration) -> Result<Vec<Sweep>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT execution_id, attempt, storage_id, prefix FROM attempt_sweep \
             WHERE NOT done AND ended_at < now() - make_interval(secs => $1) ORDER BY ended_at LIMIT 100",
            [grace.as_secs_f64().into()],
        )
        .await
    }

    /// Records a sweep round: `empty` ends the sweep.
    pub async fn swept(&self, s: &Sweep, empty: bool) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "UPDATE attempt_sweep SET swept_at = now(), done = $4 \
             WHERE execution_id = $1 AND attempt = $2 AND storage_id = $3",
            [s.execution_id.into(), s.attempt.into(), s.storage_id.into(), empty.into()],
        )
        .await
        .map(|_| ())
    }

    /// Chunk keys of one attempt in one storage.
    pub async fn attempt_chunk_keys(&self, id: Uuid, attempt: i32, storage: Uuid) -> Result<Vec<String>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Key {
            object_key: String,
        }
        Ok(fetch_all::<Key>(
            &self.conn,
            "SELECT object_key FROM backup_chunk WHERE execution_id = $1 AND attempt = $2 AND storage_id = $3",
            [id.into(), attempt.into(), storage.into()],
        )
        .await?
        .into_iter()
        .map(|k| k.object_key)
        .collect())
    }

    /// Forgets the chunks of one attempt in one storage (their objects are gone).
    pub async fn delete_attempt_chunks(&self, id: Uuid, attempt: i32, storage: Uuid) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "DELETE FROM backup_chunk WHERE execution_id = $1 AND attempt = $2 AND storage_id = $3",
            [id.into(), attempt.into(), storage.into()],
        )
        .await
        .map(|_| ())
    }
}
