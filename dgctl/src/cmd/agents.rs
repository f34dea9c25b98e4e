//! `dgctl agents`: inventory, revocation, join tokens. Agents are named by id or host name.

use dg_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use serde::Serialize;

use crate::{App, error::CliResult, output, resolve, view};

/// Agent commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List agents.
    List,
    /// Show one agent.
    Get {
        /// Agent id or host name.
        agent: String,
    },
    /// Revoke an agent (its stream is closed; it can no longer connect).
    Revoke {
        /// Agent id or host name.
        agent: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Create a one-time join token for enrolling an agent.
    JoinToken {
        /// Validity, e.g. `1h` (default 1 hour, at most 7 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Free text kept with the token.
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Serialize)]
struct JoinTokenView {
    token: String,
    expires_at: Option<String>,
    ca_fingerprint: String,
    enroll_command: String,
}

/// Runs an agent command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = AgentServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let all: Vec<view::Agent> = resolve::agents(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { agent } => output::one(app.format, &view::Agent::from(resolve::agent(&s, &agent).await?)),
        Cmd::Revoke { agent, yes } => {
            let a = resolve::agent(&s, &agent).await?;
            super::confirm(&format!("Revoke agent {} ({})? It can no longer connect.", a.hostname, a.id), yes)?;
            let a = c.revoke_agent(s.req(pb::RevokeAgentRequest { id: a.id })).await?.into_inner();
            output::one(app.format, &view::Agent::from(a))
        }
        Cmd::JoinToken { ttl, description } => {
            let ttl = ttl.map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: 0 });
            let r = c.create_join_token(s.req(pb::CreateJoinTokenRequest { ttl, description })).await?.into_inner();
            output::one(
                app.format,
                &JoinTokenView {
                    token: r.token,
                    expires_at: view::ts(r.expires_at.as_ref()),
                    ca_fingerprint: r.ca_fingerprint,
                    enroll_command: r.enroll_command,
                },
            )
        }
    }
}
