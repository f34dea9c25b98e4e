//! `dg-agent run`: keeps one mTLS session to the controller. Hello (protocol version, tools, the attempts
//! still running) -> Welcome -> heartbeats, Assign, Cancel, Abort and Ack. A disconnect does not stop running
//! attempts: the agent reconnects after a jittered exponential backoff and lists them in its next Hello (the
//! controller keeps them while their leases hold, else aborts them); after `max_offline` without a session
//! they are cancelled. The certificate is renewed over the same connection two thirds into its life; the new
//! one supersedes the old (the controller refuses a superseded certificate), so the agent then ends the
//! session and reconnects with it.
//!
//! This module is the agent's protocol edge: an incoming `Assign`, `Cancel` or `Abort` is converted into the
//! protocol model (`Assignment`, `ExecutionRef`) here, and is the only validation of it; an assignment that
//! does not convert is not run but reported failed. Jobs' reports and the heartbeats share one bounded,
//! ordered channel ([`Outbound`]), and [`ReportForwardTask`] is the one place where they leave the agent as
//! wire messages, numbered by the [`Outbox`] when they need an acknowledgement; a new session first sends
//! again whatever was not acknowledged. Requests (`requests.rs`) and enrollment/renewal keep their own `pb`
//! envelopes; the bytes of object reads leave on `SendObject` calls over a second connection, never on the
//! session stream.

use std::time::{Duration, Instant};

use dg_common::{
    backoff::reconnect_delays,
    protocol::{Assignment, ExecutionRef, ProtocolError},
    tls,
};
use dg_proto::{
    AGENT_PROTOCOL_VERSION,
    v1::{self as pb, agent_session_service_client::AgentSessionServiceClient, controller_message::Kind},
};
use std::sync::Arc;

use tokio::sync::{Mutex as AsyncMutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Identity};
use tracing::{info, warn};

use crate::{
    context::AgentContext,
    enroll,
    error::ConnectionError,
    executor::Executor,
    outbox::{Numbered, Outbox},
    report::Outbound,
    state::{AgentState, StateDir},
    tools,
};

/// Wire messages waiting for the stream (reports, heartbeats, request answers).
const OUTBOUND_QUEUE: usize = 256;
/// Reports waiting for the forwarder.
const REPORT_QUEUE: usize = 256;

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
    /// Running attempts are cancelled after this long without a session (longer than any lease).
    pub max_offline: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            local_roots: vec![std::path::PathBuf::from("/var/backups/dataguardian")],
            tools: tools::Tools::default(),
            max_offline: Duration::from_secs(600),
        }
    }
}

/// What outlives a session: the executor with its running attempts, the queue their reports wait in, and
/// the outbox of reports not yet acknowledged.
struct Agent {
    executor: Executor,
    outbox: Outbox,
    queue: Arc<AsyncMutex<mpsc::Receiver<Outbound>>>,
    ctx: AgentContext,
}

/// Runs sessions until `cancel`.
pub async fn run(dir: StateDir, opts: RunOptions, cancel: CancellationToken) -> Result<(), ConnectionError> {
    let state = dir.load()?;
    info!(agent_id = %state.agent_id, endpoint = %state.agent_endpoint, "agent starting");
    let ctx = AgentContext::new(dir.root(), opts.local_roots.clone(), opts.tools.clone());
    let (reports, queue) = mpsc::channel::<Outbound>(REPORT_QUEUE);
    let outbox = Outbox::default();
    let jobs = cancel.child_token();
    let agent = Agent {
        executor: Executor::new(reports, outbox.clone(), jobs.clone(), ctx.clone()),
        outbox,
        queue: Arc::new(AsyncMutex::new(queue)),
        ctx,
    };
    let mut delays = reconnect_delays(opts.min_backoff, opts.max_backoff);
    let mut last_session = Instant::now();
    loop {
        let started = Instant::now();
        match session_once(&dir, &state, &opts, &cancel, &agent).await {
            Ok(true) => {
                info!("session ended");
                last_session = Instant::now();
            }
            Ok(false) => info!("session ended before it was established"),
            Err(e) => warn!(error = %e, "session failed"),
        }
        if cancel.is_cancelled() {
            break;
        }
        if last_session.elapsed() > opts.max_offline && !agent.executor.running().is_empty() {
            warn!(offline_s = last_session.elapsed().as_secs(), "no session for too long; cancelling running attempts");
            agent.executor.cancel_all();
        }
        if started.elapsed() > Duration::from_secs(60) {
            delays = reconnect_delays(opts.min_backoff, opts.max_backoff);
        }
        let d = delays.next().unwrap_or(opts.max_backoff);
        info!(delay_ms = d.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(d) => {},
        }
    }
    jobs.cancel();
    agent.executor.drain(Duration::from_secs(10)).await;
    Ok(())
}

