//! PostgreSQL pieces of a parallel backup and restore. Backup: one REPEATABLE READ transaction exports its
//! snapshot, lists the tables `pg_dump` would dump the data of and locks them (ACCESS SHARE, as `pg_dump`
//! does, so no DDL changes a table under the backup), and stays open until every stream has read; each data
//! stream opens its own connection that imports that snapshot and runs `COPY … TO STDOUT` per table or per
//! ctid page range of a large table. Restore: `COPY … FROM STDIN` per segment on a connection to the target.
//! Every identifier is quoted; the encoding name comes from the server (backup) or a checked layout (restore).

use secrecy::ExposeSecret;

use dg_common::{
    manifest::{PageRange, Segment, SequenceValue},
    protocol::DatabaseTarget,
};
use futures::stream::BoxStream;
use sqlx::{Connection, Row};

use super::postgres::{self, Route, quote_ident};
use crate::error::{PipelineError, PipelineResult};

/// Tables locked per `LOCK TABLE` statement.
const LOCK_BATCH: usize = 500;

fn sql_err(t: &DatabaseTarget, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Connection(dg_common::redact::redact(&e.to_string(), &[t.password.expose_secret()]))
}

/// A table whose data the backup holds.
#[derive(Clone, Debug)]
pub struct Table {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns copied (not generated, not dropped), in order.
    pub columns: Vec<String>,
    /// Heap pages when the snapshot was taken.
    pub pages: u64,
}

/// The open transaction whose snapshot every stream reads; it holds the tables' locks until released.
pub struct Snapshot {
    /// The exported snapshot id.
    pub id: String,
    /// The database's encoding (the `COPY` text is in it).
    pub encoding: String,
    /// Tables whose data is backed up, largest first.
    pub tables: Vec<Table>,
    /// Every sequence's value, read once the snapshot was taken.
    pub sequences: Vec<SequenceValue>,
    /// Extensions with configuration tables whose data `pg_dump` would dump (a parallel backup does not).
    pub extension_config: Vec<String>,
    conn: sqlx::PgConnection,
    _route: Route,
}

/// Ordinary and unlogged tables outside the system schemas that are not members of an extension: the tables
/// whose data `pg_dump` dumps by default (extension configuration tables marked for dumping are not included).
/// `attgenerated` needs PostgreSQL 12.
const TABLES: &str = "SELECT n.nspname AS s, c.relname AS t, \
       (pg_relation_size(c.oid) / current_setting('block_size')::int8) AS pages, \
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) AS cols \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                       AND d.deptype = 'e') \
     ORDER BY 3 DESC, 1, 2";

/// The sequences whose values `pg_dump` dumps (not members of an extension).
const SEQUENCES: &str = "SELECT n.nspname AS s, c.relname AS q FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                       AND d.deptype = 'e') \
     ORDER BY 1, 2";

/// Session settings of every connection of a parallel backup or restore (those `pg_dump` uses for data).
fn session_settings(encoding: &str) -> String {
    format!(
        "SET client_encoding = '{encoding}'; SET DateStyle = ISO; SET IntervalStyle = postgres; \
         SET extra_float_digits = 3; SET statement_timeout = 0; SET lock_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET row_security = off"
    )
}

/// Exports the snapshot of a new REPEATABLE READ transaction on the source, lists and locks its tables.
pub async fn export(t: &DatabaseTarget) -> PipelineResult<Snapshot> {
    let (mut conn, route) = postgres::connect(t, &t.database).await?;
    let encoding: String = sqlx::query_scalar(
        "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| sql_err(t, e))?;
    if !encoding.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(PipelineError::Invalid(format!("database encoding {encoding:?} is not an encoding name")));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(session_settings(&encoding)))
        .execute(&mut conn)
        .await
        .map_err(|e| sql_err(t, e))?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(|e| sql_err(t, e))?;
    let id: String =
        sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut conn).await.map_err(|e| sql_err(t, e))?;
    let rows = sqlx::query(TABLES).fetch_all(&mut conn).await.map_err(|e| sql_err(t, e))?;
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        let pages: i64 = r.try_get("pages").map_err(|e| sql_err(t, e))?;
        tables.push(Table {
            schema: r.try_get("s").map_err(|e| sql_err(t, e))?,
            name: r.try_get("t").map_err(|e| sql_err(t, e))?,
            columns: r.try_get("cols").map_err(|e| sql_err(t, e))?,
            pages: u64::try_from(pages).unwrap_or(0),
        });
    }
    let extension_config: Vec<String> =
        sqlx::query_scalar("SELECT extname::text FROM pg_extension WHERE cardinality(extconfig) > 0 ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| sql_err(t, e))?;
    let names = sqlx::query(SEQUENCES).fetch_all(&mut conn).await.map_err(|e| sql_err(t, e))?;
    let mut sequences = Vec::with_capacity(names.len());
    for r in names {
        let (schema, name): (String, String) =
            (r.try_get("s").map_err(|e| sql_err(t, e))?, r.try_get("q").map_err(|e| sql_err(t, e))?);
        let read = format!("SELECT last_value, is_called FROM {}.{}", quote_ident(&schema), quote_ident(&name));
        let v = sqlx::query(sqlx::AssertSqlSafe(read)).fetch_one(&mut conn).await.map_err(|e| sql_err(t, e))?;
        let (last_value, is_called) =
            (v.try_get("last_value").map_err(|e| sql_err(t, e))?, v.try_get("is_called").map_err(|e| sql_err(t, e))?);
        sequences.push(SequenceValue { schema, name, last_value, is_called });
    }
    for batch in tables.chunks(LOCK_BATCH) {
        let names: Vec<String> =
            batch.iter().map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))).collect();
        let lock = format!("LOCK TABLE ONLY {} IN ACCESS SHARE MODE", names.join(", "));
        sqlx::raw_sql(sqlx::AssertSqlSafe(lock)).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
    }
    Ok(Snapshot { id, encoding, tables, sequences, extension_config, conn, _route: route })
}

