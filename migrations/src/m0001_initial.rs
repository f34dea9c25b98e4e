//! The initial schema: PKI, operators, agents, datasources, storages, jobs, executions, chunks, logs, audit.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

const UP: &str = r#"
CREATE TABLE pki_ca (
    id              SMALLINT PRIMARY KEY CHECK (id = 1),
    cert_pem        TEXT NOT NULL,
    key_ciphertext  BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE admin_user (
    id              UUID PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A single admin: at most one row.
CREATE UNIQUE INDEX admin_user_single ON admin_user ((true));

CREATE TABLE session (
    id              UUID PRIMARY KEY,
    token_hash      BYTEA NOT NULL UNIQUE,
    user_id         UUID NOT NULL REFERENCES admin_user(id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    revoked_at      TIMESTAMPTZ
);

CREATE TABLE agent (
    id                  UUID PRIMARY KEY,
    hostname            TEXT NOT NULL DEFAULT '',
    version             TEXT NOT NULL DEFAULT '',
    tools               JSONB NOT NULL DEFAULT '[]',
    enrolled_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at   TIMESTAMPTZ,
    connected           BOOLEAN NOT NULL DEFAULT false,
    cert_expires_at     TIMESTAMPTZ,
    revoked_at          TIMESTAMPTZ
);

CREATE TABLE join_token (
    id              UUID PRIMARY KEY,
    token_hash      BYTEA NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    used_at         TIMESTAMPTZ,
    used_by_agent   UUID REFERENCES agent(id) ON DELETE SET NULL
);

CREATE TABLE issued_cert (
    serial          TEXT PRIMARY KEY,
    agent_id        UUID NOT NULL REFERENCES agent(id) ON DELETE CASCADE,
    not_before      TIMESTAMPTZ NOT NULL,
    not_after       TIMESTAMPTZ NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX issued_cert_agent ON issued_cert (agent_id);

CREATE TABLE datasource (
    id                      UUID PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    engine                  TEXT NOT NULL CHECK (engine IN ('postgres', 'mysql', 'mariadb')),
    host                    TEXT NOT NULL,
    port                    INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    database_name           TEXT NOT NULL,
    username                TEXT NOT NULL,
    password_ciphertext     BYTEA,
    tls_mode                TEXT NOT NULL,
    agent_id                UUID NOT NULL REFERENCES agent(id),
    labels                  JSONB NOT NULL DEFAULT '{}',
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE storage (
    id                      UUID PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    kind                    TEXT NOT NULL CHECK (kind IN ('local', 's3', 'gcs', 'azure')),
    config                  JSONB NOT NULL,
    credentials_ciphertext  BYTEA,
    agent_id                UUID REFERENCES agent(id),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE backup_job (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    datasource_id       UUID NOT NULL REFERENCES datasource(id),
    cron                TEXT NOT NULL DEFAULT '',
    time_zone           TEXT NOT NULL DEFAULT 'UTC',
    max_backups         INTEGER NOT NULL DEFAULT 0,
    keep_daily          INTEGER NOT NULL DEFAULT 0,
    keep_weekly         INTEGER NOT NULL DEFAULT 0,
    keep_monthly        INTEGER NOT NULL DEFAULT 0,
    storage_strategy    TEXT NOT NULL CHECK (storage_strategy IN ('fallback', 'replicate')),
    compression_level   INTEGER NOT NULL DEFAULT 3,
    enabled             BOOLEAN NOT NULL DEFAULT true,
    next_run_at         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE backup_job_storage (
    job_id      UUID NOT NULL REFERENCES backup_job(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    storage_id  UUID NOT NULL REFERENCES storage(id),
    PRIMARY KEY (job_id, position),
    UNIQUE (job_id, storage_id)
);

CREATE TABLE execution (
    id                      UUID PRIMARY KEY,
    operation               TEXT NOT NULL CHECK (operation IN ('backup', 'restore', 'verify')),
    status                  TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    job_id                  UUID REFERENCES backup_job(id) ON DELETE SET NULL,
    datasource_id           UUID NOT NULL REFERENCES datasource(id),
    agent_id                UUID NOT NULL REFERENCES agent(id),
    attempt                 INTEGER NOT NULL DEFAULT 0,
    lease_until             TIMESTAMPTZ,
    scheduled_for           TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at              TIMESTAMPTZ,
    finished_at             TIMESTAMPTZ,
    error                   TEXT,
    raw_bytes               BIGINT NOT NULL DEFAULT 0,
    stored_bytes            BIGINT NOT NULL DEFAULT 0,
    chunk_count             INTEGER NOT NULL DEFAULT 0,
    sha256                  TEXT,
    manifest_key            TEXT,
    tool_version            TEXT,
    server_version          TEXT,
    source_backup_id        UUID REFERENCES execution(id) ON DELETE SET NULL,
    target_database         TEXT,
    options                 JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX execution_status ON execution (status, created_at);
CREATE INDEX execution_job ON execution (job_id, created_at DESC);
CREATE INDEX execution_datasource ON execution (datasource_id, created_at DESC);
-- One queued or running backup per (job, scheduled slot).
CREATE UNIQUE INDEX execution_job_slot ON execution (job_id, scheduled_for) WHERE scheduled_for IS NOT NULL;

CREATE TABLE backup_copy (
    execution_id    UUID NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
    storage_id      UUID NOT NULL REFERENCES storage(id),
    complete        BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (execution_id, storage_id)
);

CREATE TABLE backup_chunk (
    execution_id    UUID NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    storage_id      UUID NOT NULL REFERENCES storage(id),
    seq             INTEGER NOT NULL,
    object_key      TEXT NOT NULL,
    size            BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    raw_bytes       BIGINT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, attempt, storage_id, seq)
);

CREATE TABLE execution_log (
    id              BIGSERIAL PRIMARY KEY,
    execution_id    UUID NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    level           TEXT NOT NULL,
    message         TEXT NOT NULL
);
CREATE INDEX execution_log_execution ON execution_log (execution_id, id);

CREATE TABLE health_check (
    id              BIGSERIAL PRIMARY KEY,
    target_kind     TEXT NOT NULL,
    target_id       UUID NOT NULL,
    checked_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    ok              BOOLEAN NOT NULL,
    latency_ms      INTEGER,
    error           TEXT
);
CREATE INDEX health_check_target ON health_check (target_kind, target_id, checked_at DESC);

CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    target_kind     TEXT NOT NULL,
    target_id       TEXT,
    outcome         TEXT NOT NULL,
    detail          TEXT
);
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
                "DROP TABLE IF EXISTS audit_log, health_check, execution_log, backup_chunk, backup_copy, \
                 execution, backup_job_storage, backup_job, storage, datasource, issued_cert, join_token, agent, \
                 session, admin_user, pki_ca CASCADE",
            )
            .await
            .map(|_| ())
    }
}
