//! Row counts and restore-drill observations. At backup time the agent counts the rows of every table
//! ([`pg_snapshot_counts`]: exact, in the very snapshot `pg_dump --snapshot` dumps; [`my_counts`]: exact, in a
//! `WITH CONSISTENT SNAPSHOT` transaction opened just before the dump, so concurrent writes can differ by a
//! little). In a drill's restored scratch database it observes ([`observe`]): the time until the database
//! answers `SELECT 1`, row counts, schema object counts and the first value of each user query, every query
//! read-only under a statement timeout. The agent only observes; the controller judges. Called by the backup
//! pipeline (through `engine::dump`) and the restore pipeline. MariaDB/MySQL counts carry an empty schema: a
//! datasource is one database, and the scratch database has another name.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::{Connection, Row};

use dg_common::protocol::{
    DatabaseTarget, Engine,
    drill::{DrillChecks, DrillObservation, MAX_TABLES, MAX_VALUE_CHARS, QueryObservation, SchemaCounts, TableCount},
};

use super::{mysql, postgres};
use crate::error::{PipelineError, PipelineResult};

/// Statement timeout of every drill query and count.
const STATEMENT_TIMEOUT_SECS: u64 = 60;

/// An open PostgreSQL transaction whose snapshot `pg_dump --snapshot` imports; it must stay open (this value
/// alive) until the dump has started.
pub struct SnapshotHold {
    /// The snapshot id for `--snapshot`.
    pub snapshot: String,
    _conn: sqlx::PgConnection,
    _route: postgres::Route,
}

fn sql_err(t: &DatabaseTarget, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Connection(dg_common::redact::redact(&e.to_string(), &[t.password.expose_secret()]))
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_VALUE_CHARS).collect()
}

const PG_TABLES: &str = "SELECT n.nspname AS s, c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2";

async fn pg_count_all(conn: &mut sqlx::PgConnection, t: &DatabaseTarget) -> PipelineResult<Vec<TableCount>> {
    let tables = sqlx::query(PG_TABLES).fetch_all(&mut *conn).await.map_err(|e| sql_err(t, e))?;
    if tables.len() > MAX_TABLES {
        return Err(PipelineError::Invalid(format!("{} tables: more than {MAX_TABLES} are not counted", tables.len())));
    }
    let mut out = Vec::with_capacity(tables.len());
    for r in tables {
        let (schema, table): (String, String) =
            (r.try_get("s").map_err(|e| sql_err(t, e))?, r.try_get("t").map_err(|e| sql_err(t, e))?);
        let q =
            format!("SELECT count(*) AS n FROM {}.{}", postgres::quote_ident(&schema), postgres::quote_ident(&table));
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(&mut *conn).await.map_err(|e| sql_err(t, e))?;
        out.push(TableCount { schema, table, rows: u64::try_from(n).unwrap_or(0), exact: true });
    }
    Ok(out)
}

/// Opens a REPEATABLE READ transaction on the source, exports its snapshot and counts every ordinary table in
/// it. The returned hold keeps the transaction open for `pg_dump --snapshot`.
pub async fn pg_snapshot_counts(t: &DatabaseTarget) -> PipelineResult<(SnapshotHold, Vec<TableCount>)> {
    let (mut conn, route) = postgres::connect(t, &t.database).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(|e| sql_err(t, e))?;
    let snapshot: String =
        sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut conn).await.map_err(|e| sql_err(t, e))?;
    let counts = pg_count_all(&mut conn, t).await?;
    Ok((SnapshotHold { snapshot, _conn: conn, _route: route }, counts))
}

const MY_TABLES: &str = "SELECT TABLE_NAME AS t FROM information_schema.TABLES \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1";

async fn my_count_all(conn: &mut sqlx::MySqlConnection, t: &DatabaseTarget) -> PipelineResult<Vec<TableCount>> {
    let tables = sqlx::query(MY_TABLES).fetch_all(&mut *conn).await.map_err(|e| sql_err(t, e))?;
    if tables.len() > MAX_TABLES {
        return Err(PipelineError::Invalid(format!("{} tables: more than {MAX_TABLES} are not counted", tables.len())));
    }
    let mut out = Vec::with_capacity(tables.len());
    for r in tables {
        let table: String = r.try_get_unchecked("t").map_err(|e| sql_err(t, e))?;
        let q = format!("SELECT COUNT(*) AS n FROM {}", mysql::quote_ident(&table));
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(&mut *conn).await.map_err(|e| sql_err(t, e))?;
        out.push(TableCount { schema: String::new(), table, rows: u64::try_from(n).unwrap_or(0), exact: true });
    }
    Ok(out)
}

/// Exact row counts of every base table of the source database, in one `WITH CONSISTENT SNAPSHOT`
/// transaction (not the dump's own snapshot: MariaDB cannot share one).
pub async fn my_counts(t: &DatabaseTarget) -> PipelineResult<Vec<TableCount>> {
    let (mut conn, _guard) = mysql::connect(t, Some(&t.database)).await?;
    sqlx::raw_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(|e| sql_err(t, e))?;
    let counts = my_count_all(&mut conn, t).await;
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    let _ = conn.close().await;
    counts
}

