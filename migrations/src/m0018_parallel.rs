//! Parallel PostgreSQL backups: a job's stream count (`backup_job.parallel`, 1 = one `pg_dump` stream) and,
//! recorded at completion next to the wrapped key's binding, the sha256 of a parallel backup's manifest
//! layout (`execution.layout_sha256`, NULL for a single stream), which restores and verifies check.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0018_parallel"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE backup_job ADD COLUMN parallel INTEGER NOT NULL DEFAULT 1, \
             ADD CONSTRAINT backup_job_parallel CHECK (parallel BETWEEN 1 AND 16)",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE execution ADD COLUMN layout_sha256 TEXT, \
             ADD CONSTRAINT execution_layout_sha256 CHECK (layout_sha256 ~ '^[0-9a-f]{64}$')",
        )
        .await
        .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE execution DROP CONSTRAINT IF EXISTS execution_layout_sha256, \
             DROP COLUMN IF EXISTS layout_sha256",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE backup_job DROP CONSTRAINT IF EXISTS backup_job_parallel, DROP COLUMN IF EXISTS parallel",
        )
        .await
        .map(|_| ())
    }
}
