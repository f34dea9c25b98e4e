//! `dg-faults`: randomized fault trials against the real controller (two replicas behind a balancer), the
//! real agent, a private PostgreSQL and Redis for the controllers and the test PostgreSQL server, printing
//! every trial and a table of faults, outcomes and broken invariants. Exit status 0 only when nothing was
//! lost, stuck, leaked or doubled.
//!
//! ```sh
//! cargo build -p dg-controller -p dg-agent -p dg-tests && target/debug/dg-faults --trials 50
//! ```
//!
//! Needs what `tests/ensure-services.sh --for tests` sets up (it reads `test.env` like the test suite):
//! the PostgreSQL server binaries (`initdb`, `pg_ctl`), `redis-server`, `pg_dump`/`pg_restore`.

use std::process::ExitCode;

use clap::Parser;
use dg_tests::faults::{self, Fault, RunOptions, Timings};

#[derive(Parser)]
#[command(name = "dg-faults", about = "Randomized fault trials against a real DataGuardian deployment")]
struct Args {
    /// Number of trials (they cycle through the fault kinds).
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Seed of the random choices (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault kinds to cycle through (comma-separated; default all).
    #[arg(long, value_delimiter = ',', value_parser = parse_fault)]
    faults: Vec<Fault>,
    /// Size of the source database's table, MiB (about as much dump, compressing about 2:1).
    #[arg(long, default_value_t = 40)]
    data_mib: u32,
    /// Lease of an attempt, seconds (the heartbeat is 1 s).
    #[arg(long, default_value_t = 6)]
    lease_secs: u64,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    Fault::parse(s).ok_or_else(|| {
        format!("unknown fault {s:?}; one of: {}", Fault::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    dg_common::tls::install_crypto_provider();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    let opts = RunOptions {
        trials: args.trials,
        seed,
        faults: if args.faults.is_empty() { Fault::ALL.to_vec() } else { args.faults },
        data_mib: args.data_mib,
        timings: Timings { lease_secs: args.lease_secs, ..Timings::default() },
    };
    println!(
        "dg-faults: {} trials, seed {seed}, faults {}, source {} MiB, lease {} s, heartbeat {} s",
        opts.trials,
        opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        opts.data_mib,
        opts.timings.lease_secs,
        opts.timings.heartbeat_secs
    );
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dg-faults: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(faults::run(&opts, |line| println!("{line}"))) {
        Ok(report) => {
            println!();
            for l in report.leaked.iter().chain(&report.doubled).chain(&report.scheduled_lost).chain(&report.stuck) {
                println!("VIOLATION: {l}");
            }
            print!("{}", report.table());
            println!("seed {seed}: {}", if report.clean() { "every invariant held" } else { "INVARIANTS BROKEN" });
            if report.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("dg-faults: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
