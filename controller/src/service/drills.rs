//! Restore drills: CRUD, runs and their evidence. A run picks the newest good backup of the drill's
//! datasource within its maximum age (none: the run fails at once, which is also an RPO signal), queues a
//! verification restore with drill checks into a new scratch database `dg_drill_<run>` on the target
//! datasource through the same path `RestoreBackup` uses, and, once that execution has ended (whatever ended
//! it: completion, failure, the reaper, a restart), [`DrillService::finish_run`] judges what the agent
//! observed (`drill_judge::judge`) and records the evidence once (compare-and-set). [`DrillTask`] finishes
//! ended runs on every replica and, on the leader, starts scheduled runs (one per slot).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use dg_common::protocol::drill::{DrillChecks, DrillQuery};

use super::{
    drill_judge::{self, Expectations, SchemaExpect, SlotDecision, SqlAssertion},
    executions::{ExecutionsService, RestoreRequest},
    schedule,
};
use crate::{
    coordination::Coordination,
    db::{Db, DrillRecord, Page},
    error::{ControllerError, ControllerResult},
    model::{DrillEvidence, DrillRun, DrillRunStatus, RestoreDrill, Status},
};

/// A validated new drill.
#[derive(Clone, Debug)]
pub struct NewDrill {
    /// Unique name.
    pub name: String,
    /// Datasource whose backups are drilled.
    pub datasource_id: Uuid,
    /// Where scratch databases are created.
    pub target_datasource_id: Uuid,
    /// Cron (empty: manual only), already validated with `time_zone`.
    pub cron: String,
    /// Time zone.
    pub time_zone: String,
    /// Maximum backup age.
    pub max_backup_age: Duration,
    /// Row count tolerance, percent (0 to 100).
    pub tolerance_percent: f64,
    /// Compare row counts.
    pub assert_row_counts: bool,
    /// SQL assertions.
    pub sql: Vec<SqlAssertion>,
    /// Schema minimums.
    pub schema: SchemaExpect,
    /// Scheduled runs happen.
    pub enabled: bool,
    /// Scratch database name prefix (validated: an identifier of at most 40 characters).
    pub scratch_prefix: String,
}

/// A validated change to a drill (`None`: unchanged).
#[derive(Clone, Debug, Default)]
pub struct DrillPatch {
    /// New name.
    pub name: Option<String>,
    /// New cron ("" : manual only).
    pub cron: Option<String>,
    /// New time zone.
    pub time_zone: Option<String>,
    /// New maximum age.
    pub max_backup_age: Option<Duration>,
    /// New tolerance.
    pub tolerance_percent: Option<f64>,
    /// Compare row counts or not.
    pub assert_row_counts: Option<bool>,
    /// Replacement SQL assertions.
    pub sql: Option<Vec<SqlAssertion>>,
    /// Replacement schema minimums.
    pub schema: Option<SchemaExpect>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Restore drill service.
#[derive(Clone, Debug)]
pub struct DrillService {
    db: Db,
    executions: ExecutionsService,
    metrics: crate::metrics::Metrics,
    notifier: super::notify::Notifier,
}

fn record(d: &NewDrill) -> DrillRecord {
    DrillRecord {
        name: d.name.clone(),
        datasource_id: d.datasource_id,
        target_datasource_id: d.target_datasource_id,
        cron: (!d.cron.is_empty()).then(|| d.cron.clone()),
        time_zone: d.time_zone.clone(),
        max_backup_age_secs: i64::try_from(d.max_backup_age.as_secs()).unwrap_or(i64::MAX).max(1),
        tolerance_percent: d.tolerance_percent,
        assert_row_counts: d.assert_row_counts,
        sql_assertions: serde_json::json!(d.sql),
        schema_expect: serde_json::json!(d.schema),
        enabled: d.enabled,
        scratch_prefix: d.scratch_prefix.clone(),
    }
}

/// The scratch database of a run: the drill's prefix and 12 hex digits of the run id.
pub fn scratch_database(prefix: &str, run: Uuid) -> String {
    format!("{prefix}{}", &run.simple().to_string()[..12])
}

/// The checks the agent runs for a drill.
fn checks(d: &RestoreDrill) -> DrillChecks {
    DrillChecks {
        table_counts: d.assert_row_counts,
        schema_counts: d.schema().any(),
        queries: d.sql().into_iter().map(|a| DrillQuery { name: a.name, sql: a.query }).collect(),
    }
}

impl DrillService {
    /// New service.
    pub fn new(
        db: Db,
        executions: ExecutionsService,
        metrics: crate::metrics::Metrics,
        notifier: super::notify::Notifier,
    ) -> Self {
        Self { db, executions, metrics, notifier }
    }

