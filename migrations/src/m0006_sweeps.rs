//! Sweeps of ended attempts: every backup attempt that ends without becoming the backup gets a row per storage
//! it may have written to; the cleanup worker deletes everything below the attempt's prefix on every round
//! (after the grace period) until a round finds it empty, so late writes of a zombie agent go too.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0006_sweeps"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE attempt_sweep (
                    execution_id UUID NOT NULL,
                    attempt INT NOT NULL,
                    storage_id UUID NOT NULL,
                    prefix TEXT NOT NULL,
                    ended_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    swept_at TIMESTAMPTZ,
                    done BOOLEAN NOT NULL DEFAULT false,
                    PRIMARY KEY (execution_id, attempt, storage_id)
                );
                CREATE INDEX attempt_sweep_pending ON attempt_sweep (ended_at) WHERE NOT done",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP TABLE IF EXISTS attempt_sweep").await.map(|_| ())
    }
}
