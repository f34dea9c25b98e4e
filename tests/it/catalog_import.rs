//! Catalog import (the controller's own disaster recovery) through the public API against a real S3 server
//! (moto) and real PostgreSQL: controller 1 backs a datasource up to an S3 bucket; a second controller with
//! an empty database, pointed at the same bucket, imports the backups it finds. A dry run changes nothing;
//! the import registers the good backup (marked imported), which restores with the source's rows, and a
//! second import skips it as known. A manifest with an edited sha256, a re-signed manifest whose chunk key
//! points outside its prefix, and (with verify_chunks) a flipped chunk byte are reported failed and not
//! registered. A local storage is refused. The `dg-controller import` command does the same as the RPC.

use dg_common::{manifest::Manifest, store::StoreConfig};
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    emulators::S3Server,
    pg::TestDb,
    suffix,
};
use object_store::{ObjectStoreExt, path::Path as ObjPath};
use sqlx::Executor;
use tonic::Code;

fn request_config(cfg: StoreConfig) -> pb::create_storage_request::Config {
    use pb::{create_storage_request::Config as Request, storage_target::Config as Target};
    match dg_common::store::to_target(String::new(), cfg, String::new()).config {
        Some(Target::S3(s)) => Request::S3(s),
        _ => unreachable!("s3 only"),
    }
}

async fn s3_storage(c: &mut Clients, cfg: StoreConfig) -> anyhow::Result<pb::Storage> {
    let req = pb::CreateStorageRequest {
        name: format!("s3-{}", suffix()),
        config: Some(request_config(cfg)),
        ..Default::default()
    };
    Ok(c.storages.create_storage(authed(req, &c.token)).await?.into_inner())
}

async fn import(
    c: &mut Clients,
    storage: &str,
    ds: &str,
    verify_chunks: bool,
    dry_run: bool,
) -> Result<pb::ImportCatalogResponse, tonic::Status> {
    let req = pb::ImportCatalogRequest {
        storage_id: storage.into(),
        datasource_id: ds.into(),
        verify_chunks,
        dry_run,
        ..Default::default()
    };
    Ok(c.backups.import_catalog(authed(req, &c.token)).await?.into_inner())
}

async fn backups_of(c: &mut Clients, ds: &str) -> anyhow::Result<Vec<pb::Backup>> {
    let req = pb::ListBackupsRequest { datasource_id: ds.into(), page_size: 100, ..Default::default() };
    Ok(c.backups.list_backups(authed(req, &c.token)).await?.into_inner().backups)
}

