//! Source databases: reusing (`--keep-data`) or generating each data set in each engine (pgbench: `pgbench -i`
//! for PostgreSQL, the SEQUENCE engine for MariaDB; the others: see `dataset`), and measuring its size and rows.

use std::{process::Stdio, time::Instant};

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, MySqlConnection, PgConnection};

use crate::{
    args::Args,
    created::Created,
    dataset::Dataset,
    engine::{HOST, Kind, PG_USER, my_url, pg_url},
    plain::{timed, tool},
};

pub(crate) struct Source {
    pub(crate) dataset: Dataset,
    pub(crate) name: String,
    pub(crate) bytes: u64,
    /// Rows over all its tables (what every restore must hold too).
    pub(crate) rows: i64,
    /// Seconds spent generating it; `None` when an existing one was reused.
    pub(crate) generated: Option<f64>,
}

pub(crate) async fn prepare_source(
    kind: Kind,
    dataset: Dataset,
    args: &Args,
    created: &mut Created,
) -> anyhow::Result<Source> {
    let name = dataset.source_db(kind, args);
    let want = dataset.expected_rows(args);
    let exists = match kind {
        Kind::Postgres => {
            let mut c = PgConnection::connect(&pg_url("postgres")).await.context("connect to PostgreSQL")?;
            let e = sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut c)
                .await?;
            c.close().await?;
            e
        }
        Kind::Mariadb => {
            let mut c = MySqlConnection::connect(&my_url()).await.context("connect to MariaDB")?;
            let n =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?")
                    .bind(&name)
                    .fetch_one(&mut c)
                    .await?;
            c.close().await?;
            n > 0
        }
    };
    let reusable = exists && args.keep_data && kind.rows(&name).await.is_ok_and(|n| n == want);
    let generated = if reusable {
        println!("[{}] reusing {name} (--keep-data)", kind.short());
        None
    } else {
        if exists {
            println!("[{}] dropping the existing {name} to generate it afresh", kind.short());
            kind.drop_db(&name).await?;
        }
        kind.create_db(&name).await?;
        if !args.keep_data {
            created.track_db(kind, &name);
        }
        println!("[{}] generating {name}: {} ...", kind.short(), dataset.describe(args));
        let start = Instant::now();
        match (dataset, kind) {
            (Dataset::Pgbench, Kind::Postgres) => {
                let mut c = tool("pgbench");
                c.args(["-i", "-q", "-s", &args.scale.to_string(), "-h", HOST, "-p", "5432", "-U", PG_USER, &name])
                    .stdout(Stdio::null());
                timed(c, "pgbench -i").await?;
            }
            (Dataset::Pgbench, Kind::Mariadb) => generate_mariadb(&name, args.scale).await?,
            (d, k) => d.generate(k, &name, args).await?,
        }
        Some(start.elapsed().as_secs_f64())
    };
    let bytes = match kind {
        Kind::Postgres => {
            let mut c = PgConnection::connect(&pg_url("postgres")).await?;
            let b = sqlx::query_scalar::<_, i64>("SELECT pg_database_size($1)::bigint")
                .bind(&name)
                .fetch_one(&mut c)
                .await?;
            c.close().await?;
            u64::try_from(b).unwrap_or(0)
        }
        Kind::Mariadb => {
            let mut c = MySqlConnection::connect(&my_url()).await?;
            for t in kind.tables(&name).await? {
                c.execute(sqlx::AssertSqlSafe(format!("ANALYZE TABLE `{name}`.`{t}`"))).await?;
            }
            let b = sqlx::query_scalar::<_, u64>(
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) \
                 FROM information_schema.tables WHERE table_schema = ?",
            )
            .bind(&name)
            .fetch_one(&mut c)
            .await?;
            c.close().await?;
            b
        }
    };
    let rows = kind.rows(&name).await?;
    anyhow::ensure!(rows == want || dataset == Dataset::Pgbench, "{name} holds {rows} rows, {want} were generated");
    Ok(Source { dataset, name, bytes, rows, generated })
}

/// pgbench's four tables and row counts, generated with MariaDB's SEQUENCE engine (`seq_A_to_B` tables).
/// pgbench stores the account filler as `char(84)` holding 84 blanks, which pg_dump writes out in full;
/// MariaDB strips trailing blanks of CHAR columns, so the filler is a VARCHAR(84) of 84 blanks here to give
/// the dump the same size and shape.
async fn generate_mariadb(db: &str, scale: u32) -> anyhow::Result<()> {
    // The seq_* tables exist only within a current database.
    let mut c = MySqlConnection::connect(&format!("{}/{db}", my_url())).await?;
    let ddl = [
        format!(
            "CREATE TABLE `{db}`.pgbench_branches (bid INT NOT NULL PRIMARY KEY, bbalance INT, filler CHAR(88)) \
             ENGINE=InnoDB"
        ),
        format!(
            "CREATE TABLE `{db}`.pgbench_tellers (tid INT NOT NULL PRIMARY KEY, bid INT, tbalance INT, \
             filler CHAR(84)) ENGINE=InnoDB"
        ),
        format!(
            "CREATE TABLE `{db}`.pgbench_accounts (aid INT NOT NULL PRIMARY KEY, bid INT, abalance INT, \
             filler VARCHAR(84)) ENGINE=InnoDB"
        ),
        format!(
            "CREATE TABLE `{db}`.pgbench_history (tid INT, bid INT, aid INT, delta INT, mtime DATETIME, \
             filler CHAR(22)) ENGINE=InnoDB"
        ),
        format!("INSERT INTO `{db}`.pgbench_branches SELECT seq, 0, NULL FROM seq_1_to_{scale}"),
        format!(
            "INSERT INTO `{db}`.pgbench_tellers SELECT seq, (seq - 1) DIV 10 + 1, 0, NULL FROM seq_1_to_{}",
            scale * 10
        ),
    ];
    for s in ddl {
        c.execute(sqlx::AssertSqlSafe(s)).await?;
    }
    // Accounts in batches of 500 000 rows (one transaction each), in primary-key order.
    let total = u64::from(scale) * 100_000;
    let mut from = 1u64;
    while from <= total {
        let to = (from + 499_999).min(total);
        c.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO `{db}`.pgbench_accounts SELECT seq, (seq - 1) DIV 100000 + 1, 0, REPEAT(' ', 84) \
             FROM seq_{from}_to_{to}"
        )))
        .await?;
        from = to + 1;
    }
    c.close().await?;
    Ok(())
}