impl Snapshot {
    /// Ends the transaction (after every stream has read), releasing the snapshot and the locks.
    pub async fn release(mut self) {
        let _ = sqlx::raw_sql("COMMIT").execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// One part of the table data: a whole table or a page range of one.
#[derive(Clone, Debug)]
pub struct Part {
    /// The table.
    pub table: Table,
    /// Pages read; `None`: the whole table.
    pub pages: Option<PageRange>,
}

impl Part {
    /// Pages this part reads (an open-ended range counts its table's pages after `from`).
    pub fn weight(&self) -> u64 {
        match self.pages {
            None => self.table.pages,
            Some(PageRange { from, to }) => to.unwrap_or(self.table.pages.max(from + 1)) - from,
        }
    }

    fn columns(&self) -> String {
        self.table.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    fn name(&self) -> String {
        format!("{}.{}", quote_ident(&self.table.schema), quote_ident(&self.table.name))
    }

    /// The `COPY … TO STDOUT` reading this part.
    pub fn copy_out(&self) -> String {
        let cols = self.columns();
        match self.pages {
            None if cols.is_empty() => format!("COPY {} TO STDOUT", self.name()),
            None => format!("COPY {} ({cols}) TO STDOUT", self.name()),
            Some(PageRange { from, to }) => {
                let upper = to.map(|to| format!(" AND ctid < '({to},0)'::tid")).unwrap_or_default();
                format!(
                    "COPY (SELECT {cols} FROM ONLY {} WHERE ctid >= '({from},0)'::tid{upper}) TO STDOUT",
                    self.name()
                )
            }
        }
    }

    /// The segment this part became, once read.
    pub fn segment(&self, raw_bytes: u64, rows: u64) -> Segment {
        Segment {
            schema: self.table.schema.clone(),
            table: self.table.name.clone(),
            columns: self.table.columns.clone(),
            pages: self.pages,
            raw_bytes,
            rows,
        }
    }
}

/// Smallest page range a table is split into (64 MiB of 8 KiB pages), and the largest.
const MIN_RANGE_PAGES: u64 = 8192;
const MAX_RANGE_PAGES: u64 = 131_072;

/// Splits the tables into parts for `streams` streams, largest first: a table larger than a range (the data's
/// pages over four parts per stream, within 64 MiB..1 GiB of pages) is read by ctid page ranges when `split`
/// (PostgreSQL 14 scans a ctid range without reading the rest of the table), the last range open-ended so that
/// nothing appended to the table's file after it was measured is missed.
pub fn parts(tables: &[Table], streams: u32, split: bool) -> Vec<Part> {
    let total: u64 = tables.iter().map(|t| t.pages).sum();
    let range = (total / (u64::from(streams.max(1)) * 4)).clamp(MIN_RANGE_PAGES, MAX_RANGE_PAGES);
    let mut out = Vec::new();
    for t in tables {
        if !split || t.pages <= range {
            out.push(Part { table: t.clone(), pages: None });
            continue;
        }
        let mut from = 0;
        while from < t.pages {
            let to = (from + range < t.pages).then_some(from + range);
            out.push(Part { table: t.clone(), pages: Some(PageRange { from, to }) });
            from += range;
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.weight()));
    out
}

/// A connection reading in an exported snapshot.
pub struct Reader {
    conn: sqlx::PgConnection,
    _route: Route,
}

/// Opens a connection to the source that imports snapshot `id`.
pub async fn reader(t: &DatabaseTarget, id: &str, encoding: &str) -> PipelineResult<Reader> {
    let (mut conn, route) = postgres::connect(t, &t.database).await?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(PipelineError::Invalid(format!("snapshot id {id:?}")));
    }
    let begin = format!(
        "{}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'",
        session_settings(encoding)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(begin)).execute(&mut conn).await.map_err(|e| sql_err(t, e))?;
    Ok(Reader { conn, _route: route })
}

impl Reader {
    /// Starts `COPY … TO STDOUT` of a part.
    pub async fn copy_out<'c>(
        &'c mut self,
        t: &DatabaseTarget,
        part: &Part,
    ) -> PipelineResult<BoxStream<'c, sqlx::Result<bytes::Bytes>>> {
        self.conn.copy_out_raw(&part.copy_out()).await.map_err(|e| sql_err(t, e))
    }

