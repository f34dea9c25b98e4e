//! `dg-controller`: serve (default), migrate, print-ca.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dg_controller::{app, config::Config};

#[derive(Parser)]
#[command(name = "dg-controller", version, about = "DataGuardian controller")]
struct Cli {
    /// Configuration file (TOML); every key can be overridden with DG_<KEY>.
    #[arg(long, short, env = "DG_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the CA certificate (PEM) operators pass to grpcurl -cacert; creates the CA on first use.
    PrintCa,
    /// Make a new one-time bootstrap token for AuthService/Setup (replacing a lost one) and print it;
    /// refused once an admin exists.
    BootstrapToken,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let _telemetry =
        dg_common::telemetry::init("dg-controller", config.log_format == "json", config.otlp_endpoint.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => app::migrate(&config).await,
        Command::BootstrapToken => {
            println!("{}", app::bootstrap_token(&config).await?);
            Ok(())
        }
        Command::PrintCa => {
            dg_common::tls::install_crypto_provider();
            print!("{}", app::ca_pem(&config).await?);
            Ok(())
        }
        Command::Serve => {
            let running = app::start(config).await?;
            shutdown_signal().await;
            tracing::info!("shutdown requested");
            running.shutdown().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
