//! Command-line parsing: the flags, their defaults and limits, and the usage text `main` prints on `--help`
//! or on a bad argument.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};

use crate::engine::Kind;

pub(crate) const USAGE: &str = "\
usage: dg-bench [--scale N] [--keep-data] [--engines postgres,mariadb] [--work-dir DIR] [--runs N]

  --scale N          pgbench scale factor (N x 100 000 account rows; MariaDB gets the same shape)  [50]
  --keep-data        reuse the source databases dgbench_pg_s<N> / dgbench_my_s<N> if they exist, and keep them
  --engines LIST     comma-separated subset of postgres,mariadb                                     [both]
  --work-dir DIR     where dumps, the local storage and the agent state go                        [a temp dir]
  --runs N           run every step N times, interleaved, and compare medians                       [1]";

pub(crate) struct Args {
    pub(crate) scale: u32,
    pub(crate) runs: u32,
    pub(crate) keep_data: bool,
    pub(crate) engines: Vec<Kind>,
    pub(crate) work_dir: Option<PathBuf>,
}

pub(crate) fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
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
