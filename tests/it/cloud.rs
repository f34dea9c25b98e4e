//! Backups to cloud storages, driven through the public API: S3 (moto, with signature checks) and Azure
//! (Azurite) on loopback, PostgreSQL and MariaDB. The agent writes the chunks; the controller reads cloud
//! copies itself for downloads and deletes them itself.

use dg_common::store::StoreConfig;
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    emulators::{Azurite, S3Server},
    pg::TestDb,
    suffix,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor};

/// The create request for a cloud configuration: the same per-kind message the agent's task carries.
fn request_config(cfg: StoreConfig) -> pb::create_storage_request::Config {
    use pb::{create_storage_request::Config as Request, storage_target::Config as Target};
    match dg_common::store::to_target(String::new(), cfg, String::new()).config {
        Some(Target::S3(s)) => Request::S3(s),
        Some(Target::Gcs(g)) => Request::Gcs(g),
        Some(Target::Azure(a)) => Request::Azure(a),
        _ => unreachable!("cloud storages only"),
    }
}

async fn storage(c: &mut Clients, cfg: StoreConfig) -> anyhow::Result<pb::Storage> {
    let req = pb::CreateStorageRequest {
        name: format!("cloud-{}", suffix()),
        config: Some(request_config(cfg)),
        ..Default::default()
    };
    Ok(c.storages.create_storage(authed(req, &c.token)).await?.into_inner())
}

