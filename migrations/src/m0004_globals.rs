//! PostgreSQL globals (roles, tablespaces) in backups.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_globals"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE backup_job ADD COLUMN include_globals BOOLEAN NOT NULL DEFAULT false")
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE backup_job DROP COLUMN IF EXISTS include_globals")
            .await
            .map(|_| ())
    }
}
