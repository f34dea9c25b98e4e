//! Persistence of executions, their chunks, copies and logs. Every transition is a compare-and-set on
//! `(id, status, attempt)`; a report for a stale attempt changes nothing.

use sea_orm::{DbErr, TransactionTrait, Value};
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::{Chunk, Execution, LogLine, Operation, Status};

pub(super) const EX_COLS: &str = "id, operation, status, job_id, datasource_id, agent_id, attempt, lease_until, created_at, \
                       started_at, finished_at, error, raw_bytes, stored_bytes, chunk_count, sha256, manifest_key, \
                       source_backup_id, target_database, options, encryption_key_id, warnings, cancel_requested, deleting, \
                       agent_listed, trust_recorded, globals_key, globals_size, globals_sha256, wrapped_key_sha256, pinned, pin_reason, imported, \
                       layout_sha256";

/// A new execution.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// Operation.
    pub operation: Operation,
    /// Producing job (backups).
    pub job_id: Option<Uuid>,
    /// Datasource backed up or restored into.
    pub datasource_id: Uuid,
    /// Agent that will run it.
    pub agent_id: Uuid,
    /// Restore: source backup.
    pub source_backup_id: Option<Uuid>,
    /// Restore: target database.
    pub target_database: Option<String>,
    /// Options (JSON).
    pub options: serde_json::Value,
}

/// Filters of an execution listing.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    /// Job.
    pub job_id: Option<Uuid>,
    /// Datasource.
    pub datasource_id: Option<Uuid>,
    /// Status.
    pub status: Option<Status>,
    /// Operation.
    pub operation: Option<Operation>,
    /// Queued at or after.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Queued before.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// A chunk an agent reported.
#[derive(Debug, Clone)]
pub struct ChunkReport {
    /// Execution.
    pub execution_id: Uuid,
    /// Attempt.
    pub attempt: i32,
    /// Storage.
    pub storage_id: Uuid,
    /// Position.
    pub seq: i32,
    /// Object key.
    pub key: String,
    /// Stored size.
    pub size: i64,
    /// Hex sha256.
    pub sha256: String,
    /// Uncompressed bytes carried.
    pub raw_bytes: i64,
}

/// (execution, attempt) pairs as the JSON array `jsonb_to_recordset` reads.
fn attempt_list(running: &[(Uuid, i32)]) -> serde_json::Value {
    serde_json::Value::Array(running.iter().map(|(id, a)| serde_json::json!({ "id": id, "attempt": a })).collect())
}

/// What marking a backup for deletion found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteMark {
    /// Marked; no restore of it can be queued from now on.
    Marked,
    /// Not a completed backup.
    NotFound,
    /// This queued or running execution reads it.
    InUse(Uuid),
    /// Pinned, for this reason.
    Pinned(String),
}

/// What recording a chunk report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRecord {
    /// Newly recorded.
    Recorded,
    /// The same report again (a resend): nothing changed.
    Duplicate,
    /// The same seq and storage reported before with other contents.
    Conflict,
    /// The attempt is not a running backup attempt.
    NotRunning,
}

/// The outcome a backup reported.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// Uncompressed bytes.
    pub raw_bytes: i64,
    /// Stored bytes of one copy.
    pub stored_bytes: i64,
    /// Chunks of one copy.
    pub chunk_count: i32,
    /// Whole-stream sha256.
    pub sha256: String,
    /// Manifest key.
    pub manifest_key: String,
    /// Storages with a complete copy.
    pub storage_ids: Vec<Uuid>,
    /// Dump tool version.
    pub tool_version: String,
    /// Server version.
    pub server_version: String,
    /// Non-fatal problems.
    pub warnings: Vec<String>,
    /// Key id the chunks are encrypted with.
    pub encryption_key_id: Option<String>,
    /// Hex sha256 of the wrapped data key (with `encryption_key_id`).
    pub wrapped_key_sha256: Option<String>,
    /// The globals object: key, size, sha256.
    pub globals: Option<(String, i64, String)>,
    /// Rows per table at dump time (JSON list), when the agent counted them.
    pub table_counts: Option<serde_json::Value>,
    /// Hex sha256 of a parallel backup's manifest layout; `None` for one stream.
    pub layout_sha256: Option<String>,
}

