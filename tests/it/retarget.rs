//! Stored secrets cannot be lured out by pointing a datasource elsewhere: an update that changes where the
//! password goes (here, to a fake PostgreSQL server asking for a clear-text password) without the password
//! again is refused, changes nothing, and the fake server never hears from anyone.

use std::time::Duration;

use dg_proto::v1 as pb;
use dg_tests::cluster::{Cluster, authed};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_password_is_never_sent_to_a_new_destination_without_being_given_again() -> anyhow::Result<()> {
    let src = dg_tests::pg::TestDb::create("retarget").await?;
    let (fake, heard) = dg_tests::fake_db::postgres(false, None).await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let t = c.token.clone();
    for req in [
        pb::UpdateDatasourceRequest { id: ds.id.clone(), port: Some(u32::from(fake.port())), ..Default::default() },
        pb::UpdateDatasourceRequest {
            id: ds.id.clone(),
            host: Some("localhost".into()),
            port: Some(u32::from(fake.port())),
            ..Default::default()
        },
        pb::UpdateDatasourceRequest { id: ds.id.clone(), username: Some("someone_else".into()), ..Default::default() },
        pb::UpdateDatasourceRequest {
            id: ds.id.clone(),
            tls_mode: Some(pb::TlsMode::Require as i32),
            ..Default::default()
        },
    ] {
        let e = c.datasources.update_datasource(authed(req, &t)).await.expect_err("needs the password again");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("password"), "the field is named: {}", e.message());
    }
    // Nothing changed: the datasource still tests fine against the real server.
    let now = c.datasources.get_datasource(authed(pb::GetDatasourceRequest { id: ds.id.clone() }, &t)).await?;
    assert_eq!((now.get_ref().host.as_str(), now.get_ref().port), (ds.host.as_str(), ds.port));
    let ok = c.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?;
    assert!(ok.get_ref().ok, "{:?}", ok.get_ref());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(heard.connections(), 0, "nobody connected to the fake server");
    // Given again, the move is allowed: the operator typed the password meant for that destination.
    let with_password = pb::UpdateDatasourceRequest {
        id: ds.id.clone(),
        port: Some(u32::from(fake.port())),
        password: Some("a-password-for-the-new-server".into()),
        ..Default::default()
    };
    assert_eq!(
        c.datasources.update_datasource(authed(with_password, &t)).await?.into_inner().port,
        u32::from(fake.port())
    );
    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
