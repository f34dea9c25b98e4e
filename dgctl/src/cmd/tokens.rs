//! `dgctl tokens`: API tokens. `create` prints the secret once (also in `-o json`, field `secret`); it is
//! never shown again. Use it with `DGCTL_TOKEN=… dgctl login --token` or any gRPC client.

use dg_proto::v1::{self as pb, token_service_client::TokenServiceClient};

use crate::{
    App,
    access_view::{CreatedToken, Token},
    connect::Session,
    error::CliResult,
    output::{self, Format},
    resolve,
};

/// Token commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List tokens (one's own; all with user.read).
    List {
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Create a token; prints its secret once.
    Create {
        /// Token name (unique per user).
        name: String,
        /// Role whose permissions the token carries (all must be held by the caller).
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. `30d` (default 30 days, at most 1 year).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Make it for this service account (name or id) instead of oneself.
        #[arg(long)]
        service_account: Option<String>,
    },
    /// Revoke a token.
    Revoke {
        /// Token id or name.
        token: String,
    },
}

async fn tokens(s: &Session, all: bool) -> CliResult<Vec<pb::ApiToken>> {
    let mut c = TokenServiceClient::new(s.channel.clone());
    Ok(c.list_tokens(s.req(pb::ListTokensRequest { include_inactive: all })).await?.into_inner().tokens)
}

/// Runs a token command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = TokenServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List { all } => {
            let all: Vec<Token> = tokens(&s, all).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Create { name, role, ttl, service_account } => {
            let req = pb::CreateTokenRequest {
                name,
                service_account: service_account.unwrap_or_default(),
                role,
                ttl_seconds: ttl.map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX)),
                scopes: vec![],
            };
            let r = c.create_token(s.req(req)).await?.into_inner();
            let token = Token::from(r.token.unwrap_or_default());
            if app.format == Format::Table {
                println!(
                    "created token \"{}\" ({}) for {}, expires {}",
                    token.name,
                    token.id,
                    token.user,
                    token.expires_at.clone().unwrap_or_default()
                );
                println!("secret (shown only now): {}", r.secret);
                Ok(())
            } else {
                output::one(app.format, &CreatedToken { token, secret: r.secret })
            }
        }
        Cmd::Revoke { token } => {
            let all = tokens(&s, false).await?;
            let t = resolve::pick("token", &token, &all, |t| &t.id, |t| &t.name)?;
            let r = c.revoke_token(s.req(pb::RevokeTokenRequest { id: t.id.clone() })).await?.into_inner();
            output::one(app.format, &Token::from(r))
        }
    }
}
