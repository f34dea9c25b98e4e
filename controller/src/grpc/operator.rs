//! Operator services. Every handler: validate/convert the request, call the domain service, convert back;
//! mutations are audited with their outcome.

use std::time::Duration;

use dg_common::error::FieldError;
use dg_proto::v1::{
    self as pb, agent_service_server, auth_service_server, backup_job_service_server,
    backup_service_server, datasource_service_server, execution_service_server,
    storage_service_server,
};
use tonic::{Request, Response, Status};

use super::{Ctx, actor, auth_layer::bearer, convert};
use crate::{
    db::ExecutionFilter,
    error::ControllerResult,
    service::catalog::{NewDatasource, NewJob},
};

/// Implements every operator service.
#[derive(Clone, Debug)]
pub struct OperatorSvc {
    ctx: Ctx,
}

impl OperatorSvc {
    /// New handler set.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    /// Records a mutation's outcome in the audit log and passes the result through.
    async fn audited<T>(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        target: impl Fn(&T) -> String,
        r: ControllerResult<T>,
    ) -> Result<T, Status> {
        let (target_id, outcome) = match &r {
            Ok(v) => (Some(target(v)), "ok".to_owned()),
            Err(e) => (
                None,
                format!("error: {:?}", dg_common::error::ServiceError::error_code(e)),
            ),
        };
        if let Err(e) = self
            .ctx
            .db
            .audit(actor, action, kind, target_id, &outcome)
            .await
        {
            tracing::warn!(error = %e, action, "audit write failed");
        }
        r.map_err(Status::from)
    }

    async fn session_of<T>(&self, req: &Request<T>) -> Result<crate::model::Session, Status> {
        let token = bearer(req.metadata().as_ref()).ok_or_else(|| {
            Status::unauthenticated("missing metadata authorization: Bearer <token>")
        })?;
        Ok(self.ctx.auth.authenticate(token).await?)
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for OperatorSvc {
    async fn setup(
        &self,
        req: Request<pb::SetupRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.into_inner();
        let s = self.ctx.auth.setup(&r.username, &r.password).await?;
        Ok(Response::new(pb::LoginResponse {
            token: s.token,
            expires_at: Some(convert::ts(s.expires_at)),
        }))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.into_inner();
        let s = self.ctx.auth.login(&r.username, &r.password).await?;
        Ok(Response::new(pb::LoginResponse {
            token: s.token,
            expires_at: Some(convert::ts(s.expires_at)),
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let session = self.session_of(&req).await?;
        self.ctx.auth.logout(&session).await?;
        let _ = self
            .ctx
            .db
            .audit(
                &session.username,
                "auth.logout",
                "session",
                Some(session.id.to_string()),
                "ok",
            )
            .await;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn me(&self, req: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let s = self.session_of(&req).await?;
        Ok(Response::new(pb::MeResponse {
            username: s.username,
            expires_at: Some(convert::ts(s.expires_at)),
        }))
    }
}

#[tonic::async_trait]
impl agent_service_server::AgentService for OperatorSvc {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let ttl = match r.ttl {
            None => Duration::from_secs(3600),
            Some(d) if d.seconds > 0 && d.seconds <= 7 * 24 * 3600 && d.nanos >= 0 => {
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(3600))
            }
            Some(_) => {
                return Err(FieldError::new("ttl", "must be between 1 second and 7 days").into());
            }
        };
        if r.description.len() > 256 {
            return Err(FieldError::new("description", "must be at most 256 characters").into());
        }
        let res = self.ctx.agents.create_join_token(ttl, &r.description).await;
        let t = self
            .audited(
                &who,
                "agent.create_join_token",
                "join_token",
                |_| String::new(),
                res,
            )
            .await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: t.token,
            expires_at: Some(convert::ts(t.expires_at)),
            ca_fingerprint: t.ca_fingerprint,
            enroll_command: t.enroll_command,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let agents = self.ctx.agents.list(page).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            next_page_token: page.next_token(agents.len()),
            agents: agents.iter().map(convert::agent).collect(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::agent(
            &self.ctx.agents.get(id).await?,
        )))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let who = actor(&req);
        let id = convert::id("id", &req.into_inner().id)?;
        let res = self.ctx.agents.revoke(id).await;
        let a = self
            .audited(&who, "agent.revoke", "agent", |a| a.id.to_string(), res)
            .await?;
        Ok(Response::new(convert::agent(&a)))
    }
}

#[tonic::async_trait]
impl datasource_service_server::DatasourceService for OperatorSvc {
    async fn create_datasource(
        &self,
        req: Request<pb::CreateDatasourceRequest>,
    ) -> Result<Response<pb::Datasource>, Status> {
        let who = actor(&req);
        let n = NewDatasource::try_from(req.into_inner())?;
        let res = self.ctx.catalog.create_datasource(n).await;
        let d = self
            .audited(
                &who,
                "datasource.create",
                "datasource",
                |d| d.id.to_string(),
                res,
            )
            .await?;
        Ok(Response::new(convert::datasource(&d)))
    }

    async fn get_datasource(
        &self,
        req: Request<pb::GetDatasourceRequest>,
    ) -> Result<Response<pb::Datasource>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::datasource(
            &self.ctx.catalog.datasource(id).await?,
        )))
    }

    async fn list_datasources(
        &self,
        req: Request<pb::ListDatasourcesRequest>,
    ) -> Result<Response<pb::ListDatasourcesResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_datasources(page).await?;
        Ok(Response::new(pb::ListDatasourcesResponse {
            next_page_token: page.next_token(list.len()),
            datasources: list.iter().map(convert::datasource).collect(),
        }))
    }
}

