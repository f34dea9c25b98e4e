//! Scope enforcement for the operator handlers: which datasources, storages, jobs, and through them backups,
//! executions and drills, the calling principal sees and acts on.
//!
//! Invariants: a resource out of scope answers NOT_FOUND with exactly the message of an unknown id (no
//! existence leak); a job is visible when it and its datasource are; backups and executions follow their
//! datasource and job; drills follow their source and target datasources. A create or relabel that would put
//! the resource itself out of scope is PERMISSION_DENIED. Callers with an unlimited scope (most) skip every
//! extra lookup. Called by the handlers of `catalog`, `backups`, `executions`, `drills` and `health`.

use std::collections::{BTreeMap, HashMap};

use tonic::Status;
use uuid::Uuid;

use super::OperatorSvc;
use crate::{
    access::{Principal, ResourceKind, ResourceRef},
    error::ControllerError,
    model::{BackupJob, Datasource, Execution, RestoreDrill, Storage},
};

/// The NOT_FOUND of an unknown `what` (same text as the services' own).
fn not_found(what: &str, id: Uuid) -> Status {
    Status::from(ControllerError::NotFound(format!("{what} {id}")))
}

/// Turns a service's NOT_FOUND into the one of `what` (a backup looked up as an execution), passing the rest.
fn as_not_found(e: ControllerError, what: &str, id: Uuid) -> Status {
    match e {
        ControllerError::NotFound(_) => not_found(what, id),
        e => Status::from(e),
    }
}

fn datasource_ref(d: &Datasource) -> ResourceRef<'_> {
    ResourceRef::new(ResourceKind::Datasource, d.id, &d.labels)
}

fn storage_ref(s: &Storage) -> ResourceRef<'_> {
    ResourceRef::new(ResourceKind::Storage, s.id, &s.labels)
}

fn job_ref(j: &BackupJob) -> ResourceRef<'_> {
    ResourceRef::new(ResourceKind::Job, j.id, &j.labels)
}

/// Whether a storage is visible (for list filters).
pub(super) fn storage_visible(p: &Principal, s: &Storage) -> bool {
    p.sees(storage_ref(s))
}

/// Whether a datasource is visible (for list filters).
pub(super) fn datasource_visible(p: &Principal, d: &Datasource) -> bool {
    p.sees(datasource_ref(d))
}

/// Refuses a new resource of `kind` with `labels` that the principal would not see once made.
pub(super) fn admit_new(p: &Principal, kind: ResourceKind, labels: &BTreeMap<String, String>) -> Result<(), Status> {
    if p.scope.is_unlimited() {
        return Ok(());
    }
    let v = serde_json::to_value(labels).unwrap_or_default();
    // A new resource has no id yet: only label rules can admit it.
    if p.sees(ResourceRef::new(kind, Uuid::nil(), &v)) {
        return Ok(());
    }
    Err(Status::from(ControllerError::PermissionDenied(format!(
        "labels: a new {} labelled {labels:?} would be outside your scope (your allow and deny rules)",
        kind.name()
    ))))
}

/// Refuses a label change that would put a resource the principal sees out of its scope.
pub(super) fn admit_relabel(
    p: &Principal,
    kind: ResourceKind,
    id: Uuid,
    current: &serde_json::Value,
    labels: &BTreeMap<String, String>,
    replace: bool,
) -> Result<(), Status> {
    if p.scope.is_unlimited() || (!replace && labels.is_empty()) {
        return Ok(());
    }
    let mut next: BTreeMap<String, String> =
        if replace { BTreeMap::new() } else { serde_json::from_value(current.clone()).unwrap_or_default() };
    next.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let v = serde_json::to_value(&next).unwrap_or_default();
    if p.sees(ResourceRef::new(kind, id, &v)) {
        return Ok(());
    }
    Err(Status::from(ControllerError::PermissionDenied(format!(
        "labels: the change would put {} {id} outside your scope",
        kind.name()
    ))))
}

