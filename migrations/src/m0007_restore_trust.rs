//! What a restore trusts, recorded at backup completion: the globals object (key, size, sha256) and the
//! wrapped data key's sha256. `trust_recorded` tells a backup completed with these recorded (agent protocol
//! 4) from an older one, whose globals a restore never replays.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0007_restore_trust"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution \
                   ADD COLUMN trust_recorded BOOLEAN NOT NULL DEFAULT false, \
                   ADD COLUMN globals_key TEXT, \
                   ADD COLUMN globals_size BIGINT, \
                   ADD COLUMN globals_sha256 TEXT, \
                   ADD COLUMN wrapped_key_sha256 TEXT, \
                   ADD CONSTRAINT execution_globals_whole CHECK ((globals_key IS NULL) = (globals_size IS NULL) \
                     AND (globals_key IS NULL) = (globals_sha256 IS NULL))",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE execution DROP CONSTRAINT IF EXISTS execution_globals_whole, \
                   DROP COLUMN IF EXISTS wrapped_key_sha256, DROP COLUMN IF EXISTS globals_sha256, \
                   DROP COLUMN IF EXISTS globals_size, DROP COLUMN IF EXISTS globals_key, \
                   DROP COLUMN IF EXISTS trust_recorded",
            )
            .await
            .map(|_| ())
    }
}
