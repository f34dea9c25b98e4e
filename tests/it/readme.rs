//! The README's operator commands, run as written against a real controller, agent and PostgreSQL.
//!
//! - `dgctl`: every command of every `sh` block of the "Operating with dgctl" section, in order, and its YAML
//!   file applied (and checked to be idempotent, as the README says).
//! - grpcurl: every command of every `sh` block of the whole README that runs `grpcurl` or its `g` wrapper,
//!   run by bash as written (JSON bodies, pipes, redirections), in an order the test chooses so that each
//!   `<… id>` placeholder holds what an earlier command returned; the test fails if any is left unrun.
//!
//! Only what names the reader's own environment is replaced, each replacement listed and required to match
//! (a stale one fails the test): the endpoint and CA fingerprint, the agent, the database and its user, the
//! bucket's endpoint and keys, the backup directory, file paths and the webhook. Answers to prompts (there is
//! no terminal here) are added the way the README's comments say (`--yes`, a password source); the prompts
//! themselves are tested in `dgctl.rs` and `dgctl_access.rs`.

use std::{collections::HashMap, path::Path, process::Stdio};

use anyhow::{Context as _, bail, ensure};
use dg_tests::{
    cluster::{ADMIN_PASSWORD, Cluster},
    pg::TestDb,
    pg_server,
};
use sqlx::Executor as _;

/// The section whose blocks are run.
const SECTION: &str = "## Operating with dgctl";

/// The part of the README from `heading` to the next `## ` heading.
fn section<'a>(readme: &'a str, heading: &str) -> anyhow::Result<&'a str> {
    let start = readme.find(heading).with_context(|| format!("README has no {heading:?}"))?;
    let body = &readme[start + heading.len()..];
    Ok(&body[..body.find("\n## ").unwrap_or(body.len())])
}

/// The fenced blocks of `lang` in `text`.
fn blocks(text: &str, lang: &str) -> anyhow::Result<Vec<String>> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let after = &rest[i + fence.len()..];
        let end = after.find("```").context("unterminated block")?;
        out.push(after[..end].to_owned());
        rest = &after[end + 3..];
    }
    Ok(out)
}

