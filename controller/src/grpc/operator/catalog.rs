//! DatasourceService, StorageService and BackupJobService.

use dg_proto::v1::{self as pb, backup_job_service_server, datasource_service_server, storage_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    grpc::{
        actor, convert,
        validate::{self, TestTarget},
    },
    service::catalog::{NewDatasource, NewJob},
};

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("DatasourceService", "CreateDatasource", Permission::DatasourceWrite),
    ("DatasourceService", "GetDatasource", Permission::DatasourceRead),
    ("DatasourceService", "ListDatasources", Permission::DatasourceRead),
    ("DatasourceService", "UpdateDatasource", Permission::DatasourceWrite),
    ("DatasourceService", "DeleteDatasource", Permission::DatasourceDelete),
    ("DatasourceService", "TestDatasource", Permission::DatasourceTest),
    ("StorageService", "CreateStorage", Permission::StorageWrite),
    ("StorageService", "GetStorage", Permission::StorageRead),
    ("StorageService", "ListStorages", Permission::StorageRead),
    ("StorageService", "UpdateStorage", Permission::StorageWrite),
    ("StorageService", "DeleteStorage", Permission::StorageDelete),
    ("StorageService", "TestStorage", Permission::StorageTest),
    ("BackupJobService", "CreateBackupJob", Permission::JobWrite),
    ("BackupJobService", "GetBackupJob", Permission::JobRead),
    ("BackupJobService", "ListBackupJobs", Permission::JobRead),
    ("BackupJobService", "RunNow", Permission::JobRun),
    ("BackupJobService", "UpdateBackupJob", Permission::JobWrite),
    ("BackupJobService", "DeleteBackupJob", Permission::JobDelete),
    ("BackupJobService", "EnableBackupJob", Permission::JobToggle),
    ("BackupJobService", "DisableBackupJob", Permission::JobToggle),
    ("BackupJobService", "PreviewRetention", Permission::JobRead),
];

#[tonic::async_trait]
impl datasource_service_server::DatasourceService for OperatorSvc {
    async fn create_datasource(
        &self,
        req: Request<pb::CreateDatasourceRequest>,
    ) -> Result<Response<pb::Datasource>, Status> {
        let who = actor(&req);
        let n = NewDatasource::try_from(req.into_inner())?;
        let res = self.ctx.catalog.create_datasource(n).await;
        let d = self.audited(&who, "datasource.create", "datasource", |d| d.id.to_string(), res).await?;
        Ok(Response::new(convert::datasource(&d)))
    }

    async fn get_datasource(&self, req: Request<pb::GetDatasourceRequest>) -> Result<Response<pb::Datasource>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::datasource(&self.ctx.catalog.datasource(id).await?)))
    }

    async fn list_datasources(
        &self,
        req: Request<pb::ListDatasourcesRequest>,
    ) -> Result<Response<pb::ListDatasourcesResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_datasources(page).await?;
        Ok(Response::new(pb::ListDatasourcesResponse {
            next_page_token: page.next_token(list.len()),
            datasources: list.iter().map(convert::datasource).collect(),
        }))
    }

    async fn update_datasource(
        &self,
        req: Request<pb::UpdateDatasourceRequest>,
    ) -> Result<Response<pb::Datasource>, Status> {
        let who = actor(&req);
        let (id, patch) = validate::datasource_patch(req.into_inner())?;
        let res = self.ctx.catalog.update_datasource(id, patch).await;
        let d = self.audited_on(&who, "datasource.update", "datasource", id, res).await?;
        Ok(Response::new(convert::datasource(&d)))
    }

    async fn delete_datasource(
        &self,
        req: Request<pb::DeleteDatasourceRequest>,
    ) -> Result<Response<pb::DeleteDatasourceResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let res = self.ctx.catalog.delete_datasource(id, r.force).await;
        let (jobs, executions) = self.audited_on(&who, "datasource.delete", "datasource", id, res).await?;
        Ok(Response::new(pb::DeleteDatasourceResponse { deleted_jobs: jobs, deleted_executions: executions }))
    }

    async fn test_datasource(
        &self,
        req: Request<pb::TestDatasourceRequest>,
    ) -> Result<Response<pb::TestResult>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        let o = self.ctx.catalog.test_datasource(id).await?;
        Ok(Response::new(convert::test_result(&o)))
    }
}

#[tonic::async_trait]
impl storage_service_server::StorageService for OperatorSvc {
    async fn create_storage(&self, req: Request<pb::CreateStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let who = actor(&req);
        let (name, spec, labels) = validate::new_storage(req.into_inner())?;
        let res = self.ctx.catalog.create_storage(name, spec, labels).await;
        let s = self.audited(&who, "storage.create", "storage", |s| s.id.to_string(), res).await?;
        Ok(Response::new(convert::storage(&s)))
    }

