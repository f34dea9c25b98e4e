//! Verify results per copy: each complete copy of a backup records the outcome of the last verify that read it
//! (`intact`, `damaged` or `missing`), when, by which verify execution, and what was wrong (JSON: the damaged
//! chunks by seq with the fault, manifest and stream problems). A copy never verified has no status and is
//! used as before; a `damaged` or `missing` one is skipped by restores and downloads until a later verify
//! finds it intact.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0011_verify"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_copy ADD COLUMN verify_status TEXT \
                     CHECK (verify_status IN ('intact', 'damaged', 'missing'));
                 ALTER TABLE backup_copy ADD COLUMN verified_at TIMESTAMPTZ;
                 ALTER TABLE backup_copy ADD COLUMN verify_execution_id UUID;
                 ALTER TABLE backup_copy ADD COLUMN verify_detail JSONB NOT NULL DEFAULT '{}'::jsonb",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_copy DROP COLUMN IF EXISTS verify_detail;
                 ALTER TABLE backup_copy DROP COLUMN IF EXISTS verify_execution_id;
                 ALTER TABLE backup_copy DROP COLUMN IF EXISTS verified_at;
                 ALTER TABLE backup_copy DROP COLUMN IF EXISTS verify_status",
            )
            .await
            .map(|_| ())
    }
}
