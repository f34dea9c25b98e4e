//! Restore drills: per-table row counts recorded with a backup (`execution.table_counts`, JSON list of
//! `{schema, table, rows, exact}`; NULL when the agent could not count or predates agent protocol 7), what a
//! drill's restore observed (`execution.drill_observed`, JSON), the drills (`restore_drill`, with the
//! scheduler's `next_run_at`) and their runs with the evidence (`restore_drill_run`). A run references its
//! restore execution; deleting that execution leaves the run (and its evidence) in place.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0012_drills"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution ADD COLUMN table_counts JSONB;
                 ALTER TABLE execution ADD COLUMN drill_observed JSONB;
                 CREATE TABLE restore_drill (
                     id                   UUID PRIMARY KEY,
                     name                 TEXT NOT NULL UNIQUE,
                     datasource_id        UUID NOT NULL REFERENCES datasource(id) ON DELETE CASCADE,
                     target_datasource_id UUID NOT NULL REFERENCES datasource(id) ON DELETE CASCADE,
                     cron                 TEXT,
                     time_zone            TEXT NOT NULL DEFAULT 'UTC',
                     max_backup_age_secs  BIGINT NOT NULL CHECK (max_backup_age_secs > 0),
                     tolerance_percent    DOUBLE PRECISION NOT NULL DEFAULT 0,
                     assert_row_counts    BOOLEAN NOT NULL DEFAULT true,
                     sql_assertions       JSONB NOT NULL DEFAULT '[]'::jsonb,
                     schema_expect        JSONB NOT NULL DEFAULT '{}'::jsonb,
                     enabled              BOOLEAN NOT NULL DEFAULT true,
                     scratch_prefix       TEXT NOT NULL DEFAULT 'dg_drill_',
                     next_run_at          TIMESTAMPTZ,
                     created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                     updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 CREATE TABLE restore_drill_run (
                     id                   UUID PRIMARY KEY,
                     drill_id             UUID NOT NULL REFERENCES restore_drill(id) ON DELETE CASCADE,
                     status               TEXT NOT NULL CHECK (status IN ('running', 'passed', 'failed')),
                     trigger              TEXT NOT NULL,
                     started_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
                     finished_at          TIMESTAMPTZ,
                     execution_id         UUID REFERENCES execution(id) ON DELETE SET NULL,
                     backup_id            UUID,
                     backup_completed_at  TIMESTAMPTZ,
                     target_datasource_id UUID NOT NULL,
                     scratch_database     TEXT,
                     evidence             JSONB NOT NULL DEFAULT '{}'::jsonb,
                     error                TEXT
                 );
                 CREATE INDEX restore_drill_run_by_drill ON restore_drill_run (drill_id, started_at DESC);
                 CREATE INDEX restore_drill_run_running ON restore_drill_run (status) WHERE status = 'running'",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS restore_drill_run;
                 DROP TABLE IF EXISTS restore_drill;
                 ALTER TABLE execution DROP COLUMN IF EXISTS drill_observed;
                 ALTER TABLE execution DROP COLUMN IF EXISTS table_counts",
            )
            .await
            .map(|_| ())
    }
}
