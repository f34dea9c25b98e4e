//! Parallel PostgreSQL backups through the API: a job with `parallel: 4` is backed up in several streams
//! under one exported snapshot while transfers between accounts and an append-only ledger are written
//! concurrently; the restore, with another worker count and with one, holds the invariants (the total is
//! constant, the ledger is a gap-free prefix, every balance is the replay of exactly that prefix), so no row
//! newer than the snapshot appears and none older is missing; awkward tables (a quoted name, generated and
//! dropped columns, a partitioned table, a table without columns), sequences, a large object, a
//! materialised view, indexes and foreign keys come back; a damaged chunk in one stream fails the restore
//! and the new database is dropped; a parallel backup is not offered for download.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Cluster, authed},
    pg::TestDb,
    suffix,
};
use sqlx::{Connection, Executor, Row};
use tonic::Code;

const ACCOUNTS: i64 = 100;
const OPENING: i64 = 1000;

const SCHEMA: &str = "
    CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
    INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
    CREATE TABLE ledger (seq bigserial PRIMARY KEY, src int NOT NULL REFERENCES accounts (id),
                         dst int NOT NULL REFERENCES accounts (id), at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL, gone int,
                      twice bigint GENERATED ALWAYS AS (id * 2) STORED);
    ALTER TABLE big DROP COLUMN gone;
    INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 500000) g;
    CREATE INDEX big_twice ON big (twice);
    CREATE TABLE \"we\"\"ird tab\" (id int PRIMARY KEY, t text, b bytea, j jsonb, f float8, \"Col \"\"q\"\"\" text);
    INSERT INTO \"we\"\"ird tab\" VALUES
        (1, E'line\\nbreak\\ttab\\\\slash', '\\x00ff0a0d', '{\"k\": [1, \"é\"]}', 0.1 + 0.2, 'ünï'),
        (2, NULL, NULL, NULL, 'NaN', NULL),
        (3, '', '\\x', '[]', -0.0, E'\\r');
    CREATE TABLE events (id int, region text) PARTITION BY LIST (region);
    CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
    CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
    INSERT INTO events SELECT g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END FROM generate_series(1, 3000) g;
    CREATE TABLE empty_t (id int);
    CREATE TABLE nocols ();
    INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES;
    CREATE SEQUENCE standalone;
    SELECT setval('standalone', 42);
    SELECT lo_from_bytea(0, 'a large object');
    CREATE MATERIALIZED VIEW total AS SELECT sum(balance) AS s FROM accounts;
";

/// Transfers one unit between two accounts and appends it to the ledger, one transaction each, until told
/// to stop; returns how many it committed.
async fn transfers(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<i64> {
    let mut c = sqlx::PgConnection::connect(&url).await?;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let i = n + 1;
        let src = i * 7919 % ACCOUNTS + 1;
        let dst = (src + 1 + i * 31 % (ACCOUNTS - 1)) % ACCOUNTS + 1;
        let sql = format!(
            "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {src}; \
             UPDATE accounts SET balance = balance + 1 WHERE id = {dst}; \
             INSERT INTO ledger (src, dst) VALUES ({src}, {dst}); COMMIT"
        );
        c.execute(sqlx::AssertSqlSafe(sql)).await?;
        n = i;
    }
    Ok(n)
}

async fn scalar(db: &TestDb, sql: &str) -> anyhow::Result<i64> {
    let mut c = db.connect().await?;
    let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut c).await?;
    Ok(v)
}

