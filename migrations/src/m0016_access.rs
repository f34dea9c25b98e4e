//! Teams: users (password, OIDC, service accounts) instead of the single admin, roles (three system roles
//! whose permissions live in code, and custom roles), scope rules limiting what a user or role sees, API
//! tokens, approvals of critical calls, and labels on storages (scope rules select on them). The existing
//! admin becomes a user holding the `admin` role.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0016_access"
    }
}

const UP: &str = r#"
ALTER TABLE admin_user RENAME TO app_user;
DROP INDEX IF EXISTS admin_user_single;
ALTER TABLE app_user
    ALTER COLUMN password_hash DROP NOT NULL,
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'password' CHECK (kind IN ('password', 'oidc', 'service')),
    ADD COLUMN disabled_at TIMESTAMPTZ,
    ADD COLUMN oidc_issuer TEXT,
    ADD COLUMN oidc_subject TEXT,
    ADD CONSTRAINT app_user_password CHECK ((kind = 'password') = (password_hash IS NOT NULL));
CREATE UNIQUE INDEX app_user_oidc ON app_user (oidc_issuer, oidc_subject) WHERE oidc_subject IS NOT NULL;

CREATE TABLE role (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    permissions     JSONB NOT NULL DEFAULT '[]',
    system          BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO role (id, name, description, system) VALUES
    ('00000000-0000-7000-8000-000000000001', 'viewer', 'reads everything except secrets; no restore, no download', true),
    ('00000000-0000-7000-8000-000000000002', 'operator', 'a viewer who also runs, cancels and verifies backups, runs drills, restores and downloads', true),
    ('00000000-0000-7000-8000-000000000003', 'admin', 'everything, including users, roles and approvals', true);

CREATE TABLE user_role (
    user_id         UUID NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    role_id         UUID NOT NULL REFERENCES role(id),
    PRIMARY KEY (user_id, role_id)
);
INSERT INTO user_role (user_id, role_id) SELECT id, '00000000-0000-7000-8000-000000000003' FROM app_user;

CREATE TABLE scope_rule (
    id              UUID PRIMARY KEY,
    user_id         UUID REFERENCES app_user(id) ON DELETE CASCADE,
    role_id         UUID REFERENCES role(id) ON DELETE CASCADE,
    effect          TEXT NOT NULL CHECK (effect IN ('allow', 'deny')),
    resource_kind   TEXT NOT NULL CHECK (resource_kind IN ('datasource', 'storage', 'job')),
    resource_id     UUID,
    labels          JSONB NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((user_id IS NULL) <> (role_id IS NULL))
);
CREATE INDEX scope_rule_user ON scope_rule (user_id);
CREATE INDEX scope_rule_role ON scope_rule (role_id);

CREATE TABLE api_token (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    token_hash      BYTEA NOT NULL UNIQUE,
    user_id         UUID NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    created_by      TEXT NOT NULL,
    role_id         UUID NOT NULL REFERENCES role(id),
    scopes          JSONB NOT NULL DEFAULT '[]',
    expires_at      TIMESTAMPTZ NOT NULL,
    last_used_at    TIMESTAMPTZ,
    revoked_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

CREATE TABLE approval (
    id              UUID PRIMARY KEY,
    action          TEXT NOT NULL,
    target_kind     TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    summary         TEXT NOT NULL,
    parameters      JSONB NOT NULL,
    requested_by    UUID NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    requested_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected', 'used')),
    decided_by      TEXT,
    decided_at      TIMESTAMPTZ,
    reason          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX approval_requested ON approval (requested_at DESC);

ALTER TABLE storage ADD COLUMN labels JSONB NOT NULL DEFAULT '{}';
ALTER TABLE audit_log ADD COLUMN actor_token TEXT;
"#;

const DOWN: &str = r#"
ALTER TABLE audit_log DROP COLUMN IF EXISTS actor_token;
ALTER TABLE storage DROP COLUMN IF EXISTS labels;
DROP TABLE IF EXISTS approval, api_token, scope_rule, user_role, role;
DELETE FROM app_user WHERE kind <> 'password';
DROP INDEX IF EXISTS app_user_oidc;
ALTER TABLE app_user DROP CONSTRAINT IF EXISTS app_user_password,
    DROP COLUMN IF EXISTS kind, DROP COLUMN IF EXISTS disabled_at,
    DROP COLUMN IF EXISTS oidc_issuer, DROP COLUMN IF EXISTS oidc_subject,
    ALTER COLUMN password_hash SET NOT NULL;
ALTER TABLE app_user RENAME TO admin_user;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await.map(|_| ())
    }
}