    async fn check_datasources(&self, source: Uuid, target: Uuid) -> ControllerResult<()> {
        let s = self
            .db
            .datasource(source)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {source}")))?;
        let t = self
            .db
            .datasource(target)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("datasource {target}")))?;
        if s.engine != t.engine {
            return Err(ControllerError::FailedPrecondition(format!(
                "target_datasource_id: engine {} differs from the drilled datasource's engine {}",
                t.engine, s.engine
            )));
        }
        Ok(())
    }

    /// Creates a drill.
    pub async fn create(&self, d: NewDrill) -> ControllerResult<RestoreDrill> {
        self.check_datasources(d.datasource_id, d.target_datasource_id).await?;
        self.db
            .insert_drill(&record(&d))
            .await?
            .ok_or_else(|| ControllerError::AlreadyExists(format!("a drill named \"{}\" exists", d.name)))
    }

    /// One drill.
    pub async fn get(&self, id: Uuid) -> ControllerResult<RestoreDrill> {
        self.db.drill(id).await?.ok_or_else(|| ControllerError::NotFound(format!("restore drill {id}")))
    }

    /// Drills by name.
    pub async fn list(&self, page: Page) -> ControllerResult<Vec<RestoreDrill>> {
        Ok(self.db.list_drills(page).await?)
    }

    /// Applies a patch (the schedule is re-armed from now).
    pub async fn update(&self, id: Uuid, p: DrillPatch) -> ControllerResult<RestoreDrill> {
        let cur = self.get(id).await?;
        let d = NewDrill {
            name: p.name.unwrap_or_else(|| cur.name.clone()),
            datasource_id: cur.datasource_id,
            target_datasource_id: cur.target_datasource_id,
            cron: p.cron.unwrap_or_else(|| cur.cron.clone().unwrap_or_default()),
            time_zone: p.time_zone.unwrap_or_else(|| cur.time_zone.clone()),
            max_backup_age: p
                .max_backup_age
                .unwrap_or_else(|| Duration::from_secs(u64::try_from(cur.max_backup_age_secs).unwrap_or(1))),
            tolerance_percent: p.tolerance_percent.unwrap_or(cur.tolerance_percent),
            assert_row_counts: p.assert_row_counts.unwrap_or(cur.assert_row_counts),
            sql: p.sql.unwrap_or_else(|| cur.sql()),
            schema: p.schema.unwrap_or_else(|| cur.schema()),
            enabled: p.enabled.unwrap_or(cur.enabled),
            scratch_prefix: cur.scratch_prefix.clone(),
        };
        // The cron and zone are checked together (either may have changed).
        schedule::parse(&d.cron, &d.time_zone)?;
        if self.db.drill_name_taken(&d.name, id).await? {
            return Err(ControllerError::AlreadyExists(format!("a drill named \"{}\" exists", d.name)));
        }
        self.db
            .update_drill(id, &record(&d))
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("restore drill {id}")))
    }

    /// Deletes a drill and its runs' evidence.
    pub async fn delete(&self, id: Uuid) -> ControllerResult<()> {
        if self.db.delete_drill(id).await? {
            Ok(())
        } else {
            Err(ControllerError::NotFound(format!("restore drill {id}")))
        }
    }

    /// Starts a run of a drill: `trigger` is "operator:<name>" or "schedule". No qualifying backup, or a
    /// restore that cannot be queued, gives a run that failed at once with the reason in its evidence.
    pub async fn run(&self, id: Uuid, trigger: &str) -> ControllerResult<DrillRun> {
        let drill = self.get(id).await?;
        let max_age = chrono::Duration::seconds(drill.max_backup_age_secs);
        let since = Some(Utc::now() - max_age);
        let Some(backup) = self.db.newest_good_backup(drill.datasource_id, since).await? else {
            let why = match self.db.newest_backup_any_age(drill.datasource_id).await? {
                Some(b) => format!(
                    "no good backup within max_backup_age ({}s): the newest, {}, completed at {}",
                    drill.max_backup_age_secs,
                    b.id,
                    b.finished_at.to_rfc3339()
                ),
                None => "no good backup of the datasource exists".to_owned(),
            };
            let run = self.db.insert_drill_run(&drill, trigger, Some(&why)).await?;
            info!(drill = %drill.name, run = %run.id, reason = %why, "restore drill failed: no backup");
            self.finished(&drill, &run).await;
            return self.run_record(run.id).await;
        };
        let run = self.db.insert_drill_run(&drill, trigger, None).await?;
        let scratch = scratch_database(&drill.scratch_prefix, run.id);
        let request = RestoreRequest {
            backup_id: backup.id,
            target_datasource_id: Some(drill.target_datasource_id),
            target_database: None,
            create_database: true,
            drop_existing: false,
            confirm_target_database: String::new(),
            source_storage_id: None,
            verification_mode: true,
            parallel_jobs: None,
            restore_globals: false,
            scratch_database: Some(scratch.clone()),
            drill: Some(checks(&drill)),
        };
        match self.executions.restore(request).await {
            Ok(ex) => {
                self.db.set_drill_run_restore(run.id, &backup, &scratch, ex.id).await?;
                self.db.append_log(ex.id, "info", &format!("restore drill \"{}\" run {}", drill.name, run.id)).await?;
                info!(drill = %drill.name, run = %run.id, backup = %backup.id, execution = %ex.id, "restore drill started");
            }
            Err(e) => {
                let why = format!("the restore could not be queued: {e}");
                let evidence = DrillEvidence::default();
                if self
                    .db
                    .finish_drill_run(run.id, DrillRunStatus::Failed, serde_json::json!(evidence), Some(&why))
                    .await?
                {
                    self.finished(&drill, &run).await;
                }
            }
        }
        self.run_record(run.id).await
    }

    async fn run_record(&self, id: Uuid) -> ControllerResult<DrillRun> {
        self.db.drill_run(id).await?.ok_or_else(|| ControllerError::NotFound(format!("drill run {id}")))
    }

    /// One run.
    pub async fn get_run(&self, id: Uuid) -> ControllerResult<DrillRun> {
        self.run_record(id).await
    }

    /// A drill's runs, newest first.
    pub async fn runs(&self, drill: Uuid, page: Page) -> ControllerResult<Vec<DrillRun>> {
        self.get(drill).await?;
        Ok(self.db.list_drill_runs(drill, page).await?)
    }

    /// Finishes every running run whose restore has ended (any replica may; each run finishes once).
    pub async fn finish_ended(&self) -> ControllerResult<u32> {
        let mut n = 0;
        for r in self.db.running_drill_runs().await? {
            let ended = match r.execution_status.as_deref() {
                None => true,
                Some(s) => s.parse::<Status>().map(Status::is_terminal).unwrap_or(false),
            };
            if ended && self.finish_run(r.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Judges a run whose restore has ended and records its evidence, once (true when this call finished
    /// it). This is the one place a run ends after its restore.
    pub async fn finish_run(&self, id: Uuid) -> ControllerResult<bool> {
        let run = self.run_record(id).await?;
        if run.status != DrillRunStatus::Running {
            return Ok(false);
        }
        let drill = self.get(run.drill_id).await?;
        let ex = match run.execution_id {
            Some(e) => self.db.execution(e).await?,
            None => None,
        };
        let mut evidence = DrillEvidence::default();
        let error = match &ex {
            None => Some("the restore execution is gone (deleted, or it was never queued)".to_owned()),
            Some(ex) if !ex.status.is_terminal() => return Ok(false),
            Some(ex) if ex.status != Status::Completed => Some(format!(
                "the restore {}: {}",
                ex.status,
                ex.error.clone().unwrap_or_else(|| "no error text".into())
            )),
            Some(ex) => match self.db.drill_observation(ex.id).await? {
                None => Some("the agent reported no drill observation (an agent before protocol 7?)".to_owned()),
                Some(observed) => {
                    let recorded = match run.backup_id {
                        Some(b) => self.db.backup_table_counts(b).await?,
                        None => None,
                    };
                    let sql = drill.sql();
                    let expected = Expectations {
                        recorded: recorded.as_deref(),
                        assert_row_counts: drill.assert_row_counts,
                        tolerance_percent: drill.tolerance_percent,
                        sql: &sql,
                        schema: drill.schema(),
                    };
                    let j = drill_judge::judge(expected, &observed);
                    evidence.rto_ms = drill_judge::rto_ms(run.started_at, ex.started_at, observed.queryable_after_ms);
                    let failed: Vec<String> = j
                        .outcomes
                        .iter()
                        .filter(|o| !o.passed)
                        .map(|o| format!("{} (expected {}, actual {})", o.name, o.expected, o.actual))
                        .collect();
                    evidence.assertions = j.outcomes;
                    evidence.notes = j.notes;
                    if let Some(p) = observed.problem {
                        evidence.notes.push(format!("agent: {p}"));
                    }
                    (!failed.is_empty()).then(|| {
                        format!(
                            "{} of {} assertions failed: {}",
                            failed.len(),
                            evidence.assertions.len(),
                            failed.join("; ")
                        )
                    })
                }
            },
        };
        let end = ex.as_ref().and_then(|e| e.finished_at).unwrap_or_else(Utc::now);
        evidence.duration_ms = Some(u64::try_from((end - run.started_at).num_milliseconds()).unwrap_or(0));
        let status = if error.is_none() { DrillRunStatus::Passed } else { DrillRunStatus::Failed };
        let done = self.db.finish_drill_run(run.id, status, serde_json::json!(evidence), error.as_deref()).await?;
        if done {
            info!(drill = %drill.name, run = %run.id, %status, rto_ms = ?evidence.rto_ms, "restore drill finished");
            self.finished(&drill, &run).await;
        }
        Ok(done)
    }

    /// A run has ended (passed or failed): the hook for "drill passed/failed" notifications and metrics.
    async fn finished(&self, drill: &RestoreDrill, run: &DrillRun) {
        // The caller may hold the row from before it ended: read the ended one.
        let ended = match self.run_record(run.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(run = %run.id, error = %e, "drill run ended but cannot be read back; no event");
                return;
            }
        };
        let run = &ended;
        let passed = run.status == DrillRunStatus::Passed;
        let evidence = run.evidence();
        self.metrics.drill_runs.with_label_values(&[run.status.as_str()]).inc();
        if passed && let Some(rto) = evidence.rto_ms {
            self.metrics.drill_rto.with_label_values(&[drill.name.as_str()]).observe(rto as f64 / 1000.0);
        }
        let failed: Vec<String> = evidence
            .assertions
            .iter()
            .filter(|a| !a.passed)
            .map(|a| format!("{}: expected {}, got {}", a.name, a.expected, a.actual))
            .collect();
        let detail = match (&run.error, passed) {
            (Some(e), _) => e.clone(),
            (None, true) => format!("{} assertions held", evidence.assertions.len()),
            (None, false) => failed.join("; "),
        };
        let event = super::notify::Event::drill(run.id, drill.id, drill.datasource_id, passed, &detail);
        self.notifier.emit(event).await;
    }

    /// The evidence of a drill's runs started in `[since, until)` as JSON text, with stable field names.
    pub async fn export(
        &self,
        drill: Uuid,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> ControllerResult<String> {
        let d = self.get(drill).await?;
        let runs = self.db.drill_runs_between(drill, since, until).await?;
        let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
        let runs: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let e = r.evidence();
                serde_json::json!({
                    "run_id": r.id,
                    "status": r.status.as_str(),
                    "trigger": r.trigger,
                    "started_at": r.started_at.to_rfc3339(),
                    "finished_at": ts(r.finished_at),
                    "backup_id": r.backup_id,
                    "backup_completed_at": ts(r.backup_completed_at),
                    "target_datasource_id": r.target_datasource_id,
                    "scratch_database": r.scratch_database,
                    "execution_id": r.execution_id,
                    "assertions": e.assertions,
                    "notes": e.notes,
                    "rto_ms": e.rto_ms,
                    "duration_ms": e.duration_ms,
                    "error": r.error,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format": "dataguardian.drill-evidence.v1",
            "exported_at": Utc::now().to_rfc3339(),
            "since": ts(since),
            "until": ts(until),
            "drill": {
                "id": d.id,
                "name": d.name,
                "datasource_id": d.datasource_id,
                "target_datasource_id": d.target_datasource_id,
                "cron": d.cron,
                "time_zone": d.time_zone,
                "max_backup_age_secs": d.max_backup_age_secs,
                "row_count_tolerance_percent": d.tolerance_percent,
                "assert_row_counts": d.assert_row_counts,
                "sql_assertions": d.sql(),
                "schema": d.schema(),
            },
            "runs": runs,
        });
        serde_json::to_string_pretty(&doc).map_err(|e| ControllerError::FailedPrecondition(format!("export: {e}")))
    }

    /// One scheduler round: each enabled drill with a cron whose slot has come gets one run (the slot moves
    /// with a compare-and-set first, so two leaders cannot both run it).
    pub async fn schedule_round(&self) -> ControllerResult<()> {
        let now = Utc::now();
        for d in self.db.scheduled_drills().await? {
            let Ok(Some(sched)) = schedule::parse(d.cron.as_deref().unwrap_or(""), &d.time_zone) else { continue };
            let Some(next) = sched.next_runs(now, 1).first().copied() else { continue };
            match drill_judge::slot_decision(d.next_run_at, next, now) {
                SlotDecision::Wait => {}
                SlotDecision::Arm { next } => {
                    self.db.move_drill_slot(d.id, None, next).await?;
                }
                SlotDecision::Run { due, next } => {
                    if self.db.move_drill_slot(d.id, Some(due), next).await? {
                        let run = self.run(d.id, "schedule").await?;
                        info!(drill = %d.name, run = %run.id, slot = %due, "scheduled restore drill started");
                    }
                }
            }
        }
        Ok(())
    }
}

/// The drill loop: finishes ended runs (every replica) and starts scheduled runs (the leader only).
pub struct DrillTask {
    service: DrillService,
    coord: Coordination,
    tick: Duration,
    leader_key: String,
}

impl DrillTask {
    /// New task checking every `tick`; `leader_key` is the scheduler's lock key with a drill suffix.
    pub fn new(service: DrillService, coord: Coordination, tick: Duration, leader_key: String) -> Self {
        Self { service, coord, tick, leader_key }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {},
            }
            if let Err(e) = self.service.finish_ended().await {
                warn!(error = %e, "finishing restore drills failed");
            }
            if self.coord.lead(&self.leader_key, self.tick * 5).await
                && let Err(e) = self.service.schedule_round().await
            {
                warn!(error = %e, "restore drill scheduler round failed");
            }
        }
    }
}
