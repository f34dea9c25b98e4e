//! The controller's OIDC ID-token verifier against a real OpenID provider (npm `oidc-provider` on loopback,
//! see `dg_tests::oidc`): good tokens of every signing algorithm with roles mapped from `groups`; refusals of a
//! wrong audience, an expired token, a wrong or missing nonce, an unknown key, a forged signature, `alg: none`,
//! HMAC and an issuer mismatch, none of which quotes the token; and a key rotation picked up after an unknown
//! `kid`, with refetches rate-limited.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use dg_controller::{
    error::ControllerError,
    service::oidc::{OidcConfig, OidcVerifier},
};
use dg_tests::oidc::{OidcProvider, device_flow_id_token, id_token_with_nonce};
use serde_json::{Value, json};

fn config(provider: &OidcProvider, client_id: &str) -> OidcConfig {
    let mut c = OidcConfig::new(provider.issuer_url(), client_id);
    c.role_map = [("dg-admins", "admin"), ("dg-operators", "operator"), ("dg-viewers", "viewer")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .into();
    c
}

/// Splits a JWT into its decoded header and claims.
fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut next = || -> Value {
        let raw = URL_SAFE_NO_PAD.decode(it.next().expect("a JWT part")).expect("base64url");
        serde_json::from_slice(&raw).expect("json")
    };
    (next(), next())
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// Asserts a refusal: `Unauthenticated`, with `why` in the message and no trace of the token.
#[track_caller]
fn assert_refused(r: Result<impl std::fmt::Debug, ControllerError>, token: &str, why: &str) {
    let e = r.expect_err(why);
    let text = e.to_string();
    assert!(matches!(e, ControllerError::Unauthenticated(_)), "{why}: {e:?}");
    assert!(text.contains(why), "expected \"{why}\" in: {text}");
    let sig = token.rsplit('.').next().unwrap_or_default();
    assert!(!text.contains(token) && (sig.len() < 8 || !text.contains(sig)), "the error quotes the token: {text}");
}

/// A token signed by a P-256 key the provider never published, with every claim right.
fn token_signed_by_a_stranger(provider: &OidcProvider, kid: &str, nonce: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let enc = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": provider.issuer(), "aud": "dg-cli", "sub": "alice", "iat": now, "exp": now + 300,
        "nonce": nonce, "preferred_username": "alice", "groups": ["dg-admins"],
    });
    jsonwebtoken::encode(&header, &claims, &enc).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_good_tokens_of_every_algorithm_map_roles() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let provider = OidcProvider::start().await?;
    let verifier = OidcVerifier::discover(&config(&provider, "dg-cli")).await?;

    let info = verifier.client_info();
    assert_eq!((info.issuer.as_str(), info.client_id.as_str()), (provider.issuer(), "dg-cli"));
    for (endpoint, path) in [
        (&info.device_authorization_endpoint, "/device/auth"),
        (&info.authorization_endpoint, "/auth"),
        (&info.token_endpoint, "/token"),
    ] {
        assert_eq!(endpoint.as_ref().map(|u| u.path()), Some(path));
    }

    let token = id_token_with_nonce(&provider, "dg-cli", "alice", "nonce-a").await?;
    assert_eq!(parts(&token).0["alg"], "RS256");
    let alice = verifier.verify_id_token(&token, "nonce-a").await?;
    assert_eq!(alice.issuer, provider.issuer());
    assert_eq!((alice.subject.as_str(), alice.username.as_str()), ("alice", "alice"));
    assert_eq!(alice.email.as_deref(), Some("alice@example.test"));
    assert_eq!(alice.roles, ["admin"], "dg-admins maps to admin; staff maps to nothing");

    // `groups` as a single string; a user without preferred_username is named by e-mail.
    let bob = verifier.verify_id_token(&id_token_with_nonce(&provider, "dg-cli", "bob", "n-b").await?, "n-b").await?;
    assert_eq!((bob.username.as_str(), bob.roles.as_slice()), ("bob", ["operator".to_owned()].as_slice()));
    let dave = verifier.verify_id_token(&id_token_with_nonce(&provider, "dg-cli", "dave", "n-d").await?, "n-d").await?;
    assert_eq!(
        (dave.username.as_str(), dave.roles.as_slice()),
        ("dave@example.test", ["viewer".to_owned()].as_slice())
    );

    // No mapped group: refused without a default role, the default role with one.
    let carol = id_token_with_nonce(&provider, "dg-cli", "carol", "n-c").await?;
    let e = verifier.verify_id_token(&carol, "n-c").await.expect_err("carol has no role");
    assert!(matches!(e, ControllerError::PermissionDenied(_)), "{e:?}");
    assert!(e.to_string().contains("no DataGuardian role"), "{e}");
    let with_default =
        OidcVerifier::discover(&OidcConfig { default_role: Some("viewer".into()), ..config(&provider, "dg-cli") })
            .await?;
    assert_eq!(with_default.verify_id_token(&carol, "n-c").await?.roles, ["viewer"]);

    // Every asymmetric algorithm the provider signs with.
    for (client, alg) in [("dg-cli-ps256", "PS256"), ("dg-cli-es256", "ES256"), ("dg-cli-eddsa", "EdDSA")] {
        let v = OidcVerifier::discover(&config(&provider, client)).await?;
        let token = id_token_with_nonce(&provider, client, "alice", "n-alg").await?;
        assert_eq!(parts(&token).0["alg"], alg);
        let id = v.verify_id_token(&token, "n-alg").await?;
        assert_eq!((id.subject.as_str(), id.roles.as_slice()), ("alice", ["admin".to_owned()].as_slice()), "{alg}");
    }

    // The device flow works end to end, but this provider puts no nonce into its ID token (even when one is
    // sent with the device authorization), so the verifier, which requires one, refuses it.
    let device_token = device_flow_id_token(&provider, "dg-cli", "alice", Some("n-dev")).await?;
    let (_, claims) = parts(&device_token);
    assert_eq!((claims["sub"].as_str(), claims["aud"].as_str()), (Some("alice"), Some("dg-cli")));
    assert!(claims.get("nonce").is_none(), "oidc-provider does not echo a device-flow nonce: {claims}");
    assert_refused(verifier.verify_id_token(&device_token, "n-dev").await, &device_token, "nonce is missing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_bad_tokens_and_a_wrong_issuer_are_refused() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let provider = OidcProvider::start().await?;
    let verifier = OidcVerifier::discover(&config(&provider, "dg-cli")).await?;
    let good = id_token_with_nonce(&provider, "dg-cli", "alice", "n-1").await?;
    verifier.verify_id_token(&good, "n-1").await?;

    // Nonce: another sign-in's, or none given.
    assert_refused(verifier.verify_id_token(&good, "n-2").await, &good, "nonce does not match");
    let e = verifier.verify_id_token(&good, "").await.expect_err("empty nonce");
    assert!(matches!(e, ControllerError::Invalid(_)) && e.to_string().contains("nonce"), "{e:?}");

    // Audience: a token the same provider issued to another application.
    let other = id_token_with_nonce(&provider, "other-app", "alice", "n-1").await?;
    assert_refused(verifier.verify_id_token(&other, "n-1").await, &other, "aud");

    // Expiry: the short-lived client's token lives 2 s; no leeway here.
    let short = OidcVerifier::discover(&OidcConfig { leeway_secs: 0, ..config(&provider, "dg-cli-short") }).await?;
    let expiring = id_token_with_nonce(&provider, "dg-cli-short", "alice", "n-1").await?;
    short.verify_id_token(&expiring, "n-1").await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_refused(short.verify_id_token(&expiring, "n-1").await, &expiring, "expired");

    // A key the provider never published, under a made-up kid and under the real one.
    let stranger = token_signed_by_a_stranger(&provider, "rogue-key", "n-1");
    assert_refused(verifier.verify_id_token(&stranger, "n-1").await, &stranger, "unknown kid");
    let (good_header, good_claims) = parts(&good);
    let real_kid = good_header["kid"].as_str().expect("kid").to_owned();
    let ec_kid = {
        let jwks: Value = reqwest::get(format!("{}/jwks", provider.issuer())).await?.json().await?;
        let keys = jwks["keys"].as_array().expect("keys").clone();
        keys.iter().find(|k| k["kty"] == "EC").and_then(|k| k["kid"].as_str()).expect("an EC key").to_owned()
    };
    let forged = token_signed_by_a_stranger(&provider, &ec_kid, "n-1");
    assert_refused(verifier.verify_id_token(&forged, "n-1").await, &forged, "signature does not verify");

    // A genuine token whose claims were changed after signing.
    let mut raised = good_claims.clone();
    raised["groups"] = json!(["dg-admins", "dg-operators"]);
    raised["sub"] = json!("mallory");
    let mut segs = good.split('.');
    let (h, _, s) = (segs.next().expect("h"), segs.next(), segs.next().expect("s"));
    let tampered = format!("{h}.{}.{s}", b64_json(&raised));
    assert_refused(verifier.verify_id_token(&tampered, "n-1").await, &tampered, "signature does not verify");

    // Unsigned (`alg: none`) and HMAC tokens with the real key id and genuine claims.
    let unsigned = format!("{}.{}.", b64_json(&json!({"alg": "none", "kid": real_kid})), b64_json(&good_claims));
    assert_refused(verifier.verify_id_token(&unsigned, "n-1").await, &unsigned, "unsigned");
    let hmac = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"a guessed secret, e.g. the public key")?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(real_kid.clone());
        jsonwebtoken::encode(&header, &good_claims, &key)?
    };
    assert_refused(verifier.verify_id_token(&hmac, "n-1").await, &hmac, "HMAC");
    assert_refused(verifier.verify_id_token("not.a-jwt", "n-1").await, "not.a-jwt", "well-formed");

    // Issuer mismatch: the same provider reached as `localhost` states `127.0.0.1` as its issuer.
    let mut as_localhost = provider.issuer_url();
    as_localhost.set_host(Some("localhost"))?;
    let e = OidcVerifier::discover(&OidcConfig::new(as_localhost, "dg-cli")).await.err().expect("issuer mismatch");
    assert!(matches!(e, ControllerError::FailedPrecondition(_)), "{e:?}");
    assert!(e.to_string().contains("names its issuer") && e.to_string().contains(provider.issuer()), "{e}");

    // Plain HTTP to a non-loopback issuer is refused before any request.
    let remote = OidcConfig::new(url::Url::parse("http://idp.example.com")?, "dg-cli");
    let e = OidcVerifier::discover(&remote).await.err().expect("http off loopback");
    assert!(e.to_string().contains("oidc.issuer") && e.to_string().contains("loopback"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_key_rotation_is_picked_up_after_an_unknown_kid() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let mut provider = OidcProvider::start().await?;
    let verifier =
        OidcVerifier::discover(&OidcConfig { jwks_min_refetch_secs: 2, ..config(&provider, "dg-cli") }).await?;
    let before = id_token_with_nonce(&provider, "dg-cli", "alice", "n-1").await?;
    verifier.verify_id_token(&before, "n-1").await?;
    assert_eq!(verifier.jwks_fetches(), 1);

    // The provider rotates its keys (same issuer, same port, new key ids).
    provider.restart().await?;
    let after = id_token_with_nonce(&provider, "dg-cli", "alice", "n-2").await?;
    assert_ne!(parts(&before).0["kid"], parts(&after).0["kid"]);
    // The first fetch is less than the minimum interval old: wait it out, then the unknown kid refetches.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let id = verifier.verify_id_token(&after, "n-2").await?;
    assert_eq!((id.subject.as_str(), id.roles.as_slice()), ("alice", ["admin".to_owned()].as_slice()));
    assert_eq!(verifier.jwks_fetches(), 2, "one refetch for the new kid");

    // The retired key no longer verifies, and a flood of unknown kids within the interval fetches nothing.
    assert_refused(verifier.verify_id_token(&before, "n-1").await, &before, "unknown kid");
    for i in 0..20 {
        let t = token_signed_by_a_stranger(&provider, &format!("made-up-{i}"), "n-2");
        assert_refused(verifier.verify_id_token(&t, "n-2").await, &t, "unknown kid");
    }
    assert_eq!(verifier.jwks_fetches(), 2, "unknown kids within the interval must not reach the provider");
    // Once the interval has passed, one more unknown kid may look again (and is still refused).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t = token_signed_by_a_stranger(&provider, "made-up-late", "n-2");
    assert_refused(verifier.verify_id_token(&t, "n-2").await, &t, "unknown kid");
    assert_eq!(verifier.jwks_fetches(), 3);
    // The periodic refresh path fetches unconditionally and keeps the current keys.
    verifier.refresh_keys().await?;
    verifier.verify_id_token(&after, "n-2").await?;
    Ok(())
}

/// A replica of `cluster` that signs users in through `provider` (client `dg-cli`).
async fn oidc_replica(
    cluster: &dg_tests::cluster::Cluster,
    provider: &OidcProvider,
) -> anyhow::Result<dg_controller::app::RunningController> {
    let mut cfg = cluster.config.clone();
    cfg.api_listen = "127.0.0.1:0".parse()?;
    cfg.agent_listen = "127.0.0.1:0".parse()?;
    cfg.oidc = Some(config(provider, "dg-cli"));
    dg_controller::app::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_through_the_api_maps_roles_and_refuses_bad_tokens() -> anyhow::Result<()> {
    use dg_proto::v1::{self as pb, auth_service_client::AuthServiceClient, user_service_client::UserServiceClient};
    use dg_tests::cluster::{Cluster, authed};
    use tonic::{
        Code,
        transport::{Certificate, Channel, ClientTlsConfig},
    };

    let provider = OidcProvider::start().await?;
    let mut cluster = Cluster::start().await?;
    // Without an [oidc] section the RPCs say so.
    let mut plain = AuthServiceClient::new(cluster.channel().await?);
    let e = plain.get_oidc_config(pb::GetOidcConfigRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let replica = oidc_replica(&cluster, &provider).await?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cluster.ca_pem)).domain_name("127.0.0.1");
    let ch = Channel::from_shared(format!("https://127.0.0.1:{}", replica.api_addr.port()))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut auth = AuthServiceClient::new(ch.clone());
    let info = auth.get_oidc_config(pb::GetOidcConfigRequest {}).await?.into_inner();
    assert_eq!((info.issuer.as_str(), info.client_id.as_str()), (provider.issuer(), "dg-cli"));
    assert!(info.authorization_endpoint.starts_with(provider.issuer()) && !info.token_endpoint.is_empty());

    // bob is in dg-operators: he signs in as an operator, created at first sign-in.
    let token = id_token_with_nonce(&provider, "dg-cli", "bob", "nonce-bob-1").await?;
    let session = auth
        .login_oidc(pb::LoginOidcRequest { id_token: token.clone(), nonce: "nonce-bob-1".into() })
        .await?
        .into_inner()
        .token;
    let me = auth.me(authed(pb::MeRequest {}, &session)).await?.into_inner();
    assert_eq!((me.username.as_str(), me.roles.clone()), ("bob", vec!["operator".to_owned()]));
    assert!(me.permissions.contains(&"backup.restore".to_owned()));
    let admin = cluster.login().await?;
    let mut users = UserServiceClient::new(ch.clone());
    let bob = users.get_user(authed(pb::GetUserRequest { id: "bob".into() }, &admin)).await?.into_inner();
    assert_eq!(bob.kind, pb::UserKind::Oidc as i32);
    // alice maps to admin.
    let t = id_token_with_nonce(&provider, "dg-cli", "alice", "nonce-alice").await?;
    let s =
        auth.login_oidc(pb::LoginOidcRequest { id_token: t, nonce: "nonce-alice".into() }).await?.into_inner().token;
    assert_eq!(auth.me(authed(pb::MeRequest {}, &s)).await?.into_inner().roles, vec!["admin".to_owned()]);

    // Refused: the wrong nonce, another client's token (audience), a token signed by an unknown key; carol's
    // groups map to no role.
    let e =
        auth.login_oidc(pb::LoginOidcRequest { id_token: token.clone(), nonce: "another".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(!e.message().contains(&token));
    let other = id_token_with_nonce(&provider, "other-app", "bob", "n-2").await?;
    let e = auth.login_oidc(pb::LoginOidcRequest { id_token: other, nonce: "n-2".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    let forged = token_signed_by_a_stranger(&provider, "stranger-kid", "n-3");
    let e = auth.login_oidc(pb::LoginOidcRequest { id_token: forged, nonce: "n-3".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    let carol = id_token_with_nonce(&provider, "dg-cli", "carol", "n-4").await?;
    let e = auth.login_oidc(pb::LoginOidcRequest { id_token: carol, nonce: "n-4".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = auth.login_oidc(pb::LoginOidcRequest { id_token: String::new(), nonce: "n".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A disabled OIDC user cannot sign in, however valid the token.
    users
        .update_user(authed(
            pb::UpdateUserRequest { id: "bob".into(), disabled: Some(true), ..Default::default() },
            &admin,
        ))
        .await?;
    let t = id_token_with_nonce(&provider, "dg-cli", "bob", "nonce-bob-2").await?;
    let e = auth.login_oidc(pb::LoginOidcRequest { id_token: t, nonce: "nonce-bob-2".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(auth.me(authed(pb::MeRequest {}, &session)).await.unwrap_err().code(), Code::Unauthenticated);

    replica.shutdown().await;
    cluster.stop().await;
    Ok(())
}

/// `dgctl login --oidc` running as a process: it prints the authorization URL and waits on a loopback port;
/// the user's browser part is played against that URL and follows the provider's redirect back to dgctl.
struct OidcLogin {
    child: tokio::process::Child,
    url: url::Url,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

impl OidcLogin {
    async fn start(config: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(super::dgctl::dgctl_bin()?)
            .args(["login", "--oidc", "--no-browser"])
            .args(args)
            .env("DGCTL_CONFIG", config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = stderr.next_line().await? {
                if let Some(u) = line.trim().strip_prefix("http") {
                    return Ok(url::Url::parse(&format!("http{u}"))?);
                }
            }
            anyhow::bail!("dgctl ended without printing a sign-in URL")
        })
        .await
        .context("no sign-in URL from dgctl within 30 s")??;
        Ok(Self { child, url, stderr })
    }

    /// Waits for dgctl to end: (exit code, stdout, the rest of stderr).
    async fn finish(mut self) -> anyhow::Result<(i32, String, String)> {
        use tokio::io::AsyncReadExt as _;
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).await?;
        }
        let mut err = String::new();
        while let Some(line) = self.stderr.next_line().await? {
            err.push_str(&line);
            err.push('\n');
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok((status.code().unwrap_or(-1), out, err))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dgctl_login_oidc_signs_in_through_a_browser() -> anyhow::Result<()> {
    use dg_tests::{cluster::Cluster, oidc::browser_sign_in};

    let provider = OidcProvider::start().await?;
    let mut cluster = Cluster::start().await?;
    let replica = oidc_replica(&cluster, &provider).await?;
    let endpoint = format!("https://127.0.0.1:{}", replica.api_addr.port());
    let fp = cluster.ca_fingerprint();
    let config = cluster.dir.path().join("dgctl-oidc").join("dgctl.toml");
    let login = |ctx: &'static str| {
        let (endpoint, fp, config) = (endpoint.clone(), fp.clone(), config.clone());
        async move {
            OidcLogin::start(
                &config,
                &["--endpoint", &endpoint, "--ca-fingerprint", &fp, "--context", ctx, "-o", "json"],
            )
            .await
        }
    };

    // bob signs in through the browser; the request carries PKCE, a state and a nonce, and dgctl's own
    // loopback redirect URI.
    let l = login("sso").await?;
    let q: std::collections::HashMap<String, String> = l.url.query_pairs().into_owned().collect();
    assert_eq!((q["client_id"].as_str(), q["code_challenge_method"].as_str()), ("dg-cli", "S256"));
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:") && q["redirect_uri"].ends_with("/callback"), "{q:?}");
    assert!(!q["state"].is_empty() && !q["nonce"].is_empty() && !q["code_challenge"].is_empty());
    assert!(l.url.as_str().starts_with(provider.issuer()));
    browser_sign_in(&l.url, "bob").await?;
    let (code, out, err) = l.finish().await?;
    assert_eq!(code, 0, "{err}{out}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!((v["username"].as_str(), v["context"].as_str()), (Some("bob"), Some("sso")), "{v}");
    // The stored session works: bob is an operator (he may list datasources, not create roles).
    let ctl = super::dgctl::Ctl { bin: super::dgctl::dgctl_bin()?, config: config.clone(), envs: vec![] };
    let me = ctl.json(&["--context", "sso", "whoami"]).await?;
    assert_eq!(me["username"], "bob");
    ctl.ok(&["--context", "sso", "datasources", "list"]).await?;
    let o = ctl.run(&["--context", "sso", "roles", "create", "sso-made", "--permission", "user.read"]).await?;
    assert_eq!(o.code, 4, "an operator may not create roles: {}", o.stderr);
    let stored = std::fs::read_to_string(&config)?;
    assert!(!stored.contains("id_token") && !stored.contains(&q["nonce"]), "only the session is stored");

    // A redirect with another state (a forged or stale callback) is refused and nothing is stored.
    let l = login("forged").await?;
    let q: std::collections::HashMap<String, String> = l.url.query_pairs().into_owned().collect();
    let mut forged = url::Url::parse(&q["redirect_uri"])?;
    forged.query_pairs_mut().append_pair("code", "made-up").append_pair("state", "not-the-state");
    reqwest::get(forged).await?;
    let (code, _, err) = l.finish().await?;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("state"), "{err}");

    // carol's groups map to no role: the controller refuses the session (exit 4).
    let l = login("carol").await?;
    browser_sign_in(&l.url, "carol").await?;
    let (code, _, err) = l.finish().await?;
    assert_eq!(code, 4, "{err}");
    let stored = std::fs::read_to_string(&config)?;
    assert!(!stored.contains("[contexts.forged]") && !stored.contains("[contexts.carol]"), "{stored}");

    // Nobody comes back: dgctl gives up after --oidc-timeout.
    let l = OidcLogin::start(&config, &["--context", "sso", "--oidc-timeout", "1s"]).await?;
    let (code, _, err) = l.finish().await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no sign-in within 1s"), "{err}");

    replica.shutdown().await;
    cluster.stop().await;
    Ok(())
}
