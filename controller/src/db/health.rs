//! Persistence of health checks and the audit log.

use sea_orm::{DbErr, Value};
use uuid::Uuid;

use super::{Db, Page, fetch_all, fetch_one};
use crate::model::{AuditEvent, HealthCheck};

/// Audit listing filters.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Actor.
    pub actor: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
}

impl Db {
    /// Records a check of a datasource or storage; returns the new check's id and whether the check before it
    /// (if any) passed.
    pub async fn insert_health(
        &self,
        kind: &str,
        id: Uuid,
        ok: bool,
        latency_ms: Option<i32>,
        error: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(i64, Option<bool>), DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct Row {
            id: i64,
            prev_ok: Option<bool>,
        }
        // The CTE reads the snapshot before the insert: `prev` is the check before this one.
        let row: Option<Row> = fetch_one(
            &self.conn,
            "WITH prev AS (SELECT ok FROM health_check WHERE target_kind = $1 AND target_id = $2                ORDER BY checked_at DESC, id DESC LIMIT 1),              ins AS (INSERT INTO health_check (target_kind, target_id, ok, latency_ms, error, detail)                VALUES ($1, $2, $3, $4, $5, $6) RETURNING id)              SELECT ins.id, (SELECT ok FROM prev) AS prev_ok FROM ins",
            [kind.into(), id.into(), ok.into(), latency_ms.into(), error.map(str::to_owned).into(), detail.map(str::to_owned).into()],
        )
        .await?;
        let row = row.ok_or(DbErr::RecordNotInserted)?;
        Ok((row.id, row.prev_ok))
    }

    /// Recent checks, newest first.
    pub async fn health_history(&self, kind: &str, id: Uuid, limit: i64) -> Result<Vec<HealthCheck>, DbErr> {
        fetch_all(
            &self.conn,
            "SELECT checked_at, ok, latency_ms, error, detail FROM health_check WHERE target_kind = $1 AND target_id = $2 \
             ORDER BY checked_at DESC, id DESC LIMIT $3",
            [kind.into(), id.into(), limit.into()],
        )
        .await
    }

    /// The most recent failed check.
    pub async fn last_health_error(&self, kind: &str, id: Uuid) -> Result<Option<HealthCheck>, DbErr> {
        fetch_one(
            &self.conn,
            "SELECT checked_at, ok, latency_ms, error, detail FROM health_check WHERE target_kind = $1 AND target_id = $2 \
             AND NOT ok ORDER BY checked_at DESC, id DESC LIMIT 1",
            [kind.into(), id.into()],
        )
        .await
    }

    /// Audit events, newest first.
    pub async fn list_audit(&self, f: &AuditFilter, page: Page) -> Result<Vec<AuditEvent>, DbErr> {
        let mut sql =
            String::from("SELECT id, at, actor, action, target_kind, target_id, outcome FROM audit_log WHERE true");
        let mut values: Vec<Value> = Vec::new();
        for (col, v) in [("actor", &f.actor), ("action", &f.action), ("target_id", &f.target_id)] {
            if let Some(v) = v {
                values.push(v.clone().into());
                sql.push_str(&format!(" AND {col} = ${}", values.len()));
            }
        }
        let n = values.len();
        sql.push_str(&format!(" ORDER BY id DESC OFFSET ${} LIMIT ${}", n + 1, n + 2));
        values.push(page.offset.into());
        values.push(page.limit.into());
        fetch_all(&self.conn, &sql, values).await
    }

    /// Enrolled, non-revoked agents.
    pub async fn count_active_agents(&self) -> Result<i64, DbErr> {
        #[derive(sea_orm::FromQueryResult)]
        struct N {
            n: i64,
        }
        Ok(fetch_one::<N>(&self.conn, "SELECT count(*) AS n FROM agent WHERE revoked_at IS NULL", [])
            .await?
            .map_or(0, |r| r.n))
    }

    /// Datasource ids (for the health task).
    pub async fn all_datasource_ids(&self) -> Result<Vec<Uuid>, DbErr> {
        ids(self, "SELECT id FROM datasource ORDER BY id").await
    }

    /// Storage ids (for the health task).
    pub async fn all_storage_ids(&self) -> Result<Vec<Uuid>, DbErr> {
        ids(self, "SELECT id FROM storage ORDER BY id").await
    }
}

async fn ids(db: &Db, sql: &str) -> Result<Vec<Uuid>, DbErr> {
    #[derive(sea_orm::FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    Ok(fetch_all::<Id>(&db.conn, sql, []).await?.into_iter().map(|r| r.id).collect())
}
