//! A controller with its own database plus helpers to drive it through the public gRPC API the way an
//! operator or an agent would.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use dg_agent::{enroll, session, state::StateDir};
use dg_controller::{app::RunningController, config::Config};
use dg_proto::v1::{
    self as pb, agent_service_client::AgentServiceClient, auth_service_client::AuthServiceClient,
    backup_job_service_client::BackupJobServiceClient, backup_service_client::BackupServiceClient,
    datasource_service_client::DatasourceServiceClient, execution_service_client::ExecutionServiceClient,
    notification_service_client::NotificationServiceClient, restore_drill_service_client::RestoreDrillServiceClient,
    storage_service_client::StorageServiceClient, user_service_client::UserServiceClient,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig},
};

use crate::{DbServer, init_logging, pg::TestDb, suffix};

/// Password of the admin every cluster bootstraps.
pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple";

/// Options of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Stored chunk size.
    pub chunk_size: u64,
    /// Agent certificate lifetime.
    pub agent_cert_ttl_secs: u64,
    /// Operator session lifetime.
    pub session_ttl_secs: u64,
    /// Redis (default the local server, `DG_TEST_REDIS_URL`).
    pub redis_url: Option<String>,
    /// CA bundle verifying a `rediss://` Redis (default: the system's trust store).
    pub redis_ca_file: Option<PathBuf>,
    /// Grace period before orphaned objects are swept (default: the controller's).
    pub orphan_grace_secs: Option<u64>,
    /// Serve Prometheus metrics on a free port.
    pub metrics: bool,
    /// Lease of a running attempt (default: the controller's).
    pub lease_secs: Option<u64>,
    /// TLS handshake timeout of both ports (default: the controller's).
    pub tls_handshake_timeout_secs: Option<u64>,
    /// Start without a configured admin: `Setup` needs the bootstrap token, written to
    /// `<dir>/bootstrap-token`.
    pub no_admin: bool,
    /// Let storages use the host's ambient cloud credentials (`allow_ambient_credentials`).
    pub allow_ambient_credentials: bool,
    /// Interval of the periodic retention round (default: 1 s when `orphan_grace_secs` is set, else 1 h).
    pub retention_interval_secs: Option<u64>,
    /// Interval of the RPO and offline-agent checks (default 60 s).
    pub rpo_interval_secs: Option<u64>,
    /// First wait before a failed notification delivery is retried (default 1 s in tests).
    pub notify_retry_base_secs: Option<u64>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            chunk_size: 1024 * 1024,
            agent_cert_ttl_secs: 3600,
            session_ttl_secs: 3600,
            redis_url: None,
            redis_ca_file: None,
            orphan_grace_secs: None,
            metrics: false,
            lease_secs: None,
            tls_handshake_timeout_secs: None,
            no_admin: false,
            allow_ambient_credentials: false,
            retention_interval_secs: None,
            rpo_interval_secs: None,
            notify_retry_base_secs: None,
        }
    }
}

/// A running controller.
pub struct Cluster {
    /// The controller.
    pub controller: Option<RunningController>,
    /// Its database.
    pub db: TestDb,
    /// Scratch directory (agent state, local storages).
    pub dir: tempfile::TempDir,
    /// Operator API address.
    pub api_addr: SocketAddr,
    /// Agent address.
    pub agent_addr: SocketAddr,
    /// CA (PEM).
    pub ca_pem: String,
    /// CA file (for grpcurl -cacert).
    pub ca_file: PathBuf,
    /// The configuration it runs with.
    pub config: Config,
}

