//! `dg-bench`: DataGuardian against the plain dump and restore tools, in one run, printing every figure and
//! ratio. Run on demand (never in CI); it reports and does not gate: the exit status is non-zero only when
//! something could not be measured.
//!
//! ```sh
//! cargo build --release -p dg-agent -p dg-tests && cargo run --release -p dg-tests --bin dg-bench -- --scale 50
//! ```
//!
//! What it needs: PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust), MariaDB on 127.0.0.1:3306 (`root`,
//! no password), Redis on 127.0.0.1:6379 (the controller's), `pgbench`, `pg_dump`, `pg_restore`,
//! `mariadb-dump`, `mariadb`, `zstd`, `sha256sum`, `bash`, and the release `dg-agent` next to this executable.
//!
//! Per engine, in this order: a dump to a file (reference, and the input of the plain restore), (a) the dump
//! alone into /dev/null, (b) the shell pipeline dump | zstd -3 -T2 | tee >(sha256sum) > file, (c) a
//! DataGuardian backup to a local storage (RunNow → completed), (d) the plain restore from the dump file into
//! a fresh database, (e) a DataGuardian restore into a fresh database (RestoreBackup → completed). The
//! controller runs in this process; the agent is the release binary in its own process, so its memory can be
//! read from /proc.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use dg_controller::config::Config;
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    suffix,
};
use sqlx::{Connection as _, Executor as _, MySqlConnection, PgConnection};
use tokio::process::{Child, Command};

const USAGE: &str = "\
usage: dg-bench [--scale N] [--keep-data] [--engines postgres,mariadb] [--work-dir DIR] [--runs N]

  --scale N          pgbench scale factor (N x 100 000 account rows; MariaDB gets the same shape)  [50]
  --keep-data        reuse the source databases dgbench_pg_s<N> / dgbench_my_s<N> if they exist, and keep them
  --engines LIST     comma-separated subset of postgres,mariadb                                     [both]
  --work-dir DIR     where dumps, the local storage and the agent state go                        [a temp dir]
  --runs N           run every step N times, interleaved, and compare medians                       [1]";

const HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
const PG_USER: &str = "postgres";
const MY_PORT: u16 = 3306;
const MY_USER: &str = "root";
/// zstd level of both the pipeline and the DataGuardian job.
const ZSTD_LEVEL: i32 = 3;
/// Targets.
const BACKUP_VS_DUMP: f64 = 1.1;
const RESTORE_VS_PLAIN: f64 = 1.1;
const RSS_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest a DataGuardian execution may take before the bench gives up on it.
const EXEC_LIMIT: Duration = Duration::from_secs(4 * 3600);
/// Message of an agent built before the engine existed.
const ONLY_PG: &str = "only PostgreSQL";

struct Args {
    scale: u32,
    runs: u32,
    keep_data: bool,
    engines: Vec<Kind>,
    work_dir: Option<PathBuf>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut args =
        Args { scale: 50, runs: 1, keep_data: false, engines: vec![Kind::Postgres, Kind::Mariadb], work_dir: None };
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| anyhow!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--scale" => {
                args.scale = value("--scale")?.parse().context("--scale must be a positive integer")?;
                anyhow::ensure!((1..=10_000).contains(&args.scale), "--scale must be between 1 and 10000");
            }
            "--keep-data" => args.keep_data = true,
            "--runs" => {
                args.runs = value("--runs")?.parse().context("--runs must be a positive integer")?;
                anyhow::ensure!((1..=100).contains(&args.runs), "--runs must be between 1 and 100");
            }
            "--engines" => {
                let mut engines = Vec::new();
                for e in value("--engines")?.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let k = match e {
                        "postgres" | "postgresql" | "pg" => Kind::Postgres,
                        "mariadb" => Kind::Mariadb,
                        other => bail!("unknown engine {other:?} (postgres, mariadb)"),
                    };
                    if !engines.contains(&k) {
                        engines.push(k);
                    }
                }
                anyhow::ensure!(!engines.is_empty(), "--engines names no engine");
                args.engines = engines;
            }
            "--work-dir" => args.work_dir = Some(PathBuf::from(value("--work-dir")?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dg-bench: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dg-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("dg-bench: some figures could not be measured (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dg-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    dg_common::tls::install_crypto_provider();
}

async fn run(args: Args) -> anyhow::Result<bool> {
    init_logging();
    let mut created = Created::default();
    // Ctrl-C or SIGTERM stop the bench; what it created is removed either way.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = bench(&args, &mut created) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    created.cleanup().await;
    result
}

// ---------------------------------------------------------------------------------------------------------
// Engines and their plain tools
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Postgres,
    Mariadb,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Mariadb => "MariaDB",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Postgres => "pg",
            Kind::Mariadb => "my",
        }
    }

    fn source_db(self, scale: u32) -> String {
        format!("dgbench_{}_s{scale}", self.short())
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Kind::Postgres => &["pgbench", "pg_dump", "pg_restore"],
            Kind::Mariadb => &["mariadb-dump", "mariadb"],
        }
    }

    fn dump_tool(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump",
            Kind::Mariadb => "mariadb-dump",
        }
    }

    fn restore_tool(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_restore",
            Kind::Mariadb => "mariadb",
        }
    }

    /// Arguments of the dump tool (without the program), ending with the database.
    fn dump_args(self, db: &str) -> Vec<String> {
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
    fn dump_display(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump -Fc -Z0",
            Kind::Mariadb => "mariadb-dump --single-transaction --routines --triggers --events",
        }
    }

    fn dump_cmd(self, db: &str) -> Command {
        let mut c = tool(self.dump_tool());
        c.args(self.dump_args(db));
        c
    }

    /// Plain restore of `file` into the existing database `db`.
    fn restore_cmd(self, db: &str, file: &Path) -> anyhow::Result<Command> {
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

    fn pb(self) -> pb::Engine {
        match self {
            Kind::Postgres => pb::Engine::Postgres,
            Kind::Mariadb => pb::Engine::Mariadb,
        }
    }

    fn port(self) -> u16 {
        match self {
            Kind::Postgres => PG_PORT,
            Kind::Mariadb => MY_PORT,
        }
    }

    fn user(self) -> &'static str {
        match self {
            Kind::Postgres => PG_USER,
            Kind::Mariadb => MY_USER,
        }
    }

    async fn create_db(self, name: &str) -> anyhow::Result<()> {
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

    async fn drop_db(self, name: &str) -> anyhow::Result<()> {
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

    /// Rows of `pgbench_accounts` in `db`.
    async fn accounts(self, db: &str) -> anyhow::Result<i64> {
        Ok(match self {
            Kind::Postgres => {
                let mut c = PgConnection::connect(&pg_url(db)).await?;
                let n = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pgbench_accounts").fetch_one(&mut c).await?;
                c.close().await?;
                n
            }
            Kind::Mariadb => {
                let mut c = MySqlConnection::connect(&my_url()).await?;
                let n = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM `{db}`.pgbench_accounts"
                )))
                .fetch_one(&mut c)
                .await?;
                c.close().await?;
                n
            }
        })
    }
}

