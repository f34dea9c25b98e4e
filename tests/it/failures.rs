//! Backups that must fail: a missing database and a wrong password. They end `failed` with a readable
//! error, and no backup is listed.

use dg_proto::v1 as pb;
use dg_tests::pg_server;
use dg_tests::{
    cluster::{Cluster, authed},
    pg::ScramPostgres,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_database_and_wrong_password_fail_cleanly() -> anyhow::Result<()> {
    let scram = ScramPostgres::start().await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("backups");

    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, "dgt_does_not_exist", &pg_server()).await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("does not exist"), "readable error: {}", ex.error);

    let wrong = "wrong-password-Zq81";
    let (_, _, job) = c
        .setup_pg_job(&agent.id, &dir, "postgres", &dg_tests::DbServer { password: wrong.into(), ..scram.server() })
        .await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32);
    assert!(ex.error.contains("password authentication failed"), "readable error: {}", ex.error);
    let logs = c.logs(&ex.id).await?;
    assert!(!ex.error.contains(wrong) && !logs.contains(wrong), "the password leaked");

    // The right password against the same server works, proving the failure was the password.
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, "postgres", &scram.server()).await?;
    let ok = c.run_job(&job.id).await?;
    assert_eq!(ok.status, pb::ExecutionStatus::Completed as i32, "{}", ok.error);

    let backups = c.backups.list_backups(authed(pb::ListBackupsRequest::default(), &c.token)).await?.into_inner();
    assert_eq!(backups.backups.len(), 1, "only the successful backup is listed");
    assert_eq!(backups.backups[0].id, ok.id);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
