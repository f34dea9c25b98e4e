//! Retention through the public API: a policy previewed while it is being edited, then applied by the
//! cleanup worker, deletes exactly the backups the preview said it would (rows and objects), keeps the pinned
//! one and the newest, and unpinning hands a backup back to the policy. Calendar tiers cannot be exercised by
//! wall clock here (every backup is seconds old); they are covered by the decision's own tests.

use std::{collections::BTreeSet, path::Path, time::Duration};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    pg::TestDb,
    pg_server,
};
use sqlx::Executor;
use tonic::Code;

async fn job_backups(c: &mut Clients, job: &str) -> anyhow::Result<Vec<pb::Backup>> {
    let req = pb::ListBackupsRequest { page_size: 500, ..Default::default() };
    let all = c.backups.list_backups(authed(req, &c.token)).await?.into_inner();
    Ok(all.backups.into_iter().filter(|b| b.job_id == job).collect())
}

async fn preview(
    c: &mut Clients,
    job: &str,
    policy: Option<pb::RetentionPolicy>,
) -> anyhow::Result<Vec<(String, bool, Vec<String>)>> {
    let req = pb::PreviewRetentionRequest { job_id: job.into(), policy };
    let r = c.jobs.preview_retention(authed(req, &c.token)).await?.into_inner();
    Ok(r.backups.into_iter().map(|d| (d.backup_id, d.keep, d.reasons)).collect())
}

/// Every object key of a backup: its chunks and its manifest.
fn objects(b: &pb::Backup) -> Vec<String> {
    let mut keys: Vec<String> = b.chunks.iter().map(|c| c.key.clone()).collect();
    keys.push(b.manifest_key.clone());
    keys
}

fn all_exist(dir: &Path, keys: &[String]) -> bool {
    keys.iter().all(|k| dir.join(k).is_file())
}

