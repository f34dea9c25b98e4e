//! Retention that people can reason about: an explicit mode on the job (`count`, today's rule, or `gfs`:
//! grandfather-father-son tiers) with hourly and yearly tiers, a minimum count and a maximum age next to
//! the existing counts; and pinning, which keeps a completed backup whatever the policy says.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0010_retention"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job
                    ADD COLUMN retention_mode TEXT NOT NULL DEFAULT 'count' CHECK (retention_mode IN ('count', 'gfs')),
                    ADD COLUMN keep_hourly INTEGER NOT NULL DEFAULT 0,
                    ADD COLUMN keep_yearly INTEGER NOT NULL DEFAULT 0,
                    ADD COLUMN min_backups INTEGER NOT NULL DEFAULT 0,
                    ADD COLUMN max_age_secs BIGINT NOT NULL DEFAULT 0;
                ALTER TABLE execution
                    ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT false,
                    ADD COLUMN pin_reason TEXT;",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution DROP COLUMN IF EXISTS pinned, DROP COLUMN IF EXISTS pin_reason;
                ALTER TABLE backup_job DROP COLUMN IF EXISTS retention_mode, DROP COLUMN IF EXISTS keep_hourly,
                    DROP COLUMN IF EXISTS keep_yearly, DROP COLUMN IF EXISTS min_backups,
                    DROP COLUMN IF EXISTS max_age_secs;",
            )
            .await
            .map(|_| ())
    }
}