/// What the controller recorded for one storage of a backup attempt (see `service::commit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopySummary {
    /// The storage.
    pub storage: Uuid,
    /// Chunk records.
    pub chunks: i64,
    /// Sum of their sizes.
    pub bytes: i64,
    /// Lowest sequence number.
    pub min_seq: Option<i32>,
    /// Highest sequence number.
    pub max_seq: Option<i32>,
}

#[derive(sea_orm::FromQueryResult)]
struct CopySummaryRow {
    storage_id: Uuid,
    chunks: i64,
    bytes: i64,
    min_seq: Option<i32>,
    max_seq: Option<i32>,
}

impl Db {
    /// Queues an execution.
    pub async fn insert_execution(&self, n: &NewExecution) -> Result<Execution, DbErr> {
        self.insert_execution_on(&self.conn, n).await
    }

    pub(super) async fn insert_execution_on(
        &self,
        c: &impl sea_orm::ConnectionTrait,
        n: &NewExecution,
    ) -> Result<Execution, DbErr> {
        fetch_one(
            c,
            &format!(
                "INSERT INTO execution (id, operation, status, job_id, datasource_id, agent_id, source_backup_id, \
                 target_database, options) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8) RETURNING {EX_COLS}"
            ),
            [
                Uuid::now_v7().into(),
                n.operation.into(),
                n.job_id.into(),
                n.datasource_id.into(),
                n.agent_id.into(),
                n.source_backup_id.into(),
                n.target_database.clone().into(),
                n.options.clone().into(),
            ],
        )
        .await?
        .ok_or(DbErr::RecordNotInserted)
    }