/// Visibility answers remembered over one list, so a page costs one lookup per distinct datasource and job.
#[derive(Debug, Default)]
pub(super) struct Seen {
    datasources: HashMap<Uuid, bool>,
    jobs: HashMap<Uuid, bool>,
}

impl OperatorSvc {
    /// A datasource the principal sees; NOT_FOUND otherwise.
    pub(super) async fn visible_datasource(&self, p: &Principal, id: Uuid) -> Result<Datasource, Status> {
        let d = self.ctx.catalog.datasource(id).await?;
        if datasource_visible(p, &d) { Ok(d) } else { Err(not_found("datasource", id)) }
    }

    /// Like [`Self::visible_datasource`] without the lookup when nothing is limited.
    pub(super) async fn check_datasource(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        self.visible_datasource(p, id).await.map(|_| ())
    }

    /// A storage the principal sees; NOT_FOUND otherwise.
    pub(super) async fn visible_storage(&self, p: &Principal, id: Uuid) -> Result<Storage, Status> {
        let s = self.ctx.catalog.storage(id).await?;
        if storage_visible(p, &s) { Ok(s) } else { Err(not_found("storage", id)) }
    }

    /// Like [`Self::visible_storage`] without the lookup when nothing is limited.
    pub(super) async fn check_storage(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        self.visible_storage(p, id).await.map(|_| ())
    }

    /// Every storage a job would use must be visible.
    pub(super) async fn check_storages(&self, p: &Principal, ids: &[Uuid]) -> Result<(), Status> {
        for id in ids {
            self.check_storage(p, *id).await?;
        }
        Ok(())
    }

    /// A job the principal sees (it and its datasource) with its storage ids; NOT_FOUND otherwise.
    pub(super) async fn visible_job(&self, p: &Principal, id: Uuid) -> Result<(BackupJob, Vec<Uuid>), Status> {
        let (j, s) = self.ctx.catalog.job(id).await?;
        if self.job_seen(p, &j, &mut Seen::default()).await? { Ok((j, s)) } else { Err(not_found("backup job", id)) }
    }

    /// Like [`Self::visible_job`] without the lookups when nothing is limited.
    pub(super) async fn check_job(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        self.visible_job(p, id).await.map(|_| ())
    }

    /// An execution the principal sees; NOT_FOUND otherwise.
    pub(super) async fn visible_execution(&self, p: &Principal, id: Uuid) -> Result<Execution, Status> {
        let e = self.ctx.executions.get(id).await?;
        if p.scope.is_unlimited() || self.execution_seen(p, &e, &mut Seen::default()).await? {
            Ok(e)
        } else {
            Err(not_found("execution", id))
        }
    }

    /// Like [`Self::visible_execution`] without the lookup when nothing is limited.
    pub(super) async fn check_execution(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        self.visible_execution(p, id).await.map(|_| ())
    }

    /// A completed backup the principal sees; NOT_FOUND (as `backup <id>`) otherwise.
    pub(super) async fn visible_backup(&self, p: &Principal, id: Uuid) -> Result<Execution, Status> {
        let e = self.ctx.executions.backup_execution(id).await.map_err(|e| as_not_found(e, "backup", id))?;
        if p.scope.is_unlimited() || self.execution_seen(p, &e, &mut Seen::default()).await? {
            Ok(e)
        } else {
            Err(not_found("backup", id))
        }
    }

    /// Like [`Self::visible_backup`] without the lookup when nothing is limited.
    pub(super) async fn check_backup(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        self.visible_backup(p, id).await.map(|_| ())
    }

    /// Checks a drill is visible (both its datasources); NOT_FOUND otherwise.
    pub(super) async fn check_drill(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        let d = self.ctx.drills.get(id).await?;
        if self.drill_seen(p, &d, &mut Seen::default()).await? { Ok(()) } else { Err(not_found("restore drill", id)) }
    }

