//! `dgctl apply` and `dgctl diff`: make the controller hold what a YAML file declares, by name. A plan is
//! computed first (pure comparison of the file with one listing of every kind), printed, then executed in
//! dependency order: storages, datasources and channels, then jobs and drills (whose references are resolved
//! after the first phase created what they name); prune deletes in the reverse order. Secrets are never
//! compared: they are sent on create, and on update only with `--update-secrets`.

mod kinds;
pub mod spec;

use std::path::PathBuf;

use dg_proto::v1::{
    self as pb, backup_job_service_client::BackupJobServiceClient, datasource_service_client::DatasourceServiceClient,
    notification_service_client::NotificationServiceClient, restore_drill_service_client::RestoreDrillServiceClient,
    storage_service_client::StorageServiceClient,
};
use serde::Serialize;

use self::{
    kinds::{Change, Ctx},
    spec::File,
};
use crate::{
    App,
    connect::Session,
    error::{CliError, CliResult},
    output::Format,
};

/// `dgctl apply`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Resources are matched by name. Fields a file leaves out are not managed (kept on update, server \
defaults on create). Secrets are written as references only ({env: VAR} or {file: PATH}); an inline \
secret string is refused. Secrets cannot be compared (the API never returns them): they are sent when a \
resource is created, and on update only with --update-secrets; diff never reports them.

--prune is destructive: it DELETES every storage, datasource, job, drill and notification channel the \
file does not name (a datasource's or storage's deletion fails while other resources still use it). It \
asks for confirmation; without a terminal it requires --yes.")]
pub struct ApplyArgs {
    /// The declarative file (YAML).
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
    /// DESTRUCTIVE: delete resources of the managed kinds that the file does not name.
    #[arg(long)]
    prune: bool,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also send the secrets of resources that are updated (they cannot be compared, so they are not sent
    /// otherwise).
    #[arg(long)]
    update_secrets: bool,
    /// Do not ask before pruning.
    #[arg(long)]
    yes: bool,
}

/// `dgctl diff`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Prints, per resource, what `dgctl apply -f FILE` would create, change (field: stored -> declared) or, \
with --prune, delete. Prints nothing when the controller already matches the file. Exits 0 whether or \
not there are differences (errors keep their usual codes); scripts test whether the output is empty. \
Secrets are never compared, so they never show up here.")]
pub struct DiffArgs {
    /// The declarative file (YAML).
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
    /// Also show the deletions `apply --prune` would make.
    #[arg(long)]
    prune: bool,
}

/// Kinds in dependency order (creates go forward, deletes backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Storage,
    Datasource,
    NotificationChannel,
    Job,
    Drill,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Storage => "storage",
            Kind::Datasource => "datasource",
            Kind::NotificationChannel => "notification channel",
            Kind::Job => "job",
            Kind::Drill => "drill",
        }
    }
}

/// What happens to one resource.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    Create,
    Update { changes: Vec<Change> },
    Delete,
}

/// One planned step.
#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub kind: Kind,
    pub name: String,
    /// Stored id (updates and deletes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub op: Op,
}

impl Action {
    fn text(&self) -> String {
        let (sign, verb) = match self.op {
            Op::Create => ('+', "create"),
            Op::Update { .. } => ('~', "update"),
            Op::Delete => ('-', "delete"),
        };
        let mut s = format!("{sign} {verb} {} \"{}\"", self.kind.word(), self.name);
        if let Op::Update { changes } = &self.op {
            for c in changes {
                s.push_str(&format!("\n    {}: {:?} -> {:?}", c.field, c.from, c.to));
            }
        }
        s
    }
}