/// The restored database holds one consistent state with at most `committed` transfers in it, and
/// everything else as in the source.
async fn check_restored(src: &TestDb, dst: &TestDb, committed: i64) -> anyhow::Result<i64> {
    let total = scalar(dst, "SELECT sum(balance)::int8 FROM accounts").await?;
    assert_eq!(total, ACCOUNTS * OPENING, "the total is constant");
    let mut c = dst.connect().await?;
    let r = c
        .fetch_one("SELECT count(*) AS n, coalesce(min(seq), 1) AS lo, coalesce(max(seq), 0) AS hi FROM ledger")
        .await?;
    let (n, lo, hi): (i64, i64, i64) = (r.try_get("n")?, r.try_get("lo")?, r.try_get("hi")?);
    assert_eq!((lo, hi), (1, n), "the ledger is a gap-free prefix");
    assert!(n > 0 && n < committed, "the snapshot saw {n} of {committed} transfers: some before, some after");
    let off = scalar(
        dst,
        "SELECT count(*) FROM accounts a WHERE balance <> 1000 \
           - (SELECT count(*) FROM ledger WHERE src = a.id) + (SELECT count(*) FROM ledger WHERE dst = a.id)",
    )
    .await?;
    assert_eq!(off, 0, "every balance is the replay of exactly the ledger it was backed up with");
    for table in ["big", "\"we\"\"ird tab\"", "events_eu", "events_us"] {
        assert_eq!(dst.table_fingerprint(table).await?, src.table_fingerprint(table).await?, "{table}");
    }
    for (sql, want) in [
        ("SELECT count(*) FROM nocols", 3),
        ("SELECT count(*) FROM empty_t", 0),
        ("SELECT count(*) FROM events", 3000),
        ("SELECT last_value FROM standalone", 42),
        ("SELECT (last_value >= (SELECT max(seq) FROM ledger))::int::int8 FROM ledger_seq_seq", 1),
        ("SELECT count(*) FROM pg_largeobject_metadata", 1),
        ("SELECT (lo_get(oid) = 'a large object'::bytea)::int::int8 FROM pg_largeobject_metadata", 1),
        ("SELECT s::int8 FROM total", ACCOUNTS * OPENING),
        ("SELECT count(*) FROM pg_indexes WHERE indexname IN ('big_twice', 'big_pkey', 'ledger_pkey')", 3),
        ("SELECT count(*) FROM pg_constraint WHERE conrelid = 'ledger'::regclass AND contype = 'f'", 2),
        ("SELECT sum(twice - 2 * id)::int8 FROM big", 0),
    ] {
        assert_eq!(scalar(dst, sql).await?, want, "{sql}");
    }
    Ok(n)
}

fn manifest_of(root: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, dg_common::manifest::Manifest)> {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(found) = find(&p) {
                    return Some(found);
                }
            } else if p.file_name().is_some_and(|n| n == "manifest.json") {
                return Some(p);
            }
        }
        None
    }
    let path = find(root).ok_or_else(|| anyhow::anyhow!("no manifest under {}", root.display()))?;
    let m = dg_common::manifest::Manifest::from_bytes(&std::fs::read(&path)?)?;
    Ok((path, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_backup_is_one_consistent_snapshot_and_restores_with_any_worker_count() -> anyhow::Result<()> {
    use dg_common::manifest::StreamRole;
    let src = TestDb::create("parallel").await?;
    src.connect().await?.execute(SCHEMA).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("parallel");
    let st = c.local_storage(&agent.id, &dir).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let req = pb::CreateBackupJobRequest {
        name: format!("parallel-{}", suffix()),
        datasource_id: ds.id.clone(),
        storage_ids: vec![st.id.clone()],
        parallel: 4,
        ..Default::default()
    };
    let job = c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner();

    // Transfers run before, during and after the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(transfers(src.url(), stop.clone()));
    while scalar(&src, "SELECT count(*) FROM ledger").await? < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ex = c.run_job(&job.id).await?;
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await??;
    let logs = c.logs(&ex.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", ex.error);
    assert!(logs.contains("through 4 parallel streams"), "{logs}");

    // The manifest records the layout: the schema streams, four data streams, the big table in page ranges.
    let (_, m) = manifest_of(&dir)?;
    let layout = m.layout.as_ref().ok_or_else(|| anyhow::anyhow!("a parallel backup's manifest has a layout"))?;
    assert_eq!(m.format, 2);
    let roles: Vec<StreamRole> = layout.streams.iter().map(|s| s.role).collect();
    assert_eq!(roles.iter().filter(|r| **r == StreamRole::Data).count(), 4, "{roles:?}");
    let big: Vec<_> = layout.streams.iter().flat_map(|s| &s.segments).filter(|g| g.table == "big").collect();
    assert!(big.len() >= 2 && big.iter().all(|g| g.pages.is_some()), "the big table is read in page ranges: {big:?}");
    assert_eq!(big.iter().map(|g| g.rows).sum::<u64>(), 500_000);
    assert!(big.iter().all(|g| g.columns == ["id", "payload"]), "no generated or dropped column: {big:?}");

    // Restored with three loaders and with one into new databases, and with two over an existing database
    // (drop_existing: verified first, then the database is recreated): the same consistent state.
    let mut seen = Vec::new();
    // parallel_jobs unset (0): as the backup was taken, four loaders.
    for (jobs, existing) in [(3, false), (1, false), (2, true), (0, false)] {
        let dst = if existing { TestDb::create("parallel_over").await? } else { TestDb::reserve("parallel_dst") };
        if existing {
            dst.connect().await?.execute("CREATE TABLE leftover (x int); CREATE TABLE accounts (id int)").await?;
        }
        let r = c
            .restore_with(pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: dst.name.clone(),
                create_database: !existing,
                drop_existing: existing,
                confirm_target_database: dst.name.clone(),
                parallel_jobs: jobs,
                ..Default::default()
            })
            .await?;
        let rlogs = c.logs(&r.id).await?;
        assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{rlogs}", r.error);
        let loaders = if jobs == 0 { 4 } else { jobs };
        assert!(rlogs.contains(&format!("with {loaders} parallel COPY connections")), "{rlogs}");
        assert_eq!(rlogs.contains("before touching the existing database"), existing, "{rlogs}");
        seen.push(check_restored(&src, &dst, committed).await?);
        if existing {
            let left = scalar(&dst, "SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'").await?;
            assert_eq!(left, 0, "drop_existing recreated the database");
        }
    }
    assert!(seen.iter().all(|n| *n == seen[0]), "every restore holds the same snapshot: {seen:?}");

    // A parallel backup is restored, not downloaded as one file.
    let e = match c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: ex.id.clone(), decompress: true }, &c.token))
        .await
    {
        Err(e) => e,
        Ok(stream) => stream.into_inner().message().await.expect_err("a parallel backup is not downloadable"),
    };
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("parallel"), "{}", e.message());

    // One damaged chunk of the largest data stream: the restore into a new database fails naming it, and the
    // database it created is dropped.
    let largest = layout
        .streams
        .iter()
        .filter(|s| s.role == StreamRole::Data)
        .max_by_key(|s| s.raw_bytes)
        .ok_or_else(|| anyhow::anyhow!("a data stream"))?;
    let seq = *largest.chunks.last().ok_or_else(|| anyhow::anyhow!("a chunk"))?;
    let chunk = &m.chunks[seq as usize];
    let path = dir.join(&chunk.key);
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes)?;
    let never = TestDb::reserve("parallel_damaged");
    let r = c.restore_into(&ex.id, &never.name).await?;
    let rlogs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32, "{rlogs}");
    assert!(r.error.contains(&format!("chunk {seq}")), "{}", r.error);
    assert!(rlogs.contains(&format!("new database {} dropped", never.name)), "{rlogs}");
    let gone = scalar(&src, &format!("SELECT count(*) FROM pg_database WHERE datname = '{}'", never.name)).await?;
    assert_eq!(gone, 0, "the new database was dropped");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// An encrypted parallel backup: every stream's chunks are sealed at their shared positions, the backup is
