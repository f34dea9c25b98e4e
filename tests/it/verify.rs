//! Verify (checksum-only) through the public API with a real agent and real local storages: a replicated
//! backup with one copy damaged (a flipped byte in one chunk, another chunk deleted) is reported damaged
//! naming both chunks, the other copy intact; restores and downloads then read only the intact copy. With
//! every copy damaged, restores and downloads are refused with FAILED_PRECONDITION before anything is queued
//! (no target is touched). Bad input: unknown, malformed and being-deleted backups.

use std::{path::Path, time::Duration};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    pg::TestDb,
};
use sha2::{Digest, Sha256};
use sqlx::Executor;
use tokio_stream::StreamExt;
use tonic::Code;

const PG_SEED: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, b bytea); \
    INSERT INTO t SELECT g, md5(g::text) || repeat('x', g % 50), decode(md5(g::text), 'hex') FROM generate_series(1, 120000) g";

async fn verify(c: &mut Clients, backup: &str) -> anyhow::Result<pb::Execution> {
    let req = pb::VerifyBackupRequest { backup_id: backup.into(), ..Default::default() };
    let ex = c.backups.verify_backup(authed(req, &c.token)).await?.into_inner();
    assert_eq!(ex.operation, pb::Operation::Verify as i32);
    c.wait_execution(&ex.id, Duration::from_secs(120)).await
}

async fn get_backup(c: &mut Clients, id: &str) -> anyhow::Result<pb::Backup> {
    Ok(c.backups.get_backup(authed(pb::GetBackupRequest { id: id.into() }, &c.token)).await?.into_inner())
}

fn copy<'a>(b: &'a pb::Backup, storage: &str) -> &'a pb::BackupCopy {
    b.copies.iter().find(|c| c.storage_id == storage).expect("a copy in that storage")
}

async fn download(c: &mut Clients, id: &str) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::DownloadBackupRequest { id: id.into(), decompress: false };
    let mut stream = c.backups.download_backup(authed(req, &c.token)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.extend(piece?.data);
    }
    Ok(out)
}

fn flip_a_byte(path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    bytes[10] ^= 0xff;
    std::fs::write(path, &bytes)?;
    Ok(())
}

/// A replicated backup in two local storages of one agent: (cluster, clients, agent, backup, [(storage, dir)],
/// chunk keys, source database).
struct Replicated {
    cluster: Cluster,
    c: Clients,
    agent: dg_tests::cluster::AgentHandle,
    backup: pb::Execution,
    storages: [(pb::Storage, std::path::PathBuf); 2],
    keys: Vec<String>,
    src: TestDb,
}