/// Objects in the whole bucket or container (listed without a prefix: moto's signature check mishandles an
/// encoded '/' in the list prefix).
async fn object_count(cfg: &StoreConfig) -> anyhow::Result<usize> {
    let mut cfg = cfg.clone();
    match &mut cfg {
        StoreConfig::S3 { prefix, .. } | StoreConfig::Azure { prefix, .. } | StoreConfig::Gcs { prefix, .. } => {
            prefix.clear()
        }
        StoreConfig::Local { .. } => {}
    }
    let store = dg_common::store::open(&cfg)?;
    let all = store.list(None).collect::<Vec<_>>().await;
    let errors: Vec<_> = all.iter().filter_map(|o| o.as_ref().err().map(|e| e.to_string())).collect();
    anyhow::ensure!(errors.is_empty(), "listing failed: {errors:?}");
    Ok(all.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_mariadb_to_s3_and_azure() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    s3.require_signatures().await?;
    s3.create_bucket("backups").await?;
    let azurite = Azurite::start().await?;
    azurite.create_container("backups").await?;

    let src = TestDb::create("cloud").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 80000) g")
        .await?;
    let want = src.table_fingerprint("t").await?;

    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let s3_cfg = s3.config("backups", "prod/pg");
    let az_cfg = azurite.config("backups", "prod/pg");
    let st_s3 = storage(&mut c, s3_cfg.clone()).await?;
    let st_az = storage(&mut c, az_cfg.clone()).await?;
    let bad = storage(&mut c, s3.config_with_keys("backups", "bad", s3.access_key_id(), "wrong-secret")).await?;
    for (s, ok) in [(&st_s3, true), (&st_az, true), (&bad, false)] {
        let r = c
            .storages
            .test_storage(authed(
                pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Id(s.id.clone())) },
                &c.token,
            ))
            .await?
            .into_inner();
        assert_eq!(r.ok, ok, "{}: {r:?}", s.name);
    }

    // PostgreSQL replicated to S3 and Azure.
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let job = c.job(&ds.id, &[&st_s3, &st_az], pb::StorageStrategy::Replicate, "").await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", ex.error, c.logs(&ex.id).await?);
    assert!(ex.warnings.is_empty(), "{:?}", ex.warnings);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(detail.storage_ids.len(), 2);
    assert_eq!(object_count(&s3_cfg).await?, ex.chunk_count as usize + 1, "chunks and manifest in S3");
    assert_eq!(object_count(&az_cfg).await?, ex.chunk_count as usize + 1, "chunks and manifest in Azure");

    // Restore from each copy.
    for (from, name) in [(&st_az, "az"), (&st_s3, "s3")] {
        let dst = TestDb::reserve(name);
        let r = c
            .restore_with(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: dst.name.clone(),
                create_database: true,
                confirm_target_database: dst.name.clone(),
                source_storage_id: from.id.clone(),
                ..Default::default()
            })
            .await?;
        assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
        assert_eq!(dst.table_fingerprint("t").await?, want, "restore from {name}");
    }

    // The controller downloads cloud copies itself, verified chunk by chunk.
    let mut stream = c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: ex.id.clone(), decompress: false }, &c.token))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(p) = stream.next().await {
        bytes.extend(p?.data);
    }
    assert_eq!(hex::encode(Sha256::digest(&bytes)), ex.sha256);

    // Fallback: a storage whose keys are refused is skipped for the next.
    let job2 = c.job(&ds.id, &[&bad, &st_az], pb::StorageStrategy::Fallback, "").await?;
    let ex2 = c.run_job(&job2.id).await?;
    assert_eq!(ex2.status, pb::ExecutionStatus::Completed as i32, "{}", ex2.error);
    assert!(ex2.warnings.iter().any(|w| w.contains(&bad.id)));
    let d2 = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex2.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(d2.storage_ids, vec![st_az.id.clone()]);

    // The controller deletes cloud objects itself.
    let del =
        c.backups.delete_backup(authed(pb::DeleteBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    // S3 cannot tell an absent key from a deleted one, so its count may include the (absent) globals object.
    assert!(del.deleted_objects >= 2 * (ex.chunk_count + 1), "{}", del.deleted_objects);
    assert_eq!(object_count(&s3_cfg).await?, 0);
    assert_eq!(object_count(&az_cfg).await?, ex2.chunk_count as usize + 1, "only the fallback backup is left in Azure");

    // MariaDB to S3.
    let my = format!("dgt_cloudmy_{}", suffix());
    let admin = dg_tests::mariadb_url();
    let mut m = sqlx::MySqlConnection::connect(&admin).await?;
    m.execute(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{my}`; CREATE TABLE `{my}`.t (id INT PRIMARY KEY, v VARCHAR(64)); \
         INSERT INTO `{my}`.t SELECT seq, MD5(seq) FROM `{my}`.seq_1_to_20000"
    )))
    .await?;
    let mds = c.datasource(pb::Engine::Mariadb, &agent.id, &my).await?;
    let mjob = c.job(&mds.id, &[&st_s3, &st_az], pb::StorageStrategy::Replicate, "").await?;
    let mex = c.run_job(&mjob.id).await?;
    assert_eq!(mex.status, pb::ExecutionStatus::Completed as i32, "{}", mex.error);
    let md = c.backups.get_backup(authed(pb::GetBackupRequest { id: mex.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(md.storage_ids.len(), 2, "MariaDB backup replicated to S3 and Azure");
    let restored = format!("{my}_r");
    let r = c.restore_into(&mex.id, &restored).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    let sum = |db: &str| format!("SELECT COUNT(*), CAST(SUM(CRC32(CONCAT(id, v))) AS CHAR) FROM `{db}`.t");
    let (n1, s1): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sum(&my))).fetch_one(&mut m).await?;
    let (n2, s2): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sum(&restored))).fetch_one(&mut m).await?;
    assert_eq!(n1, 20_000);
    assert_eq!((n1, s1), (n2, s2));
    m.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{my}`; DROP DATABASE `{restored}`"))).await?;

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// A keyless S3 storage sends unsigned requests: it backs up and restores against a bucket that allows
/// anonymous access (public-read-write) without ever looking for the host's credentials (on this machine, which has no instance
/// metadata service, a credential lookup would fail the storage test), and is refused once the server checks
/// signatures, while a keyed storage still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_s3_storage_is_anonymous() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    s3.create_public_bucket("anon").await?;
    let src = TestDb::create("anon").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
        .await?;
    let want = src.table_fingerprint("t").await?;

    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let cfg = s3.keyless_config("anon", "pg");
    let st = storage(&mut c, cfg.clone()).await?;
    assert!(!st.has_credentials);
    let test = |id: &str| pb::TestStorageRequest { target: Some(pb::test_storage_request::Target::Id(id.into())) };
    let r = c.storages.test_storage(authed(test(&st.id), &c.token)).await?.into_inner();
    assert!(r.ok, "{r:?}");

    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let job = c.job(&ds.id, &[&st], pb::StorageStrategy::Replicate, "").await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", ex.error, c.logs(&ex.id).await?);
    assert_eq!(object_count(&cfg).await?, ex.chunk_count as usize + 1, "chunks and manifest in S3");
    let dst = TestDb::reserve("anon_r");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, want);

    s3.require_signatures().await?;
    let r = c.storages.test_storage(authed(test(&st.id), &c.token)).await?.into_inner();
    // moto answers an unsigned request it should check with 500 rather than 403: any refusal of the write
    // shows the request carried no usable signature.
    assert!(!r.ok && r.error.starts_with("write:"), "unsigned requests are refused once signatures are checked: {r:?}");
    let keyed = storage(&mut c, s3.config("anon", "keyed")).await?;
    let r = c.storages.test_storage(authed(test(&keyed.id), &c.token)).await?.into_inner();
    assert!(r.ok, "{r:?}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
