//! Object store builders: one place turns a storage configuration into an `object_store` handle, for the
//! agent (which moves backup bytes) and the controller (which reads and deletes cloud objects for operator
//! requests). Network stores get bounded timeouts and retries so a dead endpoint fails instead of hanging.

use std::{path::Path, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};

use object_store::{
    ClientOptions, ObjectStore, RetryConfig, StaticCredentialProvider,
    aws::AmazonS3Builder,
    azure::MicrosoftAzureBuilder,
    gcp::{GcpCredential, GoogleCloudStorageBuilder},
    local::LocalFileSystem,
    path::Path as ObjPath,
    prefix::PrefixStore,
};

/// A storage configuration with its credentials (never logged: `Debug` hides secrets).
#[derive(Clone)]
pub enum StoreConfig {
    /// A directory on this host.
    Local {
        /// Absolute directory.
        path: String,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Endpoint URL (empty for AWS).
        endpoint: String,
        /// Region.
        region: String,
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// Path-style addressing.
        path_style: bool,
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: SecretString,
        /// Allow plain HTTP.
        allow_http: bool,
        /// Without keys: the host's ambient credentials instead of unsigned requests.
        ambient_credentials: bool,
    },
    /// A GCS bucket.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// Service account key JSON.
        service_account_key: SecretString,
        /// Base URL (emulators).
        endpoint: String,
        /// Allow plain HTTP.
        allow_http: bool,
        /// Without a key: the host's ambient credentials instead of unsigned requests.
        ambient_credentials: bool,
    },
    /// An Azure container.
    Azure {
        /// Account.
        account: String,
        /// Container.
        container: String,
        /// Key prefix.
        prefix: String,
        /// Access key.
        access_key: SecretString,
        /// Endpoint (emulators).
        endpoint: String,
        /// Allow plain HTTP.
        allow_http: bool,
        /// Without a key: the host's ambient credentials instead of unsigned requests.
        ambient_credentials: bool,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Local { path } => f.debug_struct("Local").field("path", path).finish(),
            StoreConfig::S3 { endpoint, bucket, prefix, .. } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("bucket", bucket)
                .field("prefix", prefix)
                .finish_non_exhaustive(),
            StoreConfig::Gcs { bucket, prefix, .. } => {
                f.debug_struct("Gcs").field("bucket", bucket).field("prefix", prefix).finish_non_exhaustive()
            }
            StoreConfig::Azure { account, container, prefix, .. } => f
                .debug_struct("Azure")
                .field("account", account)
                .field("container", container)
                .field("prefix", prefix)
                .finish_non_exhaustive(),
        }
    }
}

/// Why a store could not be opened. Messages carry no credentials.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Client options of network stores. Note that `with_client_options` replaces every client option set before
/// it (plain HTTP included), so everything goes here.
fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_timeout(Duration::from_secs(60))
        .with_connect_timeout(Duration::from_secs(5))
        .with_allow_http(allow_http)
}

fn retry() -> RetryConfig {
    RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..RetryConfig::default() }
}

/// A key prefix is relative, without `..`, empty segments or control characters.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || (!prefix.starts_with('/')
            && prefix.len() <= 512
            && !prefix.chars().any(char::is_control)
            && prefix.trim_end_matches('/').split('/').all(|seg| !seg.is_empty() && seg != ".." && seg != "."))
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if !valid_prefix(prefix) {
        return Err(StoreError("prefix must be relative and must not contain '..' or empty segments".into()));
    }
    let prefix = prefix.trim_end_matches('/');
    Ok(if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, ObjPath::from(prefix))) })
}