/// The file compared with the controller: creates and updates in dependency order, then deletes reversed.
pub fn plan(file: &File, ctx: &Ctx, prune: bool) -> CliResult<Vec<Action>> {
    let mut out = Vec::new();
    fn step<S, C>(
        out: &mut Vec<Action>,
        kind: Kind,
        specs: &[S],
        stored: &[C],
        spec_name: impl Fn(&S) -> &str,
        stored_name: impl Fn(&C) -> (&str, &str),
        changes: impl Fn(&S, &C) -> CliResult<Vec<Change>>,
    ) -> CliResult<()> {
        for s in specs {
            let name = spec_name(s);
            match stored.iter().find(|c| stored_name(c).1 == name) {
                None => out.push(Action { kind, name: name.to_owned(), id: None, op: Op::Create }),
                Some(c) => {
                    let ch = changes(s, c)?;
                    if !ch.is_empty() {
                        let id = Some(stored_name(c).0.to_owned());
                        out.push(Action { kind, name: name.to_owned(), id, op: Op::Update { changes: ch } });
                    }
                }
            }
        }
        Ok(())
    }
    step(
        &mut out,
        Kind::Storage,
        &file.storages,
        &ctx.storages,
        |s| s.name.as_str(),
        |c| (c.id.as_str(), c.name.as_str()),
        |s, c| kinds::storage_changes(s, c, ctx),
    )?;
    step(
        &mut out,
        Kind::Datasource,
        &file.datasources,
        &ctx.datasources,
        |s| s.name.as_str(),
        |c| (c.id.as_str(), c.name.as_str()),
        |s, c| kinds::datasource_changes(s, c, ctx),
    )?;
    step(
        &mut out,
        Kind::NotificationChannel,
        &file.notification_channels,
        &ctx.channels,
        |s| s.name.as_str(),
        |c| (c.id.as_str(), c.name.as_str()),
        kinds::channel_changes,
    )?;
    step(
        &mut out,
        Kind::Job,
        &file.jobs,
        &ctx.jobs,
        |s| s.name.as_str(),
        |c| (c.id.as_str(), c.name.as_str()),
        |s, c| kinds::job_changes(s, c, ctx),
    )?;
    step(
        &mut out,
        Kind::Drill,
        &file.drills,
        &ctx.drills,
        |s| s.name.as_str(),
        |c| (c.id.as_str(), c.name.as_str()),
        |s, c| kinds::drill_changes(s, c, ctx),
    )?;
    if prune {
        let mut gone = |kind: Kind, stored: Vec<(&String, &String)>, named: Vec<&String>| {
            for (id, name) in stored {
                if !named.contains(&name) {
                    out.push(Action { kind, name: name.clone(), id: Some(id.clone()), op: Op::Delete });
                }
            }
        };
        gone(
            Kind::Drill,
            ctx.drills.iter().map(|x| (&x.id, &x.name)).collect(),
            file.drills.iter().map(|x| &x.name).collect(),
        );
        gone(
            Kind::Job,
            ctx.jobs.iter().map(|x| (&x.id, &x.name)).collect(),
            file.jobs.iter().map(|x| &x.name).collect(),
        );
        gone(
            Kind::NotificationChannel,
            ctx.channels.iter().map(|x| (&x.id, &x.name)).collect(),
            file.notification_channels.iter().map(|x| &x.name).collect(),
        );
        gone(
            Kind::Datasource,
            ctx.datasources.iter().map(|x| (&x.id, &x.name)).collect(),
            file.datasources.iter().map(|x| &x.name).collect(),
        );
        gone(
            Kind::Storage,
            ctx.storages.iter().map(|x| (&x.id, &x.name)).collect(),
            file.storages.iter().map(|x| &x.name).collect(),
        );
    }
    Ok(out)
}

fn load(path: &std::path::Path) -> CliResult<File> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::local(format!("{}: {e}", path.display())))?;
    spec::parse(&text, &path.display().to_string())
}

/// What `-o json|yaml` prints for apply and diff.
#[derive(Serialize)]
struct Report<'a> {
    actions: &'a [Action],
    changed: usize,
    dry_run: bool,
}

fn print_structured(format: Format, r: &Report<'_>) -> CliResult<()> {
    crate::output::one(format, r)
}

/// Runs `dgctl diff`.
pub async fn diff(app: &App, a: DiffArgs) -> CliResult<()> {
    let file = load(&a.file)?;
    let s = app.session().await?;
    let ctx = Ctx::load(&s).await?;
    let actions = plan(&file, &ctx, a.prune)?;
    if app.format != Format::Table {
        return print_structured(app.format, &Report { actions: &actions, changed: actions.len(), dry_run: true });
    }
    for act in &actions {
        println!("{}", act.text());
    }
    Ok(())
}