/// An in-process agent.
pub struct AgentHandle {
    /// Agent id.
    pub id: String,
    /// State directory.
    pub state_dir: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AgentHandle {
    /// Stops the agent.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// Adds the bearer token to a request.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Password of the users tests create with [`create_user`].
pub const USER_PASSWORD: &str = "a-long-enough-password";

/// Creates a password user with `roles` (as the admin whose session is `admin`); its password is
/// [`USER_PASSWORD`].
pub async fn create_user(ch: &Channel, admin: &str, name: &str, roles: &[&str]) -> anyhow::Result<pb::User> {
    Ok(UserServiceClient::new(ch.clone())
        .create_user(authed(
            pb::CreateUserRequest {
                username: name.into(),
                password: USER_PASSWORD.into(),
                kind: pb::UserKind::Password as i32,
                roles: roles.iter().map(|r| r.to_string()).collect(),
            },
            admin,
        ))
        .await?
        .into_inner())
}

/// Logs `user` in with `password`: the session token.
pub async fn login_as(ch: &Channel, user: &str, password: &str) -> Result<String, tonic::Status> {
    Ok(AuthServiceClient::new(ch.clone())
        .login(pb::LoginRequest { username: user.into(), password: password.into() })
        .await?
        .into_inner()
        .token)
}

/// The id of the pending approval a critical call's FAILED_PRECONDITION names.
pub fn pending_approval(e: &tonic::Status) -> anyhow::Result<String> {
    anyhow::ensure!(
        e.code() == tonic::Code::FailedPrecondition && e.message().contains("pending"),
        "not an approval request: {e:?}"
    );
    let rest = e.message().split("approval ").nth(2).unwrap_or_default();
    Ok(rest.split_whitespace().next().unwrap_or_default().to_owned())
}

impl Cluster {
    /// Starts a controller with default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts a controller.
    pub async fn start_with(opts: ClusterOptions) -> anyhow::Result<Self> {
        init_logging();
        let db = TestDb::create("ctl").await?;
        let dir = tempfile::Builder::new().prefix("dg-test-").tempdir()?;
        let config = Config {
            database_url: db.url().into(),
            master_key: Some(hex::encode(rand_bytes()).into()),
            api_listen: "127.0.0.1:0".parse()?,
            agent_listen: "127.0.0.1:0".parse()?,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            chunk_size_bytes: opts.chunk_size,
            agent_cert_ttl_secs: opts.agent_cert_ttl_secs,
            session_ttl_secs: opts.session_ttl_secs,
            redis_url: opts.redis_url.clone().unwrap_or_else(crate::redis_url).into(),
            redis_ca_file: opts.redis_ca_file.clone(),
            scheduler_interval_secs: 1,
            orphan_grace_secs: opts.orphan_grace_secs.unwrap_or(3600),
            metrics_listen: if opts.metrics { Some("127.0.0.1:0".parse()?) } else { None },
            metrics_refresh_interval_secs: 1,
            retention_interval_secs: opts.retention_interval_secs.unwrap_or(if opts.orphan_grace_secs.is_some() {
                1
            } else {
                3600
            }),
            heartbeat_interval_secs: 2,
            admin_password: (!opts.no_admin).then(|| ADMIN_PASSWORD.into()),
            bootstrap_token_file: Some(dir.path().join("bootstrap-token")),
            tls_handshake_timeout_secs: opts.tls_handshake_timeout_secs.unwrap_or(10),
            allow_ambient_credentials: opts.allow_ambient_credentials,
            rpo_interval_secs: opts.rpo_interval_secs.unwrap_or(60),
            notify_interval_secs: 1,
            notify_retry_base_secs: opts.notify_retry_base_secs.unwrap_or(1),
            ..Config::default()
        };
        let config = Config { lease_secs: opts.lease_secs.unwrap_or(config.lease_secs), ..config };
        let controller = dg_controller::app::start(config.clone()).await?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &controller.ca_pem)?;
        Ok(Self {
            api_addr: controller.api_addr,
            agent_addr: controller.agent_addr,
            ca_pem: controller.ca_pem.clone(),
            ca_file,
            controller: Some(controller),
            db,
            dir,
            config,
        })
    }

    /// Stops the controller (the database is dropped with the cluster).
    pub async fn stop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
    }

