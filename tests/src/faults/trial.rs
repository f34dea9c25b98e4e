//! One trial: start a backup (or a restore), inject one fault at a random point of it, wait for the end,
//! and judge the outcome against the invariants.

use std::time::{Duration, Instant};

use dg_proto::v1 as pb;
use nix::sys::signal::Signal;
use rand::{Rng, rngs::StdRng};
use sqlx::Executor as _;
use uuid::Uuid;

use super::{Fault, Op, TrialResult, checks, world::World};
use crate::cluster::authed;

/// What the trials need to know about the clean baseline.
#[derive(Clone, Debug)]
pub struct Baseline {
    /// Chunks of a clean backup of the source.
    pub chunks: u32,
    /// Seconds a clean restore runs (from its start to its end, as the controller recorded them).
    pub restore_secs: f64,
    /// A backup known to restore (the restore trials' source).
    pub good_backup: String,
}

/// When the system as a whole was last unable to act (no replica up, or its database down): leases cannot
/// be enforced meanwhile, so the "stuck" check waits a lease and two heartbeats after such an outage.
#[derive(Default)]
pub struct Blackout {
    ended: Option<Instant>,
}

impl World {
    /// The execution, retrying while the API is unreachable (a restarting replica).
    pub async fn execution(&mut self, id: &str) -> Option<pb::Execution> {
        let req = authed(pb::GetExecutionRequest { id: id.into() }, &self.clients.token);
        self.clients.executions.get_execution(req).await.ok().map(tonic::Response::into_inner)
    }

    async fn chunks_recorded(&self, id: &str) -> Option<i64> {
        let id: Uuid = id.parse().ok()?;
        sqlx::query_scalar("SELECT count(*) FROM backup_chunk WHERE execution_id = $1")
            .bind(id)
            .fetch_one(&self.ctl_db)
            .await
            .ok()
    }

