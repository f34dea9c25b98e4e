//! Notifications and RPO through the public API with real receivers: an HTTP webhook receiver on loopback
//! (axum) that checks every HMAC signature, a Slack-style receiver, and an SMTP sink (aiosmtpd) requiring
//! STARTTLS (a private CA given as `ca_pem`) and AUTH. An RPO breach fires once to each channel however many
//! RPO rounds pass, and a backup brings one `rpo_recovered`; a receiver answering 500 is retried with backoff
//! until the channel's `max_attempts`, visible in ListDeliveries; TestChannel delivers; a failed execution
//! lands in the inbox (mark read, mark all read, unread count, delete); secrets never come back; bad input is
//! refused naming the field, and nothing is created.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    emulators::SmtpSink,
    pg::TestDb,
};
use hmac::{KeyInit, Mac};
use sqlx::Executor;
use tonic::Code;

const SECRET: &str = "whsec-0123456789abcdef-notify";

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    body: serde_json::Value,
    event: String,
    delivery: String,
    signature_ok: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().expect("lock").iter().filter(|h| h.path == path).cloned().collect()
    }

    fn kinds(&self, path: &str, kind: &str) -> usize {
        self.hits(path)
            .iter()
            .filter(|h| h.event == kind || h.body["text"].as_str().is_some_and(|t| t.contains(kind)))
            .count()
    }
}

fn record(r: &Receiver, path: &str, headers: &HeaderMap, body: &Bytes) {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let ts = h("x-dataguardian-timestamp");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    r.hits.lock().expect("lock").push(Hit {
        path: path.into(),
        body: serde_json::from_slice(body).unwrap_or_default(),
        event: h("x-dataguardian-event"),
        delivery: h("x-dataguardian-delivery"),
        signature_ok: h("x-dataguardian-signature") == want,
    });
}

/// Serves /hook (200), /fail (500) and /slack (200) on a free loopback port.
async fn receiver() -> anyhow::Result<(Receiver, String)> {
    let r = Receiver::default();
    let app = Router::new()
        .route(
            "/hook",
            post(|State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                record(&r, "/hook", &headers, &body);
                StatusCode::OK
            }),
        )
        .route(
            "/fail",
            post(|State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                record(&r, "/fail", &headers, &body);
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/slack/T000/B000/token-in-path",
            post(|State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                record(&r, "/slack", &headers, &body);
                StatusCode::OK
            }),
        )
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((r, base))
}

fn webhook(name: &str, url: String, events: &[&str], max_attempts: u32) -> pb::CreateChannelRequest {
    pb::CreateChannelRequest {
        name: name.into(),
        kind: pb::ChannelKind::Webhook as i32,
        webhook: Some(pb::WebhookConfig { url, secret: SECRET.into(), has_secret: false }),
        events: events.iter().map(|e| e.to_string()).collect(),
        max_attempts,
        timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
        ..Default::default()
    }
}

