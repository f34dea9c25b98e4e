//! `dgctl users`: users by name. Passwords come from a prompt, an environment variable, a file or standard
//! input, never from a flag value. Changes to users are critical calls: a non-admin's answer is "approval
//! required" (exit 6), repeated with `--approval ID` once approved.

use dg_proto::v1::{self as pb, user_service_client::UserServiceClient};

use crate::{
    App,
    access_view::User,
    connect::Session,
    error::CliResult,
    output, resolve,
    secret::{PasswordArgs, password_or_prompt},
};

/// User commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List users.
    List,
    /// Show one user.
    Get {
        /// User name or id.
        user: String,
    },
    /// Create a user (password from a prompt or --password-env/--password-file/--password-stdin).
    Create {
        /// User name.
        username: String,
        /// Role name (repeatable; at least one).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A service account (no password; it acts through API tokens).
        #[arg(long)]
        service: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Disable a user (sessions and tokens stop working).
    Disable {
        /// User name or id.
        user: String,
    },
    /// Enable a disabled user.
    Enable {
        /// User name or id.
        user: String,
    },
    /// Delete a user.
    Delete {
        /// User name or id.
        user: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Set a new password for a user (prompted, or --password-env/--password-file/--password-stdin).
    ResetPassword {
        /// User name or id.
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Replace a user's roles.
    SetRoles {
        /// User name or id.
        user: String,
        /// Role name (repeatable; at least one).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
}

/// Every user, all pages.
pub async fn users(s: &Session) -> CliResult<Vec<pb::User>> {
    let mut c = UserServiceClient::new(s.channel.clone());
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let r = c.list_users(s.req(pb::ListUsersRequest { page_size: 500, page_token: token.clone() })).await?;
        let r = r.into_inner();
        out.extend(r.users);
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// The user `r` names (user name or id).
pub async fn user(s: &Session, r: &str) -> CliResult<pb::User> {
    let all = users(s).await?;
    resolve::pick("user", r, &all, |u| &u.id, |u| &u.username).cloned()
}

/// Runs a user command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = UserServiceClient::new(s.channel.clone());
    let update = |id: String, roles: Vec<String>, disabled: Option<bool>| pb::UpdateUserRequest { id, roles, disabled };
    let one = |u: pb::User| output::one(app.format, &User::from(u));
    match cmd {
        Cmd::List => {
            let all: Vec<User> = users(&s).await?.into_iter().map(Into::into).collect();
            output::list(app.format, &all)
        }
        Cmd::Get { user: u } => one(user(&s, &u).await?),
        Cmd::Create { username, roles, service, password } => {
            let (kind, password) = if service {
                (pb::UserKind::Service, String::new())
            } else {
                (pb::UserKind::Password, password_or_prompt(&password, &format!("Password for {username}"))?)
            };
            let req = pb::CreateUserRequest { username, password, kind: kind as i32, roles };
            one(c.create_user(s.req(req)).await?.into_inner())
        }
        Cmd::Disable { user: u } => {
            let u = user(&s, &u).await?;
            one(c.update_user(s.req(update(u.id, vec![], Some(true)))).await?.into_inner())
        }
        Cmd::Enable { user: u } => {
            let u = user(&s, &u).await?;
            one(c.update_user(s.req(update(u.id, vec![], Some(false)))).await?.into_inner())
        }
        Cmd::SetRoles { user: u, roles } => {
            let u = user(&s, &u).await?;
            one(c.update_user(s.req(update(u.id, roles, None))).await?.into_inner())
        }
        Cmd::Delete { user: u, yes } => {
            let u = user(&s, &u).await?;
            super::confirm(&format!("Delete user \"{}\"?", u.username), yes)?;
            c.delete_user(s.req(pb::DeleteUserRequest { id: u.id.clone() })).await?;
            output::done(app.format, &format!("deleted user \"{}\"", u.username), &serde_json::json!({"deleted": u.id}))
        }
        Cmd::ResetPassword { user: u, password } => {
            let u = user(&s, &u).await?;
            let new_password = password_or_prompt(&password, &format!("New password for {}", u.username))?;
            c.reset_password(s.req(pb::ResetPasswordRequest { id: u.id.clone(), new_password })).await?;
            output::done(
                app.format,
                &format!("password of \"{}\" reset", u.username),
                &serde_json::json!({"reset": u.id}),
            )
        }
    }
}