    /// RunNow of the trial job (retried through a restarting replica).
    pub async fn run_now(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = authed(pb::RunNowRequest { job_id: self.job_id.clone() }, &self.clients.token);
            match self.clients.jobs.run_now(req).await {
                Ok(r) => return Ok(r.into_inner().id),
                Err(e) if Instant::now() < deadline => tracing::debug!(error = %e, "run now: retrying"),
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Restores `backup` into `database` (created); returns the restore's execution id.
    pub async fn start_restore(&mut self, backup: &str, database: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = pb::RestoreBackupRequest {
                backup_id: backup.into(),
                target_database: database.into(),
                create_database: true,
                confirm_target_database: database.into(),
                ..Default::default()
            };
            match self.clients.backups.restore_backup(authed(req, &self.clients.token)).await {
                Ok(r) => return Ok(r.into_inner().id),
                Err(e) if Instant::now() < deadline => tracing::debug!(error = %e, "restore: retrying"),
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits for the end of an execution, sampling the "stuck" invariant meanwhile; `None` when it did not
    /// end within `limit`.
    pub async fn wait_end(
        &mut self,
        id: &str,
        limit: Duration,
        blackout: &Blackout,
        stuck: &mut Vec<String>,
    ) -> Option<pb::Execution> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.sample_stuck(blackout, stuck).await;
            if let Some(e) = self.execution(id).await
                && matches!(
                    pb::ExecutionStatus::try_from(e.status),
                    Ok(pb::ExecutionStatus::Completed | pb::ExecutionStatus::Failed | pb::ExecutionStatus::Cancelled)
                )
            {
                return Some(e);
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        None
    }

    /// Records attempts running past their lease plus one heartbeat (and a second of measuring slack).
    pub async fn sample_stuck(&self, blackout: &Blackout, stuck: &mut Vec<String>) {
        let settle = Duration::from_secs(self.timings.lease_secs + 2 * self.timings.heartbeat_secs);
        if blackout.ended.is_some_and(|t| t.elapsed() < settle) {
            return;
        }
        let slack = Duration::from_secs(self.timings.heartbeat_secs + 1);
        for (ex, attempt) in checks::stuck(&self.ctl_db, slack).await.unwrap_or_default() {
            let s = format!("{ex} attempt {attempt}");
            if !stuck.contains(&s) {
                stuck.push(s);
            }
        }
    }

    /// Restores `backup` into a scratch database and compares it with `expected`; the restore's execution,
    /// or `Err` text when it does not restore or differs.
    pub async fn verify_restores(
        &mut self,
        backup: &str,
        expected: &(i64, String),
        blackout: &Blackout,
        stuck: &mut Vec<String>,
    ) -> Result<pb::Execution, String> {
        let target = self.scratch_name("v");
        let id = self.start_restore(backup, &target.name).await.map_err(|e| format!("restore refused: {e}"))?;
        let Some(end) = self.wait_end(&id, Duration::from_secs(180), blackout, stuck).await else {
            return Err(format!("verification restore {id} did not end"));
        };
        if end.status != pb::ExecutionStatus::Completed as i32 {
            return Err(format!("verification restore {id} ended {}: {}", end.status, end.error));
        }
        match target.table_fingerprint("t").await {
            Ok(f) if &f == expected => Ok(end),
            Ok(f) => Err(format!("restored {} rows, expected {}; or the content differs", f.0, expected.0)),
            Err(e) => Err(format!("restored database unreadable: {e}")),
        }
    }

    /// Makes the replica count what a controller-restart trial needs: one replica for the single-replica
    /// kind, two for the other; other kinds keep the current topology.
    async fn topology(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::ControllerRestart { replicas: 1 } if self.replicas[1].proc.running() => {
                self.replicas[1].proc.terminate(Duration::from_secs(15)).await;
                // The agent's session moves to the remaining replica.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Fault::ControllerRestart { replicas: 2 } if !self.replicas[1].proc.running() => {
                self.replicas[1].start().await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A failing trigger for one chunk report (`seq`) and the first commit of execution `id`, each once.
    async fn drop_reports(&self, id: &str, seq: u32) -> anyhow::Result<()> {
        let id: Uuid = id.parse()?;
        let sql = format!(
            "DROP SEQUENCE IF EXISTS fault_chunk; DROP SEQUENCE IF EXISTS fault_commit;
             CREATE SEQUENCE fault_chunk; CREATE SEQUENCE fault_commit;
             CREATE OR REPLACE FUNCTION fault_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.execution_id = '{id}' AND NEW.seq = {seq} AND nextval('fault_chunk') = 1 THEN
                 RAISE EXCEPTION 'injected: chunk report lost'; END IF; RETURN NEW; END $$;
             CREATE OR REPLACE FUNCTION fault_commit() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.id = '{id}' AND NEW.status = 'completed' AND nextval('fault_commit') = 1 THEN
                 RAISE EXCEPTION 'injected: commit lost'; END IF; RETURN NEW; END $$;
             DROP TRIGGER IF EXISTS fault_chunk ON backup_chunk; DROP TRIGGER IF EXISTS fault_commit ON execution;
             CREATE TRIGGER fault_chunk BEFORE INSERT ON backup_chunk FOR EACH ROW EXECUTE FUNCTION fault_chunk();
             CREATE TRIGGER fault_commit BEFORE UPDATE ON execution FOR EACH ROW EXECUTE FUNCTION fault_commit();"
        );
        self.ctl_db.execute(sqlx::AssertSqlSafe(sql)).await?;
        Ok(())
    }

    /// Whether both injected report faults fired.
    async fn reports_dropped(&self) -> bool {
        let q = "SELECT (SELECT last_value FROM fault_chunk) >= 1 AND (SELECT is_called FROM fault_chunk) \
                 AND (SELECT is_called FROM fault_commit)";
        sqlx::query_scalar::<_, bool>(q).fetch_one(&self.ctl_db).await.unwrap_or(false)
    }

    /// Injects `fault` now; returns what was done, and whether the control plane as a whole was out.
    async fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<(String, bool)> {
        Ok(match fault {
            Fault::AgentKill(_) => {
                self.agent.kill9().await;
                let down = rng.random_range(0.0..2.0);
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                self.restart_agent().await?;
                (format!("agent killed, restarted after {down:.1} s"), false)
            }
            Fault::AgentPause(_) => {
                let secs = rng.random_range(1.0..(2.0 * self.timings.lease_secs as f64));
                self.agent.signal(Signal::SIGSTOP);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                self.agent.signal(Signal::SIGCONT);
                (format!("agent paused {secs:.1} s"), false)
            }
            Fault::ControllerRestart { replicas } => {
                // The replica holding the agent's session (the balancer knows where the connection went).
                let open = self.agent_lb.open_connections();
                let i = if replicas == 1 {
                    0
                } else {
                    open.iter().enumerate().max_by_key(|(_, n)| **n).map_or(0, |(i, _)| i)
                };
                let down = rng.random_range(0.5..5.0);
                self.replicas[i].proc.kill9().await;
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                self.replicas[i].start().await?;
                (format!("replica {i} of {replicas} killed, restarted after {down:.1} s"), replicas == 1)
            }
            Fault::ControllerDbRestart => {
                let down = rng.random_range(1.0..8.0);
                self.pg.stop().await?;
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                self.pg.start_again().await?;
                (format!("controller PostgreSQL down {down:.1} s"), true)
            }
            Fault::RedisRestart => {
                let down = rng.random_range(1.0..8.0);
                self.redis.kill().await;
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                self.redis.restart().await?;
                (format!("Redis down {down:.1} s (its data lost)"), false)
            }
            Fault::NetworkCut => {
                self.agent_lb.cut();
                self.api_lb.cut();
                ("every connection cut".into(), false)
            }
            Fault::DroppedReport => (String::new(), false),
        })
    }

    /// Runs one trial.
    pub async fn trial(
        &mut self,
        n: usize,
        fault: Fault,
        base: &mut Baseline,
        rng: &mut StdRng,
        blackout: &mut Blackout,
    ) -> anyhow::Result<TrialResult> {
        let start = Instant::now();
        self.topology(fault).await?;
        let mut stuck = Vec::new();
        let mut violations = Vec::new();
        let op = fault.op();
        let target = self.scratch_name("r");
        let (id, point) = match op {
            Op::Backup => {
                let k = rng.random_range(1..base.chunks.max(2));
                let id = self.run_now().await?;
                if fault == Fault::DroppedReport {
                    self.drop_reports(&id, k).await?;
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut reached = false;
                while Instant::now() < deadline {
                    if self.chunks_recorded(&id).await.unwrap_or(0) >= i64::from(k) {
                        reached = true;
                        break;
                    }
                    if self.execution(&id).await.is_some_and(|e| {
                        e.status != pb::ExecutionStatus::Running as i32
                            && e.status != pb::ExecutionStatus::Queued as i32
                    }) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                (id, if reached { format!("at chunk {k} of ~{}", base.chunks) } else { "after the end".into() })
            }
            Op::Restore => {
                let id = self.start_restore(&base.good_backup.clone(), &target.name).await?;
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline
                    && self.execution(&id).await.is_none_or(|e| e.status == pb::ExecutionStatus::Queued as i32)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let f = rng.random_range(0.05..0.85);
                tokio::time::sleep(Duration::from_secs_f64(f * base.restore_secs)).await;
                (id, format!("at {:.0} % of a restore", f * 100.0))
            }
        };
        // A fault that strikes after the end tests nothing: say so (the table counts these apart).
        let ended_before = self.execution(&id).await.is_some_and(|e| {
            e.status != pb::ExecutionStatus::Running as i32 && e.status != pb::ExecutionStatus::Queued as i32
        });
        let point = if ended_before { "after the end".to_owned() } else { point };
        let (mut what, outage) = self.inject(fault, rng).await?;
        if outage {
            blackout.ended = Some(Instant::now());
        }
        let end = self.wait_end(&id, Duration::from_secs(240), blackout, &mut stuck).await;
        if fault == Fault::DroppedReport {
            what = format!("chunk report and commit lost once (fired: {})", self.reports_dropped().await);
            let _ = self
                .ctl_db
                .execute("DROP TRIGGER IF EXISTS fault_chunk ON backup_chunk; DROP TRIGGER IF EXISTS fault_commit ON execution")
                .await;
        }
        let Some(end) = end else {
            violations.push(format!("stuck: execution {id} did not end within 240 s"));
            let secs = start.elapsed().as_secs_f64();
            return Ok(TrialResult { n, fault, point, what, execution: id, end: None, violations, stuck, secs });
        };
        let max = match op {
            Op::Backup => self.timings.max_attempts,
            Op::Restore => super::RESTORE_MAX_ATTEMPTS,
        };
        if end.attempt > max {
            violations.push(format!("not per policy: {} attempts, at most {max}", end.attempt));
        }
        match pb::ExecutionStatus::try_from(end.status) {
            Ok(pb::ExecutionStatus::Completed) => match op {
                Op::Backup => {
                    let expected = self.source_fingerprint.clone();
                    match self.verify_restores(&id, &expected, blackout, &mut stuck).await {
                        Ok(_) => base.good_backup = id.clone(),
                        Err(e) => violations.push(format!("lost: completed backup does not restore: {e}")),
                    }
                }
                Op::Restore => match target.table_fingerprint("t").await {
                    Ok(f) if f == self.source_fingerprint => {}
                    Ok(f) => violations.push(format!("corrupt: restore completed with {} rows or other content", f.0)),
                    Err(e) => violations.push(format!("corrupt: restore completed, target unreadable: {e}")),
                },
            },
            Ok(pb::ExecutionStatus::Failed) => {
                // A backup fails only when its attempts are used up; a restore whose target was touched is
                // not retried.
                if op == Op::Backup && end.attempt < max {
                    violations
                        .push(format!("not per policy: failed at attempt {} of {max}: {}", end.attempt, end.error));
                }
                if end.error.is_empty() {
                    violations.push("failed without an error".into());
                }
            }
            _ => violations.push(format!("ended {} although nobody cancelled it", end.status)),
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(TrialResult { n, fault, point, what, execution: id, end: Some(end), violations, stuck, secs })
    }
}
