//! AuthService: setup, login, logout, me.

use dg_proto::v1::{self as pb, auth_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::grpc::convert;

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
        let session = self.session_of(&req).await?;
        let res = self.ctx.auth.logout(&session).await;
        self.audited_on(&session.username, "auth.logout", "session", session.id, res).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn me(&self, req: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let s = self.session_of(&req).await?;
        Ok(Response::new(pb::MeResponse { username: s.username, expires_at: Some(convert::ts(s.expires_at)) }))
    }
}