    /// Ends the reading transaction.
    pub async fn close(mut self) {
        let _ = sqlx::raw_sql("COMMIT").execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// A connection loading segments into the target database.
pub struct Loader {
    conn: sqlx::PgConnection,
    _route: Route,
}

/// Opens a loading connection to the target database, in the backup's encoding.
pub async fn loader(t: &DatabaseTarget, encoding: &str) -> PipelineResult<Loader> {
    let (mut conn, route) = postgres::connect(t, &t.database).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(session_settings(encoding)))
        .execute(&mut conn)
        .await
        .map_err(|e| sql_err(t, e))?;
    Ok(Loader { conn, _route: route })
}

/// The `COPY … FROM STDIN` loading a segment.
pub fn copy_in(g: &Segment) -> String {
    let name = format!("{}.{}", quote_ident(&g.schema), quote_ident(&g.table));
    if g.columns.is_empty() {
        format!("COPY {name} FROM STDIN")
    } else {
        let cols: Vec<String> = g.columns.iter().map(|c| quote_ident(c)).collect();
        format!("COPY {name} ({}) FROM STDIN", cols.join(", "))
    }
}

impl Loader {
    /// Starts loading a segment.
    pub async fn copy_in(
        &mut self,
        t: &DatabaseTarget,
        g: &Segment,
    ) -> PipelineResult<sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>> {
        self.conn.copy_in_raw(&copy_in(g)).await.map_err(|e| sql_err(t, e))
    }

    /// Sets a sequence to its backed-up state.
    pub async fn set_sequence(&mut self, t: &DatabaseTarget, q: &SequenceValue) -> PipelineResult<()> {
        sqlx::query("SELECT pg_catalog.setval($1::regclass, $2, $3)")
            .bind(format!("{}.{}", quote_ident(&q.schema), quote_ident(&q.name)))
            .bind(q.last_value)
            .bind(q.is_called)
            .execute(&mut self.conn)
            .await
            .map_err(|e| sql_err(t, e))?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, pages: u64) -> Table {
        Table { schema: "public".into(), name: name.into(), columns: vec!["id".into(), "a\"b".into()], pages }
    }

    #[test]
    fn large_tables_are_split_into_page_ranges_that_cover_them_and_small_ones_are_not() {
        let tables = vec![table("big", 100_000), table("small", 10), table("mid", 9000)];
        let parts = parts(&tables, 2, true);
        // 109,010 pages over 8 parts: ranges of 13,626 pages (above the 8,192 floor).
        let big: Vec<_> = parts.iter().filter(|p| p.table.name == "big").filter_map(|p| p.pages).collect();
        assert_eq!(big.len(), 8);
        let mut sorted = big.clone();
        sorted.sort_by_key(|r| r.from);
        assert_eq!(sorted[0].from, 0);
        for w in sorted.windows(2) {
            assert_eq!(w[0].to, Some(w[1].from), "contiguous ranges");
        }
        assert_eq!(sorted.last().and_then(|r| r.to), None, "the last range is open-ended");
        assert!(parts.iter().any(|p| p.table.name == "small" && p.pages.is_none()));
        assert!(parts.iter().any(|p| p.table.name == "mid" && p.pages.is_none()));
        assert!(parts.windows(2).all(|w| w[0].weight() >= w[1].weight()), "largest first");
        // Without ctid range scans (before PostgreSQL 14) nothing is split.
        assert!(super::parts(&tables, 2, false).iter().all(|p| p.pages.is_none()));
    }

    #[test]
    fn statements_quote_every_name() {
        let p = Part { table: table("t\"x", 5), pages: None };
        assert_eq!(p.copy_out(), "COPY \"public\".\"t\"\"x\" (\"id\", \"a\"\"b\") TO STDOUT");
        let r = Part { table: table("t", 5), pages: Some(PageRange { from: 8, to: Some(16) }) };
        assert_eq!(
            r.copy_out(),
            "COPY (SELECT \"id\", \"a\"\"b\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid) TO STDOUT"
        );
        let g = r.segment(10, 2);
        assert_eq!(copy_in(&g), "COPY \"public\".\"t\" (\"id\", \"a\"\"b\") FROM STDIN");
        let empty = Segment { columns: vec![], ..g };
        assert_eq!(copy_in(&empty), "COPY \"public\".\"t\" FROM STDIN");
    }
}
