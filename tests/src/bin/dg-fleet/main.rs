//! `dg-fleet`: a fleet of simulated agents (the scripted fake agent of `dg_tests::fake_agent`, real mTLS
//! sessions) from this one process against real `dg-controller` processes with their real PostgreSQL and
//! Redis. Run on demand (never in CI); it prints figures and does not gate: the exit status is non-zero only
//! when a configuration could not run at all.
//!
//! ```sh
//! cargo build --release -p dg-controller -p dg-tests --bin dg-fleet --bin dg-controller
//! target/release/dg-fleet --sessions 100,1000 --replicas 1
//! ```
//!
//! What it needs: PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust; or `DG_TEST_PG_URL`), `redis-server`
//! on PATH (or `--redis URL`), the release `dg-controller` next to this executable, and descriptors: each
//! session is one connection here and one in a controller, and both inherit `ulimit -n` (raise it in the
//! shell for more than about 19,000 sessions; counts that do not fit are reported as not tried).
//!
//! Per replica configuration (`--replicas`, one database `dgfleet_<random>` each, dropped at the end and on
//! Ctrl-C) and per session count (`--sessions`, after an idle step with none): enroll the new identities
//! (CreateJoinToken + Enroll each), open their sessions (split evenly between the replicas), wait one
//! heartbeat interval, then measure over `--window`: controller VmRSS and CPU (/proc), PostgreSQL
//! transactions and rows written on the controllers' database (`pg_stat_database`, and per table), the CPU of
//! its backends, Redis commands; queue `--queued` executions and measure again; time RunNow → Assign; stream
//! chunk reports from 1, 4, 16 sessions. It stops stepping at the first count that breaks and says what broke.

mod args;
mod enroll;
mod fleet;
mod measure;
mod procfs;
mod report;
mod run;
mod stats;
mod workload;
mod world;

use std::{path::PathBuf, process::ExitCode};

use anyhow::anyhow;
use dg_tests::suffix;

use crate::{args::Args, run::Env, world::Created};

/// Descriptors kept free for everything but sessions (logs, database and Redis connections, enrollments).
const SPARE_FDS: u64 = 512;

fn main() -> ExitCode {
    use clap::Parser as _;
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dg-fleet: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("dg-fleet: some configurations could not run (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dg-fleet: error: {e:#}");
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
    // Ctrl-C or SIGTERM stop the run; its databases and files are removed either way (the controllers and a
    // private Redis are children killed on drop).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = fleet_bench(&args, &mut created) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    created.cleanup().await;
    result
}

async fn fleet_bench(args: &Args, created: &mut Created) -> anyhow::Result<bool> {
    let controller_bin = world::controller_binary()?;
    let base = match &args.work_dir {
        Some(w) => std::path::absolute(w)?,
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let run_dir = base.join(format!("dg-fleet-{}", suffix()));
    std::fs::create_dir_all(&run_dir)?;
    if !args.keep_work_dir {
        created.paths.push(run_dir.clone());
    }
    let fd_limit = procfs::open_files_limit().unwrap_or(1024);
    let max_sessions = usize::try_from(fd_limit.saturating_sub(SPARE_FDS)).unwrap_or(usize::MAX);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    println!(
        "dg-fleet: sessions {:?}, replicas {:?}, heartbeat every {} s, work dir {}",
        args.sessions,
        args.replicas,
        args.heartbeat_interval,
        run_dir.display()
    );
    println!(
        "  cores {cores}, load average {}, open-files limit {fd_limit} (room for {max_sessions} sessions)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  controller binary {}", controller_bin.display());
    if let Ok(m) = std::fs::metadata(&controller_bin).and_then(|m| m.modified()) {
        println!("  controller built {}", chrono::DateTime::<chrono::Utc>::from(m).format("%Y-%m-%d %H:%M:%S UTC"));
    }
    if load1 > cores as f64 / 2.0 {
        println!("WARNING: load average {load1:.2} on {cores} cores: something else is busy and will skew the figures");
    }
    let env = Env {
        args,
        controller_bin: &controller_bin,
        run_dir: &run_dir,
        ticks_per_sec: procfs::clock_ticks_per_sec(),
        max_sessions,
    };
    let mut reports = Vec::new();
    for &r in &args.replicas {
        reports.push(run::run_config(&env, r as usize, created).await);
    }
    report::print_summary(args, &reports);
    if args.keep_work_dir {
        println!("work directory kept: {}", run_dir.display());
    }
    Ok(reports.iter().all(|r| r.error.is_none()))
}
