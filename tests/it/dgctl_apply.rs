//! `dgctl apply` / `dgctl diff` as an operator runs them against a real controller and agent: a file with a
//! local storage, a PostgreSQL datasource whose password is an `{env: …}` reference, a job and a webhook
//! channel is applied; applying again changes nothing and diff prints nothing; an edited field shows in diff
//! and is applied; an inline secret is refused naming the field; prune deletes what the file dropped, and only
//! with `--yes` when there is no terminal.

use dg_tests::{cluster::Cluster, pg::TestDb, pg_server, suffix};

use super::dgctl::{Ctl, dgctl_bin};

struct Names {
    storage: String,
    datasource: String,
    job: String,
    channel: String,
}

/// The declarative file; `cron` and `with_channel` vary between steps, `password` is the YAML of the secret.
fn file(n: &Names, dir: &str, agent: &str, db: &TestDb, cron: &str, with_channel: bool, password: &str) -> String {
    let server = pg_server();
    let mut y = format!(
        "storages:
  - name: {st}
    local: {{path: {dir}, agent: {agent}}}
    labels: {{tier: disk}}
datasources:
  - name: {ds}
    engine: postgres
    host: {host}
    port: {port}
    database: {db}
    username: {user}
    password: {password}
    tls_mode: disable
    agent: {agent}
    labels: {{env: test}}
jobs:
  - name: {job}
    datasource: {ds}
    storages: [{st}]
    cron: \"{cron}\"
    time_zone: UTC
    retention: {{max_backups: 5}}
    labels: {{team: db}}
",
        st = n.storage,
        ds = n.datasource,
        job = n.job,
        host = server.host,
        port = server.port,
        db = db.name,
        user = server.user,
    );
    if with_channel {
        y.push_str(&format!(
            "notification_channels:
  - name: {ch}
    webhook: {{url: \"https://hooks.example.com/dg\", secret: {{env: HOOK_SECRET}}}}
    events: [execution_failed]
",
            ch = n.channel
        ));
    }
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgctl_apply_diff_and_prune() -> anyhow::Result<()> {
    let db = TestDb::create("dgctl_apply").await?;
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let work = cluster.dir.path().join("dgctl-apply");
    std::fs::create_dir_all(&work)?;
    let ctl = Ctl {
        bin: dgctl_bin()?,
        config: work.join("dgctl.toml"),
        envs: vec![
            ("DGCTL_PASSWORD".into(), dg_tests::cluster::ADMIN_PASSWORD.into()),
            ("PGPW".into(), pg_server().password.clone()),
            ("HOOK_SECRET".into(), "hook-signing-secret".into()),
        ],
    };
    let endpoint = cluster.api_endpoint();
    ctl.ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &cluster.ca_fingerprint()]).await?;
    let n = Names {
        storage: format!("st-{}", suffix()),
        datasource: format!("ds-{}", suffix()),
        job: format!("job-{}", suffix()),
        channel: format!("ch-{}", suffix()),
    };
    let dir = work.join("backups").to_string_lossy().into_owned();
    let path = work.join("dataguardian.yaml");
    let path_s = path.to_string_lossy().into_owned();
    let write = |cron: &str, with_channel: bool, password: &str| {
        std::fs::write(&path, file(&n, &dir, &agent.id, &db, cron, with_channel, password))
    };

    // First apply creates the four resources, storages and datasources before the job that names them.
    write("0 3 * * *", true, "{env: PGPW}")?;
    let dry = ctl.ok(&["apply", "-f", &path_s, "--dry-run"]).await?;
    assert!(dry.contains("4 to change"), "{dry}");
    assert_eq!(ctl.json(&["jobs", "list"]).await?.as_array().map(Vec::len), Some(0), "dry run sends nothing");
    let out = ctl.ok(&["apply", "-f", &path_s]).await?;
    assert!(out.contains("4 changed"), "{out}");
    let st_pos = out.find(&format!("storage \"{}\"", n.storage));
    let job_pos = out.find(&format!("job \"{}\"", n.job));
    assert!(st_pos.is_some() && job_pos.is_some() && st_pos < job_pos, "storage before job: {out}");
    let ds = ctl.json(&["datasources", "get", &n.datasource]).await?;
    assert_eq!(ds["has_password"], true, "the password came from the env reference: {ds}");
    assert_eq!(ds["labels"]["env"], "test");
    let job = ctl.json(&["jobs", "get", &n.job]).await?;
    assert_eq!(job["cron"], "0 3 * * *");
    assert_eq!(job["datasource_id"], ds["id"]);
    assert_eq!(ctl.json(&["storages", "get", &n.storage]).await?["labels"]["tier"], "disk");
    let test = ctl.json(&["datasources", "test", &n.datasource]).await?;
    assert_eq!(test["ok"], true, "the applied datasource reaches the throwaway database: {test}");

    // Idempotent: a second apply changes nothing, diff prints nothing and exits 0.
    let again = ctl.ok(&["apply", "-f", &path_s]).await?;
    assert!(again.trim_end().ends_with("0 changed"), "{again}");
    let d = ctl.run(&["diff", "-f", &path_s]).await?;
    assert_eq!((d.code, d.stdout.as_str()), (0, ""), "{}", d.stderr);

    // An edited field shows in diff (exit 0) with its old and new value, and apply makes it so.
    write("0 4 * * *", true, "{env: PGPW}")?;
    let d = ctl.run(&["diff", "-f", &path_s]).await?;
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(d.stdout.contains(&format!("~ update job \"{}\"", n.job)), "{}", d.stdout);
    assert!(d.stdout.contains("cron: \"0 3 * * *\" -> \"0 4 * * *\""), "{}", d.stdout);
    assert_eq!(d.stdout.lines().count(), 2, "only the job's cron differs: {}", d.stdout);
    let j = ctl.json(&["diff", "-f", &path_s]).await?;
    assert_eq!(j["changed"], 1);
    assert_eq!(j["actions"][0]["changes"][0]["field"], "cron");
    assert!(ctl.ok(&["apply", "-f", &path_s]).await?.contains("1 changed"));
    assert_eq!(ctl.json(&["jobs", "get", &n.job]).await?["cron"], "0 4 * * *");

    // An inline secret is refused before anything is sent, naming the field and never echoing the value.
    write("0 5 * * *", true, "hunter2-inline")?;
    let o = ctl.run(&["apply", "-f", &path_s]).await?;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains(&format!("datasources[{}].password", n.datasource)), "{}", o.stderr);
    assert!(o.stderr.contains("inline") && !o.stderr.contains("hunter2"), "{}", o.stderr);
    assert_eq!(ctl.json(&["jobs", "get", &n.job]).await?["cron"], "0 4 * * *", "nothing applied");

    // A changed destination needs its secret again: apply names the resource and says how, --update-secrets
    // sends the file's secrets; changing it back needs them again too.
    write("0 4 * * *", true, "{env: PGPW}")?;
    std::fs::write(&path, std::fs::read_to_string(&path)?.replace("tls_mode: disable", "tls_mode: prefer"))?;
    let o = ctl.run(&["apply", "-f", &path_s]).await?;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains(&format!("datasource \"{}\"", n.datasource)), "{}", o.stderr);
    assert!(o.stderr.contains("--update-secrets"), "{}", o.stderr);
    assert!(ctl.ok(&["apply", "-f", &path_s, "--update-secrets"]).await?.contains("1 changed"));
    assert_eq!(ctl.json(&["datasources", "get", &n.datasource]).await?["tls_mode"], "prefer");
    write("0 4 * * *", true, "{env: PGPW}")?;
    ctl.ok(&["apply", "-f", &path_s, "--update-secrets"]).await?;

    // Prune: the dropped channel is deleted, only with --yes without a terminal.
    write("0 4 * * *", false, "{env: PGPW}")?;
    let d = ctl.ok(&["diff", "-f", &path_s, "--prune"]).await?;
    assert_eq!(d.trim(), format!("- delete notification channel \"{}\"", n.channel));
    assert_eq!(ctl.ok(&["diff", "-f", &path_s]).await?, "", "without --prune nothing is deleted");
    let o = ctl.run(&["apply", "-f", &path_s, "--prune"]).await?;
    assert_eq!(o.code, 2, "prune without a terminal needs --yes: {}", o.stderr);
    assert!(o.stderr.contains(&n.channel), "the question names what goes: {}", o.stderr);
    assert_eq!(ctl.json(&["notifications", "channels", "list"]).await?.as_array().map(Vec::len), Some(1));
    let out = ctl.ok(&["apply", "-f", &path_s, "--prune", "--yes"]).await?;
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(ctl.json(&["notifications", "channels", "list"]).await?.as_array().map(Vec::len), Some(0));
    assert_eq!(ctl.ok(&["diff", "-f", &path_s, "--prune"]).await?, "");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
