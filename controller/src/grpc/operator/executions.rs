//! ExecutionService.

use std::pin::Pin;

use dg_common::error::FieldError;
use dg_proto::v1::{self as pb, execution_service_server};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::OperatorSvc;
use crate::access::Permission;
use crate::{
    db::ExecutionFilter,
    grpc::{convert, principal, validate},
    service::executions::WatchEvent,
};

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionEvent, Status>> + Send>>;

/// The permission each RPC of this file's services checks (see `super::permission_of`).
pub(super) const PERMISSIONS: super::Table = &[
    ("ExecutionService", "GetExecution", Permission::ExecutionRead),
    ("ExecutionService", "ListExecutions", Permission::ExecutionRead),
    ("ExecutionService", "ListExecutionLogs", Permission::ExecutionRead),
    ("ExecutionService", "WatchExecution", Permission::ExecutionRead),
    ("ExecutionService", "CancelExecution", Permission::ExecutionCancel),
    ("ExecutionService", "DeleteExecution", Permission::ExecutionDelete),
];

#[tonic::async_trait]
impl execution_service_server::ExecutionService for OperatorSvc {
    async fn get_execution(&self, req: Request<pb::GetExecutionRequest>) -> Result<Response<pb::Execution>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        Ok(Response::new(convert::execution(&self.visible_execution(&p, id).await?)))
    }

    async fn list_executions(
        &self,
        req: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let page = validate::page(r.page_size, &r.page_token, 50, 500)?;
        let filter = ExecutionFilter {
            job_id: validate::opt_id("job_id", &r.job_id)?,
            datasource_id: validate::opt_id("datasource_id", &r.datasource_id)?,
            status: validate::status_filter(r.status)?,
            operation: validate::operation_filter(r.operation)?,
            created_after: validate::time("created_after", r.created_after)?,
            created_before: validate::time("created_before", r.created_before)?,
        };
        let list = self.ctx.executions.list(&filter, page).await?;
        // The token follows the unfiltered page, so paging goes on past a page the scope emptied.
        let next_page_token = page.next_token(list.len());
        let list = self.visible_executions(&p, list, |e| e).await?;
        Ok(Response::new(pb::ListExecutionsResponse {
            next_page_token,
            executions: list.iter().map(convert::execution).collect(),
        }))
    }

    async fn list_execution_logs(
        &self,
        req: Request<pb::ListExecutionLogsRequest>,
    ) -> Result<Response<pb::ListExecutionLogsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let id = validate::id("execution_id", &r.execution_id)?;
        self.check_execution(&p, id).await?;
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
                .ok_or_else(|| FieldError::new("page_token", "is not a token returned by this API"))?
        };
        let lines = self.ctx.executions.logs(id, after, limit).await?;
        let next_page_token = match lines.last() {
            Some(l) if lines.len() as i64 == limit => format!("l{}", l.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListExecutionLogsResponse {
            lines: lines.iter().map(convert::log_line).collect(),
            next_page_token,
        }))
    }

    type WatchExecutionStream = EventStream;

    async fn watch_execution(
        &self,
        req: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.visible_execution(&p, id).await?;
        let events = ReceiverStream::new(self.ctx.executions.watch(id)).map(|ev| {
            let event = match ev? {
                WatchEvent::Execution(e) => pb::execution_event::Event::Execution(convert::execution(&e)),
                WatchEvent::Progress(p) => pb::execution_event::Event::Progress(pb::ExecutionProgress {
                    raw_bytes: p.raw_bytes,
                    stored_bytes: p.stored_bytes,
                    chunks: p.chunks,
                    bytes_per_second: p.bytes_per_second,
                }),
                WatchEvent::Log(l) => pb::execution_event::Event::Log(convert::log_line(&l)),
            };
            Ok(pb::ExecutionEvent { event: Some(event) })
        });
        Ok(Response::new(Box::pin(events) as EventStream))
    }

    async fn cancel_execution(
        &self,
        req: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_execution(&p, id).await?;
        let res = self.ctx.executions.cancel(id).await;
        let e = self.audited_on(&p.actor(), "execution.cancel", "execution", id, res).await?;
        Ok(Response::new(convert::execution(&e)))
    }

    async fn delete_execution(
        &self,
        req: Request<pb::DeleteExecutionRequest>,
    ) -> Result<Response<pb::DeleteExecutionResponse>, Status> {
        let p = principal(&req)?;
        let id = validate::id("id", &req.into_inner().id)?;
        self.check_execution(&p, id).await?;
        let res = self.ctx.executions.delete(id).await;
        self.audited_on(&p.actor(), "execution.delete", "execution", id, res).await?;
        Ok(Response::new(pb::DeleteExecutionResponse {}))
    }
}
