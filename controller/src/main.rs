//! `dg-controller`: serve (default), migrate, print-ca, bootstrap-token, import.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dg_controller::{app, config::Config, service::import::ImportRequest};

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
    /// Register the backups a cloud storage holds that the catalog does not know (disaster recovery of the
    /// controller's database); the same checks as BackupService/ImportCatalog. Prints the report as JSON.
    Import {
        /// Storage to scan (id of a storage created on this controller, pointing at the old bucket/prefix).
        #[arg(long)]
        storage: uuid::Uuid,
        /// Datasource on this controller the found backups are registered to.
        #[arg(long)]
        datasource: uuid::Uuid,
        /// Only backups whose original datasource id is this one.
        #[arg(long = "from-datasource")]
        from_datasource: Option<uuid::Uuid>,
        /// Also read every chunk and check its sha256.
        #[arg(long = "verify-chunks")]
        verify_chunks: bool,
        /// Check everything, register nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
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
        Command::Import { storage, datasource, from_datasource, verify_chunks, dry_run } => {
            dg_common::tls::install_crypto_provider();
            let r = ImportRequest {
                storage_id: storage,
                datasource_id: datasource,
                from_datasource_id: from_datasource,
                verify_chunks,
                dry_run,
            };
            let report = app::import(&config, &r).await?;
            let json = serde_json::json!({
                "dry_run": dry_run,
                "imported_backup_ids": report.imported.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "skipped": report.skipped.iter().map(|(k, id, why)| serde_json::json!({
                    "manifest_key": k, "backup_id": id.to_string(), "reason": why,
                })).collect::<Vec<_>>(),
                "failed": report.failed.iter().map(|(k, why)| serde_json::json!({
                    "manifest_key": k, "reason": why,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
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
