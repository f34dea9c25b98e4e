//! Prometheus metrics an SRE can alert on, scraped from the real endpoint while a real cluster works: a
//! backup moves its job's last-success time and size and the duration histogram; a failing job counts a
//! failure by cause; a verify counts its copies; a restore drill counts its run, its RTO and its result per
//! drill (and puts one drill_passed event in the inbox); a job with a one-second RPO and no backup is breached; a notification to a receiver that refuses
//! connections gives up and is counted; a job queued while its agent is away shows in the queue depth and the
//! agent's presence drops; an attempt whose agent vanishes is reaped at lease expiry and counted as such.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Cluster, ClusterOptions, authed},
    fake_agent::FakeAgent,
    pg::TestDb,
    pg_server,
};
use sqlx::Executor;

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    anyhow::ensure!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    Ok(out)
}

/// The value of the first sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').map_or((series, ""), |(n, r)| (n, r));
        if n != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

/// Scrapes until `name{labels}` satisfies `ok` (the catalog gauges refresh every second in tests).
async fn until(
    addr: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await?;
        if let Some(v) = sample(&text, name, labels).filter(|v| ok(*v)) {
            return Ok(v);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{name}{labels:?} never held:\n{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_moves_with_what_the_cluster_does() -> anyhow::Result<()> {
    let opts = ClusterOptions { metrics: true, lease_secs: Some(3), rpo_interval_secs: Some(1), ..Default::default() };
    let mut cluster = Cluster::start_with(opts).await?;
    let addr = cluster.controller.as_ref().and_then(|c| c.metrics_addr).expect("metrics enabled");
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let src = TestDb::create("metrics_moves").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g")
        .await?;
    let dir = cluster.dir.path().join("m");
    let (_, _, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &pg_server()).await?;
    let (_, _, bad) = c.setup_pg_job(&agent.id, &dir, "dgt_metrics_missing_db", &pg_server()).await?;
    let before = chrono::Utc::now().timestamp() as f64 - 1.0;

    // A completed backup: last success, last size, the duration histogram.
    let done = c.run_job(&job.id).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);
    let j = [("job_id", job.id.as_str()), ("job_name", job.name.as_str())];
    until(addr, "dg_job_last_success_timestamp_seconds", &j, |v| v >= before).await?;
    until(addr, "dg_job_last_backup_size_bytes", &j, |v| v == done.stored_bytes as f64).await?;
    let hist = [("operation", "backup"), ("status", "completed")];
    until(addr, "dg_execution_duration_seconds_count", &hist, |v| v == 1.0).await?;
    let a = [("agent_id", agent.id.as_str())];
    until(addr, "dg_agent_up", &a, |v| v == 1.0).await?;
    until(addr, "dg_agent_last_seen_timestamp_seconds", &a, |v| v >= before).await?;

    // A failing job: a failure by cause; the job without success has no last-success sample.
    let failed = c.run_job(&bad.id).await?;
    assert_eq!(failed.status, pb::ExecutionStatus::Failed as i32);
    until(addr, "dg_execution_failures_total", &[("operation", "backup"), ("cause", "agent_failed")], |v| v == 1.0)
        .await?;
    let text = scrape(addr).await?;
    assert_eq!(sample(&text, "dg_job_last_success_timestamp_seconds", &[("job_id", bad.id.as_str())]), None);

    // A verify counts the copy it checked.
    let req = pb::VerifyBackupRequest { backup_id: done.id.clone(), ..Default::default() };
    let v = c.backups.verify_backup(authed(req, &c.token)).await?.into_inner();
    let v = c.wait_execution(&v.id, Duration::from_secs(60)).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}", v.error);
    until(addr, "dg_verify_copies_total", &[("result", "intact")], |v| v == 1.0).await?;

    // A restore drill of the backup: its run, its RTO, its result per drill.
    let drill = pb::CreateRestoreDrillRequest {
        name: format!("metrics-drill-{}", dg_tests::suffix()),
        datasource_id: done.datasource_id.clone(),
        target_datasource_id: done.datasource_id.clone(),
        max_backup_age: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    let drill = c.drills.create_restore_drill(authed(drill, &c.token)).await?.into_inner();
    let mut run = c
        .drills
        .run_restore_drill(authed(pb::RunRestoreDrillRequest { id: drill.id.clone() }, &c.token))
        .await?
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while run.status == pb::DrillRunStatus::Running as i32 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run =
            c.drills.get_drill_run(authed(pb::GetDrillRunRequest { id: run.id.clone() }, &c.token)).await?.into_inner();
    }
    assert_eq!(run.status, pb::DrillRunStatus::Passed as i32, "{run:?}");
    until(addr, "dg_drill_runs_total", &[("result", "passed")], |v| v == 1.0).await?;
    until(addr, "dg_drill_rto_seconds_count", &[("drill_name", drill.name.as_str())], |v| v == 1.0).await?;
    until(addr, "dg_drill_last_passed", &[("drill_id", drill.id.as_str())], |v| v == 1.0).await?;
    let inbox = c.notifications.list_inbox(authed(pb::ListInboxRequest::default(), &c.token)).await?.into_inner();
    let drill_events: Vec<_> = inbox.items.iter().filter(|i| i.kind.starts_with("drill_")).collect();
    assert_eq!(drill_events.len(), 1, "one event per run: {drill_events:?}");
    assert_eq!(drill_events[0].kind, "drill_passed");
    assert!(drill_events[0].summary.contains("assertions held"), "{}", drill_events[0].summary);

    // A one-second RPO on the job that never succeeded is breached; the job within its RPO is not.
    for (id, rpo) in [(&bad.id, 1), (&job.id, 3600)] {
        let req = pb::UpdateBackupJobRequest {
            id: id.to_string(),
            rpo: Some(prost_types::Duration { seconds: rpo, nanos: 0 }),
            ..Default::default()
        };
        c.jobs.update_backup_job(authed(req, &c.token)).await?;
    }
    until(addr, "dg_job_rpo_breached", &[("job_id", bad.id.as_str())], |v| v == 1.0).await?;
    until(addr, "dg_job_rpo_breached", &[("job_id", job.id.as_str())], |v| v == 0.0).await?;

    // A webhook whose receiver refuses connections: one attempt, then it gives up.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let channel = pb::CreateChannelRequest {
        name: format!("metrics-hook-{}", dg_tests::suffix()),
        kind: pb::ChannelKind::Webhook as i32,
        webhook: Some(pb::WebhookConfig {
            url: format!("http://{closed}/hook"),
            secret: "metrics-test-signing-secret".into(),
            has_secret: false,
        }),
        events: vec!["execution_failed".into()],
        max_attempts: 1,
        ..Default::default()
    };
    let channel = c.notifications.create_channel(authed(channel, &c.token)).await?.into_inner();
    let sent = c.notifications.test_channel(authed(pb::TestChannelRequest { id: channel.id }, &c.token)).await;
    assert!(sent.is_ok(), "the test-send is recorded, not an RPC error: {sent:?}");
    until(addr, "dg_notification_delivery_failures_total", &[("kind", "webhook")], |v| v == 1.0).await?;

    // The agent goes away: its presence drops, and a job run now waits in the queue.
    let agent_id = agent.id.clone();
    agent.stop().await;
    until(addr, "dg_agent_up", &[("agent_id", agent_id.as_str())], |v| v == 0.0).await?;
    let queued = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &c.token)).await?.into_inner();
    until(addr, "dg_queue_depth", &[("operation", "backup")], |v| v == 1.0).await?;
    c.executions.cancel_execution(authed(pb::CancelExecutionRequest { id: queued.id.clone() }, &c.token)).await?;
    until(addr, "dg_queue_depth", &[("operation", "backup")], |v| v == 0.0).await?;

    // An agent that takes an attempt and vanishes: the reaper ends it at lease expiry.
    let fake = FakeAgent::enroll(&cluster, &mut c).await?;
    let mut s = fake.connect(&[]).await?;
    let (fjob, _) = crate::protocol::job_for(&mut c, &cluster, &fake.id, 1).await?;
    let id = crate::protocol::run_now(&mut c, &fjob).await?;
    let assign = crate::protocol::assigned(&mut s).await?;
    assert_eq!(assign.execution_id, id);
    s.close();
    let reaped = c.wait_execution(&id, Duration::from_secs(30)).await?;
    assert_eq!(reaped.status, pb::ExecutionStatus::Failed as i32);
    until(addr, "dg_lease_reaps_total", &[], |v| v == 1.0).await?;
    until(addr, "dg_execution_failures_total", &[("operation", "backup"), ("cause", "lease_expired")], |v| v == 1.0)
        .await?;
    cluster.stop().await;
    Ok(())
}
