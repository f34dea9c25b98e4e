//! dgctl's access commands against a real controller: a custom role, users created with passwords from the
//! environment, roles set, disabled and enabled; an API token created (its secret shown once) and used as a
//! `--token` context, then revoked; scope rules added and deleted; `passwd`; and a critical call (a user
//! deletion by a non-admin holding user.write) that exits 6 naming the pending approval, approved by the
//! admin and repeated with `--approval`.

use dg_tests::{cluster::Cluster, suffix};

use super::dgctl::{Ctl, dgctl_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgctl_users_tokens_and_approvals() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let work = cluster.dir.path().join("dgctl-access");
    std::fs::create_dir_all(&work)?;
    let config = work.join("dgctl.toml");
    let (alice_pw, alice_new_pw) = ("alice-password-1", "alice-password-2");
    let as_user = |password: &str, extra: Vec<(String, String)>| -> anyhow::Result<Ctl> {
        let mut envs = vec![
            ("DGCTL_PASSWORD".to_owned(), password.to_owned()),
            ("USER_PW".to_owned(), alice_pw.to_owned()),
            ("NEW_PW".to_owned(), alice_new_pw.to_owned()),
        ];
        envs.extend(extra);
        Ok(Ctl { bin: dgctl_bin()?, config: config.clone(), envs })
    };
    let admin = as_user(dg_tests::cluster::ADMIN_PASSWORD, vec![])?;
    let (endpoint, fp) = (cluster.api_endpoint(), cluster.ca_fingerprint());
    admin.ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &fp, "--context", "admin"]).await?;

    // A custom role and two users; the password comes from an environment variable, never a flag value.
    let (role, alice, victim) =
        (format!("userops-{}", suffix()), format!("alice-{}", suffix()), format!("victim-{}", suffix()));
    let perms = ["user.read", "user.write", "role.read", "token.create", "approval.read"];
    let mut args = vec!["--context", "admin", "roles", "create", &role, "--description", "user admins"];
    for p in &perms {
        args.extend(["--permission", p]);
    }
    let r = admin.json(&args).await?;
    assert_eq!(r["name"], role.as_str());
    assert_eq!(r["system"], false);
    assert_eq!(r["permissions"].as_array().map(Vec::len), Some(perms.len()));
    let catalogue = admin.json(&["--context", "admin", "roles", "permissions"]).await?;
    assert!(catalogue.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "approval.decide")), "{catalogue}");
    let u = admin
        .json(&["--context", "admin", "users", "create", &alice, "--role", &role, "--password-env", "USER_PW"])
        .await?;
    assert_eq!((u["kind"].as_str(), u["roles"][0].as_str()), (Some("password"), Some(role.as_str())));
    admin
        .ok(&["--context", "admin", "users", "create", &victim, "--role", "viewer", "--password-env", "USER_PW"])
        .await?;
    let o = admin.run(&["--context", "admin", "users", "create", "nopw", "--role", "viewer"]).await?;
    assert_eq!(o.code, 2, "no password source and no terminal is a usage error: {}", o.stderr);
    let v = admin.json(&["--context", "admin", "users", "set-roles", &victim, "--role", "operator"]).await?;
    assert_eq!(v["roles"], serde_json::json!(["operator"]));
    assert_eq!(admin.json(&["--context", "admin", "users", "disable", &victim]).await?["disabled"], true);
    assert_eq!(admin.json(&["--context", "admin", "users", "enable", &victim]).await?["disabled"], false);
    admin.ok(&["--context", "admin", "users", "reset-password", &victim, "--password-env", "NEW_PW"]).await?;
    let users = admin.json(&["--context", "admin", "users", "list"]).await?;
    let names: Vec<&str> =
        users.as_array().map(|a| a.iter().filter_map(|u| u["username"].as_str()).collect()).unwrap_or_default();
    assert!(names.contains(&alice.as_str()) && names.contains(&victim.as_str()), "{users}");

    // Scope rules.
    let rule = admin
        .json(&["--context", "admin", "scopes", "add", "--role", &role, "--kind", "datasource", "--label", "env=test"])
        .await?;
    assert_eq!((rule["effect"].as_str(), rule["labels"]["env"].as_str()), (Some("allow"), Some("test")));
    let rid = rule["id"].as_str().unwrap_or_default().to_owned();
    let rules = admin.json(&["--context", "admin", "scopes", "list", "--role", &role]).await?;
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    admin.ok(&["--context", "admin", "scopes", "delete", &rid]).await?;
    assert_eq!(
        admin.json(&["--context", "admin", "scopes", "list", "--role", &role]).await?.as_array().map(Vec::len),
        Some(0)
    );

    // An API token: the secret once in -o json, used as a --token context, then revoked (exit 4 after).
    let t = admin.json(&["--context", "admin", "tokens", "create", "ci", "--role", "viewer", "--ttl", "1d"]).await?;
    let secret = t["secret"].as_str().unwrap_or_default().to_owned();
    assert!(!secret.is_empty() && t["role"] == "viewer", "{t}");
    let listed = admin.json(&["--context", "admin", "tokens", "list"]).await?;
    assert!(
        listed.as_array().is_some_and(|a| a.iter().any(|x| x["name"] == "ci" && x.get("secret").is_none())),
        "{listed}"
    );
    let ci = as_user("", vec![("DGCTL_TOKEN".into(), secret.clone())])?;
    ci.ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &fp, "--context", "ci"]).await?;
    let seen = ci.json(&["--context", "ci", "users", "list"]).await?;
    assert_eq!(seen.as_array().map(Vec::len), users.as_array().map(Vec::len), "the token lists users: {seen}");
    assert_eq!(ci.json(&["--context", "ci", "datasources", "list"]).await?, serde_json::json!([]));
    let o = ci.run(&["--context", "ci", "users", "delete", &victim, "--yes"]).await?;
    assert_eq!(o.code, 4, "a viewer token cannot delete users: {}", o.stderr);
    let revoked = admin.json(&["--context", "admin", "tokens", "revoke", "ci"]).await?;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(ci.run(&["--context", "ci", "users", "list"]).await?.code, 4);

    // passwd: alice changes her own password; the old one no longer logs in.
    let alice_ctl = as_user(alice_pw, vec![("CUR_PW".into(), alice_pw.into())])?;
    alice_ctl
        .ok(&["login", "--endpoint", &endpoint, "--ca-fingerprint", &fp, "--context", "alice", "--user", &alice])
        .await?;
    alice_ctl
        .ok(&["--context", "alice", "passwd", "--current-password-env", "CUR_PW", "--password-env", "NEW_PW"])
        .await?;
    let o = alice_ctl.run(&["login", "--context", "alice", "--user", &alice]).await?;
    assert_eq!(o.code, 4, "the old password is refused: {}", o.stderr);
    let alice_ctl = as_user(alice_new_pw, vec![])?;
    alice_ctl.ok(&["login", "--context", "alice", "--user", &alice]).await?;

    // A critical call by a non-admin: exit 6 naming the approval; approved by the admin; repeated with it.
    let o = alice_ctl.run(&["--context", "alice", "users", "delete", &victim, "--yes"]).await?;
    assert_eq!(o.code, 6, "approval required exits 6: {}", o.stderr);
    let id = o
        .stderr
        .split("--approval ")
        .nth(1)
        .map(|r| r.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect::<String>())
        .unwrap_or_default();
    assert_eq!(id.len(), 36, "the message names the approval and how to proceed: {}", o.stderr);
    assert!(o.stderr.contains(&format!("dgctl approvals approve {id}")), "{}", o.stderr);
    let pending = admin.json(&["--context", "admin", "approvals", "list", "--pending"]).await?;
    assert!(
        pending.as_array().is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str() && x["state"] == "pending")),
        "{pending}"
    );
    let got = alice_ctl.json(&["--context", "alice", "approvals", "get", &id]).await?;
    assert_eq!(
        (got["action"].as_str(), got["requested_by"].as_str()),
        (Some("user.delete"), Some(alice.as_str())),
        "{got}"
    );
    let a = admin.json(&["--context", "admin", "approvals", "approve", &id, "--reason", "offboarding"]).await?;
    assert_eq!(a["state"], "approved");
    alice_ctl.ok(&["--context", "alice", "--approval", &id, "users", "delete", &victim, "--yes"]).await?;
    assert_eq!(admin.run(&["--context", "admin", "users", "get", &victim]).await?.code, 3, "deleted");
    let again = alice_ctl.run(&["--context", "alice", "--approval", &id, "users", "delete", &alice, "--yes"]).await?;
    assert_ne!(again.code, 0, "an approval is for one exact call, used once");

    cluster.stop().await;
    Ok(())
}
