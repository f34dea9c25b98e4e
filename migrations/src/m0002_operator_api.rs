//! Operator API additions: job retry policy, delayed retries, storage change time, audit filters.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_operator_api"
    }
}

const UP: &str = r#"
ALTER TABLE backup_job
    ADD COLUMN retry_max_attempts INTEGER NOT NULL DEFAULT 1 CHECK (retry_max_attempts BETWEEN 1 AND 10),
    ADD COLUMN retry_backoff_secs INTEGER NOT NULL DEFAULT 60 CHECK (retry_backoff_secs BETWEEN 0 AND 86400);
ALTER TABLE execution ADD COLUMN not_before TIMESTAMPTZ;
ALTER TABLE health_check ADD COLUMN detail TEXT;
CREATE INDEX audit_log_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_id, id DESC);
CREATE INDEX backup_job_storage_storage ON backup_job_storage (storage_id);
CREATE INDEX backup_chunk_storage ON backup_chunk (storage_id);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS audit_log_actor, audit_log_target, backup_job_storage_storage, backup_chunk_storage; \
                 ALTER TABLE execution DROP COLUMN IF EXISTS not_before; \
                 ALTER TABLE health_check DROP COLUMN IF EXISTS detail; \
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS retry_max_attempts, DROP COLUMN IF EXISTS retry_backoff_secs",
            )
            .await
            .map(|_| ())
    }
}