/// Runs `dgctl apply`.
pub async fn apply(app: &App, a: ApplyArgs) -> CliResult<()> {
    let file = load(&a.file)?;
    let s = app.session().await?;
    let ctx = Ctx::load(&s).await?;
    let actions = plan(&file, &ctx, a.prune)?;
    let table = app.format == Format::Table;
    if a.dry_run {
        if !table {
            return print_structured(app.format, &Report { actions: &actions, changed: actions.len(), dry_run: true });
        }
        for act in &actions {
            println!("{}", act.text());
        }
        println!("{} to change (dry run: nothing sent)", actions.len());
        return Ok(());
    }
    let deletes: Vec<&Action> = actions.iter().filter(|x| matches!(x.op, Op::Delete)).collect();
    if !deletes.is_empty() {
        let names: Vec<String> = deletes.iter().map(|d| format!("{} \"{}\"", d.kind.word(), d.name)).collect();
        super::confirm(&format!("Prune deletes {}: {}. Continue?", names.len(), names.join(", ")), a.yes)?;
    }
    let mut ctx = ctx;
    let mut reloaded = false;
    for act in actions.iter().filter(|x| !matches!(x.op, Op::Delete)) {
        if act.kind >= Kind::Job && !reloaded {
            // Jobs and drills name storages and datasources this run may just have created.
            ctx = Ctx::load(&s).await?;
            reloaded = true;
        }
        execute(&s, &file, &ctx, act, a.update_secrets)
            .await
            .map_err(|e| with_secret_hint(e, act, a.update_secrets))?;
        if table {
            println!("{}", act.text().replacen("create", "created", 1).replacen("update", "updated", 1));
        }
    }
    for act in actions.iter().filter(|x| matches!(x.op, Op::Delete)) {
        delete(&s, act).await?;
        if table {
            println!("- deleted {} \"{}\"", act.kind.word(), act.name);
        }
    }
    if table {
        println!("{} changed", actions.len());
        Ok(())
    } else {
        print_structured(app.format, &Report { actions: &actions, changed: actions.len(), dry_run: false })
    }
}

/// An update the controller refused because a changed destination needs its secret again: names the resource
/// and says how to send the file's secrets.
fn with_secret_hint(e: CliError, act: &Action, secrets_sent: bool) -> CliError {
    match e {
        CliError::Grpc(s)
            if !secrets_sent
                && s.code() == tonic::Code::InvalidArgument
                && s.message().contains("must be given again") =>
        {
            CliError::Grpc(tonic::Status::new(
                s.code(),
                format!(
                    "{} \"{}\": {} (apply again with --update-secrets to send the file's secrets)",
                    act.kind.word(),
                    act.name,
                    s.message()
                ),
            ))
        }
        e => e,
    }
}

/// Performs one create or update.
async fn execute(s: &Session, file: &File, ctx: &Ctx, act: &Action, secrets: bool) -> CliResult<()> {
    let missing = || CliError::local(format!("{} \"{}\" vanished from the file", act.kind.word(), act.name));
    let id = act.id.as_deref().unwrap_or_default();
    let create = matches!(act.op, Op::Create);
    match act.kind {
        Kind::Storage => {
            let spec = file.storages.iter().find(|x| x.name == act.name).ok_or_else(missing)?;
            let mut c = StorageServiceClient::new(s.channel.clone());
            if create {
                c.create_storage(s.req(kinds::storage_create(spec, ctx)?)).await?;
            } else {
                c.update_storage(s.req(kinds::storage_update(spec, id, ctx, secrets)?)).await?;
            }
        }
        Kind::Datasource => {
            let spec = file.datasources.iter().find(|x| x.name == act.name).ok_or_else(missing)?;
            let mut c = DatasourceServiceClient::new(s.channel.clone());
            if create {
                c.create_datasource(s.req(kinds::datasource_create(spec, ctx)?)).await?;
            } else {
                c.update_datasource(s.req(kinds::datasource_update(spec, id, ctx, secrets)?)).await?;
            }
        }
        Kind::NotificationChannel => {
            let spec = file.notification_channels.iter().find(|x| x.name == act.name).ok_or_else(missing)?;
            let mut c = NotificationServiceClient::new(s.channel.clone());
            if create {
                c.create_channel(s.req(kinds::channel_create(spec)?)).await?;
            } else {
                c.update_channel(s.req(kinds::channel_update(spec, id, secrets)?)).await?;
            }
        }
        Kind::Job => {
            let spec = file.jobs.iter().find(|x| x.name == act.name).ok_or_else(missing)?;
            let mut c = BackupJobServiceClient::new(s.channel.clone());
            if create {
                c.create_backup_job(s.req(kinds::job_create(spec, ctx)?)).await?;
            } else {
                let job = c.update_backup_job(s.req(kinds::job_update(spec, id, ctx)?)).await?.into_inner();
                match spec.enabled {
                    Some(true) if !job.enabled => {
                        c.enable_backup_job(s.req(pb::EnableBackupJobRequest { id: id.to_owned() })).await?;
                    }
                    Some(false) if job.enabled => {
                        c.disable_backup_job(s.req(pb::DisableBackupJobRequest { id: id.to_owned() })).await?;
                    }
                    _ => {}
                }
            }
        }
        Kind::Drill => {
            let spec = file.drills.iter().find(|x| x.name == act.name).ok_or_else(missing)?;
            let mut c = RestoreDrillServiceClient::new(s.channel.clone());
            if create {
                c.create_restore_drill(s.req(kinds::drill_create(spec, ctx)?)).await?;
            } else {
                c.update_restore_drill(s.req(kinds::drill_update(spec, id)?)).await?;
            }
        }
    }
    Ok(())
}

