//! DatasourceService, StorageService and BackupJobService.

use dg_proto::v1::{self as pb, backup_job_service_server, datasource_service_server, storage_service_server};
use tonic::{Request, Response, Status};

use super::{
    OperatorSvc,
    scope::{admit_new, admit_relabel, datasource_visible, storage_visible},
};
use crate::access::{Permission, ResourceKind};
use crate::{
    grpc::{
        approval_of, convert, principal,
        validate::{self, TestTarget},
    },
    service::{
        access::Critical,
        catalog::{NewDatasource, NewJob},
    },
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
        let p = principal(&req)?;
        let n = NewDatasource::try_from(req.into_inner())?;
        admit_new(&p, ResourceKind::Datasource, &n.labels)?;
        let res = self.ctx.catalog.create_datasource(n).await;
        let d = self.audited(&p.actor(), "datasource.create", "datasource", |d| d.id.to_string(), res).await?;
        Ok(Response::new(convert::datasource(&d)))
    }

    async fn get_datasource(&self, req: Request<pb::GetDatasourceRequest>) -> Result<Response<pb::Datasource>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::datasource(&self.visible_datasource(&p, id).await?)))
    }

    async fn list_datasources(
        &self,
        req: Request<pb::ListDatasourcesRequest>,
    ) -> Result<Response<pb::ListDatasourcesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let mut list = self.ctx.catalog.list_datasources(page).await?;
        // The token follows the unfiltered page, so paging goes on past a page the scope emptied.
        let next_page_token = page.next_token(list.len());
        list.retain(|d| datasource_visible(&p, d));
        Ok(Response::new(pb::ListDatasourcesResponse {
            next_page_token,
            datasources: list.iter().map(convert::datasource).collect(),
        }))
    }

    async fn update_datasource(
        &self,
        req: Request<pb::UpdateDatasourceRequest>,
    ) -> Result<Response<pb::Datasource>, Status> {
        let p = principal(&req)?;
        let (id, patch) = validate::datasource_patch(req.into_inner())?;
        if !p.scope.is_unlimited() {
            let d = self.visible_datasource(&p, id).await?;
            admit_relabel(&p, ResourceKind::Datasource, id, &d.labels, &patch.labels, patch.replace_labels)?;
        }
        let res = self.ctx.catalog.update_datasource(id, patch).await;
        let d = self.audited_on(&p.actor(), "datasource.update", "datasource", id, res).await?;
        Ok(Response::new(convert::datasource(&d)))
    }

    async fn delete_datasource(
        &self,
        req: Request<pb::DeleteDatasourceRequest>,
    ) -> Result<Response<pb::DeleteDatasourceResponse>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let d = self.visible_datasource(&p, id).await?;
        let c = Critical {
            action: "datasource.delete",
            target_kind: "datasource",
            target_id: id.to_string(),
            summary: format!("delete datasource {} ({id}){}", d.name, if r.force { " with its jobs" } else { "" }),
            parameters: serde_json::json!({"datasource_id": id, "force": r.force}),
        };
        self.gated(&p, approval, c).await?;
        let res = self.ctx.catalog.delete_datasource(id, r.force).await;
        let (jobs, executions) = self.audited_on(&p.actor(), "datasource.delete", "datasource", id, res).await?;
        Ok(Response::new(pb::DeleteDatasourceResponse { deleted_jobs: jobs, deleted_executions: executions }))
    }

    async fn test_datasource(
        &self,
        req: Request<pb::TestDatasourceRequest>,
    ) -> Result<Response<pb::TestResult>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_datasource(&p, id).await?;
        let o = self.ctx.catalog.test_datasource(id).await?;
        Ok(Response::new(convert::test_result(&o)))
    }
}

#[tonic::async_trait]
impl storage_service_server::StorageService for OperatorSvc {
    async fn create_storage(&self, req: Request<pb::CreateStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let p = principal(&req)?;
        let (name, spec, labels) = validate::new_storage(req.into_inner())?;
        admit_new(&p, ResourceKind::Storage, &labels)?;
        let res = self.ctx.catalog.create_storage(name, spec, labels).await;
        let s = self.audited(&p.actor(), "storage.create", "storage", |s| s.id.to_string(), res).await?;
        Ok(Response::new(convert::storage(&s)))
    }

