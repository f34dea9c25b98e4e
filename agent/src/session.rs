//! `dg-agent run`: keeps one mTLS session to the controller. Hello (protocol version, tools) -> Welcome ->
//! heartbeats, Assign and Cancel. Any disconnect ends the session's running jobs (the controller fails their
//! attempts) and reconnects after a jittered exponential backoff. The certificate is renewed over the same
//! connection two thirds into its life; the new one is used from the next connection on.

use std::time::{Duration, Instant};

use dg_common::{backoff::reconnect_delays, tls};
use dg_proto::{
    AGENT_PROTOCOL_VERSION,
    v1::{self as pb, agent_session_service_client::AgentSessionServiceClient, controller_message::Kind},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Identity};
use tracing::{info, warn};

use crate::{
    context::AgentContext,
    enroll,
    error::ConnectionError,
    executor::Executor,
    state::{AgentState, StateDir},
    tools,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// First retry delay.
    pub min_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Directories local storages may live under.
    pub local_roots: Vec<std::path::PathBuf>,
    /// Where database client tools are looked up first.
    pub tools: tools::Tools,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            local_roots: vec![std::path::PathBuf::from("/var/backups/dataguardian")],
            tools: tools::Tools::default(),
        }
    }
}

/// Runs sessions until `cancel`.
pub async fn run(dir: StateDir, opts: RunOptions, cancel: CancellationToken) -> Result<(), ConnectionError> {
    let state = dir.load()?;
    info!(agent_id = %state.agent_id, endpoint = %state.agent_endpoint, "agent starting");
    let mut delays = reconnect_delays(opts.min_backoff, opts.max_backoff);
    loop {
        let started = Instant::now();
        match session_once(&dir, &state, &opts, &cancel).await {
            Ok(()) => info!("session ended"),
            Err(e) => warn!(error = %e, "session failed"),
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            delays = reconnect_delays(opts.min_backoff, opts.max_backoff);
        }
        let d = delays.next().unwrap_or(opts.max_backoff);
        info!(delay_ms = d.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(d) => {},
        }
    }
}

/// Completes a renewal interrupted between writing the new key and certificate.
fn settle_renewal(dir: &StateDir) -> Result<(), ConnectionError> {
    let (k, c) = (dir.path("key.pem.next"), dir.path("cert.pem.next"));
    if k.exists() && c.exists() {
        std::fs::rename(&k, dir.path("key.pem"))?;
        std::fs::rename(&c, dir.path("cert.pem"))?;
    }
    Ok(())
}

async fn connect(dir: &StateDir, state: &AgentState) -> Result<Channel, ConnectionError> {
    settle_renewal(dir)?;
    let identity = Identity::from_pem(dir.read("cert.pem")?, dir.read("key.pem")?);
    enroll::channel(&state.agent_endpoint, &dir.read("ca.pem")?, Some(identity)).await
}

/// Unix time at which the current certificate should be renewed.
fn renewal_due(dir: &StateDir) -> Result<i64, ConnectionError> {
    let der = tls::certs_from_pem(&dir.read("cert.pem")?).map_err(|e| ConnectionError::Tls(e.to_string()))?.remove(0);
    let (nb, na) = tls::validity_unix(&der).map_err(|e| ConnectionError::Tls(e.to_string()))?;
    Ok(tls::renewal_due_unix(nb, na))
}

async fn renew(client: &mut AgentSessionServiceClient<Channel>, dir: &StateDir) -> Result<(), ConnectionError> {
    let (key, csr_pem) = enroll::new_key_and_csr()?;
    let resp = client.renew(pb::RenewRequest { csr_pem }).await?.into_inner();
    dir.write("key.pem.next", key.serialize_pem().as_bytes(), 0o600)?;
    dir.write("cert.pem.next", resp.certificate_pem.as_bytes(), 0o600)?;
    settle_renewal(dir)?;
    info!(not_after = resp.not_after.map(|t| t.seconds).unwrap_or_default(), "certificate renewed");
    Ok(())
}

async fn session_once(
    dir: &StateDir,
    state: &AgentState,
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), ConnectionError> {
    let channel = connect(dir, state).await?;
    let mut client = AgentSessionServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
    let hello = pb::Hello {
        protocol_version: AGENT_PROTOCOL_VERSION,
        agent_version: crate::VERSION.to_owned(),
        hostname: enroll::hostname(),
        tools: tools::discover(&opts.tools).await,
        running: Vec::new(),
    };
    tx.send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Hello(hello)) })
        .await
        .map_err(|_| ConnectionError::Config("session channel closed".into()))?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
        Ok(Ok(Some(pb::ControllerMessage { kind: Some(Kind::Welcome(w)) }))) => w,
        Ok(Ok(_)) => {
            return Err(ConnectionError::Config("controller did not answer Hello with Welcome".into()));
        }
        Ok(Err(s)) => return Err(s.into()),
        Err(_) => return Err(ConnectionError::Config("no Welcome within 15 s".into())),
    };
    let hb = welcome
        .heartbeat_interval
        .and_then(|d| u64::try_from(d.seconds).ok())
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(10), Duration::from_secs);
    info!(agent_id = %welcome.agent_id, heartbeat_s = hb.as_secs(), "session established");

    let session_cancel = cancel.child_token();
    let ctx = AgentContext::new(dir.root(), opts.local_roots.clone(), opts.tools.clone());
    let executor = Executor::new(tx.clone(), session_cancel.clone(), ctx.clone());
    let mut heartbeat = tokio::time::interval(hb);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_check = tokio::time::interval(Duration::from_secs(5));
    renew_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                let msg = pb::Heartbeat { sent_at: None, running: executor.running() };
                if tx.send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(msg)) }).await.is_err() {
                    break Ok(());
                }
            }
            _ = renew_check.tick() => {
                if chrono::Utc::now().timestamp() >= renewal_due(dir)?
                    && let Err(e) = renew(&mut client, dir).await
                {
                    warn!(error = %e, "certificate renewal failed; retrying");
                }
            }
            m = inbound.message() => match m {
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Assign(a)) })) => {
                    info!(execution_id = %a.execution_id, attempt = a.attempt, "assignment received");
                    executor.assign(a);
                }
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Cancel(c)) })) => {
                    if let Some(r) = c.execution {
                        info!(execution_id = %r.execution_id, reason = %c.reason, "cancel received");
                        executor.cancel(&r.execution_id, r.attempt);
                    }
                }
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Request(r)) })) => {
                    tokio::spawn(crate::requests::handle(r, tx.clone(), ctx.clone()));
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(s) => break Err(ConnectionError::Status(s)),
            }
        }
    };
    session_cancel.cancel();
    executor.drain(Duration::from_secs(10)).await;
    result
}
