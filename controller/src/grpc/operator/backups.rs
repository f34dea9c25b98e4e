//! BackupService.

use std::pin::Pin;

use dg_proto::v1::{self as pb, backup_service_server};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    grpc::{approval_of, convert, principal, validate},
    service::{access::Critical, executions::RestoreRequest, import::ImportRequest, scrub},
};

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadBackupResponse, Status>> + Send>>;

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("BackupService", "ListBackups", Permission::BackupRead),
    ("BackupService", "GetBackup", Permission::BackupRead),
    ("BackupService", "RestoreBackup", Permission::BackupRestore),
    ("BackupService", "VerifyBackup", Permission::BackupVerify),
    ("BackupService", "DownloadBackup", Permission::BackupDownload),
    ("BackupService", "DeleteBackup", Permission::BackupDelete),
    ("BackupService", "PinBackup", Permission::BackupPin),
    ("BackupService", "UnpinBackup", Permission::BackupPin),
    ("BackupService", "ImportCatalog", Permission::BackupImport),
];

#[tonic::async_trait]
impl backup_service_server::BackupService for OperatorSvc {
    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let ds = validate::opt_id("datasource_id", &r.datasource_id)?;
        if let Some(ds) = ds {
            self.check_datasource(&p, ds).await?;
        }
        let list = self.ctx.executions.list_backups(ds, page).await?;
        // The token follows the unfiltered page, so paging goes on past a page the scope emptied.
        let next_page_token = page.next_token(list.len());
        let list = self.visible_executions(&p, list, |(e, _)| e).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            next_page_token,
            backups: list.iter().map(|(e, s)| convert::backup(e, s, &[], &[])).collect(),
        }))
    }

    async fn get_backup(&self, req: Request<pb::GetBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_backup(&p, id).await?;
        let b = self.ctx.executions.backup(id).await?;
        let mut out = convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies);
        out.table_counts = convert::table_counts(&b.table_counts);
        Ok(Response::new(out))
    }

    async fn restore_backup(&self, req: Request<pb::RestoreBackupRequest>) -> Result<Response<pb::Execution>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let r = RestoreRequest::try_from(req.into_inner())?;
        let backup = r.backup_id;
        let b = self.visible_backup(&p, backup).await?;
        let target = self.visible_datasource(&p, r.target_datasource_id.unwrap_or(b.datasource_id)).await?;
        if self.ctx.access.is_protected(&target.labels) {
            let database = r.target_database.clone().unwrap_or_else(|| target.database_name.clone());
            let c = Critical {
                action: "backup.restore",
                target_kind: "datasource",
                target_id: target.id.to_string(),
                summary: format!(
                    "restore backup {backup} into protected datasource {} ({}), database {database}{}{}{}",
                    target.name,
                    target.id,
                    if r.verification_mode { ", verification only" } else { "" },
                    if r.drop_existing { ", dropping existing objects" } else { "" },
                    if r.create_database { ", creating the database" } else { "" },
                ),
                // Everything the call does, so an approval cannot be reused for another call.
                parameters: serde_json::json!({
                    "backup_id": backup,
                    "target_datasource_id": target.id,
                    "target_database": database,
                    "create_database": r.create_database,
                    "drop_existing": r.drop_existing,
                    "verification_mode": r.verification_mode,
                    "scratch_database": r.scratch_database,
                    "source_storage_id": r.source_storage_id,
                    "parallel_jobs": r.parallel_jobs,
                    "restore_globals": r.restore_globals,
                }),
            };
            self.gated(&p, approval, c).await?;
        }
        let res = self.ctx.executions.restore(r).await;
        let e = self.audited_on(&p.actor(), "backup.restore", "backup", backup, res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    async fn import_catalog(
        &self,
        req: Request<pb::ImportCatalogRequest>,
    ) -> Result<Response<pb::ImportCatalogResponse>, Status> {
        let p = principal(&req)?;
        let r = ImportRequest::try_from(req.into_inner())?;
        self.check_storage(&p, r.storage_id).await?;
        let res = self.ctx.import.import(&r).await;
        let report = self.audited_on(&p.actor(), "backup.import_catalog", "storage", r.storage_id, res).await?;
        Ok(Response::new(convert::import_report(&report, r.dry_run)))
    }

    async fn verify_backup(&self, req: Request<pb::VerifyBackupRequest>) -> Result<Response<pb::Execution>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let backup = validate::id("backup_id", &r.backup_id)?;
        let rate = scrub::read_rate("read_rate_bytes_per_second", r.read_rate_bytes_per_second)?;
        self.check_backup(&p, backup).await?;
        let res = self.ctx.executions.verify(backup, rate).await;
        let e = self.audited_on(&p.actor(), "backup.verify", "backup", backup, res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    type DownloadBackupStream = DownloadStream;

    async fn download_backup(
        &self,
        req: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        self.check_backup(&p, id).await?;
        let res = self.ctx.backups.download(id, r.decompress).await;
        let rx = self.audited_on(&p.actor(), "backup.download", "backup", id, res).await?;
        let mut offset = 0u64;
        let stream = ReceiverStream::new(rx).map(move |piece| {
            let data = piece?;
            let at = offset;
            offset += data.len() as u64;
            Ok(pb::DownloadBackupResponse { data: data.to_vec(), offset: at })
        });
        Ok(Response::new(Box::pin(stream) as DownloadStream))
    }

    async fn delete_backup(
        &self,
        req: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::DeleteBackupResponse>, Status> {
        let (p, approval) = (principal(&req)?, approval_of(&req)?);
        let id = validate::id("id", &req.into_inner().id)?;
        let b = self.visible_backup(&p, id).await?;
        let c = Critical {
            action: "backup.delete",
            target_kind: "backup",
            target_id: id.to_string(),
            summary: format!("delete backup {id} of datasource {}", b.datasource_id),
            parameters: serde_json::json!({"backup_id": id}),
        };
        self.gated(&p, approval, c).await?;
        let res = self.ctx.backups.delete(id).await;
        let deleted_objects = self.audited_on(&p.actor(), "backup.delete", "backup", id, res).await?;
        Ok(Response::new(pb::DeleteBackupResponse { deleted_objects }))
    }

    async fn pin_backup(&self, req: Request<pb::PinBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = validate::id("backup_id", &r.backup_id)?;
        let reason = validate::pin_reason(&r.reason)?;
        self.check_backup(&p, id).await?;
        let res = self.ctx.backups.set_pin(id, Some(&reason)).await;
        self.audited_on(&p.actor(), "backup.pin", "backup", id, res).await?;
        let b = self.ctx.executions.backup(id).await?;
        Ok(Response::new(convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies)))
    }

    async fn unpin_backup(&self, req: Request<pb::UnpinBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let p = principal(&req)?;
        let id = validate::id("backup_id", &req.into_inner().backup_id)?;
        self.check_backup(&p, id).await?;
        let res = self.ctx.backups.set_pin(id, None).await;
        self.audited_on(&p.actor(), "backup.unpin", "backup", id, res).await?;
        let b = self.ctx.executions.backup(id).await?;
        Ok(Response::new(convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies)))
    }
}
