//! The fleet: one fake-agent session per enrolled identity, each driven by a task of its own that heartbeats at
//! the controller's interval (its phase within the interval set by [`heartbeat_offset`], so the fleet's
//! heartbeats are spread evenly), answers requests with an error, fails any assignment nobody asked for, and
//! otherwise hands every controller message (Assign, Ack, Abort…) to whoever subscribed to that session. A
//! session that ends is recorded with its error: that is what "broke" means for the sessions step.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dg_proto::v1::{self as pb, agent_message::Kind, controller_message::Kind as CKind};
use dg_tests::fake_agent::{FakeAgent, FakeSession, exec_ref};
use futures::StreamExt as _;
use tokio::{sync::mpsc, time::Instant};

use crate::stats::{first_heartbeat_in, heartbeat_offset};

/// A controller message a subscribed session received, and when.
#[derive(Debug)]
pub(crate) struct Event {
    /// Identity index of the session.
    pub(crate) agent: usize,
    pub(crate) at: Instant,
    pub(crate) kind: CKind,
}

/// Where a session hands its controller messages.
pub(crate) type Sink = mpsc::UnboundedSender<Event>;

enum Cmd {
    /// Heartbeat with this list from now on (and once at once).
    Running(Vec<(String, u32)>),
    /// Send a numbered report.
    Send(Box<Kind>, u64),
    /// Hand controller messages to this sink (none: handle them alone).
    Subscribe(Option<Sink>),
}

/// Counters every driver updates.
#[derive(Default)]
struct Shared {
    heartbeats: AtomicU64,
    unasked_assigns: AtomicU64,
    closed: Mutex<Vec<(usize, String)>>,
}

/// Why growing the fleet stopped.
#[derive(Debug)]
pub(crate) struct Broke {
    /// Sessions open when it broke.
    pub(crate) open: usize,
    pub(crate) error: String,
}

/// The open sessions, by identity index.
pub(crate) struct Fleet {
    interval: Duration,
    /// The common start every session's heartbeat phase counts from.
    epoch: Instant,
    sessions: Vec<Option<mpsc::Sender<Cmd>>>,
    shared: Arc<Shared>,
    next_seq: AtomicU64,
}

