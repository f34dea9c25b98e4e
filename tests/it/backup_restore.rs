//! The main path: enroll, configure, RunNow, check what is stored, restore into a fresh database, and prove
//! the data is identical.

use std::time::Duration;

use dg_common::manifest::Manifest;
use dg_proto::v1 as pb;
use dg_tests::pg_server;
use dg_tests::{
    cluster::{Cluster, authed},
    pg::TestDb,
};
use sha2::{Digest, Sha256};
use sqlx::{Executor, Row};

/// Awkward data: bytea, jsonb, arrays, NULLs, unicode, a large text value, a few hundred thousand rows.
const SEED: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE people (
    id        bigint PRIMARY KEY,
    name      text,
    bio       text,
    avatar    bytea,
    prefs     jsonb,
    tags      text[],
    scores    int[],
    feeling   mood,
    born      date,
    balance   numeric(20,4),
    seen_at   timestamptz
);
INSERT INTO people
SELECT g,
       CASE WHEN g % 17 = 0 THEN NULL ELSE 'näme-' || g || ' 日本語 🚀 ' || md5(g::text) END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('lorem ' || g, 3) END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE decode(md5(g::text) || md5((g * 3)::text), 'hex') END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'even', g % 2 = 0, 'nested', jsonb_build_array(g, 'x', NULL)) END,
       ARRAY['t' || (g % 10), NULL, 'ünï' || g],
       ARRAY[g, g * 2, -g],
       (ARRAY['sad', 'ok', 'happy']::mood[])[1 + g % 3],
       date '2000-01-01' + (g % 9000),
       (g * 1.2345)::numeric(20,4),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 300000) AS g;
