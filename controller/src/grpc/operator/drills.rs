//! RestoreDrillService.

use dg_proto::v1::{self as pb, restore_drill_service_server};
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    grpc::{convert, principal, validate},
    service::drills::NewDrill,
};

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("RestoreDrillService", "CreateRestoreDrill", Permission::DrillWrite),
    ("RestoreDrillService", "GetRestoreDrill", Permission::DrillRead),
    ("RestoreDrillService", "ListRestoreDrills", Permission::DrillRead),
    ("RestoreDrillService", "UpdateRestoreDrill", Permission::DrillWrite),
    ("RestoreDrillService", "DeleteRestoreDrill", Permission::DrillWrite),
    ("RestoreDrillService", "RunRestoreDrill", Permission::DrillRun),
    ("RestoreDrillService", "ListDrillRuns", Permission::DrillRead),
    ("RestoreDrillService", "GetDrillRun", Permission::DrillRead),
    ("RestoreDrillService", "ExportDrillEvidence", Permission::DrillRead),
];

#[tonic::async_trait]
impl restore_drill_service_server::RestoreDrillService for OperatorSvc {
    async fn create_restore_drill(
        &self,
        req: Request<pb::CreateRestoreDrillRequest>,
    ) -> Result<Response<pb::RestoreDrill>, Status> {
        let p = principal(&req)?;
        let d = NewDrill::try_from(req.into_inner())?;
        self.check_datasource(&p, d.datasource_id).await?;
        self.check_datasource(&p, d.target_datasource_id).await?;
        let res = self.ctx.drills.create(d).await;
        let d = self.audited(&p.actor(), "drill.create", "restore_drill", |d| d.id.to_string(), res).await?;
        Ok(Response::new(convert::drill(&d)))
    }

    async fn get_restore_drill(
        &self,
        req: Request<pb::GetRestoreDrillRequest>,
    ) -> Result<Response<pb::RestoreDrill>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_drill(&p, id).await?;
        Ok(Response::new(convert::drill(&self.ctx.drills.get(id).await?)))
    }

    async fn list_restore_drills(
        &self,
        req: Request<pb::ListRestoreDrillsRequest>,
    ) -> Result<Response<pb::ListRestoreDrillsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let list = self.ctx.drills.list(page).await?;
        // The token follows the unfiltered page, so paging goes on past a page the scope emptied.
        let next_page_token = page.next_token(list.len());
        let list = self.visible_drills(&p, list).await?;
        Ok(Response::new(pb::ListRestoreDrillsResponse {
            next_page_token,
            drills: list.iter().map(convert::drill).collect(),
        }))
    }

    async fn update_restore_drill(
        &self,
        req: Request<pb::UpdateRestoreDrillRequest>,
    ) -> Result<Response<pb::RestoreDrill>, Status> {
        let p = principal(&req)?;
        let (id, patch) = validate::drill_patch(req.into_inner())?;
        self.check_drill(&p, id).await?;
        let res = self.ctx.drills.update(id, patch).await;
        let d = self.audited_on(&p.actor(), "drill.update", "restore_drill", id, res).await?;
        Ok(Response::new(convert::drill(&d)))
    }

    async fn delete_restore_drill(
        &self,
        req: Request<pb::DeleteRestoreDrillRequest>,
    ) -> Result<Response<pb::DeleteRestoreDrillResponse>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_drill(&p, id).await?;
        let res = self.ctx.drills.delete(id).await;
        self.audited_on(&p.actor(), "drill.delete", "restore_drill", id, res).await?;
        Ok(Response::new(pb::DeleteRestoreDrillResponse {}))
    }

    async fn run_restore_drill(
        &self,
        req: Request<pb::RunRestoreDrillRequest>,
    ) -> Result<Response<pb::DrillRun>, Status> {
        let p = principal(&req)?;
        let who = p.actor();
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_drill(&p, id).await?;
        let res = self.ctx.drills.run(id, &format!("operator:{who}")).await;
        let run = self.audited_on(&who, "drill.run", "restore_drill", id, res).await?;
        Ok(Response::new(convert::drill_run(&run)))
    }

    async fn list_drill_runs(
        &self,
        req: Request<pb::ListDrillRunsRequest>,
    ) -> Result<Response<pb::ListDrillRunsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let drill = validate::id("drill_id", &r.drill_id)?;
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        self.check_drill(&p, drill).await?;
        let runs = self.ctx.drills.runs(drill, page).await?;
        Ok(Response::new(pb::ListDrillRunsResponse {
            next_page_token: page.next_token(runs.len()),
            runs: runs.iter().map(convert::drill_run).collect(),
        }))
    }

    async fn get_drill_run(&self, req: Request<pb::GetDrillRunRequest>) -> Result<Response<pb::DrillRun>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_drill_run(&p, id).await?;
        Ok(Response::new(convert::drill_run(&self.ctx.drills.get_run(id).await?)))
    }

    async fn export_drill_evidence(
        &self,
        req: Request<pb::ExportDrillEvidenceRequest>,
    ) -> Result<Response<pb::ExportDrillEvidenceResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let drill = validate::id("drill_id", &r.drill_id)?;
        let since = validate::opt_time("since", r.since)?;
        let until = validate::opt_time("until", r.until)?;
        self.check_drill(&p, drill).await?;
        let res = self.ctx.drills.export(drill, since, until).await;
        let json = self.audited_on(&p.actor(), "drill.export", "restore_drill", drill, res).await?;
        Ok(Response::new(pb::ExportDrillEvidenceResponse { json }))
    }
}