/// marked parallel, verifies intact and restores identically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_parallel_backup_verifies_and_restores() -> anyhow::Result<()> {
    let src = TestDb::create("parallel_enc").await?;
    src.connect()
        .await?
        .execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
             CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a (id)); INSERT INTO b SELECT g, g FROM generate_series(1, 5000) g;
             CREATE TABLE c (id serial PRIMARY KEY, t text); INSERT INTO c (t) SELECT repeat('x', g % 50) FROM generate_series(1, 3000) g;",
        )
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    dg_agent::keys::generate(&dg_agent::keys::keys_dir(&agent.state_dir), "par-1")?;
    let dir = cluster.dir.path().join("parallel-enc");
    let st = c.local_storage(&agent.id, &dir).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let req = pb::CreateBackupJobRequest {
        name: format!("parallel-enc-{}", suffix()),
        datasource_id: ds.id.clone(),
        storage_ids: vec![st.id.clone()],
        encryption_key_id: "par-1".into(),
        parallel: 2,
        ..Default::default()
    };
    let job = c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner();
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", ex.error, c.logs(&ex.id).await?);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    assert!(detail.parallel, "the backup is marked parallel");
    for ch in &detail.chunks {
        let bytes = std::fs::read(dir.join(&ch.key))?;
        assert!(!bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "chunk {} is sealed", ch.seq);
    }
    let v = c
        .backups
        .verify_backup(authed(pb::VerifyBackupRequest { backup_id: ex.id.clone(), ..Default::default() }, &c.token))
        .await?
        .into_inner();
    let v = c.wait_execution(&v.id, std::time::Duration::from_secs(120)).await?;
    assert_eq!(v.status, pb::ExecutionStatus::Completed as i32, "{}", v.error);
    let dst = TestDb::reserve("parallel_enc_dst");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{}", r.error, c.logs(&r.id).await?);
    for t in ["a", "b", "c"] {
        assert_eq!(dst.table_fingerprint(t).await?, src.table_fingerprint(t).await?, "{t}");
    }
    assert_eq!(scalar(&dst, "SELECT last_value FROM c_id_seq").await?, 3000);
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
