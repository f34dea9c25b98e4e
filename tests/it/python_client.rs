//! A client generated from `proto/` in another language (Python, grpcio-tools) logs in, lists agents and
//! runs a job against a running controller; the backup it queued completes.

use std::{process::Command, time::Duration};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{ADMIN_PASSWORD, Cluster},
    pg::TestDb,
    pg_server,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_generated_client_logs_in_lists_and_runs_a_job() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let src = TestDb::create("py").await?;
    let (_, _, job) = c.setup_pg_job(&agent.id, &cluster.dir.path().join("b"), &src.name, &pg_server()).await?;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let addr = format!("127.0.0.1:{}", cluster.api_addr.port());
    let out = tokio::task::spawn_blocking({
        let ca = cluster.ca_file.clone();
        let job = job.id.clone();
        move || {
            Command::new("python3")
                .arg(script)
                .args(["--addr", &addr, "--password", ADMIN_PASSWORD, "--job", &job])
                .arg("--ca")
                .arg(ca)
                .output()
        }
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed (run tests/run.sh to install grpcio-tools): {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["token_prefix"], "dgs_");
    assert_eq!(v["agents"][0]["id"], agent.id.as_str());
    assert_eq!(v["agents"][0]["status"], "AGENT_STATUS_ONLINE");
    assert_eq!(v["execution_status"], "EXECUTION_STATUS_QUEUED");
    assert_eq!(v["execution_type"], "dataguardian.v1.Execution");
    assert_eq!(v["unauthenticated_without_token"], true);

    let id = v["execution_id"].as_str().unwrap_or_default().to_owned();
    let done = c.wait_execution(&id, Duration::from_secs(120)).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
