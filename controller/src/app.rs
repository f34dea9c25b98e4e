//! Controller start-up and shutdown. Start order: crypto provider, master key, database (migrations under an
//! advisory lock), CA, bootstrap admin, server certificate, listeners, services, background tasks. Shutdown
//! order: stop accepting and close agent sessions (root token), let servers and tasks drain (10 s deadline),
//! close the database pool.

use secrecy::ExposeSecret;
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use dg_proto::v1::{
    agent_enrollment_service_server::AgentEnrollmentServiceServer, agent_service_server::AgentServiceServer,
    agent_session_service_server::AgentSessionServiceServer, approval_service_server::ApprovalServiceServer,
    audit_service_server::AuditServiceServer, auth_service_server::AuthServiceServer,
    backup_job_service_server::BackupJobServiceServer, backup_service_server::BackupServiceServer,
    datasource_service_server::DatasourceServiceServer, execution_service_server::ExecutionServiceServer,
    health_service_server::HealthServiceServer, notification_service_server::NotificationServiceServer,
    restore_drill_service_server::RestoreDrillServiceServer, role_service_server::RoleServiceServer,
    storage_service_server::StorageServiceServer, token_service_server::TokenServiceServer,
    user_service_server::UserServiceServer,
};
use fred::interfaces::ClientLike as _;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tracing::info;

use crate::grpc::agent::task::{AgentSettings, SessionEnv};
use crate::session::{deliver::Sessions, registry::AgentRegistry, rpc::AgentRpc};
use crate::{
    config::Config,
    coordination::{Coordination, RedisWatchTask},
    db::Db,
    grpc::{
        Ctx,
        agent::{EnrollmentSvc, SessionSvc},
        auth_layer::AuthLayer,
        operator::OperatorSvc,
    },
    pki::Pki,
    redis::RedisConnection,
    service::{
        agents::AgentsService,
        attempts::AttemptEnder,
        auth::AuthService,
        backups::BackupsService,
        catalog::CatalogService,
        dispatch::{DispatchSettings, DispatchTask, DispatchWaker, ReaperTask},
        drills::{DrillService, DrillTask},
        executions::ExecutionsService,
        health::{HealthService, HealthTask},
        import::{ImportReport, ImportRequest, ImportService},
        notify::{
            Notifier,
            channels::NotificationService,
            delivery::{NotificationTask, Sender},
            rpo::{RpoHandle, RpoTask},
        },
        relay::RelayTask,
        retention::{RetentionService, RetentionTask},
        scheduler::{self, SchedulerTask},
    },
};

/// Largest request accepted from any client.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// HTTP/2 receive window of one stream on the agent port.
const STREAM_WINDOW: u32 = 1024 * 1024;

/// A running controller.
pub struct RunningController {
    /// Bound operator/enrollment address.
    pub api_addr: SocketAddr,
    /// Bound agent address.
    pub agent_addr: SocketAddr,
    /// CA certificate (PEM), for operators' `-cacert`.
    pub ca_pem: String,
    /// CA fingerprint agents pin.
    pub ca_fingerprint: String,
    /// Where Prometheus metrics are served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    db: Db,
}

impl RunningController {
    /// Stops everything in the documented order.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown deadline passed; abandoning remaining tasks");
        }
        let _ = self.db.close().await;
        info!("controller stopped");
    }

    /// A token cancelled when shutdown starts.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Connects and migrates (the `migrate` command).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = Db::connect(config.database_url.expose_secret()).await.context("connect to the controller database")?;
    db.migrate().await.context("apply migrations")?;
    db.close().await?;
    Ok(())
}

/// The CA certificate, creating the CA on first use (the `print-ca` command).
pub async fn ca_pem(config: &Config) -> anyhow::Result<String> {
    let key = config.master_key()?;
    let db = Db::connect(config.database_url.expose_secret()).await.context("connect to the controller database")?;
    db.migrate().await.context("apply migrations")?;
    let pki = Pki::load_or_create(&db, &key).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(pki.ca_pem().to_owned())
}

