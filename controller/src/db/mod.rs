//! Persistence: the only code that touches sea-orm. SQL is written out (PostgreSQL), parameters are always
//! bound, and state changes are compare-and-set updates whose miss is reported to the caller. Methods are
//! grouped by topic in the submodules, all on [`Db`].

mod access;
mod agents;
mod auth;
mod catalog;
mod drills;
mod executions;
mod gauges;
mod health;
mod import;
mod notify;
mod pki;
mod retention;
mod scrub;
mod sweeps;
mod verify;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement,
    TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;

pub use self::{
    access::{NewScopeRule, NewToken, OidcUser, UserChange},
    agents::{AgentStanding, Heartbeat, IssuedCert},
    auth::{ADMIN_ROLE_ID, PrincipalRow},
    catalog::Deletion,
    drills::{DrillRecord, GoodBackup, RunningRun},
    executions::{BackupOutcome, ChunkRecord, ChunkReport, CopySummary, DeleteMark, ExecutionFilter, NewExecution},
    gauges::{AgentGauge, DrillGauge, JobGauge, QueueGauge},
    health::AuditFilter,
    notify::{AttemptOutcome, ChannelRow, DeliveryFilter, DeliveryRow, EventRow, InboxRow, NewEventRow, RpoJobRow},
    scrub::{QueuedVerify, VerifyScheduledJob},
    sweeps::{OrphanAttempt, Sweep},
    verify::CopyVerdict,
};

/// Advisory lock key serialising migrations between replicas ("dgmigrat").
const MIGRATION_LOCK: i64 = 0x6467_6d69_6772_6174;

/// Handle on the controller database.
#[derive(Clone, Debug)]
pub struct Db {
    conn: DatabaseConnection,
}

impl Db {
    /// Connects with a bounded pool and fail-fast timeouts.
    pub async fn connect(url: &str) -> Result<Self, DbErr> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(16)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        Ok(Self { conn: Database::connect(opts).await? })
    }

    /// Applies pending migrations while holding a transaction-scoped advisory lock, so two replicas starting
    /// together apply them once.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        let txn = self.conn.begin().await?;
        txn.execute_raw(stmt("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK.into()])).await?;
        dg_migrations::Migrator::up(&txn, None).await?;
        txn.commit().await
    }

    /// Round trip to the database (health).
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.ping().await
    }

    /// Closes the pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

pub(crate) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

pub(crate) async fn fetch_one<T: FromQueryResult>(
    c: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Option<T>, DbErr> {
    match c.query_one_raw(stmt(sql, values)).await? {
        Some(row) => Ok(Some(T::from_query_result(&row, "")?)),
        None => Ok(None),
    }
}

pub(crate) async fn fetch_all<T: FromQueryResult>(
    c: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Vec<T>, DbErr> {
    c.query_all_raw(stmt(sql, values)).await?.iter().map(|r| T::from_query_result(r, "")).collect()
}

pub(crate) async fn execute(
    c: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<u64, DbErr> {
    Ok(c.execute_raw(stmt(sql, values)).await?.rows_affected())
}

/// A page request: offset-based with an opaque-looking token.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Rows to skip.
    pub offset: i64,
    /// Rows to return.
    pub limit: i64,
}

impl Page {
    /// The token of the page after this one, when `returned` filled it.
    pub fn next_token(&self, returned: usize) -> String {
        if (returned as i64) < self.limit { String::new() } else { format!("o{}", self.offset + self.limit) }
    }
}