/// The commands of a block as the shell reads them: a newline ends a command unless it is inside quotes or
/// escaped by a backslash; `#` at the start of a word outside quotes starts a comment.
fn shell_commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double, mut comment, mut word_start) = (false, false, false, true);
    let mut chars = block.chars();
    while let Some(c) = chars.next() {
        if comment && c != '\n' {
            continue;
        }
        comment = false;
        match c {
            '\'' if !double => {
                single = !single;
                cur.push(c);
            }
            '"' if !single => {
                double = !double;
                cur.push(c);
            }
            '\\' if !single => match chars.next() {
                Some('\n') => cur.push(' '),
                Some(n) => {
                    cur.push(c);
                    cur.push(n);
                }
                None => cur.push(c),
            },
            '#' if !single && !double && word_start => comment = true,
            '\n' if !single && !double => {
                let t = cur.trim();
                if !t.is_empty() {
                    out.push(t.to_owned());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        word_start = c.is_whitespace();
    }
    let t = cur.trim();
    if !t.is_empty() {
        out.push(t.to_owned());
    }
    out
}

/// The `dgctl` commands of a block: also `;` lists split.
fn commands(block: &str) -> Vec<String> {
    shell_commands(block)
        .iter()
        .flat_map(|c| c.split("; ").map(str::trim).map(str::to_owned).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect()
}

/// One command taken apart: leading `VAR=value` words, the arguments after `dgctl`, `<` and `>` files.
#[derive(Debug, Default)]
struct Command {
    env: Vec<(String, String)>,
    args: Vec<String>,
    stdin: Option<String>,
    stdout: Option<String>,
}

fn parse(cmd: &str) -> anyhow::Result<Command> {
    let words = shell_words::split(cmd).with_context(|| format!("cannot split {cmd:?}"))?;
    let mut c = Command::default();
    let mut it = words.into_iter().peekable();
    while let Some((k, v)) = it.peek().and_then(|w| w.split_once('=')).filter(|(k, _)| !k.starts_with('-')) {
        c.env.push((k.to_owned(), v.to_owned()));
        it.next();
    }
    ensure!(it.next().as_deref() == Some("dgctl"), "not a dgctl command: {cmd:?}");
    while let Some(w) = it.next() {
        match w.as_str() {
            "<" => c.stdin = Some(it.next().context("< without a file")?),
            ">" => c.stdout = Some(it.next().context("> without a file")?),
            _ => c.args.push(w),
        }
    }
    Ok(c)
}

/// What the test puts in place of the reader's environment, and answers to prompts: (README text, test
/// text). Every entry must be used.
/// The reader's environment as this test has it.
struct Site<'a> {
    endpoint: &'a str,
    fingerprint: &'a str,
    agent: &'a str,
    db: &'a str,
    user: &'a str,
    backups: &'a Path,
    restored: &'a str,
    work: &'a Path,
}

fn replacements(site: &Site<'_>) -> Vec<(String, String)> {
    let Site { endpoint, fingerprint, agent, db, user, backups, restored, work } = site;
    let backups = backups.display();
    [
        (
            "https://controller.example.com:7443 --ca-fingerprint sha256:…",
            format!("{endpoint} --ca-fingerprint {fingerprint}"),
        ),
        ("--endpoint … --ca-fingerprint …", format!("--endpoint {endpoint} --ca-fingerprint {fingerprint}")),
        ("--agent db-1", format!("--agent {agent}")),
        ("agent: db-1", format!("agent: {agent}")),
        ("/var/backups/dataguardian/db1", backups.to_string()),
        ("--database app --username backup", format!("--database {db} --username {user}")),
        ("database: app\n    username: backup", format!("database: {db}\n    username: {user}")),
        ("--database app_restored", format!("--database {restored}")),
        ("/etc/bash_completion.d/dgctl", work.join("dgctl.bash").display().to_string()),
        // Answers to prompts, as the README's comments give them.
        ("--create --wait", "--create --wait --yes".to_owned()),
        ("users create alice --role userops", "users create alice --role userops --password-env ALICE_PW".to_owned()),
        ("dgctl passwd", "dgctl passwd --current-password-env DGCTL_PASSWORD --password-env NEW_ADMIN_PW".to_owned()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b))
    .collect()
}

/// `text` with every replacement that matches applied, marking it used.
fn replace(text: &str, subst: &[(String, String)], used: &mut [bool]) -> String {
    let mut t = text.to_owned();
    for (i, (from, to)) in subst.iter().enumerate() {
        if t.contains(from.as_str()) {
            t = t.replace(from.as_str(), to);
            used[i] = true;
        }
    }
    t
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(cmd: &Command, work: &Path, env: &HashMap<&str, String>) -> anyhow::Result<Run> {
    let mut p = tokio::process::Command::new(super::dgctl::dgctl_bin()?);
    p.args(&cmd.args).current_dir(work).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    p.envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    p.stdin(match &cmd.stdin {
        Some(f) => Stdio::from(std::fs::File::open(work.join(f))?),
        None => Stdio::null(),
    });
    let out = p.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(f) = &cmd.stdout {
        std::fs::write(work.join(f), &out.stdout)?;
    }
    Ok(Run { code: out.status.code().unwrap_or(-1), stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_dgctl_commands_run_as_written() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let sh = blocks(section(&readme, SECTION)?, "sh")?;
    let yaml = blocks(section(&readme, SECTION)?, "yaml")?;
    ensure!(sh.len() >= 3 && yaml.len() == 1, "expected the section's sh blocks and one YAML file");

    let source = TestDb::create("readme_app").await?;
    source.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;").await?;
    let restored = TestDb::reserve("readme_restored");
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let work = cluster.dir.path().join("readme");
    let backups = cluster.dir.path().join("readme-backups");
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("pw.txt"), "alice-reset-password-1\n")?;
    let server = pg_server();
    let endpoint = cluster.api_endpoint();
    let fingerprint = cluster.ca_fingerprint();
    let mut subst = replacements(&Site {
        endpoint: &endpoint,
        fingerprint: &fingerprint,
        agent: &agent.id,
        db: &source.name,
        user: &server.user,
        backups: &backups,
        restored: &restored.name,
        work: &work,
    });
    let mut used = vec![false; subst.len()];
    let env: HashMap<&str, String> = [
        ("DGCTL_CONFIG", work.join("dgctl.toml").display().to_string()),
        ("DGCTL_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("APP_PW", server.password.clone()),
        ("HOOK_SECRET", "readme-hook-secret".to_owned()),
        ("ALICE_PW", "alice-first-password-1".to_owned()),
        ("NEW_ADMIN_PW", "admin-new-password-1".to_owned()),
        // No terminal: indicatif draws nothing, dialoguer never prompts.
        ("NO_COLOR", "1".to_owned()),
    ]
    .into_iter()
    .collect();

    let file = replace(&yaml[0], &subst, &mut used);
    std::fs::write(work.join("dataguardian.yaml"), &file)?;

    let mut ran = 0;
    for block in &sh {
        for raw in commands(block) {
            let line = replace(&raw, &subst, &mut used);
            let cmd = parse(&line)?;
            let r = run(&cmd, &work, &env).await?;
            ensure!(
                r.code == 0,
                "README command {raw:?} (run as {line:?}) exited {}: {}{}",
                r.code,
                r.stderr,
                r.stdout
            );
            ran += 1;
            // The token `tokens create` shows once is what the README's `DGCTL_TOKEN=…` stands for.
            if cmd.args.starts_with(&["tokens".to_owned(), "create".to_owned()]) {
                let secret = r
                    .stdout
                    .split(|c: char| c.is_whitespace() || c == '"')
                    .find(|w| w.starts_with("dgt_"))
                    .with_context(|| format!("no token secret in {:?}", r.stdout))?;
                subst.push(("DGCTL_TOKEN=…".to_owned(), format!("DGCTL_TOKEN={secret}")));
                used.push(false);
            }
        }
    }
    let unused: Vec<_> = subst.iter().zip(&used).filter(|(_, u)| !**u).map(|(s, _)| &s.0).collect();
    if !unused.is_empty() {
        bail!("replacements that match nothing in the README (stale?): {unused:?}");
    }
    ensure!(ran >= 30, "only {ran} commands found: is the section's layout what this test reads?");

    // What the commands did, checked from outside dgctl.
    let list = tokio::process::Command::new("pg_restore").arg("--list").arg(work.join("app.dump")).output().await?;
    ensure!(list.status.success() && String::from_utf8_lossy(&list.stdout).contains("TABLE public t"));
    assert_eq!(restored.table_fingerprint("t").await?, source.table_fingerprint("t").await?);
    let completion = std::fs::read_to_string(work.join("dgctl.bash"))?;
    assert!(completion.contains("_dgctl"), "a bash completion script");
    assert!(std::fs::read_dir(&backups)?.next().is_some(), "the backup is in the storage's directory");
    // The file applies idempotently ("a second apply: 0 changed"); logout ended the session.
    let login = parse(&format!(
        "dgctl login --endpoint {} --ca-fingerprint {} --context prod",
        cluster.api_endpoint(),
        cluster.ca_fingerprint()
    ))?;
    let mut env2 = env.clone();
    env2.insert("DGCTL_PASSWORD", "admin-new-password-1".to_owned());
    let r = run(&login, &work, &env2).await?;
    ensure!(r.code == 0, "login with the password `dgctl passwd` set: {}", r.stderr);
    let again = run(&parse("dgctl apply -f dataguardian.yaml -o json")?, &work, &env2).await?;
    ensure!(again.code == 0, "{}", again.stderr);
    let v: serde_json::Value = serde_json::from_str(&again.stdout)?;
    assert_eq!(v["changed"], 0, "{v}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[test]
fn readme_blocks_are_read() {
    let md = "x\n## A\n```sh\ndgctl a 'b # c' # comment\ndgctl d \\\n  --e f; dgctl g\n```\n## B\n```sh\nno\n```\n";
    let b = blocks(section(md, "## A").expect("section"), "sh").expect("blocks");
    assert_eq!(b.len(), 1);
    assert_eq!(commands(&b[0]), ["dgctl a 'b # c'", "dgctl d    --e f", "dgctl g"]);
    let g =
        "g -d '{\"a\":1,\n   \"b\":\"x # y\"}' \\\n  $CTL s/M   # note\nTOKEN=$(g -d '{}' $CTL s/L | jq -r .token)\n";
    assert_eq!(
        shell_commands(g),
        ["g -d '{\"a\":1,\n   \"b\":\"x # y\"}'    $CTL s/M", "TOKEN=$(g -d '{}' $CTL s/L | jq -r .token)"]
    );
    let c = parse("X=1 dgctl tokens revoke ci < in.txt > out.txt").expect("parse");
    assert_eq!(c.env, [("X".to_owned(), "1".to_owned())]);
    assert_eq!(c.args, ["tokens", "revoke", "ci"]);
    assert_eq!((c.stdin.as_deref(), c.stdout.as_deref()), (Some("in.txt"), Some("out.txt")));
}

/// The README's grpcurl commands: every command of every `sh` block that runs `grpcurl` or the README's `g`
/// wrapper, each run by bash exactly as written (its JSON bodies, pipes and redirections) once the reader's
/// environment is replaced and the `<… id>` placeholders are filled with the ids earlier commands returned.
struct GrpcurlReadme {
    commands: Vec<String>,
    used: Vec<bool>,
    subst: Vec<(String, String)>,
    subst_used: Vec<bool>,
    ids: HashMap<String, String>,
    prelude: String,
    work: std::path::PathBuf,
}

impl GrpcurlReadme {
    /// The index of the `nth` command containing `key`.
    fn find(&self, key: &str, nth: usize) -> anyhow::Result<usize> {
        self.commands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(key))
            .nth(nth)
            .map(|(i, _)| i)
            .with_context(|| format!("the README has no grpcurl command #{nth} containing {key:?}"))
    }

    /// Command `i` as it runs here.
    fn text(&mut self, i: usize) -> anyhow::Result<String> {
        let mut t = replace(&self.commands[i], &self.subst, &mut self.subst_used);
        let mut out = String::new();
        while let Some(start) = t.find('<') {
            let end = t[start..].find('>').map(|e| start + e);
            let name = end.map(|e| &t[start + 1..e]).filter(|n| {
                n.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == ' ')
            });
            match (name, end) {
                (Some(n), Some(e)) => {
                    let v = self.ids.get(n).with_context(|| format!("no value yet for <{n}> in {t:?}"))?;
                    out.push_str(&t[..start]);
                    out.push_str(v);
                    t = t[e + 1..].to_owned();
                }
                _ => {
                    out.push_str(&t[..=start]);
                    t = t[start + 1..].to_owned();
                }
            }
        }
        out.push_str(&t);
        Ok(out)
    }

    /// Runs the `nth` command containing `key` (after `extra`, e.g. another `TOKEN`); requires exit 0.
    async fn run_with(&mut self, key: &str, nth: usize, extra: &str, tail: &str) -> anyhow::Result<String> {
        let i = self.find(key, nth)?;
        let cmd = self.text(i)?;
        self.used[i] = true;
        let script = format!("set -euo pipefail\n{}\n{extra}\n{cmd}\n{tail}", self.prelude);
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .output()
            .await?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(
            out.status.success(),
            "README command {:?} (run as {cmd:?}) failed: {stderr}{stdout}",
            self.commands[i]
        );
        Ok(stdout.into_owned())
    }

    async fn run(&mut self, key: &str, nth: usize) -> anyhow::Result<String> {
        self.run_with(key, nth, "", "").await
    }

    /// Runs and parses the output as one JSON object.
    async fn json(&mut self, key: &str, nth: usize) -> anyhow::Result<serde_json::Value> {
        let out = self.run(key, nth).await?;
        serde_json::from_str(&out).with_context(|| format!("not one JSON object: {out}"))
    }

    /// Makes the command that contains `key` part of every later script (a variable or function).
    fn define(&mut self, key: &str) -> anyhow::Result<()> {
        let i = self.find(key, 0)?;
        let t = self.text(i)?;
        self.used[i] = true;
        self.prelude.push_str(&t);
        self.prelude.push('\n');
        Ok(())
    }
}

/// Waits until no execution is queued or running.
async fn wait_idle(c: &mut dg_tests::cluster::Clients) -> anyhow::Result<()> {
    use dg_proto::v1 as pb;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let all = c
            .executions
            .list_executions(dg_tests::cluster::authed(
                pb::ListExecutionsRequest { page_size: 500, ..Default::default() },
                &c.token,
            ))
            .await?
            .into_inner()
            .executions;
        let busy: Vec<_> = all
            .iter()
            .filter(|e| matches!(e.status(), pb::ExecutionStatus::Queued | pb::ExecutionStatus::Running))
            .map(|e| e.id.clone())
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "executions still running: {busy:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_commands_run_as_written() -> anyhow::Result<()> {
    use axum::{Router, http::StatusCode, routing::post};
    use dg_proto::v1::{
        self as pb, auth_service_client::AuthServiceClient, backup_service_client::BackupServiceClient,
    };
    use dg_tests::cluster::{USER_PASSWORD, authed, create_user, login_as, pending_approval};

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let mut commands = Vec::new();
    for block in blocks(&readme, "sh")? {
        commands.extend(shell_commands(&block).into_iter().filter(|c| {
            c.starts_with("g ") || c.starts_with("g() ") || c.contains("grpcurl ") || c.starts_with("CTL=")
        }));
    }
    ensure!(commands.len() >= 40, "only {} grpcurl commands found in the README", commands.len());

    let source = TestDb::create("readme_grpc").await?;
    source.connect().await?.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;").await?;
    let (restored, approved) = (TestDb::reserve("readme_grpc_restored"), TestDb::reserve("readme_grpc_approved"));
    let s3 = dg_tests::emulators::S3Server::start().await?;
    s3.create_bucket("backups").await?;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h2 = hits.clone();
    let hook = Router::new().route(
        "/dg",
        post(move || {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, hook).await;
    });

    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let work = cluster.dir.path().join("readme-grpcurl");
    let backups = cluster.dir.path().join("readme-grpcurl-backups");
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("ca.pem"), &cluster.ca_pem)?;
    let server = pg_server();
    let subst: Vec<(String, String)> = [
        ("CTL=controller.example.com:7443", format!("CTL=127.0.0.1:{}", cluster.api_addr.port())),
        (r#""username":"admin","password":"…""#, format!(r#""username":"admin","password":"{ADMIN_PASSWORD}""#)),
        ("/var/backups/dataguardian/db1", backups.display().to_string()),
        (r#""endpoint":"https://s3.example.com""#, format!(r#""endpoint":"{}","allowHttp":true"#, s3.endpoint)),
        (
            r#""accessKeyId":"…","secretAccessKey":"…""#,
            format!(r#""accessKeyId":"{}","secretAccessKey":"{}""#, s3.access_key_id(), s3.secret_access_key()),
        ),
        (r#""port":5432,"database":"app","#, format!(r#""port":{},"database":"{}","#, server.port, source.name)),
        (
            r#""username":"backup","password":"…""#,
            format!(r#""username":"{}","password":"{}""#, server.user, server.password),
        ),
        ("app_restored", restored.name.clone()),
        ("https://hooks.example.com/dg", format!("http://{hook_addr}/dg")),
        (r#""username":"dg","password":"…""#, r#""username":"dg","password":"smtp-password""#.to_owned()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b))
    .collect();
    let n = commands.len();
    let mut r = GrpcurlReadme {
        commands,
        used: vec![false; n],
        subst_used: vec![false; subst.len()],
        subst,
        ids: HashMap::new(),
        prelude: String::new(),
        work: work.clone(),
    };

    // Reflection, login, the wrapper.
    r.define("CTL=")?;
    assert!(r.run("$CTL list", 0).await?.contains("dataguardian.v1.BackupService"));
    assert!(r.run("describe dataguardian.v1.BackupService", 0).await?.contains("rpc RestoreBackup"));
    let token = r.run_with("TOKEN=$(", 0, "", "printf '%s' \"$TOKEN\"").await?;
    ensure!(token.starts_with("dgs_"), "the README's login gives a session token: {token:?}");
    r.prelude.push_str(&format!("TOKEN='{token}'\n"));
    r.define("g() {")?;

    // An agent enrolls with the join token the README's call made.
    let jt = r.json("AgentService/CreateJoinToken", 0).await?;
    let state_dir = cluster.dir.path().join("readme-agent");
    let state = dg_agent::state::StateDir::open(&state_dir)?;
    let (jt_token, jt_fp) =
        (jt["token"].as_str().unwrap_or_default(), jt["caFingerprint"].as_str().unwrap_or_default());
    let agent_id = dg_agent::enroll::enroll(&cluster.api_endpoint(), jt_token, jt_fp, &state).await?;
    drop(state);
    let agent = cluster.resume_agent(&mut c, &agent_id, &state_dir).await?;
    r.ids.insert("agent id".into(), agent_id.clone());
    assert!(r.run("AgentService/ListAgents", 0).await?.contains(&agent_id));

    // Storages, datasource, job.
    let local = id(&r.json("StorageService/CreateStorage", 0).await?);
    let offsite = id(&r.json("StorageService/CreateStorage", 1).await?);
    r.ids.insert("storage id".into(), local.clone());
    r.ids.insert("local id".into(), local);
    r.ids.insert("s3 id".into(), offsite);
    let t = r.json("StorageService/TestStorage", 0).await?;
    assert_eq!(t["ok"], true, "{t}");
    let ds = id(&r.json("DatasourceService/CreateDatasource", 0).await?);
    for k in ["datasource id", "ds", "scratch server ds"] {
        r.ids.insert(k.into(), ds.clone());
    }
    let t = r.json("DatasourceService/TestDatasource", 0).await?;
    assert_eq!(t["ok"], true, "{t}");
    let job = id(&r.json("BackupJobService/CreateBackupJob", 0).await?);
    r.ids.insert("job id".into(), job.clone());

    // Back up now and watch it end; cancel another run, queued while the agent is away; list failures.
    let ex = id(&r.json("BackupJobService/RunNow", 0).await?);
    r.ids.insert("execution id".into(), ex.clone());
    assert!(r.run("ExecutionService/WatchExecution", 0).await?.contains("EXECUTION_STATUS_COMPLETED"));
    agent.stop().await;
    c.wait_agent_status(&agent_id, pb::AgentStatus::Offline, std::time::Duration::from_secs(30)).await?;
    let queued = c.jobs.run_now(authed(pb::RunNowRequest { job_id: job.clone() }, &c.token)).await?.into_inner().id;
    r.ids.insert("execution id".into(), queued);
    assert_eq!(r.json("ExecutionService/CancelExecution", 0).await?["status"], "EXECUTION_STATUS_CANCELLED");
    r.ids.insert("execution id".into(), ex.clone());
    let agent = cluster.resume_agent(&mut c, &agent_id, &state_dir).await?;
    r.run("ExecutionService/ListExecutions", 0).await?;

    // Backups: list, verification restore, real restore, verify, download.
    let list = r.json("BackupService/ListBackups", 0).await?;
    assert_eq!(list["backups"][0]["id"], ex.as_str(), "{list}");
    r.ids.insert("backup id".into(), ex.clone());
    let v = id(&r.json("BackupService/RestoreBackup", 0).await?);
    assert_eq!(
        c.wait_execution(&v, std::time::Duration::from_secs(120)).await?.status(),
        pb::ExecutionStatus::Completed
    );
    let rr = id(&r.json("BackupService/RestoreBackup", 1).await?);
    assert_eq!(
        c.wait_execution(&rr, std::time::Duration::from_secs(120)).await?.status(),
        pb::ExecutionStatus::Completed
    );
    assert_eq!(restored.table_fingerprint("t").await?, source.table_fingerprint("t").await?);
    r.run("BackupService/VerifyBackup", 0).await?;
    assert!(r.run("BackupService/DownloadBackup", 0).await?.contains("data"));

    // Retention, pins, scrubbing.
    r.run("BackupJobService/PreviewRetention", 0).await?;
    r.run(r#""retention":{"mode":"RETENTION_MODE_GFS","keepDaily":7"#, 0).await?;
    assert_eq!(r.json("BackupService/PinBackup", 0).await?["pinned"], true);
    r.run("BackupService/UnpinBackup", 0).await?;
    r.run(r#""verify":{"cron""#, 0).await?;
    r.run("BackupService/VerifyBackup", 1).await?;

    // A restore drill and its evidence.
    let drill = id(&r.json("RestoreDrillService/CreateRestoreDrill", 0).await?);
    r.ids.insert("drill id".into(), drill);
    let run = id(&r.json("RestoreDrillService/RunRestoreDrill", 0).await?);
    r.ids.insert("run id".into(), run.clone());
    assert_eq!(id(&r.json("RestoreDrillService/GetDrillRun", 0).await?), run);
    r.run("RestoreDrillService/ExportDrillEvidence", 0).await?;
    let evidence: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.join("evidence.json"))?)?;
    ensure!(evidence.is_object() || evidence.is_array(), "evidence.json is JSON: {evidence}");

    // RPO, notification channels, a test delivery to the webhook, inbox.
    r.run(r#""rpo":"93600s""#, 0).await?;
    let channel = id(&r.json("NotificationService/CreateChannel", 0).await?);
    r.run("NotificationService/CreateChannel", 1).await?;
    r.ids.insert("channel id".into(), channel);
    r.run("NotificationService/TestChannel", 0).await?;
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the test delivery reached the webhook");
    r.run("NotificationService/ListDeliveries", 0).await?;
    r.run("NotificationService/ListInbox", 0).await?;
    r.run("NotificationService/MarkAllInboxRead", 0).await?;

    // Approvals: an operator's restore into the (now protected) datasource waits; the README's approver
    // lists and approves it; the operator repeats the same request with the approval.
    wait_idle(&mut c).await?;
    c.datasources
        .update_datasource(authed(
            pb::UpdateDatasourceRequest {
                id: ds.clone(),
                labels: [("env".to_owned(), "production".to_owned())].into(),
                ..Default::default()
            },
            &c.token,
        ))
        .await?;
    let ch = cluster.channel().await?;
    let oper = format!("oper-{}", dg_tests::suffix());
    create_user(&ch, &c.token, &oper, &["operator"]).await?;
    let op_token = login_as(&ch, &oper, USER_PASSWORD).await?;
    let op_req = serde_json::json!({"backupId": ex, "targetDatabase": approved.name, "createDatabase": true,
        "confirmTargetDatabase": approved.name});
    let e = BackupServiceClient::new(ch.clone())
        .restore_backup(authed(
            pb::RestoreBackupRequest {
                backup_id: ex.clone(),
                target_database: approved.name.clone(),
                create_database: true,
                confirm_target_database: approved.name.clone(),
                ..Default::default()
            },
            &op_token,
        ))
        .await
        .expect_err("a protected restore by an operator waits for an approval");
    let approval = pending_approval(&e)?;
    r.ids.insert("approval id".into(), approval.clone());
    r.ids.insert("the same request".into(), op_req.to_string());
    assert!(r.run("ApprovalService/ListApprovals", 0).await?.contains(&approval));
    r.run("ApprovalService/ApproveApproval", 0).await?;
    let done = id(&serde_json::from_str(&r.run_with("dg-approval", 0, &format!("TOKEN='{op_token}'"), "").await?)?);
    assert_eq!(
        c.wait_execution(&done, std::time::Duration::from_secs(120)).await?.status(),
        pb::ExecutionStatus::Completed
    );
    assert_eq!(approved.table_fingerprint("t").await?, source.table_fingerprint("t").await?);

    // Health, audit, then the backup's deletion and the logout.
    r.run("HealthService/GetSystemHealth", 0).await?;
    r.run("HealthService/GetDatasourceHealth", 0).await?;
    assert!(r.run("AuditService/ListAuditEvents", 0).await?.contains("backup.restore"));
    wait_idle(&mut c).await?;
    r.run("BackupService/DeleteBackup", 0).await?;
    r.run("AuthService/Logout", 0).await?;
    let e = AuthServiceClient::new(ch).me(authed(pb::MeRequest {}, &token)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let not_run: Vec<_> = r.commands.iter().zip(&r.used).filter(|(_, u)| !**u).map(|(c, _)| c).collect();
    ensure!(not_run.is_empty(), "README grpcurl commands no step ran: {not_run:#?}");
    let unused: Vec<_> = r.subst.iter().zip(&r.subst_used).filter(|(_, u)| !**u).map(|(s, _)| &s.0).collect();
    ensure!(unused.is_empty(), "replacements that match nothing in the README (stale?): {unused:?}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

/// The `dg-agent` binary next to the test executable (built by tests/run.sh).
pub(crate) fn agent_bin() -> anyhow::Result<std::path::PathBuf> {
    super::dgctl::workspace_bin("dg-agent")
}

#[tokio::test]
async fn readme_agent_keygen_runs_as_written() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let all: Vec<String> = blocks(&readme, "sh")?.iter().flat_map(|b| shell_commands(b)).collect();
    let line = all.iter().find(|c| c.starts_with("dg-agent keygen")).context("README has no dg-agent keygen")?;
    let state = tempfile::tempdir()?;
    let line = line.replace("/var/lib/dataguardian-agent", &state.path().display().to_string());
    ensure!(line.contains(&state.path().display().to_string()), "the README's state directory changed: {line}");
    let words = shell_words::split(&line)?;
    let out = tokio::process::Command::new(agent_bin()?).args(&words[1..]).output().await?;
    ensure!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    // As the README's comment says: keys/prod-2026.key, mode 0600.
    let key = state.path().join("keys").join("prod-2026.key");
    let mode = std::fs::metadata(&key)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "prod-2026");
    // A second keygen with the same id does not overwrite the key.
    let before = std::fs::read(&key)?;
    let again = tokio::process::Command::new(agent_bin()?).args(&words[1..]).output().await?;
    assert!(!again.status.success(), "an existing key is never replaced");
    assert_eq!(std::fs::read(&key)?, before);
    Ok(())
}