/// Settles the key and certificate after a renewal, wherever a kill interrupted it. A renewal writes
/// `key.pem.next` (before asking), then `cert.pem.next` (the answer), then renames the key and then the
/// certificate into place. At start, a `cert.pem.next` whose public key matches `key.pem.next` or `key.pem`
/// is installed with that key (so a kill between the two renames, with the new key already in place, is
/// finished here); anything else left over belongs to a renewal that never got its certificate and is removed.
fn settle_renewal(dir: &StateDir) -> Result<(), ConnectionError> {
    let (key_next, cert_next) = (dir.path("key.pem.next"), dir.path("cert.pem.next"));
    if let Ok(cert) = std::fs::read_to_string(&cert_next) {
        for key in [&key_next, &dir.path("key.pem")] {
            if std::fs::read_to_string(key).is_ok_and(|k| key_matches(&k, &cert)) {
                if *key == key_next {
                    std::fs::rename(&key_next, dir.path("key.pem"))?;
                }
                std::fs::rename(&cert_next, dir.path("cert.pem"))?;
                break;
            }
        }
    }
    for leftover in [key_next, cert_next] {
        if leftover.exists() {
            warn!(file = %leftover.display(), "removing what an interrupted certificate renewal left");
            std::fs::remove_file(leftover)?;
        }
    }
    Ok(())
}

/// Whether the certificate (PEM) is for the key (PEM).
fn key_matches(key_pem: &str, cert_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else { return false };
    let Some(der) = tls::certs_from_pem(cert_pem).ok().and_then(|mut c| (!c.is_empty()).then(|| c.remove(0))) else {
        return false;
    };
    x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, cert)| {
        cert.public_key().subject_public_key.data.as_ref() == rcgen::PublicKeyData::der_bytes(&key)
    })
}

async fn connect(dir: &StateDir, state: &AgentState) -> Result<Channel, ConnectionError> {
    settle_renewal(dir)?;
    let identity = Identity::from_pem(dir.read("cert.pem")?, dir.read("key.pem")?);
    enroll::channel(&state.agent_endpoint, &dir.read("ca.pem")?, Some(identity)).await
}

/// The client object uploads (`SendObject`) use: a connection of their own, opened on first use, so bulk
/// bytes never share the session's HTTP/2 connection window with its heartbeats and reports.
fn uploads_client(dir: &StateDir, state: &AgentState) -> Result<AgentSessionServiceClient<Channel>, ConnectionError> {
    let identity = Identity::from_pem(dir.read("cert.pem")?, dir.read("key.pem")?);
    Ok(AgentSessionServiceClient::new(enroll::lazy_channel(&state.agent_endpoint, &dir.read("ca.pem")?, identity)?))
}

/// Unix time at which the current certificate should be renewed.
fn renewal_due(dir: &StateDir) -> Result<i64, ConnectionError> {
    let der = tls::certs_from_pem(&dir.read("cert.pem")?).map_err(|e| ConnectionError::Tls(e.to_string()))?.remove(0);
    let (nb, na) = tls::validity_unix(&der).map_err(|e| ConnectionError::Tls(e.to_string()))?;
    Ok(tls::renewal_due_unix(nb, na))
}

