//! `dgctl approvals`: the approvals of critical calls. A non-admin's critical call exits 6 naming a pending
//! approval; another user with approval.decide approves it here; the requester repeats the call with
//! `--approval ID`.

use dg_proto::v1::{self as pb, approval_service_client::ApprovalServiceClient};

use crate::{App, access_view::Approval, error::CliResult, output};

/// Approval commands.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List approvals, newest first.
    List {
        /// Only pending ones.
        #[arg(long)]
        pending: bool,
    },
    /// Show one approval, with the exact parameters of the call it is for.
    Get {
        /// Approval id.
        id: String,
    },
    /// Approve another user's critical call.
    Approve {
        /// Approval id.
        id: String,
        /// Why (kept in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject another user's critical call.
    Reject {
        /// Approval id.
        id: String,
        /// Why (kept in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Runs an approval command.
pub async fn run(app: &App, cmd: Cmd) -> CliResult<()> {
    let s = app.session().await?;
    let mut c = ApprovalServiceClient::new(s.channel.clone());
    let one = |a: pb::Approval| output::one(app.format, &Approval::from(a));
    match cmd {
        Cmd::List { pending } => {
            let (mut out, mut token) = (Vec::new(), String::new());
            loop {
                let req = pb::ListApprovalsRequest { pending_only: pending, page_size: 500, page_token: token.clone() };
                let r = c.list_approvals(s.req(req)).await?.into_inner();
                out.extend(r.approvals.into_iter().map(Approval::from));
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            output::list(app.format, &out)
        }
        Cmd::Get { id } => one(c.get_approval(s.req(pb::GetApprovalRequest { id })).await?.into_inner()),
        Cmd::Approve { id, reason } => {
            one(c.approve_approval(s.req(pb::DecideApprovalRequest { id, reason })).await?.into_inner())
        }
        Cmd::Reject { id, reason } => {
            one(c.reject_approval(s.req(pb::DecideApprovalRequest { id, reason })).await?.into_inner())
        }
    }
}
