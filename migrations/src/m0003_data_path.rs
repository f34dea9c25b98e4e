//! Data path additions: encryption key ids on jobs and backups, warnings on executions.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_data_path"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job ADD COLUMN encryption_key_id TEXT NOT NULL DEFAULT ''; \
                 ALTER TABLE execution ADD COLUMN encryption_key_id TEXT, \
                     ADD COLUMN warnings JSONB NOT NULL DEFAULT '[]'",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution DROP COLUMN IF EXISTS warnings, DROP COLUMN IF EXISTS encryption_key_id; \
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS encryption_key_id",
            )
            .await
            .map(|_| ())
    }
}
