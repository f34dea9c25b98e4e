//! Everything a fault run needs, started once: a private PostgreSQL for the controllers (so that it can be
//! restarted), a private Redis, two `dg-controller` replicas sharing them behind a TCP balancer on each
//! port, one `dg-agent` process, and on the test PostgreSQL server a source database of hard-to-compress
//! rows (about `data_mib` MiB of dump), a small database backed up by a schedule every few seconds, and the
//! jobs backing them up to a local storage of the agent.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use dg_proto::v1 as pb;
use sqlx::{Executor as _, postgres::PgPoolOptions};

use super::{
    balancer::Balancer,
    procs::{Proc, Redis, free_port, wait_listening},
};
use crate::{
    cluster::{Clients, authed},
    pg::{ScramPostgres, TestDb},
    suffix,
};

/// Timings of the run (small, so that a trial takes seconds).
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Agent heartbeat interval.
    pub heartbeat_secs: u64,
    /// Lease of an attempt.
    pub lease_secs: u64,
    /// Grace before the objects of an ended attempt are swept.
    pub orphan_grace_secs: u64,
    /// Attempts per backup (retry policy of both jobs).
    pub max_attempts: u32,
    /// Backoff between attempts.
    pub backoff_secs: u32,
    /// Seconds between two slots of the scheduled job.
    pub schedule_every_secs: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat_secs: 1,
            lease_secs: 6,
            orphan_grace_secs: 5,
            max_attempts: 3,
            backoff_secs: 1,
            schedule_every_secs: 10,
        }
    }
}

const ADMIN_PASSWORD: &str = "fault-harness-admin-password";

/// One controller replica process and its ports.
pub struct Replica {
    /// The process.
    pub proc: Proc,
    /// Operator API.
    pub api: SocketAddr,
    /// Agent port.
    pub agent: SocketAddr,
}

impl Replica {
    /// Starts it and waits until both ports listen.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()?;
        let up = async {
            wait_listening(self.api, Duration::from_secs(60)).await?;
            wait_listening(self.agent, Duration::from_secs(10)).await
        };
        up.await.with_context(|| format!("controller did not start:\n{}", self.proc.log_tail(20)))
    }
}

/// The running system.
pub struct World {
    /// Run directory (logs, agent state, the local storage).
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
    /// The controllers' database server.
    pub pg: ScramPostgres,
    /// The controllers' Redis.
    pub redis: Redis,
    /// The two replicas (`replicas[1]` may be stopped).
    pub replicas: Vec<Replica>,
    /// In front of the operator ports.
    pub api_lb: Balancer,
    /// In front of the agent ports.
    pub agent_lb: Balancer,
    /// The agent process.
    pub agent: Proc,
    /// Its id.
    pub agent_id: String,
    /// Operator clients (through the balancer).
    pub clients: Clients,
    /// The controllers' database, for the invariant checks.
    pub ctl_db: sqlx::PgPool,
    /// Source database of the trial backups (table `t`).
    pub source: TestDb,
    /// Its fingerprint.
    pub source_fingerprint: (i64, String),
    /// Source of the scheduled job (table `t`).
    pub small: TestDb,
    /// Its fingerprint.
    pub small_fingerprint: (i64, String),
    /// Where the local storage lives.
    pub storage_dir: PathBuf,
    /// The job of the trial backups.
    pub job_id: String,
    /// The scheduled job.
    pub scheduled_job_id: String,
    /// The timings.
    pub timings: Timings,
}

