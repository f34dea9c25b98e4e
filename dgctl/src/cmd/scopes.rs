//! `dgctl scopes`: scope rules (RoleService), which datasources, storages and jobs a user or a role's
//! holders see and act on.

use dg_proto::v1::{self as pb, role_service_client::RoleServiceClient};

use crate::{App, access_view::ScopeRule, error::CliResult, output};

/// Allow or deny.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Effect {
    /// Matching resources are visible (and, once a subject has an allow rule for a kind, only those).
    Allow,
    /// Matching resources are never visible (deny wins).
    Deny,
}

/// Scope rule commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List scope rules.
    List {
        /// Only this user's (name or id).
        #[arg(long)]
        user: Option<String>,
        /// Only this role's (name or id).
        #[arg(long)]
        role: Option<String>,
    },
    /// Add a rule: one subject (--user or --role), one match (--id or --label).
    Add {
        /// The user it applies to.
        #[arg(long, required_unless_present = "role", conflicts_with = "role")]
        user: Option<String>,
        /// The role it applies to.
        #[arg(long)]
        role: Option<String>,
        /// Allow or deny.
        #[arg(long, value_enum, default_value_t = Effect::Allow)]
        effect: Effect,
        /// datasource, storage or job.
        #[arg(long)]
        kind: String,
        /// One resource by id.
        #[arg(long, required_unless_present = "labels", conflicts_with = "labels")]
        id: Option<String>,
        /// Or a label selector KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = super::datasources::label)]
        labels: Vec<(String, String)>,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: String,
    },
}

/// Runs a scope command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = RoleServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List { user, role } => {
            let req = pb::ListScopeRulesRequest { user: user.unwrap_or_default(), role: role.unwrap_or_default() };
            let r = c.list_scope_rules(s.req(req)).await?.into_inner();
            let all: Vec<ScopeRule> = r.rules.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Add { user, role, effect, kind, id, labels } => {
            let effect = match effect {
                Effect::Allow => pb::ScopeEffect::Allow,
                Effect::Deny => pb::ScopeEffect::Deny,
            };
            let req = pb::CreateScopeRuleRequest {
                user: user.unwrap_or_default(),
                role: role.unwrap_or_default(),
                effect: effect as i32,
                resource_kind: kind,
                resource_id: id.unwrap_or_default(),
                labels: labels.into_iter().collect(),
            };
            output::one(app.format, &ScopeRule::from(c.create_scope_rule(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { id } => {
            c.delete_scope_rule(s.req(pb::DeleteScopeRuleRequest { id: id.clone() })).await?;
            output::done(app.format, &format!("deleted scope rule {id}"), &serde_json::json!({"deleted": id}))
        }
    }
}
