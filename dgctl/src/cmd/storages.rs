//! `dgctl storages`: create (one subcommand per kind), update, test, delete by name.

use dg_proto::v1::{self as pb, storage_service_client::StorageServiceClient};

use crate::{
    App,
    connect::Session,
    error::{CliError, CliResult},
    output, resolve,
    secret::SecretArgs,
    view,
};

/// Storage commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List storages.
    List,
    /// Show one storage.
    Get {
        /// Name or id.
        storage: String,
    },
    /// Create a storage.
    Create {
        /// Unique name.
        name: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = super::datasources::label)]
        labels: Vec<(String, String)>,
        #[command(subcommand)]
        kind: Kind,
    },
    /// Rename a storage and/or replace its configuration (same kind; secrets left out keep their value).
    Update {
        /// Name or id.
        storage: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Label KEY=VALUE to set (repeatable; merged).
        #[arg(long = "label", value_parser = super::datasources::label)]
        labels: Vec<(String, String)>,
        #[command(subcommand)]
        kind: Option<Kind>,
    },
    /// Delete a storage.
    Delete {
        /// Name or id.
        storage: String,
        /// Also remove it from the jobs that target it.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Write, read back and delete a probe object.
    Test {
        /// Name or id.
        storage: String,
    },
}

/// Kind-specific configuration.
#[derive(Debug, clap::Subcommand)]
pub enum Kind {
    /// A directory on one agent's host.
    Local {
        /// Absolute directory on the agent's host.
        #[arg(long)]
        path: String,
        /// Agent (id or host name) whose host holds it.
        #[arg(long)]
        agent: String,
    },
    /// An S3-compatible bucket (secret access key from --secret-env/--secret-file/--secret-stdin).
    S3 {
        /// Bucket.
        #[arg(long)]
        bucket: String,
        /// Region.
        #[arg(long, default_value = "")]
        region: String,
        /// Endpoint URL (empty for AWS).
        #[arg(long, default_value = "")]
        endpoint: String,
        /// Key prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Path-style addressing.
        #[arg(long)]
        path_style: bool,
        /// Access key id.
        #[arg(long, default_value = "")]
        access_key_id: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Allow plain HTTP.
        #[arg(long)]
        allow_http: bool,
        /// Use the host's ambient credentials.
        #[arg(long)]
        ambient_credentials: bool,
    },
    /// A Google Cloud Storage bucket (service account key JSON from --secret-*).
    Gcs {
        /// Bucket.
        #[arg(long)]
        bucket: String,
        /// Key prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Endpoint (emulators).
        #[arg(long, default_value = "")]
        endpoint: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Allow plain HTTP.
        #[arg(long)]
        allow_http: bool,
        /// Use the host's ambient credentials.
        #[arg(long)]
        ambient_credentials: bool,
    },
    /// An Azure Blob container (access key from --secret-*).
    Azure {
        /// Storage account.
        #[arg(long)]
        account: String,
        /// Container.
        #[arg(long)]
        container: String,
        /// Key prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Blob endpoint (emulators).
        #[arg(long, default_value = "")]
        endpoint: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Allow plain HTTP.
        #[arg(long)]
        allow_http: bool,
        /// Use the host's ambient credentials.
        #[arg(long)]
        ambient_credentials: bool,
    },
}

/// The wire configuration a [`Kind`] describes.
async fn config(s: &Session, k: Kind) -> CliResult<pb::create_storage_request::Config> {
    use pb::create_storage_request::Config;
    Ok(match k {
        Kind::Local { path, agent } => {
            Config::Local(pb::LocalStorageConfig { path, agent_id: resolve::agent(s, &agent).await?.id })
        }
        Kind::S3 {
            bucket,
            region,
            endpoint,
            prefix,
            path_style,
            access_key_id,
            secret,
            allow_http,
            ambient_credentials,
        } => Config::S3(pb::S3StorageConfig {
            endpoint,
            region,
            bucket,
            prefix,
            path_style,
            access_key_id,
            secret_access_key: secret.read()?.unwrap_or_default(),
            allow_http,
            ambient_credentials,
        }),
        Kind::Gcs { bucket, prefix, endpoint, secret, allow_http, ambient_credentials } => {
            Config::Gcs(pb::GcsStorageConfig {
                bucket,
                prefix,
                service_account_key: secret.read()?.unwrap_or_default(),
                endpoint,
                allow_http,
                ambient_credentials,
            })
        }
        Kind::Azure { account, container, prefix, endpoint, secret, allow_http, ambient_credentials } => {
            Config::Azure(pb::AzureStorageConfig {
                account,
                container,
                prefix,
                access_key: secret.read()?.unwrap_or_default(),
                endpoint,
                allow_http,
                ambient_credentials,
            })
        }
    })
}

/// The update form of a create configuration.
pub fn update_config(c: pb::create_storage_request::Config) -> pb::update_storage_request::Config {
    use pb::{create_storage_request::Config as C, update_storage_request::Config as U};
    match c {
        C::Local(l) => U::Local(l),
        C::S3(x) => U::S3(x),
        C::Gcs(x) => U::Gcs(x),
        C::Azure(x) => U::Azure(x),
    }
}

/// Runs a storage command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = StorageServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let all: Vec<view::Storage> = resolve::storages(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { storage } => output::one(app.format, &view::Storage::from(resolve::storage(&s, &storage).await?)),
        Cmd::Create { name, labels, kind } => {
            let req = pb::CreateStorageRequest {
                name,
                config: Some(config(&s, kind).await?),
                labels: labels.into_iter().collect(),
            };
            output::one(app.format, &view::Storage::from(c.create_storage(s.req(req)).await?.into_inner()))
        }
        Cmd::Update { storage, name, labels, kind } => {
            let st = resolve::storage(&s, &storage).await?;
            let config = match kind {
                Some(k) => Some(update_config(config(&s, k).await?)),
                None => None,
            };
            let req = pb::UpdateStorageRequest {
                id: st.id,
                name,
                config,
                labels: labels.into_iter().collect(),
                replace_labels: false,
            };
            output::one(app.format, &view::Storage::from(c.update_storage(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { storage, force, yes } => {
            let st = resolve::storage(&s, &storage).await?;
            super::confirm(&format!("Delete storage \"{}\"?", st.name), yes)?;
            let r = c.delete_storage(s.req(pb::DeleteStorageRequest { id: st.id.clone(), force })).await?.into_inner();
            output::done(
                app.format,
                &format!("deleted storage \"{}\"", st.name),
                &serde_json::json!({"deleted": st.id, "updated_jobs": r.updated_jobs}),
            )
        }
        Cmd::Test { storage } => {
            let st = resolve::storage(&s, &storage).await?;
            let req = pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Id(st.id)) };
            let r = view::TestResult::from(c.test_storage(s.req(req)).await?.into_inner());
            let ok = r.ok;
            output::one(app.format, &r)?;
            if ok { Ok(()) } else { Err(CliError::local(format!("storage \"{}\" test failed", st.name))) }
        }
    }
}
