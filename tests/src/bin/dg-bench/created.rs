//! What the bench created — databases, paths, the agent process, the in-process controller — removed at the
//! end (`cleanup`) whether the run succeeded, failed or was interrupted.

use std::{path::PathBuf, time::Duration};

use dg_tests::cluster::Cluster;
use tokio::process::{Child, Command};

use crate::engine::Kind;

#[derive(Default)]
pub(crate) struct Created {
    dbs: Vec<(Kind, String)>,
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) agent: Option<Child>,
    pub(crate) cluster: Option<Cluster>,
}

impl Created {
    pub(crate) fn track_db(&mut self, kind: Kind, name: &str) {
        self.dbs.push((kind, name.to_owned()));
    }

    pub(crate) async fn drop_db_now(&mut self, kind: Kind, name: &str) {
        match kind.drop_db(name).await {
            Ok(()) => self.dbs.retain(|(k, n)| !(*k == kind && n == name)),
            Err(e) => eprintln!("dg-bench: could not drop {name} yet: {e:#}"),
        }
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL.
    pub(crate) async fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                eprintln!("dg-bench: the agent did not stop on SIGTERM within 15 s; killing it");
                let _ = child.kill().await;
                None
            }
        }
    }

    pub(crate) async fn cleanup(&mut self) {
        self.stop_agent().await;
        if let Some(mut c) = self.cluster.take() {
            c.stop().await;
            drop(c); // drops the controller's database
        }
        for (kind, name) in std::mem::take(&mut self.dbs) {
            if let Err(e) = kind.drop_db(&name).await {
                eprintln!("dg-bench: could not drop {} database {name}: {e:#}", kind.label());
            }
        }
        for p in std::mem::take(&mut self.paths).into_iter().rev() {
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if let Err(e) = r
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("dg-bench: could not remove {}: {e}", p.display());
            }
        }
    }
}