    /// Checks a drill run's drill is visible; NOT_FOUND (as `drill run <id>`) otherwise.
    pub(super) async fn check_drill_run(&self, p: &Principal, id: Uuid) -> Result<(), Status> {
        if p.scope.is_unlimited() {
            return Ok(());
        }
        let run = self.ctx.drills.get_run(id).await?;
        self.check_drill(p, run.drill_id).await.map_err(|_| not_found("drill run", id))
    }

    /// Whether a datasource is visible, by id (a missing one is not).
    pub(super) async fn datasource_seen(&self, p: &Principal, id: Uuid, seen: &mut Seen) -> Result<bool, Status> {
        if let Some(v) = seen.datasources.get(&id) {
            return Ok(*v);
        }
        let v = match self.ctx.catalog.datasource(id).await {
            Ok(d) => datasource_visible(p, &d),
            Err(ControllerError::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        seen.datasources.insert(id, v);
        Ok(v)
    }

    /// Whether a job is visible: it and its datasource.
    pub(super) async fn job_seen(&self, p: &Principal, j: &BackupJob, seen: &mut Seen) -> Result<bool, Status> {
        if let Some(v) = seen.jobs.get(&j.id) {
            return Ok(*v);
        }
        let v = p.sees(job_ref(j)) && self.datasource_seen(p, j.datasource_id, seen).await?;
        seen.jobs.insert(j.id, v);
        Ok(v)
    }

    /// Whether an execution (or backup) is visible: its datasource and, while it exists, its job.
    pub(super) async fn execution_seen(&self, p: &Principal, e: &Execution, seen: &mut Seen) -> Result<bool, Status> {
        if !self.datasource_seen(p, e.datasource_id, seen).await? {
            return Ok(false);
        }
        let Some(job_id) = e.job_id else { return Ok(true) };
        if let Some(v) = seen.jobs.get(&job_id) {
            return Ok(*v);
        }
        match self.ctx.catalog.job(job_id).await {
            Ok((j, _)) => self.job_seen(p, &j, seen).await,
            // A deleted job leaves its executions to their datasource.
            Err(ControllerError::NotFound(_)) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a drill is visible: both its datasources.
    pub(super) async fn drill_seen(&self, p: &Principal, d: &RestoreDrill, seen: &mut Seen) -> Result<bool, Status> {
        Ok(self.datasource_seen(p, d.datasource_id, seen).await?
            && self.datasource_seen(p, d.target_datasource_id, seen).await?)
    }

    /// The visible jobs of a page (all of them when nothing is limited).
    pub(super) async fn visible_jobs(
        &self,
        p: &Principal,
        list: Vec<(BackupJob, Vec<Uuid>)>,
    ) -> Result<Vec<(BackupJob, Vec<Uuid>)>, Status> {
        if p.scope.is_unlimited() {
            return Ok(list);
        }
        let mut seen = Seen::default();
        let mut out = Vec::with_capacity(list.len());
        for (j, s) in list {
            if self.job_seen(p, &j, &mut seen).await? {
                out.push((j, s));
            }
        }
        Ok(out)
    }

    /// The visible executions (or backups, with their storage ids) of a page.
    pub(super) async fn visible_executions<T>(
        &self,
        p: &Principal,
        list: Vec<T>,
        execution: impl Fn(&T) -> &Execution,
    ) -> Result<Vec<T>, Status> {
        if p.scope.is_unlimited() {
            return Ok(list);
        }
        let mut seen = Seen::default();
        let mut out = Vec::with_capacity(list.len());
        for x in list {
            if self.execution_seen(p, execution(&x), &mut seen).await? {
                out.push(x);
            }
        }
        Ok(out)
    }

    /// The visible drills of a page.
    pub(super) async fn visible_drills(
        &self,
        p: &Principal,
        list: Vec<RestoreDrill>,
    ) -> Result<Vec<RestoreDrill>, Status> {
        if p.scope.is_unlimited() {
            return Ok(list);
        }
        let mut seen = Seen::default();
        let mut out = Vec::with_capacity(list.len());
        for d in list {
            if self.drill_seen(p, &d, &mut seen).await? {
                out.push(d);
            }
        }
        Ok(out)
    }
}
