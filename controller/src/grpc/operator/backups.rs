//! BackupService.

use std::pin::Pin;

use dg_proto::v1::{self as pb, backup_service_server};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    grpc::{actor, convert, validate},
    service::{executions::RestoreRequest, import::ImportRequest, scrub},
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
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let ds = validate::opt_id("datasource_id", &r.datasource_id)?;
        let list = self.ctx.executions.list_backups(ds, page).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            next_page_token: page.next_token(list.len()),
            backups: list.iter().map(|(e, s)| convert::backup(e, s, &[], &[])).collect(),
        }))
    }

    async fn get_backup(&self, req: Request<pb::GetBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let id = validate::id("id", &req.into_inner().id)?;
        let b = self.ctx.executions.backup(id).await?;
        let mut out = convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies);
        out.table_counts = convert::table_counts(&b.table_counts);
        Ok(Response::new(out))
    }

    async fn restore_backup(&self, req: Request<pb::RestoreBackupRequest>) -> Result<Response<pb::Execution>, Status> {
        let who = actor(&req);
        let r = RestoreRequest::try_from(req.into_inner())?;
        let backup = r.backup_id;
        let res = self.ctx.executions.restore(r).await;
        let e = self.audited_on(&who, "backup.restore", "backup", backup, res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    async fn import_catalog(
        &self,
        req: Request<pb::ImportCatalogRequest>,
    ) -> Result<Response<pb::ImportCatalogResponse>, Status> {
        let who = actor(&req);
        let r = ImportRequest::try_from(req.into_inner())?;
        let res = self.ctx.import.import(&r).await;
        let report = self.audited_on(&who, "backup.import_catalog", "storage", r.storage_id, res).await?;
        Ok(Response::new(convert::import_report(&report, r.dry_run)))
    }

    async fn verify_backup(&self, req: Request<pb::VerifyBackupRequest>) -> Result<Response<pb::Execution>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let backup = validate::id("backup_id", &r.backup_id)?;
        let rate = scrub::read_rate("read_rate_bytes_per_second", r.read_rate_bytes_per_second)?;
        let res = self.ctx.executions.verify(backup, rate).await;
        let e = self.audited_on(&who, "backup.verify", "backup", backup, res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    type DownloadBackupStream = DownloadStream;

    async fn download_backup(
        &self,
        req: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let id = validate::id("id", &r.id)?;
        let res = self.ctx.backups.download(id, r.decompress).await;
        let rx = self.audited_on(&who, "backup.download", "backup", id, res).await?;
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
        let who = actor(&req);
        let id = validate::id("id", &req.into_inner().id)?;
        let res = self.ctx.backups.delete(id).await;
        let deleted_objects = self.audited_on(&who, "backup.delete", "backup", id, res).await?;
        Ok(Response::new(pb::DeleteBackupResponse { deleted_objects }))
    }

    async fn pin_backup(&self, req: Request<pb::PinBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let id = validate::id("backup_id", &r.backup_id)?;
        let reason = validate::pin_reason(&r.reason)?;
        let res = self.ctx.backups.set_pin(id, Some(&reason)).await;
        self.audited_on(&who, "backup.pin", "backup", id, res).await?;
        let b = self.ctx.executions.backup(id).await?;
        Ok(Response::new(convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies)))
    }

    async fn unpin_backup(&self, req: Request<pb::UnpinBackupRequest>) -> Result<Response<pb::Backup>, Status> {
        let who = actor(&req);
        let id = validate::id("backup_id", &req.into_inner().backup_id)?;
        let res = self.ctx.backups.set_pin(id, None).await;
        self.audited_on(&who, "backup.unpin", "backup", id, res).await?;
        let b = self.ctx.executions.backup(id).await?;
        Ok(Response::new(convert::backup(&b.execution, &b.storage_ids, &b.chunks, &b.copies)))
    }
}
