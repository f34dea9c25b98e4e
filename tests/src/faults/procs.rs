//! The processes a fault run kills and restarts: the real `dg-controller` and `dg-agent` binaries and a
//! private `redis-server`, each in its own process with its output in a log file under the run directory.
//! (The controller's private PostgreSQL is [`crate::pg::ScramPostgres`].)

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

/// One child process, killed when dropped.
pub struct Proc {
    name: String,
    cmd: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// A process that runs `cmd` (program and arguments) with its output appended to `log`; not started.
    pub fn new(name: &str, cmd: Vec<String>, log: PathBuf) -> Self {
        Self { name: name.into(), cmd, log, child: None }
    }

    /// Starts it (again).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let (program, args) = self.cmd.split_first().ok_or_else(|| anyhow::anyhow!("{}: empty command", self.name))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it runs (started and not exited).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().and_then(Child::id).and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw)
    }

    /// Sends a signal (no-op when it does not run).
    pub fn signal(&self, s: Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(pid, s);
        }
    }

    /// SIGKILL, then reaps it.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies from SIGKILL too.
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL after `patience`.
    pub async fn terminate(&mut self, patience: Duration) {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        if let Some(mut c) = self.child.take()
            && tokio::time::timeout(patience, c.wait()).await.is_err()
        {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A free loopback port (bound and released; good enough on a machine that does not race for ports).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing listens on {addr} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A private Redis with a password, on a free port, without persistence (a restart loses everything, which
/// must lose no job).
pub struct Redis {
    /// Port.
    pub port: u16,
    password: String,
    tls: bool,
    proc: Proc,
}

/// Files of a private Redis that speaks TLS only.
#[derive(Clone, Debug)]
pub struct RedisTlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM; Redis insists on one even when it asks clients for no certificate).
    pub ca: PathBuf,
    /// ACL file (`user ...` lines).
    pub acl_file: PathBuf,
}

impl Redis {
    /// Starts it.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let password = format!("rd-{}", crate::suffix());
        let args = vec!["--port".into(), port.to_string(), "--requirepass".into(), password.clone()];
        Self::launch(dir, port, password, false, args).await
    }

    /// Starts one that listens on TLS only (`--port 0`, `--tls-port` free), asks clients for no certificate
    /// and takes its users from `files.acl_file`.
    pub async fn start_tls(dir: &Path, files: &RedisTlsFiles) -> anyhow::Result<Self> {
        let port = free_port()?;
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&files.cert),
            "--tls-key-file".into(),
            path(&files.key),
            "--tls-ca-cert-file".into(),
            path(&files.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--aclfile".into(),
            path(&files.acl_file),
        ];
        Self::launch(dir, port, String::new(), true, args).await
    }

    async fn launch(dir: &Path, port: u16, password: String, tls: bool, args: Vec<String>) -> anyhow::Result<Self> {
        let mut cmd = vec![
            "redis-server".to_owned(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.to_string_lossy().into_owned(),
        ];
        cmd.extend(args);
        let mut proc = Proc::new("redis-server", cmd, dir.join("redis.log"));
        proc.spawn()?;
        if let Err(e) = wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10)).await {
            anyhow::bail!("{e}; redis-server's log:\n{}", proc.log_tail(20));
        }
        Ok(Self { port, password, tls, proc })
    }

    /// `redis://:<password>@127.0.0.1:<port>`; for the TLS one `rediss://127.0.0.1:<port>` (its users are
    /// the caller's).
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}", self.port)
        } else {
            format!("redis://:{}@127.0.0.1:{}", self.password, self.port)
        }
    }

    /// Kills it (all data gone).
    pub async fn kill(&mut self) {
        self.proc.kill9().await;
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()?;
        wait_listening(SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(10)).await
    }
}

/// The `dg-controller` and `dg-agent` binaries of this build: `DG_CONTROLLER_BIN` / `DG_AGENT_BIN`, else
/// next to the running executable (or its parent, for test executables in `deps/`), built with
/// `cargo build -p dg-controller -p dg-agent` when missing.
pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let find = |var: &str, name: &str| -> Option<PathBuf> {
        if let Ok(p) = std::env::var(var) {
            return Some(PathBuf::from(p));
        }
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        [dir.join(name), dir.parent()?.join(name)].into_iter().find(|p| p.is_file())
    };
    if let (Some(c), Some(a)) = (find("DG_CONTROLLER_BIN", "dg-controller"), find("DG_AGENT_BIN", "dg-agent")) {
        return Ok((c, a));
    }
    // Same profile as this executable: target/<profile>/[deps/]this.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "debug" || n == "release"))
        .ok_or_else(|| anyhow::anyhow!("cannot tell the build profile of {}", exe.display()))?
        .to_owned();
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", "dg-controller", "-p", "dg-agent"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().context("cargo build -p dg-controller -p dg-agent")?;
    anyhow::ensure!(status.success(), "cargo build -p dg-controller -p dg-agent failed: {status}");
    let (c, a) = (profile_dir.join("dg-controller"), profile_dir.join("dg-agent"));
    anyhow::ensure!(c.is_file() && a.is_file(), "no binaries in {} after the build", profile_dir.display());
    Ok((c, a))
}
