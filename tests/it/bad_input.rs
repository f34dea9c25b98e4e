//! Table-driven bad input for every create/update RPC (and restore, join tokens): each call gets the right
//! code, a message naming the field, and changes nothing.

use std::{future::Future, pin::Pin};

use dg_proto::v1 as pb;
use dg_tests::cluster::{Clients, Cluster, authed};
use dg_tests::pg::TestDb;
use dg_tests::pg_server;
use tonic::{Code, Status};

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Everything the operator API can list, to prove nothing changed.
async fn snapshot(c: &Clients) -> anyhow::Result<(usize, usize, usize, usize, usize)> {
    let t = c.token.clone();
    let big = |size| size;
    let (mut d, mut s, mut j, mut e, mut a) =
        (c.datasources.clone(), c.storages.clone(), c.jobs.clone(), c.executions.clone(), c.agents.clone());
    Ok((
        d.list_datasources(authed(pb::ListDatasourcesRequest { page_size: big(500), ..Default::default() }, &t))
            .await?
            .into_inner()
            .datasources
            .len(),
        s.list_storages(authed(pb::ListStoragesRequest { page_size: big(500), ..Default::default() }, &t))
            .await?
            .into_inner()
            .storages
            .len(),
        j.list_backup_jobs(authed(pb::ListBackupJobsRequest { page_size: big(500), ..Default::default() }, &t))
            .await?
            .into_inner()
            .jobs
            .len(),
        e.list_executions(authed(pb::ListExecutionsRequest { page_size: big(500), ..Default::default() }, &t))
            .await?
            .into_inner()
            .executions
            .len(),
        a.list_agents(authed(pb::ListAgentsRequest { page_size: big(500), ..Default::default() }, &t))
            .await?
            .into_inner()
            .agents
            .len(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named_and_changes_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("b");
    let src = TestDb::create("bad").await?;
    let (ds, st, job) = c.setup_pg_job(&agent.id, &dir, &src.name, &pg_server()).await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let t = c.token.clone();
    let before = snapshot(&c).await?;
    let unknown = uuid::Uuid::now_v7().to_string();

    let good_ds = pb::CreateDatasourceRequest {
        name: "x".into(),
        engine: pb::Engine::Postgres as i32,
        host: "127.0.0.1".into(),
        port: 5432,
        database: "db".into(),
        username: "u".into(),
        password: "p".into(),
        tls_mode: 0,
        agent_id: agent.id.clone(),
        labels: Default::default(),
    };
    let ds_case = |f: &dyn Fn(&mut pb::CreateDatasourceRequest)| -> Call {
        let mut r = good_ds.clone();
        f(&mut r);
        let mut cl = c.datasources.clone();
        let t = t.clone();
        Box::pin(async move { cl.create_datasource(authed(r, &t)).await.map(|_| ()) })
    };
    let local = |path: &str, agent: &str| {
        pb::create_storage_request::Config::Local(pb::LocalStorageConfig { path: path.into(), agent_id: agent.into() })
    };
    let st_case = |config: Option<pb::create_storage_request::Config>| -> Call {
        let mut cl = c.storages.clone();
        let t = t.clone();
        Box::pin(async move {
            cl.create_storage(authed(pb::CreateStorageRequest { name: "s".into(), config, ..Default::default() }, &t))
                .await
                .map(|_| ())
        })
    };
    let s3 = |f: &dyn Fn(&mut pb::S3StorageConfig)| {
        let mut s = pb::S3StorageConfig {
            bucket: "bucket".into(),
            endpoint: "http://127.0.0.1:9".into(),
            allow_http: true,
            ..Default::default()
        };
        f(&mut s);
        Some(pb::create_storage_request::Config::S3(s))
    };
    let good_job = pb::CreateBackupJobRequest {
        name: "j".into(),
        datasource_id: ds.id.clone(),
        storage_ids: vec![st.id.clone()],
        ..Default::default()
    };
    let job_case = |f: &dyn Fn(&mut pb::CreateBackupJobRequest)| -> Call {
        let mut r = good_job.clone();
        f(&mut r);
        let mut cl = c.jobs.clone();
        let t = t.clone();
        Box::pin(async move { cl.create_backup_job(authed(r, &t)).await.map(|_| ()) })
    };
    let ds_update = |r: pb::UpdateDatasourceRequest| -> Call {
        let mut cl = c.datasources.clone();
        let t = t.clone();
        Box::pin(async move { cl.update_datasource(authed(r, &t)).await.map(|_| ()) })
    };
    let st_update = |r: pb::UpdateStorageRequest| -> Call {
        let mut cl = c.storages.clone();
        let t = t.clone();
        Box::pin(async move { cl.update_storage(authed(r, &t)).await.map(|_| ()) })
    };
    let st_test = |config: Option<pb::create_storage_request::Config>| -> Call {
        let mut cl = c.storages.clone();
        let t = t.clone();
        let target = pb::test_storage_request::Target::Config(pb::CreateStorageRequest {
            name: "n".into(),
            config,
            ..Default::default()
        });
        Box::pin(async move {
            cl.test_storage(authed(pb::TestStorageRequest { target: Some(target) }, &t)).await.map(|_| ())
        })
    };
    let job_update = |r: pb::UpdateBackupJobRequest| -> Call {
        let mut cl = c.jobs.clone();
        let t = t.clone();
        Box::pin(async move { cl.update_backup_job(authed(r, &t)).await.map(|_| ()) })
    };
    let restore = |r: pb::RestoreBackupRequest| -> Call {
        let mut cl = c.backups.clone();
        let t = t.clone();
        Box::pin(async move { cl.restore_backup(authed(r, &t)).await.map(|_| ()) })
    };
    let join = |r: pb::CreateJoinTokenRequest| -> Call {
        let mut cl = c.agents.clone();
        let t = t.clone();
        Box::pin(async move { cl.create_join_token(authed(r, &t)).await.map(|_| ()) })
    };
    let dur = |s: i64| Some(prost_types::Duration { seconds: s, nanos: 0 });

    let cases: Vec<(&str, Call, Code, &str)> = vec![
        // CreateDatasource
        ("ds: missing name", ds_case(&|r| r.name.clear()), Code::InvalidArgument, "name"),
        ("ds: unspecified engine", ds_case(&|r| r.engine = 0), Code::InvalidArgument, "engine"),
        ("ds: unknown engine", ds_case(&|r| r.engine = 42), Code::InvalidArgument, "engine"),
        ("ds: bad port", ds_case(&|r| r.port = 70_000), Code::InvalidArgument, "port"),
        ("ds: host with a space", ds_case(&|r| r.host = "db host".into()), Code::InvalidArgument, "host"),
        (
            "ds: option-looking database",
            ds_case(&|r| r.database = "--file=/etc/passwd".into()),
            Code::InvalidArgument,
            "database",
        ),
        ("ds: option-looking user", ds_case(&|r| r.username = "-Upostgres".into()), Code::InvalidArgument, "username"),
        ("ds: missing database", ds_case(&|r| r.database.clear()), Code::InvalidArgument, "database"),
        ("ds: agent not a uuid", ds_case(&|r| r.agent_id = "agent-1".into()), Code::InvalidArgument, "agent_id"),
        ("ds: unknown agent", ds_case(&|r| r.agent_id = uuid::Uuid::now_v7().to_string()), Code::NotFound, "agent"),
        ("ds: unknown tls mode", ds_case(&|r| r.tls_mode = 9), Code::InvalidArgument, "tls_mode"),
        (
            "ds: line break in password",
            ds_case(&|r| r.password = "pw\nhost=evil".into()),
            Code::InvalidArgument,
            "password",
        ),
        ("ds: duplicate name", ds_case(&|r| r.name = ds.name.clone()), Code::AlreadyExists, "exists"),
        ("ds: 100 KB name", ds_case(&|r| r.name = "n".repeat(100_000)), Code::InvalidArgument, "name"),
        // UpdateDatasource
        (
            "ds update: bad id",
            ds_update(pb::UpdateDatasourceRequest { id: "x".into(), ..Default::default() }),
            Code::InvalidArgument,
            "id",
        ),
        (
            "ds update: unknown id",
            ds_update(pb::UpdateDatasourceRequest { id: unknown.clone(), ..Default::default() }),
            Code::NotFound,
            "datasource",
        ),
        (
            "ds update: bad port",
            ds_update(pb::UpdateDatasourceRequest { id: ds.id.clone(), port: Some(0), ..Default::default() }),
            Code::InvalidArgument,
            "port",
        ),
        (
            "ds update: option database",
            ds_update(pb::UpdateDatasourceRequest {
                id: ds.id.clone(),
                database: Some("-f".into()),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "database",
        ),
        // CreateStorage
        ("st: no config", st_case(None), Code::InvalidArgument, "config"),
        ("st: relative path", st_case(Some(local("backups", &agent.id))), Code::InvalidArgument, "local.path"),
        ("st: path traversal", st_case(Some(local("/tmp/../etc", &agent.id))), Code::InvalidArgument, "local.path"),
        ("st: unknown agent", st_case(Some(local("/tmp/x", &unknown))), Code::NotFound, "agent"),
        ("st: bad bucket", st_case(s3(&|s| s.bucket = "Bad Bucket".into())), Code::InvalidArgument, "s3.bucket"),
        ("st: prefix traversal", st_case(s3(&|s| s.prefix = "a/../../b".into())), Code::InvalidArgument, "s3.prefix"),
        (
            "st: key without secret",
            st_case(s3(&|s| s.access_key_id = "AKID".into())),
            Code::InvalidArgument,
            "s3.secret_access_key",
        ),
        ("st: bad endpoint", st_case(s3(&|s| s.endpoint = "ftp://x".into())), Code::InvalidArgument, "s3.endpoint"),
        ("st: plain http not allowed", st_case(s3(&|s| s.allow_http = false)), Code::InvalidArgument, "s3.endpoint"),
        (
            "st: metadata address",
            st_case(s3(&|s| s.endpoint = "http://169.254.169.254/latest".into())),
            Code::InvalidArgument,
            "s3.endpoint",
        ),
        (
            "st: metadata host name",
            st_case(s3(&|s| s.endpoint = "http://metadata.google.internal".into())),
            Code::InvalidArgument,
            "s3.endpoint",
        ),
        (
            "st test: unsaved config at the metadata address",
            st_test(s3(&|s| s.endpoint = "http://169.254.169.254".into())),
            Code::InvalidArgument,
            "s3.endpoint",
        ),
        (
            "st: ipv6 link-local",
            st_case(s3(&|s| s.endpoint = "http://[fe80::1]:80".into())),
            Code::InvalidArgument,
            "s3.endpoint",
        ),
        (
            "st: bad azure account",
            st_case(Some(pb::create_storage_request::Config::Azure(pb::AzureStorageConfig {
                account: "A!".into(),
                container: "ccc".into(),
                ..Default::default()
            }))),
            Code::InvalidArgument,
            "azure.account",
        ),
        // UpdateStorage
        (
            "st update: kind change",
            st_update(pb::UpdateStorageRequest {
                id: st.id.clone(),
                name: None,
                config: Some(pb::update_storage_request::Config::S3(pb::S3StorageConfig {
                    bucket: "bucket".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "config",
        ),
        (
            "st update: unknown id",
            st_update(pb::UpdateStorageRequest {
                id: unknown.clone(),
                name: Some("n".into()),
                config: None,
                ..Default::default()
            }),
            Code::NotFound,
            "storage",
        ),
        (
            "st update: traversal",
            st_update(pb::UpdateStorageRequest {
                id: st.id.clone(),
                name: None,
                config: Some(pb::update_storage_request::Config::Local(pb::LocalStorageConfig {
                    path: "/a/../b".into(),
                    agent_id: agent.id.clone(),
                })),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "local.path",
        ),
        // CreateBackupJob
        ("job: bad cron", job_case(&|r| r.cron = "61 * * * *".into()), Code::InvalidArgument, "cron"),
        ("job: garbage cron", job_case(&|r| r.cron = "every day".into()), Code::InvalidArgument, "cron"),
        (
            "job: unknown time zone",
            job_case(&|r| {
                r.cron = "0 3 * * *".into();
                r.time_zone = "Mars/Olympus".into();
            }),
            Code::InvalidArgument,
            "time_zone",
        ),
        ("job: no storages", job_case(&|r| r.storage_ids.clear()), Code::InvalidArgument, "storage_ids"),
        (
            "job: repeated storage",
            job_case(&|r| r.storage_ids = vec![st.id.clone(), st.id.clone()]),
            Code::InvalidArgument,
            "storage_ids",
        ),
        (
            "job: unknown storage",
            job_case(&|r| r.storage_ids = vec![uuid::Uuid::now_v7().to_string()]),
            Code::NotFound,
            "storage",
        ),
        (
            "job: unknown datasource",
            job_case(&|r| r.datasource_id = uuid::Uuid::now_v7().to_string()),
            Code::NotFound,
            "datasource",
        ),
        ("job: compression", job_case(&|r| r.compression_level = 25), Code::InvalidArgument, "compression_level"),
        ("job: strategy", job_case(&|r| r.storage_strategy = 7), Code::InvalidArgument, "storage_strategy"),
        (
            "job: retry",
            job_case(&|r| r.retry = Some(pb::RetryPolicy { max_attempts: 11, backoff: None })),
            Code::InvalidArgument,
            "retry.max_attempts",
        ),
        // UpdateBackupJob
        (
            "job update: bad cron",
            job_update(pb::UpdateBackupJobRequest {
                id: job.id.clone(),
                cron: Some("* *".into()),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "cron",
        ),
        (
            "job update: tz",
            job_update(pb::UpdateBackupJobRequest {
                id: job.id.clone(),
                time_zone: Some("Nowhere/Land".into()),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "time_zone",
        ),
        (
            "job update: empty storages",
            job_update(pb::UpdateBackupJobRequest {
                id: job.id.clone(),
                storages: Some(pb::StorageTargets { storage_ids: vec![] }),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "storage_ids",
        ),
        (
            "job update: unknown",
            job_update(pb::UpdateBackupJobRequest { id: unknown.clone(), ..Default::default() }),
            Code::NotFound,
            "backup job",
        ),
        // RestoreBackup
        (
            "restore: no confirmation",
            restore(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: "x".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "confirm_target_database",
        ),
        (
            "restore: wrong confirmation",
            restore(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: "x".into(),
                confirm_target_database: "y".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "confirm_target_database",
        ),
        (
            "restore: option target",
            restore(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: "--clean".into(),
                confirm_target_database: "--clean".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "target_database",
        ),
        (
            "restore: unknown backup",
            restore(pb::RestoreBackupRequest {
                backup_id: unknown.clone(),
                confirm_target_database: "x".into(),
                ..Default::default()
            }),
            Code::NotFound,
            "backup",
        ),
        (
            "restore: storage without copy",
            restore(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                verification_mode: true,
                source_storage_id: unknown.clone(),
                ..Default::default()
            }),
            Code::FailedPrecondition,
            "source_storage_id",
        ),
        // CreateJoinToken
        (
            "join: ttl too long",
            join(pb::CreateJoinTokenRequest { ttl: dur(30 * 24 * 3600), description: String::new() }),
            Code::InvalidArgument,
            "ttl",
        ),
        (
            "join: negative ttl",
            join(pb::CreateJoinTokenRequest { ttl: dur(-5), description: String::new() }),
            Code::InvalidArgument,
            "ttl",
        ),
        (
            "join: description",
            join(pb::CreateJoinTokenRequest { ttl: None, description: "d".repeat(1000) }),
            Code::InvalidArgument,
            "description",
        ),
        // Over the 4 MiB request limit: refused before any handler runs.
        ("oversized message", ds_case(&|r| r.name = "n".repeat(5 * 1024 * 1024)), Code::OutOfRange, "too large"),
    ];
    let n = cases.len();
    for (label, call, code, needle) in cases {
        let err = call.await.expect_err(label);
        assert_eq!(err.code(), code, "{label}: {}", err.message());
        assert!(err.message().contains(needle), "{label}: message {:?} should name {needle:?}", err.message());
    }
    assert_eq!(snapshot(&c).await?, before, "no bad call may change anything");
    assert!(n >= 50);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
