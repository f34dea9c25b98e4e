//! `dgctl roles`: system and custom roles by name, and the permission catalogue.

use dg_proto::v1::{self as pb, role_service_client::RoleServiceClient};

use crate::{
    App,
    access_view::{Permission, Role},
    error::CliResult,
    output,
};

/// Role commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List roles.
    List,
    /// Show one role and its permissions.
    Get {
        /// Role name or id.
        role: String,
    },
    /// Create a custom role.
    Create {
        /// Role name.
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Permission (repeatable; see `dgctl roles permissions`).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    /// Change a custom role.
    Update {
        /// Role name or id.
        role: String,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// Replace the permissions with these (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// Delete a custom role.
    Delete {
        /// Role name or id.
        role: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// List every permission and the system roles that hold it.
    Permissions,
}

/// Runs a role command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = RoleServiceClient::new(s.channel.clone());
    match cmd {
        Cmd::List => {
            let r = c.list_roles(s.req(pb::ListRolesRequest {})).await?.into_inner();
            let all: Vec<Role> = r.roles.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { role } => {
            output::one(app.format, &Role::from(c.get_role(s.req(pb::GetRoleRequest { id: role })).await?.into_inner()))
        }
        Cmd::Create { name, description, permissions } => {
            let req = pb::CreateRoleRequest { name, description, permissions };
            output::one(app.format, &Role::from(c.create_role(s.req(req)).await?.into_inner()))
        }
        Cmd::Update { role, description, permissions } => {
            let req = pb::UpdateRoleRequest { id: role, description, permissions };
            output::one(app.format, &Role::from(c.update_role(s.req(req)).await?.into_inner()))
        }
        Cmd::Delete { role, yes } => {
            super::confirm(&format!("Delete role \"{role}\"?"), yes)?;
            c.delete_role(s.req(pb::DeleteRoleRequest { id: role.clone() })).await?;
            output::done(app.format, &format!("deleted role \"{role}\""), &serde_json::json!({"deleted": role}))
        }
        Cmd::Permissions => {
            let r = c.list_permissions(s.req(pb::ListPermissionsRequest {})).await?.into_inner();
            let all: Vec<Permission> = r.permissions.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
    }
}
