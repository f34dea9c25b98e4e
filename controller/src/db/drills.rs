//! Persistence of restore drills and their runs (migration m0012): drill CRUD, the scheduler's
//! compare-and-set on `next_run_at`, runs (inserted `running`, finished once with a compare-and-set on
//! `status = 'running'`), and the row counts and drill observations kept on executions.

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use uuid::Uuid;

use super::{Db, Page, execute, fetch_all, fetch_one};
use crate::model::{DrillRun, DrillRunStatus, RestoreDrill};

const DRILL_COLS: &str = "id, name, datasource_id, target_datasource_id, cron, time_zone, max_backup_age_secs, \
     tolerance_percent, assert_row_counts, sql_assertions, schema_expect, enabled, scratch_prefix, next_run_at, created_at, \
     updated_at";
const RUN_COLS: &str = "id, drill_id, status, trigger, started_at, finished_at, execution_id, backup_id, \
     backup_completed_at, target_datasource_id, scratch_database, evidence, error";

/// A drill's stored fields (new or replaced whole by an update).
#[derive(Clone, Debug)]
pub struct DrillRecord {
    /// Unique name.
    pub name: String,
    /// Datasource whose backups are drilled.
    pub datasource_id: Uuid,
    /// Where scratch databases are created.
    pub target_datasource_id: Uuid,
    /// Cron (None: manual only).
    pub cron: Option<String>,
    /// Time zone.
    pub time_zone: String,
    /// Maximum backup age, seconds.
    pub max_backup_age_secs: i64,
    /// Tolerance, percent.
    pub tolerance_percent: f64,
    /// Compare row counts.
    pub assert_row_counts: bool,
    /// SQL assertions (JSON).
    pub sql_assertions: serde_json::Value,
    /// Schema minimums (JSON).
    pub schema_expect: serde_json::Value,
    /// Scheduled runs happen.
    pub enabled: bool,
    /// Scratch database name prefix.
    pub scratch_prefix: String,
}

/// A newest good backup candidate.
#[derive(Clone, Debug, sea_orm::FromQueryResult)]
pub struct GoodBackup {
    /// Backup (execution) id.
    pub id: Uuid,
    /// When it completed.
    pub finished_at: DateTime<Utc>,
}

/// A running drill run with the state of its restore execution.
#[derive(Clone, Debug, sea_orm::FromQueryResult)]
pub struct RunningRun {
    /// Run id.
    pub id: Uuid,
    /// Execution status (None: no execution, or it was deleted).
    pub execution_status: Option<String>,
}

