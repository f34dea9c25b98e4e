//! First come is not first admin: `Setup` needs the one-time bootstrap token the controller wrote (0600) at
//! its first start; without it, or with a wrong one, it is refused and creates nothing; with it, it works
//! once.

use std::os::unix::fs::PermissionsExt;

use dg_proto::v1::{self as pb, auth_service_client::AuthServiceClient};
use dg_tests::cluster::{Cluster, ClusterOptions};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_needs_the_bootstrap_token_and_works_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions { no_admin: true, ..Default::default() }).await?;
    let file = cluster.dir.path().join("bootstrap-token");
    let token = std::fs::read_to_string(&file)?.trim().to_owned();
    assert!(token.starts_with("dgb"), "a token was written: {token:?}");
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600, "only the controller's user reads it");
    let mut auth = AuthServiceClient::new(cluster.channel().await?);
    let setup = |t: &str| pb::SetupRequest {
        username: "first".into(),
        password: "a-long-enough-password".into(),
        bootstrap_token: t.into(),
    };
    let missing = auth.setup(setup("")).await.expect_err("no token");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().starts_with("bootstrap_token"), "{}", missing.message());
    let wrong = auth.setup(setup("dgb_not-the-token")).await.expect_err("wrong token");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    // Nothing was created: nobody can log in yet.
    let login = pb::LoginRequest { username: "first".into(), password: "a-long-enough-password".into() };
    assert_eq!(auth.login(login.clone()).await.expect_err("no admin yet").code(), Code::Unauthenticated);
    // With the token: once.
    let ok = auth.setup(setup(&token)).await?.into_inner();
    assert!(!ok.token.is_empty());
    let again = auth.setup(setup(&token)).await.expect_err("used");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(!auth.login(login).await?.into_inner().token.is_empty());
    cluster.stop().await;
    Ok(())
}
