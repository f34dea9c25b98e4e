//! Revocation everywhere: each certificate issued to an agent is recorded with its sha256 fingerprint, and the
//! agent row names its current one (the last issued, by enrollment or renewal), so a superseded certificate
//! or one of a revoked agent is refused at session open, renewal and heartbeat. A queued execution records
//! why it waits (its datasource's agent is revoked), so the reason is logged once, not on every round.
//! Agents enrolled before this migration have no current certificate recorded until their next renewal.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0008_revocation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE issued_cert ADD COLUMN sha256 TEXT;
                 CREATE UNIQUE INDEX issued_cert_sha256 ON issued_cert (sha256) WHERE sha256 IS NOT NULL;
                 ALTER TABLE agent ADD COLUMN current_cert_sha256 TEXT;
                 ALTER TABLE execution ADD COLUMN waiting_reason TEXT",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution DROP COLUMN IF EXISTS waiting_reason;
                 ALTER TABLE agent DROP COLUMN IF EXISTS current_cert_sha256;
                 DROP INDEX IF EXISTS issued_cert_sha256;
                 ALTER TABLE issued_cert DROP COLUMN IF EXISTS sha256",
            )
            .await
            .map(|_| ())
    }
}
