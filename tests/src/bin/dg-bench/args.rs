//! Command-line arguments (clap): the data sets and their sizes, the engines, the number of interleaved runs.

use std::path::PathBuf;

use clap::Parser;

use crate::{dataset::Dataset, engine::Kind};

/// DataGuardian against the plain dump and restore tools, in one run, on several data sets.
#[derive(Debug, Parser)]
#[command(name = "dg-bench", version)]
pub(crate) struct Args {
    /// Data sets to run, in this order: pgbench (compresses ~100:1: the pipeline's overhead), hard (~2:1:
    /// random bytes, hex text, jsonb, timestamps in one wide table), tables (many tables of mixed sizes), big
    /// (one dominant table).
    #[arg(long, value_delimiter = ',', default_value = "pgbench,hard")]
    pub(crate) datasets: Vec<Dataset>,
    /// pgbench scale factor (N x 100 000 account rows; MariaDB gets the same shape).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) scale: u32,
    /// Size of the hard data set, in MiB of plain dump.
    #[arg(long, value_name = "MIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub(crate) hard_mib: u32,
    /// Number of tables of the tables data set.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub(crate) tables: u32,
    /// Size of the tables data set, in MiB of plain dump (spread over the tables, the largest first).
    #[arg(long, value_name = "MIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub(crate) tables_mib: u32,
    /// Size of the big data set's dominant table, in MiB of plain dump.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) big_mib: u32,
    /// Engines to run.
    #[arg(long, value_delimiter = ',', default_value = "postgres,mariadb")]
    pub(crate) engines: Vec<Kind>,
    /// Run every step N times, interleaved, and compare medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) runs: u32,
    /// Skip the comparison backups at fixed level 1 (c1) and with an adaptive level (c2).
    #[arg(long)]
    pub(crate) no_level_comparison: bool,
    /// Stream counts of the parallel comparison (PostgreSQL, the tables and big data sets): a DataGuardian
    /// job with `parallel: N` against `pg_dump -Fd -jN`, and their restores with N jobs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) parallel: Vec<u32>,
    /// Skip the parallel comparison.
    #[arg(long, conflicts_with = "only_parallel")]
    pub(crate) no_parallel_comparison: bool,
    /// Run only the parallel comparison (of the tables and big data sets among --datasets).
    #[arg(long)]
    pub(crate) only_parallel: bool,
    /// Reuse the source databases if they exist with the same parameters, and keep them.
    #[arg(long)]
    pub(crate) keep_data: bool,
    /// Where dumps, the local storage and the agent state go (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn arguments_parse_with_defaults_and_limits() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["dg-bench"]).expect("defaults");
        assert_eq!(a.datasets, [Dataset::Pgbench, Dataset::Hard]);
        assert_eq!(a.engines, [Kind::Postgres, Kind::Mariadb]);
        assert_eq!((a.scale, a.runs), (50, 1));
        assert_eq!(a.parallel, [1, 2, 4]);
        assert!(Args::try_parse_from(["dg-bench", "--parallel", "0"]).is_err());
        assert!(Args::try_parse_from(["dg-bench", "--only-parallel", "--no-parallel-comparison"]).is_err());
        let a = Args::try_parse_from(["dg-bench", "--datasets", "big,tables", "--engines", "pg", "--runs", "3"])
            .expect("lists");
        assert_eq!(a.datasets, [Dataset::Big, Dataset::Tables]);
        assert_eq!(a.engines, [Kind::Postgres]);
        assert!(Args::try_parse_from(["dg-bench", "--scale", "0"]).is_err());
        assert!(Args::try_parse_from(["dg-bench", "--datasets", "nope"]).is_err());
    }
}
