//! `dg-agent`: enroll (once) and run.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dg_agent::{enroll, session, state::StateDir};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "dg-agent", version, about = "DataGuardian agent")]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    /// OTLP gRPC endpoint for traces.
    #[arg(long, global = true, env = "DG_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll with a one-time join token; writes key, certificate and CA into the state directory.
    Enroll {
        /// Controller API endpoint, e.g. https://controller.example.com:7443.
        #[arg(long)]
        controller: String,
        /// One-time join token from AgentService/CreateJoinToken.
        #[arg(long, env = "DG_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Pinned CA fingerprint ("sha256:<hex>") from the same response.
        #[arg(long)]
        ca_fingerprint: String,
        /// State directory.
        #[arg(long, default_value = "/var/lib/dataguardian-agent")]
        state_dir: PathBuf,
    },
    /// Connect to the controller and run assigned jobs until stopped.
    Run {
        /// State directory written by `enroll`.
        #[arg(long, default_value = "/var/lib/dataguardian-agent")]
        state_dir: PathBuf,
        /// Directory local storages may live under (repeatable). Paths elsewhere, or through symlinks, are
        /// refused.
        #[arg(
            long = "local-root",
            env = "DG_LOCAL_ROOTS",
            value_delimiter = ',',
            default_value = "/var/backups/dataguardian"
        )]
        local_roots: Vec<PathBuf>,
        /// Directory searched for database client tools before PATH (repeatable), e.g.
        /// /usr/lib/postgresql/16/bin to dump a newer server.
        #[arg(long = "tool-dir", env = "DG_TOOL_DIRS", value_delimiter = ',')]
        tool_dirs: Vec<PathBuf>,
        /// Longest wait between two reconnection attempts (the wait doubles from 0.5 s up to this), e.g.
        /// "60s" or "2m". Keep it below the controller's lease so that running work survives an outage.
        #[arg(long, env = "DG_RECONNECT_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
        reconnect_max: std::time::Duration,
    },
    /// Create a key for encryption at rest in the state directory (`keys/<id>.key`, mode 0600). Name it in a
    /// backup job's `encryption_key_id`. To restore on another agent, copy the file to its `keys/` directory.
    Keygen {
        /// Key id, 1-64 characters of [A-Za-z0-9._-].
        #[arg(long)]
        key_id: String,
        /// State directory.
        #[arg(long, default_value = "/var/lib/dataguardian-agent")]
        state_dir: PathBuf,
    },
}

/// The glibc tunable that keeps the agent's memory bounded, and the variable marking the one re-execution.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_TUNABLE: &str = "glibc.malloc.mmap_threshold";
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const REEXEC_MARK: &str = "DG_AGENT_MALLOC_TUNED";

/// glibc's malloc raises its mmap threshold to the size of the first large buffer that is freed; the
/// pipelines allocate chunk-sized buffers (MiBs) on one thread and free them on another, so from then on they
/// come from per-thread arenas that keep the memory: measured with dg-bench, the agent's RSS grew by 10-30 MiB
/// with every restore, past 170 MiB. A fixed threshold (large buffers always mapped, and unmapped when freed)
/// keeps it flat, at about 25 MiB. glibc reads its tunables only at process start, and the threshold cannot
/// be set from safe code later, so the agent re-executes itself once with `GLIBC_TUNABLES` naming it (same
/// pid, same arguments). When the operator already set that tunable, or the exec fails, nothing changes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains(MMAP_TUNABLE) || std::env::var_os(REEXEC_MARK).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let tunable = format!("{MMAP_TUNABLE}=131072");
    let value = if current.is_empty() { tunable } else { format!("{current}:{tunable}") };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .env(REEXEC_MARK, "1")
        .exec();
    eprintln!("dg-agent: could not re-execute with a fixed malloc mmap threshold ({err}); continuing without");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

fn main() -> anyhow::Result<()> {
    fix_malloc_mmap_threshold();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    dg_common::tls::install_crypto_provider();
    let _telemetry = dg_common::telemetry::init("dg-agent", cli.log_json, cli.otlp_endpoint.as_deref())?;
    match cli.command {
        Command::Enroll { controller, token, ca_fingerprint, state_dir } => {
            let dir = StateDir::open(&state_dir)?;
            let id = enroll::enroll(&controller, &token, &ca_fingerprint, &dir).await?;
            eprintln!("enrolled; state written to {}", state_dir.display());
            println!("{id}");
            Ok(())
        }
        Command::Keygen { key_id, state_dir } => {
            let path = dg_agent::keys::generate(&dg_agent::keys::keys_dir(&state_dir), &key_id)?;
            eprintln!(
                "key written to {}; keep a copy somewhere safe: without it its backups cannot be restored",
                path.display()
            );
            println!("{key_id}");
            Ok(())
        }
        Command::Run { state_dir, local_roots, tool_dirs, reconnect_max } => {
            let dir = StateDir::open(&state_dir)?;
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                c.cancel();
            });
            let opts = session::RunOptions {
                local_roots,
                tools: dg_agent::tools::Tools::new(tool_dirs),
                max_backoff: reconnect_max.max(session::RunOptions::default().min_backoff),
                ..session::RunOptions::default()
            };
            session::run(dir, opts, cancel).await?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