    async fn get_storage(&self, req: Request<pb::GetStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::storage(&self.visible_storage(&p, id).await?)))
    }

    async fn list_storages(
        &self,
        req: Request<pb::ListStoragesRequest>,
    ) -> Result<Response<pb::ListStoragesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let mut list = self.ctx.catalog.list_storages(page).await?;
        let next_page_token = page.next_token(list.len());
        list.retain(|s| storage_visible(&p, s));
        Ok(Response::new(pb::ListStoragesResponse {
            next_page_token,
            storages: list.iter().map(convert::storage).collect(),
        }))
    }

    async fn update_storage(&self, req: Request<pb::UpdateStorageRequest>) -> Result<Response<pb::Storage>, Status> {
        let p = principal(&req)?;
        let patch = validate::storage_patch(req.into_inner())?;
        let id = patch.id;
        if !p.scope.is_unlimited() {
            let s = self.visible_storage(&p, id).await?;
            admit_relabel(&p, ResourceKind::Storage, id, &s.labels, &patch.labels, patch.replace_labels)?;
        }
        let res = self.ctx.catalog.update_storage(patch).await;
        let s = self.audited_on(&p.actor(), "storage.update", "storage", id, res).await?;
        Ok(Response::new(convert::storage(&s)))
    }

    async fn delete_storage(
        &self,
        req: Request<pb::DeleteStorageRequest>,
    ) -> Result<Response<pb::DeleteStorageResponse>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let s = self.visible_storage(&p, id).await?;
        let c = Critical {
            action: "storage.delete",
            target_kind: "storage",
            target_id: id.to_string(),
            summary: format!(
                "delete storage {} ({id}){}",
                s.name,
                if r.force { ", dropping it from jobs" } else { "" }
            ),
            parameters: serde_json::json!({"storage_id": id, "force": r.force}),
        };
        self.gated(&p, approval, c).await?;
        let res = self.ctx.catalog.delete_storage(id, r.force).await;
        let updated_jobs = self.audited_on(&p.actor(), "storage.delete", "storage", id, res).await?;
        Ok(Response::new(pb::DeleteStorageResponse { updated_jobs }))
    }

    async fn test_storage(&self, req: Request<pb::TestStorageRequest>) -> Result<Response<pb::TestResult>, Status> {
        let p = principal(&req)?;
        let o = match validate::test_target(req.into_inner())? {
            TestTarget::Saved(id) => {
                self.check_storage(&p, id).await?;
                self.ctx.catalog.test_storage(id).await?
            }
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
        let p = principal(&req)?;
        let n = NewJob::try_from(req.into_inner())?;
        self.check_datasource(&p, n.datasource_id).await?;
        self.check_storages(&p, &n.storage_ids).await?;
        admit_new(&p, ResourceKind::Job, &n.labels)?;
        let res = self.ctx.catalog.create_job(n).await;
        let (j, s) =
            self.audited(&p.actor(), "backup_job.create", "backup_job", |(j, _)| j.id.to_string(), res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn get_backup_job(&self, req: Request<pb::GetBackupJobRequest>) -> Result<Response<pb::BackupJob>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        let (j, s) = self.visible_job(&p, id).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn list_backup_jobs(
        &self,
        req: Request<pb::ListBackupJobsRequest>,
    ) -> Result<Response<pb::ListBackupJobsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.catalog.list_jobs(page).await?;
        let next_page_token = page.next_token(list.len());
        let list = self.visible_jobs(&p, list).await?;
        Ok(Response::new(pb::ListBackupJobsResponse {
            next_page_token,
            jobs: list.iter().map(|(j, s)| convert::job(j, s)).collect(),
        }))
    }

    async fn run_now(&self, req: Request<pb::RunNowRequest>) -> Result<Response<pb::Execution>, Status> {
        let p = principal(&req)?;
        let id = validate::id("job_id", &req.into_inner().job_id)?;
        self.check_job(&p, id).await?;
        let res = self.ctx.executions.run_now(id).await;
        let e = self.audited(&p.actor(), "backup_job.run_now", "execution", |e| e.id.to_string(), res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    async fn update_backup_job(
        &self,
        req: Request<pb::UpdateBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let p = principal(&req)?;
        let (id, patch) = validate::job_patch(req.into_inner())?;
        if !p.scope.is_unlimited() {
            let (j, _) = self.visible_job(&p, id).await?;
            self.check_storages(&p, patch.storage_ids.as_deref().unwrap_or_default()).await?;
            admit_relabel(&p, ResourceKind::Job, id, &j.labels, &patch.labels, patch.replace_labels)?;
        }
        let res = self.ctx.catalog.update_job(id, patch).await;
        let (j, s) = self.audited_on(&p.actor(), "backup_job.update", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn delete_backup_job(
        &self,
        req: Request<pb::DeleteBackupJobRequest>,
    ) -> Result<Response<pb::DeleteBackupJobResponse>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let id = validate::id("id", &req.into_inner().id)?;
        let (j, _) = self.visible_job(&p, id).await?;
        let c = Critical {
            action: "backup_job.delete",
            target_kind: "backup_job",
            target_id: id.to_string(),
            summary: format!("delete backup job {} ({id})", j.name),
            parameters: serde_json::json!({"job_id": id}),
        };
        self.gated(&p, approval, c).await?;
        let res = self.ctx.catalog.delete_job(id).await;
        let cancelled_executions = self.audited_on(&p.actor(), "backup_job.delete", "backup_job", id, res).await?;
        Ok(Response::new(pb::DeleteBackupJobResponse { cancelled_executions }))
    }

    async fn enable_backup_job(
        &self,
        req: Request<pb::EnableBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_job(&p, id).await?;
        let res = self.ctx.catalog.set_job_enabled(id, true).await;
        let (j, s) = self.audited_on(&p.actor(), "backup_job.enable", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn disable_backup_job(
        &self,
        req: Request<pb::DisableBackupJobRequest>,
    ) -> Result<Response<pb::BackupJob>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let id = validate::id("id", &req.into_inner().id)?;
        let (j, _) = self.visible_job(&p, id).await?;
        let c = Critical {
            action: "backup_job.disable",
            target_kind: "backup_job",
            target_id: id.to_string(),
            summary: format!("disable backup job {} ({id})", j.name),
            parameters: serde_json::json!({"job_id": id}),
        };
        self.gated(&p, approval, c).await?;
        let res = self.ctx.catalog.set_job_enabled(id, false).await;
        let (j, s) = self.audited_on(&p.actor(), "backup_job.disable", "backup_job", id, res).await?;
        Ok(Response::new(convert::job(&j, &s)))
    }

    async fn preview_retention(
        &self,
        req: Request<pb::PreviewRetentionRequest>,
    ) -> Result<Response<pb::PreviewRetentionResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = validate::id("job_id", &r.job_id)?;
        let policy = validate::preview_policy(r.policy)?;
        self.check_job(&p, id).await?;
        let preview = self.ctx.retention.preview(id, policy).await?;
        Ok(Response::new(convert::retention_preview(&preview)))
    }
}
