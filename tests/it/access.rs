//! Users, roles and API tokens through the public API: each system role against every operator RPC of the
//! descriptor set (a raw call with an empty message: a denied one is answered PERMISSION_DENIED before any
//! handler runs, an allowed one reaches its handler); users' lifecycle (disable ends sessions and tokens,
//! the last admin stays); passwords (own change, admin reset); tokens narrower than their creator, expired and
//! revoked tokens refused; custom roles; the audit log naming the real actor.

use std::time::Duration;

use bytes::{Buf, BufMut};
use dg_controller::{
    access::{Permission, SystemRole},
    grpc::operator::{OPEN_SERVICES, permission_of},
};
use dg_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient, auth_service_client::AuthServiceClient,
    role_service_client::RoleServiceClient, token_service_client::TokenServiceClient,
    user_service_client::UserServiceClient,
};
use dg_tests::cluster::{Cluster, authed, create_user, login_as};
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

const PW: &str = dg_tests::cluster::USER_PASSWORD;

/// Passes message bytes through unchanged.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Every operator RPC of the descriptor set: (path, server-streaming).
fn operator_rpcs() -> Vec<(String, bool)> {
    let fds = prost_types::FileDescriptorSet::decode(dg_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut out = Vec::new();
    for f in fds.file.iter().filter(|f| f.package() == "dataguardian.v1") {
        for s in &f.service {
            if OPEN_SERVICES.contains(&s.name()) || s.name() == "AgentSessionService" {
                continue;
            }
            for m in &s.method {
                out.push((format!("/dataguardian.v1.{}/{}", s.name(), m.name()), m.server_streaming()));
            }
        }
    }
    out
}

/// Calls `path` with an empty message and returns the status code (Ok when it answered).
async fn raw_call(ch: &Channel, token: &str, path: &str, streaming: bool) -> Code {
    let mut g = tonic::client::Grpc::new(ch.clone());
    if g.ready().await.is_err() {
        return Code::Unavailable;
    }
    let p: http::uri::PathAndQuery = path.parse().expect("path");
    let req = authed(Vec::<u8>::new(), token);
    if streaming {
        match g.server_streaming(req, p, Raw).await {
            Ok(mut s) => match s.get_mut().message().await {
                Ok(_) => Code::Ok,
                Err(e) => e.code(),
            },
            Err(e) => e.code(),
        }
    } else {
        match g.unary(req, p, Raw).await {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_system_role_reaches_exactly_the_rpcs_its_permissions_name() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let ch = cluster.channel().await?;
    let admin = cluster.login().await?;
    let rpcs = operator_rpcs();
    assert!(rpcs.len() > 80, "the descriptor set lists the operator RPCs ({})", rpcs.len());
    for role in SystemRole::ALL {
        let name = format!("u-{}", role.name());
        create_user(&ch, &admin, &name, &[role.name()]).await?;
        let token = login_as(&ch, &name, PW).await?;
        let held = role.permissions();
        for (path, streaming) in &rpcs {
            let needed = permission_of(path).unwrap_or_else(|| panic!("{path} declares no permission"));
            let code = raw_call(&ch, &token, path, *streaming).await;
            if held.contains(&needed) {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented),
                    "{} may call {path} ({}), got {code:?}",
                    role.name(),
                    needed.name()
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{} must not call {path} ({})", role.name(), needed.name());
            }
        }
    }
    // What the roles mean, independent of the table: a viewer cannot restore or download, an operator can
    // but cannot manage users, only an admin decides approvals.
    let viewer = login_as(&ch, "u-viewer", PW).await?;
    let operator = login_as(&ch, "u-operator", PW).await?;
    for path in ["/dataguardian.v1.BackupService/RestoreBackup", "/dataguardian.v1.BackupService/DownloadBackup"] {
        assert_eq!(raw_call(&ch, &viewer, path, path.ends_with("Download")).await, Code::PermissionDenied);
        assert_ne!(raw_call(&ch, &operator, path, path.ends_with("Download")).await, Code::PermissionDenied);
    }
    for path in ["/dataguardian.v1.UserService/CreateUser", "/dataguardian.v1.ApprovalService/ApproveApproval"] {
        assert_eq!(raw_call(&ch, &operator, path, false).await, Code::PermissionDenied, "{path}");
    }
    assert_ne!(
        raw_call(&ch, &viewer, "/dataguardian.v1.DatasourceService/ListDatasources", false).await,
        Code::PermissionDenied
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_passwords_tokens_and_custom_roles_behave() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let ch = cluster.channel().await?;
    let admin = cluster.login().await?;
    let mut users = UserServiceClient::new(ch.clone());
    let mut roles = RoleServiceClient::new(ch.clone());
    let mut tokens = TokenServiceClient::new(ch.clone());
    let mut auth = AuthServiceClient::new(ch.clone());

    // Bad input changes nothing.
    let bad = users
        .create_user(authed(
            pb::CreateUserRequest {
                username: "bad name".into(),
                password: PW.into(),
                roles: vec!["viewer".into()],
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("username"), "{}", bad.message());
    let bad = create_user(&ch, &admin, "nobody", &["no-such-role"]).await.unwrap_err();
    assert!(bad.to_string().contains("roles"), "{bad}");

    // An operator: Me names it, its roles and permissions.
    create_user(&ch, &admin, "olga", &["operator"]).await?;
    let olga = login_as(&ch, "olga", PW).await?;
    let me = auth.me(authed(pb::MeRequest {}, &olga)).await?.into_inner();
    assert_eq!(
        (me.username.as_str(), me.roles.clone(), me.via.as_str()),
        ("olga", vec!["operator".to_owned()], "session")
    );
    assert!(
        me.permissions.contains(&"backup.restore".to_owned()) && !me.permissions.contains(&"user.write".to_owned())
    );

    // Tokens: never wider than the creator.
    let wide = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "wide".into(), role: "admin".into(), ..Default::default() },
            &olga,
        ))
        .await
        .unwrap_err();
    assert_eq!(wide.code(), Code::PermissionDenied, "{}", wide.message());
    let t = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "ci".into(), role: "viewer".into(), ..Default::default() },
            &olga,
        ))
        .await?
        .into_inner();
    assert!(t.secret.starts_with("dgt_"));
    let ci = t.secret.clone();
    let me = auth.me(authed(pb::MeRequest {}, &ci)).await?.into_inner();
    assert_eq!((me.via.as_str(), me.roles.clone()), ("token:ci", vec!["viewer".to_owned()]));
    assert_eq!(raw_call(&ch, &ci, "/dataguardian.v1.BackupJobService/RunNow", false).await, Code::PermissionDenied);
    assert_ne!(
        raw_call(&ch, &ci, "/dataguardian.v1.BackupJobService/ListBackupJobs", false).await,
        Code::PermissionDenied
    );
    let listed = tokens.list_tokens(authed(pb::ListTokensRequest::default(), &olga)).await?.into_inner().tokens;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some(), "use is recorded");
    // A token cannot mint tokens.
    let minted = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "x".into(), role: "viewer".into(), ..Default::default() },
            &ci,
        ))
        .await
        .unwrap_err();
    assert_eq!(minted.code(), Code::PermissionDenied);
    // Revoked: refused at once.
    tokens.revoke_token(authed(pb::RevokeTokenRequest { id: t.token.clone().unwrap_or_default().id }, &olga)).await?;
    let e = auth.me(authed(pb::MeRequest {}, &ci)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Expired: refused.
    let short = tokens
        .create_token(authed(
            pb::CreateTokenRequest {
                name: "short".into(),
                role: "viewer".into(),
                ttl_seconds: 1,
                ..Default::default()
            },
            &olga,
        ))
        .await?
        .into_inner()
        .secret;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(auth.me(authed(pb::MeRequest {}, &short)).await.unwrap_err().code(), Code::Unauthenticated);

    // A token acts for its user: the audit log names both.
    let live = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "ops".into(), role: "operator".into(), ..Default::default() },
            &olga,
        ))
        .await?
        .into_inner()
        .secret;
    let dup = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "ops".into(), role: "viewer".into(), ..Default::default() },
            &olga,
        ))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let mut audit = AuditServiceClient::new(ch.clone());
    let ev = audit
        .list_audit_events(authed(
            pb::ListAuditEventsRequest { action: "token.revoke".into(), ..Default::default() },
            &admin,
        ))
        .await?
        .into_inner()
        .events;
    assert_eq!(ev[0].actor, "olga");
    let _ = dg_proto::v1::execution_service_client::ExecutionServiceClient::new(ch.clone())
        .cancel_execution(authed(pb::CancelExecutionRequest { id: uuid::Uuid::now_v7().to_string() }, &live))
        .await;

    // Passwords: the current one is required; a change ends the user's other sessions but not this one.
    let other = login_as(&ch, "olga", PW).await?;
    let wrong = auth
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: "wrong-password-xx".into(),
                new_password: "another-long-password".into(),
            },
            &olga,
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    auth.change_password(authed(
        pb::ChangePasswordRequest { current_password: PW.into(), new_password: "another-long-password".into() },
        &olga,
    ))
    .await?;
    assert!(auth.me(authed(pb::MeRequest {}, &olga)).await.is_ok());
    assert_eq!(auth.me(authed(pb::MeRequest {}, &other)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(login_as(&ch, "olga", PW).await.unwrap_err().code(), Code::Unauthenticated);
    // An admin resets it; every session of olga ends.
    users
        .reset_password(authed(
            pb::ResetPasswordRequest { id: "olga".into(), new_password: "reset-by-the-admin".into() },
            &admin,
        ))
        .await?;
    assert_eq!(auth.me(authed(pb::MeRequest {}, &olga)).await.unwrap_err().code(), Code::Unauthenticated);
    login_as(&ch, "olga", "reset-by-the-admin").await?;

    // Disabling ends sessions and stops tokens; enabling lets the user log in again (tokens work again).
    create_user(&ch, &admin, "dora", &["operator"]).await?;
    let dora = login_as(&ch, "dora", PW).await?;
    let dora_token = tokens
        .create_token(authed(
            pb::CreateTokenRequest { name: "t".into(), role: "viewer".into(), ..Default::default() },
            &dora,
        ))
        .await?
        .into_inner()
        .secret;
    users
        .update_user(authed(
            pb::UpdateUserRequest { id: "dora".into(), disabled: Some(true), ..Default::default() },
            &admin,
        ))
        .await?;
    assert_eq!(auth.me(authed(pb::MeRequest {}, &dora)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(auth.me(authed(pb::MeRequest {}, &dora_token)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(login_as(&ch, "dora", PW).await.unwrap_err().code(), Code::Unauthenticated);
    users
        .update_user(authed(
            pb::UpdateUserRequest { id: "dora".into(), disabled: Some(false), ..Default::default() },
            &admin,
        ))
        .await?;
    login_as(&ch, "dora", PW).await?;
    assert!(auth.me(authed(pb::MeRequest {}, &dora_token)).await.is_ok());
    let listed = users.get_user(authed(pb::GetUserRequest { id: "dora".into() }, &admin)).await?.into_inner();
    assert!(listed.disabled_at.is_none() && listed.roles == vec!["operator".to_owned()]);

    // The last enabled admin stays; nobody deletes or disables themselves.
    let me_admin = auth.me(authed(pb::MeRequest {}, &admin)).await?.into_inner();
    let e =
        users.delete_user(authed(pb::DeleteUserRequest { id: me_admin.user_id.clone() }, &admin)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    create_user(&ch, &admin, "second-admin", &["admin"]).await?;
    let second = login_as(&ch, "second-admin", PW).await?;
    let e = users
        .update_user(authed(
            pb::UpdateUserRequest { id: "admin".into(), roles: vec!["viewer".into()], ..Default::default() },
            &second,
        ))
        .await;
    assert!(e.is_ok(), "with a second admin, the first may be demoted: {e:?}");
    let e = users
        .update_user(authed(
            pb::UpdateUserRequest { id: "second-admin".into(), roles: vec!["viewer".into()], ..Default::default() },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("no enabled admin"), "{}", e.message());

    // Custom roles: built from permissions, never granting what the caller lacks, not deleted while held.
    let unknown = roles
        .create_role(authed(
            pb::CreateRoleRequest { name: "r".into(), permissions: vec!["backup.fly".into()], ..Default::default() },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    let auditor = roles
        .create_role(authed(
            pb::CreateRoleRequest {
                name: "auditor".into(),
                description: "reads the audit log".into(),
                permissions: vec!["audit.read".into(), "backup.read".into()],
            },
            &second,
        ))
        .await?
        .into_inner();
    assert_eq!(auditor.permissions, vec!["audit.read", "backup.read"]);
    create_user(&ch, &second, "aud", &["auditor"]).await?;
    let aud = login_as(&ch, "aud", PW).await?;
    assert_ne!(
        raw_call(&ch, &aud, "/dataguardian.v1.AuditService/ListAuditEvents", false).await,
        Code::PermissionDenied
    );
    assert_eq!(
        raw_call(&ch, &aud, "/dataguardian.v1.DatasourceService/ListDatasources", false).await,
        Code::PermissionDenied
    );
    let held = roles.delete_role(authed(pb::DeleteRoleRequest { id: "auditor".into() }, &second)).await.unwrap_err();
    assert_eq!(held.code(), Code::FailedPrecondition);
    let system = roles
        .update_role(authed(
            pb::UpdateRoleRequest { id: "viewer".into(), permissions: vec!["audit.read".into()], ..Default::default() },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(system.code(), Code::FailedPrecondition);
    let perms = roles.list_permissions(authed(pb::ListPermissionsRequest {}, &aud)).await;
    assert_eq!(perms.unwrap_err().code(), Code::PermissionDenied, "role.read is not the auditor's");
    let perms = roles.list_permissions(authed(pb::ListPermissionsRequest {}, &second)).await?.into_inner().permissions;
    assert_eq!(perms.len(), Permission::ALL.len());

    // The audit log names the actor of each mutation, with the token when one was used.
    let ev = audit
        .list_audit_events(authed(
            pb::ListAuditEventsRequest { action: "execution.cancel".into(), ..Default::default() },
            &second,
        ))
        .await?
        .into_inner()
        .events;
    assert_eq!(ev.first().map(|e| e.actor.as_str()), Some("olga (token ops)"), "{ev:?}");
    cluster.stop().await;
    Ok(())
}