impl World {
    /// Starts everything; `data_mib` sizes the source database's dump.
    pub async fn start(timings: Timings, data_mib: u32) -> anyhow::Result<Self> {
        // May run `cargo build`: off the async threads.
        let (controller_bin, agent_bin) = tokio::task::spawn_blocking(super::procs::binaries).await??;
        let tmp = tempfile::Builder::new().prefix("dg-faults-").tempdir()?;
        // The agent refuses local storages reached through symlinks.
        let dir = std::fs::canonicalize(tmp.path())?;
        let pg = ScramPostgres::start().await.context("private PostgreSQL for the controllers")?;
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres")).await?;
        admin.execute("CREATE DATABASE dataguardian").await?;
        let redis = Redis::start(&dir).await.context("private Redis")?;

        let ports: Vec<(u16, u16)> = (0..2).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
        let api_lb = Balancer::start(ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p.0))).collect()).await?;
        let agent_lb = Balancer::start(ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p.1))).collect()).await?;
        let master_key = hex::encode(rand::random::<[u8; 32]>());
        let mut replicas = Vec::new();
        for (i, (api, agent)) in ports.iter().enumerate() {
            let config = dir.join(format!("controller-{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "database_url = \"{db}\"\nmaster_key = \"{master_key}\"\nredis_url = \"{redis}\"\n\
                     api_listen = \"127.0.0.1:{api}\"\nagent_listen = \"127.0.0.1:{agent}\"\n\
                     agent_endpoint = \"https://127.0.0.1:{lb}\"\nserver_names = [\"localhost\", \"127.0.0.1\"]\n\
                     heartbeat_interval_secs = {hb}\nlease_secs = {lease}\nscheduler_interval_secs = 1\n\
                     retention_interval_secs = 1\norphan_grace_secs = {grace}\n\
                     chunk_size_bytes = 1048576\nadmin_password = \"{ADMIN_PASSWORD}\"\n",
                    db = pg.url("dataguardian"),
                    redis = redis.url(),
                    lb = agent_lb.addr.port(),
                    hb = timings.heartbeat_secs,
                    lease = timings.lease_secs,
                    grace = timings.orphan_grace_secs,
                ),
            )?;
            let cmd = vec![
                controller_bin.to_string_lossy().into_owned(),
                "--config".into(),
                config.to_string_lossy().into_owned(),
                "serve".into(),
            ];
            replicas.push(Replica {
                proc: Proc::new(&format!("controller-{i}"), cmd, dir.join(format!("controller-{i}.log"))),
                api: SocketAddr::from(([127, 0, 0, 1], *api)),
                agent: SocketAddr::from(([127, 0, 0, 1], *agent)),
            });
        }
        // The first replica creates the schema and the CA; the second starts on a ready database.
        for r in &mut replicas {
            r.start().await?;
        }
        let ca = tokio::process::Command::new(&controller_bin)
            .arg("--config")
            .arg(dir.join("controller-0.toml"))
            .arg("print-ca")
            .output()
            .await?;
        anyhow::ensure!(ca.status.success(), "print-ca: {}", String::from_utf8_lossy(&ca.stderr));
        let ca_pem = String::from_utf8(ca.stdout)?;
        let mut clients = Clients::connect(api_lb.addr, &ca_pem, ADMIN_PASSWORD).await?;

        // The agent, enrolled through the balancer.
        let jt = clients
            .agents
            .create_join_token(authed(pb::CreateJoinTokenRequest::default(), &clients.token))
            .await?
            .into_inner();
        let state = dir.join("agent-state");
        let enroll = tokio::process::Command::new(&agent_bin)
            .arg("enroll")
            .args(["--controller", &format!("https://127.0.0.1:{}", api_lb.addr.port())])
            .args(["--token", &jt.token, "--ca-fingerprint", &jt.ca_fingerprint])
            .arg("--state-dir")
            .arg(&state)
            .output()
            .await?;
        anyhow::ensure!(enroll.status.success(), "dg-agent enroll: {}", String::from_utf8_lossy(&enroll.stderr));
        let agent_id = String::from_utf8_lossy(&enroll.stdout).trim().to_owned();
        let cmd = vec![
            agent_bin.to_string_lossy().into_owned(),
            "run".into(),
            "--state-dir".into(),
            state.to_string_lossy().into_owned(),
            "--local-root".into(),
            dir.to_string_lossy().into_owned(),
            "--reconnect-max".into(),
            "1s".into(),
        ];
        let mut agent = Proc::new("dg-agent", cmd, dir.join("agent.log"));
        agent.spawn()?;
        clients.wait_agent_status(&agent_id, pb::AgentStatus::Online, Duration::from_secs(30)).await?;

        let source = TestDb::create("faults_src").await?;
        source
            .connect()
            .await?
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL);
                 INSERT INTO t SELECT g, (SELECT string_agg(md5(random()::text || g || j), '') FROM \
                 generate_series(1, 32) j) FROM generate_series(1, {}) g",
                u64::from(data_mib) * 1024 * 1024 / 1024
            )))
            .await?;
        let source_fingerprint = source.table_fingerprint("t").await?;
        let small = TestDb::create("faults_small").await?;
        small
            .connect()
            .await?
            .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
            .await?;
        let small_fingerprint = small.table_fingerprint("t").await?;

        let storage_dir = dir.join("storage");
        std::fs::create_dir_all(&storage_dir)?;
        let storage = clients.local_storage(&agent_id, &storage_dir).await?;
        let retry = Some(pb::RetryPolicy {
            max_attempts: timings.max_attempts,
            backoff: Some(prost_types::Duration { seconds: i64::from(timings.backoff_secs), nanos: 0 }),
        });
        let ds = clients.datasource(pb::Engine::Postgres, &agent_id, &source.name).await?;
        let job = job(&mut clients, &ds.id, &storage.id, "", retry).await?;
        let small_ds = clients.datasource(pb::Engine::Postgres, &agent_id, &small.name).await?;
        let cron = format!("*/{} * * * * *", timings.schedule_every_secs);
        let scheduled = self::job(&mut clients, &small_ds.id, &storage.id, &cron, retry).await?;

        let ctl_db = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&pg.url("dataguardian"))?;
        Ok(Self {
            dir,
            _dir: tmp,
            pg,
            redis,
            replicas,
            api_lb,
            agent_lb,
            agent,
            agent_id,
            clients,
            ctl_db,
            source,
            source_fingerprint,
            small,
            small_fingerprint,
            storage_dir,
            job_id: job.id,
            scheduled_job_id: scheduled.id,
            timings,
        })
    }

    /// Restarts the agent after a kill and waits until it is online again.
    pub async fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.agent.spawn()?;
        let id = self.agent_id.clone();
        self.clients
            .wait_agent_status(&id, pb::AgentStatus::Online, Duration::from_secs(60))
            .await
            .with_context(|| format!("agent not back online:\n{}", self.agent.log_tail(20)))
    }

    /// Stops everything that runs (the databases on the test server are dropped with `self`).
    pub async fn shutdown(mut self) {
        self.agent.terminate(Duration::from_secs(10)).await;
        for r in &mut self.replicas {
            r.proc.terminate(Duration::from_secs(10)).await;
        }
        self.redis.kill().await;
    }

    /// A fresh name for a database a trial restores into.
    pub fn scratch_name(&self, what: &str) -> TestDb {
        TestDb::reserve(&format!("faults_{what}_{}", &suffix()[..4]))
    }
}

async fn job(
    c: &mut Clients,
    datasource: &str,
    storage: &str,
    cron: &str,
    retry: Option<pb::RetryPolicy>,
) -> anyhow::Result<pb::BackupJob> {
    let req = pb::CreateBackupJobRequest {
        name: format!("faults-{}", suffix()),
        datasource_id: datasource.into(),
        storage_ids: vec![storage.into()],
        storage_strategy: pb::StorageStrategy::Fallback as i32,
        compression_level: 3,
        cron: cron.into(),
        time_zone: "UTC".into(),
        retry,
        // Keep every backup, so that the end of the run can restore each one.
        retention: Some(pb::RetentionPolicy { max_backups: 1000, ..Default::default() }),
        ..Default::default()
    };
    Ok(c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner())
}