/// Observes a drill's restored database; `started` is the attempt's start on this agent. Never fails: what
/// cannot be observed is said in `problem` (the controller then fails the assertions that needed it).
pub async fn observe(t: &DatabaseTarget, checks: &DrillChecks, started: Instant) -> DrillObservation {
    let mut o = DrillObservation::default();
    let res = match t.engine {
        Engine::Postgres => pg_observe(t, checks, started, &mut o).await,
        Engine::Mysql | Engine::Mariadb => my_observe(t, checks, started, &mut o).await,
    };
    if let Err(e) = res {
        o.problem = Some(clip(&e.to_string()));
    }
    o
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
}

async fn pg_observe(
    t: &DatabaseTarget,
    checks: &DrillChecks,
    started: Instant,
    o: &mut DrillObservation,
) -> PipelineResult<()> {
    let (mut conn, _route) = postgres::connect(t, &t.database).await?;
    sqlx::raw_sql("SELECT 1").execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
    o.queryable_after_ms = elapsed_ms(started);
    let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT_SECS}s'");
    if checks.table_counts || checks.schema_counts {
        sqlx::raw_sql(sqlx::AssertSqlSafe(begin.clone())).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
        if checks.table_counts {
            o.table_counts = Some(pg_count_all(&mut conn, t).await?);
        }
        if checks.schema_counts {
            let q = "SELECT \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') AS tables, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v','m') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') AS views, \
                (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') AS functions, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') AS sequences";
            let r = sqlx::query(q).fetch_one(&mut conn).await.map_err(|e| sql_err(t, e))?;
            let get =
                |c: &str| r.try_get::<i64, _>(c).map(|v| u64::try_from(v).unwrap_or(0)).map_err(|e| sql_err(t, e));
            o.schema = Some(SchemaCounts {
                tables: get("tables")?,
                views: get("views")?,
                functions: get("functions")?,
                sequences: get("sequences")?,
            });
        }
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    for q in &checks.queries {
        sqlx::raw_sql(sqlx::AssertSqlSafe(begin.clone())).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
        // The simple-query protocol returns every value as text, whatever its type.
        let res = sqlx::raw_sql(sqlx::AssertSqlSafe(q.sql.clone())).fetch_optional(&mut conn).await;
        o.queries.push(query_observation(
            t,
            &q.name,
            res.map(|r| r.map(|r| r.try_get_unchecked::<Option<String>, _>(0))),
        ));
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    let _ = conn.close().await;
    Ok(())
}

fn query_observation<E1: std::fmt::Display, E2: std::fmt::Display>(
    t: &DatabaseTarget,
    name: &str,
    res: Result<Option<Result<Option<String>, E2>>, E1>,
) -> QueryObservation {
    let redact = |e: String| clip(&dg_common::redact::redact(&e, &[t.password.expose_secret()]));
    match res {
        Ok(None) => QueryObservation { name: name.to_owned(), ..Default::default() },
        Ok(Some(Ok(v))) => {
            QueryObservation { name: name.to_owned(), has_row: true, first_value: v.map(|v| clip(&v)), error: None }
        }
        Ok(Some(Err(e))) => QueryObservation {
            name: name.to_owned(),
            has_row: true,
            first_value: None,
            error: Some(redact(format!("first column: {e}"))),
        },
        Err(e) => QueryObservation { name: name.to_owned(), error: Some(redact(e.to_string())), ..Default::default() },
    }
}

async fn my_observe(
    t: &DatabaseTarget,
    checks: &DrillChecks,
    started: Instant,
    o: &mut DrillObservation,
) -> PipelineResult<()> {
    let (mut conn, _guard) = mysql::connect(t, Some(&t.database)).await?;
    sqlx::raw_sql("SELECT 1").execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
    o.queryable_after_ms = elapsed_ms(started);
    // MariaDB bounds every statement (seconds); MySQL only SELECTs (milliseconds). Either may be refused.
    let timeout = if t.engine == Engine::Mariadb {
        format!("SET SESSION max_statement_time = {STATEMENT_TIMEOUT_SECS}")
    } else {
        format!("SET SESSION max_execution_time = {}", STATEMENT_TIMEOUT_SECS * 1000)
    };
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(timeout)).execute(&mut conn).await;
    let begin = "START TRANSACTION READ ONLY";
    if checks.table_counts || checks.schema_counts {
        sqlx::raw_sql(begin).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
        if checks.table_counts {
            o.table_counts = Some(my_count_all(&mut conn, t).await?);
        }
        if checks.schema_counts {
            let q = "SELECT \
                (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE') AS tables, \
                (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'VIEW') AS views, \
                (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()) AS functions, \
                (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'SEQUENCE') AS sequences";
            let r = sqlx::query(q).fetch_one(&mut conn).await.map_err(|e| sql_err(t, e))?;
            let get =
                |c: &str| r.try_get::<i64, _>(c).map(|v| u64::try_from(v).unwrap_or(0)).map_err(|e| sql_err(t, e));
            o.schema = Some(SchemaCounts {
                tables: get("tables")?,
                views: get("views")?,
                functions: get("functions")?,
                sequences: get("sequences")?,
            });
        }
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    for q in &checks.queries {
        sqlx::raw_sql(begin).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
        // A text-protocol query: every value arrives as text.
        let res = sqlx::raw_sql(sqlx::AssertSqlSafe(q.sql.clone())).fetch_optional(&mut conn).await;
        o.queries.push(query_observation(
            t,
            &q.name,
            res.map(|r| r.map(|r| r.try_get_unchecked::<Option<String>, _>(0))),
        ));
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Bounds a whole observation (the statement timeout bounds each query; this bounds their number).
pub const OBSERVE_DEADLINE: Duration = Duration::from_secs(15 * 60);
