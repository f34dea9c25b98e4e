//! The two engines (`Kind`), where their servers are, and how their plain dump and restore tools are invoked;
//! also creating, dropping and counting databases.

use std::{path::Path, process::Stdio};

use anyhow::Context as _;
use dg_proto::v1 as pb;
use sqlx::{Connection as _, Executor as _, MySqlConnection, PgConnection};
use tokio::process::Command;

use crate::plain::tool;

pub(crate) const HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
pub(crate) const PG_USER: &str = "postgres";
const MY_PORT: u16 = 3306;
const MY_USER: &str = "root";

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Kind {
    #[value(alias = "pg", alias = "postgresql")]
    Postgres,
    Mariadb,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Mariadb => "MariaDB",
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            Kind::Postgres => "pg",
            Kind::Mariadb => "my",
        }
    }

    pub(crate) fn tools(self) -> &'static [&'static str] {
        match self {
            Kind::Postgres => &["pgbench", "pg_dump", "pg_restore"],
            Kind::Mariadb => &["mariadb-dump", "mariadb"],
        }
    }

    pub(crate) fn dump_tool(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump",
            Kind::Mariadb => "mariadb-dump",
        }
    }

    pub(crate) fn restore_tool(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_restore",
            Kind::Mariadb => "mariadb",
        }
    }

    /// Arguments of the dump tool (without the program), ending with the database.
    pub(crate) fn dump_args(self, db: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            Kind::Postgres => vec!["-h", HOST, "-p", "5432", "-U", PG_USER, "-Fc", "-Z0", db],
            Kind::Mariadb => vec![
                "-h",
                HOST,
                "-P",
                "3306",
                "-u",
                MY_USER,
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                db,
            ],
        };
        v.into_iter().map(str::to_owned).collect()
    }

    /// How the dump command is shown in the table.
    pub(crate) fn dump_display(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump -Fc -Z0",
            Kind::Mariadb => "mariadb-dump --single-transaction --routines --triggers --events",
        }
    }

    pub(crate) fn dump_cmd(self, db: &str) -> Command {
        let mut c = tool(self.dump_tool());
        c.args(self.dump_args(db));
        c
    }

    /// Plain restore of `file` into the existing database `db`.
    pub(crate) fn restore_cmd(self, db: &str, file: &Path) -> anyhow::Result<Command> {
        Ok(match self {
            Kind::Postgres => {
                let mut c = tool("pg_restore");
                c.args(["-h", HOST, "-p", "5432", "-U", PG_USER, "-d", db]).arg(file).stdout(Stdio::null());
                c
            }
            Kind::Mariadb => {
                let mut c = tool("mariadb");
                c.args(["-h", HOST, "-P", "3306", "-u", MY_USER, db])
                    .stdin(std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?)
                    .stdout(Stdio::null());
                c
            }
        })
    }

    pub(crate) fn pb(self) -> pb::Engine {
        match self {
            Kind::Postgres => pb::Engine::Postgres,
            Kind::Mariadb => pb::Engine::Mariadb,
        }
    }

    pub(crate) fn port(self) -> u16 {
        match self {
            Kind::Postgres => PG_PORT,
            Kind::Mariadb => MY_PORT,
        }
    }

    pub(crate) fn user(self) -> &'static str {
        match self {
            Kind::Postgres => PG_USER,
            Kind::Mariadb => MY_USER,
        }
    }

    pub(crate) async fn create_db(self, name: &str) -> anyhow::Result<()> {
        match self {
            Kind::Postgres => {
                let mut c = PgConnection::connect(&pg_url("postgres")).await?;
                c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).await?;
                c.close().await?;
            }
            Kind::Mariadb => {
                let mut c = MySqlConnection::connect(&my_url()).await?;
                c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`"))).await?;
                c.close().await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn drop_db(self, name: &str) -> anyhow::Result<()> {
        match self {
            Kind::Postgres => {
                let mut c = PgConnection::connect(&pg_url("postgres")).await?;
                c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))).await?;
                c.close().await?;
            }
            Kind::Mariadb => {
                let mut c = MySqlConnection::connect(&my_url()).await?;
                c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).await?;
                c.close().await?;
            }
        }
        Ok(())
    }

    /// The base tables of `db`.
    pub(crate) async fn tables(self, db: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            Kind::Postgres => {
                let mut c = PgConnection::connect(&pg_url(db)).await?;
                let t = sqlx::query_scalar::<_, String>(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
                )
                .fetch_all(&mut c)
                .await?;
                c.close().await?;
                t
            }
            Kind::Mariadb => {
                let mut c = MySqlConnection::connect(&my_url()).await?;
                let t = sqlx::query_scalar::<_, String>(
                    "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                     WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY 1",
                )
                .bind(db)
                .fetch_all(&mut c)
                .await?;
                c.close().await?;
                t
            }
        })
    }

    /// Rows of every base table of `db`, summed (exact counts).
    pub(crate) async fn rows(self, db: &str) -> anyhow::Result<i64> {
        let tables = self.tables(db).await?;
        let mut n = 0;
        match self {
            Kind::Postgres => {
                let mut c = PgConnection::connect(&pg_url(db)).await?;
                for t in &tables {
                    let q = format!("SELECT count(*) FROM \"{t}\"");
                    n += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q)).fetch_one(&mut c).await?;
                }
                c.close().await?;
            }
            Kind::Mariadb => {
                let mut c = MySqlConnection::connect(&my_url()).await?;
                for t in &tables {
                    let q = format!("SELECT COUNT(*) FROM `{db}`.`{t}`");
                    n += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q)).fetch_one(&mut c).await?;
                }
                c.close().await?;
            }
        }
        Ok(n)
    }
}

pub(crate) fn pg_url(db: &str) -> String {
    format!("postgres://{PG_USER}@{HOST}:{PG_PORT}/{db}")
}

pub(crate) fn my_url() -> String {
    format!("mysql://{MY_USER}@{HOST}:{MY_PORT}")
}
