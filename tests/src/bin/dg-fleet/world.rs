//! The system under test for one replica configuration: a database `dgfleet_<random>` of its own on the test
//! PostgreSQL server, a Redis (a private `redis-server` by default), and N `dg-controller` processes (the
//! release binary next to this executable) sharing both, each with its own configuration file, ports and log
//! file in the run directory. Each replica is its own process so that /proc/<pid> figures are the
//! controller's alone. [`Created`] remembers what must be removed even when the run is interrupted.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use dg_tests::{
    cluster::Clients,
    faults::procs::{Redis, free_port, wait_listening},
    pg_admin_url, suffix,
};
use nix::{sys::signal::Signal, unistd::Pid};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::process::{Child, Command};

use crate::args::Args;

/// Password of the admin every controller of the run bootstraps.
pub(crate) const ADMIN_PASSWORD: &str = "dg-fleet-admin-password-0123";

/// What the run created: databases and paths, removed by [`Created::cleanup`] (controllers and a private
/// Redis are child processes killed when dropped).
#[derive(Default)]
pub(crate) struct Created {
    dbs: Vec<String>,
    pub(crate) paths: Vec<PathBuf>,
}

impl Created {
    pub(crate) async fn cleanup(&mut self) {
        for name in std::mem::take(&mut self.dbs) {
            if let Err(e) = drop_database(&name).await {
                eprintln!("dg-fleet: could not drop database {name}: {e:#}");
            }
        }
        for p in std::mem::take(&mut self.paths).into_iter().rev() {
            if let Err(e) = std::fs::remove_dir_all(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("dg-fleet: could not remove {}: {e}", p.display());
            }
        }
    }
}

/// The URL of database `name` on the test server.
pub(crate) fn database_url(name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&pg_admin_url()).context("DG_TEST_PG_URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(&pg_admin_url()).await?;
    c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))).await?;
    c.close().await?;
    Ok(())
}

/// The release `dg-controller` next to this executable (or `DG_CONTROLLER_BIN`).
pub(crate) fn controller_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("DG_CONTROLLER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locate this executable")?;
    exe.parent().map(|d| d.join("dg-controller")).filter(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no dg-controller next to {}: build both with \
             `cargo build --release -p dg-controller -p dg-tests --bin dg-fleet --bin dg-controller`",
            exe.display()
        )
    })
}

