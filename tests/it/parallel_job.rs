//! The `parallel` job option through the public API and dgctl, against a real controller with a scripted
//! agent (no parallel backup runs here): kept and returned, 0 read as 1, out-of-range and non-PostgreSQL
//! values refused naming the field with nothing changed; the backup plan carries it; a result's layout
//! binding is recorded, shown as `Backup.parallel`, carried to a restore plan, and refused by a download.

use dg_proto::v1::{self as pb, agent_message::Kind};
use dg_tests::{
    cluster::{ADMIN_PASSWORD, Clients, Cluster, authed},
    fake_agent::{FakeAgent, FakeSession, chunk_for, exec_ref},
    suffix,
};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use tonic::Code;

use super::dgctl::{Ctl, dgctl_bin};
use crate::protocol::{WAIT, assigned, backup_prefix, run_now};

async fn get(c: &mut Clients, id: &str) -> anyhow::Result<pb::BackupJob> {
    Ok(c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: id.into() }, &c.token)).await?.into_inner())
}

async fn job_count(c: &mut Clients) -> anyhow::Result<usize> {
    let r = c.jobs.list_backup_jobs(authed(pb::ListBackupJobsRequest::default(), &c.token)).await?.into_inner();
    Ok(r.jobs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_is_kept_range_checked_and_postgresql_only() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let st = c.local_storage(&fake.id, &cluster.dir.path().join("parallel")).await?;
    let pg = c.datasource(pb::Engine::Postgres, &fake.id, "postgres").await?;
    let maria = c.datasource(pb::Engine::Mariadb, &fake.id, "app").await?;
    let create = |ds: &pb::Datasource, parallel: u32| pb::CreateBackupJobRequest {
        name: format!("parallel-{}", suffix()),
        datasource_id: ds.id.clone(),
        storage_ids: vec![st.id.clone()],
        parallel,
        ..Default::default()
    };
    let update = |id: &str, parallel: u32| pb::UpdateBackupJobRequest {
        id: id.into(),
        parallel: Some(parallel),
        ..Default::default()
    };

    // Created with 4, returned and read back with 4; 0 (the field unset) is one stream.
    let job = c.jobs.create_backup_job(authed(create(&pg, 4), &c.token)).await?.into_inner();
    assert_eq!(job.parallel, 4);
    assert_eq!(get(&mut c, &job.id).await?.parallel, 4);
    let single = c.jobs.create_backup_job(authed(create(&pg, 0), &c.token)).await?.into_inner();
    assert_eq!(get(&mut c, &single.id).await?.parallel, 1, "0 is one stream");

    // An update to 2 persists; an update that leaves the field out keeps it.
    let job = c.jobs.update_backup_job(authed(update(&job.id, 2), &c.token)).await?.into_inner();
    assert_eq!(job.parallel, 2);
    let renamed = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        name: Some(format!("renamed-{}", suffix())),
        ..Default::default()
    };
    c.jobs.update_backup_job(authed(renamed, &c.token)).await?;
    let before = get(&mut c, &job.id).await?;
    assert_eq!(before.parallel, 2, "absent in an update: kept");

    // Out of range: refused naming the field, on create and on update, and nothing changed.
    let jobs = job_count(&mut c).await?;
    for n in [17, 1000] {
        let e = c.jobs.create_backup_job(authed(create(&pg, n), &c.token)).await.expect_err("out of range");
        assert_eq!(e.code(), Code::InvalidArgument, "{n}: {e:?}");
        assert!(e.message().contains("parallel"), "{n}: {}", e.message());
        let e = c.jobs.update_backup_job(authed(update(&job.id, n), &c.token)).await.expect_err("out of range");
        assert_eq!(e.code(), Code::InvalidArgument, "{n}: {e:?}");
        assert!(e.message().contains("parallel"), "{n}: {}", e.message());
    }
    assert_eq!(job_count(&mut c).await?, jobs, "no job from refused requests");
    let after = get(&mut c, &job.id).await?;
    assert_eq!((after.parallel, after.updated_at), (2, before.updated_at), "the refused updates changed nothing");

    // More than one stream on MariaDB: refused on create and on update; one stream is fine.
    let e = c.jobs.create_backup_job(authed(create(&maria, 2), &c.token)).await.expect_err("MariaDB");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("parallel") && e.message().contains("PostgreSQL only"), "{}", e.message());
    let mj = c.jobs.create_backup_job(authed(create(&maria, 1), &c.token)).await?.into_inner();
    assert_eq!(mj.parallel, 1);
    let e = c.jobs.update_backup_job(authed(update(&mj.id, 3), &c.token)).await.expect_err("MariaDB");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("PostgreSQL only"), "{}", e.message());
    assert_eq!(get(&mut c, &mj.id).await?.parallel, 1);
    assert_eq!(job_count(&mut c).await?, jobs + 1);

    cluster.stop().await;
    Ok(())
}

