//! A restore trusts what the controller recorded at backup time, not the manifest in the bucket. Whoever can
//! write to a storage can rewrite `manifest.json` and recompute its self-checksum (it is unkeyed): pointing
//! `globals` at a planted `\! touch …` object, changing the encryption key id or dropping the encryption each
//! fail the restore before the target database is created, naming the mismatch, and no command runs. A
//! backup recorded before these were recorded restores without its globals.

use dg_common::manifest::{Manifest, ManifestObject};
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    pg::TestDb,
    suffix,
};
use sha2::{Digest, Sha256};
use sqlx::Executor;

/// Reads a backup's manifest from the local storage directory, changes it, and writes it back with a
/// recomputed self-checksum (what an attacker with write access to the bucket can do).
fn rewrite_manifest(dir: &std::path::Path, key: &str, change: impl FnOnce(&mut Manifest)) -> anyhow::Result<()> {
    let path = dir.join(key);
    let mut m = Manifest::from_bytes(&std::fs::read(&path)?)?;
    change(&mut m);
    std::fs::write(&path, m.to_bytes())?;
    Ok(())
}

async fn database_exists(admin: &mut sqlx::PgConnection, name: &str) -> anyhow::Result<bool> {
    let n: (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1").bind(name).fetch_one(admin).await?;
    Ok(n.0 > 0)
}

async fn job_with_globals(c: &mut Clients, ds: &str, st: &str, key: &str) -> anyhow::Result<pb::BackupJob> {
    let req = pb::CreateBackupJobRequest {
        name: format!("trust-{}", suffix()),
        datasource_id: ds.into(),
        storage_ids: vec![st.into()],
        include_globals: true,
        encryption_key_id: key.into(),
        ..Default::default()
    };
    Ok(c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner())
}

/// Restores with create_database and restore_globals into a new database; it must fail naming `mismatch`,
/// and the database must not exist afterwards.
async fn refused(c: &mut Clients, admin: &mut sqlx::PgConnection, backup: &str, mismatch: &str) -> anyhow::Result<()> {
    let dst = TestDb::reserve("trust_dst");
    let r = c
        .restore_with(pb::RestoreBackupRequest {
            backup_id: backup.into(),
            target_database: dst.name.clone(),
            create_database: true,
            confirm_target_database: dst.name.clone(),
            restore_globals: true,
            ..Default::default()
        })
        .await?;
    let logs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32, "{mismatch}: {logs}");
    assert!(r.error.contains("disagrees with the controller's record") && r.error.contains(mismatch), "{}", r.error);
    assert!(!database_exists(admin, &dst.name).await?, "{mismatch}: the target was not created");
    assert!(!logs.contains("created database"), "{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_manifest_fails_the_restore_before_the_target_is_touched() -> anyhow::Result<()> {
    let src = TestDb::create("trust").await?;
    src.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await?;
    let mut admin = src.connect().await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let keys = dg_agent::keys::keys_dir(&agent.state_dir);
    dg_agent::keys::generate(&keys, "trust-1")?;
    dg_agent::keys::generate(&keys, "trust-2")?;
    let dir = cluster.dir.path().join("bucket");
    let st = c.local_storage(&agent.id, &dir).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;

    // 1. Globals: a plain backup whose manifest is pointed at a planted object holding a shell command.
    let plain = job_with_globals(&mut c, &ds.id, &st.id, "").await?;
    let ex = c.run_job(&plain.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    let prefix = detail.manifest_key.trim_end_matches("/manifest.json").to_owned();
    let marker = std::env::temp_dir().join(format!("dg-pwned-{}", suffix()));
    let evil = zstd::encode_all(format!("\\! touch {}\n", marker.display()).as_bytes(), 3)?;
    let planted = ManifestObject {
        key: format!("{prefix}/planted.sql.zst"),
        size: evil.len() as u64,
        sha256: hex::encode(Sha256::digest(&evil)),
    };
    std::fs::write(dir.join(&planted.key), &evil)?;
    let original = std::fs::read(dir.join(&detail.manifest_key))?;
    rewrite_manifest(&dir, &detail.manifest_key, |m| m.globals = Some(planted.clone()))?;
    refused(&mut c, &mut admin, &ex.id, "globals key").await?;
    // The same command written over the real globals object, the manifest's size and sha256 updated.
    std::fs::write(dir.join(&detail.manifest_key), &original)?;
    let real_globals = Manifest::from_bytes(&original)?.globals.expect("globals").key;
    std::fs::write(dir.join(&real_globals), &evil)?;
    rewrite_manifest(&dir, &detail.manifest_key, |m| {
        m.globals = Some(ManifestObject { key: real_globals.clone(), ..planted.clone() });
    })?;
    refused(&mut c, &mut admin, &ex.id, "globals size").await?;
    assert!(!marker.exists(), "the planted command never ran");

    // A backup recorded before the controller recorded globals (as m0007 leaves older rows): restore_globals
    // is refused at once, and it restores without its globals (the rewritten manifest's globals are not read).
    let legacy = "UPDATE execution SET trust_recorded = false, globals_key = NULL, globals_size = NULL, \
                  globals_sha256 = NULL, wrapped_key_sha256 = NULL WHERE id = $1::uuid";
    sqlx::query(legacy).bind(&ex.id).execute(&mut cluster.db.connect().await?).await?;
    let dst = TestDb::reserve("trust_legacy");
    let req = |restore_globals| pb::RestoreBackupRequest {
        backup_id: ex.id.clone(),
        target_database: dst.name.clone(),
        create_database: true,
        confirm_target_database: dst.name.clone(),
        restore_globals,
        ..Default::default()
    };
    let e = c.backups.restore_backup(authed(req(true), &c.token)).await.expect_err("legacy globals");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().starts_with("restore_globals:"), "{e}");
    let r = c.restore_with(req(false)).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM t").fetch_one(&mut dst.connect().await?).await?;
    assert_eq!(rows.0, 1);
    assert!(!marker.exists());

    // 2. Encryption: an encrypted backup whose manifest names another key the agent holds, or drops the
    // encryption altogether.
    let sealed = job_with_globals(&mut c, &ds.id, &st.id, "trust-1").await?;
    let ex = c.run_job(&sealed.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    let original = std::fs::read(dir.join(&detail.manifest_key))?;
    rewrite_manifest(&dir, &detail.manifest_key, |m| m.encryption_key_id = Some("trust-2".into()))?;
    refused(&mut c, &mut admin, &ex.id, "encryption key id").await?;
    std::fs::write(dir.join(&detail.manifest_key), &original)?;
    rewrite_manifest(&dir, &detail.manifest_key, |m| {
        (m.encryption_key_id, m.wrapped_key, m.encryption) = (None, None, None);
    })?;
    refused(&mut c, &mut admin, &ex.id, "encryption (manifest: not encrypted").await?;

    // The untouched manifest restores, globals included.
    std::fs::write(dir.join(&detail.manifest_key), &original)?;
    let dst = TestDb::reserve("trust_ok");
    let r = c
        .restore_with(pb::RestoreBackupRequest {
            backup_id: ex.id.clone(),
            target_database: dst.name.clone(),
            create_database: true,
            confirm_target_database: dst.name.clone(),
            restore_globals: true,
            ..Default::default()
        })
        .await?;
    let logs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", r.error);
    assert!(logs.contains("globals replayed"), "{logs}");
    assert!(!marker.exists());

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
