//! Secrets never leak: everything the controller and agent log at TRACE level during a full backup and
//! restore (plus a failed login, a failed backup, a failed storage test and a controller Redis refuses for
//! a wrong password), and every error message and execution log returned, are searched for the passwords
//! and tokens used. Zero hits.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{ADMIN_PASSWORD, Cluster, ClusterOptions, authed},
    faults::procs::Redis,
    pg::ScramPostgres,
};
use sqlx::{Connection, Executor};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_trace_logs_or_errors() -> anyhow::Result<()> {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let scram = ScramPostgres::start().await?;
    let url = format!("postgres://postgres:{}@127.0.0.1:{}/postgres", scram.password, scram.port);
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, md5(g::text) FROM generate_series(1, 5000) g").await?;
    conn.close().await?;

    // Redis with a password (as an ACL user would have), so its password is searched for too.
    let redis_dir = tempfile::Builder::new().prefix("dg-secrets-redis-").tempdir()?;
    let mut redis = Redis::start(redis_dir.path()).await?;
    let redis_password = url::Url::parse(&redis.url())?.password().unwrap_or_default().to_owned();
    let mut cluster =
        Cluster::start_with(ClusterOptions { redis_url: Some(redis.url()), ..Default::default() }).await?;
    let mut c = cluster.clients().await?;
    let mut returned: Vec<String> = Vec::new();
    let mut auth = pb::auth_service_client::AuthServiceClient::new(cluster.channel().await?);
    let wrong_login = "Wrong-Login-Password-77";
    if let Err(e) = auth.login(pb::LoginRequest { username: "admin".into(), password: wrong_login.into() }).await {
        returned.push(e.message().to_owned());
    }
    let jt = c.agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &c.token)).await?.into_inner();
    let join_token = jt.token.clone();
    let agent = {
        let dir = dg_agent::state::StateDir::open(&cluster.dir.path().join("agent"))?;
        let id = dg_agent::enroll::enroll(&cluster.api_endpoint(), &jt.token, &jt.ca_fingerprint, &dir).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(dg_agent::session::run(dir, cluster.run_options(), cancel.clone()));
        c.wait_agent_status(&id, pb::AgentStatus::Online, Duration::from_secs(30)).await?;
        (id, cancel, task)
    };
    let t = c.token.clone();
    let dir = cluster.dir.path().join("backups");
    let (ds, _, job) = c.setup_pg_job(&agent.0, &dir, "postgres", &scram.server()).await?;

    // A cloud storage with a secret key, tested (it fails: nothing listens there).
    let s3_secret = "S3-Secret-Key-Never-Logged-42";
    let s3 = c
        .storages
        .create_storage(authed(
            pb::CreateStorageRequest {
                name: "s3".into(),
                config: Some(pb::create_storage_request::Config::S3(pb::S3StorageConfig {
                    endpoint: "http://127.0.0.1:1".into(),
                    bucket: "bucket".into(),
                    path_style: true,
                    allow_http: true,
                    access_key_id: "AKID-Never-Logged".into(),
                    secret_access_key: s3_secret.into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    let r = c
        .storages
        .test_storage(authed(
            pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Id(s3.id.clone())) },
            &t,
        ))
        .await?
        .into_inner();
    returned.push(r.error);

    // Full backup and restore with the real password.
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let restore = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: "restored".into(),
                create_database: true,
                confirm_target_database: "restored".into(),
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    let done = c.wait_execution(&restore.id, Duration::from_secs(120)).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);
    let ok =
        c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?.into_inner();
    assert!(ok.ok, "{ok:?}");

    // A failing backup: a wrong password on another datasource.
    let wrong_db_password = "Wrong-Db-Password-13";
    let (_, _, bad_job) = c
        .setup_pg_job(
            &agent.0,
            &dir,
            "postgres",
            &dg_tests::DbServer { password: wrong_db_password.into(), ..scram.server() },
        )
        .await?;
    let bad = c.run_job(&bad_job.id).await?;
    assert_eq!(bad.status, pb::ExecutionStatus::Failed as i32);
    for e in [&ex, &done, &bad] {
        returned.push(e.error.clone());
        returned.push(c.logs(&e.id).await?);
    }
    let ds_view =
        c.datasources.get_datasource(authed(pb::GetDatasourceRequest { id: ds.id.clone() }, &t)).await?.into_inner();
    returned.push(format!("{ds_view:?}"));
    let st_view = c.storages.get_storage(authed(pb::GetStorageRequest { id: s3.id.clone() }, &t)).await?.into_inner();
    returned.push(format!("{st_view:?}"));
    let mut audit = pb::audit_service_client::AuditServiceClient::new(cluster.channel().await?);
    returned.push(format!(
        "{:?}",
        audit
            .list_audit_events(authed(pb::ListAuditEventsRequest { page_size: 500, ..Default::default() }, &t))
            .await?
            .into_inner()
    ));
    // Logout: the token's last use.
    auth.logout(authed(pb::LogoutRequest {}, &t)).await?;

    agent.1.cancel();
    let _ = agent.2.await;
    cluster.stop().await;

    // A controller with a wrong Redis password: refused at every reconnect, logged, and shown as down.
    let wrong_redis_password = "Wrong-Redis-Password-55";
    let wrong_url = redis.url().replace(&redis_password, wrong_redis_password);
    let mut refused = Cluster::start_with(ClusterOptions { redis_url: Some(wrong_url), ..Default::default() }).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rc = refused.clients().await?;
    let run = rc.jobs.run_now(authed(pb::RunNowRequest { job_id: uuid::Uuid::new_v4().to_string() }, &rc.token)).await;
    returned.push(run.expect_err("the queue is down").message().to_owned());
    let mut health = pb::health_service_client::HealthServiceClient::new(refused.channel().await?);
    let sys = health.get_system_health(authed(pb::GetSystemHealthRequest {}, &rc.token)).await?.into_inner();
    returned.push(sys.redis.map(|r| r.error).unwrap_or_default());
    refused.stop().await;
    redis.kill().await;

    // A dump of the controller database shows only ciphertext and hashes.
    let dump = std::process::Command::new("pg_dump").arg("--data-only").arg(cluster.db.url()).output()?;
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dump.contains(&ds.id), "the dump holds the datasource row");
    returned.push(dump);

    let logs = String::from_utf8_lossy(&capture.0.lock().map_err(|_| anyhow::anyhow!("poisoned"))?).into_owned();
    assert!(logs.len() > 100_000, "TRACE output captured ({} bytes)", logs.len());
    assert!(logs.contains("TRACE"), "TRACE level was on");
    let everything = format!("{logs}\n{}", returned.join("\n"));
    let secrets = [
        ("admin password", ADMIN_PASSWORD),
        ("wrong login password", wrong_login),
        ("session token", t.as_str()),
        ("join token", join_token.as_str()),
        ("datasource password", scram.password.as_str()),
        ("wrong datasource password", wrong_db_password),
        ("s3 secret key", s3_secret),
        ("s3 access key id", "AKID-Never-Logged"),
        ("redis password", redis_password.as_str()),
        ("wrong redis password", wrong_redis_password),
    ];
    let hits: Vec<_> = secrets.iter().filter(|(_, s)| everything.contains(s)).map(|(what, _)| *what).collect();
    assert!(hits.is_empty(), "secrets found in logs or errors: {hits:?}");
    Ok(())
}