/// One chunk reported and the backup completed with `layout_sha256` (empty: a single stream).
async fn complete(s: &mut FakeSession, a: &pb::Assign, storage: &str, layout: &str) -> anyhow::Result<()> {
    let data = format!("stream of {}", a.execution_id).into_bytes();
    s.send(chunk_for(a, storage, 0, &data)).await?;
    s.send(Kind::Completed(pb::Completed {
        execution: Some(exec_ref(a)),
        result: Some(pb::completed::Result::Backup(pb::BackupResult {
            raw_bytes: data.len() as u64,
            stored_bytes: data.len() as u64,
            chunk_count: 1,
            sha256: hex::encode(Sha256::digest(&data)),
            manifest_key: dg_common::manifest::manifest_key(&backup_prefix(a)),
            storage_ids: vec![storage.into()],
            tool_version: "fake".into(),
            server_version: "15".into(),
            layout_sha256: layout.into(),
            ..Default::default()
        })),
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_carries_parallel_and_a_recorded_layout_reaches_restores_but_not_downloads() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = fake.connect(&[]).await?;
    let st = c.local_storage(&fake.id, &cluster.dir.path().join("parallel-plan")).await?;
    let pg = c.datasource(pb::Engine::Postgres, &fake.id, "postgres").await?;
    let req = |parallel| pb::CreateBackupJobRequest {
        name: format!("parallel-{}", suffix()),
        datasource_id: pg.id.clone(),
        storage_ids: vec![st.id.clone()],
        parallel,
        ..Default::default()
    };
    let par = c.jobs.create_backup_job(authed(req(3), &c.token)).await?.into_inner();
    let one = c.jobs.create_backup_job(authed(req(0), &c.token)).await?.into_inner();
    let layout = hex::encode(Sha256::digest(b"a layout"));

    // The backup plan carries the job's stream count; a result with a layout binding records it.
    let mut backups = Vec::new();
    for (job, want, binding) in [(&par, 3, layout.as_str()), (&one, 1, "")] {
        let id = run_now(&mut c, &job.id).await?;
        let a = assigned(&mut s).await?;
        let Some(pb::assign::Task::Backup(t)) = &a.task else { anyhow::bail!("a backup, got {a:?}") };
        assert_eq!(t.parallel, want, "the plan of job {}", job.name);
        complete(&mut s, &a, &st.id, binding).await?;
        let ex = c.wait_execution(&id, WAIT).await?;
        assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
        backups.push(id);
    }
    let show = |id: &str| pb::GetBackupRequest { id: id.into() };
    let b = c.backups.get_backup(authed(show(&backups[0]), &c.token)).await?.into_inner();
    assert!(b.parallel, "a backup with a layout is a parallel one");
    let b = c.backups.get_backup(authed(show(&backups[1]), &c.token)).await?.into_inner();
    assert!(!b.parallel, "a single stream");

    // A download of the parallel backup is refused, saying what to do instead.
    let down = pb::DownloadBackupRequest { id: backups[0].clone(), decompress: false };
    let e = match c.backups.download_backup(authed(down, &c.token)).await {
        Err(e) => e,
        Ok(r) => r.into_inner().next().await.and_then(Result::err).ok_or_else(|| anyhow::anyhow!("downloaded"))?,
    };
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let want = format!(
        "backup {} is a parallel backup (its table data is in several streams): download serves single-stream \
         backups; restore it instead",
        backups[0]
    );
    assert_eq!(e.message(), want);

    // A restore plan carries the recorded binding (and none for the single stream).
    for (backup, want) in [(&backups[0], layout.as_str()), (&backups[1], "")] {
        let db = format!("dgt_parallel_{}", suffix());
        let r = pb::RestoreBackupRequest {
            backup_id: backup.clone(),
            target_database: db.clone(),
            create_database: true,
            confirm_target_database: db,
            ..Default::default()
        };
        let ex = c.backups.restore_backup(authed(r, &c.token)).await?.into_inner();
        let a = assigned(&mut s).await?;
        assert_eq!(a.execution_id, ex.id);
        let Some(pb::assign::Task::Restore(t)) = &a.task else { anyhow::bail!("a restore, got {a:?}") };
        assert_eq!(t.recorded.as_ref().map(|r| r.layout_sha256.as_str()), Some(want));
        let failed = pb::Failed { execution: Some(exec_ref(&a)), error: "scripted".into(), cancelled: false };
        s.send(Kind::Failed(failed)).await?;
        c.wait_execution(&ex.id, WAIT).await?;
    }

    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgctl_sets_parallel_on_create_update_and_apply() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let st = c.local_storage(&fake.id, &cluster.dir.path().join("parallel-dgctl")).await?;
    let pg = c.datasource(pb::Engine::Postgres, &fake.id, "postgres").await?;
    let work = cluster.dir.path().join("dgctl-parallel");
    std::fs::create_dir_all(&work)?;
    let ctl = Ctl {
        bin: dgctl_bin()?,
        config: work.join("dgctl.toml"),
        envs: vec![("DGCTL_PASSWORD".into(), ADMIN_PASSWORD.into())],
    };
    let endpoint = cluster.api_endpoint();
    ctl.ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &cluster.ca_fingerprint()]).await?;
    let job = format!("pj-{}", suffix());

    // --parallel 3 on create, shown by get and list; --parallel 2 on update.
    let created =
        ctl.json(&["jobs", "create", &job, "--datasource", &pg.name, "--storage", &st.name, "--parallel", "3"]).await?;
    assert_eq!(created["parallel"], 3, "{created}");
    assert_eq!(ctl.json(&["jobs", "get", &job]).await?["parallel"], 3);
    let listed = ctl.json(&["jobs", "list"]).await?;
    let row = listed.as_array().and_then(|a| a.iter().find(|j| j["name"] == job.as_str())).cloned();
    assert_eq!(row.map(|j| j["parallel"].clone()), Some(serde_json::json!(3)), "{listed}");
    let table = ctl.ok(&["jobs", "get", &job]).await?;
    assert!(table.lines().any(|l| l.contains("parallel") && l.contains('3')), "{table}");
    assert_eq!(ctl.json(&["jobs", "update", &job, "--parallel", "2"]).await?["parallel"], 2);

    // Out of range: the controller's refusal names the field, and the job keeps its value.
    let o = ctl.run(&["jobs", "update", &job, "--parallel", "17"]).await?;
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("INVALID_ARGUMENT") && o.stderr.contains("parallel"), "{}", o.stderr);
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(get(&mut c, &id).await?.parallel, 2);

    // The declarative file's `parallel:` is diffed and applied; applying again changes nothing.
    let file = work.join("jobs.yaml");
    std::fs::write(
        &file,
        format!("jobs:\n  - name: {job}\n    datasource: {}\n    storages: [{}]\n    parallel: 5\n", pg.name, st.name),
    )?;
    let file = file.to_string_lossy().into_owned();
    let diff = ctl.ok(&["diff", "-f", &file]).await?;
    assert!(diff.contains("parallel") && diff.contains('2') && diff.contains('5'), "{diff}");
    ctl.ok(&["apply", "-f", &file]).await?;
    assert_eq!(ctl.json(&["jobs", "get", &job]).await?["parallel"], 5);
    assert_eq!(ctl.ok(&["diff", "-f", &file]).await?.trim(), "", "applied: no difference left");

    cluster.stop().await;
    Ok(())
}
