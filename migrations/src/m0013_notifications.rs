//! RPO and notifications. Jobs gain a recovery-point objective, labels and the time their RPO breach began
//! (compare-and-set by the RPO task). Events are rows (an outbox): `notification_event` holds each fact once
//! (`dedup_key` is unique, so a second emit of the same fact is a no-op), `notification_inbox` the in-app inbox
//! item of every event, and `notification_delivery` one row per channel whose subscription matched, which the
//! delivery task claims (`FOR UPDATE SKIP LOCKED`), sends and records.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0013_notifications"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backup_job ADD COLUMN rpo_secs BIGINT NOT NULL DEFAULT 0;
                 ALTER TABLE backup_job ADD COLUMN labels JSONB NOT NULL DEFAULT '{}'::jsonb;
                 ALTER TABLE backup_job ADD COLUMN rpo_breached_since TIMESTAMPTZ;
                 CREATE TABLE notification_channel (
                     id UUID PRIMARY KEY,
                     name TEXT NOT NULL UNIQUE,
                     kind TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'email')),
                     config JSONB NOT NULL DEFAULT '{}'::jsonb,
                     secret_ciphertext BYTEA,
                     events JSONB NOT NULL,
                     selector JSONB NOT NULL DEFAULT '{}'::jsonb,
                     max_attempts INT NOT NULL,
                     timeout_secs INT NOT NULL,
                     enabled BOOLEAN NOT NULL DEFAULT true,
                     created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 CREATE TABLE notification_event (
                     id UUID PRIMARY KEY,
                     kind TEXT NOT NULL,
                     dedup_key TEXT NOT NULL UNIQUE,
                     job_id UUID,
                     datasource_id UUID,
                     storage_id UUID,
                     agent_id UUID,
                     execution_id UUID,
                     labels JSONB NOT NULL DEFAULT '{}'::jsonb,
                     summary TEXT NOT NULL,
                     payload JSONB NOT NULL DEFAULT '{}'::jsonb,
                     created_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 CREATE INDEX notification_event_created ON notification_event (created_at);
                 CREATE TABLE notification_inbox (
                     id UUID PRIMARY KEY REFERENCES notification_event(id) ON DELETE CASCADE,
                     read_at TIMESTAMPTZ,
                     created_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 CREATE INDEX notification_inbox_unread ON notification_inbox (created_at) WHERE read_at IS NULL;
                 CREATE TABLE notification_delivery (
                     id UUID PRIMARY KEY,
                     event_id UUID NOT NULL REFERENCES notification_event(id) ON DELETE CASCADE,
                     channel_id UUID NOT NULL REFERENCES notification_channel(id) ON DELETE CASCADE,
                     status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
                     attempts INT NOT NULL DEFAULT 0,
                     last_error TEXT NOT NULL DEFAULT '',
                     last_status INT,
                     next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                     delivered_at TIMESTAMPTZ,
                     created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                     updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                     UNIQUE (event_id, channel_id)
                 );
                 CREATE INDEX notification_delivery_due ON notification_delivery (next_attempt_at) \
                     WHERE status = 'pending';",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS notification_delivery;
                 DROP TABLE IF EXISTS notification_inbox;
                 DROP TABLE IF EXISTS notification_event;
                 DROP TABLE IF EXISTS notification_channel;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS rpo_breached_since;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS labels;
                 ALTER TABLE backup_job DROP COLUMN IF EXISTS rpo_secs",
            )
            .await
            .map(|_| ())
    }
}
