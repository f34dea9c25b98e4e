//! `dgctl datasources`: create, update, test, delete by name. Flags mirror `CreateDatasourceRequest`.

use std::collections::HashMap;

use dg_proto::v1::{self as pb, datasource_service_client::DatasourceServiceClient};

use crate::{
    App,
    error::{CliError, CliResult},
    output, resolve,
    secret::PasswordArgs,
    view,
};

/// Database engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL.
    Mysql,
    /// MariaDB.
    Mariadb,
}

impl From<Engine> for pb::Engine {
    fn from(e: Engine) -> Self {
        match e {
            Engine::Postgres => pb::Engine::Postgres,
            Engine::Mysql => pb::Engine::Mysql,
            Engine::Mariadb => pb::Engine::Mariadb,
        }
    }
}

/// TLS modes to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when offered.
    Prefer,
    /// TLS, certificate not verified.
    Require,
    /// TLS, certificate and host name verified.
    VerifyFull,
}

impl From<TlsMode> for pb::TlsMode {
    fn from(t: TlsMode) -> Self {
        match t {
            TlsMode::Disable => pb::TlsMode::Disable,
            TlsMode::Prefer => pb::TlsMode::Prefer,
            TlsMode::Require => pb::TlsMode::Require,
            TlsMode::VerifyFull => pb::TlsMode::VerifyFull,
        }
    }
}

/// `KEY=VALUE`.
pub fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

/// Datasource commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List datasources.
    List,
    /// Show one datasource.
    Get {
        /// Name or id.
        datasource: String,
    },
    /// Create a datasource.
    Create {
        /// Unique name.
        name: String,
        /// Engine.
        #[arg(long, value_enum)]
        engine: Engine,
        /// Host as seen from the agent.
        #[arg(long)]
        host: String,
        /// Port (default per engine).
        #[arg(long)]
        port: Option<u32>,
        /// Database name.
        #[arg(long)]
        database: String,
        /// Login user.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// TLS mode (default prefer).
        #[arg(long, value_enum)]
        tls_mode: Option<TlsMode>,
        /// Agent (id or host name) that reaches the database.
        #[arg(long)]
        agent: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = label)]
        labels: Vec<(String, String)>,
    },
    /// Change the given fields of a datasource.
    Update {
        /// Name or id.
        datasource: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New host.
        #[arg(long)]
        host: Option<String>,
        /// New port.
        #[arg(long)]
        port: Option<u32>,
        /// New database.
        #[arg(long)]
        database: Option<String>,
        /// New user.
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
        /// New TLS mode.
        #[arg(long, value_enum)]
        tls_mode: Option<TlsMode>,
        /// New agent.
        #[arg(long)]
        agent: Option<String>,
        /// Label KEY=VALUE to set (repeatable; merged).
        #[arg(long = "label", value_parser = label)]
        labels: Vec<(String, String)>,
    },
    /// Delete a datasource.
    Delete {
        /// Name or id.
        datasource: String,
        /// Also delete the backup jobs that use it.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Test the connection from the bound agent.
    Test {
        /// Name or id.
        datasource: String,
    },
}

/// Runs a datasource command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = DatasourceServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let all: Vec<view::Datasource> = resolve::datasources(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { datasource } => {
            output::one(app.format, &view::Datasource::from(resolve::datasource(&s, &datasource).await?))
        }
        Cmd::Create { name, engine, host, port, database, username, password, tls_mode, agent, labels } => {
            let agent = resolve::agent(&s, &agent).await?;
            let req = pb::CreateDatasourceRequest {
                name,
                engine: pb::Engine::from(engine) as i32,
                host,
                port: port.unwrap_or(0),
                database,
                username,
                password: password.read()?.unwrap_or_default(),
                tls_mode: tls_mode.map(|t| pb::TlsMode::from(t) as i32).unwrap_or(0),
                agent_id: agent.id,
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
            };
            output::one(app.format, &view::Datasource::from(c.create_datasource(s.req(req)).await?.into_inner()))
        }
        Cmd::Update { datasource, name, host, port, database, username, password, tls_mode, agent, labels } => {
            let d = resolve::datasource(&s, &datasource).await?;
            let agent_id = match agent {
                Some(a) => Some(resolve::agent(&s, &a).await?.id),
                None => None,
            };
            let req = pb::UpdateDatasourceRequest {
                id: d.id,
                name,
                host,
                port,
                database,
                username,
                password: password.read()?,
                tls_mode: tls_mode.map(|t| pb::TlsMode::from(t) as i32),
                agent_id,
                labels: labels.into_iter().collect(),
                replace_labels: false,
            };
            output::one(app.format, &view::Datasource::from(c.update_datasource(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { datasource, force, yes } => {
            let d = resolve::datasource(&s, &datasource).await?;
            let what = if force { " and the backup jobs that use it" } else { "" };
            super::confirm(&format!("Delete datasource \"{}\"{what}?", d.name), yes)?;
            let r = c.delete_datasource(s.req(pb::DeleteDatasourceRequest { id: d.id.clone(), force })).await?;
            let r = r.into_inner();
            output::done(
                app.format,
                &format!("deleted datasource \"{}\" ({} jobs deleted along)", d.name, r.deleted_jobs),
                &serde_json::json!({"deleted": d.id, "deleted_jobs": r.deleted_jobs, "deleted_executions": r.deleted_executions}),
            )
        }
        Cmd::Test { datasource } => {
            let d = resolve::datasource(&s, &datasource).await?;
            let r = view::TestResult::from(
                c.test_datasource(s.req(pb::TestDatasourceRequest { id: d.id })).await?.into_inner(),
            );
            let ok = r.ok;
            output::one(app.format, &r)?;
            if ok { Ok(()) } else { Err(CliError::local(format!("datasource \"{}\" test failed", d.name))) }
        }
    }
}