    async fn get_storage(&self, req: Request<pb::GetStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::storage(&self.ctx.catalog.storage(id).await?)))
    }

    async fn list_storages(
        &self,
        req: Request<pb::ListStoragesRequest>,
    ) -> Result<Response<pb::ListStoragesResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_storages(page).await?;
        Ok(Response::new(pb::ListStoragesResponse {
            next_page_token: page.next_token(list.len()),
            storages: list.iter().map(convert::storage).collect(),
        }))
    }

    async fn update_storage(&self, req: Request<pb::UpdateStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let who = actor(&req);
        let patch = validate::storage_patch(req.into_inner())?;
        let id = patch.id;
        let res = self.ctx.catalog.update_storage(patch).await;
        let s = self.audited_on(&who, "storage.update", "storage", id, res).await?;
        Ok(Response::new(convert::storage(&s)))
    }

    async fn delete_storage(
        &self,
        req: Request<pb::DeleteStorageRequest>,
    ) -> Result<Response<pb::DeleteStorageResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let res = self.ctx.catalog.delete_storage(id, r.force).await;
        let updated_jobs = self.audited_on(&who, "storage.delete", "storage", id, res).await?;
        Ok(Response::new(pb::DeleteStorageResponse { updated_jobs }))
    }

    async fn test_storage(&self, req: Request<pb::TestStorageRequest>) -> Result<Response<pb::TestResult>, Status> {
        let o = match validate::test_target(req.into_inner())? {
            TestTarget::Saved(id) => self.ctx.catalog.test_storage(id).await?,
            TestTarget::Unsaved(spec) => self.ctx.catalog.test_spec(spec).await?,
        };
        Ok(Response::new(convert::test_result(&o)))
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
        let (j, s) = self.audited(&who, "backup_job.create", "backup_job", |(j, _)| j.id.to_string(), res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn get_backup_job(&self, req: Request<pb::GetBackupJobRequest>) -> Result<Response<pb::BackupJob>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        let (j, s) = self.ctx.catalog.job(id).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn list_backup_jobs(
        &self,
        req: Request<pb::ListBackupJobsRequest>,
    ) -> Result<Response<pb::ListBackupJobsResponse>, Status> {
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_jobs(page).await?;
        Ok(Response::new(pb::ListBackupJobsResponse {
            next_page_token: page.next_token(list.len()),
            jobs: list.iter().map(|(j, s)| convert::job(j, s)).collect(),
        }))
    }

    async fn run_now(&self, req: Request<pb::RunNowRequest>) -> Result<Response<pb::Execution>, Status> {
        let who = actor(&req);
        let id = validate::id("job_id", &req.into_inner().job_id)?;
        let res = self.ctx.executions.run_now(id).await;
        let e = self.audited(&who, "backup_job.run_now", "execution", |e| e.id.to_string(), res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    async fn update_backup_job(
        &self,
        req: Request<pb::UpdateBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let who = actor(&req);
        let (id, patch) = validate::job_patch(req.into_inner())?;
        let res = self.ctx.catalog.update_job(id, patch).await;
        let (j, s) = self.audited_on(&who, "backup_job.update", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn delete_backup_job(
        &self,
        req: Request<pb::DeleteBackupJobRequest>,
    ) -> Result<Response<pb::DeleteBackupJobResponse>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.catalog.delete_job(id).await;
        let cancelled_executions = self.audited_on(&who, "backup_job.delete", "backup_job", id, res).await?;
        Ok(Response::new(pb::DeleteBackupJobResponse { cancelled_executions }))
    }

    async fn enable_backup_job(
        &self,
        req: Request<pb::EnableBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.catalog.set_job_enabled(id, true).await;
        let (j, s) = self.audited_on(&who, "backup_job.enable", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn disable_backup_job(
        &self,
        req: Request<pb::DisableBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.catalog.set_job_enabled(id, false).await;
        let (j, s) = self.audited_on(&who, "backup_job.disable", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn preview_retention(
        &self,
        req: Request<pb::PreviewRetentionRequest>,
    ) -> Result<Response<pb::PreviewRetentionResponse>, Status> {
        let r = req.into_inner();
        let id = validate::id("job_id", &r.job_id)?;
        let policy = validate::preview_policy(r.policy)?;
        let preview = self.ctx.retention.preview(id, policy).await?;
        Ok(Response::new(convert::retention_preview(&preview)))
    }
}