    /// Agent options for tests: fast reconnects, local storages allowed under the cluster's scratch dir.
    pub fn run_options(&self) -> session::RunOptions {
        session::RunOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            local_roots: vec![self.dir.path().to_owned()],
            tools: Default::default(),
            ..Default::default()
        }
    }

    /// `https://127.0.0.1:<api port>`.
    pub fn api_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_addr.port())
    }

    /// CA fingerprint.
    pub fn ca_fingerprint(&self) -> String {
        self.controller.as_ref().map(|c| c.ca_fingerprint.clone()).unwrap_or_default()
    }

    /// A TLS channel to the operator API.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)).domain_name("127.0.0.1");
        Ok(Channel::from_shared(self.api_endpoint())?.tls_config(tls)?.connect().await?)
    }

    /// Logs in as the bootstrap admin and returns the token.
    pub async fn login(&self) -> anyhow::Result<String> {
        let mut c = AuthServiceClient::new(self.channel().await?);
        let r =
            c.login(pb::LoginRequest { username: "admin".into(), password: ADMIN_PASSWORD.into() }).await?.into_inner();
        Ok(r.token)
    }

    /// Operator clients on one channel.
    pub async fn clients(&self) -> anyhow::Result<Clients> {
        self.clients_at(self.api_addr).await
    }

    /// Operator clients of another replica of this cluster (same CA and database), logged in there.
    pub async fn clients_at(&self, api: SocketAddr) -> anyhow::Result<Clients> {
        Clients::connect(api, &self.ca_pem, ADMIN_PASSWORD).await
    }

    /// Creates a join token, enrolls an agent with it and runs the agent in-process until it is online.
    pub async fn start_agent(&self, c: &mut Clients) -> anyhow::Result<AgentHandle> {
        self.start_agent_with(c, self.run_options()).await
    }

    /// Like [`Cluster::start_agent`] with explicit agent options.
    pub async fn start_agent_with(&self, c: &mut Clients, opts: session::RunOptions) -> anyhow::Result<AgentHandle> {
        let jt =
            c.agents.create_join_token(authed(pb::CreateJoinTokenRequest::default(), &c.token)).await?.into_inner();
        let state_dir = self.dir.path().join(format!("agent-{}", suffix()));
        let dir = StateDir::open(&state_dir)?;
        let id = enroll::enroll(&self.api_endpoint(), &jt.token, &jt.ca_fingerprint, &dir).await?;
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let task = tokio::spawn(async move {
            let _ = session::run(dir, opts, c2).await;
        });
        let handle = AgentHandle { id, state_dir, cancel, task };
        c.wait_agent_status(&handle.id, pb::AgentStatus::Online, Duration::from_secs(30)).await?;
        Ok(handle)
    }

    /// Starts an agent again from its state directory (no enrollment); returns once it is online.
    pub async fn resume_agent(
        &self,
        c: &mut Clients,
        id: &str,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<AgentHandle> {
        let dir = StateDir::open(state_dir)?;
        let cancel = CancellationToken::new();
        let (c2, opts) = (cancel.clone(), self.run_options());
        let task = tokio::spawn(async move {
            let _ = session::run(dir, opts, c2).await;
        });
        let handle = AgentHandle { id: id.to_owned(), state_dir: state_dir.to_owned(), cancel, task };
        c.wait_agent_status(&handle.id, pb::AgentStatus::Online, Duration::from_secs(30)).await?;
        Ok(handle)
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    let a = uuid::Uuid::new_v4();
    let c = uuid::Uuid::new_v4();
    b[..16].copy_from_slice(a.as_bytes());
    b[16..].copy_from_slice(c.as_bytes());
    b
}

/// Authenticated operator clients.
pub struct Clients {
    /// Session token.
    pub token: String,
    /// AgentService.
    pub agents: AgentServiceClient<Channel>,
    /// DatasourceService.
    pub datasources: DatasourceServiceClient<Channel>,
    /// StorageService.
    pub storages: StorageServiceClient<Channel>,
    /// BackupJobService.
    pub jobs: BackupJobServiceClient<Channel>,
    /// ExecutionService.
    pub executions: ExecutionServiceClient<Channel>,
    /// BackupService.
    pub backups: BackupServiceClient<Channel>,
    /// RestoreDrillService.
    pub drills: RestoreDrillServiceClient<Channel>,
    /// NotificationService.
    pub notifications: NotificationServiceClient<Channel>,
}

impl Clients {
    /// Connects to the operator API at `api` (trusting the CA `ca_pem`) and logs in as `admin`.
    pub async fn connect(api: SocketAddr, ca_pem: &str, admin_password: &str) -> anyhow::Result<Clients> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("127.0.0.1");
        let ch = Channel::from_shared(format!("https://127.0.0.1:{}", api.port()))?.tls_config(tls)?.connect().await?;
        let token = AuthServiceClient::new(ch.clone())
            .login(pb::LoginRequest { username: "admin".into(), password: admin_password.into() })
            .await?
            .into_inner()
            .token;
        Ok(Clients {
            token,
            agents: AgentServiceClient::new(ch.clone()),
            datasources: DatasourceServiceClient::new(ch.clone()),
            storages: StorageServiceClient::new(ch.clone()),
            jobs: BackupJobServiceClient::new(ch.clone()),
            executions: ExecutionServiceClient::new(ch.clone()),
            backups: BackupServiceClient::new(ch.clone()),
            drills: RestoreDrillServiceClient::new(ch.clone()),
            notifications: NotificationServiceClient::new(ch),
        })
    }

    /// Waits until an agent reports `status`.
    pub async fn wait_agent_status(
        &mut self,
        id: &str,
        status: pb::AgentStatus,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let a =
                self.agents.get_agent(authed(pb::GetAgentRequest { id: id.into() }, &self.token)).await?.into_inner();
            if a.status == status as i32 {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "agent {id} not {status:?} in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an execution ends; returns it.
    pub async fn wait_execution(&mut self, id: &str, limit: Duration) -> anyhow::Result<pb::Execution> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let e = self
                .executions
                .get_execution(authed(pb::GetExecutionRequest { id: id.into() }, &self.token))
                .await?
                .into_inner();
            if matches!(
                pb::ExecutionStatus::try_from(e.status),
                Ok(pb::ExecutionStatus::Completed | pb::ExecutionStatus::Failed | pb::ExecutionStatus::Cancelled)
            ) {
                return Ok(e);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "execution {id} still {} after {limit:?}",
                e.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The execution's log as text.
    pub async fn logs(&mut self, id: &str) -> anyhow::Result<String> {
        let r = self
            .executions
            .list_execution_logs(authed(
                pb::ListExecutionLogsRequest { execution_id: id.into(), page_size: 1000, page_token: String::new() },
                &self.token,
            ))
            .await?
            .into_inner();
        Ok(r.lines.iter().map(|l| format!("[{}] {}", l.level, l.message)).collect::<Vec<_>>().join("\n"))
    }

    /// Creates a local storage on an agent, a PostgreSQL datasource (on `server`, with its login) on the same
    /// agent and a job using both.
    pub async fn setup_pg_job(
        &mut self,
        agent: &str,
        storage_dir: &std::path::Path,
        database: &str,
        server: &DbServer,
    ) -> anyhow::Result<(pb::Datasource, pb::Storage, pb::BackupJob)> {
        let t = self.token.clone();
        let storage = self
            .storages
            .create_storage(authed(
                pb::CreateStorageRequest {
                    name: format!("local-{}", suffix()),
                    config: Some(pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
                        path: storage_dir.to_string_lossy().into_owned(),
                        agent_id: agent.into(),
                    })),
                    ..Default::default()
                },
                &t,
            ))
            .await?
            .into_inner();
        let ds = self
            .datasources
            .create_datasource(authed(
                pb::CreateDatasourceRequest {
                    name: format!("pg-{}", suffix()),
                    engine: pb::Engine::Postgres as i32,
                    host: server.host.clone(),
                    port: u32::from(server.port),
                    database: database.into(),
                    username: server.user.clone(),
                    password: server.password.clone(),
                    tls_mode: pb::TlsMode::Disable as i32,
                    agent_id: agent.into(),
                    labels: Default::default(),
                },
                &t,
            ))
            .await?
            .into_inner();
        let job = self
            .jobs
            .create_backup_job(authed(
                pb::CreateBackupJobRequest {
                    name: format!("job-{}", suffix()),
                    datasource_id: ds.id.clone(),
                    storage_ids: vec![storage.id.clone()],
                    storage_strategy: pb::StorageStrategy::Fallback as i32,
                    compression_level: 3,
                    ..Default::default()
                },
                &t,
            ))
            .await?
            .into_inner();
        Ok((ds, storage, job))
    }

    /// RunNow and wait for the end.
    pub async fn run_job(&mut self, job: &str) -> anyhow::Result<pb::Execution> {
        let ex = self.jobs.run_now(authed(pb::RunNowRequest { job_id: job.into() }, &self.token)).await?.into_inner();
        self.wait_execution(&ex.id, Duration::from_secs(300)).await
    }

    /// Creates a local storage on an agent.
    pub async fn local_storage(&mut self, agent: &str, dir: &std::path::Path) -> anyhow::Result<pb::Storage> {
        let config = pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
            path: dir.to_string_lossy().into_owned(),
            agent_id: agent.into(),
        });
        let req = pb::CreateStorageRequest {
            name: format!("local-{}", suffix()),
            config: Some(config),
            ..Default::default()
        };
        Ok(self.storages.create_storage(authed(req, &self.token)).await?.into_inner())
    }

    /// Creates a datasource (TLS off) bound to an agent, on the test server of its engine with the tests' login.
    pub async fn datasource(
        &mut self,
        engine: pb::Engine,
        agent: &str,
        database: &str,
    ) -> anyhow::Result<pb::Datasource> {
        let server = if engine == pb::Engine::Postgres { crate::pg_server() } else { crate::mariadb_server() };
        let req = pb::CreateDatasourceRequest {
            name: format!("ds-{}", suffix()),
            engine: engine as i32,
            host: server.host,
            port: u32::from(server.port),
            database: database.into(),
            username: server.user,
            password: server.password,
            tls_mode: pb::TlsMode::Disable as i32,
            agent_id: agent.into(),
            ..Default::default()
        };
        Ok(self.datasources.create_datasource(authed(req, &self.token)).await?.into_inner())
    }

    /// Creates a job over `storages` with a strategy and an optional encryption key id.
    pub async fn job(
        &mut self,
        datasource: &str,
        storages: &[&pb::Storage],
        strategy: pb::StorageStrategy,
        key: &str,
    ) -> anyhow::Result<pb::BackupJob> {
        let req = pb::CreateBackupJobRequest {
            name: format!("job-{}", suffix()),
            datasource_id: datasource.into(),
            storage_ids: storages.iter().map(|s| s.id.clone()).collect(),
            storage_strategy: strategy as i32,
            encryption_key_id: key.into(),
            ..Default::default()
        };
        Ok(self.jobs.create_backup_job(authed(req, &self.token)).await?.into_inner())
    }

    /// Restores a backup into `database` (created when missing) and waits for the end.
    pub async fn restore_into(&mut self, backup: &str, database: &str) -> anyhow::Result<pb::Execution> {
        self.restore_with(pb::RestoreBackupRequest {
            backup_id: backup.into(),
            target_database: database.into(),
            create_database: true,
            confirm_target_database: database.into(),
            ..Default::default()
        })
        .await
    }

    /// Runs any restore request and waits for the end.
    pub async fn restore_with(&mut self, req: pb::RestoreBackupRequest) -> anyhow::Result<pb::Execution> {
        let r = self.backups.restore_backup(authed(req, &self.token)).await?.into_inner();
        self.wait_execution(&r.id, Duration::from_secs(300)).await
    }
}
