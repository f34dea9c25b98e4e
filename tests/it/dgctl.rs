//! The `dgctl` binary as an operator runs it, against a real controller and agent: login with CA pinning
//! (a wrong fingerprint refused), the 0600 config file, resources created and referred to by name, a job
//! run by name with `--wait`, `watch`, `-o json`, a streamed download checked with `pg_restore --list`, a
//! restore by name with `--yes`, and the documented exit codes.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Stdio};

use dg_tests::{cluster::Cluster, pg::TestDb, pg_server, suffix};
use sqlx::Executor as _;

/// The `dgctl` of this build: `DGCTL_BIN`, else next to the test executable (or its parent, for `deps/`).
pub(crate) fn dgctl_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("DGCTL_BIN") {
        return Ok(p.into());
    }
    workspace_bin("dgctl")
}

/// A workspace binary next to the test executable (built by tests/run.sh before the tests).
pub(crate) fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow::anyhow!("no parent of {}", exe.display()))?;
    [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no {name} binary near {}: cargo build -p {name}", exe.display()))
}

pub(crate) struct Ctl {
    pub(crate) bin: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) envs: Vec<(String, String)>,
}

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ctl {
    pub(crate) async fn run(&self, args: &[&str]) -> anyhow::Result<Out> {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("DGCTL_CONFIG", &self.config)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok(Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs and requires exit 0.
    pub(crate) async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.run(args).await?;
        anyhow::ensure!(o.code == 0, "dgctl {args:?} exited {}: {}{}", o.code, o.stderr, o.stdout);
        Ok(o.stdout)
    }

    /// Runs with `-o json` and parses stdout.
    pub(crate) async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all).await?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgctl_operates_a_cluster_by_name() -> anyhow::Result<()> {
    let source = TestDb::create("dgctl_src").await?;
    source.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let work = cluster.dir.path().join("dgctl");
    std::fs::create_dir_all(&work)?;
    let server = pg_server();
    let ctl = Ctl {
        bin: dgctl_bin()?,
        config: work.join("conf").join("dgctl.toml"),
        envs: vec![
            ("DGCTL_PASSWORD".into(), dg_tests::cluster::ADMIN_PASSWORD.into()),
            ("PGPW".into(), server.password.clone()),
        ],
    };
    let endpoint = cluster.api_endpoint();

    // A wrong fingerprint is refused before any password is sent, and nothing is stored.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let o = ctl.run(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &wrong]).await?;
    assert_eq!(o.code, 4, "pinning failure is a permission error: {}", o.stderr);
    assert!(o.stderr.contains("pinning"), "{}", o.stderr);
    assert!(!ctl.config.exists(), "no config written on a failed login");

    // The right one pins the CA; the config holds the token with mode 0600.
    ctl.ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &cluster.ca_fingerprint(), "--context", "test"])
        .await?;
    let mode = std::fs::metadata(&ctl.config)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&ctl.config)?;
    assert!(text.contains("BEGIN CERTIFICATE") && text.contains(&cluster.ca_fingerprint()), "CA pinned in config");
    let me = ctl.json(&["whoami"]).await?;
    assert_eq!(me["username"], "admin");
    assert_eq!(me["context"], "test");

    // Resources by name; the datasource password comes from an environment variable.
    let (st, ds, job, bad_ds, bad_job) = (
        format!("st-{}", suffix()),
        format!("ds-{}", suffix()),
        format!("job-{}", suffix()),
        format!("bad-{}", suffix()),
        format!("badjob-{}", suffix()),
    );
    let dir = work.join("backups");
    let port = server.port.to_string();
    ctl.ok(&["storages", "create", &st, "local", "--path", &dir.to_string_lossy(), "--agent", &agent.id]).await?;
    for (name, db) in [(&ds, source.name.as_str()), (&bad_ds, "dgt_dgctl_missing_database")] {
        ctl.ok(&[
            "datasources",
            "create",
            name,
            "--engine",
            "postgres",
            "--host",
            &server.host,
            "--port",
            &port,
            "--database",
            db,
            "--username",
            &server.user,
            "--password-env",
            "PGPW",
            "--tls-mode",
            "disable",
            "--agent",
            &agent.id,
        ])
        .await?;
    }
    ctl.ok(&["jobs", "create", &job, "--datasource", &ds, "--storage", &st]).await?;
    ctl.ok(&["jobs", "create", &bad_job, "--datasource", &bad_ds, "--storage", &st]).await?;
    let listed = ctl.json(&["datasources", "list"]).await?;
    let got = listed.as_array().map(|a| a.iter().filter(|d| d["name"] == ds.as_str()).count());
    assert_eq!(got, Some(1), "{listed}");
    assert_eq!(ctl.json(&["datasources", "get", &ds]).await?["has_password"], true);

    // Run by name and wait; the final execution is printed as JSON.
    let ex = ctl.json(&["jobs", "run", &job, "--wait"]).await?;
    assert_eq!(ex["status"], "completed", "{ex}");
    assert_eq!(ex["operation"], "backup");
    let id = ex["id"].as_str().unwrap_or_default().to_owned();
    let watched = ctl.json(&["watch", &id]).await?;
    assert_eq!(watched["status"], "completed");
    let backups = ctl.json(&["backups", "list", "--job", &job]).await?;
    assert_eq!(backups.as_array().map(Vec::len), Some(1), "{backups}");
    assert_eq!(backups[0]["id"], id.as_str());

    // Download, decompressed locally after the stored stream's sha256 matched; pg_restore reads it.
    let dump = work.join("app.dump");
    let d = ctl
        .json(&["backups", "download", &format!("latest:{job}"), "-f", &dump.to_string_lossy(), "--decompress"])
        .await?;
    assert_eq!(d["stored_sha256"], ex["sha256"]);
    assert_eq!(d["bytes"], ex["raw_bytes"]);
    let list = tokio::process::Command::new("pg_restore").arg("--list").arg(&dump).output().await?;
    assert!(list.status.success(), "pg_restore --list: {}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE public t"));
    let leftovers: Vec<_> = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dgctl-download"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind");

    // Restore by name into a new database: refused without a terminal unless --yes.
    let target = TestDb::reserve("dgctl_dst");
    let o = ctl.run(&["restore", &id, "--to", &ds, "--database", &target.name, "--create"]).await?;
    assert_eq!(o.code, 2, "no TTY and no --yes is a usage error: {}", o.stderr);
    assert!(o.stderr.contains(&target.name), "the question names the target: {}", o.stderr);
    let r = ctl.json(&["restore", &id, "--to", &ds, "--database", &target.name, "--create", "--yes", "--wait"]).await?;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(target.table_fingerprint("t").await?, source.table_fingerprint("t").await?);

    // Exit codes: not found 3, failed execution 5 (with the execution still printed).
    let o = ctl.run(&["datasources", "get", "no-such-datasource"]).await?;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("no-such-datasource"));
    let o = ctl.run(&["jobs", "run", &bad_job, "--wait", "-o", "json"]).await?;
    assert_eq!(o.code, 5, "a failed execution exits 5: {}", o.stderr);
    let failed: serde_json::Value = serde_json::from_str(&o.stdout)?;
    assert_eq!(failed["status"], "failed");

    // A config others can read is refused; logout forgets the token and later calls are denied (4).
    std::fs::set_permissions(&ctl.config, std::fs::Permissions::from_mode(0o644))?;
    let o = ctl.run(&["whoami"]).await?;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);
    std::fs::set_permissions(&ctl.config, std::fs::Permissions::from_mode(0o600))?;
    ctl.ok(&["logout"]).await?;
    assert_eq!(ctl.run(&["jobs", "list"]).await?.code, 4);
    let contexts = ctl.json(&["context", "list"]).await?;
    assert_eq!(contexts[0]["logged_in"], false);

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
