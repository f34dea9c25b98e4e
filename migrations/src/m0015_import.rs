//! Catalog import: a backup registered by `ImportCatalog` from a storage's manifest (the controller's own
//! disaster recovery) is marked `imported`; it has no job, and its record was checked against the manifest
//! rather than produced by an agent's reports to this controller.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0015_import"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE execution ADD COLUMN imported BOOLEAN NOT NULL DEFAULT false")
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE execution DROP COLUMN IF EXISTS imported")
            .await
            .map(|_| ())
    }
}
