//! Attempts: an operator's cancellation is recorded on the execution, so whatever ends the running attempt
//! afterwards (the agent's answer, a lost lease, a missing heartbeat entry) ends it `cancelled`, never retried.
//! A backup being deleted is marked, so no restore of it is queued or started meanwhile. Whether a heartbeat
//! ever listed the current attempt tells a restore the agent never started (safe to retry) from one it lost.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0005_attempts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false; \
                 ALTER TABLE execution ADD COLUMN deleting BOOLEAN NOT NULL DEFAULT false; \
                 ALTER TABLE execution ADD COLUMN agent_listed BOOLEAN NOT NULL DEFAULT false",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution DROP COLUMN IF EXISTS cancel_requested; \
                 ALTER TABLE execution DROP COLUMN IF EXISTS deleting; \
                 ALTER TABLE execution DROP COLUMN IF EXISTS agent_listed",
            )
            .await
            .map(|_| ())
    }
}
