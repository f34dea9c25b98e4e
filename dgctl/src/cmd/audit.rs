//! `dgctl audit`: the audit trail, newest first.

use dg_proto::v1::{self as pb, audit_service_client::AuditServiceClient};

use crate::{App, error::CliResult, output, view};

/// Filters.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this actor.
    #[arg(long, default_value = "")]
    actor: String,
    /// Only this action (e.g. `datasource.create`).
    #[arg(long, default_value = "")]
    action: String,
    /// Only this target id.
    #[arg(long, default_value = "")]
    target: String,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: i32,
}

/// Lists audit events.
pub async fn run(app: &App, a: Args) -> CliResult<()> {
    let s = app.session().await?;
    let req = pb::ListAuditEventsRequest {
        actor: a.actor,
        action: a.action,
        target_id: a.target,
        page_size: a.limit,
        page_token: String::new(),
    };
    let r = AuditServiceClient::new(s.channel.clone()).list_audit_events(s.req(req)).await?.into_inner();
    let all: Vec<view::AuditEvent> = r.events.into_iter().map(Into::into).collect();
    output::list(app.format, &all)
}