impl Fleet {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            epoch: Instant::now(),
            sessions: Vec::new(),
            shared: Arc::default(),
            next_seq: AtomicU64::new(1),
        }
    }

    /// Open sessions.
    pub(crate) fn len(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_some()).count()
    }

    /// Opens sessions for identities `0..n` that have none, `concurrency` at once, identity `i` on replica
    /// `i % endpoints.len()`. A session that cannot be opened (after two more tries a second apart) stops the
    /// growth: the sessions opened so far stay.
    pub(crate) async fn grow(
        &mut self,
        ids: &[FakeAgent],
        n: usize,
        endpoints: &[String],
        concurrency: usize,
    ) -> Result<(), Broke> {
        if self.sessions.len() < n {
            self.sessions.resize_with(n, || None);
        }
        let todo: Vec<usize> = (0..n.min(ids.len())).filter(|i| self.sessions[*i].is_none()).collect();
        let mut opened = futures::stream::iter(todo)
            .map(|i| {
                let endpoint = &endpoints[i % endpoints.len()];
                async move { (i, open_with_retries(&ids[i], endpoint).await) }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((i, r)) = opened.next().await {
            match r {
                Ok(session) => {
                    let tx = self.spawn(i, session);
                    self.sessions[i] = Some(tx);
                }
                Err(e) => {
                    return Err(Broke { open: self.len(), error: format!("agent #{i}: {e:#}") });
                }
            }
        }
        if ids.len() < n {
            return Err(Broke { open: self.len(), error: format!("only {} identities enrolled", ids.len()) });
        }
        Ok(())
    }

    fn spawn(&self, index: usize, session: FakeSession) -> mpsc::Sender<Cmd> {
        let (tx, rx) = mpsc::channel(256);
        let driver = Driver {
            index,
            session,
            cmds: rx,
            sink: None,
            running: Vec::new(),
            interval: self.interval,
            first_heartbeat: Instant::now()
                + first_heartbeat_in(self.epoch.elapsed(), heartbeat_offset(index, self.interval), self.interval),
            shared: self.shared.clone(),
        };
        tokio::spawn(driver.run());
        tx
    }

    /// Heartbeats sent by the whole fleet so far.
    pub(crate) fn heartbeats(&self) -> u64 {
        self.shared.heartbeats.load(Ordering::Relaxed)
    }

    /// Assignments that arrived for a session nobody watched (failed at once).
    pub(crate) fn unasked_assigns(&self) -> u64 {
        self.shared.unasked_assigns.load(Ordering::Relaxed)
    }

    /// Sessions that ended, with their error.
    pub(crate) fn closed(&self) -> Vec<(usize, String)> {
        self.shared.closed.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// A fresh report sequence number (unique in the run).
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    async fn command(&self, index: usize, cmd: Cmd) -> anyhow::Result<()> {
        let tx = self.sessions.get(index).and_then(Option::as_ref);
        let tx = tx.ok_or_else(|| anyhow::anyhow!("agent #{index} has no session"))?;
        tx.send(cmd).await.map_err(|_| anyhow::anyhow!("agent #{index}: session ended"))
    }

    /// Hands session `index`'s controller messages to `sink` (none: back to the driver alone).
    pub(crate) async fn subscribe(&self, index: usize, sink: Option<Sink>) -> anyhow::Result<()> {
        self.command(index, Cmd::Subscribe(sink)).await
    }

    /// Session `index` lists `running` in its heartbeats from now on (and heartbeats at once).
    pub(crate) async fn set_running(&self, index: usize, running: Vec<(String, u32)>) -> anyhow::Result<()> {
        self.command(index, Cmd::Running(running)).await
    }

    /// Session `index` sends a report numbered `seq` (acknowledged by the controller).
    pub(crate) async fn send(&self, index: usize, kind: Kind, seq: u64) -> anyhow::Result<()> {
        self.command(index, Cmd::Send(Box::new(kind), seq)).await
    }

    /// Closes every session (their drivers end, the streams close).
    pub(crate) fn close_all(&mut self) {
        self.sessions.clear();
    }
}

async fn open_with_retries(id: &FakeAgent, endpoint: &str) -> anyhow::Result<FakeSession> {
    let mut tries = 0;
    loop {
        match id.connect_to(endpoint, &[]).await {
            Ok(s) => return Ok(s),
            Err(e) if tries < 2 => {
                tries += 1;
                tracing::warn!(error = %format!("{e:#}"), tries, "session did not open; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The task behind one session.
struct Driver {
    index: usize,
    session: FakeSession,
    cmds: mpsc::Receiver<Cmd>,
    sink: Option<Sink>,
    running: Vec<(String, u32)>,
    interval: Duration,
    first_heartbeat: Instant,
    shared: Arc<Shared>,
}

impl Driver {
    async fn run(mut self) {
        let mut tick = tokio::time::interval_at(self.first_heartbeat, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match cmd {
                    None => break None, // the fleet closed this session
                    Some(Cmd::Running(r)) => {
                        self.running = r;
                        if let Err(e) = self.heartbeat().await {
                            break Some(e);
                        }
                    }
                    Some(Cmd::Send(kind, seq)) => {
                        if let Err(e) = self.session.send_numbered(*kind, seq).await {
                            break Some(e);
                        }
                    }
                    Some(Cmd::Subscribe(sink)) => self.sink = sink,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        break Some(e);
                    }
                }
                m = self.session.next_raw() => match m {
                    Ok(Some(kind)) => {
                        if let Err(e) = self.on_message(kind).await {
                            break Some(e);
                        }
                    }
                    Ok(None) => break Some(anyhow::anyhow!("session closed by the controller")),
                    Err(e) => break Some(e),
                },
            }
        };
        if let Some(e) = end
            && let Ok(mut closed) = self.shared.closed.lock()
        {
            closed.push((self.index, format!("{e:#}")));
        }
    }

    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.session.heartbeat(&self.running).await?;
        self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_message(&mut self, kind: CKind) -> anyhow::Result<()> {
        match kind {
            CKind::Request(r) => {
                let error = "dg-fleet: requests are not scripted".into();
                self.session.respond(pb::AgentResponse { request_id: r.request_id, error, kind: None }).await
            }
            kind => match &self.sink {
                Some(sink) => {
                    let _ = sink.send(Event { agent: self.index, at: Instant::now(), kind });
                    Ok(())
                }
                None => match kind {
                    // Nobody waits for it (a probe that gave up): end it, so the agent is free again.
                    CKind::Assign(a) => {
                        self.shared.unasked_assigns.fetch_add(1, Ordering::Relaxed);
                        let failed = pb::Failed {
                            execution: Some(exec_ref(&a)),
                            error: "not expected".into(),
                            cancelled: false,
                        };
                        self.session.send(Kind::Failed(failed)).await
                    }
                    _ => Ok(()),
                },
            },
        }
    }
}