fn none_exist(dir: &Path, keys: &[String]) -> bool {
    keys.iter().all(|k| !dir.join(k).exists())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_pin_and_cleanup_agree() -> anyhow::Result<()> {
    let src = TestDb::create("gfs").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500)")
        .await?;
    let mut cluster =
        Cluster::start_with(ClusterOptions { retention_interval_secs: Some(1), ..Default::default() }).await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("store");
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &pg_server()).await?;
    let keep_all = pb::RetentionPolicy { max_backups: 50, ..Default::default() };
    let upd = pb::UpdateBackupJobRequest { id: job.id.clone(), retention: Some(keep_all), ..Default::default() };
    c.jobs.update_backup_job(authed(upd, &c.token)).await?;

    for _ in 0..4 {
        let e = c.run_job(&job.id).await?;
        anyhow::ensure!(e.status == pb::ExecutionStatus::Completed as i32, "backup failed: {}", e.error);
    }
    // Newest first: b[0] is the newest.
    let listed = job_backups(&mut c, &job.id).await?;
    assert_eq!(listed.len(), 4);
    let mut b = Vec::new();
    for l in &listed {
        b.push(c.backups.get_backup(authed(pb::GetBackupRequest { id: l.id.clone() }, &c.token)).await?.into_inner());
    }
    assert!(b.iter().all(|b| all_exist(&dir, &objects(b))), "every backup's objects are on disk");

    // Pinning: the reason is required and bounded; a pinned backup shows it and cannot be deleted.
    let pin = |id: &str, reason: &str| pb::PinBackupRequest { backup_id: id.into(), reason: reason.into() };
    let e = c.backups.pin_backup(authed(pin(&b[2].id, " "), &c.token)).await.expect_err("empty reason");
    assert_eq!((e.code(), e.message().starts_with("reason")), (Code::InvalidArgument, true), "{e:?}");
    let e = c.backups.pin_backup(authed(pin(&b[2].id, &"x".repeat(300)), &c.token)).await.expect_err("long reason");
    assert_eq!(e.code(), Code::InvalidArgument);
    let pinned = c.backups.pin_backup(authed(pin(&b[2].id, "before upgrade"), &c.token)).await?.into_inner();
    assert_eq!((pinned.pinned, pinned.pin_reason.as_str()), (true, "before upgrade"));
    let e = c.backups.delete_backup(authed(pb::DeleteBackupRequest { id: b[2].id.clone() }, &c.token)).await;
    assert_eq!(e.expect_err("pinned").code(), Code::FailedPrecondition);

    // The policy under edit is validated, naming the field.
    let gfs_with_max = pb::RetentionPolicy {
        mode: pb::RetentionMode::Gfs as i32,
        max_backups: 2,
        keep_daily: 1,
        ..Default::default()
    };
    let e = preview(&mut c, &job.id, Some(gfs_with_max)).await.expect_err("invalid policy");
    assert!(e.to_string().contains("policy.max_backups"), "{e}");

    // The stored policy keeps everything.
    let now = preview(&mut c, &job.id, None).await?;
    assert!(now.iter().all(|(_, keep, _)| *keep), "{now:?}");
    assert_eq!(
        now.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(),
        b.iter().map(|b| b.id.clone()).collect::<Vec<_>>()
    );

    // Under edit: the newest 3, at least 1, none older than 1 s; every backup is older than that by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let strict = pb::RetentionPolicy {
        max_backups: 3,
        min_backups: 1,
        max_age: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    let plan = preview(&mut c, &job.id, Some(strict)).await?;
    assert_eq!(
        plan,
        vec![
            (b[0].id.clone(), true, strings(&["newest good backup", "min count"])),
            (b[1].id.clone(), false, strings(&["older than max_age (1 s)"])),
            (b[2].id.clone(), true, strings(&["pinned: before upgrade"])),
            (b[3].id.clone(), false, strings(&["beyond the newest 3"])),
        ]
    );
    assert_eq!(job_backups(&mut c, &job.id).await?.len(), 4, "a preview changes nothing");

    // Applied: the cleanup worker deletes exactly what the preview said.
    let upd = pb::UpdateBackupJobRequest { id: job.id.clone(), retention: Some(strict), ..Default::default() };
    let stored = c.jobs.update_backup_job(authed(upd, &c.token)).await?.into_inner();
    assert_eq!(stored.retention, Some(pb::RetentionPolicy { mode: pb::RetentionMode::Count as i32, ..strict }));
    let expect_kept: BTreeSet<String> = plan.iter().filter(|p| p.1).map(|p| p.0.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: BTreeSet<String> = job_backups(&mut c, &job.id).await?.into_iter().map(|b| b.id).collect();
        if left == expect_kept {
            break;
        }
        anyhow::ensure!(left.is_superset(&expect_kept), "a kept backup was deleted: {left:?}");
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "retention left {left:?}, expected {expect_kept:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (i, x) in b.iter().enumerate() {
        if expect_kept.contains(&x.id) {
            assert!(all_exist(&dir, &objects(x)), "kept backup {i} lost objects");
        } else {
            assert!(none_exist(&dir, &objects(x)), "deleted backup {i} left objects");
            let e = c.backups.get_backup(authed(pb::GetBackupRequest { id: x.id.clone() }, &c.token)).await;
            assert_eq!(e.expect_err("deleted").code(), Code::NotFound);
        }
    }
    // Idempotent: the policy now keeps everything that is left, for the same reasons.
    let again = preview(&mut c, &job.id, None).await?;
    assert_eq!(again, plan.iter().filter(|p| p.1).cloned().collect::<Vec<_>>());

    // Unpinned, the old backup falls to max_age and goes in the next round; the newest stays.
    let unpinned = c
        .backups
        .unpin_backup(authed(pb::UnpinBackupRequest { backup_id: b[2].id.clone() }, &c.token))
        .await?
        .into_inner();
    assert_eq!((unpinned.pinned, unpinned.pin_reason.as_str()), (false, ""));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while job_backups(&mut c, &job.id).await?.len() > 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the unpinned backup stays");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(job_backups(&mut c, &job.id).await?[0].id, b[0].id);
    assert!(none_exist(&dir, &objects(&b[2])) && all_exist(&dir, &objects(&b[0])));

    // A GFS policy round-trips through the job and names the periods that keep the last backup.
    let gfs = pb::RetentionPolicy {
        mode: pb::RetentionMode::Gfs as i32,
        keep_hourly: 24,
        keep_daily: 7,
        keep_weekly: 4,
        keep_monthly: 12,
        keep_yearly: 3,
        min_backups: 2,
        max_age: Some(prost_types::Duration { seconds: 400 * 86_400, nanos: 0 }),
        ..Default::default()
    };
    let upd = pb::UpdateBackupJobRequest { id: job.id.clone(), retention: Some(gfs), ..Default::default() };
    let stored = c.jobs.update_backup_job(authed(upd, &c.token)).await?.into_inner();
    assert_eq!(stored.retention, Some(gfs));
    let last = preview(&mut c, &job.id, None).await?;
    assert_eq!(last.len(), 1);
    let tiers: Vec<&str> = last[0].2.iter().filter_map(|r| r.split_once(' ').map(|(t, _)| t)).collect();
    assert_eq!(tiers, ["newest", "min", "hourly", "daily", "weekly", "monthly", "yearly"], "{last:?}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
