//! Restore drills through the public API with a real agent, real PostgreSQL and MariaDB and real dump tools.
//! PostgreSQL: a backup records exact row counts (GetBackup shows them); with the source table truncated
//! after the backup, a drill's row-count, SQL and schema assertions still pass (the counts are the backup's),
//! with an RTO and a scratch database that no longer exists afterwards; an assertion that cannot hold fails
//! naming expected and actual; a too-small maximum age fails at once with the reason; the export is JSON
//! holding the runs. MariaDB: a drill passes with row counts and an SQL assertion. Bad input is refused with
//! the right code and writes nothing; a scheduled drill runs from its cron and stops when disabled.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, authed},
    pg::TestDb,
    suffix,
};
use sqlx::{Connection, Executor, Row};
use tonic::Code;

const PG_SEED: &str = "CREATE TABLE t (id serial PRIMARY KEY, v text); \
    INSERT INTO t (v) SELECT md5(g::text) FROM generate_series(1, 1000) g; \
    CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1), (2), (3), (4), (5); \
    CREATE VIEW tv AS SELECT id FROM t WHERE id < 10; \
    CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql AS 'SELECT 2 * x'";

fn scalar(name: &str, query: &str, value: &str) -> pb::SqlAssertion {
    pb::SqlAssertion {
        name: name.into(),
        query: query.into(),
        expect: Some(pb::sql_assertion::Expect::Scalar(value.into())),
    }
}

fn rows(name: &str, query: &str) -> pb::SqlAssertion {
    pb::SqlAssertion {
        name: name.into(),
        query: query.into(),
        expect: Some(pb::sql_assertion::Expect::AtLeastOneRow(true)),
    }
}

fn drill_req(ds: &str, sql: Vec<pb::SqlAssertion>, max_age_secs: i64) -> pb::CreateRestoreDrillRequest {
    pb::CreateRestoreDrillRequest {
        name: format!("drill-{}", suffix()),
        datasource_id: ds.into(),
        target_datasource_id: ds.into(),
        max_backup_age: Some(prost_types::Duration { seconds: max_age_secs, nanos: 0 }),
        sql_assertions: sql,
        ..Default::default()
    }
}

async fn create(c: &mut Clients, req: pb::CreateRestoreDrillRequest) -> Result<pb::RestoreDrill, tonic::Status> {
    Ok(c.drills.create_restore_drill(authed(req, &c.token)).await?.into_inner())
}

/// Runs a drill now and waits until the run has ended.
async fn run_drill(c: &mut Clients, drill: &str) -> anyhow::Result<pb::DrillRun> {
    let run = c.drills.run_restore_drill(authed(pb::RunRestoreDrillRequest { id: drill.into() }, &c.token)).await?;
    let mut run = run.into_inner();
    assert!(run.trigger.starts_with("operator:"), "{}", run.trigger);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while run.status == pb::DrillRunStatus::Running as i32 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "drill run {} still running", run.id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        run =
            c.drills.get_drill_run(authed(pb::GetDrillRunRequest { id: run.id.clone() }, &c.token)).await?.into_inner();
    }
    Ok(run)
}

fn outcome<'a>(run: &'a pb::DrillRun, name: &str) -> &'a pb::AssertionOutcome {
    run.assertions.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("assertion {name} in {:?}", run.assertions))
}

