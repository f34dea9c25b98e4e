//! Command-line arguments (clap): the session counts and replica counts to step through, the sizes of each
//! measurement, and which measurements to skip.

use std::path::PathBuf;

use clap::Parser;

/// A fleet of simulated agents against real `dg-controller` processes: sessions held, controller memory and
/// CPU per session, heartbeat cost in PostgreSQL, RunNow → Assign latency, chunk reports ingested.
#[derive(Debug, Parser)]
#[command(name = "dg-fleet", version)]
pub(crate) struct Args {
    /// Session counts to step up through (an idle step with none comes first); the run stops stepping at the
    /// first count that cannot be held.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) sessions: Vec<u32>,
    /// Controller replica counts, one full run each (sessions split evenly between the replicas).
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub(crate) replicas: Vec<u32>,
    /// Executions kept queued (on agents that never connect) while RunNow → Assign is timed.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) queued: u32,
    /// Agents (never connected) the queued executions belong to.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) queue_agents: u32,
    /// RunNow → Assign samples per step (one at a time).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) latency_samples: u32,
    /// Longest time spent taking latency samples per step; fewer samples are taken when it runs out.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) latency_budget: u64,
    /// Measurement window of the heartbeat cost (controller CPU, PostgreSQL writes).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) window: u64,
    /// Second, shorter window with the queue in place (what queued executions cost the dispatch loop).
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) queued_window: u64,
    /// Heartbeat interval written into the controllers' configuration (`heartbeat_interval_secs`); every
    /// simulated agent heartbeats at it, the fleet spread evenly over the interval.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) heartbeat_interval: u64,
    /// Concurrent sessions of the chunk-report measurement, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) chunk_sessions: Vec<u32>,
    /// Duration of each chunk-report run.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) chunk_secs: u64,
    /// Chunk reports a session keeps unacknowledged at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) chunk_window: u32,
    /// Sessions opened at once while the fleet grows.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connect_concurrency: u32,
    /// Enrollments in flight per replica (the controller refuses more than its own cap at once; those are
    /// retried).
    #[arg(long, default_value_t = dg_controller::service::login_limit::MAX_CONCURRENT_ENROLLMENTS as u32,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) enroll_concurrency: u32,
    /// Redis for the controllers: a URL (e.g. `redis://127.0.0.1:6379/7`), or `private` for a redis-server of
    /// this run on a free port (the default: pub/sub channels are global to a Redis server whatever the
    /// database number, so a shared one carries other controllers' dispatch wake-ups into the figures).
    #[arg(long, default_value = "private")]
    pub(crate) redis: String,
    /// `RUST_LOG` of the controller processes.
    #[arg(long, default_value = "info")]
    pub(crate) controller_log: String,
    /// Where identities, configurations and logs go (default: /dev/shm when present, else the temp dir).
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Keep the work directory (controller logs, configurations) at the end.
    #[arg(long)]
    pub(crate) keep_work_dir: bool,
    /// Skip the measurement windows (heartbeat cost).
    #[arg(long)]
    pub(crate) skip_heartbeat: bool,
    /// Skip RunNow → Assign latency (and the queue it needs).
    #[arg(long)]
    pub(crate) skip_latency: bool,
    /// Skip chunk-report ingestion.
    #[arg(long)]
    pub(crate) skip_chunks: bool,
}

impl Args {
    /// Agents of the fleet that get a job of their own (latency probes and chunk reporters): the first ones.
    pub(crate) fn workers(&self) -> usize {
        let chunk = self.chunk_sessions.iter().copied().max().unwrap_or(1);
        usize::try_from(chunk.max(16)).unwrap_or(16)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn arguments_parse_with_defaults_and_limits() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["dg-fleet"]).expect("defaults");
        assert_eq!(a.sessions, [100, 1000, 5000, 10_000]);
        assert_eq!(a.replicas, [1, 2]);
        assert_eq!((a.queued, a.latency_samples, a.window, a.heartbeat_interval), (1000, 200, 30, 10));
        assert_eq!(a.chunk_sessions, [1, 4, 16]);
        assert_eq!(a.workers(), 16);
        assert_eq!(a.redis, "private");
        let a = Args::try_parse_from([
            "dg-fleet",
            "--sessions",
            "5,50",
            "--replicas",
            "2",
            "--chunk-sessions",
            "32",
            "--skip-latency",
        ])
        .expect("lists");
        assert_eq!((a.sessions.as_slice(), a.replicas.as_slice(), a.workers()), (&[5, 50][..], &[2][..], 32));
        assert!(a.skip_latency && !a.skip_chunks && !a.skip_heartbeat);
        assert!(Args::try_parse_from(["dg-fleet", "--sessions", "0"]).is_err());
        assert!(Args::try_parse_from(["dg-fleet", "--replicas", "0"]).is_err());
        assert!(Args::try_parse_from(["dg-fleet", "--heartbeat-interval", "0"]).is_err());
    }
}