fn pg_url(db: &str) -> String {
    format!("postgres://{PG_USER}@{HOST}:{PG_PORT}/{db}")
}

fn my_url() -> String {
    format!("mysql://{MY_USER}@{HOST}:{MY_PORT}")
}

/// A child process that is killed if the bench stops waiting for it.
fn tool(program: &str) -> Command {
    let mut c = Command::new(program);
    c.kill_on_drop(true).stdin(Stdio::null());
    c
}

/// Runs a prepared command to completion; returns the wall time. Stdout must have been set by the caller.
async fn timed(mut cmd: Command, what: &str) -> anyhow::Result<f64> {
    cmd.stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("start {what}"))?;
    let out = child.wait_with_output().await.with_context(|| format!("wait for {what}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(secs)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn first_line_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "not found".into())
}

// ---------------------------------------------------------------------------------------------------------
// Source databases
// ---------------------------------------------------------------------------------------------------------

struct Source {
    name: String,
    bytes: u64,
    accounts: i64,
    /// Seconds spent generating it; `None` when an existing one was reused.
    generated: Option<f64>,
}

async fn prepare_source(kind: Kind, args: &Args, created: &mut Created) -> anyhow::Result<Source> {
    let name = kind.source_db(args.scale);
    let want = i64::from(args.scale) * 100_000;
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
    let reusable = exists && args.keep_data && kind.accounts(&name).await.is_ok_and(|n| n == want);
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
        println!("[{}] generating {name} at scale {} ...", kind.short(), args.scale);
        let start = Instant::now();
        match kind {
            Kind::Postgres => {
                let mut c = tool("pgbench");
                c.args(["-i", "-q", "-s", &args.scale.to_string(), "-h", HOST, "-p", "5432", "-U", PG_USER, &name])
                    .stdout(Stdio::null());
                timed(c, "pgbench -i").await?;
            }
            Kind::Mariadb => generate_mariadb(&name, args.scale).await?,
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
            c.execute(sqlx::AssertSqlSafe(format!(
                "ANALYZE TABLE `{name}`.pgbench_accounts, `{name}`.pgbench_branches, `{name}`.pgbench_tellers, \
                 `{name}`.pgbench_history"
            )))
            .await?;
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
    let accounts = kind.accounts(&name).await?;
    Ok(Source { name, bytes, accounts, generated })
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

// ---------------------------------------------------------------------------------------------------------
// What the bench created, removed at the end
// ---------------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Created {
    dbs: Vec<(Kind, String)>,
    paths: Vec<PathBuf>,
    agent: Option<Child>,
    cluster: Option<Cluster>,
}

impl Created {
    fn track_db(&mut self, kind: Kind, name: &str) {
        self.dbs.push((kind, name.to_owned()));
    }

    async fn drop_db_now(&mut self, kind: Kind, name: &str) {
        match kind.drop_db(name).await {
            Ok(()) => self.dbs.retain(|(k, n)| !(*k == kind && n == name)),
            Err(e) => eprintln!("dg-bench: could not drop {name} yet: {e:#}"),
        }
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL.
    async fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                eprintln!("dg-bench: the agent did not stop on SIGTERM within 15 s; killing it");
                let _ = child.kill().await;
                None
            }
        }
    }

    async fn cleanup(&mut self) {
        self.stop_agent().await;
        if let Some(mut c) = self.cluster.take() {
            c.stop().await;
            drop(c); // drops the controller's database
        }
        for (kind, name) in std::mem::take(&mut self.dbs) {
            if let Err(e) = kind.drop_db(&name).await {
                eprintln!("dg-bench: could not drop {} database {name}: {e:#}", kind.label());
            }
        }
        for p in std::mem::take(&mut self.paths).into_iter().rev() {
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if let Err(e) = r
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("dg-bench: could not remove {}: {e}", p.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Agent memory
// ---------------------------------------------------------------------------------------------------------

/// A field of /proc/<pid>/status in bytes (the file gives kB).
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        let kb: u64 = l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Samples the agent's VmRSS every 100 ms and keeps the peak of the current phase and of the whole run.
struct RssSampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    overall: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let now = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(now));
        let overall = Arc::new(AtomicU64::new(now));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, o, s) = (peak.clone(), overall.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    p.fetch_max(rss, Ordering::Relaxed);
                    o.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { pid, peak, overall, stop }
    }

    fn sample(&self) -> Option<u64> {
        let rss = proc_status_bytes(self.pid, "VmRSS")?;
        self.overall.fetch_max(rss, Ordering::Relaxed);
        Some(rss)
    }

    fn begin(&self) {
        self.peak.store(self.sample().unwrap_or(0), Ordering::Relaxed);
    }

    fn end(&self) -> u64 {
        if let Some(rss) = self.sample() {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }

    /// Highest VmRSS sampled since the start.
    fn overall(&self) -> u64 {
        self.sample();
        self.overall.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------------------

/// Repeated measurements of one step.
#[derive(Clone, Debug, Default)]
struct Samples {
    secs: Vec<f64>,
    /// Bytes the step wrote (a file, or what DataGuardian stored), from its last run.
    bytes: Option<u64>,
    /// Highest agent VmRSS seen during any run of the step.
    rss: u64,
}

impl Samples {
    fn push(&mut self, secs: f64, bytes: Option<u64>, rss: u64) {
        self.secs.push(secs);
        if bytes.is_some() {
            self.bytes = bytes;
        }
        self.rss = self.rss.max(rss);
    }

    fn median(&self) -> Option<f64> {
        median(&self.secs)
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// "min..max" of several runs; empty for one.
fn spread(v: &[f64]) -> String {
    if v.len() < 2 {
        return String::new();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}..{max:.2}")
}

/// Why a DataGuardian step has no figure.
#[derive(Clone, Debug)]
enum Problem {
    /// The agent build does not support the engine.
    Unavailable(String),
    Failed(String),
}

/// A DataGuardian step: its runs, or why it stopped.
#[derive(Clone, Debug, Default)]
struct DgSamples {
    /// From the RPC call to seeing `completed`; bytes are the stored bytes.
    wall: Samples,
    /// The executions' started_at..finished_at.
    exec: Vec<f64>,
    raw: u64,
    chunks: u32,
    problem: Option<Problem>,
}

impl DgSamples {
    fn median(&self) -> Option<f64> {
        if self.problem.is_some() { None } else { self.wall.median() }
    }
}

struct EngineReport {
    kind: Kind,
    source: Source,
    dump_file: Samples,
    dump_alone: Samples,
    pipeline: Samples,
    dg_backup: DgSamples,
    plain_restore: Samples,
    dg_restore: DgSamples,
    notes: Vec<String>,
    error: Option<String>,
}

struct Ctx<'a> {
    clients: &'a mut Clients,
    agent_id: String,
    storage_id: String,
    dir: PathBuf,
    rss: &'a RssSampler,
}

async fn bench(args: &Args, created: &mut Created) -> anyhow::Result<bool> {
    let mut missing = Vec::new();
    let mut needed = vec!["bash", "zstd", "sha256sum", "tee", "kill"];
    for k in &args.engines {
        needed.extend(k.tools());
    }
    for t in needed {
        if !on_path(t) {
            missing.push(t);
        }
    }
    anyhow::ensure!(missing.is_empty(), "missing tools on PATH: {}", missing.join(", "));
    let exe = std::env::current_exe().context("locate this executable")?;
    let agent_bin = exe.parent().map(|d| d.join("dg-agent")).filter(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no dg-agent next to {}: build both with `cargo build --release -p dg-agent -p dg-tests`",
            exe.display()
        )
    })?;

    // Work directory: everything under <work>/dg-bench-<random>, removed at the end.
    let run_dir = match &args.work_dir {
        Some(w) => {
            let w = std::path::absolute(w)?;
            if !w.exists() {
                std::fs::create_dir_all(&w).with_context(|| format!("create {}", w.display()))?;
                created.paths.push(w.clone());
            }
            w.join(format!("dg-bench-{}", suffix()))
        }
        None => std::env::temp_dir().join(format!("dg-bench-{}", suffix())),
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    created.paths.push(run_dir.clone());
    // The agent refuses local storages reached through symlinks.
    let run_dir = std::fs::canonicalize(&run_dir)?;

    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load1: f64 = load_start.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    if load1 > cores as f64 / 2.0 {
        println!(
            "WARNING: load average {load1:.2} on {cores} cores before the bench starts: something else is busy and \
             will skew the figures"
        );
    }
    println!(
        "dg-bench: scale {}, engines {:?}, {} run(s), work dir {}",
        args.scale,
        args.engines,
        args.runs,
        run_dir.display()
    );
    println!(
        "  cores {cores}, load average at start {}",
        load_start.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  agent binary {} ({})",
        agent_bin.display(),
        first_line_of(&agent_bin.to_string_lossy(), &["--version"])
    );
    if let Ok(m) = std::fs::metadata(&agent_bin).and_then(|m| m.modified()) {
        println!("  agent binary built {}", chrono::DateTime::<chrono::Utc>::from(m).format("%Y-%m-%d %H:%M:%S UTC"));
    }
    for k in &args.engines {
        println!("  {}", first_line_of(k.dump_tool(), &["--version"]));
    }
    println!("  {}", first_line_of("zstd", &["--version"]));

    // 1. Sources.
    let mut reports = Vec::new();
    for &kind in &args.engines {
        let source = prepare_source(kind, args, created).await?;
        println!(
            "[{}] source {}: {} on disk, {} pgbench_accounts rows{}",
            kind.short(),
            source.name,
            mib(source.bytes),
            source.accounts,
            source.generated.map(|s| format!(", generated in {s:.1} s")).unwrap_or_default()
        );
        reports.push(EngineReport {
            kind,
            source,
            dump_file: Samples::default(),
            dump_alone: Samples::default(),
            pipeline: Samples::default(),
            dg_backup: DgSamples::default(),
            plain_restore: Samples::default(),
            dg_restore: DgSamples::default(),
            notes: Vec::new(),
            error: None,
        });
    }

    // 2. Controller in-process, agent as its own process.
    let chunk_size = Config::default().chunk_size_bytes;
    let cluster = Cluster::start_with(ClusterOptions { chunk_size, ..ClusterOptions::default() })
        .await
        .context("start the controller (needs PostgreSQL and Redis on their default ports)")?;
    let endpoint = cluster.api_endpoint();
    let mut clients = cluster.clients().await?;
    println!(
        "controller: {endpoint} (in-process); chunk size {}, zstd level {ZSTD_LEVEL}, {} compression workers, {} \
         concurrent uploads",
        mib(chunk_size),
        cluster.config.compression_workers,
        cluster.config.upload_concurrency
    );
    created.cluster = Some(cluster);

    let jt = clients
        .agents
        .create_join_token(authed(pb::CreateJoinTokenRequest::default(), &clients.token))
        .await?
        .into_inner();
    let state_dir = run_dir.join("agent-state");
    let enroll = tool(&agent_bin.to_string_lossy())
        .arg("enroll")
        .args(["--controller", &endpoint, "--token", &jt.token, "--ca-fingerprint", &jt.ca_fingerprint])
        .arg("--state-dir")
        .arg(&state_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .await
        .context("run dg-agent enroll")?;
    anyhow::ensure!(
        enroll.status.success(),
        "dg-agent enroll failed ({}): {}",
        enroll.status,
        String::from_utf8_lossy(&enroll.stderr)
    );
    let agent_id = String::from_utf8_lossy(&enroll.stdout).lines().last().unwrap_or_default().trim().to_owned();
    anyhow::ensure!(!agent_id.is_empty(), "dg-agent enroll printed no agent id");
    let run_help = tool(&agent_bin.to_string_lossy()).args(["run", "--help"]).output().await?;
    let local_root = String::from_utf8_lossy(&run_help.stdout).contains("--local-root");
    let log_path = run_dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let mut run_cmd = tool(&agent_bin.to_string_lossy());
    run_cmd.arg("run").arg("--state-dir").arg(&state_dir);
    if local_root {
        run_cmd.arg("--local-root").arg(&run_dir);
    }
    let child = run_cmd.stdout(log.try_clone()?).stderr(log).spawn().context("start dg-agent run")?;
    let pid = child.id().ok_or_else(|| anyhow!("dg-agent exited at once; see {}", log_path.display()))?;
    created.agent = Some(child);
    clients
        .wait_agent_status(&agent_id, pb::AgentStatus::Online, Duration::from_secs(60))
        .await
        .with_context(|| format!("agent online (log: {})", log_path.display()))?;
    let rss = RssSampler::start(pid);
    let idle_rss = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    println!(
        "agent: {agent_id}, pid {pid}, online{}; VmRSS when idle {}",
        if local_root { format!(", --local-root {}", run_dir.display()) } else { String::new() },
        mib(idle_rss)
    );

    let storage_dir = run_dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let storage = clients
        .storages
        .create_storage(authed(
            pb::CreateStorageRequest {
                name: format!("bench-local-{}", suffix()),
                config: Some(pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
                    path: storage_dir.to_string_lossy().into_owned(),
                    agent_id: agent_id.clone(),
                })),
            },
            &clients.token,
        ))
        .await?
        .into_inner();

    // 3. Per engine.
    let mut ctx = Ctx { clients: &mut clients, agent_id, storage_id: storage.id, dir: run_dir.clone(), rss: &rss };
    for r in &mut reports {
        println!("\n[{}] benchmarking {}", r.kind.short(), r.source.name);
        if let Err(e) = bench_engine(r, &mut ctx, created, args.runs).await {
            eprintln!("[{}] error: {e:#}", r.kind.short());
            r.error = Some(format!("{e:#}"));
        }
    }

    // Agent peak memory just before stopping it.
    let hwm = proc_status_bytes(pid, "VmHWM");
    let mem = Memory { idle: idle_rss, sampled: rss.overall(), hwm };
    drop(rss);
    let exit = created.stop_agent().await;
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let ok = print_report(args, &reports, &mem, (&load_start, &load_end), &log_path, exit);
    Ok(ok)
}

async fn bench_engine(r: &mut EngineReport, ctx: &mut Ctx<'_>, created: &mut Created, runs: u32) -> anyhow::Result<()> {
    let kind = r.kind;
    let k = kind.short();
    let db = r.source.name.clone();
    let sfx = suffix();
    let dump_path = ctx.dir.join(format!("{k}.dump"));
    let t = ctx.clients.token.clone();

    // The DataGuardian side, configured once (untimed).
    let ds = ctx
        .clients
        .datasources
        .create_datasource(authed(
            pb::CreateDatasourceRequest {
                name: format!("bench-{k}-{sfx}"),
                engine: kind.pb() as i32,
                host: HOST.into(),
                port: u32::from(kind.port()),
                database: db.clone(),
                username: kind.user().into(),
                tls_mode: pb::TlsMode::Disable as i32,
                agent_id: ctx.agent_id.clone(),
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    let test =
        ctx.clients.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?;
    let test = test.into_inner();
    if test.ok {
        println!("[{k}] datasource test through the agent: ok ({})", test.server_version);
    } else {
        println!("[{k}] datasource test through the agent FAILED: {} (trying a backup anyway)", test.error);
        r.notes.push(format!("TestDatasource failed: {}", test.error));
    }
    let job = ctx
        .clients
        .jobs
        .create_backup_job(authed(
            pb::CreateBackupJobRequest {
                name: format!("bench-{k}-{sfx}"),
                datasource_id: ds.id.clone(),
                storage_ids: vec![ctx.storage_id.clone()],
                storage_strategy: pb::StorageStrategy::Fallback as i32,
                compression_level: ZSTD_LEVEL,
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();

    for round in 1..=runs {
        let tag = if runs > 1 { format!("[{k} {round}/{runs}]") } else { format!("[{k}]") };

        // Reference: the dump into a file (also the plain restore's input).
        let mut c = kind.dump_cmd(&db);
        c.stdout(std::fs::File::create(&dump_path)?);
        settle(kind).await;
        ctx.rss.begin();
        let secs = timed(c, &format!("{} > file", kind.dump_tool())).await?;
        let dump_bytes = std::fs::metadata(&dump_path)?.len();
        r.dump_file.push(secs, Some(dump_bytes), ctx.rss.end());
        println!("{tag} {} > file: {secs:.2} s, {}", kind.dump_display(), mib(dump_bytes));

        // (a) the dump alone.
        let mut c = kind.dump_cmd(&db);
        c.stdout(Stdio::null());
        settle(kind).await;
        ctx.rss.begin();
        let secs = timed(c, &format!("{} > /dev/null", kind.dump_tool())).await?;
        r.dump_alone.push(secs, None, ctx.rss.end());
        println!("{tag} (a) {} > /dev/null: {secs:.2} s", kind.dump_display());

        // (b) the shell pipeline.
        pipeline(r, ctx, &tag).await?;

        // (c) DataGuardian backup.
        let backup_id =
            if r.dg_backup.problem.is_none() { dg_backup(r, ctx, &job.id, &tag, dump_bytes).await? } else { None };

        // (d) the plain restore into a fresh database.
        let plain_db = format!("{db}_plain_{sfx}_{round}");
        created.track_db(kind, &plain_db);
        kind.create_db(&plain_db).await?;
        let c = kind.restore_cmd(&plain_db, &dump_path)?;
        settle(kind).await;
        ctx.rss.begin();
        let secs = timed(c, kind.restore_tool()).await?;
        r.plain_restore.push(secs, None, ctx.rss.end());
        let n = kind.accounts(&plain_db).await?;
        println!("{tag} (d) {} into a fresh database: {secs:.2} s ({n} accounts restored)", kind.restore_tool());
        anyhow::ensure!(n == r.source.accounts, "plain restore has {n} accounts, the source {}", r.source.accounts);
        created.drop_db_now(kind, &plain_db).await;

        // (e) DataGuardian restore into a fresh database.
        if let Some(backup_id) = backup_id {
            dg_restore(r, ctx, created, backup_id, &format!("{db}_dg_{sfx}_{round}"), &tag).await?;
        }
    }
    let _ = std::fs::remove_file(&dump_path);
    if r.dg_restore.wall.secs.is_empty() && r.dg_restore.problem.is_none() {
        r.dg_restore.problem = Some(Problem::Failed("no backup to restore".into()));
    }
    Ok(())
}

/// (b) dump | zstd -3 -T2 | tee >(sha256sum > sum) > file.zst
async fn pipeline(r: &mut EngineReport, ctx: &mut Ctx<'_>, tag: &str) -> anyhow::Result<()> {
    let kind = r.kind;
    let k = kind.short();
    let zst_path = ctx.dir.join(format!("{k}.dump.zst"));
    let sum_path = ctx.dir.join(format!("{k}.dump.zst.sha256"));
    let _ = std::fs::remove_file(&sum_path);
    let script = format!(
        "set -o pipefail; {} {} | zstd -{ZSTD_LEVEL} -T2 | tee >(sha256sum > \"$2\") > \"$3\"",
        kind.dump_tool(),
        kind.dump_args("\"$1\"").join(" ")
    );
    let mut c = tool("bash");
    c.arg("-c").arg(&script).arg("dg-bench").arg(&r.source.name).arg(&sum_path).arg(&zst_path).stdout(Stdio::null());
    settle(kind).await;
    ctx.rss.begin();
    let secs = timed(c, "the dump | zstd | tee pipeline").await?;
    let rss = ctx.rss.end();
    let zst_bytes = std::fs::metadata(&zst_path)?.len();
    r.pipeline.push(secs, Some(zst_bytes), rss);
    // The checksum comes from a process substitution bash does not wait for; give it a moment.
    for _ in 0..50 {
        if std::fs::metadata(&sum_path).is_ok_and(|m| m.len() >= 64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum = std::fs::read_to_string(&sum_path).unwrap_or_default();
    anyhow::ensure!(sum.len() >= 64, "the pipeline wrote no sha256");
    println!("{tag} (b) pipeline: {secs:.2} s, {} (sha256 {}…)", mib(zst_bytes), &sum[..12]);
    let _ = std::fs::remove_file(&zst_path);
    Ok(())
}

/// (c) RunNow → completed. Returns the backup id when it completed.
async fn dg_backup(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    job_id: &str,
    tag: &str,
    plain_bytes: u64,
) -> anyhow::Result<Option<String>> {
    let kind = r.kind;
    let t = ctx.clients.token.clone();
    settle(kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let ex = ctx.clients.jobs.run_now(authed(pb::RunNowRequest { job_id: job_id.into() }, &t)).await?.into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    if done.status == pb::ExecutionStatus::Completed as i32 {
        let exec = span(&done);
        let b = &mut r.dg_backup;
        b.wall.push(wall, Some(done.stored_bytes), rss);
        b.exec.extend(exec);
        (b.raw, b.chunks) = (done.raw_bytes, done.chunk_count);
        println!(
            "{tag} (c) DataGuardian backup: {wall:.2} s (execution {}), raw {}, stored {} in {} chunks, agent VmRSS \
             peak {}",
            exec.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            mib(done.raw_bytes),
            mib(done.stored_bytes),
            done.chunk_count,
            mib(rss)
        );
        if done.raw_bytes != plain_bytes && !r.notes.iter().any(|n| n.starts_with("DataGuardian dumped")) {
            r.notes.push(format!(
                "DataGuardian dumped {} raw bytes, the plain dump {} (its dump options differ slightly)",
                done.raw_bytes, plain_bytes
            ));
        }
        return Ok(Some(ex.id));
    }
    let logs = ctx.clients.logs(&ex.id).await.unwrap_or_default();
    let status = pb::ExecutionStatus::try_from(done.status).map(|s| s.as_str_name()).unwrap_or("?");
    if done.error.contains(ONLY_PG) {
        println!("{tag} (c) DataGuardian {} backups are unavailable in this build: {}", kind.label(), done.error);
        r.dg_backup.problem = Some(Problem::Unavailable(done.error.clone()));
        r.dg_restore.problem = Some(Problem::Unavailable("no backup to restore".into()));
    } else {
        println!(
            "{tag} (c) DataGuardian backup FAILED after {wall:.2} s: {status}: {}\n{}",
            done.error,
            tail(&logs, 15)
        );
        r.dg_backup.problem = Some(Problem::Failed(format!("{status}: {}", done.error)));
    }
    Ok(None)
}

/// (e) RestoreBackup with create_database → completed, then the row count.
async fn dg_restore(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    created: &mut Created,
    backup_id: String,
    target: &str,
    tag: &str,
) -> anyhow::Result<()> {
    if r.dg_restore.problem.is_some() {
        return Ok(());
    }
    let kind = r.kind;
    let t = ctx.clients.token.clone();
    created.track_db(kind, target);
    settle(kind).await;
    ctx.rss.begin();
    let start = Instant::now();
    let ex = ctx
        .clients
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id,
                target_database: target.into(),
                create_database: true,
                confirm_target_database: target.into(),
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    let done = wait_exec(ctx.clients, &ex.id).await?;
    let wall = start.elapsed().as_secs_f64();
    let rss = ctx.rss.end();
    if done.status == pb::ExecutionStatus::Completed as i32 {
        let n = kind.accounts(target).await?;
        let exec = span(&done);
        println!(
            "{tag} (e) DataGuardian restore: {wall:.2} s (execution {}), agent VmRSS peak {} ({n} accounts restored)",
            exec.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "?".into()),
            mib(rss)
        );
        if n == r.source.accounts {
            r.dg_restore.wall.push(wall, None, rss);
            r.dg_restore.exec.extend(exec);
        } else {
            let msg = format!("restored {n} accounts, the source has {}", r.source.accounts);
            r.dg_restore.problem = Some(Problem::Failed(msg));
        }
    } else {
        let logs = ctx.clients.logs(&ex.id).await.unwrap_or_default();
        let status = pb::ExecutionStatus::try_from(done.status).map(|s| s.as_str_name()).unwrap_or("?");
        if done.error.contains(ONLY_PG) {
            println!("{tag} (e) DataGuardian {} restores are unavailable in this build: {}", kind.label(), done.error);
            r.dg_restore.problem = Some(Problem::Unavailable(done.error.clone()));
        } else {
            println!(
                "{tag} (e) DataGuardian restore FAILED after {wall:.2} s: {status}: {}\n{}",
                done.error,
                tail(&logs, 15)
            );
            r.dg_restore.problem = Some(Problem::Failed(format!("{status}: {}", done.error)));
        }
    }
    created.drop_db_now(kind, target).await;
    Ok(())
}

/// Before each timed step: a PostgreSQL CHECKPOINT, so no step pays for the dirty pages of the one before
/// (restores write the WAL of a whole database). MariaDB flushes in the background; nothing to do there.
async fn settle(kind: Kind) {
    if kind == Kind::Postgres {
        let r = async {
            let mut c = PgConnection::connect(&pg_url("postgres")).await?;
            c.execute("CHECKPOINT").await?;
            c.close().await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("dg-bench: CHECKPOINT failed (figures may include checkpoint work): {e:#}");
        }
    }
}

/// Polls the execution every 50 ms until it ends.
async fn wait_exec(c: &mut Clients, id: &str) -> anyhow::Result<pb::Execution> {
    let deadline = Instant::now() + EXEC_LIMIT;
    loop {
        let e =
            c.executions.get_execution(authed(pb::GetExecutionRequest { id: id.into() }, &c.token)).await?.into_inner();
        if matches!(
            pb::ExecutionStatus::try_from(e.status),
            Ok(pb::ExecutionStatus::Completed | pb::ExecutionStatus::Failed | pb::ExecutionStatus::Cancelled)
        ) {
            return Ok(e);
        }
        anyhow::ensure!(Instant::now() < deadline, "execution {id} still running after {EXEC_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn span(e: &pb::Execution) -> Option<f64> {
    let (a, b) = (e.started_at.as_ref()?, e.finished_at.as_ref()?);
    Some((b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------------------

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// The per-engine table; the min..max column only appears with several runs.
struct Table<'a> {
    out: &'a mut String,
    runs: u32,
}

impl Table<'_> {
    fn header(&mut self) {
        let label = if self.runs > 1 { format!("median of {}", self.runs) } else { "seconds".into() };
        let spread = if self.runs > 1 { format!("  {:<12}", "min..max") } else { String::new() };
        let _ = writeln!(self.out, "  {:<62} {label:>12}{spread}  {:<24} agent VmRSS peak", "step", "bytes");
        let _ = writeln!(self.out, "  {}", "-".repeat(if self.runs > 1 { 134 } else { 120 }));
    }

    fn row(&mut self, step: &str, secs: &[f64], bytes: &str, rss: &str) {
        let med = median(secs).map(|s| format!("{s:>12.2}")).unwrap_or_else(|| format!("{:>12}", "-"));
        let spread = if self.runs > 1 { format!("  {:<12}", spread(secs)) } else { String::new() };
        let _ = writeln!(self.out, "  {step:<62} {med}{spread}  {bytes:<24} {rss}");
    }

    fn step(&mut self, label: &str, s: &Samples) {
        let rss = if s.secs.is_empty() { String::new() } else { mib(s.rss) };
        self.row(label, &s.secs, &s.bytes.map(mib).unwrap_or_default(), &rss);
    }

    fn dg(&mut self, label: &str, dg: &DgSamples, backup: bool) {
        match &dg.problem {
            Some(Problem::Unavailable(why)) => self.row(label, &[], &format!("unavailable in this build: {why}"), ""),
            Some(Problem::Failed(why)) => self.row(label, &[], &format!("FAILED: {why}"), ""),
            None if dg.wall.secs.is_empty() => self.row(label, &[], "not run", ""),
            None => {
                let bytes = if backup {
                    format!("{} stored", dg.wall.bytes.map(mib).unwrap_or_default())
                } else {
                    String::new()
                };
                self.row(label, &dg.wall.secs, &bytes, &mib(dg.wall.rss));
                let detail = if backup { format!("raw {}, {} chunks", mib(dg.raw), dg.chunks) } else { String::new() };
                self.row("    execution started_at -> finished_at", &dg.exec, &detail, "");
            }
        }
    }
}

/// One ratio line; returns the verdict when there is a target and both figures exist.
fn ratio_line(out: &mut String, what: &str, num: Option<f64>, den: Option<f64>, target: Option<f64>) -> Option<bool> {
    let tgt = target.map(|t| format!("<= {t:.2}")).unwrap_or_default();
    let (Some(n), Some(d)) = (num, den) else {
        let _ = writeln!(out, "  {what:<46} {:>7}   {tgt:<10} n/a", "-");
        return None;
    };
    let r = if d > 0.0 { n / d } else { f64::INFINITY };
    match target {
        Some(t) => {
            let pass = r <= t;
            let _ = writeln!(out, "  {what:<46} {r:>7.3}   {tgt:<10} {}", verdict(pass));
            Some(pass)
        }
        None => {
            let _ = writeln!(out, "  {what:<46} {r:>7.3}   {tgt:<10} (info)");
            None
        }
    }
}

/// Agent memory: idle VmRSS, highest sample, VmHWM.
struct Memory {
    idle: u64,
    sampled: u64,
    hwm: Option<u64>,
}

fn print_report(
    args: &Args,
    reports: &[EngineReport],
    mem: &Memory,
    loads: (&str, &str),
    agent_log: &Path,
    agent_exit: Option<std::process::ExitStatus>,
) -> bool {
    let mut out = String::new();
    let mut ok = true;
    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let runs = if args.runs > 1 { format!(", {} runs each, medians", args.runs) } else { String::new() };
    let _ = writeln!(
        out,
        "\n=============================== dg-bench results (scale {}{runs}) ===============================",
        args.scale
    );
    for r in reports {
        let k = r.kind;
        let _ = writeln!(
            out,
            "\n{} — source {}: {} on disk, {} pgbench_accounts rows",
            k.label(),
            r.source.name,
            mib(r.source.bytes),
            r.source.accounts
        );
        let mut t = Table { out: &mut out, runs: args.runs };
        t.header();
        t.step(&format!("    {} > file (reference, input of (d))", k.dump_tool()), &r.dump_file);
        t.step(&format!("(a) {} > /dev/null", k.dump_tool()), &r.dump_alone);
        t.step(&format!("(b) {} | zstd -{ZSTD_LEVEL} -T2 | tee >(sha256sum) > file", k.dump_tool()), &r.pipeline);
        t.dg("(c) DataGuardian backup, RunNow -> completed", &r.dg_backup, true);
        let restore = match k {
            Kind::Postgres => "(d) pg_restore -d <fresh db> file",
            Kind::Mariadb => "(d) mariadb <fresh db> < file",
        };
        t.step(restore, &r.plain_restore);
        t.dg("(e) DataGuardian restore (create_database), call -> completed", &r.dg_restore, false);
        let _ = writeln!(out, "  dump command: {}", k.dump_display());

        let _ = writeln!(out, "\n  {:<46} {:>7}   {:<10} result", "ratio", "value", "target");
        let (b, e) = (r.dg_backup.median(), r.dg_restore.median());
        let checks = [
            (
                "DG backup / dump alone        (c)/(a)",
                format!("backup <= {BACKUP_VS_DUMP} x dump alone"),
                b,
                r.dump_alone.median(),
                BACKUP_VS_DUMP,
            ),
            ("DG backup / pipeline          (c)/(b)", "backup <= pipeline".to_owned(), b, r.pipeline.median(), 1.0),
            (
                "DG restore / plain restore    (e)/(d)",
                format!("restore <= {RESTORE_VS_PLAIN} x {}", k.restore_tool()),
                e,
                r.plain_restore.median(),
                RESTORE_VS_PLAIN,
            ),
        ];
        for (what, short, n, d, t) in checks {
            match ratio_line(&mut out, what, n, d, Some(t)) {
                Some(pass) => verdicts.push((format!("{} {short}", k.label()), pass)),
                None => missing.push(format!("{} {short}", k.label())),
            }
        }
        let exec_b = if r.dg_backup.problem.is_none() { median(&r.dg_backup.exec) } else { None };
        let exec_e = if r.dg_restore.problem.is_none() { median(&r.dg_restore.exec) } else { None };
        ratio_line(&mut out, "DG backup execution span / dump alone", exec_b, r.dump_alone.median(), None);
        ratio_line(&mut out, "DG restore execution span / plain restore", exec_e, r.plain_restore.median(), None);
        let stored = if r.dg_backup.problem.is_none() { r.dg_backup.wall.bytes } else { None };
        ratio_line(
            &mut out,
            "DG bytes stored / pipeline file bytes",
            stored.map(|x| x as f64),
            r.pipeline.bytes.map(|x| x as f64),
            None,
        );
        ratio_line(
            &mut out,
            "pipeline / dump alone          (b)/(a)",
            r.pipeline.median(),
            r.dump_alone.median(),
            None,
        );
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        if matches!(r.dg_backup.problem, Some(Problem::Unavailable(_))) {
            let _ = writeln!(out, "  note: the DataGuardian {} rows are unavailable in this build", k.label());
        }
        if matches!(r.dg_backup.problem, Some(Problem::Failed(_)))
            || matches!(r.dg_restore.problem, Some(Problem::Failed(_)))
        {
            ok = false;
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  ERROR: {e}");
            ok = false;
        }
        if let Some(s) = r.source.generated {
            let _ = writeln!(out, "  (source generated in {s:.1} s)");
        }
    }

    let _ =
        writeln!(out, "\nDataGuardian agent (its own process; the dump and restore tools it spawns are not counted)");
    let _ = writeln!(out, "  VmRSS idle after start                    {}", mib(mem.idle));
    for r in reports {
        if r.dg_backup.problem.is_none() && !r.dg_backup.wall.secs.is_empty() {
            let _ =
                writeln!(out, "  VmRSS peak during the {:<10} backups  {}", r.kind.label(), mib(r.dg_backup.wall.rss));
        }
        if r.dg_restore.problem.is_none() && !r.dg_restore.wall.secs.is_empty() {
            let _ =
                writeln!(out, "  VmRSS peak during the {:<10} restores {}", r.kind.label(), mib(r.dg_restore.wall.rss));
        }
    }
    let _ = writeln!(out, "  highest 100 ms VmRSS sample of the run    {}", mib(mem.sampled));
    match mem.hwm {
        Some(h) => {
            // The kernel raises the high-water mark lazily (memory handed back with madvise never raises it),
            // so a sample can exceed it: the peak is the larger of the two.
            let peak = h.max(mem.sampled);
            let pass = peak < RSS_LIMIT;
            let _ = writeln!(out, "  VmHWM just before stopping it             {}", mib(h));
            let _ = writeln!(
                out,
                "  peak RSS = max(VmHWM, samples)            {}   target < {}   {}",
                mib(peak),
                mib(RSS_LIMIT),
                verdict(pass)
            );
            verdicts.push(("agent peak RSS < 64 MiB".into(), pass));
        }
        None => {
            let _ = writeln!(out, "  peak RSS (VmHWM): unreadable (did the agent exit early?)");
            ok = false;
        }
    }
    let _ = writeln!(
        out,
        "  stopped with SIGTERM: {}",
        agent_exit.map(|s| s.to_string()).unwrap_or_else(|| "did not stop in time, killed".into())
    );
    let la = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        out,
        "\nload average: start {}, end {} (on few cores anything else running skews the figures)",
        la(loads.0),
        la(loads.1)
    );

    let _ = writeln!(out, "\nsummary");
    for (what, pass) in &verdicts {
        let _ = writeln!(out, "  {} {what}", verdict(*pass));
    }
    for what in &missing {
        let _ = writeln!(out, "  n/a  {what} (not measured)");
    }
    let passed = verdicts.iter().filter(|v| v.1).count();
    let _ = writeln!(
        out,
        "  {passed}/{} targets met{}",
        verdicts.len(),
        if ok { "" } else { "; some figures are missing (errors above)" }
    );
    if !ok {
        let log = std::fs::read_to_string(agent_log).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nlast lines of the agent's log ({}, removed at exit):\n{}",
            agent_log.display(),
            tail(&log, 30)
        );
    }
    print!("{out}");
    ok
}