async fn renew(client: &mut AgentSessionServiceClient<Channel>, dir: &StateDir) -> Result<(), ConnectionError> {
    let (key, csr_pem) = enroll::new_key_and_csr()?;
    dir.write("key.pem.next", key.serialize_pem().as_bytes(), 0o600)?;
    let resp = client.renew(pb::RenewRequest { csr_pem }).await?.into_inner();
    dir.write("cert.pem.next", resp.certificate_pem.as_bytes(), 0o600)?;
    std::fs::rename(dir.path("key.pem.next"), dir.path("key.pem"))?;
    std::fs::rename(dir.path("cert.pem.next"), dir.path("cert.pem"))?;
    info!(not_after = resp.not_after.map(|t| t.seconds).unwrap_or_default(), "certificate renewed");
    Ok(())
}

/// Moves the jobs' reports and the heartbeats into one session's stream, in queue order: the one place where
/// they leave the agent. First it sends again every report the controller has not acknowledged (from an
/// earlier session, or queued while there was none), then what the queue holds, and every second the
/// reports the controller asked to have sent again. The queue outlives the session: the next session's
/// forwarder takes it over.
struct ReportForwardTask {
    queue: Arc<AsyncMutex<mpsc::Receiver<Outbound>>>,
    outbox: Outbox,
    outbound: mpsc::Sender<pb::AgentMessage>,
}

/// A numbered report as the wire message.
fn wire_report(m: Numbered) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(m.report.into()), report_seq: m.seq }
}