async fn replicated(prefix: &str) -> anyhow::Result<Replicated> {
    let src = TestDb::create(prefix).await?;
    src.connect().await?.execute(PG_SEED).await?;
    let cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (a, b) = (cluster.dir.path().join("a"), cluster.dir.path().join("b"));
    let (sa, sb) = (c.local_storage(&agent.id, &a).await?, c.local_storage(&agent.id, &b).await?);
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let j = c.job(&ds.id, &[&sa, &sb], pb::StorageStrategy::Replicate, "").await?;
    let backup = c.run_job(&j.id).await?;
    assert_eq!(backup.status, pb::ExecutionStatus::Completed as i32, "{}", backup.error);
    assert!(backup.chunk_count >= 2, "several chunks: {}", backup.chunk_count);
    let detail = get_backup(&mut c, &backup.id).await?;
    let mut keys: Vec<(u32, String)> =
        detail.chunks.iter().filter(|ch| ch.storage_id == sa.id).map(|ch| (ch.seq, ch.key.clone())).collect();
    keys.sort();
    let keys = keys.into_iter().map(|(_, k)| k).collect();
    Ok(Replicated { cluster, c, agent, backup, storages: [(sa, a), (sb, b)], keys, src })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_is_named_and_skipped_by_restores_and_downloads() -> anyhow::Result<()> {
    let Replicated { mut cluster, mut c, agent, backup, storages, keys, src } = replicated("vfy").await?;
    let want = src.table_fingerprint("t").await?;
    let [(sa, a), (sb, _)] = &storages;

    // Before any verify: every copy is listed, none verified.
    let before = get_backup(&mut c, &backup.id).await?;
    assert_eq!(before.copies.len(), 2);
    assert!(before.copies.iter().all(|c| c.verify_status == pb::CopyVerifyStatus::Unspecified as i32));

    // One copy (A): chunk 0 gets a flipped byte, chunk 1 is deleted. Verify completes (damage is a finding).
    flip_a_byte(&a.join(&keys[0]))?;
    std::fs::remove_file(a.join(&keys[1]))?;
    let v = verify(&mut c, &backup.id).await?;
    let vlogs = c.logs(&v.id).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}\n{vlogs}", v.error);
    assert!(vlogs.contains(&format!("copy in storage {}: damaged", sa.id)), "{vlogs}");

    let after = get_backup(&mut c, &backup.id).await?;
    let (ca, cb) = (copy(&after, &sa.id), copy(&after, &sb.id));
    assert_eq!(ca.verify_status, pb::CopyVerifyStatus::Damaged as i32, "{ca:?}");
    let named: Vec<(u32, &str)> = ca.damaged_chunks.iter().map(|d| (d.seq, d.fault.as_str())).collect();
    assert_eq!(named, vec![(0, "sha256"), (1, "missing")], "{ca:?}");
    assert!(ca.problems.is_empty(), "the manifest still agrees with the record: {:?}", ca.problems);
    assert_eq!(cb.verify_status, pb::CopyVerifyStatus::Intact as i32, "{cb:?}");
    assert!(cb.damaged_chunks.is_empty());
    for cp in [ca, cb] {
        assert_eq!(cp.verify_execution_id, v.id);
        assert!(cp.verified_at.is_some());
    }
    // The copy is still a complete copy of the backup (damaged, not forgotten).
    assert_eq!(after.storage_ids.len(), 2);

    // A restore reads only the intact copy (B) and restores the data.
    let dst = TestDb::reserve("vfy_ok");
    let r = c.restore_into(&backup.id, &dst.name).await?;
    let rlogs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{rlogs}", r.error);
    assert!(rlogs.contains(&format!("reading the copies in storages {}\n", sb.id)), "{rlogs}");
    assert!(rlogs.contains(&format!("verify found damaged or missing, in storages {}", sa.id)), "{rlogs}");
    assert_eq!(dst.table_fingerprint("t").await?, want);
    // Asking for the damaged copy explicitly is refused.
    let e = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: backup.id.clone(),
                target_database: dst.name.clone(),
                confirm_target_database: dst.name.clone(),
                source_storage_id: sa.id.clone(),
                ..Default::default()
            },
            &c.token,
        ))
        .await
        .expect_err("damaged source storage");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("source_storage_id"), "{}", e.message());

    // A download reads the intact copy: the recorded stream.
    let stored = download(&mut c, &backup.id).await?;
    assert_eq!(hex::encode(Sha256::digest(&stored)), backup.sha256);

    // A second verify after repairing nothing finds the same; an unchanged copy keeps being intact.
    let v2 = verify(&mut c, &backup.id).await?;
    assert_eq!(v2.status, pb::ExecutionStatus::Completed as i32, "{}", v2.error);
    let again = get_backup(&mut c, &backup.id).await?;
    assert_eq!(copy(&again, &sa.id).verify_status, pb::CopyVerifyStatus::Damaged as i32);
    assert_eq!(copy(&again, &sb.id).verify_execution_id, v2.id);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_copy_damaged_restores_and_downloads_are_refused_and_bad_input_is_named() -> anyhow::Result<()> {
    let Replicated { mut cluster, mut c, agent, backup, storages, keys, src: _src } = replicated("vfyall").await?;
    let [(sa, a), (sb, b)] = &storages;

    // A: a chunk with a flipped byte; B: everything gone (manifest and every chunk).
    flip_a_byte(&a.join(&keys[0]))?;
    let prefix = Path::new(&keys[0]).parent().expect("attempt prefix");
    std::fs::remove_dir_all(b.join(prefix))?;
    let v = verify(&mut c, &backup.id).await?;
    let vlogs = c.logs(&v.id).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}\n{vlogs}", v.error);
    let after = get_backup(&mut c, &backup.id).await?;
    let (ca, cb) = (copy(&after, &sa.id), copy(&after, &sb.id));
    assert_eq!(ca.verify_status, pb::CopyVerifyStatus::Damaged as i32, "{ca:?}");
    assert_eq!(ca.damaged_chunks.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![0]);
    assert_eq!(cb.verify_status, pb::CopyVerifyStatus::Missing as i32, "{cb:?}");
    assert_eq!(cb.damaged_chunks.len(), keys.len(), "every chunk named missing: {cb:?}");
    assert!(cb.problems.iter().any(|p| p.contains("manifest: missing")), "{:?}", cb.problems);
    // Retention no longer counts it as a good backup: it is not the job's newest good one.
    let preview = c
        .jobs
        .preview_retention(authed(
            pb::PreviewRetentionRequest { job_id: backup.job_id.clone(), policy: None },
            &c.token,
        ))
        .await?
        .into_inner();
    let decision = preview.backups.iter().find(|d| d.backup_id == backup.id).expect("the backup is listed");
    assert!(decision.reasons.iter().all(|r| !r.contains("newest good")), "{decision:?}");

    // Restore: refused at once with FAILED_PRECONDITION, nothing queued, no target touched.
    let never = TestDb::reserve("vfyall_never");
    let e = c.restore_into(&backup.id, &never.name).await.expect_err("no intact copy");
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("damaged or missing"), "{}", status.message());
    // Download: refused the same way.
    let e = download(&mut c, &backup.id).await.expect_err("no intact copy");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Bad input: unknown id, malformed id (named), a backup being deleted.
    let e = c
        .backups
        .verify_backup(authed(
            pb::VerifyBackupRequest { backup_id: uuid::Uuid::now_v7().to_string(), ..Default::default() },
            &c.token,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .backups
        .verify_backup(authed(
            pb::VerifyBackupRequest { backup_id: "not-a-uuid".into(), ..Default::default() },
            &c.token,
        ))
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("backup_id"), "{}", e.message());
    // The agent holding the local storages is gone: the deletion starts (the backup is marked) but cannot
    // finish, so the backup stays "being deleted".
    let agent_id = agent.id.clone();
    agent.stop().await;
    c.wait_agent_status(&agent_id, pb::AgentStatus::Offline, Duration::from_secs(30)).await?;
    let del = c.backups.delete_backup(authed(pb::DeleteBackupRequest { id: backup.id.clone() }, &c.token)).await;
    assert!(del.is_err(), "the deletion cannot finish without the agent: {del:?}");
    let e = c
        .backups
        .verify_backup(authed(pb::VerifyBackupRequest { backup_id: backup.id.clone(), ..Default::default() }, &c.token))
        .await
        .expect_err("being deleted");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("being deleted"), "{}", e.message());

    cluster.stop().await;
    Ok(())
}
