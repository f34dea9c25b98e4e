//! The agent sends no password in clear text to a database server that TLS does not verify: fake PostgreSQL
//! and MariaDB servers ask for it (in the first packet, after a switch, with TLS that verifies nothing, and
//! only of the dump tools after answering the connection test honestly through the real server); the test
//! and the backup fail with an error saying why, and no fake server ever receives the password.

use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Cluster, authed},
    fake_db::{self, Heard, MysqlAsk},
};

/// A datasource on `addr` with `password`.
fn datasource(
    engine: pb::Engine,
    port: u16,
    database: &str,
    user: &str,
    password: &str,
    tls: pb::TlsMode,
) -> pb::CreateDatasourceRequest {
    pb::CreateDatasourceRequest {
        name: format!("cleartext-{}", dg_tests::suffix()),
        engine: engine as i32,
        host: "127.0.0.1".into(),
        port: u32::from(port),
        database: database.into(),
        username: user.into(),
        password: password.into(),
        tls_mode: tls as i32,
        ..Default::default()
    }
}

fn assert_refused(error: &str, heard: &Heard, password: &str, what: &str) {
    assert!(error.contains("refused to send the password") && error.contains("clear"), "{what}: {error}");
    assert!(!error.contains(password), "{what}: the error holds no password");
    assert!(heard.connections() >= 1, "{what}: the agent did reach the fake server");
    assert!(!heard.received(password), "{what}: the fake server received the password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_a_server_that_asks_for_it_in_clear_text_without_verified_tls() -> anyhow::Result<()> {
    let src = dg_tests::pg::TestDb::create("cleartext").await?;
    let my = dg_tests::mariadb_server();
    let my_db = format!("dgt_cleartext_{}", dg_tests::suffix());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{my_db}`; CREATE TABLE `{my_db}`.t (a int)")))
        .execute(&mut <sqlx::MySqlConnection as sqlx::Connection>::connect(&dg_tests::mariadb_url()).await?)
        .await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let storage = c.local_storage(&agent.id, &cluster.dir.path().join("backups")).await?;
    let t = c.token.clone();
    let secret = format!("pw-{}", dg_tests::suffix());

    // Connection tests (the driver): PostgreSQL without TLS and with TLS that verifies nothing, MariaDB asking
    // in its first packet and after a switch.
    let pg_cases = [(false, pb::TlsMode::Disable), (false, pb::TlsMode::Prefer), (true, pb::TlsMode::Require)];
    for (tls, mode) in pg_cases {
        let (addr, heard) = fake_db::postgres(tls, None).await?;
        let mut req = datasource(pb::Engine::Postgres, addr.port(), "app", "app", &secret, mode);
        req.agent_id = agent.id.clone();
        let ds = c.datasources.create_datasource(authed(req, &t)).await?.into_inner();
        let r = c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id }, &t)).await?.into_inner();
        assert!(!r.ok);
        assert_refused(&r.error, &heard, &secret, &format!("PostgreSQL test, {mode:?}"));
    }
    for ask in [MysqlAsk::Handshake, MysqlAsk::Switch] {
        let (addr, heard) = fake_db::mysql(ask, None).await?;
        let mut req = datasource(pb::Engine::Mariadb, addr.port(), "app", "app", &secret, pb::TlsMode::Disable);
        req.agent_id = agent.id.clone();
        let ds = c.datasources.create_datasource(authed(req, &t)).await?.into_inner();
        let r = c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id }, &t)).await?.into_inner();
        assert!(!r.ok);
        let what = format!("MariaDB test, {ask:?}");
        assert!(!heard.received(&secret), "{what}: the fake server received the password");
        assert!(heard.connections() >= 1, "{what}: the agent did reach the fake server");
        assert!(r.error.contains("clear") || r.error.contains("mysql_clear_password"), "{what}: {}", r.error);
    }

    // The dump tools: the server answers the connection test through the real server and then asks the
    // tool. The backup fails, saying why; the tool's connection reached the fake and left no password.
    let pg = dg_tests::pg_server();
    let real_pg = format!("{}:{}", pg.host, pg.port).parse()?;
    let (addr, heard) = fake_db::postgres(false, Some(real_pg)).await?;
    let mut req =
        datasource(pb::Engine::Postgres, addr.port(), &src.name, &pg.user, &pg.password, pb::TlsMode::Disable);
    req.agent_id = agent.id.clone();
    let ds = c.datasources.create_datasource(authed(req, &t)).await?.into_inner();
    let job = c.job(&ds.id, &[&storage], pb::StorageStrategy::Fallback, "").await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status(), pb::ExecutionStatus::Failed, "{ex:?}");
    assert!(heard.received("dataguardian-agent"), "pg_dump's startup message reached the fake server");
    assert_refused(&ex.error, &heard, &pg.password, "pg_dump");

    let real_my = format!("{}:{}", my.host, my.port).parse()?;
    for ask in [MysqlAsk::Handshake, MysqlAsk::Switch] {
        let (addr, heard) = fake_db::mysql(ask, Some(real_my)).await?;
        let mut req =
            datasource(pb::Engine::Mariadb, addr.port(), &my_db, &my.user, &my.password, pb::TlsMode::Disable);
        req.agent_id = agent.id.clone();
        let ds = c.datasources.create_datasource(authed(req, &t)).await?.into_inner();
        let job = c.job(&ds.id, &[&storage], pb::StorageStrategy::Fallback, "").await?;
        let ex = c.run_job(&job.id).await?;
        let what = format!("mariadb-dump, {ask:?}");
        assert_eq!(ex.status(), pb::ExecutionStatus::Failed, "{what}: {ex:?}");
        assert!(heard.connections() >= 2, "{what}: the dump tool reached the fake server");
        assert!(!heard.received(&my.password), "{what}: the fake server received the password");
        if let MysqlAsk::Switch = ask {
            // Named only in the first packet, the plugin is not even tried: the client answers with its
            // default plugin's scramble and waits for a switch the fake never sends.
            assert!(ex.error.contains("mysql_clear_password"), "{what}: {}", ex.error);
            assert!(ex.error.contains("refused to send the password"), "{what}: {}", ex.error);
        }
    }

    // The same servers' real counterparts still work through the guard: a backup of the real databases.
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let job = c.job(&ds.id, &[&storage], pb::StorageStrategy::Fallback, "").await?;
    assert_eq!(c.run_job(&job.id).await?.status(), pb::ExecutionStatus::Completed);
    let ds = c.datasource(pb::Engine::Mariadb, &agent.id, &my_db).await?;
    let job = c.job(&ds.id, &[&storage], pb::StorageStrategy::Fallback, "").await?;
    assert_eq!(c.run_job(&job.id).await?.status(), pb::ExecutionStatus::Completed);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE `{my_db}`")))
        .execute(&mut <sqlx::MySqlConnection as sqlx::Connection>::connect(&dg_tests::mariadb_url()).await?)
        .await?;
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
