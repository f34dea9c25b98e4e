//! The controller's Redis over TLS with an ACL user: a private `redis-server` listening on TLS only, with
//! rcgen certificates and a user restricted to the controller's keys and channels (`default` off). With
//! the right CA and password the queue works end to end (RunNow dispatches and completes) and the leader
//! lock and agent presence keys carry a TTL; with another CA, or a wrong password, queue operations answer
//! `UNAVAILABLE` while the controller keeps serving, and no answer quotes the password.

use std::{path::Path, time::Duration};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Cluster, ClusterOptions, authed},
    faults::procs::{Redis, RedisTlsFiles},
    pg::TestDb,
    pg_server, suffix,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sqlx::Executor;
use tonic::Code;

/// A CA: its certificate (PEM) and what signs with it.
fn make_ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Certificates for a Redis on 127.0.0.1 under `dir`, an ACL file with user `dg` (password `password`)
/// limited to `dataguardian:*` keys and channels, and another CA that did not sign the server.
fn redis_files(dir: &Path, password: &str) -> anyhow::Result<(RedisTlsFiles, std::path::PathBuf)> {
    let (ca_pem, issuer) = make_ca("redis test ca")?;
    // The same name as the real CA: only the signature tells them apart.
    let (other_pem, _) = make_ca("redis test ca")?;
    let key = KeyPair::generate()?;
    let cert =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?.signed_by(&key, &issuer)?;
    let files = RedisTlsFiles {
        cert: dir.join("redis.crt"),
        key: dir.join("redis.key"),
        ca: dir.join("ca.pem"),
        acl_file: dir.join("users.acl"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    std::fs::write(&files.ca, &ca_pem)?;
    std::fs::write(
        &files.acl_file,
        format!(
            "user default off\nuser dg on >{password} resetkeys ~dataguardian:* resetchannels &dataguardian:* -@all \
             +auth +hello +ping +quit +client|id +client|setname +info +eval +evalsha +get +set +pexpire +pttl +del \
             +publish +subscribe +unsubscribe\n"
        ),
    )?;
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, other_pem)?;
    Ok((files, other_ca))
}

/// `redis-cli` over TLS as `dg`: one command, its trimmed output.
async fn redis_cli(redis: &Redis, files: &RedisTlsFiles, password: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&files.ca)
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "--user", "dg", "--pass", password])
        .arg("--no-auth-warning")
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "redis-cli: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The milliseconds to live of `key`, waiting up to 15 s for it to exist.
async fn pttl(redis: &Redis, files: &RedisTlsFiles, password: &str, key: &str) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ttl: i64 = redis_cli(redis, files, password, &["PTTL", key]).await?.parse()?;
        if ttl != -2 || tokio::time::Instant::now() >= deadline {
            return Ok(ttl);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_runs_over_tls_as_an_acl_user() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dg-redis-tls-").tempdir()?;
    let password = format!("dg-redis-pw-{}", suffix());
    let (files, _) = redis_files(dir.path(), &password)?;
    let mut redis = Redis::start_tls(dir.path(), &files).await?;
    // The server really is TLS only with `default` off: no password, no entry.
    let anonymous = tokio::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&files.ca)
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "PING"])
        .output()
        .await?;
    assert!(!String::from_utf8_lossy(&anonymous.stdout).contains("PONG"), "the default user must be off");

    let src = TestDb::create("redistls").await?;
    src.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)").await?;
    let url = redis.url().replacen("rediss://", &format!("rediss://dg:{password}@"), 1);
    let mut cluster = Cluster::start_with(ClusterOptions {
        redis_url: Some(url),
        redis_ca_file: Some(files.ca.clone()),
        ..Default::default()
    })
    .await?;
    let shown = format!("{:?}", cluster.config);
    assert!(!shown.contains(&password) && shown.contains("rediss://dg:***@127.0.0.1"), "{shown}");
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (_, _, job) = c.setup_pg_job(&agent.id, &cluster.dir.path().join("r"), &src.name, &pg_server()).await?;

    // RunNow needs the queue: it dispatches and completes once Redis is seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        match c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &c.token)).await {
            Ok(ex) => break c.wait_execution(&ex.into_inner().id, Duration::from_secs(120)).await?,
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "{}", done.error);
    let mut health = pb::health_service_client::HealthServiceClient::new(cluster.channel().await?);
    let sys = health.get_system_health(authed(pb::GetSystemHealthRequest {}, &c.token)).await?.into_inner();
    let r = sys.redis.expect("redis");
    assert!(r.ok, "redis over TLS: {}", r.error);

    // The leader lock and the agent's presence were written by the controller, each with a TTL.
    let leader = format!("dataguardian:{}:scheduler:leader", cluster.ca_fingerprint());
    let ttl = pttl(&redis, &files, &password, &leader).await?;
    assert!(ttl > 0 && ttl <= 5_000, "leader lock PTTL {ttl} (scheduler tick 1 s × 5)");
    let presence = pttl(&redis, &files, &password, &format!("dataguardian:agent:{}", agent.id)).await?;
    assert!(presence > 0, "presence PTTL {presence}");
    // A lock left without a TTL (written by hand) gets one from the next scheduler round instead of
    // blocking every replica forever.
    redis_cli(&redis, &files, &password, &["SET", &leader, "someone-else"]).await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ttl = pttl(&redis, &files, &password, &leader).await?;
    assert!(ttl > 0, "a lock without a TTL must get one, PTTL {ttl}");

    agent.stop().await;
    cluster.stop().await;
    redis.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_makes_the_queue_unavailable_without_quoting_the_password() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dg-redis-tls-").tempdir()?;
    let password = format!("dg-redis-pw-{}", suffix());
    let (files, other_ca) = redis_files(dir.path(), &password)?;
    let mut redis = Redis::start_tls(dir.path(), &files).await?;
    let wrong_password = format!("dg-wrong-pw-{}", suffix());
    let with = |pw: &str| redis.url().replacen("rediss://", &format!("rediss://dg:{pw}@"), 1);
    let cases = [
        ("a CA that did not sign the server", with(&password), other_ca),
        ("a wrong ACL password", with(&wrong_password), files.ca.clone()),
    ];
    for (what, url, ca) in cases {
        let mut cluster =
            Cluster::start_with(ClusterOptions { redis_url: Some(url), redis_ca_file: Some(ca), ..Default::default() })
                .await?;
        let mut c = cluster.clients().await?;
        // Long enough for several pings and reconnects: the failure is not a start-up race.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut said = Vec::new();
        // Redis is checked first: an unknown job answers UNAVAILABLE, not NOT_FOUND, while the queue is down.
        let job_id = uuid::Uuid::new_v4().to_string();
        let refused = c.jobs.run_now(authed(pb::RunNowRequest { job_id }, &c.token)).await.expect_err(what);
        assert_eq!(refused.code(), Code::Unavailable, "{what}: {refused:?}");
        said.push(refused.message().to_owned());
        // The controller keeps serving what needs only PostgreSQL.
        let mut health = pb::health_service_client::HealthServiceClient::new(cluster.channel().await?);
        let sys = health.get_system_health(authed(pb::GetSystemHealthRequest {}, &c.token)).await?.into_inner();
        let r = sys.redis.expect("redis");
        assert!(!r.ok && sys.postgres.expect("postgres").ok, "{what}");
        said.push(r.error);
        let jobs = c.jobs.list_backup_jobs(authed(pb::ListBackupJobsRequest::default(), &c.token)).await?;
        assert!(jobs.into_inner().jobs.is_empty());
        said.push(format!("{:?}", cluster.config));
        for text in &said {
            assert!(!text.contains(&password) && !text.contains(&wrong_password), "{what}: {text}");
        }
        cluster.stop().await;
    }
    redis.kill().await;
    Ok(())
}
