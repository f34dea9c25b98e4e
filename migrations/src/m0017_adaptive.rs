//! Adaptive compression: a job may let the agent choose the zstd level per compression job between two
//! bounds (both NULL: the fixed `compression_level`).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0017_adaptive"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job ADD COLUMN compression_min_level INTEGER, \
                 ADD COLUMN compression_max_level INTEGER, \
                 ADD CONSTRAINT backup_job_adaptive CHECK ((compression_min_level IS NULL) = \
                 (compression_max_level IS NULL) AND (compression_min_level IS NULL OR \
                 compression_min_level <= compression_max_level))",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job DROP CONSTRAINT IF EXISTS backup_job_adaptive, \
                 DROP COLUMN IF EXISTS compression_min_level, DROP COLUMN IF EXISTS compression_max_level",
            )
            .await
            .map(|_| ())
    }
}