fn failed_reason<'a>(r: &'a pb::ImportCatalogResponse, backup: &str) -> Option<&'a str> {
    r.failed.iter().find(|f| f.manifest_key.contains(backup)).map(|f| f.reason.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_controller_imports_checked_backups_from_a_bucket_and_restores_them() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket("dr-catalog").await?;
    let cfg = s3.config("dr-catalog", "site/pg");
    let bucket = dg_common::store::open(&cfg)?;
    let src = TestDb::create("imp").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .await?;
    let want = src.table_fingerprint("t").await?;

    // Controller 1: four backups of one datasource in the bucket.
    let mut one = Cluster::start().await?;
    let mut c1 = one.clients().await?;
    let agent1 = one.start_agent(&mut c1).await?;
    let st1 = s3_storage(&mut c1, cfg.clone()).await?;
    let ds1 = c1.datasource(pb::Engine::Postgres, &agent1.id, &src.name).await?;
    let job = c1.job(&ds1.id, &[&st1], pb::StorageStrategy::Fallback, "").await?;
    let mut made = Vec::new();
    for _ in 0..4 {
        let b = c1.run_job(&job.id).await?;
        assert_eq!(b.status, pb::ExecutionStatus::Completed as i32, "{}", b.error);
        let d = c1.backups.get_backup(authed(pb::GetBackupRequest { id: b.id.clone() }, &c1.token)).await?;
        made.push(d.into_inner());
    }
    agent1.stop().await;
    one.stop().await;
    let [good, edited, resigned, flipped] = [&made[0], &made[1], &made[2], &made[3]];

    // Damage in the bucket: an edited sha256 in one manifest (its own checksum no longer matches); a manifest
    // re-signed with a chunk key outside its prefix; a flipped byte in another backup's first chunk.
    let key = |k: &str| ObjPath::from(k);
    let text = String::from_utf8(bucket.get(&key(&edited.manifest_key)).await?.bytes().await?.to_vec())?;
    let sha = &edited.chunks[0].sha256;
    let first = if sha.starts_with('0') { '1' } else { '0' };
    let replaced: String = std::iter::once(first).chain(sha.chars().skip(1)).collect();
    bucket.put(&key(&edited.manifest_key), text.replace(sha.as_str(), &replaced).into_bytes().into()).await?;
    let bytes = bucket.get(&key(&resigned.manifest_key)).await?.bytes().await?;
    let mut m = Manifest::from_bytes(&bytes)?;
    m.chunks[0].key = good.chunks[0].key.clone();
    bucket.put(&key(&resigned.manifest_key), m.to_bytes().into()).await?;
    let chunk = key(&flipped.chunks[0].key);
    let mut data = bucket.get(&chunk).await?.bytes().await?.to_vec();
    data[7] ^= 0xff;
    bucket.put(&chunk, data.into()).await?;

    // Controller 2: an empty database, the same bucket.
    let mut two = Cluster::start().await?;
    let mut c2 = two.clients().await?;
    let agent2 = two.start_agent(&mut c2).await?;
    let st2 = s3_storage(&mut c2, cfg.clone()).await?;
    let target = TestDb::create("imp_target").await?;
    let ds2 = c2.datasource(pb::Engine::Postgres, &agent2.id, &target.name).await?;
    assert!(backups_of(&mut c2, &ds2.id).await?.is_empty());

    // A dry run with chunk checks: the good backup would be imported, the three damaged ones fail; nothing
    // is registered.
    let dry = import(&mut c2, &st2.id, &ds2.id, true, true).await?;
    assert!(dry.dry_run);
    assert_eq!(dry.imported_backup_ids, vec![good.id.clone()], "{dry:?}");
    assert_eq!(dry.failed.len(), 3, "{dry:?}");
    assert!(failed_reason(&dry, &edited.id).is_some_and(|r| r.contains("checksum mismatch")), "{dry:?}");
    assert!(failed_reason(&dry, &resigned.id).is_some_and(|r| r.contains("chunk 0: key")), "{dry:?}");
    assert!(failed_reason(&dry, &flipped.id).is_some_and(|r| r.contains("chunk 0: sha256")), "{dry:?}");
    assert!(backups_of(&mut c2, &ds2.id).await?.is_empty(), "a dry run registers nothing");
    // Without chunk checks the flipped byte is not seen: verify_chunks is what catches it.
    let shallow = import(&mut c2, &st2.id, &ds2.id, false, true).await?;
    assert!(shallow.imported_backup_ids.contains(&flipped.id), "{shallow:?}");

    // The import, through the `dg-controller import` command (same service, the controller's config).
    let (bin, _) = dg_tests::faults::procs::binaries()?;
    let conf = serde_json::to_value(&two.config)?;
    let out = std::process::Command::new(bin)
        .args(["import", "--storage", &st2.id, "--datasource", &ds2.id, "--verify-chunks"])
        .env("DG_DATABASE_URL", two.db.url())
        .env("DG_MASTER_KEY", conf["master_key"].as_str().unwrap_or_default())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The report is the pretty-printed JSON object at the end of stdout (log lines may come before it).
    let at = stdout.find("\n{\n").map_or(0, |i| i + 1);
    let report: serde_json::Value = serde_json::from_str(&stdout[at..])?;
    assert_eq!(report["imported_backup_ids"], serde_json::json!([good.id]), "{report}");
    assert_eq!(report["failed"].as_array().map(Vec::len), Some(3), "{report}");

    // Listed, marked imported, with the original id, sizes and checksum; nothing else registered.
    let listed = backups_of(&mut c2, &ds2.id).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let b = &listed[0];
    assert!(b.imported && b.job_id.is_empty(), "{b:?}");
    assert_eq!(
        (b.id.as_str(), b.sha256.as_str(), b.stored_bytes),
        (good.id.as_str(), good.sha256.as_str(), good.stored_bytes)
    );
    assert_eq!(b.storage_ids, vec![st2.id.clone()]);
    let full =
        c2.backups.get_backup(authed(pb::GetBackupRequest { id: good.id.clone() }, &c2.token)).await?.into_inner();
    assert_eq!(full.chunks.len(), good.chunks.len());

    // It restores (through controller 2's agent, from the bucket) with the source's rows.
    let dst = TestDb::reserve("imp_restored");
    let r = c2.restore_into(&good.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", r.error, c2.logs(&r.id).await?);
    assert_eq!(dst.table_fingerprint("t").await?, want);

    // A second import skips it as known; the damaged ones still fail.
    let again = import(&mut c2, &st2.id, &ds2.id, true, false).await?;
    assert!(again.imported_backup_ids.is_empty(), "{again:?}");
    let skipped: Vec<&str> = again.skipped.iter().map(|s| s.backup_id.as_str()).collect();
    assert_eq!(skipped, vec![good.id.as_str()], "{again:?}");
    assert!(again.skipped[0].reason.contains("already"), "{again:?}");
    assert_eq!(again.failed.len(), 3);

    // Refusals: a local storage, a missing field, an unknown datasource.
    let local = c2.local_storage(&agent2.id, &two.dir.path().join("local")).await?;
    let e = import(&mut c2, &local.id, &ds2.id, false, true).await.expect_err("local");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("local storage"), "{}", e.message());
    let e = import(&mut c2, "", &ds2.id, false, true).await.expect_err("no storage");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("storage_id"), "{}", e.message());
    let e = import(&mut c2, &st2.id, &uuid::Uuid::now_v7().to_string(), false, true).await.expect_err("no ds");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    agent2.stop().await;
    two.stop().await;
    Ok(())
}
