//! The README's `dgctl` commands, run as written: every command of every `sh` block of the "Operating with
//! dgctl" section, in order, and its YAML file applied, against a real controller, agent and PostgreSQL.
//!
//! Only what names the reader's own environment is replaced, each replacement listed in [`replacements`] and
//! required to match (a stale one fails the test): the endpoint and CA fingerprint, the agent, the database
//! and its user, the backup directory and file paths. Answers to prompts (there is no terminal here) are added
//! the way the README's comments say (`--yes`, a password source); the prompts themselves are tested in
//! `dgctl.rs` and `dgctl_access.rs`. The YAML file is checked to be idempotent as the README says.

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

/// The README's fenced blocks of `lang` in `section` (from its heading to the next `## ` heading).
fn blocks(readme: &str, section: &str, lang: &str) -> anyhow::Result<Vec<String>> {
    let start = readme.find(section).with_context(|| format!("README has no {section:?}"))?;
    let body = &readme[start + section.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&fence) {
        let after = &rest[i + fence.len()..];
        let end = after.find("```").context("unterminated block")?;
        out.push(after[..end].to_owned());
        rest = &after[end + 3..];
    }
    Ok(out)
}

/// A line without its shell comment (`#` starting a word, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut prev_space) = (None, true);
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// The commands of a block: continuation lines joined, comments dropped, `;` lists split.
fn commands(block: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in block.lines() {
        let line = strip_comment(line).trim_end();
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            continue;
        }
        cur.push_str(line);
        joined.push(std::mem::take(&mut cur));
    }
    joined
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
    let sh = blocks(&readme, SECTION, "sh")?;
    let yaml = blocks(&readme, SECTION, "yaml")?;
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
    let b = blocks(md, "## A", "sh").expect("blocks");
    assert_eq!(b.len(), 1);
    assert_eq!(commands(&b[0]), ["dgctl a 'b # c'", "dgctl d   --e f", "dgctl g"]);
    let c = parse("X=1 dgctl tokens revoke ci < in.txt > out.txt").expect("parse");
    assert_eq!(c.env, [("X".to_owned(), "1".to_owned())]);
    assert_eq!(c.args, ["tokens", "revoke", "ci"]);
    assert_eq!((c.stdin.as_deref(), c.stdout.as_deref()), (Some("in.txt"), Some("out.txt")));
}