impl ReportForwardTask {
    async fn run(self) {
        let mut queue = self.queue.lock().await;
        for m in self.outbox.unacked() {
            if self.outbound.send(wire_report(m)).await.is_err() {
                return;
            }
        }
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let messages = tokio::select! {
                next = queue.recv() => match next {
                    Some(Outbound::Report(report)) => vec![wire_report(self.outbox.stamp(*report))],
                    Some(Outbound::Heartbeat(running)) => vec![pb::AgentMessage {
                        kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
                            sent_at: None,
                            running: running.into_iter().map(Into::into).collect(),
                        })),
                        report_seq: 0,
                    }],
                    None => return,
                },
                _ = retry.tick() => self.outbox.due().into_iter().map(wire_report).collect(),
            };
            for m in messages {
                if self.outbound.send(m).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An assignment as the model has it, or why not, with its attempt when that much is readable.
fn assignment_of(a: pb::Assign) -> Result<Assignment, (Option<ExecutionRef>, ProtocolError)> {
    let execution =
        ExecutionRef::try_from(pb::ExecutionRef { execution_id: a.execution_id.clone(), attempt: a.attempt }).ok();
    Assignment::try_from(a).map_err(|e| (execution, e))
}

fn hello(tools: Vec<tools::FoundTool>, running: Vec<ExecutionRef>) -> pb::Hello {
    pb::Hello {
        protocol_version: AGENT_PROTOCOL_VERSION,
        agent_version: crate::VERSION.to_owned(),
        hostname: enroll::hostname(),
        tools: tools
            .into_iter()
            .map(|t| pb::ToolInfo {
                name: t.name.to_owned(),
                version: t.version,
                path: t.path.to_string_lossy().into_owned(),
            })
            .collect(),
        running: running.into_iter().map(Into::into).collect(),
    }
}

/// One session; true when it was established (Welcome received).
async fn session_once(
    dir: &StateDir,
    state: &AgentState,
    opts: &RunOptions,
    cancel: &CancellationToken,
    agent: &Agent,
) -> Result<bool, ConnectionError> {
    let channel = connect(dir, state).await?;
    let uploads = uploads_client(dir, state)?;
    let mut client = AgentSessionServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(OUTBOUND_QUEUE);
    let hello = hello(tools::discover(&opts.tools).await, agent.executor.listed());
    tx.send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Hello(hello)), report_seq: 0 })
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
    if welcome.protocol_version != AGENT_PROTOCOL_VERSION {
        return Err(ConnectionError::Config(format!(
            "the controller speaks agent protocol {}, this agent speaks {AGENT_PROTOCOL_VERSION}: upgrade the older side",
            welcome.protocol_version
        )));
    }
    let hb = welcome
        .heartbeat_interval
        .and_then(|d| u64::try_from(d.seconds).ok())
        .filter(|s| *s > 0)
        .map_or(Duration::from_secs(10), Duration::from_secs);
    info!(agent_id = %welcome.agent_id, heartbeat_s = hb.as_secs(), "session established");

    let executor = &agent.executor;
    let forwarder =
        ReportForwardTask { queue: agent.queue.clone(), outbox: agent.outbox.clone(), outbound: tx.clone() };
    let mut forwarder = tokio::spawn(forwarder.run());
    let mut heartbeat = tokio::time::interval(hb);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_check = tokio::time::interval(Duration::from_secs(5));
    renew_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                if !executor.heartbeat().await {
                    break Ok(());
                }
            }
            _ = renew_check.tick() => {
                if chrono::Utc::now().timestamp() >= renewal_due(dir)? {
                    match renew(&mut client, dir).await {
                        // The new certificate supersedes the one this session was opened with, which the
                        // controller refuses from its next heartbeat on: reconnect with the new one now.
                        Ok(()) => {
                            info!("reconnecting with the renewed certificate");
                            break Ok(());
                        }
                        Err(e) => warn!(error = %e, "certificate renewal failed; retrying"),
                    }
                }
            }
            m = inbound.message() => match m {
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Assign(a)) })) => match assignment_of(a) {
                    Ok(a) => {
                        info!(execution_id = %a.execution.id, attempt = %a.execution.attempt, "assignment received");
                        executor.assign(a);
                    }
                    Err((Some(execution), e)) => {
                        warn!(execution_id = %execution.id, attempt = %execution.attempt, error = %e, "assignment refused");
                        executor.refuse(execution, format!("invalid assignment: {e}")).await;
                    }
                    Err((None, e)) => warn!(error = %e, "assignment refused; it names no readable attempt"),
                },
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Cancel(c)) })) => {
                    match c.execution.map(ExecutionRef::try_from) {
                        Some(Ok(r)) => {
                            info!(execution_id = %r.id, attempt = %r.attempt, reason = %c.reason, "cancel received");
                            executor.cancel(r);
                        }
                        Some(Err(e)) => warn!(error = %e, "cancel refused"),
                        None => {}
                    }
                }
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Abort(x)) })) => {
                    match x.execution.map(ExecutionRef::try_from) {
                        Some(Ok(r)) => {
                            let running = executor.abort(r);
                            warn!(execution_id = %r.id, attempt = %r.attempt, reason = %x.reason, running, "abort received");
                        }
                        Some(Err(e)) => warn!(error = %e, "abort refused"),
                        None => {}
                    }
                }
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Ack(k)) })) => agent.outbox.ack(k.report_seq, k.retry_later),
                Ok(Some(pb::ControllerMessage { kind: Some(Kind::Request(r)) })) => {
                    tokio::spawn(crate::requests::handle(r, tx.clone(), uploads.clone(), agent.ctx.clone()));
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(s) => break Err(ConnectionError::Status(s)),
            }
        }
    };
    if cancel.is_cancelled() {
        // The agent stops: stop the jobs while the session is still up, so their last reports can leave.
        executor.cancel_all();
        executor.drain(Duration::from_secs(10)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), agent.outbox.all_settled()).await;
    }
    // The forwarder gives the queue back for the next session; unacknowledged reports stay in the outbox.
    forwarder.abort();
    let _ = (&mut forwarder).await;
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use dg_common::{
        ids::{DatasourceId, ExecutionId, StorageId},
        protocol::{
            AgentReport, Attempt, BackupPlan, DatabaseTarget, Engine, LogLevel, LogReport, ObjectLayout, Plan,
            StorageTarget, Strategy, TlsMode,
        },
        store::StoreConfig,
    };

    use super::*;

    fn backup_assign(execution: ExecutionRef) -> pb::Assign {
        pb::Assign::from(Assignment {
            execution,
            trace_context: Default::default(),
            plan: Plan::Backup(BackupPlan {
                source: DatabaseTarget {
                    engine: Engine::Mariadb,
                    host: "db.example".into(),
                    port: 3306,
                    database: "shop".into(),
                    username: "backup".into(),
                    password: "s3cret".into(),
                    tls_mode: TlsMode::Disable,
                },
                storages: vec![StorageTarget {
                    id: StorageId::new(),
                    config: StoreConfig::Local { path: "/var/backups/dataguardian/a".into() },
                }],
                strategy: Strategy::Fallback,
                layout: ObjectLayout { datasource: DatasourceId::new(), execution },
                compression_level: 3,
                chunk_size: 8 << 20,
                upload_concurrency: 3,
                compression_workers: 0,
                adaptive_compression: None,
                encryption_key_id: None,
                include_globals: false,
                parallel: 1,
            }),
        })
    }

    #[test]
    fn a_bad_assignment_is_refused_for_its_attempt_when_the_attempt_is_readable() {
        let execution = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(3) };
        let good = assignment_of(backup_assign(execution)).expect("a valid assignment converts");
        assert_eq!(good.execution, execution);
        let Plan::Backup(p) = good.plan else { panic!("a backup") };
        assert_eq!(p.layout.execution, execution, "the layout is the assignment's attempt");

        let mut bad = backup_assign(execution);
        if let Some(pb::assign::Task::Backup(pb::BackupTask { source: Some(s), .. })) = bad.task.as_mut() {
            s.port = 0;
        }
        let (refused, e) = assignment_of(bad).expect_err("port 0");
        assert_eq!(refused, Some(execution), "the Failed report can name the attempt");
        assert_eq!(e.field, "backup.source.port");

        let mut unreadable = backup_assign(execution);
        unreadable.attempt = 0;
        let (refused, e) = assignment_of(unreadable).expect_err("attempt 0");
        assert_eq!((refused, e.field.as_str()), (None, "attempt"));
    }

    #[tokio::test]
    async fn reports_and_heartbeats_leave_in_queue_order_until_the_last_reporter_is_gone() {
        let execution = ExecutionRef { id: ExecutionId::new(), attempt: Attempt(1) };
        let (reports, reports_rx) = mpsc::channel(2);
        let (outbound, mut wire) = mpsc::channel(8);
        let outbox = Outbox::default();
        let queue = Arc::new(AsyncMutex::new(reports_rx));
        let forwarder = tokio::spawn(ReportForwardTask { queue, outbox: outbox.clone(), outbound }.run());
        let log = AgentReport::Log(LogReport { execution, level: LogLevel::Error, message: "boom".into() });
        let failed = AgentReport::Failed { execution, error: "boom".into(), cancelled: false };
        // The attempt's final report is queued before the heartbeat that no longer lists it.
        for o in [
            Outbound::Report(Box::new(log.clone())),
            Outbound::Report(Box::new(failed.clone())),
            Outbound::Heartbeat(vec![]),
        ] {
            reports.send(o).await.expect("forwarder running");
        }
        drop(reports);
        tokio::time::timeout(Duration::from_secs(5), forwarder).await.expect("ends without reporters").expect("join");
        let mut got = Vec::new();
        let mut seqs = Vec::new();
        while let Ok(m) = wire.try_recv() {
            seqs.push(m.report_seq);
            got.push(m.kind.expect("a kind"));
        }
        assert_eq!(seqs, vec![0, 1, 0], "only the state-changing report is numbered for an acknowledgement");
        assert_eq!(outbox.unacked().len(), 1, "and kept until it is acknowledged");
        assert_eq!(got.len(), 3);
        let report = |k: &pb::agent_message::Kind| dg_common::protocol::wire::report_of(k.clone());
        assert_eq!(report(&got[0]).expect("a report").expect("valid"), log);
        assert_eq!(report(&got[1]).expect("a report").expect("valid"), failed);
        assert!(matches!(&got[2], pb::agent_message::Kind::Heartbeat(h) if h.running.is_empty()), "{:?}", got[2]);
    }
}
