//! Scheduled scrubbing: a job may verify its newest backup on a cron of its own (`verify_cron`, read in the
//! job's time zone, with `next_verify_at` as the compare-and-set slot like `next_run_at`), verify each backup
//! right after it completes (`verify_after_backup`), and cap the read rate of these verifies
//! (`verify_read_rate`, bytes per second, 0 = the controller's default). At most one verify per backup is
//! queued or running at a time: a partial unique index makes a second one impossible even between replicas.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0014_scrub"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job ADD COLUMN verify_cron TEXT NOT NULL DEFAULT '';
                 ALTER TABLE backup_job ADD COLUMN verify_after_backup BOOLEAN NOT NULL DEFAULT false;
                 ALTER TABLE backup_job ADD COLUMN verify_read_rate BIGINT NOT NULL DEFAULT 0 \
                     CHECK (verify_read_rate >= 0);
                 ALTER TABLE backup_job ADD COLUMN next_verify_at TIMESTAMPTZ;
                 CREATE UNIQUE INDEX execution_one_active_verify ON execution (source_backup_id) \
                     WHERE operation = 'verify' AND status IN ('queued', 'running')",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS execution_one_active_verify;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS next_verify_at;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS verify_read_rate;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS verify_after_backup;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS verify_cron",
            )
            .await
            .map(|_| ())
    }
}
