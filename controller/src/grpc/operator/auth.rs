//! AuthService: setup, login, logout, me, change password.

use dg_proto::v1::{self as pb, auth_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::{access::Via, grpc::convert};

#[tonic::async_trait]
impl auth_service_server::AuthService for OperatorSvc {
    async fn setup(&self, req: Request<pb::SetupRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.into_inner();
        let s = self.ctx.auth.setup(&r.username, &r.password, &r.bootstrap_token).await?;
        Ok(Response::new(pb::LoginResponse { token: s.token, expires_at: Some(convert::ts(s.expires_at)) }))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let s = self.ctx.auth.login(client, &r.username, &r.password).await?;
        Ok(Response::new(pb::LoginResponse { token: s.token, expires_at: Some(convert::ts(s.expires_at)) }))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let p = self.session_of(&req).await?;
        let res = self.ctx.auth.logout(&p).await;
        self.audited(&p.actor(), "auth.logout", "session", |_| String::new(), res).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn me(&self, req: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let p = self.session_of(&req).await?;
        Ok(Response::new(pb::MeResponse {
            user_id: p.user_id.to_string(),
            expires_at: Some(convert::ts(p.expires_at)),
            roles: p.roles.clone(),
            permissions: p.permissions.iter().map(|x| x.name().to_owned()).collect(),
            via: match &p.via {
                Via::Session { .. } => "session".into(),
                Via::Token { name, .. } => format!("token:{name}"),
            },
            username: p.username,
        }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let p = self.session_of(&req).await?;
        let r = req.into_inner();
        let res = self.ctx.auth.change_password(&p, &r.current_password, &r.new_password).await;
        self.audited_on(&p.actor(), "auth.change_password", "user", p.user_id, res).await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn get_oidc_config(
        &self,
        _req: Request<pb::GetOidcConfigRequest>,
    ) -> Result<Response<pb::OidcConfig>, Status> {
        let i = self.ctx.auth.oidc_client_info().await?;
        let url = |u: &Option<url::Url>| u.as_ref().map(|u| u.to_string()).unwrap_or_default();
        Ok(Response::new(pb::OidcConfig {
            issuer: i.issuer.clone(),
            client_id: i.client_id.clone(),
            authorization_endpoint: url(&i.authorization_endpoint),
            token_endpoint: url(&i.token_endpoint),
            device_authorization_endpoint: url(&i.device_authorization_endpoint),
        }))
    }

    async fn login_oidc(&self, req: Request<pb::LoginOidcRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let s = self.ctx.auth.login_oidc(client, &r.id_token, &r.nonce).await?;
        Ok(Response::new(pb::LoginResponse { token: s.token, expires_at: Some(convert::ts(s.expires_at)) }))
    }
}