#[tonic::async_trait]
impl storage_service_server::StorageService for OperatorSvc {
    async fn create_storage(
        &self,
        req: Request<pb::CreateStorageRequest>,
    ) -> Result<Response<pb::Storage>, Status> {
        let who = actor(&req);
        let (name, cfg) = convert::new_storage(req.into_inner())?;
        let res = self.ctx.catalog.create_storage(name, cfg).await;
        let s = self
            .audited(&who, "storage.create", "storage", |s| s.id.to_string(), res)
            .await?;
        Ok(Response::new(convert::storage(&s)))
    }

    async fn get_storage(
        &self,
        req: Request<pb::GetStorageRequest>,
    ) -> Result<Response<pb::Storage>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::storage(
            &self.ctx.catalog.storage(id).await?,
        )))
    }

    async fn list_storages(
        &self,
        req: Request<pb::ListStoragesRequest>,
    ) -> Result<Response<pb::ListStoragesResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_storages(page).await?;
        Ok(Response::new(pb::ListStoragesResponse {
            next_page_token: page.next_token(list.len()),
            storages: list.iter().map(convert::storage).collect(),
        }))
    }
}

#[tonic::async_trait]
impl backup_job_service_server::BackupJobService for OperatorSvc {
    async fn create_backup_job(
        &self,
        req: Request<pb::CreateBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let who = actor(&req);
        let n = NewJob::try_from(req.into_inner())?;
        let res = self.ctx.catalog.create_job(n).await;
        let (j, s) = self
            .audited(
                &who,
                "backup_job.create",
                "backup_job",
                |(j, _)| j.id.to_string(),
                res,
            )
            .await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn get_backup_job(
        &self,
        req: Request<pb::GetBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        let (j, s) = self.ctx.catalog.job(id).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn list_backup_jobs(
        &self,
        req: Request<pb::ListBackupJobsRequest>,
    ) -> Result<Response<pb::ListBackupJobsResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_jobs(page).await?;
        Ok(Response::new(pb::ListBackupJobsResponse {
            next_page_token: page.next_token(list.len()),
            jobs: list.iter().map(|(j, s)| convert::job(j, s)).collect(),
        }))
    }

    async fn run_now(
        &self,
        req: Request<pb::RunNowRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let who = actor(&req);
        let id = convert::id("job_id", &req.into_inner().job_id)?;
        let res = self.ctx.executions.run_now(id).await;
        let e = self
            .audited(
                &who,
                "backup_job.run_now",
                "execution",
                |e| e.id.to_string(),
                res,
            )
            .await?;
        Ok(Response::new(convert::execution(&e)))
    }
}

#[tonic::async_trait]
impl execution_service_server::ExecutionService for OperatorSvc {
    async fn get_execution(
        &self,
        req: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::execution(
            &self.ctx.executions.get(id).await?,
        )))
    }

    async fn list_executions(
        &self,
        req: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let filter = ExecutionFilter {
            job_id: convert::opt_id("job_id", &r.job_id)?,
            datasource_id: convert::opt_id("datasource_id", &r.datasource_id)?,
            status: convert::status_filter(r.status)?,
            operation: convert::operation_filter(r.operation)?,
        };
        let list = self.ctx.executions.list(&filter, page).await?;
        Ok(Response::new(pb::ListExecutionsResponse {
            next_page_token: page.next_token(list.len()),
            executions: list.iter().map(convert::execution).collect(),
        }))
    }

    async fn list_execution_logs(
        &self,
        req: Request<pb::ListExecutionLogsRequest>,
    ) -> Result<Response<pb::ListExecutionLogsResponse>, Status> {
        let r = req.into_inner();
        let id = convert::id("execution_id", &r.execution_id)?;
        let limit = match r.page_size {
            0 => 200,
            n if n < 0 => return Err(FieldError::new("page_size", "must not be negative").into()),
            n => i64::from(n).min(1000),
        };
        let after = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .strip_prefix('l')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| {
                    FieldError::new("page_token", "is not a token returned by this API")
                })?
        };
        let lines = self.ctx.executions.logs(id, after, limit).await?;
        let next_page_token = match lines.last() {
            Some(l) if lines.len() as i64 == limit => format!("l{}", l.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListExecutionLogsResponse {
            lines: lines
                .iter()
                .map(|l| pb::ExecutionLogLine {
                    at: Some(convert::ts(l.at)),
                    level: l.level.clone(),
                    message: l.message.clone(),
                })
                .collect(),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl backup_service_server::BackupService for OperatorSvc {
    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let r = req.into_inner();
        let page = convert::page(r.page_size, &r.page_token, 50, 500)?;
        let ds = convert::opt_id("datasource_id", &r.datasource_id)?;
        let list = self.ctx.executions.list_backups(ds, page).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            next_page_token: page.next_token(list.len()),
            backups: list
                .iter()
                .map(|(e, s)| convert::backup(e, s, &[]))
                .collect(),
        }))
    }

    async fn get_backup(
        &self,
        req: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::Backup>, Status> {
        let id = convert::id("id", &req.into_inner().id)?;
        let b = self.ctx.executions.backup(id).await?;
        Ok(Response::new(convert::backup(
            &b.execution,
            &b.storage_ids,
            &b.chunks,
        )))
    }

    async fn restore_backup(
        &self,
        req: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let who = actor(&req);
        let r = crate::service::executions::RestoreRequest::try_from(req.into_inner())?;
        let res = self.ctx.executions.restore(r).await;
        let e = self
            .audited(
                &who,
                "backup.restore",
                "execution",
                |e| e.id.to_string(),
                res,
            )
            .await?;
        Ok(Response::new(convert::execution(&e)))
    }
}
