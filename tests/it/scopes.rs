//! Resource scopes and critical-action approvals through the public API, against a real controller and agent
//! and real PostgreSQL backups: a team sees and acts on its own datasources, storages, jobs, backups and
//! executions only (NOT_FOUND as for an unknown id otherwise, lists filtered, creates outside its scope
//! refused); a deny rule wins; a token's own scope narrows its user's. A non-admin's restore into a protected
//! datasource, and a job deletion, wait for another user's approval that binds to exactly that call.

use std::collections::HashMap;

use dg_proto::v1::{
    self as pb, approval_service_client::ApprovalServiceClient, role_service_client::RoleServiceClient,
    token_service_client::TokenServiceClient,
};
use dg_tests::{
    cluster::{Clients, Cluster, authed, create_user, login_as, pending_approval},
    pg::TestDb,
    pg_server, suffix,
};
use sqlx::Executor;
use tonic::{Code, Request, Status, transport::Channel};

const PW: &str = dg_tests::cluster::USER_PASSWORD;
const SEED: &str = "CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A user with `roles`, logged in: its session token.
async fn user(ch: &Channel, admin: &str, name: &str, roles: &[&str]) -> anyhow::Result<String> {
    create_user(ch, admin, name, roles).await?;
    Ok(login_as(ch, name, PW).await?)
}

async fn role(ch: &Channel, admin: &str, name: &str, permissions: &[&str]) -> anyhow::Result<()> {
    RoleServiceClient::new(ch.clone())
        .create_role(authed(
            pb::CreateRoleRequest {
                name: name.into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
            admin,
        ))
        .await?;
    Ok(())
}

async fn rule(
    ch: &Channel,
    admin: &str,
    (user, role): (&str, &str),
    effect: pb::ScopeEffect,
    kind: &str,
    l: &[(&str, &str)],
) -> anyhow::Result<()> {
    RoleServiceClient::new(ch.clone())
        .create_scope_rule(authed(
            pb::CreateScopeRuleRequest {
                user: user.into(),
                role: role.into(),
                effect: effect as i32,
                resource_kind: kind.into(),
                labels: labels(l),
                ..Default::default()
            },
            admin,
        ))
        .await?;
    Ok(())
}

async fn datasource(
    c: &mut Clients,
    token: &str,
    agent: &str,
    database: &str,
    l: &[(&str, &str)],
) -> Result<pb::Datasource, Status> {
    let server = pg_server();
    let req = pb::CreateDatasourceRequest {
        name: format!("pg-{}", suffix()),
        engine: pb::Engine::Postgres as i32,
        host: server.host,
        port: u32::from(server.port),
        database: database.into(),
        username: server.user,
        password: server.password,
        tls_mode: pb::TlsMode::Disable as i32,
        agent_id: agent.into(),
        labels: labels(l),
    };
    Ok(c.datasources.create_datasource(authed(req, token)).await?.into_inner())
}

async fn storage(
    c: &mut Clients,
    agent: &str,
    dir: &std::path::Path,
    l: &[(&str, &str)],
) -> anyhow::Result<pb::Storage> {
    let config = pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
        path: dir.to_string_lossy().into_owned(),
        agent_id: agent.into(),
    });
    let req = pb::CreateStorageRequest { name: format!("local-{}", suffix()), config: Some(config), labels: labels(l) };
    Ok(c.storages.create_storage(authed(req, &c.token)).await?.into_inner())
}

async fn job(c: &mut Clients, token: &str, ds: &str, st: &str) -> Result<pb::BackupJob, Status> {
    let req = pb::CreateBackupJobRequest {
        name: format!("job-{}", suffix()),
        datasource_id: ds.into(),
        storage_ids: vec![st.into()],
        storage_strategy: pb::StorageStrategy::Fallback as i32,
        compression_level: 3,
        ..Default::default()
    };
    Ok(c.jobs.create_backup_job(authed(req, token)).await?.into_inner())
}

/// The message an unknown id of `what` gets: an out-of-scope one must get exactly the same.
fn unknown(what: &str, id: &str) -> String {
    format!("{what} {id} not found")
}

fn assert_hidden(r: Result<impl std::fmt::Debug, Status>, what: &str, id: &str) {
    let e = r.expect_err("out of scope");
    assert_eq!((e.code(), e.message()), (Code::NotFound, unknown(what, id).as_str()), "{what} {id}");
}