/// One controller replica process.
pub(crate) struct Controller {
    /// Operator API (and enrollment).
    pub(crate) api: SocketAddr,
    /// Agent sessions.
    pub(crate) agent: SocketAddr,
    /// Its process id.
    pub(crate) pid: u32,
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// `https://127.0.0.1:<agent port>`.
    pub(crate) fn agent_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.agent.port())
    }

    /// `https://127.0.0.1:<api port>`.
    pub(crate) fn api_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.api.port())
    }

    /// The last `lines` lines of its log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `patience`.
    async fn stop(&mut self, patience: Duration) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(patience, self.child.wait()).await.is_err() {
            eprintln!("dg-fleet: controller {} did not stop within {patience:?}; killing it", self.pid);
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Everything one replica configuration runs against.
pub(crate) struct World {
    /// The controllers' database.
    pub(crate) db_name: String,
    /// Run directory of this configuration (configurations, logs, identities).
    pub(crate) dir: PathBuf,
    /// The replicas.
    pub(crate) controllers: Vec<Controller>,
    /// Operator clients, one per replica (logged in there).
    pub(crate) clients: Vec<Clients>,
    /// The controllers' CA.
    pub(crate) ca_pem: String,
    /// Redis URL the controllers use.
    pub(crate) redis_url: String,
    _redis: Option<Redis>,
}

impl World {
    /// Creates the database, starts Redis (unless shared) and `replicas` controllers; the first one creates the
    /// schema and the CA, the others start on a ready database.
    pub(crate) async fn start(
        args: &Args,
        replicas: usize,
        bin: &Path,
        dir: &Path,
        created: &mut Created,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db_name = format!("dgfleet_{}", suffix());
        let mut admin = PgConnection::connect(&pg_admin_url()).await.context("connect to the test PostgreSQL")?;
        admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\""))).await?;
        admin.close().await?;
        created.dbs.push(db_name.clone());
        let (redis, redis_url) = if args.redis == "private" {
            let r = Redis::start(dir).await.context("private redis-server")?;
            let url = r.url();
            (Some(r), url)
        } else {
            (None, args.redis.clone())
        };
        let master_key = hex::encode(rand::random::<[u8; 32]>());
        let db_url = database_url(&db_name)?;
        let mut controllers = Vec::new();
        for i in 0..replicas {
            let (api, agent) = (free_port()?, free_port()?);
            let config = dir.join(format!("controller-{i}.toml"));
            std::fs::write(&config, config_text(args, &db_url, &master_key, &redis_url, api, agent))?;
            let log = dir.join(format!("controller-{i}.log"));
            let c = spawn(bin, &config, &log, &args.controller_log, api, agent)
                .await
                .with_context(|| format!("controller {i}"))?;
            controllers.push(c);
        }
        let ca = Command::new(bin).arg("--config").arg(dir.join("controller-0.toml")).arg("print-ca").output().await?;
        anyhow::ensure!(ca.status.success(), "print-ca: {}", String::from_utf8_lossy(&ca.stderr));
        let ca_pem = String::from_utf8(ca.stdout)?;
        let mut clients = Vec::new();
        for c in &controllers {
            clients.push(Clients::connect(c.api, &ca_pem, ADMIN_PASSWORD).await.context("log in")?);
        }
        Ok(Self { db_name, dir: dir.to_owned(), controllers, clients, ca_pem, redis_url, _redis: redis })
    }

    /// Agent endpoints of the replicas, in order.
    pub(crate) fn agent_endpoints(&self) -> Vec<String> {
        self.controllers.iter().map(Controller::agent_endpoint).collect()
    }

    /// A controller that exited: which one, its status and the end of its log.
    pub(crate) fn dead_controller(&mut self) -> Option<String> {
        self.controllers.iter_mut().enumerate().find_map(|(i, c)| {
            let status = c.exited()?;
            Some(format!("controller {i} exited ({status}); its log ends with:\n{}", c.log_tail(15)))
        })
    }

    /// Stops the controllers (SIGTERM, then SIGKILL) and drops the database.
    pub(crate) async fn shutdown(mut self, created: &mut Created) {
        futures::future::join_all(self.controllers.iter_mut().map(|c| c.stop(Duration::from_secs(30)))).await;
        drop(self._redis.take());
        match drop_database(&self.db_name).await {
            Ok(()) => created.dbs.retain(|d| *d != self.db_name),
            Err(e) => eprintln!("dg-fleet: could not drop {} yet: {e:#}", self.db_name),
        }
    }
}

fn config_text(args: &Args, db_url: &str, master_key: &str, redis_url: &str, api: u16, agent: u16) -> String {
    // The lease must outlast a few heartbeats whatever the interval.
    let lease = (args.heartbeat_interval * 6).max(60);
    format!(
        "database_url = \"{db_url}\"\nmaster_key = \"{master_key}\"\nredis_url = \"{redis_url}\"\n\
         api_listen = \"127.0.0.1:{api}\"\nagent_listen = \"127.0.0.1:{agent}\"\n\
         agent_endpoint = \"https://127.0.0.1:{agent}\"\nserver_names = [\"localhost\", \"127.0.0.1\"]\n\
         heartbeat_interval_secs = {hb}\nlease_secs = {lease}\nadmin_password = \"{ADMIN_PASSWORD}\"\n",
        hb = args.heartbeat_interval,
    )
}

/// Starts one controller with a clean environment (no `DG_*` variable of this shell leaks into its
/// configuration) and waits until both its ports listen.
async fn spawn(
    bin: &Path,
    config: &Path,
    log: &Path,
    rust_log: &str,
    api: u16,
    agent: u16,
) -> anyhow::Result<Controller> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).arg("serve").env_clear();
    for var in ["PATH", "HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let child = cmd
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("the controller exited at once"))?;
    let mut c = Controller {
        api: SocketAddr::from(([127, 0, 0, 1], api)),
        agent: SocketAddr::from(([127, 0, 0, 1], agent)),
        pid,
        child,
        log: log.to_owned(),
    };
    let up = async {
        wait_listening(c.api, Duration::from_secs(60)).await?;
        wait_listening(c.agent, Duration::from_secs(10)).await
    };
    if let Err(e) = up.await {
        let status = c.exited().map(|s| format!(" ({s})")).unwrap_or_default();
        anyhow::bail!("did not start{status}: {e}; its log ends with:\n{}", c.log_tail(20));
    }
    Ok(c)
}
