//! Throwaway PostgreSQL databases (dropped on drop, even when the test fails) and a private PostgreSQL
//! instance with password authentication for the tests that need a login to fail.

use std::{path::PathBuf, process::Command, time::Duration};

use sqlx::{Connection, Executor, PgConnection};

use crate::{pg_admin_url, suffix};

/// A database created for one test.
pub struct TestDb {
    /// Database name.
    pub name: String,
    admin_url: String,
}

fn url_with_db(admin: &str, db: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{admin}/{db}"),
    }
}

impl TestDb {
    /// Creates `dgt_<prefix>_<random>` on the test server.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("dgt_{prefix}_{}", suffix());
        let admin_url = pg_admin_url();
        let mut c = PgConnection::connect(&admin_url).await?;
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).await?;
        c.close().await?;
        Ok(Self { name, admin_url })
    }

    /// A name on the test server that is not created (restores create it); dropped like the others.
    pub fn reserve(prefix: &str) -> Self {
        Self { name: format!("dgt_{prefix}_{}", suffix()), admin_url: pg_admin_url() }
    }

    /// URL of this database.
    pub fn url(&self) -> String {
        url_with_db(&self.admin_url, &self.name)
    }

    /// Row count and an ordered md5 of every row of `table` (which has an `id` column).
    pub async fn table_fingerprint(&self, table: &str) -> anyhow::Result<(i64, String)> {
        use sqlx::Row;
        let mut c = self.connect().await?;
        let row = c
            .fetch_one(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) AS n, coalesce(md5(string_agg(x::text, '|' ORDER BY id)), '') AS s FROM {table} x"
            )))
            .await?;
        Ok((row.try_get("n")?, row.try_get("s")?))
    }

    /// A connection to it.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url()).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut c = PgConnection::connect(&url).await?;
                c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))).await?;
                c.close().await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

/// A private PostgreSQL server with scram-sha-256 authentication on a free port, removed on drop.
pub struct ScramPostgres {
    /// Port.
    pub port: u16,
    /// Superuser password.
    pub password: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<_> =
        std::fs::read_dir("/usr/lib/postgresql")?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    versions.sort();
    versions.pop().map(|p| p.join("bin")).ok_or_else(|| anyhow::anyhow!("no PostgreSQL server binaries"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ScramPostgres {
    /// This server and its superuser login.
    pub fn server(&self) -> crate::DbServer {
        crate::DbServer {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: self.password.clone(),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.clone_runner().run_owned(tool, &args)
    }

    /// initdb + start (as the `postgres` user when running as root).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("dg-scram-pg-").tempdir()?;
        let as_postgres = Command::new("id").arg("-u").output()?.stdout.starts_with(b"0");
        if as_postgres {
            Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir.path()).status()?;
        }
        let me = Self { port: free_port()?, password: format!("pw-{}", suffix()), dir, bin: pg_bin()?, as_postgres };
        let data = me.dir.path().join("data");
        let pwfile = me.dir.path().join("pw");
        std::fs::write(&pwfile, &me.password)?;
        if as_postgres {
            Command::new("chown").arg("postgres:postgres").arg(&pwfile).status()?;
        }
        let args: Vec<String> = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "--pwfile",
            pwfile.to_str().unwrap_or_default(),
        ]
        .map(str::to_owned)
        .to_vec();
        // initdb takes seconds: off the async threads.
        let runner = me.clone_runner();
        tokio::task::spawn_blocking(move || runner.run_owned("initdb", &args)).await??;
        me.start_again().await?;
        Ok(me)
    }

    /// Starts the server again after [`ScramPostgres::stop`] (same port, same data).
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("log");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap_or_default(),
            "-w",
            "-t",
            "30",
            "start",
        ];
        let (me, args) = (self.clone_runner(), args.map(str::to_owned));
        tokio::task::spawn_blocking(move || me.run_owned("pg_ctl", &args)).await??;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Stops the server the way a crash does (`-m immediate`: every connection dropped, no checkpoint).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data").to_string_lossy().into_owned();
        let args = ["-D".to_owned(), data, "-m".into(), "immediate".into(), "-w".into(), "stop".into()];
        let me = self.clone_runner();
        tokio::task::spawn_blocking(move || me.run_owned("pg_ctl", &args)).await?
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    fn clone_runner(&self) -> Runner {
        Runner { bin: self.bin.clone(), as_postgres: self.as_postgres }
    }
}

/// Runs the server's tools (as `postgres` when needed) off the async runtime.
struct Runner {
    bin: PathBuf,
    as_postgres: bool,
}

impl Runner {
    fn run_owned(&self, tool: &str, args: &[String]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let status = cmd.args(args).stdout(std::process::Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "{tool} failed: {status}");
        Ok(())
    }
}

impl Drop for ScramPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
    }
}
