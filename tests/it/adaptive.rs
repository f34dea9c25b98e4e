//! Adaptive compression through the API: a job asks for it with bounds, the backup reports how much it
//! compressed at each level and restores identically; bounds that do not hold are refused naming the field,
//! and an update turns it off again.

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Cluster, authed},
    pg::TestDb,
    suffix,
};
use sqlx::Executor;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_job_reports_its_levels_and_restores_identically() -> anyhow::Result<()> {
    let src = TestDb::create("adaptive").await?;
    // About 20 MiB of hex text: several adaptation windows.
    src.connect()
        .await?
        .execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) \
             FROM generate_series(1, 200000) g",
        )
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let st = c.local_storage(&agent.id, &cluster.dir.path().join("adaptive")).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let create = |adaptive: Option<pb::AdaptiveCompression>| pb::CreateBackupJobRequest {
        name: format!("adaptive-{}", suffix()),
        datasource_id: ds.id.clone(),
        storage_ids: vec![st.id.clone()],
        compression_level: 3,
        adaptive_compression: adaptive,
        ..Default::default()
    };

    // Bounds that do not hold are refused, naming the field, and nothing is created.
    for (min, max, field) in [
        (5, 2, "adaptive_compression.min_level"),
        (-9, 3, "adaptive_compression.min_level"),
        (1, 25, "adaptive_compression.max_level"),
    ] {
        let bad = pb::AdaptiveCompression { min_level: min, max_level: max };
        let e = c.jobs.create_backup_job(authed(create(Some(bad)), &c.token)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{min}..{max}");
        assert!(e.message().contains(field), "{min}..{max}: {}", e.message());
    }
    let listed = c.jobs.list_backup_jobs(authed(pb::ListBackupJobsRequest::default(), &c.token)).await?.into_inner();
    assert!(listed.jobs.is_empty(), "no job from refused requests");

    // Adaptive between 1 and 6: kept on the job, used by the backup, and reported level by level.
    let bounds = pb::AdaptiveCompression { min_level: 1, max_level: 6 };
    let job = c.jobs.create_backup_job(authed(create(Some(bounds)), &c.token)).await?.into_inner();
    assert_eq!(job.adaptive_compression, Some(bounds));
    let ex = c.run_job(&job.id).await?;
    let logs = c.logs(&ex.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", ex.error);
    assert!(logs.contains("zstd level adaptive 1..6"), "{logs}");
    let line = logs.lines().find(|l| l.contains("adaptive compression: level")).unwrap_or_default();
    assert!(!line.is_empty(), "the levels used are reported: {logs}");
    for part in line.split("level ").skip(1) {
        let level: i32 = part.split(':').next().unwrap_or_default().trim().parse()?;
        assert!((1..=6).contains(&level), "a level within the bounds: {line}");
    }
    let dst = TestDb::reserve("adaptive_dst");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, src.table_fingerprint("t").await?);

    // An update with both bounds 0 turns it off: the next backup uses the fixed level.
    let off = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        adaptive_compression: Some(pb::AdaptiveCompression { min_level: 0, max_level: 0 }),
        ..Default::default()
    };
    let job = c.jobs.update_backup_job(authed(off, &c.token)).await?.into_inner();
    assert_eq!(job.adaptive_compression, None);
    let ex = c.run_job(&job.id).await?;
    let logs = c.logs(&ex.id).await?;
    assert!(logs.contains("(zstd level 3)") && !logs.contains("adaptive compression"), "{logs}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
