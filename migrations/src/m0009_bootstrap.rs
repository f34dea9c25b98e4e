//! The one-time bootstrap token of `AuthService/Setup`: until an admin exists (and none is configured), the
//! first replica to start stores the hash of a fresh token here and hands the token to whoever runs the
//! controller (a 0600 file, or once in its log); `Setup` consumes it together with creating the admin.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0009_bootstrap"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE bootstrap_token (
                    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
                    token_hash BYTEA NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP TABLE IF EXISTS bootstrap_token").await.map(|_| ())
    }
}
