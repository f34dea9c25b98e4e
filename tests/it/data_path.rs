//! The data path across engines and storage strategies: MariaDB and MySQL-mode backups restore identical;
//! replicate keeps going when a storage is down and says so; fallback moves to the next storage; a damaged
//! chunk is refused before the target is touched and read from a good copy when there is one; encrypted
//! backups are unreadable without the agent-held key; a dump tool that fails after every chunk was uploaded
//! still fails the backup.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::mariadb_url;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    pg::TestDb,
    suffix,
};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, MySqlConnection, Row};
use tonic::Code;

/// A MariaDB database dropped at the end of the test.
struct MyDb {
    name: String,
}

impl MyDb {
    async fn create(prefix: &str) -> anyhow::Result<Self> {
        let name = format!("dgt_{prefix}_{}", suffix());
        let mut c = MySqlConnection::connect(&mariadb_url()).await?;
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`"))).await?;
        c.close().await?;
        Ok(Self { name })
    }

    fn reserve(prefix: &str) -> Self {
        Self { name: format!("dgt_{prefix}_{}", suffix()) }
    }

    async fn connect(&self) -> anyhow::Result<MySqlConnection> {
        Ok(MySqlConnection::connect(&format!("{}/{}", mariadb_url(), self.name)).await?)
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut c = MySqlConnection::connect(&mariadb_url()).await?;
                c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

const MY_SEED: &[&str] = &[
    "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(200) CHARACTER SET utf8mb4, bio TEXT, avatar BLOB, \
     prefs JSON, balance DECIMAL(20,4), born DATE, seen DATETIME(6), flag BOOLEAN) DEFAULT CHARSET=utf8mb4",
    "INSERT INTO people SELECT seq, IF(seq % 17 = 0, NULL, CONCAT('näme-', seq, ' 日本語 🚀')), \
     REPEAT(CONCAT('lorem ', seq), 3), IF(seq % 7 = 0, NULL, UNHEX(CONCAT(MD5(seq), MD5(seq * 3)))), \
     IF(seq % 11 = 0, NULL, JSON_OBJECT('n', seq, 'even', seq % 2 = 0)), seq * 1.2345, \
     DATE_ADD('2000-01-01', INTERVAL seq % 9000 DAY), TIMESTAMP('2020-01-01') + INTERVAL seq MINUTE, seq % 2 \
     FROM seq_1_to_60000",
    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, person INT, at DATETIME)",
    "CREATE TRIGGER people_ai AFTER INSERT ON people FOR EACH ROW INSERT INTO audit (person, at) VALUES (NEW.id, NOW())",
    "CREATE PROCEDURE count_people(OUT n INT) SELECT COUNT(*) INTO n FROM people",
    "CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE at < NOW() - INTERVAL 30 DAY",
    "CREATE VIEW rich AS SELECT id, name FROM people WHERE balance > 1000",
];

/// Row count and content hash of `people`, plus the schema objects that must survive.
async fn my_fingerprint(db: &MyDb) -> anyhow::Result<(i64, String, i64, i64, i64, i64)> {
    let mut c = db.connect().await?;
    let rows = sqlx::query(
        "SELECT CONCAT_WS('|', id, HEX(name), HEX(bio), HEX(avatar), HEX(prefs), balance, born, seen, flag) AS r \
         FROM people ORDER BY id",
    )
    .fetch_all(&mut c)
    .await?;
    let mut h = Sha256::new();
    for r in &rows {
        h.update(r.try_get::<String, _>("r")?.as_bytes());
        h.update(b"\n");
    }
    let count = |sql: &'static str| {
        let name = db.name.clone();
        async move {
            let mut c = MySqlConnection::connect(&mariadb_url()).await?;
            Ok::<i64, anyhow::Error>(sqlx::query_scalar(sql).bind(name).fetch_one(&mut c).await?)
        }
    };
    Ok((
        rows.len() as i64,
        hex::encode(h.finalize()),
        count("SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = ?").await?,
        count("SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = ?").await?,
        count("SELECT COUNT(*) FROM information_schema.events WHERE event_schema = ?").await?,
        count("SELECT COUNT(*) FROM information_schema.views WHERE table_schema = ?").await?,
    ))
}

/// An S3 storage nothing listens behind.
async fn dead_storage(c: &mut Clients) -> anyhow::Result<pb::Storage> {
    Ok(c.storages
        .create_storage(authed(
            pb::CreateStorageRequest {
                name: format!("dead-{}", suffix()),
                config: Some(pb::create_storage_request::Config::S3(pb::S3StorageConfig {
                    endpoint: "http://127.0.0.1:1".into(),
                    bucket: "nowhere".into(),
                    path_style: true,
                    allow_http: true,
                    ..Default::default()
                })),
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_and_mysql_mode_backups_restore_identical() -> anyhow::Result<()> {
    let src = MyDb::create("mysrc").await?;
    let mut conn = src.connect().await?;
    for stmt in MY_SEED {
        conn.execute(*stmt).await?;
    }
    let before = my_fingerprint(&src).await?;
    assert_eq!((before.0, before.2, before.3, before.4, before.5), (60_000, 1, 1, 1, 1));

    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (a, b) = (cluster.dir.path().join("a"), cluster.dir.path().join("b"));
    let (sa, sb) = (c.local_storage(&agent.id, &a).await?, c.local_storage(&agent.id, &b).await?);

    // MariaDB, replicated to two storages.
    let ds = c.datasource(pb::Engine::Mariadb, &agent.id, &src.name).await?;
    let j = c.job(&ds.id, &[&sa, &sb], pb::StorageStrategy::Replicate, "").await?;
    let ex = c.run_job(&j.id).await?;
    let logs = c.logs(&ex.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", ex.error);
    assert!(logs.contains("mariadb-dump"), "{logs}");
    let b_detail =
        c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(b_detail.storage_ids.len(), 2, "a complete copy in each storage");
    assert_eq!(b_detail.chunks.len() as u32, 2 * ex.chunk_count);
    let dst = MyDb::reserve("mydst");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    let logs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", r.error);
    assert_eq!(my_fingerprint(&dst).await?, before, "MariaDB restore differs");
    // This machine's MariaDB client (10.11) has a sandbox mode: the restore runs in it and says so.
    assert!(logs.contains("runs with --sandbox"), "{logs}");

    // The same server as a MySQL datasource: mysqldump/mysql (as far as this machine has MySQL tools).
    let ds = c.datasource(pb::Engine::Mysql, &agent.id, &src.name).await?;
    let j = c.job(&ds.id, &[&sa], pb::StorageStrategy::Fallback, "").await?;
    let ex = c.run_job(&j.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    assert!(c.logs(&ex.id).await?.contains("mysqldump"));
    let dst2 = MyDb::reserve("mydst2");
    let r = c.restore_into(&ex.id, &dst2.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(my_fingerprint(&dst2).await?, before, "MySQL-mode restore differs");

    // drop_existing on MariaDB: the target is emptied first, so the restore is exact again.
    dst2.connect().await?.execute("DELETE FROM people WHERE id < 100; CREATE TABLE extra (x INT)").await?;
    let again = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: dst2.name.clone(),
                drop_existing: true,
                confirm_target_database: dst2.name.clone(),
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    let again = c.wait_execution(&again.id, Duration::from_secs(300)).await?;
    assert_eq!(again.status, pb::ExecutionStatus::Completed as i32, "{}", again.error);
    assert_eq!(my_fingerprint(&dst2).await?, before);
    let extra: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'extra'",
    )
    .bind(&dst2.name)
    .fetch_one(&mut conn)
    .await?;
    assert_eq!(extra, 0, "drop_existing removed what the backup does not have");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

const PG_SEED: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, b bytea); \
    INSERT INTO t SELECT g, md5(g::text) || repeat('x', g % 50), decode(md5(g::text), 'hex') FROM generate_series(1, 120000) g";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_and_damaged_chunks() -> anyhow::Result<()> {
    let src = TestDb::create("strat").await?;
    src.connect().await?.execute(PG_SEED).await?;
    let want = src.table_fingerprint("t").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (a, b, d) = (cluster.dir.path().join("a"), cluster.dir.path().join("b"), cluster.dir.path().join("d"));
    let (sa, sb, sd) = (
        c.local_storage(&agent.id, &a).await?,
        c.local_storage(&agent.id, &b).await?,
        c.local_storage(&agent.id, &d).await?,
    );
    let dead = dead_storage(&mut c).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;

    // Replicate with one storage down: completed, with a warning naming it; two complete copies.
    let j = c.job(&ds.id, &[&sa, &dead, &sb], pb::StorageStrategy::Replicate, "").await?;
    let ex = c.run_job(&j.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    assert!(ex.warnings.iter().any(|w| w.contains(&dead.id)), "warning names the failed storage: {:?}", ex.warnings);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    let mut copies = detail.storage_ids.clone();
    copies.sort();
    let mut expected = vec![sa.id.clone(), sb.id.clone()];
    expected.sort();
    assert_eq!(copies, expected);
    assert!(ex.chunk_count >= 2, "several chunks: {}", ex.chunk_count);
    let keys: Vec<String> = detail.chunks.iter().filter(|ch| ch.storage_id == sa.id).map(|ch| ch.key.clone()).collect();

    // Chunk 0 corrupted in A: the restore reads B's copy.
    let mut bytes = std::fs::read(a.join(&keys[0]))?;
    bytes[10] ^= 0xff;
    std::fs::write(a.join(&keys[0]), &bytes)?;
    let dst = TestDb::reserve("strat_ok");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    let rlogs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{rlogs}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, want);

    // The good restore into a new database read every chunk once, verifying it on the way in.
    assert!(rlogs.contains("single pass") && !rlogs.contains("before touching"), "{rlogs}");

    // Chunk 0 corrupted in B too. Into a new database: the single pass stops at that chunk, naming it, and
    // the database it created is dropped.
    let mut bytes = std::fs::read(b.join(&keys[0]))?;
    bytes[10] ^= 0xff;
    std::fs::write(b.join(&keys[0]), &bytes)?;
    let never = TestDb::reserve("strat_never");
    let r = c.restore_into(&ex.id, &never.name).await?;
    let nlogs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32);
    assert!(r.error.contains("chunk 0") && r.error.contains(&keys[0]), "{}", r.error);
    assert!(
        nlogs.contains("single pass") && nlogs.contains(&format!("new database {} dropped", never.name)),
        "{nlogs}"
    );
    let mut admin = src.connect().await?;
    let exists: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&never.name)
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(exists.0, 0, "the new database was dropped");
    // Into an existing database with drop_existing: every chunk is verified before it is touched, so the
    // refusal leaves it exactly as it was.
    let existing = TestDb::create("strat_existing").await?;
    existing.connect().await?.execute("CREATE TABLE keep (v text); INSERT INTO keep VALUES ('mine')").await?;
    let r = c
        .restore_with(pb::RestoreBackupRequest {
            backup_id: ex.id.clone(),
            target_database: existing.name.clone(),
            drop_existing: true,
            confirm_target_database: existing.name.clone(),
            ..Default::default()
        })
        .await?;
    let elogs = c.logs(&r.id).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32, "{elogs}");
    assert!(r.error.contains("chunk 0"), "{}", r.error);
    assert!(!elogs.contains("single pass") && !elogs.contains("dropped"), "{elogs}");
    let kept: (String,) = sqlx::query_as("SELECT v FROM keep").fetch_one(&mut existing.connect().await?).await?;
    assert_eq!(kept.0, "mine", "the existing database was not touched");

    // A deleted chunk: same refusal, naming it.
    std::fs::remove_file(a.join(&keys[1]))?;
    std::fs::remove_file(b.join(&keys[1]))?;
    let r = c.restore_into(&ex.id, &never.name).await?;
    assert!(r.status == pb::ExecutionStatus::Failed as i32 && r.error.contains("chunk"), "{}", r.error);

    // Fallback with the first storage down: the next one takes the backup.
    let j = c.job(&ds.id, &[&dead, &sd], pb::StorageStrategy::Fallback, "").await?;
    let ex = c.run_job(&j.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    assert_eq!(detail.storage_ids, vec![sd.id.clone()]);
    assert!(ex.warnings.iter().any(|w| w.contains(&dead.id)), "{:?}", ex.warnings);

    // Parallel pg_restore (archive staged in the agent's work directory, then removed).
    let par = TestDb::reserve("strat_par");
    let r = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: par.name.clone(),
                create_database: true,
                confirm_target_database: par.name.clone(),
                parallel_jobs: 2,
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    let r = c.wait_execution(&r.id, Duration::from_secs(300)).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert!(c.logs(&r.id).await?.contains("2 jobs"));
    assert_eq!(par.table_fingerprint("t").await?, want);
    let work = agent.state_dir.join("work");
    let left: Vec<_> =
        std::fs::read_dir(&work)?.flatten().map(|e| e.file_name()).filter(|n| n != "credentials").collect();
    assert!(left.is_empty(), "staged archive removed: {left:?}");
    let creds = std::fs::read_dir(work.join("credentials"))?.count();
    assert_eq!(creds, 0, "the passfiles of the dump and the restores are removed after use");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_need_the_agent_key() -> anyhow::Result<()> {
    let src = TestDb::create("enc").await?;
    src.connect().await?.execute(PG_SEED).await?;
    let want = src.table_fingerprint("t").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let key_file = dg_agent::keys::generate(&dg_agent::keys::keys_dir(&agent.state_dir), "prod-2026")?;
    let dir = cluster.dir.path().join("enc");
    let st = c.local_storage(&agent.id, &dir).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let j = c.job(&ds.id, &[&st], pb::StorageStrategy::Fallback, "prod-2026").await?;
    assert_eq!(j.encryption_key_id, "prod-2026");
    let ex = c.run_job(&j.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    assert_eq!(ex.encryption_key_id, "prod-2026");

    // Stored bytes are not zstd-readable, and the manifest carries only the wrapped data key.
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    let mut stream = Vec::new();
    for ch in &detail.chunks {
        let bytes = std::fs::read(dir.join(&ch.key))?;
        assert!(!bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "no zstd frame header");
        stream.extend(bytes);
    }
    assert!(zstd::decode_all(stream.as_slice()).is_err(), "ciphertext must not decompress");
    let manifest = dg_common::manifest::Manifest::from_bytes(&std::fs::read(dir.join(&detail.manifest_key))?)?;
    assert_eq!(manifest.encryption_key_id.as_deref(), Some("prod-2026"));
    let key_hex = std::fs::read_to_string(&key_file)?;
    assert!(manifest.wrapped_key.as_ref().is_some_and(|w| !w.contains(key_hex.trim())));
    let dl = c
        .backups
        .download_backup(authed(pb::DownloadBackupRequest { id: ex.id.clone(), decompress: true }, &c.token))
        .await;
    assert_eq!(dl.err().map(|e| e.code()), Some(Code::FailedPrecondition), "the controller cannot decrypt");

    // With the key: identical data.
    let dst = TestDb::reserve("enc_ok");
    let r = c.restore_into(&ex.id, &dst.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}", r.error);
    assert_eq!(dst.table_fingerprint("t").await?, want);

    // Without it: a clear failure, before the target is created.
    std::fs::rename(&key_file, cluster.dir.path().join("moved.key"))?;
    let never = TestDb::reserve("enc_never");
    let r = c.restore_into(&ex.id, &never.name).await?;
    assert_eq!(r.status, pb::ExecutionStatus::Failed as i32);
    assert!(r.error.contains("prod-2026") && r.error.contains("not available on this agent"), "{}", r.error);
    let mut admin = src.connect().await?;
    let exists: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&never.name)
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(exists.0, 0);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_tool_failing_after_the_upload_fails_the_backup() -> anyhow::Result<()> {
    let src = TestDb::create("tool").await?;
    src.connect().await?.execute(PG_SEED).await?;
    // No grace for orphans: the failed attempt's uploaded chunks are swept at the next cleanup round.
    let mut cluster = Cluster::start_with(ClusterOptions { orphan_grace_secs: Some(0), ..Default::default() }).await?;
    // A pg_dump that produces the whole dump, then exits non-zero.
    let tools = cluster.dir.path().join("tools");
    std::fs::create_dir_all(&tools)?;
    let real = which_pg_dump()?;
    let wrapper = tools.join("pg_dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\"{real}\" \"$@\"\nstatus=$?\n[ \"$1\" = --version ] && exit $status\necho 'simulated failure after the dump' >&2\nexit 3\n"
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut c = cluster.clients().await?;
    let mut opts = cluster.run_options();
    opts.tools = dg_agent::tools::Tools::new(vec![tools.clone()]);
    let agent = cluster.start_agent_with(&mut c, opts).await?;
    let a = agent_tool(&mut c, &agent.id, "pg_dump").await?;
    assert_eq!(a.path, wrapper.to_string_lossy(), "the configured tool dir comes first");

    let st = c.local_storage(&agent.id, &cluster.dir.path().join("t")).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let j = c.job(&ds.id, &[&st], pb::StorageStrategy::Fallback, "").await?;
    let ex = c.run_job(&j.id).await?;
    let logs = c.logs(&ex.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32, "{logs}");
    assert!(ex.error.contains("exit status: 3") && ex.error.contains("simulated failure"), "{}", ex.error);
    assert!(logs.contains("simulated failure after the dump"), "stderr reaches the log: {logs}");
    let list = c.backups.list_backups(authed(pb::ListBackupsRequest::default(), &c.token)).await?.into_inner();
    assert!(list.backups.is_empty(), "no backup listed");

    // The chunks it uploaded are orphans: the cleanup worker removes them.
    let store_dir = cluster.dir.path().join("t");
    let files = |d: &std::path::Path| walk(d).into_iter().filter(|p| p.extension().is_some_and(|e| e == "zst")).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while files(&store_dir) > 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "orphaned chunks were not swept");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn which_pg_dump() -> anyhow::Result<String> {
    let out = std::process::Command::new("sh").arg("-c").arg("command -v pg_dump").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn agent_tool(c: &mut Clients, agent: &str, name: &str) -> anyhow::Result<pb::ToolInfo> {
    let a = c.agents.get_agent(authed(pb::GetAgentRequest { id: agent.into() }, &c.token)).await?.into_inner();
    a.tools.into_iter().find(|t| t.name == name).ok_or_else(|| anyhow::anyhow!("{name} not reported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_globals_are_kept_and_replayed() -> anyhow::Result<()> {
    let src = TestDb::create("glob").await?;
    src.connect()
        .await?
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text, b bytea); INSERT INTO t VALUES (1, 'x', NULL)")
        .await?;
    let role = format!("dgt_role_{}", suffix());
    let mut admin = src.connect().await?;
    admin.execute(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} NOLOGIN"))).await?;
    admin.execute(sqlx::AssertSqlSafe(format!("GRANT SELECT ON t TO {role}"))).await?;

    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let dir = cluster.dir.path().join("g");
    let st = c.local_storage(&agent.id, &dir).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let j = c
        .jobs
        .create_backup_job(authed(
            pb::CreateBackupJobRequest {
                name: format!("glob-{}", suffix()),
                datasource_id: ds.id.clone(),
                storage_ids: vec![st.id.clone()],
                include_globals: true,
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    assert!(j.include_globals);
    let ex = c.run_job(&j.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Completed as i32, "{}", ex.error);
    let detail = c.backups.get_backup(authed(pb::GetBackupRequest { id: ex.id.clone() }, &c.token)).await?.into_inner();
    let manifest = dg_common::manifest::Manifest::from_bytes(&std::fs::read(dir.join(&detail.manifest_key))?)?;
    let g = manifest.globals.expect("globals recorded in the manifest");
    let sql = String::from_utf8(zstd::decode_all(std::fs::read(dir.join(&g.key))?.as_slice())?)?;
    assert!(sql.contains(&format!("CREATE ROLE {role}")), "the role is in the globals");

    // The role disappears; a restore with restore_globals brings it back before the grants are restored.
    admin.execute(sqlx::AssertSqlSafe(format!("REVOKE ALL ON t FROM {role}; DROP ROLE {role}"))).await?;
    let dst = TestDb::reserve("glob_dst");
    let r = c
        .backups
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.id.clone(),
                target_database: dst.name.clone(),
                create_database: true,
                confirm_target_database: dst.name.clone(),
                restore_globals: true,
                ..Default::default()
            },
            &c.token,
        ))
        .await?
        .into_inner();
    let r = c.wait_execution(&r.id, Duration::from_secs(120)).await?;
    let logs = c.logs(&r.id).await?;
    let back: (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_roles WHERE rolname = $1").bind(&role).fetch_one(&mut admin).await?;
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", dst.name))).await;
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("REVOKE ALL ON t FROM {role}"))).await;
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}"))).await;
    assert_eq!(r.status, pb::ExecutionStatus::Completed as i32, "{}\n{logs}", r.error);
    assert_eq!(back.0, 1, "the role was recreated from the globals");
    assert!(
        logs.contains("globals replayed") && logs.contains("already exists"),
        "existing roles are reported: {logs}"
    );

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