async fn create(c: &mut Clients, r: pb::CreateChannelRequest) -> Result<pb::NotificationChannel, tonic::Status> {
    Ok(c.notifications.create_channel(authed(r, &c.token)).await?.into_inner())
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !ok() {
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn get_job(c: &mut Clients, id: &str) -> anyhow::Result<pb::BackupJob> {
    Ok(c.jobs.get_backup_job(authed(pb::GetBackupJobRequest { id: id.into() }, &c.token)).await?.into_inner())
}

fn emails_with(sink: &SmtpSink, kind: &str) -> anyhow::Result<usize> {
    Ok(sink.received()?.iter().filter(|m| m.contains(&format!("[DataGuardian] {kind}"))).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpo_breach_fires_once_per_channel_and_a_backup_recovers_it() -> anyhow::Result<()> {
    let src = TestDb::create("rpo").await?;
    src.connect().await?.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)").await?;
    let mut cluster = Cluster::start_with(ClusterOptions { rpo_interval_secs: Some(1), ..Default::default() }).await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (rx, base) = receiver().await?;
    let sink = SmtpSink::start().await?;

    let kinds = ["rpo_breached", "rpo_recovered"];
    let hook = create(&mut c, webhook("rpo-hook", format!("{base}/hook"), &kinds, 5)).await?;
    let slack = pb::CreateChannelRequest {
        name: "rpo-slack".into(),
        kind: pb::ChannelKind::Slack as i32,
        slack: Some(pb::SlackConfig { url: format!("{base}/slack/T000/B000/token-in-path"), ..Default::default() }),
        events: kinds.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    let slack = create(&mut c, slack).await?;
    let email = pb::CreateChannelRequest {
        name: "rpo-mail".into(),
        kind: pb::ChannelKind::Email as i32,
        email: Some(pb::EmailConfig {
            host: "127.0.0.1".into(),
            port: u32::from(sink.port),
            security: pb::SmtpSecurity::Starttls as i32,
            username: sink.user.clone(),
            password: sink.password.clone(),
            from: "dataguardian@example.test".into(),
            to: vec!["oncall@example.test".into()],
            ca_pem: sink.ca_pem.clone(),
            ..Default::default()
        }),
        events: kinds.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    let email = create(&mut c, email).await?;
    // A selector that the job's labels do not satisfy: this channel must stay silent.
    let mut other = webhook("rpo-other-team", format!("{base}/hook"), &kinds, 5);
    other.label_selector.insert("team".into(), "payments".into());
    let other = create(&mut c, other).await?;

    // A job with a 15 s objective and no backup: it breaches 15 s after its creation (and again 15 s after
    // its next backup, which leaves the checks below a wide margin).
    let storage = c.local_storage(&agent.id, &cluster.dir.path().join("store")).await?;
    let ds = c.datasource(pb::Engine::Postgres, &agent.id, &src.name).await?;
    let req = pb::CreateBackupJobRequest {
        name: "rpo-job".into(),
        datasource_id: ds.id.clone(),
        storage_ids: vec![storage.id.clone()],
        rpo: Some(prost_types::Duration { seconds: 15, nanos: 0 }),
        labels: [("team".to_owned(), "core".to_owned())].into(),
        ..Default::default()
    };
    let job = c.jobs.create_backup_job(authed(req, &c.token)).await?.into_inner();
    assert_eq!(job.rpo.as_ref().map(|d| d.seconds), Some(15));
    assert_eq!(job.labels.get("team").map(String::as_str), Some("core"));
    assert!(job.rpo_breached_since.is_none());

    wait_until("rpo_breached at the webhook", Duration::from_secs(30), || rx.kinds("/hook", "rpo_breached") >= 1)
        .await?;
    wait_until("rpo_breached at the SMTP sink", Duration::from_secs(30), || {
        emails_with(&sink, "rpo_breached").unwrap_or(0) >= 1
    })
    .await?;
    wait_until("rpo_breached at the slack receiver", Duration::from_secs(30), || {
        rx.kinds("/slack", "rpo_breached") >= 1
    })
    .await?;
    let breached = get_job(&mut c, &job.id).await?;
    assert!(breached.rpo_breached_since.is_some(), "{breached:?}");
    // Several RPO rounds later: still exactly one of each.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rx.kinds("/hook", "rpo_breached"), 1, "{:?}", rx.hits("/hook"));
    assert_eq!(rx.kinds("/slack", "rpo_breached"), 1);
    assert_eq!(emails_with(&sink, "rpo_breached")?, 1);
    let hit = &rx.hits("/hook")[0];
    assert!(hit.signature_ok, "the HMAC signature verifies: {hit:?}");
    assert_eq!(hit.body["kind"], "rpo_breached");
    assert_eq!(hit.body["subject"]["job_id"], job.id.as_str());
    assert_eq!(hit.body["labels"]["team"], "core");
    assert!(!hit.delivery.is_empty());
    let mail = sink.received()?.remove(0);
    assert!(mail.contains("X-Sink-Tls: yes") && mail.contains("X-Sink-Auth: yes"), "STARTTLS and AUTH: {mail}");
    assert!(mail.contains("oncall@example.test"));

    // A backup: one rpo_recovered, and the job shows no breach.
    let b = c.run_job(&job.id).await?;
    assert_eq!(b.status, pb::ExecutionStatus::Completed as i32, "{}", b.error);
    wait_until("rpo_recovered at the webhook", Duration::from_secs(6), || rx.kinds("/hook", "rpo_recovered") >= 1)
        .await?;
    wait_until("rpo_recovered at the SMTP sink", Duration::from_secs(6), || {
        emails_with(&sink, "rpo_recovered").unwrap_or(0) >= 1
    })
    .await?;
    assert!(get_job(&mut c, &job.id).await?.rpo_breached_since.is_none());
    assert_eq!(rx.kinds("/hook", "rpo_recovered"), 1);
    assert_eq!(rx.kinds("/hook", "rpo_breached"), 1, "no second breach yet");
    assert!(rx.hits("/hook").iter().all(|h| h.signature_ok));

    // The deliveries are on record, per channel; the label-filtered channel got none. A receiver may have the
    // message a moment before its delivery is marked delivered: wait for the records.
    for ch in [&hook, &slack, &email] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ds = loop {
            let req = pb::ListDeliveriesRequest { channel_id: ch.id.clone(), ..Default::default() };
            let ds = c.notifications.list_deliveries(authed(req, &c.token)).await?.into_inner().deliveries;
            if ds.iter().all(|d| d.status == "delivered") || tokio::time::Instant::now() > deadline {
                break ds;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ds.len(), 2, "{} {ds:?}", ch.name);
        assert!(ds.iter().all(|d| d.status == "delivered" && d.attempts == 1), "{ds:?}");
    }
    let req = pb::ListDeliveriesRequest { channel_id: other.id.clone(), ..Default::default() };
    assert!(c.notifications.list_deliveries(authed(req, &c.token)).await?.into_inner().deliveries.is_empty());
    // Both events are in the inbox.
    let inbox = c.notifications.list_inbox(authed(pb::ListInboxRequest::default(), &c.token)).await?.into_inner();
    let kinds: Vec<&str> = inbox.items.iter().map(|i| i.kind.as_str()).collect();
    assert!(kinds.contains(&"rpo_breached") && kinds.contains(&"rpo_recovered"), "{kinds:?}");

    // Labels merge on update; a zero RPO clears the objective (and with it any breach state).
    let upd = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        rpo: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        labels: [("tier".to_owned(), "gold".to_owned())].into(),
        ..Default::default()
    };
    let j = c.jobs.update_backup_job(authed(upd, &c.token)).await?.into_inner();
    assert!(j.rpo.is_none() && j.rpo_breached_since.is_none(), "{j:?}");
    assert_eq!(
        (j.labels.get("team").map(String::as_str), j.labels.get("tier").map(String::as_str)),
        (Some("core"), Some("gold"))
    );
    let upd = pb::UpdateBackupJobRequest {
        id: job.id.clone(),
        rpo: Some(prost_types::Duration { seconds: 0, nanos: 5 }),
        ..Default::default()
    };
    let e = c.jobs.update_backup_job(authed(upd, &c.token)).await.expect_err("fractional rpo");
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("rpo"), "{e:?}");

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_are_retried_tests_deliver_and_the_inbox_tracks_failures() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut c = cluster.clients().await?;
    let agent = cluster.start_agent(&mut c).await?;
    let (rx, base) = receiver().await?;

    // Bad input names the field and creates nothing.
    let cases = [
        (webhook("bad-url", "ftp://127.0.0.1/x".into(), &[], 3), "webhook.url"),
        (webhook("bad-kind", format!("{base}/hook"), &["execution_exploded"], 3), "events"),
        (
            pb::CreateChannelRequest {
                name: "bad-smtp".into(),
                kind: pb::ChannelKind::Email as i32,
                email: Some(pb::EmailConfig {
                    host: "smtp.example.com".into(),
                    security: pb::SmtpSecurity::None as i32,
                    from: "dg@example.com".into(),
                    to: vec!["ops@example.com".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "email.security",
        ),
    ];
    for (req, field) in cases {
        let e = create(&mut c, req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let listed = c.notifications.list_channels(authed(pb::ListChannelsRequest::default(), &c.token)).await?;
    assert!(listed.into_inner().channels.is_empty(), "nothing created");

    // A test send delivers at once, signed.
    let hook = create(&mut c, webhook("ok-hook", format!("{base}/hook?token=query-secret"), &[], 5)).await?;
    let d = c.notifications.test_channel(authed(pb::TestChannelRequest { id: hook.id.clone() }, &c.token)).await?;
    let d = d.into_inner();
    assert_eq!(
        (d.status.as_str(), d.attempts, d.last_status, d.event_kind.as_str()),
        ("delivered", 1, 200, "test"),
        "{d:?}"
    );
    let hits = rx.hits("/hook");
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signature_ok && hits[0].event == "test" && hits[0].delivery == d.id, "{hits:?}");

    // Secrets never come back: not the signing secret, not the webhook's query string, not the Slack URL.
    let slack = pb::CreateChannelRequest {
        name: "slack".into(),
        kind: pb::ChannelKind::Slack as i32,
        slack: Some(pb::SlackConfig { url: format!("{base}/slack/T000/B000/token-in-path"), ..Default::default() }),
        ..Default::default()
    };
    let slack = create(&mut c, slack).await?;
    let got = c.notifications.get_channel(authed(pb::GetChannelRequest { id: hook.id.clone() }, &c.token)).await?;
    let list = c.notifications.list_channels(authed(pb::ListChannelsRequest::default(), &c.token)).await?;
    let text = format!("{:?} {:?} {:?} {:?}", got.get_ref(), list.get_ref(), hook, slack);
    for secret in [SECRET, "query-secret", "token-in-path"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(got.get_ref().webhook.as_ref().is_some_and(|w| w.has_secret));
    assert!(slack.slack.as_ref().is_some_and(|s| s.has_url && s.url_host == "127.0.0.1"));

    // A receiver answering 500: retried with backoff, then failed after max_attempts.
    let failing = create(&mut c, webhook("fail-hook", format!("{base}/fail"), &["execution_failed"], 3)).await?;
    // A job whose datasource names a database that does not exist fails (the test server trusts loopback
    // logins, so a wrong password alone would not).
    let server = dg_tests::pg_server();
    let req = pb::CreateDatasourceRequest {
        name: "missing-database".into(),
        engine: pb::Engine::Postgres as i32,
        host: server.host,
        port: u32::from(server.port),
        database: "dg_no_such_database".into(),
        username: server.user,
        password: server.password,
        tls_mode: pb::TlsMode::Disable as i32,
        agent_id: agent.id.clone(),
        ..Default::default()
    };
    let ds = c.datasources.create_datasource(authed(req, &c.token)).await?.into_inner();
    let storage = c.local_storage(&agent.id, &cluster.dir.path().join("store")).await?;
    let job = c.job(&ds.id, &[&storage], pb::StorageStrategy::Fallback, "").await?;
    let ex = c.run_job(&job.id).await?;
    assert_eq!(ex.status, pb::ExecutionStatus::Failed as i32, "{ex:?}");

    wait_until("three attempts at the failing receiver", Duration::from_secs(30), || rx.hits("/fail").len() >= 3)
        .await?;
    let end = Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let req = pb::ListDeliveriesRequest { channel_id: failing.id.clone(), ..Default::default() };
        let ds = c.notifications.list_deliveries(authed(req, &c.token)).await?.into_inner().deliveries;
        if let Some(d) = ds.into_iter().find(|d| d.status == "failed") {
            break d;
        }
        anyhow::ensure!(Instant::now() < end, "the delivery was not marked failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((delivery.attempts, delivery.last_status, delivery.event_kind.as_str()), (3, 500, "execution_failed"));
    assert!(delivery.last_error.contains("HTTP 500") && !delivery.last_error.contains("/fail"), "{delivery:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.hits("/fail").len(), 3, "no attempt after max_attempts");
    assert!(rx.hits("/fail").iter().all(|h| h.signature_ok && h.delivery == delivery.id), "one idempotency key");
    let req = pb::ListDeliveriesRequest { status: "failed".into(), ..Default::default() };
    let failed = c.notifications.list_deliveries(authed(req, &c.token)).await?.into_inner().deliveries;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let req = pb::ListDeliveriesRequest { status: "lost".into(), ..Default::default() };
    let e = c.notifications.list_deliveries(authed(req, &c.token)).await.expect_err("bad status");
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("status"), "{e:?}");

    // Health flips (critical -> healthy -> critical) are events; repeated checks with the same result are not.
    let test_ds = |c: &mut Clients| {
        let req = authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &c.token);
        let mut client = c.datasources.clone();
        async move { anyhow::Ok(client.test_datasource(req).await?.into_inner()) }
    };
    assert!(!test_ds(&mut c).await?.ok, "the missing database fails the check");
    let fix =
        pb::UpdateDatasourceRequest { id: ds.id.clone(), database: Some("postgres".into()), ..Default::default() };
    c.datasources.update_datasource(authed(fix, &c.token)).await?;
    assert!(test_ds(&mut c).await?.ok);
    assert!(test_ds(&mut c).await?.ok);
    let flips = |items: &[pb::InboxItem]| {
        items.iter().filter(|i| i.kind == "datasource_health_changed" && i.datasource_id == ds.id).count()
    };
    let inbox = c.notifications.list_inbox(authed(pb::ListInboxRequest::default(), &c.token)).await?.into_inner();
    assert_eq!(flips(&inbox.items), 1, "{:?}", inbox.items);
    let healthy = inbox.items.iter().find(|i| i.kind == "datasource_health_changed").expect("flip");
    assert!(healthy.payload_json.contains("\"healthy\""), "{healthy:?}");

    // The inbox: the failure is there (test sends are not), unread; mark read, mark all read, delete.
    let list = |unread_only| pb::ListInboxRequest { unread_only, ..Default::default() };
    let inbox = c.notifications.list_inbox(authed(list(false), &c.token)).await?.into_inner();
    let failure = inbox.items.iter().find(|i| i.kind == "execution_failed").expect("execution_failed in the inbox");
    assert_eq!(failure.execution_id, ex.id);
    assert_eq!(failure.job_id, job.id);
    assert!(!failure.read && inbox.items.iter().all(|i| i.kind != "test"), "{inbox:?}");
    assert_eq!(inbox.unread_count as usize, inbox.items.len());
    let before = inbox.unread_count;
    let req = pb::MarkInboxReadRequest { ids: vec![failure.id.clone()] };
    assert_eq!(c.notifications.mark_inbox_read(authed(req.clone(), &c.token)).await?.into_inner().marked, 1);
    assert_eq!(c.notifications.mark_inbox_read(authed(req, &c.token)).await?.into_inner().marked, 0, "idempotent");
    let now = c.notifications.list_inbox(authed(list(false), &c.token)).await?.into_inner();
    assert_eq!(now.unread_count, before - 1);
    assert!(now.items.iter().any(|i| i.id == failure.id && i.read));
    c.notifications.mark_all_inbox_read(authed(pb::MarkAllInboxReadRequest {}, &c.token)).await?;
    let now = c.notifications.list_inbox(authed(list(true), &c.token)).await?.into_inner();
    assert_eq!((now.unread_count, now.items.len()), (0, 0));
    let req = pb::DeleteInboxItemRequest { id: failure.id.clone() };
    c.notifications.delete_inbox_item(authed(req.clone(), &c.token)).await?;
    let e = c.notifications.delete_inbox_item(authed(req, &c.token)).await.expect_err("gone");
    assert_eq!(e.code(), Code::NotFound);
    let now = c.notifications.list_inbox(authed(list(false), &c.token)).await?.into_inner();
    assert!(now.items.iter().all(|i| i.id != failure.id));

    agent.stop().await;
    cluster.stop().await;
    Ok(())
}
