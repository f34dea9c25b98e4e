//! The `dg-agent` binary as a process: it re-executes itself once with glibc's malloc mmap threshold fixed
//! (same pid, same arguments), which keeps its memory flat across restores (dg-bench measures it), and leaves
//! an operator's own setting of that tunable alone.

use std::time::Duration;

use anyhow::Context as _;

fn environ(pid: u32) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect())
}

/// Starts `dg-agent enroll` against a port that accepts connections but never answers (so it stays up) and
/// returns the environment of the running process once it has settled.
async fn running_env(tunables: Option<&str>) -> anyhow::Result<Vec<String>> {
    let state = tempfile::tempdir()?;
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let controller = format!("https://127.0.0.1:{}", silent.local_addr()?.port());
    let mut cmd = tokio::process::Command::new(super::readme::agent_bin()?);
    cmd.args(["enroll", "--controller", &controller, "--token", "dgj_x", "--ca-fingerprint"])
        .arg(format!("sha256:{}", "00".repeat(32)))
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("GLIBC_TUNABLES")
        .env_remove("DG_AGENT_MALLOC_TUNED")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = tunables {
        cmd.env("GLIBC_TUNABLES", t);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().context("pid")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let env = loop {
        let env = environ(pid).unwrap_or_default();
        if env.iter().any(|v| v.starts_with("DG_AGENT_MALLOC_TUNED=")) || tokio::time::Instant::now() > deadline {
            break env;
        }
        if tunables.is_some() && !env.is_empty() {
            // Already tuned by the operator: no re-execution to wait for; give it a moment to be sure.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break environ(pid)?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().await?;
    Ok(env)
}

#[tokio::test]
async fn the_agent_runs_with_a_fixed_malloc_mmap_threshold() -> anyhow::Result<()> {
    let env = running_env(None).await?;
    let tunables = env.iter().find_map(|v| v.strip_prefix("GLIBC_TUNABLES=")).unwrap_or_default();
    assert_eq!(tunables, "glibc.malloc.mmap_threshold=131072", "{env:?}");
    // An operator's own threshold is kept, and the agent does not re-execute.
    let env = running_env(Some("glibc.malloc.mmap_threshold=65536")).await?;
    assert!(env.iter().any(|v| v == "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536"), "{env:?}");
    assert!(!env.iter().any(|v| v.starts_with("DG_AGENT_MALLOC_TUNED=")), "{env:?}");
    Ok(())
}