impl Db {
    /// Inserts a drill; `None` when the name is taken.
    pub async fn insert_drill(&self, d: &DrillRecord) -> Result<Option<RestoreDrill>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO restore_drill (id, name, datasource_id, target_datasource_id, cron, time_zone, \
                 max_backup_age_secs, tolerance_percent, assert_row_counts, sql_assertions, schema_expect, enabled, \
                 scratch_prefix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (name) DO NOTHING \
                 RETURNING {DRILL_COLS}"
            ),
            [
                Uuid::new_v4().into(),
                d.name.clone().into(),
                d.datasource_id.into(),
                d.target_datasource_id.into(),
                d.cron.clone().into(),
                d.time_zone.clone().into(),
                d.max_backup_age_secs.into(),
                d.tolerance_percent.into(),
                d.assert_row_counts.into(),
                d.sql_assertions.clone().into(),
                d.schema_expect.clone().into(),
                d.enabled.into(),
                d.scratch_prefix.clone().into(),
            ],
        )
        .await
    }

    /// Replaces a drill's fields (the schedule is re-armed); `None` when missing.
    pub async fn update_drill(&self, id: Uuid, d: &DrillRecord) -> Result<Option<RestoreDrill>, DbErr> {
        fetch_one(
            &self.conn,
            &format!(
                "UPDATE restore_drill SET name = $2, datasource_id = $3, target_datasource_id = $4, cron = $5, \
                 time_zone = $6, max_backup_age_secs = $7, tolerance_percent = $8, assert_row_counts = $9, \
                 sql_assertions = $10, schema_expect = $11, enabled = $12, next_run_at = NULL, updated_at = now() \
                 WHERE id = $1 RETURNING {DRILL_COLS}"
            ),
            [
                id.into(),
                d.name.clone().into(),
                d.datasource_id.into(),
                d.target_datasource_id.into(),
                d.cron.clone().into(),
                d.time_zone.clone().into(),
                d.max_backup_age_secs.into(),
                d.tolerance_percent.into(),
                d.assert_row_counts.into(),
                d.sql_assertions.clone().into(),
                d.schema_expect.clone().into(),
                d.enabled.into(),
            ],
        )
        .await
    }

    /// Whether another drill than `id` has `name`.
    pub async fn drill_name_taken(&self, name: &str, id: Uuid) -> Result<bool, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            #[allow(dead_code)]
            id: Uuid,
        }
        let row: Option<Row> = fetch_one(
            &self.conn,
            "SELECT id FROM restore_drill WHERE name = $1 AND id <> $2",
            [name.into(), id.into()],
        )
        .await?;
        Ok(row.is_some())
    }

    /// One drill.
    pub async fn drill(&self, id: Uuid) -> Result<Option<RestoreDrill>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {DRILL_COLS} FROM restore_drill WHERE id = $1"), [id.into()]).await
    }

    /// A page of drills by name.
    pub async fn list_drills(&self, page: Page) -> Result<Vec<RestoreDrill>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {DRILL_COLS} FROM restore_drill ORDER BY name OFFSET $1 LIMIT $2"),
            [page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// Deletes a drill and its runs; false when missing.
    pub async fn delete_drill(&self, id: Uuid) -> Result<bool, DbErr> {
        Ok(execute(&self.conn, "DELETE FROM restore_drill WHERE id = $1", [id.into()]).await? == 1)
    }

    /// Enabled drills with a cron (the scheduler's list).
    pub async fn scheduled_drills(&self) -> Result<Vec<RestoreDrill>, DbErr> {
        fetch_all(
            &self.conn,
            &format!("SELECT {DRILL_COLS} FROM restore_drill WHERE enabled AND cron IS NOT NULL ORDER BY id"),
            [],
        )
        .await
    }

    /// Moves a drill's slot from `from` to `to`; true only for the caller whose update landed.
    pub async fn move_drill_slot(
        &self,
        id: Uuid,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE restore_drill SET next_run_at = $3 WHERE id = $1 AND next_run_at IS NOT DISTINCT FROM $2",
            [id.into(), from.into(), to.into()],
        )
        .await?
            == 1)
    }

    /// The newest completed backup of a datasource with a copy a verify has not found damaged or missing,
    /// not being deleted, completed at or after `since`.
    pub async fn newest_good_backup(
        &self,
        datasource: Uuid,
        since: Option<DateTime<Utc>>,
    ) -> Result<Option<GoodBackup>, DbErr> {
        fetch_one(
            &self.conn,
            "SELECT e.id, e.finished_at FROM execution e WHERE e.operation = 'backup' AND e.status = 'completed' \
             AND NOT e.deleting AND e.datasource_id = $1 AND ($2::timestamptz IS NULL OR e.finished_at >= $2) AND EXISTS (SELECT 1 FROM \
             backup_copy c WHERE c.execution_id = e.id AND c.complete AND coalesce(c.verify_status, 'intact') = \
             'intact') ORDER BY e.finished_at DESC LIMIT 1",
            [datasource.into(), since.into()],
        )
        .await
    }

    /// The newest completed backup of a datasource whatever its age (to say how old it is).
    pub async fn newest_backup_any_age(&self, datasource: Uuid) -> Result<Option<GoodBackup>, DbErr> {
        self.newest_good_backup(datasource, None).await
    }

    /// Inserts a run `running` (or already `failed` with `error`).
    pub async fn insert_drill_run(
        &self,
        drill: &RestoreDrill,
        trigger: &str,
        failed: Option<&str>,
    ) -> Result<DrillRun, DbErr> {
        let status = if failed.is_some() { DrillRunStatus::Failed } else { DrillRunStatus::Running };
        fetch_one(
            &self.conn,
            &format!(
                "INSERT INTO restore_drill_run (id, drill_id, status, trigger, target_datasource_id, error, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6::text IS NULL THEN NULL ELSE now() END) RETURNING {RUN_COLS}"
            ),
            [
                Uuid::new_v4().into(),
                drill.id.into(),
                status.into(),
                trigger.into(),
                drill.target_datasource_id.into(),
                failed.map(str::to_owned).into(),
            ],
        )
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)
    }

    /// Records the backup, scratch database and restore execution of a running run.
    pub async fn set_drill_run_restore(
        &self,
        id: Uuid,
        backup: &GoodBackup,
        scratch: &str,
        execution: Uuid,
    ) -> Result<(), DbErr> {
        execute(
            &self.conn,
            "UPDATE restore_drill_run SET backup_id = $2, backup_completed_at = $3, scratch_database = $4, \
             execution_id = $5 WHERE id = $1 AND status = 'running'",
            [id.into(), backup.id.into(), backup.finished_at.into(), scratch.into(), execution.into()],
        )
        .await
        .map(|_| ())
    }

    /// Finishes a run once: `running -> passed|failed` with its evidence; false when already finished.
    pub async fn finish_drill_run(
        &self,
        id: Uuid,
        status: DrillRunStatus,
        evidence: serde_json::Value,
        error: Option<&str>,
    ) -> Result<bool, DbErr> {
        Ok(execute(
            &self.conn,
            "UPDATE restore_drill_run SET status = $2, evidence = $3, error = $4, finished_at = now() \
             WHERE id = $1 AND status = 'running'",
            [id.into(), status.into(), evidence.into(), error.map(str::to_owned).into()],
        )
        .await?
            == 1)
    }

    /// One run.
    pub async fn drill_run(&self, id: Uuid) -> Result<Option<DrillRun>, DbErr> {
        fetch_one(&self.conn, &format!("SELECT {RUN_COLS} FROM restore_drill_run WHERE id = $1"), [id.into()]).await
    }

    /// A drill's runs, newest first.
    pub async fn list_drill_runs(&self, drill: Uuid, page: Page) -> Result<Vec<DrillRun>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {RUN_COLS} FROM restore_drill_run WHERE drill_id = $1 ORDER BY started_at DESC, id \
                 OFFSET $2 LIMIT $3"
            ),
            [drill.into(), page.offset.into(), page.limit.into()],
        )
        .await
    }

    /// A drill's runs started in `[since, until)`, oldest first (the export).
    pub async fn drill_runs_between(
        &self,
        drill: Uuid,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<DrillRun>, DbErr> {
        fetch_all(
            &self.conn,
            &format!(
                "SELECT {RUN_COLS} FROM restore_drill_run WHERE drill_id = $1 AND ($2::timestamptz IS NULL OR \
                 started_at >= $2) AND ($3::timestamptz IS NULL OR started_at < $3) ORDER BY started_at, id"
            ),
            [drill.into(), since.into(), until.into()],
        )
        .await
    }

    /// Running runs with their restore execution's status.
    pub async fn running_drill_runs(&self) -> Result<Vec<RunningRun>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT r.id, e.status AS execution_status FROM restore_drill_run r LEFT JOIN execution e ON \
             e.id = r.execution_id WHERE r.status = 'running' AND (r.execution_id IS NOT NULL OR r.started_at < \
             now() - interval '10 minutes') ORDER BY r.started_at",
            [],
        )
        .await
    }

    /// Row counts recorded with a backup (None: not recorded).
    pub async fn backup_table_counts(
        &self,
        id: Uuid,
    ) -> Result<Option<Vec<dg_common::protocol::drill::TableCount>>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            table_counts: Option<serde_json::Value>,
        }
        let row: Option<Row> =
            fetch_one(&self.conn, "SELECT table_counts FROM execution WHERE id = $1", [id.into()]).await?;
        Ok(row.and_then(|r| r.table_counts).and_then(|v| serde_json::from_value(v).ok()))
    }

    /// What a drill's restore observed (None: nothing reported).
    pub async fn drill_observation(
        &self,
        id: Uuid,
    ) -> Result<Option<dg_common::protocol::drill::DrillObservation>, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            drill_observed: Option<serde_json::Value>,
        }
        let row: Option<Row> =
            fetch_one(&self.conn, "SELECT drill_observed FROM execution WHERE id = $1", [id.into()]).await?;
        Ok(row.and_then(|r| r.drill_observed).and_then(|v| serde_json::from_value(v).ok()))
    }
}