/// A new one-time bootstrap token for `AuthService/Setup`, replacing a lost one (the `bootstrap-token`
/// command); refused once an admin exists.
pub async fn bootstrap_token(config: &Config) -> anyhow::Result<String> {
    let db = Db::connect(config.database_url.expose_secret()).await.context("connect to the controller database")?;
    db.migrate().await.context("apply migrations")?;
    let auth = AuthService::new(db.clone(), Duration::from_secs(config.session_ttl_secs));
    let token = auth.new_bootstrap_token().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    db.close().await?;
    Ok(token)
}

/// Imports a storage's backups into the catalog (the `import` command): the same service the
/// `BackupService/ImportCatalog` RPC calls, with this configuration's database and master key, no server.
pub async fn import(config: &Config, r: &ImportRequest) -> anyhow::Result<ImportReport> {
    let key = config.master_key()?;
    let db = Db::connect(config.database_url.expose_secret()).await.context("connect to the controller database")?;
    db.migrate().await.context("apply migrations")?;
    let report = ImportService::new(db.clone(), key).import(r).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    db.close().await?;
    Ok(report)
}

/// Starts the controller.
pub async fn start(config: Config) -> anyhow::Result<RunningController> {
    dg_common::tls::install_crypto_provider();
    let key = config.master_key()?;
    let db = Db::connect(config.database_url.expose_secret()).await.context("connect to the controller database")?;
    db.migrate().await.context("apply migrations")?;
    let pki = Arc::new(Pki::load_or_create(&db, &key).await.map_err(|e| anyhow::anyhow!("load CA: {e}"))?);

    let auth =
        AuthService::new(db.clone(), Duration::from_secs(config.session_ttl_secs)).with_oidc(config.oidc.clone());
    match &config.admin_password {
        Some(pw) => auth
            .bootstrap(&config.admin_username, pw.expose_secret())
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap admin: {e}"))?,
        // No admin configured: Setup needs the one-time bootstrap token handed out here (before the API
        // listens, so it exists by the time anyone can call Setup).
        None => {
            auth.prepare_bootstrap(config.bootstrap_token_file.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("bootstrap token: {e}"))?;
        }
    }

    let identity = pki.server_identity(&config.server_names).map_err(|e| anyhow::anyhow!("server cert: {e}"))?;
    let identity = Identity::from_pem(&identity.chain_pem, &identity.key_pem);
    let api_listener =
        TcpListener::bind(config.api_listen).await.with_context(|| format!("bind {}", config.api_listen))?;
    let agent_listener =
        TcpListener::bind(config.agent_listen).await.with_context(|| format!("bind {}", config.agent_listen))?;
    let api_addr = api_listener.local_addr()?;
    let agent_addr = agent_listener.local_addr()?;
    let first_name = config.server_names.first().cloned().unwrap_or_else(|| "localhost".into());
    let agent_endpoint = if config.agent_endpoint.is_empty() {
        format!("https://{first_name}:{}", agent_addr.port())
    } else {
        config.agent_endpoint.clone()
    };
    let api_endpoint = format!("https://{first_name}:{}", api_addr.port());

    let registry = AgentRegistry::default();
    let rpc = AgentRpc::new(registry.clone());
    let waker = DispatchWaker::default();
    let lease_secs = i64::try_from(config.lease_secs).unwrap_or(60);
    let redis_conn = RedisConnection::from_config(&config)?;
    let redis = redis_conn.client().context("redis client")?;
    let rpo_wake = RpoHandle::default();
    let notifier = Notifier::new(db.clone(), rpo_wake.clone());
    let catalog =
        CatalogService::new(db.clone(), key.clone(), rpc.clone(), config.allow_ambient_credentials, notifier.clone());
    let coord = Coordination::new(redis.clone());
    let sessions = Sessions::new(registry.clone(), coord.clone());
    let metrics = crate::metrics::Metrics::new().context("metrics")?;
    let sender = Sender::new(
        db.clone(),
        key.clone(),
        Duration::from_secs(config.notify_retry_base_secs.max(1)),
        Duration::from_secs(config.notify_retry_max_secs.max(1)),
        metrics.clone(),
    )?;
    let ender = AttemptEnder::new(db.clone(), waker.clone(), metrics.clone(), notifier.clone());
    let backups = BackupsService::new(db.clone(), key.clone(), rpc.clone());
    let (retention_task, retention) = RetentionTask::new(
        db.clone(),
        backups.clone(),
        Duration::from_secs(config.retention_interval_secs.max(1)),
        Duration::from_secs(config.orphan_grace_secs),
    );
    let executions = ExecutionsService::new(
        db.clone(),
        waker.clone(),
        sessions.clone(),
        coord.clone(),
        retention,
        metrics.clone(),
        ender.clone(),
    );
    let (agents, heartbeat_task) = AgentsService::new(
        db.clone(),
        pki.clone(),
        sessions.clone(),
        ender.clone(),
        Duration::from_secs(config.agent_cert_ttl_secs),
        agent_endpoint,
        api_endpoint,
    );
    let ctx = Ctx {
        access: crate::service::access::AccessService::new(
            db.clone(),
            auth.clone(),
            Duration::from_secs(config.approval_ttl_secs),
            &config.protected_labels,
        ),
        auth: auth.clone(),
        agents,
        catalog: catalog.clone(),
        retention: RetentionService::new(db.clone()),
        import: ImportService::new(db.clone(), key.clone()),
        executions: executions.clone(),
        backups,
        drills: DrillService::new(db.clone(), executions.clone(), metrics.clone(), notifier.clone()),
        health: HealthService::new(db.clone(), registry.clone(), redis.clone()),
        notifications: NotificationService::new(db.clone(), key.clone(), notifier.clone(), sender.clone()),
        db: db.clone(),
        metrics: metrics.clone(),
    };
    let session_env = SessionEnv {
        agents: ctx.agents.clone(),
        executions: ctx.executions.clone(),
        sessions: sessions.clone(),
        rpc,
        coord: coord.clone(),
        metrics: metrics.clone(),
        settings: Arc::new(AgentSettings { heartbeat: config.heartbeat_interval(), lease_secs }),
    };

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Operator API + enrollment: TLS, no client certificate.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<BackupJobServiceServer<OperatorSvc>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dg_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dg_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let op = OperatorSvc::new(ctx.clone());
    let handshake = Duration::from_secs(config.tls_handshake_timeout_secs);
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let api = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity.clone()).timeout(handshake))?
        .tcp_keepalive(secs(config.api_tcp_keepalive_secs))
        .http2_keepalive_interval(secs(config.api_http2_keepalive_secs))
        .http2_keepalive_timeout(secs(config.api_http2_keepalive_secs))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .layer(AuthLayer::new(auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(AgentServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(DatasourceServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(StorageServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(BackupJobServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(ExecutionServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(BackupServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(HealthServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(AuditServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(RestoreDrillServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(NotificationServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(UserServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(RoleServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(TokenServiceServer::new(op.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(ApprovalServiceServer::new(op).max_decoding_message_size(MAX_MESSAGE))
        .add_service(
            AgentEnrollmentServiceServer::new(EnrollmentSvc::new(ctx.clone())).max_decoding_message_size(64 * 1024),
        );
    let c = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = api.serve_with_incoming_shutdown(TcpIncoming::from(api_listener), c.cancelled()).await {
            tracing::error!(error = %e, "operator API server failed");
        }
    });

    // Agent sessions: mTLS with the controller CA as the only client root. The connection window is several
    // stream windows wide, so object uploads a slow reader holds back (one stream window each) never take
    // the whole window of a connection.
    let agent_tls = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(pki.ca_pem()))
        .timeout(handshake);
    let agent_server = Server::builder()
        .tls_config(agent_tls)?
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(STREAM_WINDOW * 8))
        .add_service(
            AgentSessionServiceServer::new(SessionSvc::new(session_env, cancel.clone(), tracker.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        );
    let c = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) =
            agent_server.serve_with_incoming_shutdown(TcpIncoming::from(agent_listener), c.cancelled()).await
        {
            tracing::error!(error = %e, "agent server failed");
        }
    });

    let waker_for_scheduler = waker.clone();
    let waker_for_relay = waker.clone();
    let dispatch = DispatchTask {
        db: db.clone(),
        key,
        catalog: catalog.clone(),
        sessions: sessions.clone(),
        waker,
        settings: DispatchSettings {
            lease_secs,
            chunk_size: config.chunk_size_bytes,
            upload_concurrency: config.upload_concurrency,
            compression_workers: config.compression_workers,
            verify_read_rate: config.verify_read_rate_bytes_per_second,
        },
        coord: coord.clone(),
        ender: ender.clone(),
    };
    tracker.spawn(dispatch.run(cancel.clone()));
    tracker.spawn(heartbeat_task.run(cancel.clone()));
    tracker.spawn(ReaperTask::new(db.clone(), ender, lease_secs, config.heartbeat_interval()).run(cancel.clone()));
    tracker.spawn(RedisWatchTask::new(coord.clone(), metrics.clone()).run(cancel.clone()));
    let relay = RelayTask::new(redis_conn.clone(), coord.replica().to_owned(), sessions, waker_for_relay);
    tracker.spawn(relay.run(cancel.clone()));
    if let Some(oidc) = auth.oidc_shared() {
        tracker.spawn(crate::service::auth::oidc_keys_task(oidc, cancel.clone()));
    }
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("bind metrics {addr}"))?;
            let bound = l.local_addr()?;
            let refresh = Duration::from_secs(config.metrics_refresh_interval_secs.max(1));
            tracker.spawn(
                crate::service::gauges::GaugesTask::new(db.clone(), metrics.clone(), refresh).run(cancel.clone()),
            );
            tracker.spawn(crate::metrics::serve(l, metrics, cancel.clone()));
            Some(bound)
        }
        None => None,
    };
    let scheduler_tick = Duration::from_secs(config.scheduler_interval_secs.max(1));
    let leader = scheduler::leader_key(&pki.fingerprint());
    let drill_task = DrillTask::new(ctx.drills.clone(), coord.clone(), scheduler_tick, format!("{leader}:drills"));
    tracker.spawn(drill_task.run(cancel.clone()));
    tracker
        .spawn(SchedulerTask::new(db.clone(), coord, waker_for_scheduler, scheduler_tick, leader).run(cancel.clone()));
    tracker.spawn(retention_task.run(cancel.clone()));
    let notify_tick = Duration::from_secs(config.notify_interval_secs.max(1));
    tracker.spawn(NotificationTask::new(db.clone(), sender, notify_tick).run(cancel.clone()));
    let rpo_tick = Duration::from_secs(config.rpo_interval_secs.max(1));
    let offline = Duration::from_secs(config.agent_offline_secs.max(1));
    tracker.spawn(RpoTask::new(db.clone(), notifier, rpo_tick, rpo_wake, offline).run(cancel.clone()));
    let health_interval = Duration::from_secs(config.health_interval_secs.max(1));
    tracker.spawn(HealthTask::new(db.clone(), catalog, registry, health_interval).run(cancel.clone()));
    let quit_redis = redis.clone();
    let c = cancel.clone();
    tracker.spawn(async move {
        c.cancelled().await;
        let _ = quit_redis.quit().await;
    });

    info!(
        %api_addr,
        %agent_addr,
        ca = %pki.fingerprint(),
        redis = %redis_conn.url(),
        redis_tls = redis_conn.uses_tls(),
        "controller started"
    );
    Ok(RunningController {
        api_addr,
        agent_addr,
        ca_pem: pki.ca_pem().to_owned(),
        ca_fingerprint: pki.fingerprint(),
        metrics_addr,
        cancel,
        tracker,
        db,
    })
}