/// Performs one prune deletion (never forced: a resource still in use stays, and the error says why).
async fn delete(s: &Session, act: &Action) -> CliResult<()> {
    let id = act.id.clone().unwrap_or_default();
    match act.kind {
        Kind::Storage => {
            StorageServiceClient::new(s.channel.clone())
                .delete_storage(s.req(pb::DeleteStorageRequest { id, force: false }))
                .await?;
        }
        Kind::Datasource => {
            DatasourceServiceClient::new(s.channel.clone())
                .delete_datasource(s.req(pb::DeleteDatasourceRequest { id, force: false }))
                .await?;
        }
        Kind::NotificationChannel => {
            NotificationServiceClient::new(s.channel.clone())
                .delete_channel(s.req(pb::DeleteChannelRequest { id }))
                .await?;
        }
        Kind::Job => {
            BackupJobServiceClient::new(s.channel.clone())
                .delete_backup_job(s.req(pb::DeleteBackupJobRequest { id }))
                .await?;
        }
        Kind::Drill => {
            RestoreDrillServiceClient::new(s.channel.clone())
                .delete_restore_drill(s.req(pb::DeleteRestoreDrillRequest { id }))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            agents: vec![pb::Agent { id: "agent-1".into(), hostname: "h1".into(), ..Default::default() }],
            storages: vec![
                pb::Storage {
                    id: "st-1".into(),
                    name: "disk".into(),
                    config: Some(pb::storage::Config::Local(pb::LocalStorageConfig {
                        path: "/b".into(),
                        agent_id: "agent-1".into(),
                    })),
                    ..Default::default()
                },
                pb::Storage { id: "st-2".into(), name: "old".into(), ..Default::default() },
            ],
            datasources: vec![],
            jobs: vec![],
            drills: vec![],
            channels: vec![],
        }
    }

    #[test]
    fn plan_orders_by_dependency_skips_equal_and_prunes_in_reverse() {
        let f = spec::parse(
            "storages:\n  - {name: disk, local: {path: /b, agent: h1}}\n\
             datasources:\n  - {name: app, engine: postgres, host: db, database: d, username: u, agent: h1, password: {env: X}}\n\
             jobs:\n  - {name: nightly, datasource: app, storages: [disk]}\n",
            "f",
        )
        .expect("parse");
        let p = plan(&f, &ctx(), true).expect("plan");
        let steps: Vec<(Kind, &str, &str)> = p
            .iter()
            .map(|a| {
                let op = match a.op {
                    Op::Create => "create",
                    Op::Update { .. } => "update",
                    Op::Delete => "delete",
                };
                (a.kind, a.name.as_str(), op)
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                (Kind::Datasource, "app", "create"),
                (Kind::Job, "nightly", "create"),
                (Kind::Storage, "old", "delete"),
            ],
            "the unchanged storage is not in the plan; the dropped one is deleted last"
        );
        let moved =
            spec::parse("storages:\n  - {name: disk, local: {path: /c, agent: agent-1}}\n", "f").expect("parse");
        let p = plan(&moved, &ctx(), false).expect("plan");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].text(), "~ update storage \"disk\"\n    local.path: \"/b\" -> \"/c\"");
        let kind = spec::parse("storages:\n  - {name: disk, s3: {bucket: b}}\n", "f").expect("parse");
        let err = plan(&kind, &ctx(), false).expect_err("kind change refused");
        assert!(err.to_string().contains("storages[disk].kind"), "{err}");
    }
}