fn with_approval<T>(msg: T, token: &str, approval: &str) -> anyhow::Result<Request<T>> {
    let mut r = authed(msg, token);
    r.metadata_mut().insert("dg-approval", approval.parse()?);
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_see_and_act_on_their_own_resources_only() -> anyhow::Result<()> {
    let (db_a, db_b) = (TestDb::create("scope_a").await?, TestDb::create("scope_b").await?);
    db_a.connect().await?.execute(SEED).await?;
    db_b.connect().await?.execute(SEED).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let ch = cluster.channel().await?;
    let admin = c.token.clone();
    let agent = cluster.start_agent(&mut c).await?;

    let st_a = storage(&mut c, &agent.id, &cluster.dir.path().join("a"), &[("team", "a")]).await?;
    let st_b = storage(&mut c, &agent.id, &cluster.dir.path().join("b"), &[("team", "b")]).await?;
    // Storage labels are stored and shown.
    let got = c.storages.get_storage(authed(pb::GetStorageRequest { id: st_a.id.clone() }, &admin)).await?;
    assert_eq!(got.into_inner().labels, labels(&[("team", "a")]));
    let ds_a = datasource(&mut c, &admin, &agent.id, &db_a.name, &[("team", "a")]).await?;
    let ds_b = datasource(&mut c, &admin, &agent.id, &db_b.name, &[("team", "b")]).await?;
    let gold = datasource(&mut c, &admin, &agent.id, &db_a.name, &[("team", "a"), ("tier", "gold")]).await?;
    let job_a = job(&mut c, &admin, &ds_a.id, &st_a.id).await?;
    let job_b = job(&mut c, &admin, &ds_b.id, &st_b.id).await?;
    let bk_a = c.run_job(&job_a.id).await?;
    let bk_b = c.run_job(&job_b.id).await?;
    assert_eq!(
        (bk_a.status, bk_b.status),
        (pb::ExecutionStatus::Completed as i32, pb::ExecutionStatus::Completed as i32)
    );

    role(&ch, &admin, "team-a", &["datasource.write", "job.write", "storage.read"]).await?;
    rule(&ch, &admin, ("", "team-a"), pb::ScopeEffect::Allow, "datasource", &[("team", "a")]).await?;
    rule(&ch, &admin, ("", "team-a"), pb::ScopeEffect::Allow, "storage", &[("team", "a")]).await?;
    let alice = user(&ch, &admin, "alice", &["operator", "team-a"]).await?;
    // A deny rule of the user wins over its role's allow.
    rule(&ch, &admin, ("alice", ""), pb::ScopeEffect::Deny, "datasource", &[("tier", "gold")]).await?;

    // Lists show team A's only.
    let ids = |v: Vec<String>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    let dss = c.datasources.list_datasources(authed(pb::ListDatasourcesRequest::default(), &alice)).await?;
    assert_eq!(ids(dss.into_inner().datasources.into_iter().map(|d| d.id).collect()), ids(vec![ds_a.id.clone()]));
    let sts = c.storages.list_storages(authed(pb::ListStoragesRequest::default(), &alice)).await?;
    assert_eq!(ids(sts.into_inner().storages.into_iter().map(|s| s.id).collect()), ids(vec![st_a.id.clone()]));
    let jobs = c.jobs.list_backup_jobs(authed(pb::ListBackupJobsRequest::default(), &alice)).await?;
    assert_eq!(ids(jobs.into_inner().jobs.into_iter().map(|j| j.id).collect()), ids(vec![job_a.id.clone()]));
    let bks = c.backups.list_backups(authed(pb::ListBackupsRequest::default(), &alice)).await?;
    assert_eq!(ids(bks.into_inner().backups.into_iter().map(|b| b.id).collect()), ids(vec![bk_a.id.clone()]));
    let exs = c.executions.list_executions(authed(pb::ListExecutionsRequest::default(), &alice)).await?;
    assert_eq!(ids(exs.into_inner().executions.into_iter().map(|e| e.id).collect()), ids(vec![bk_a.id.clone()]));
    // Paging goes on past pages the scope thinned: one item per page, every visible one reached.
    let (mut token, mut seen, mut pages) = (String::new(), Vec::new(), 0);
    loop {
        let r = c
            .datasources
            .list_datasources(authed(pb::ListDatasourcesRequest { page_size: 1, page_token: token }, &alice))
            .await?
            .into_inner();
        seen.extend(r.datasources.into_iter().map(|d| d.id));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, vec![ds_a.id.clone()]);
    assert!(pages >= 3, "three datasources, one per page: {pages}");

    // By id: team B's answer exactly like unknown ids.
    let d = |id: &str| authed(pb::GetDatasourceRequest { id: id.into() }, &alice);
    assert!(c.datasources.get_datasource(d(&ds_a.id)).await.is_ok());
    assert_hidden(c.datasources.get_datasource(d(&ds_b.id)).await, "datasource", &ds_b.id);
    assert_hidden(c.datasources.get_datasource(d(&gold.id)).await, "datasource", &gold.id);
    assert_hidden(
        c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: job_b.id.clone() }, &alice)).await,
        "backup job",
        &job_b.id,
    );
    assert_hidden(
        c.jobs.run_now(authed(pb::RunNowRequest { job_id: job_b.id.clone() }, &alice)).await,
        "backup job",
        &job_b.id,
    );
    assert_hidden(
        c.backups.get_backup(authed(pb::GetBackupRequest { id: bk_b.id.clone() }, &alice)).await,
        "backup",
        &bk_b.id,
    );
    assert_hidden(
        c.executions.get_execution(authed(pb::GetExecutionRequest { id: bk_b.id.clone() }, &alice)).await,
        "execution",
        &bk_b.id,
    );
    assert_hidden(
        c.storages.get_storage(authed(pb::GetStorageRequest { id: st_b.id.clone() }, &alice)).await,
        "storage",
        &st_b.id,
    );
    // Restoring its own backup into team B's datasource: that target does not exist for it.
    let into_b = pb::RestoreBackupRequest {
        backup_id: bk_a.id.clone(),
        target_datasource_id: ds_b.id.clone(),
        target_database: "dgt_never".into(),
        create_database: true,
        confirm_target_database: "dgt_never".into(),
        ..Default::default()
    };
    assert_hidden(c.backups.restore_backup(authed(into_b, &alice)).await, "datasource", &ds_b.id);

    // Creates: inside its scope fine, outside refused naming why; a job over team B's storage refused.
    let mine = datasource(&mut c, &alice, &agent.id, &db_a.name, &[("team", "a")]).await?;
    let theirs = datasource(&mut c, &alice, &agent.id, &db_a.name, &[("team", "b")]).await.unwrap_err();
    assert_eq!(theirs.code(), Code::PermissionDenied, "{}", theirs.message());
    assert!(theirs.message().contains("labels") && theirs.message().contains("scope"), "{}", theirs.message());
    assert_hidden(job(&mut c, &alice, &mine.id, &st_b.id).await, "storage", &st_b.id);
    job(&mut c, &alice, &mine.id, &st_a.id).await?;
    // Relabelling its datasource over to team B would give it away: refused.
    let give_away =
        pb::UpdateDatasourceRequest { id: mine.id.clone(), labels: labels(&[("team", "b")]), ..Default::default() };
    let e = c.datasources.update_datasource(authed(give_away, &alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());

    // A token limited to one datasource sees only that one, though its user sees two.
    let t = TokenServiceClient::new(ch.clone())
        .create_token(authed(
            pb::CreateTokenRequest {
                name: "one".into(),
                role: "operator".into(),
                scopes: vec![pb::TokenScope {
                    resource_kind: "datasource".into(),
                    resource_id: ds_a.id.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &alice,
        ))
        .await?
        .into_inner()
        .secret;
    let dss = c.datasources.list_datasources(authed(pb::ListDatasourcesRequest::default(), &alice)).await?;
    assert_eq!(dss.into_inner().datasources.len(), 2, "alice: ds_a and the one she made");
    let dss = c.datasources.list_datasources(authed(pb::ListDatasourcesRequest::default(), &t)).await?;
    assert_eq!(ids(dss.into_inner().datasources.into_iter().map(|d| d.id).collect()), ids(vec![ds_a.id.clone()]));
    let by_token = authed(pb::GetDatasourceRequest { id: mine.id.clone() }, &t);
    assert_hidden(c.datasources.get_datasource(by_token).await, "datasource", &mine.id);

    // The admin still sees everything.
    let dss = c.datasources.list_datasources(authed(pb::ListDatasourcesRequest::default(), &admin)).await?;
    assert_eq!(dss.into_inner().datasources.len(), 4);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_restores_and_job_deletes_wait_for_an_approval_of_exactly_that_call() -> anyhow::Result<()> {
    let source = TestDb::create("appr_src").await?;
    source.connect().await?.execute(SEED).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let ch = cluster.channel().await?;
    let admin = c.token.clone();
    let agent = cluster.start_agent(&mut c).await?;
    let (_, _, job_src) =
        c.setup_pg_job(&agent.id, &cluster.dir.path().join("backups"), &source.name, &pg_server()).await?;
    let bk = c.run_job(&job_src.id).await?;
    assert_eq!(bk.status, pb::ExecutionStatus::Completed as i32, "{}", bk.error);
    let (target, other) = (TestDb::reserve("appr_dst"), TestDb::reserve("appr_oth"));
    let prod = datasource(&mut c, &admin, &agent.id, &target.name, &[("env", "production")]).await?;
    let prod2 = datasource(&mut c, &admin, &agent.id, &other.name, &[("protected", "true")]).await?;
    let oscar = user(&ch, &admin, "oscar", &["operator"]).await?;
    let mut approvals = ApprovalServiceClient::new(ch.clone());
    let restore = |ds: &pb::Datasource, db: &str| pb::RestoreBackupRequest {
        backup_id: bk.id.clone(),
        target_datasource_id: ds.id.clone(),
        target_database: db.into(),
        create_database: true,
        confirm_target_database: db.into(),
        ..Default::default()
    };
    let decide = |id: &str| pb::DecideApprovalRequest { id: id.into(), reason: "checked".into() };

    // Without an approval: refused naming a new pending one.
    let e = c.backups.restore_backup(authed(restore(&prod, &target.name), &oscar)).await.unwrap_err();
    let first = pending_approval(&e)?;
    let a = approvals.get_approval(authed(pb::GetApprovalRequest { id: first.clone() }, &admin)).await?.into_inner();
    assert_eq!(a.id, first);
    // The requester cannot approve (no approval.decide; and never its own).
    let own = approvals.approve_approval(authed(decide(&first), &oscar)).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{}", own.message());
    // Repeating before approval does not pass.
    let early =
        c.backups.restore_backup(with_approval(restore(&prod, &target.name), &oscar, &first)?).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{}", early.message());
    approvals.approve_approval(authed(decide(&first), &admin)).await?;

    // Approved: the same call with the approval runs and restores the data.
    let ex = c.backups.restore_backup(with_approval(restore(&prod, &target.name), &oscar, &first)?).await?;
    let ex = c.wait_execution(&ex.into_inner().id, std::time::Duration::from_secs(300)).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "restore: {}", ex.error);
    assert_eq!(target.table_fingerprint("t").await?, source.table_fingerprint("t").await?);
    // Single use.
    let again =
        c.backups.restore_backup(with_approval(restore(&prod, &target.name), &oscar, &first)?).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{}", again.message());

    // An approval of one target does not authorize another, nor other flags on the same target.
    let e = c.backups.restore_backup(authed(restore(&prod, "dgt_appr_x"), &oscar)).await.unwrap_err();
    let second = pending_approval(&e)?;
    approvals.approve_approval(authed(decide(&second), &admin)).await?;
    let elsewhere =
        c.backups.restore_backup(with_approval(restore(&prod2, &other.name), &oscar, &second)?).await.unwrap_err();
    assert_eq!(elsewhere.code(), Code::FailedPrecondition, "{}", elsewhere.message());
    let dropping = pb::RestoreBackupRequest { drop_existing: true, ..restore(&prod, "dgt_appr_x") };
    let e = c.backups.restore_backup(with_approval(dropping, &oscar, &second)?).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());

    // A rejected approval cannot be used.
    let e = c.backups.restore_backup(authed(restore(&prod2, &other.name), &oscar)).await.unwrap_err();
    let third = pending_approval(&e)?;
    approvals.reject_approval(authed(decide(&third), &admin)).await?;
    let rejected =
        c.backups.restore_backup(with_approval(restore(&prod2, &other.name), &oscar, &third)?).await.unwrap_err();
    assert_eq!(rejected.code(), Code::FailedPrecondition, "{}", rejected.message());

    // An admin needs no approval.
    let ex = c.backups.restore_backup(authed(restore(&prod2, &other.name), &admin)).await?.into_inner();
    let ex = c.wait_execution(&ex.id, std::time::Duration::from_secs(300)).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "admin restore: {}", ex.error);
    assert_eq!(other.table_fingerprint("t").await?, source.table_fingerprint("t").await?);

    // A job deletion by a non-admin allowed to delete jobs waits for an approval too.
    role(&ch, &admin, "job-deleter", &["job.delete"]).await?;
    let dora = user(&ch, &admin, "dora", &["operator", "job-deleter"]).await?;
    let del = || pb::DeleteBackupJobRequest { id: job_src.id.clone() };
    let e = c.jobs.delete_backup_job(authed(del(), &dora)).await.unwrap_err();
    let fourth = pending_approval(&e)?;
    assert!(c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: job_src.id.clone() }, &admin)).await.is_ok());
    approvals.approve_approval(authed(decide(&fourth), &admin)).await?;
    c.jobs.delete_backup_job(with_approval(del(), &dora, &fourth)?).await?;
    let gone = c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: job_src.id.clone() }, &admin)).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    // The refusals are in the audit log with their outcome.
    let ev = dg_proto::v1::audit_service_client::AuditServiceClient::new(ch.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest { action: "backup_job.delete".into(), ..Default::default() },
            &admin,
        ))
        .await?
        .into_inner()
        .events;
    assert!(ev.iter().any(|e| e.outcome.contains("FailedPrecondition")), "{ev:?}");
    assert!(ev.iter().any(|e| e.outcome == "ok" && e.actor == "dora"), "{ev:?}");
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