/// Opens a store. A local directory must be absolute, free of `..` and not a symlink; it is created when
/// missing. A cloud store without keys sends unsigned (anonymous) requests unless `ambient_credentials` is
/// set: only then may object_store look for the host's credentials (environment variables, web or workload
/// identity, the instance metadata service at 169.254.169.254), which is what it does by default.
pub fn open(cfg: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let err = |e: object_store::Error| StoreError(e.to_string());
    match cfg {
        StoreConfig::Local { path } => {
            let p = Path::new(path);
            if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(StoreError("local path must be absolute and must not contain '..'".into()));
            }
            if p.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(StoreError(format!("local path {path} is a symlink; refusing it")));
            }
            std::fs::create_dir_all(p).map_err(|e| StoreError(format!("create {path}: {e}")))?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(p).map_err(err)?))
        }
        StoreConfig::S3 {
            endpoint,
            region,
            bucket,
            prefix,
            path_style,
            access_key_id,
            secret_access_key,
            allow_http,
            ambient_credentials,
        } => {
            let base = if *ambient_credentials { AmazonS3Builder::from_env() } else { AmazonS3Builder::new() };
            let mut b = base
                .with_bucket_name(bucket)
                .with_region(if region.is_empty() { "us-east-1" } else { region })
                .with_virtual_hosted_style_request(!path_style)
                .with_client_options(client_options(*allow_http))
                .with_retry(retry());
            if !endpoint.is_empty() {
                b = b.with_endpoint(endpoint);
            }
            if !access_key_id.is_empty() {
                b = b.with_access_key_id(access_key_id).with_secret_access_key(secret_access_key.expose_secret());
            } else if !*ambient_credentials {
                b = b.with_skip_signature(true);
            }
            with_prefix(Arc::new(b.build().map_err(err)?), prefix)
        }
        StoreConfig::Gcs { bucket, prefix, service_account_key, endpoint, allow_http, ambient_credentials } => {
            let base = if *ambient_credentials {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            };
            let mut b =
                base.with_bucket_name(bucket).with_client_options(client_options(*allow_http)).with_retry(retry());
            if !service_account_key.expose_secret().is_empty() {
                b = b.with_service_account_key(service_account_key.expose_secret());
            } else if !*ambient_credentials {
                // An explicit empty credential also keeps the builder from reading the application default
                // credentials file; with unsigned requests it is never used.
                let none = GcpCredential { bearer: String::new() };
                b = b.with_skip_signature(true).with_credentials(Arc::new(StaticCredentialProvider::new(none)));
            }
            if !endpoint.is_empty() {
                b = b.with_base_url(endpoint);
            }
            with_prefix(Arc::new(b.build().map_err(err)?), prefix)
        }
        StoreConfig::Azure { account, container, prefix, access_key, endpoint, allow_http, ambient_credentials } => {
            let base =
                if *ambient_credentials { MicrosoftAzureBuilder::from_env() } else { MicrosoftAzureBuilder::new() };
            let mut b = base
                .with_account(account)
                .with_container_name(container)
                .with_client_options(client_options(*allow_http))
                .with_retry(retry());
            if !access_key.expose_secret().is_empty() {
                b = b.with_access_key(access_key.expose_secret());
            } else if !*ambient_credentials {
                b = b.with_skip_signature(true);
            }
            if !endpoint.is_empty() {
                b = b.with_endpoint(endpoint.clone());
            }
            with_prefix(Arc::new(b.build().map_err(err)?), prefix)
        }
    }
}

/// The configuration carried in an agent task.
pub fn from_target(t: &dg_proto::v1::StorageTarget) -> Result<StoreConfig, StoreError> {
    use dg_proto::v1::storage_target::Config;
    Ok(match &t.config {
        Some(Config::Local(l)) => StoreConfig::Local { path: l.path.clone() },
        Some(Config::S3(s)) => StoreConfig::S3 {
            endpoint: s.endpoint.clone(),
            region: s.region.clone(),
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            path_style: s.path_style,
            access_key_id: s.access_key_id.clone(),
            secret_access_key: s.secret_access_key.clone().into(),
            allow_http: s.allow_http,
            ambient_credentials: s.ambient_credentials,
        },
        Some(Config::Gcs(g)) => StoreConfig::Gcs {
            bucket: g.bucket.clone(),
            prefix: g.prefix.clone(),
            service_account_key: g.service_account_key.clone().into(),
            endpoint: g.endpoint.clone(),
            allow_http: g.allow_http,
            ambient_credentials: g.ambient_credentials,
        },
        Some(Config::Azure(a)) => StoreConfig::Azure {
            account: a.account.clone(),
            container: a.container.clone(),
            prefix: a.prefix.clone(),
            access_key: a.access_key.clone().into(),
            endpoint: a.endpoint.clone(),
            allow_http: a.allow_http,
            ambient_credentials: a.ambient_credentials,
        },
        None => return Err(StoreError("no storage configuration".into())),
    })
}