CREATE TABLE documents (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO documents VALUES (1, repeat('large value with unicode ✓ ', 400000));
INSERT INTO documents VALUES (2, '');
CREATE TABLE empty_table (id int PRIMARY KEY, note text);
CREATE INDEX people_name ON people (name);
CREATE VIEW happy_people AS SELECT id, name FROM people WHERE feeling = 'happy';
"#;

const TABLES: &[&str] = &["people", "documents", "empty_table"];

/// Per-table row count and an ordered checksum of every row.
async fn fingerprint(db: &TestDb) -> anyhow::Result<Vec<(String, i64, String)>> {
    let mut c = db.connect().await?;
    let mut out = Vec::new();
    for t in TABLES {
        let row = c
            .fetch_one(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) AS n, coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') AS sum FROM {t} t"
            )))
            .await?;
        out.push(((*t).to_owned(), row.try_get::<i64, _>("n")?, row.try_get::<String, _>("sum")?));
    }
    let v = c.fetch_one("SELECT count(*) AS n FROM happy_people").await?;
    out.push(("happy_people".into(), v.try_get::<i64, _>("n")?, String::new()));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_yields_identical_data() -> anyhow::Result<()> {
    let source = TestDb::create("src").await?;
    source.connect().await?.execute(SEED).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let storage_dir = cluster.dir.path().join("backups");
    let (ds, storage, job) = c.setup_pg_job(&agent.id, &storage_dir, &source.name, &pg_server()).await?;

    let ex = c.run_job(&job.id).await?;
    let logs = c.logs(&ex.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "backup failed: {}\n{logs}", ex.error);
    assert_eq!(ex.attempt, 1);
    assert!(ex.raw_bytes > 10_000_000, "a few hundred thousand rows dump to more than 10 MB: {}", ex.raw_bytes);
    assert!(ex.stored_bytes < ex.raw_bytes, "zstd must shrink the dump");
    assert!(ex.chunk_count >= 2, "1 MiB chunks: expected several, got {}", ex.chunk_count);
    assert!(logs.contains("connection test ok"), "{logs}");

    // What the API says is stored is what is on disk.
    let backups = c.backups.list_backups(authed(pb::ListBackupsRequest::default(), &c.token)).await?.into_inner();
    assert_eq!(backups.backups.len(), 1);
    let b = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(b.storage_ids, vec![storage.id.clone()]);
    assert_eq!(b.chunks.len() as u32, ex.chunk_count);
    let mut whole = Sha256::new();
    let mut total = 0u64;
    for (i, ch) in b.chunks.iter().enumerate() {
        assert_eq!(ch.seq as usize, i);
        assert!(ch.key.starts_with(&format!("{}/{}/1/", ds.id, ex.id)), "key built from ids: {}", ch.key);
        let bytes = std::fs::read(storage_dir.join(&ch.key))?;
        assert_eq!(bytes.len() as u64, ch.size);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), ch.sha256, "chunk {i} checksum");
        whole.update(&bytes);
        total += ch.size;
    }
    assert_eq!(total, ex.stored_bytes);
    assert_eq!(hex::encode(whole.finalize()), ex.sha256);
    let manifest = Manifest::from_bytes(&std::fs::read(storage_dir.join(&b.manifest_key))?)?;
    assert_eq!(manifest.sha256, ex.sha256);
    assert_eq!(manifest.chunks.len(), b.chunks.len());
    assert_eq!(manifest.engine, "postgres");
    assert!(manifest.tool_version.starts_with("pg_dump "));
    for (m, ch) in manifest.chunks.iter().zip(&b.chunks) {
        assert_eq!((m.seq, &m.key, m.size, &m.sha256), (ch.seq, &ch.key, ch.size, &ch.sha256));
    }
    // The stored stream is plain zstd of a pg_dump custom archive.
    let mut stream = Vec::new();
    for ch in &b.chunks {
        stream.extend(std::fs::read(storage_dir.join(&ch.key))?);
    }
    let archive = zstd::decode_all(stream.as_slice())?;
    assert_eq!(archive.len() as u64, ex.raw_bytes);
    assert!(archive.starts_with(b"PGDMP"), "custom-format archive");

    // Restore into a database that does not exist yet.
    let target = TestDb::reserve("dst");
    let restore = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: target.name.clone(),
                create_database: true,
                confirm_target_database: target.name.clone(),
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    assert_eq!(restore.operation, pb::Operation::Restore as i32);
    let done = c.wait_execution(&restore.id, Duration::from_secs(300)).await?;
    let rlogs = c.logs(&restore.id).await?;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32, "restore failed: {}\n{rlogs}", done.error);
    assert!(rlogs.contains("verified"), "{rlogs}");
    assert_eq!(done.raw_bytes, ex.raw_bytes, "every byte of the archive reached pg_restore");

    let (a, b) = (fingerprint(&source).await?, fingerprint(&target).await?);
    assert_eq!(a, b, "restored data differs");
    assert_eq!(a[0].1, 300_000);

    // Restoring again over the now populated database: refused by pg_restore without drop_existing,
    // clean with it (objects dropped first), and through another datasource of the same engine.
    let mut t = target.connect().await?;
    t.execute("DELETE FROM people WHERE id <= 1000; UPDATE documents SET body = 'changed'").await?;
    let other = c
        .datasources
        .create_datasource(authed(
            pb::CreateDatasourceRequest {
                name: "same-server-other-entry".into(),
                engine: pb::Engine::Postgres as i32,
                host: "localhost".into(),
                port: u32::from(pg_server().port),
                database: target.name.clone(),
                username: pg_server().user,
                password: pg_server().password,
                tls_mode: pb::TlsMode::Disable as i32,
                agent_id: agent.id.clone(),
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    let restore_into = |drop_existing| pb::RestoreBackupRequest {
        backup_id: ex.id.clone(),
        target_datasource_id: other.id.clone(),
        drop_existing,
        confirm_target_database: target.name.clone(),
        ..Default::default()
    };
    let plain = c.backups.restore_backup(authed(restore_into(false), &c.token)).await?.into_inner();
    let plain = c.wait_execution(&plain.id, Duration::from_secs(300)).await?;
    assert_eq!(plain.status, pb::ExecutionStatus::Failed as i32, "objects exist: pg_restore must stop");
    assert!(plain.error.contains("pg_restore"), "{}", plain.error);
    let clean = c.backups.restore_backup(authed(restore_into(true), &c.token)).await?.into_inner();
    let clean = c.wait_execution(&clean.id, Duration::from_secs(300)).await?;
    assert_eq!(clean.status, pb::ExecutionStatus::Completed as i32, "{}", clean.error);
    assert_eq!(fingerprint(&target).await?, a, "drop_existing restores the exact data");

    // Backups listed per datasource.
    let mine = c
        .backups
        .list_backups(authed(pb::ListBackupsRequest { datasource_id: ds.id.clone(), ..Default::default() }, &c.token))
        .await?
        .into_inner();
    assert_eq!(mine.backups.len(), 1);
    let none = c
        .backups
        .list_backups(authed(
            pb::ListBackupsRequest { datasource_id: other.id.clone(), ..Default::default() },
            &c.token,
        ))
        .await?
        .into_inner();
    assert!(none.backups.is_empty());

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
