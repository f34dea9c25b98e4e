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
//! a fresh database (CREATE DATABASE inside the timing, as (e) creates its own), (e) a DataGuardian restore into a fresh database (RestoreBackup → completed). The
//! controller runs in this process; the agent is the release binary in its own process, so its memory can be
//! read from /proc.

mod args;
mod bench;
mod created;
mod dataset;
mod dg;
mod engine;
mod plain;
mod report;
mod rss;
mod samples;
mod source;
mod streams;

use std::process::ExitCode;

use anyhow::anyhow;

use crate::{args::Args, bench::bench, created::Created};

/// zstd level of both the pipeline and the DataGuardian job.
const ZSTD_LEVEL: i32 = 3;
/// Bounds of the adaptive comparison backup (c2).
const ADAPTIVE_MIN: i32 = 1;
const ADAPTIVE_MAX: i32 = 9;

fn main() -> ExitCode {
    use clap::Parser as _;
    let args = Args::parse();
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