    /// Queues an execution that reads backup `backup` (a restore), holding the backup's row so that a deletion
    /// cannot start in between. `None` when the backup is not a completed backup or is being deleted.
    pub async fn insert_reading_execution(&self, backup: Uuid, n: &NewExecution) -> Result<Option<Execution>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Flag {
            deleting: bool,
        }
        let txn = self.conn.begin().await?;
        let flag: Option<Flag> = fetch_one(
            &txn,
            "SELECT deleting FROM execution WHERE id = $1 AND operation = 'backup' AND status = 'completed' FOR SHARE",
            [backup.into()],
        )
        .await?;
        if !matches!(flag, Some(Flag { deleting: false })) {
            txn.rollback().await?;
            return Ok(None);
        }
        let ex = self.insert_execution_on(&txn, n).await?;
        txn.commit().await?;
        Ok(Some(ex))
    }

    /// Marks a completed backup as being deleted, unless it is pinned or a queued or running execution reads it: one
    /// transaction holding the backup's row, so a restore cannot be queued between the check and the mark.
    pub async fn mark_deleting(&self, backup: Uuid) -> Result<DeleteMark, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Reader {
            id: Uuid,
        }
        #[derive(sea_orm::FromQueryResult)]
        struct Pin {
            pinned: bool,
            pin_reason: Option<String>,
        }
        let txn = self.conn.begin().await?;
        let pin: Option<Pin> = fetch_one(
            &txn,
            "SELECT pinned, pin_reason FROM execution WHERE id = $1 AND operation = 'backup' AND status = 'completed' \
             FOR UPDATE",
            [backup.into()],
        )
        .await?;
        match pin {
            None => {
                txn.rollback().await?;
                return Ok(DeleteMark::NotFound);
            }
            Some(Pin { pinned: true, pin_reason }) => {
                txn.rollback().await?;
                return Ok(DeleteMark::Pinned(pin_reason.unwrap_or_default()));
            }
            Some(_) => {}
        }
        let reader: Option<Reader> = fetch_one(
            &txn,
            "SELECT id FROM execution WHERE source_backup_id = $1 AND status IN ('queued', 'running') LIMIT 1",
            [backup.into()],
        )
        .await?;
        if let Some(r) = reader {
            txn.rollback().await?;
            return Ok(DeleteMark::InUse(r.id));
        }
        execute(&txn, "UPDATE execution SET deleting = true WHERE id = $1", [backup.into()]).await?;
        txn.commit().await?;
        Ok(DeleteMark::Marked)
    }

    /// One execution.
    pub async fn execution(&self, id: Uuid) -> Result<Option<Execution>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {EX_COLS} FROM execution WHERE id = $1"), [id.into()]).await
    }

    /// Executions matching `f`, newest first.
    pub async fn list_executions(&self, f: &ExecutionFilter, page: Page) -> Result<Vec<Execution>, DbErr> {
        let mut sql = format!("SELECT {EX_COLS} FROM execution WHERE true");
        let mut values: Vec<Value> = Vec::new();
        let mut push = |cond: &str, v: Value, values: &mut Vec<Value>| {
            values.push(v);
            sql.push_str(&format!(" AND {cond} = ${}", values.len()));
        };
        if let Some(j) = f.job_id {
            push("job_id", j.into(), &mut values);
        }
        if let Some(d) = f.datasource_id {
            push("datasource_id", d.into(), &mut values);
        }
        if let Some(s) = f.status {
            push("status", s.into(), &mut values);
        }
        if let Some(o) = f.operation {
            push("operation", o.into(), &mut values);
        }
        if let Some(t) = f.created_after {
            values.push(t.into());
            sql.push_str(&format!(" AND created_at >= ${}", values.len()));
        }
        if let Some(t) = f.created_before {
            values.push(t.into());
            sql.push_str(&format!(" AND created_at < ${}", values.len()));
        }
        let n = values.len();
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC OFFSET ${} LIMIT ${}", n + 1, n + 2));
        values.push(page.offset.into());
        values.push(page.limit.into());
        fetch_all(&self.conn, &sql, values).await
    }

    /// The next execution of every agent that runs nothing now and has queued work: the oldest queued one
    /// whose datasource is bound to that agent (not the agent recorded at queue time: work follows its
    /// datasource when it is rebound), none for a revoked agent; as (execution, agent), oldest first. One
    /// statement whose cost follows the queued work, not the fleet: the oldest queued execution of each
    /// datasource first, then an index lookup of its datasource and agent (the `LIMIT 1` keeps the planner
    /// from hashing the whole `datasource` and `agent` tables).
    pub async fn next_for_idle_agents(&self) -> Result<Vec<(Uuid, Uuid)>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Next {
            id: Uuid,
            agent: Uuid,
        }
        let rows: Vec<Next> = fetch_all(
            &self.conn,
            "SELECT id, agent FROM ( \
                SELECT DISTINCT ON (x.agent) h.id, x.agent, h.created_at FROM ( \
                    SELECT DISTINCT ON (e.datasource_id) e.id, e.datasource_id, e.created_at FROM execution e \
                    WHERE e.status = 'queued' AND (e.not_before IS NULL OR e.not_before <= now()) \
                    ORDER BY e.datasource_id, e.created_at, e.id) h \
                CROSS JOIN LATERAL ( \
                    SELECT d.agent_id AS agent FROM datasource d JOIN agent a ON a.id = d.agent_id \
                    WHERE d.id = h.datasource_id AND a.revoked_at IS NULL \
                    AND NOT EXISTS (SELECT 1 FROM execution r WHERE r.agent_id = d.agent_id AND r.status = 'running') \
                    LIMIT 1) x \
                ORDER BY x.agent, h.created_at, h.id) next \
             ORDER BY created_at, id",
            [],
        )
        .await?;
        Ok(rows.into_iter().map(|n| (n.id, n.agent)).collect())
    }

    /// Queued executions whose datasource's agent is revoked get `waiting_reason` (`agent <id>` followed by
    /// `reason_tail`) and, once per reason, a line in their log saying it. Returns how many were marked.
    pub async fn mark_waiting_for_revoked_agents(&self, reason_tail: &str) -> Result<u64, DbErr> {
        execute(
            &self.conn,
            "WITH marked AS ( \
                UPDATE execution e SET waiting_reason = 'agent ' || a.id::text || $1 \
                FROM datasource d JOIN agent a ON a.id = d.agent_id \
                WHERE e.status = 'queued' AND d.id = e.datasource_id AND a.revoked_at IS NOT NULL \
                AND e.waiting_reason IS DISTINCT FROM 'agent ' || a.id::text || $1 \
                RETURNING e.id, e.waiting_reason) \
             INSERT INTO execution_log (execution_id, level, message) SELECT id, 'warn', waiting_reason FROM marked",
            [reason_tail.into()],
        )
        .await
    }

    /// Executions running on an agent.
    pub async fn running_for_agent(&self, agent_id: Uuid) -> Result<Vec<Execution>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {EX_COLS} FROM execution WHERE agent_id = $1 AND status = 'running'"),
            [agent_id.into()],
        )
        .await
    }

    /// Extends the leases of the attempts an agent's heartbeat lists (and only those).
    pub async fn extend_leases(&self, agent_id: Uuid, running: &[(Uuid, i32)], lease_secs: i64) -> Result<(), DbErr> {
        if running.is_empty() {
            return Ok(());
        }
        let list = attempt_list(running);
        execute(
            &self.conn,
            "UPDATE execution e SET lease_until = now() + make_interval(secs => $3), agent_listed = true \
             FROM jsonb_to_recordset($2::jsonb) AS r(id uuid, attempt int) \
             WHERE e.agent_id = $1 AND e.status = 'running' AND e.id = r.id AND e.attempt = r.attempt",
            [agent_id.into(), list.into(), (lease_secs as f64).into()],
        )
        .await
        .map(|_| ())
    }

    /// Running attempts of an agent that its heartbeat does not list although they were claimed more than
    /// `grace_secs` ago (the agent never started them, or forgot them).
    pub async fn unlisted_attempts(
        &self,
        agent_id: Uuid,
        running: &[(Uuid, i32)],
        grace_secs: i64,
    ) -> Result<Vec<Execution>, DbErr> {
        let list = attempt_list(running);
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {EX_COLS} FROM execution e WHERE e.agent_id = $1 AND e.status = 'running' \
                 AND e.started_at < now() - make_interval(secs => $3) \
                 AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset($2::jsonb) AS r(id uuid, attempt int) \
                                 WHERE r.id = e.id AND r.attempt = e.attempt)"
            ),
            [agent_id.into(), list.into(), (grace_secs as f64).into()],
        )
        .await
    }

    /// Running attempts whose lease expired.
    pub async fn expired_attempts(&self) -> Result<Vec<Execution>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {EX_COLS} FROM execution WHERE status = 'running' AND lease_until < now()"),
            [],
        )
        .await
    }

    /// Gives every running attempt a fresh lease (after the controller's database was unreachable, when no
    /// heartbeat could be recorded).
    pub async fn extend_all_leases(&self, lease_secs: i64) -> Result<u64, DbErr> {
        execute(
            &self.conn,
            "UPDATE execution SET lease_until = greatest(lease_until, now() + make_interval(secs => $1)) \
             WHERE status = 'running'",
            [(lease_secs as f64).into()],
        )
        .await
    }

    /// Records an operator's cancellation of a running attempt.
    pub async fn request_cancel(&self, id: Uuid, attempt: i32) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE execution SET cancel_requested = true WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [id.into(), attempt.into()],
        )
        .await?
            == 1)
    }

    /// Claims a queued execution for `agent_id`: `queued -> running` with the next attempt number and a lease,
    /// recording that agent as the one running it. Checked in the same statement: the execution's datasource
    /// is bound to that agent now and the agent is not revoked. `None` when another replica claimed it first,
    /// the datasource was rebound, or the agent was revoked.
    pub async fn claim(&self, id: Uuid, agent_id: Uuid, lease_secs: i64) -> Result<Option<Execution>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE execution SET status = 'running', attempt = attempt + 1, started_at = now(), agent_listed = false, \
                 lease_until = now() + make_interval(secs => $2), agent_id = $3, waiting_reason = NULL \
                 WHERE id = $1 AND status = 'queued' \
                 AND EXISTS (SELECT 1 FROM datasource d JOIN agent a ON a.id = d.agent_id \
                             WHERE d.id = execution.datasource_id AND d.agent_id = $3 AND a.revoked_at IS NULL) \
                 AND NOT EXISTS (SELECT 1 FROM execution b WHERE b.id = execution.source_backup_id AND b.deleting) \
                 RETURNING {EX_COLS}"
            ),
            [id.into(), (lease_secs as f64).into(), agent_id.into()],
        )
        .await
    }

    /// Records a reported chunk if the attempt is current. Returns false for a stale attempt.
    pub async fn record_chunk(&self, c: &ChunkReport) -> Result<ChunkRecord, DbErr> {
        let n = execute(
            &self.conn,
            "INSERT INTO backup_chunk (execution_id, attempt, storage_id, seq, object_key, size, sha256, raw_bytes) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM execution \
             WHERE id = $1 AND attempt = $2 AND status = 'running' AND operation = 'backup') \
             ON CONFLICT (execution_id, attempt, storage_id, seq) DO NOTHING",
            [
                c.execution_id.into(),
                c.attempt.into(),
                c.storage_id.into(),
                c.seq.into(),
                c.key.clone().into(),
                c.size.into(),
                c.sha256.clone().into(),
                c.raw_bytes.into(),
            ],
        )
        .await?;
        if n == 1 {
            return Ok(ChunkRecord::Recorded);
        }
        #[derive(sea_orm::FromQueryResult)]
        struct Recorded {
            object_key: String,
            size: i64,
            sha256: String,
        }
        let existing: Option<Recorded> = fetch_one(
            &self.conn,
            "SELECT object_key, size, sha256 FROM backup_chunk \
             WHERE execution_id = $1 AND attempt = $2 AND storage_id = $3 AND seq = $4",
            [c.execution_id.into(), c.attempt.into(), c.storage_id.into(), c.seq.into()],
        )
        .await?;
        Ok(match existing {
            None => ChunkRecord::NotRunning,
            Some(r) => {
                if r.object_key == c.key && r.size == c.size && r.sha256 == c.sha256 {
                    ChunkRecord::Duplicate
                } else {
                    ChunkRecord::Conflict
                }
            }
        })
    }

    /// Commits a backup: every storage claimed complete must hold exactly `chunk_count` recorded chunks
    /// summing to `stored_bytes`; then `running -> completed`. Returns `Err(reason)` inside `Ok` when the
    /// records do not match (the caller fails the execution).
    pub async fn complete_backup(
        &self,
        id: Uuid,
        attempt: i32,
        o: &BackupOutcome,
        check: impl FnOnce(&[CopySummary]) -> Result<(), String>,
    ) -> Result<Result<(), String>, DbErr> {
        let txn = self.conn.begin().await?;
        // The execution's row is locked first, so no chunk of this attempt is recorded while it is checked.
        let running = execute(
            &txn,
            "UPDATE execution SET lease_until = lease_until WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [id.into(), attempt.into()],
        )
        .await?;
        if running != 1 {
            txn.rollback().await?;
            return Ok(Err("stale attempt".into()));
        }
        let recorded = fetch_all::<CopySummaryRow>(
            &txn,
            "SELECT storage_id, count(*) AS chunks, coalesce(sum(size), 0)::bigint AS bytes, min(seq) AS min_seq, \
             max(seq) AS max_seq FROM backup_chunk WHERE execution_id = $1 AND attempt = $2 GROUP BY storage_id",
            [id.into(), attempt.into()],
        )
        .await?;
        let recorded: Vec<CopySummary> = recorded
            .into_iter()
            .map(|r| CopySummary {
                storage: r.storage_id,
                chunks: r.chunks,
                bytes: r.bytes,
                min_seq: r.min_seq,
                max_seq: r.max_seq,
            })
            .collect();
        if let Err(why) = check(&recorded) {
            txn.rollback().await?;
            return Ok(Err(why));
        }
        for sid in &o.storage_ids {
            execute(
                &txn,
                "INSERT INTO backup_copy (execution_id, storage_id, complete) VALUES ($1, $2, true)",
                [id.into(), (*sid).into()],
            )
            .await?;
        }
        let n = execute(
            &txn,
            "UPDATE execution SET status = 'completed', finished_at = now(), lease_until = NULL, raw_bytes = $3, \
             stored_bytes = $4, chunk_count = $5, sha256 = $6, manifest_key = $7, tool_version = $8, \
             server_version = $9, warnings = $10, encryption_key_id = $11, wrapped_key_sha256 = $12, \
             globals_key = $13, globals_size = $14, globals_sha256 = $15, trust_recorded = true, \
             table_counts = $16, layout_sha256 = $17 WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [
                id.into(),
                attempt.into(),
                o.raw_bytes.into(),
                o.stored_bytes.into(),
                o.chunk_count.into(),
                o.sha256.clone().into(),
                o.manifest_key.clone().into(),
                o.tool_version.clone().into(),
                o.server_version.clone().into(),
                serde_json::json!(o.warnings).into(),
                o.encryption_key_id.clone().into(),
                o.wrapped_key_sha256.clone().into(),
                o.globals.as_ref().map(|g| g.0.clone()).into(),
                o.globals.as_ref().map(|g| g.1).into(),
                o.globals.as_ref().map(|g| g.2.clone()).into(),
                o.table_counts.clone().into(),
                o.layout_sha256.clone().into(),
            ],
        )
        .await?;
        if n != 1 {
            txn.rollback().await?;
            return Ok(Err("stale attempt".into()));
        }
        txn.commit().await?;
        Ok(Ok(()))
    }

    /// `running -> completed` for a restore.
    pub async fn complete_restore(
        &self,
        id: Uuid,
        attempt: i32,
        raw_bytes: i64,
        observed: Option<serde_json::Value>,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE execution SET status = 'completed', finished_at = now(), lease_until = NULL, raw_bytes = $3, \
             drill_observed = $4 WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [id.into(), attempt.into(), raw_bytes.into(), observed.into()],
        )
        .await?
            == 1)
    }

    /// `running -> failed|cancelled` for the current attempt (or any attempt when `attempt` is None).
    pub async fn finish_failed(
        &self,
        id: Uuid,
        attempt: Option<i32>,
        error: &str,
        cancelled: bool,
    ) -> Result<bool, DbErr> {
        let status = if cancelled { Status::Cancelled } else { Status::Failed };
        Ok(execute(
            &self.conn,
            "UPDATE execution SET status = $3, error = $4, finished_at = now(), lease_until = NULL \
             WHERE id = $1 AND ($2::int IS NULL OR attempt = $2) AND status IN ('running', 'queued')",
            [id.into(), attempt.into(), status.into(), error.into()],
        )
        .await?
            == 1)
    }

    /// Appends a log line.
    pub async fn append_log(&self, id: Uuid, level: &str, message: &str) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "INSERT INTO execution_log (execution_id, level, message) VALUES ($1, $2, $3)",
            [id.into(), level.into(), message.into()],
        )
        .await
        .map(|_| ())
    }

    /// Log lines after row id `after`, oldest first.
    pub async fn logs(&self, id: Uuid, after: i64, limit: i64) -> Result<Vec<LogLine>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT id, at, level, message FROM execution_log WHERE execution_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
            [id.into(), after.into(), limit.into()],
        )
        .await
    }

    /// Completed backups, newest first.
    pub async fn list_backups(&self, datasource: Option<Uuid>, page: Page) -> Result<Vec<Execution>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {EX_COLS} FROM execution WHERE operation = 'backup' AND status = 'completed' \
                 AND ($1::uuid IS NULL OR datasource_id = $1) ORDER BY finished_at DESC, id DESC OFFSET $2 LIMIT $3"
            ),
            [datasource.into(), page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Storages holding a complete copy of a backup.
    pub async fn backup_storage_ids(&self, id: Uuid) -> Result<Vec<Uuid>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Sid {
            storage_id: Uuid,
        }
        let rows: Vec<Sid> = fetch_all(
            &self.conn,
            "SELECT storage_id FROM backup_copy WHERE execution_id = $1 AND complete ORDER BY storage_id",
            [id.into()],
        )
        .await?;
        Ok(rows.into_iter().map(|r| r.storage_id).collect())
    }

    /// Chunks of one attempt, by storage then position.
    pub async fn chunks(&self, id: Uuid, attempt: i32) -> Result<Vec<Chunk>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT storage_id, seq, object_key, size, sha256 FROM backup_chunk \
             WHERE execution_id = $1 AND attempt = $2 ORDER BY storage_id, seq",
            [id.into(), attempt.into()],
        )
        .await
    }

    /// Live progress of a running attempt (visible to every replica's Watch).
    pub async fn update_progress(
        &self,
        id: Uuid,
        attempt: i32,
        raw: i64,
        stored: i64,
        chunks: i32,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "UPDATE execution SET raw_bytes = $3, stored_bytes = $4, chunk_count = $5 \
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [id.into(), attempt.into(), raw.into(), stored.into(), chunks.into()],
        )
        .await
        .map(|_| ())
    }

    /// `queued -> cancelled`.
    pub async fn cancel_queued(&self, id: Uuid, reason: &str) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE execution SET status = 'cancelled', error = $2, finished_at = now() WHERE id = $1 AND status = 'queued'",
            [id.into(), reason.into()],
        )
        .await?
            == 1)
    }

    /// A failed attempt goes back to the queue, to be claimed again after `backoff_secs`.
    pub async fn requeue(&self, id: Uuid, attempt: i32, backoff_secs: i32, error: &str) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE execution SET status = 'queued', lease_until = NULL, error = $4, \
             not_before = now() + make_interval(secs => $3) WHERE id = $1 AND attempt = $2 AND status = 'running'",
            [id.into(), attempt.into(), f64::from(backoff_secs).into(), error.into()],
        )
        .await?
            == 1)
    }

    /// Deletes a finished execution that is not a completed backup; false when it is unknown or not allowed.
    pub async fn delete_finished_execution(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "DELETE FROM execution WHERE id = $1 AND status IN ('failed', 'cancelled', 'completed') \
             AND NOT (operation = 'backup' AND status = 'completed')",
            [id.into()],
        )
        .await?
            == 1)
    }

    /// Deletes a backup's rows (chunks, copies and logs go by cascade).
    pub async fn delete_backup_rows(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(&self.conn, "DELETE FROM execution WHERE id = $1 AND operation = 'backup'", [id.into()]).await? == 1)
    }

    /// A storage no longer holds a copy of a backup (its objects were deleted).
    pub async fn drop_copy(&self, id: Uuid, storage: Uuid) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "DELETE FROM backup_copy WHERE execution_id = $1 AND storage_id = $2",
            [id.into(), storage.into()],
        )
        .await?;
        execute(
            &self.conn,
            "DELETE FROM backup_chunk WHERE execution_id = $1 AND storage_id = $2",
            [id.into(), storage.into()],
        )
        .await
        .map(|_| ())
    }

    /// Every chunk of every attempt of an execution (for deleting objects).
    pub async fn chunks_all_attempts(&self, id: Uuid) -> Result<Vec<Chunk>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT storage_id, seq, object_key, size, sha256 FROM backup_chunk WHERE execution_id = $1 \
             ORDER BY storage_id, attempt, seq",
            [id.into()],
        )
        .await
    }
}
