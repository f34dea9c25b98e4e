//! Stored secrets cannot be lured out by pointing a datasource elsewhere: an update that changes where the
//! password goes (here, to a fake PostgreSQL server asking for a clear-text password) without the password
//! again is refused, changes nothing, and the fake server never hears from anyone.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dg_proto::v1 as pb;
use dg_tests::cluster::{Cluster, authed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A server speaking just enough of the PostgreSQL protocol to ask for a clear-text password: refuses TLS,
/// reads the startup message, sends AuthenticationCleartextPassword. Counts connections and passwords.
async fn fake_postgres() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (conns, passwords) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, p) = (conns.clone(), passwords.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let p = p.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                loop {
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                    if code == 80_877_103 {
                        // SSLRequest: no TLS here.
                        let _ = s.write_all(b"N").await;
                        continue;
                    }
                    let mut rest = vec![0u8; len.saturating_sub(8)];
                    let _ = s.read_exact(&mut rest).await;
                    break;
                }
                let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                let mut t = [0u8; 1];
                if s.read_exact(&mut t).await.is_ok() && t[0] == b'p' {
                    p.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((addr, conns, passwords))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_password_is_never_sent_to_a_new_destination_without_being_given_again() -> anyhow::Result<()> {
    let src = dg_tests::pg::TestDb::create("retarget").await?;
    let (fake, conns, passwords) = fake_postgres().await?;
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
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nobody connected to the fake server");
    assert_eq!(passwords.load(Ordering::SeqCst), 0);
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
