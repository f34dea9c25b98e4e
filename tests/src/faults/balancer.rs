//! A TCP load balancer on loopback, as a real deployment puts in front of controller replicas: each new
//! connection goes to the next backend that accepts it (round robin), bytes are copied both ways, and
//! [`Balancer::cut`] drops every open connection at once (a network blip).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    backends: Vec<SocketAddr>,
    /// Connections open to each backend.
    open: Vec<AtomicUsize>,
    next: AtomicUsize,
    /// Cancelled by `cut`, then replaced: every connection opened before the cut watches the old token.
    generation: Mutex<CancellationToken>,
}

impl Balancer {
    /// Listens on a free loopback port in front of `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            open: backends.iter().map(|_| AtomicUsize::new(0)).collect(),
            backends,
            next: AtomicUsize::new(0),
            generation: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// How many connections are open to each backend (in the order given to `start`).
    pub fn open_connections(&self) -> Vec<usize> {
        self.state.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Drops every connection open now; new ones are accepted as before.
    pub fn cut(&self) {
        let mut g = self.state.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.cancel();
        *g = CancellationToken::new();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let (client, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let generation = state.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Some((i, mut backend)) = connect_next(&state).await else { return };
            state.open[i].fetch_add(1, Ordering::Relaxed);
            let mut client = client;
            tokio::select! {
                _ = generation.cancelled() => {},
                _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {},
            }
            state.open[i].fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The next backend that accepts a connection, starting after the previous pick.
async fn connect_next(state: &State) -> Option<(usize, TcpStream)> {
    let n = state.backends.len();
    let start = state.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let k = (start + i) % n;
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(state.backends[k])).await {
            return Some((k, s));
        }
    }
    None
}