/// The configuration to carry in an agent task: the inverse of [`from_target`]. `agent_id` names the agent
/// whose host holds a local storage.
pub fn to_target(storage_id: String, cfg: StoreConfig, agent_id: String) -> dg_proto::v1::StorageTarget {
    use dg_proto::v1::{self as pb, storage_target::Config};
    let config = match cfg {
        StoreConfig::Local { path } => Config::Local(pb::LocalStorageConfig { path, agent_id }),
        StoreConfig::S3 {
            endpoint,
            region,
            bucket,
            prefix,
            path_style,
            access_key_id,
            secret_access_key,
            allow_http,
            ambient_credentials,
        } => Config::S3(pb::S3StorageConfig {
            endpoint,
            region,
            bucket,
            prefix,
            path_style,
            access_key_id,
            secret_access_key: secret_access_key.expose_secret().to_owned(),
            allow_http,
            ambient_credentials,
        }),
        StoreConfig::Gcs { bucket, prefix, service_account_key, endpoint, allow_http, ambient_credentials } => {
            Config::Gcs(pb::GcsStorageConfig {
                bucket,
                prefix,
                service_account_key: service_account_key.expose_secret().to_owned(),
                endpoint,
                allow_http,
                ambient_credentials,
            })
        }
        StoreConfig::Azure { account, container, prefix, access_key, endpoint, allow_http, ambient_credentials } => {
            Config::Azure(pb::AzureStorageConfig {
                account,
                container,
                prefix,
                access_key: access_key.expose_secret().to_owned(),
                endpoint,
                allow_http,
                ambient_credentials,
            })
        }
    };
    pb::StorageTarget { storage_id, config: Some(config) }
}

/// Writes, reads back and deletes a probe object; returns the round trip.
pub async fn probe(store: &dyn ObjectStore, key: &str) -> Result<Duration, StoreError> {
    use object_store::{ObjectStoreExt, PutPayload};
    let started = std::time::Instant::now();
    let path = ObjPath::from(key);
    let body: &'static [u8] = b"dataguardian storage probe";
    store.put(&path, PutPayload::from_static(body)).await.map_err(|e| StoreError(format!("write: {e}")))?;
    let back = store
        .get(&path)
        .await
        .map_err(|e| StoreError(format!("read back: {e}")))?
        .bytes()
        .await
        .map_err(|e| StoreError(format!("read back: {e}")))?;
    if back.as_ref() != body {
        return Err(StoreError("read back different bytes".into()));
    }
    store.delete(&path).await.map_err(|e| StoreError(format!("delete: {e}")))?;
    Ok(started.elapsed())
}

/// Deletes every object below `prefix` (as listed now); returns how many were deleted. Objects that vanish
/// in between are not errors. The one implementation for the controller's sweeps and the agent's cleanups.
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &str) -> Result<u32, StoreError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let keys: Vec<ObjPath> = store
        .list(Some(&ObjPath::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| StoreError(format!("list {prefix}: {e}")))?;
    let mut n = 0;
    for k in keys {
        match store.delete(&k).await {
            Ok(()) => n += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError(format!("delete {k}: {e}"))),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["", "backups", "a/b/c", "a/b/"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in ["/abs", "a/../b", "..", "a//b", "./a", "a\nb"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = StoreConfig::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            region: String::new(),
            bucket: "b".into(),
            prefix: String::new(),
            path_style: true,
            access_key_id: "AKIDSECRET".into(),
            secret_access_key: "very-secret".into(),
            allow_http: true,
            ambient_credentials: false,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("AKIDSECRET"), "{shown}");
    }

    #[test]
    fn local_paths_are_confined() {
        assert!(open(&StoreConfig::Local { path: "relative/dir".into() }).is_err());
        assert!(open(&StoreConfig::Local { path: "/tmp/../etc".into() }).is_err());
        let dir = std::env::temp_dir().join(format!("dg-store-test-{}", std::process::id()));
        let link = std::env::temp_dir().join(format!("dg-store-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert!(open(&StoreConfig::Local { path: link.to_string_lossy().into_owned() }).is_err());
        assert!(open(&StoreConfig::Local { path: dir.to_string_lossy().into_owned() }).is_ok());
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