async fn pg_database_exists(name: &str) -> anyhow::Result<bool> {
    let mut c = sqlx::PgConnection::connect(&dg_tests::pg_admin_url()).await?;
    let found = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1").bind(name).fetch_optional(&mut c).await?;
    c.close().await?;
    Ok(found.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_drill_judges_the_backup_counts_and_keeps_evidence() -> anyhow::Result<()> {
    let src = TestDb::create("drillpg").await?;
    src.connect().await?.execute(PG_SEED).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let st = c.local_storage(&agent.id, &cluster.dir.path().join("s")).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let job = c.job(&ds.id, &[&st], pb::StorageStrategy::Fallback, "").await?;
    let backup = c.run_job(&job.id).await?;
    assert_eq!(backup.status, pb::ExecutionStatus::Completed as i32, "{}", backup.error);
    let b = c.backups.get_backup(authed(pb::GetBackupRequest { id: backup.id.clone() }, &c.token)).await?.into_inner();
    let t = b.table_counts.iter().find(|t| t.schema == "public" && t.table == "t").expect("t counted");
    assert_eq!((t.rows, t.exact), (1000, true), "exact count in the dump's snapshot");
    assert!(b.table_counts.iter().any(|t| t.table == "u" && t.rows == 5), "{:?}", b.table_counts);

    // The source changes after the backup: the drill still proves the backup.
    src.connect().await?.execute("TRUNCATE t").await?;
    let mut req = drill_req(
        &ds.id,
        vec![scalar("count t", "select count(*) from t", "1000"), rows("u has rows", "select 1 from u")],
        3600,
    );
    req.schema = Some(pb::SchemaExpectations {
        min_tables: Some(2),
        min_views: Some(1),
        min_functions: Some(1),
        min_sequences: Some(1),
    });
    let good = create(&mut c, req).await?;
    assert!(good.assert_row_counts, "row counts are compared by default");
    let run = run_drill(&mut c, &good.id).await?;
    assert_eq!(run.status, pb::DrillRunStatus::Passed as i32, "{} {:?}", run.error, run.assertions);
    assert_eq!(run.backup_id, backup.id);
    assert!(run.backup_completed_at.is_some() && run.finished_at.is_some());
    let rows_t = outcome(&run, "rows public.t");
    assert_eq!((rows_t.kind.as_str(), rows_t.expected.as_str(), rows_t.actual.as_str()), ("row_count", "1000", "1000"));
    let count = outcome(&run, "count t");
    assert_eq!((count.expected.as_str(), count.actual.as_str(), count.passed), ("1000", "1000", true));
    assert!(outcome(&run, "u has rows").passed);
    assert_eq!(outcome(&run, "min functions").expected, ">= 1");
    assert!(run.rto_ms > 0 && run.duration_ms >= run.rto_ms / 2, "rto {} duration {}", run.rto_ms, run.duration_ms);
    assert!(run.scratch_database.starts_with("dg_drill_"), "{}", run.scratch_database);
    assert!(!pg_database_exists(&run.scratch_database).await?, "scratch database dropped");
    assert_eq!(run.target_datasource_id, ds.id);

    // An assertion that cannot hold fails, naming expected and actual.
    let bad = create(&mut c, drill_req(&ds.id, vec![scalar("count t", "select count(*) from t", "999")], 3600)).await?;
    let failed = run_drill(&mut c, &bad.id).await?;
    assert_eq!(failed.status, pb::DrillRunStatus::Failed as i32);
    let o = outcome(&failed, "count t");
    assert_eq!((o.expected.as_str(), o.actual.as_str(), o.passed), ("999", "1000", false));
    assert!(failed.error.contains("expected 999, actual 1000"), "{}", failed.error);
    assert!(outcome(&failed, "rows public.t").passed, "the row counts still hold");
    assert!(!pg_database_exists(&failed.scratch_database).await?);

    // Too old a backup: failed at once with the reason, nothing restored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stale = create(&mut c, drill_req(&ds.id, Vec::new(), 1)).await?;
    let r = c.drills.run_restore_drill(authed(pb::RunRestoreDrillRequest { id: stale.id.clone() }, &c.token)).await?;
    let r = r.into_inner();
    assert_eq!(r.status, pb::DrillRunStatus::Failed as i32);
    assert!(r.error.contains("max_backup_age") && r.error.contains(&backup.id), "{}", r.error);
    assert!(r.execution_id.is_empty() && r.backup_id.is_empty());

    // Runs are listed newest first and exported as JSON.
    let second = run_drill(&mut c, &good.id).await?;
    let list = c
        .drills
        .list_drill_runs(authed(pb::ListDrillRunsRequest { drill_id: good.id.clone(), ..Default::default() }, &c.token))
        .await?
        .into_inner();
    let ids: Vec<&str> = list.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), run.id.as_str()]);
    let export = c
        .drills
        .export_drill_evidence(authed(
            pb::ExportDrillEvidenceRequest { drill_id: good.id.clone(), ..Default::default() },
            &c.token,
        ))
        .await?
        .into_inner();
    let doc: serde_json::Value = serde_json::from_str(&export.json)?;
    assert_eq!(doc["drill"]["id"], good.id.as_str());
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], run.id.as_str());
    assert_eq!(runs[0]["status"], "passed");
    assert_eq!(runs[0]["backup_id"], backup.id.as_str());
    assert!(runs[0]["rto_ms"].as_u64().is_some_and(|v| v > 0));
    assert!(
        runs[0]["assertions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == "count t" && x["actual"] == "1000"))
    );
    let stale_doc = c
        .drills
        .export_drill_evidence(authed(
            pb::ExportDrillEvidenceRequest { drill_id: stale.id.clone(), ..Default::default() },
            &c.token,
        ))
        .await?
        .into_inner();
    let stale_doc: serde_json::Value = serde_json::from_str(&stale_doc.json)?;
    assert!(stale_doc["runs"][0]["error"].as_str().is_some_and(|e| e.contains("max_backup_age")));

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_drill_passes_with_row_counts_and_sql() -> anyhow::Result<()> {
    let my = format!("dgt_drillmy_{}", suffix());
    let admin = dg_tests::mariadb_url();
    let mut m = sqlx::MySqlConnection::connect(&admin).await?;
    m.execute(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{my}`; CREATE TABLE `{my}`.t (id INT PRIMARY KEY, v VARCHAR(64)); \
         INSERT INTO `{my}`.t SELECT seq, MD5(seq) FROM `{my}`.seq_1_to_200; \
         CREATE VIEW `{my}`.tv AS SELECT id FROM `{my}`.t"
    )))
    .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let st = c.local_storage(&agent.id, &cluster.dir.path().join("s")).await?;
    let ds = c.datasource(pb::Engine::Mariadb, &agent.id, &my).await?;
    let job = c.job(&ds.id, &[&st], pb::StorageStrategy::Fallback, "").await?;
    let backup = c.run_job(&job.id).await?;
    assert_eq!(backup.status, pb::ExecutionStatus::Completed as i32, "{}", backup.error);
    m.execute(sqlx::AssertSqlSafe(format!("DELETE FROM `{my}`.t WHERE id > 100"))).await?;
    let mut req = drill_req(&ds.id, vec![scalar("count t", "SELECT COUNT(*) FROM t", "200")], 3600);
    // The test login may create `dgt_%` databases only.
    req.scratch_database_prefix = "dgt_drill_".into();
    req.schema = Some(pb::SchemaExpectations { min_tables: Some(1), min_views: Some(1), ..Default::default() });
    let drill = create(&mut c, req).await?;
    let run = run_drill(&mut c, &drill.id).await?;
    assert_eq!(run.status, pb::DrillRunStatus::Passed as i32, "{} {:?}", run.error, run.assertions);
    let rows_t = outcome(&run, "rows t");
    assert_eq!((rows_t.expected.as_str(), rows_t.actual.as_str()), ("200", "200"));
    assert_eq!(outcome(&run, "count t").actual, "200");
    assert!(run.rto_ms > 0);
    let left = sqlx::query("SELECT COUNT(*) AS n FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?")
        .bind(&run.scratch_database)
        .fetch_one(&mut m)
        .await?;
    assert_eq!(left.try_get::<i64, _>("n")?, 0, "scratch database dropped");

    m.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE `{my}`"))).await?;
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_bad_input_is_refused_and_a_scheduled_drill_runs_from_its_cron() -> anyhow::Result<()> {
    let src = TestDb::create("drillbad").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let pg = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let maria = c.datasource(pb::Engine::Mariadb, &agent.id, "dgt_unused").await?;

    let code_field = |r: Result<pb::RestoreDrill, tonic::Status>| {
        let e = r.expect_err("refused");
        (e.code(), e.message().split(':').next().unwrap_or_default().to_owned())
    };
    let mut missing = drill_req(&pg.id, Vec::new(), 3600);
    missing.datasource_id.clear();
    assert_eq!(code_field(create(&mut c, missing).await), (Code::InvalidArgument, "datasource_id".into()));
    let mut no_age = drill_req(&pg.id, Vec::new(), 3600);
    no_age.max_backup_age = None;
    assert_eq!(code_field(create(&mut c, no_age).await), (Code::InvalidArgument, "max_backup_age".into()));
    let mut tol = drill_req(&pg.id, Vec::new(), 3600);
    tol.row_count_tolerance_percent = 101.0;
    assert_eq!(code_field(create(&mut c, tol).await), (Code::InvalidArgument, "row_count_tolerance_percent".into()));
    let twice = drill_req(&pg.id, vec![rows("a", "select 1"), rows("a", "select 2")], 3600);
    assert_eq!(code_field(create(&mut c, twice).await), (Code::InvalidArgument, "sql_assertions.name".into()));
    let mut cron = drill_req(&pg.id, Vec::new(), 3600);
    cron.cron = "61 * * * *".into();
    assert_eq!(code_field(create(&mut c, cron).await), (Code::InvalidArgument, "cron".into()));
    let mut prefix = drill_req(&pg.id, Vec::new(), 3600);
    prefix.scratch_database_prefix = "Drill-".into();
    assert_eq!(code_field(create(&mut c, prefix).await), (Code::InvalidArgument, "scratch_database_prefix".into()));
    let mut unknown = drill_req(&pg.id, Vec::new(), 3600);
    unknown.target_datasource_id = uuid::Uuid::new_v4().to_string();
    assert_eq!(create(&mut c, unknown).await.expect_err("unknown").code(), Code::NotFound);
    let mut other_engine = drill_req(&pg.id, Vec::new(), 3600);
    other_engine.target_datasource_id = maria.id.clone();
    let e = create(&mut c, other_engine).await.expect_err("engine");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("target_datasource_id"), "{}", e.message());
    let list = c.drills.list_restore_drills(authed(pb::ListRestoreDrillsRequest::default(), &c.token)).await?;
    assert!(list.into_inner().drills.is_empty(), "nothing written");
    let run = c
        .drills
        .run_restore_drill(authed(pb::RunRestoreDrillRequest { id: uuid::Uuid::new_v4().to_string() }, &c.token));
    assert_eq!(run.await.expect_err("unknown").code(), Code::NotFound);
    let run = c.drills.get_drill_run(authed(pb::GetDrillRunRequest { id: "nope".into() }, &c.token)).await;
    assert_eq!(run.expect_err("malformed").code(), Code::InvalidArgument);

    // A drill due every two seconds (a seconds field) runs from the schedule; no backup exists, so each run
    // fails at once saying so. Disabled, it stops.
    let mut every = drill_req(&pg.id, Vec::new(), 3600);
    every.cron = "*/2 * * * * *".into();
    let d = create(&mut c, every).await?;
    let runs = |c: &mut Clients| {
        let req = authed(pb::ListDrillRunsRequest { drill_id: d.id.clone(), ..Default::default() }, &c.token);
        let mut client = c.drills.clone();
        async move { anyhow::Ok(client.list_drill_runs(req).await?.into_inner().runs) }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let scheduled = loop {
        let r = runs(&mut c).await?;
        if !r.is_empty() {
            break r;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no scheduled run");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(scheduled[0].trigger, "schedule");
    assert_eq!(scheduled[0].status, pb::DrillRunStatus::Failed as i32);
    assert!(scheduled[0].error.contains("no good backup"), "{}", scheduled[0].error);
    let off = pb::UpdateRestoreDrillRequest { id: d.id.clone(), enabled: Some(false), ..Default::default() };
    let updated = c.drills.update_restore_drill(authed(off, &c.token)).await?.into_inner();
    assert!(!updated.enabled && updated.next_run_at.is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = runs(&mut c).await?.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(runs(&mut c).await?.len(), settled, "a disabled drill does not run");
    c.drills.delete_restore_drill(authed(pb::DeleteRestoreDrillRequest { id: d.id.clone() }, &c.token)).await?;
    let gone = c.drills.get_restore_drill(authed(pb::GetRestoreDrillRequest { id: d.id.clone() }, &c.token)).await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
