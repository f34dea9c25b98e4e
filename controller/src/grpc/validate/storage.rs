//! Validation of storage requests: kind-specific configuration, endpoints (no link-local or metadata
//! addresses, plain HTTP only with `allow_http`), keys and ambient credentials.

use dg_common::{error::FieldError, store::valid_prefix};
use dg_proto::v1 as pb;
use uuid::Uuid;

use std::collections::BTreeMap;

use super::{V, id, labels, local_path, name};
use crate::service::{catalog::StoragePatch, storages::StorageSpec};

pub(super) fn bucket(field: &'static str, s: &str) -> V<String> {
    if s.len() < 3
        || s.len() > 63
        || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_')
    {
        return Err(FieldError::new(field, "must be 3-63 characters of [a-z0-9._-]"));
    }
    Ok(s.to_owned())
}

pub(super) fn prefix(field: &'static str, s: &str) -> V<String> {
    if !valid_prefix(s) {
        return Err(FieldError::new(field, "must be relative and must not contain '..' or empty segments"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

pub(super) fn endpoint(field: &'static str, s: &str) -> V<String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= 512
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(FieldError::new(field, "must be an http:// or https:// URL"));
    }
    let host = url::Url::parse(s).ok().and_then(|u| u.host().map(|h| h.to_owned()));
    let Some(host) = host else {
        return Err(FieldError::new(field, "must be an http:// or https:// URL with a host"));
    };
    if metadata_host(&host) {
        return Err(FieldError::new(field, "must not be a link-local or cloud metadata address"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Link-local addresses (where cloud instance metadata services answer) and the metadata host names: a
/// storage endpoint there would make the controller or an agent fetch its host's credentials.
pub(super) fn metadata_host(h: &url::Host<String>) -> bool {
    match h {
        url::Host::Ipv4(ip) => ip.is_link_local(),
        url::Host::Ipv6(ip) => {
            (ip.segments()[0] & 0xffc0) == 0xfe80
                || *ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "metadata"
                || d == "metadata.google.internal"
                || d == "instance-data"
                || d.ends_with(".metadata.google.internal")
        }
    }
}

pub(super) fn secret(field: &'static str, s: &str) -> V<Option<String>> {
    if s.len() > 16 * 1024 || s.contains('\0') {
        return Err(FieldError::new(field, "is too long"));
    }
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// A plain `http://` endpoint only with `allow_http`: data and keys would travel unencrypted.
pub(super) fn plain_http(field: &'static str, endpoint: String, allow_http: bool) -> V<String> {
    if endpoint.starts_with("http://") && !allow_http {
        return Err(FieldError::new(
            field,
            "is plain http://: set allow_http to send data and keys unencrypted, or use https://",
        ));
    }
    Ok(endpoint)
}

/// Ambient credentials stand in for keys, never beside them. Whether this controller allows them at all is
/// its configuration's say (`CatalogService`).
pub(super) fn ambient(field: &'static str, ambient_credentials: bool, has_keys: bool) -> V<()> {
    if ambient_credentials && has_keys {
        return Err(FieldError::new(field, "cannot be set together with keys: give keys or use ambient credentials"));
    }
    Ok(())
}

/// The kind-specific part of create/update/test storage requests.
pub enum StorageConfigIn {
    /// Local.
    Local(pb::LocalStorageConfig),
    /// S3.
    S3(pb::S3StorageConfig),
    /// GCS.
    Gcs(pb::GcsStorageConfig),
    /// Azure.
    Azure(pb::AzureStorageConfig),
}

impl From<pb::create_storage_request::Config> for StorageConfigIn {
    fn from(c: pb::create_storage_request::Config) -> Self {
        use pb::create_storage_request::Config as C;
        match c {
            C::Local(l) => Self::Local(l),
            C::S3(s) => Self::S3(s),
            C::Gcs(g) => Self::Gcs(g),
            C::Azure(a) => Self::Azure(a),
        }
    }
}

impl From<pb::update_storage_request::Config> for StorageConfigIn {
    fn from(c: pb::update_storage_request::Config) -> Self {
        use pb::update_storage_request::Config as C;
        match c {
            C::Local(l) => Self::Local(l),
            C::S3(s) => Self::S3(s),
            C::Gcs(g) => Self::Gcs(g),
            C::Azure(a) => Self::Azure(a),
        }
    }
}

/// Validates a storage configuration.
pub fn storage_spec(c: StorageConfigIn) -> V<StorageSpec> {
    Ok(match c {
        StorageConfigIn::Local(l) => StorageSpec::Local {
            path: local_path("local.path", &l.path)?,
            agent_id: id("local.agent_id", &l.agent_id)?,
        },
        StorageConfigIn::S3(s) => {
            let id = secret("s3.access_key_id", &s.access_key_id)?;
            let key = secret("s3.secret_access_key", &s.secret_access_key)?;
            let keys = match (id, key) {
                (Some(i), Some(k)) => Some((i, k.into())),
                (None, None) => None,
                _ => {
                    return Err(FieldError::new(
                        "s3.secret_access_key",
                        "access_key_id and secret_access_key go together",
                    ));
                }
            };
            if s.region.len() > 64 || s.region.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-')) {
                return Err(FieldError::new("s3.region", "must be a region name such as eu-west-1"));
            }
            let endpoint = plain_http("s3.endpoint", endpoint("s3.endpoint", &s.endpoint)?, s.allow_http)?;
            ambient("s3.ambient_credentials", s.ambient_credentials, keys.is_some())?;
            StorageSpec::S3 {
                endpoint,
                region: s.region,
                bucket: bucket("s3.bucket", &s.bucket)?,
                prefix: prefix("s3.prefix", &s.prefix)?,
                path_style: s.path_style,
                allow_http: s.allow_http,
                ambient_credentials: s.ambient_credentials,
                keys,
            }
        }
        StorageConfigIn::Gcs(g) => {
            let key = secret("gcs.service_account_key", &g.service_account_key)?;
            ambient("gcs.ambient_credentials", g.ambient_credentials, key.is_some())?;
            StorageSpec::Gcs {
                bucket: bucket("gcs.bucket", &g.bucket)?,
                prefix: prefix("gcs.prefix", &g.prefix)?,
                endpoint: plain_http("gcs.endpoint", endpoint("gcs.endpoint", &g.endpoint)?, g.allow_http)?,
                allow_http: g.allow_http,
                ambient_credentials: g.ambient_credentials,
                key: key.map(Into::into),
            }
        }
        StorageConfigIn::Azure(a) => {
            if a.account.len() < 3
                || a.account.len() > 24
                || !a.account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(FieldError::new("azure.account", "must be 3-24 characters of [a-z0-9]"));
            }
            if a.container.len() < 3
                || a.container.len() > 63
                || !a.container.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(FieldError::new("azure.container", "must be 3-63 characters of [a-z0-9-]"));
            }
            let key = secret("azure.access_key", &a.access_key)?;
            ambient("azure.ambient_credentials", a.ambient_credentials, key.is_some())?;
            StorageSpec::Azure {
                account: a.account,
                container: a.container,
                prefix: prefix("azure.prefix", &a.prefix)?,
                endpoint: plain_http("azure.endpoint", endpoint("azure.endpoint", &a.endpoint)?, a.allow_http)?,
                allow_http: a.allow_http,
                ambient_credentials: a.ambient_credentials,
                key: key.map(Into::into),
            }
        }
    })
}

/// Validates a storage creation request: name, configuration, labels.
pub fn new_storage(r: pb::CreateStorageRequest) -> V<(String, StorageSpec, BTreeMap<String, String>)> {
    let n = name("name", &r.name)?;
    let l = labels(&r.labels)?;
    let c = r.config.ok_or_else(|| FieldError::new("config", "one of local, s3, gcs, azure is required"))?;
    Ok((n, storage_spec(c.into())?, l))
}

/// Validates a storage change.
pub fn storage_patch(r: pb::UpdateStorageRequest) -> V<StoragePatch> {
    Ok(StoragePatch {
        id: id("id", &r.id)?,
        name: r.name.as_deref().map(|n| name("name", n)).transpose()?,
        labels: labels(&r.labels)?,
        replace_labels: r.replace_labels,
        spec: r.config.map(|c| storage_spec(c.into())).transpose()?,
    })
}

/// What a TestStorage request names.
pub enum TestTarget {
    /// A saved storage.
    Saved(Uuid),
    /// An unsaved configuration.
    Unsaved(StorageSpec),
}

/// Validates a storage test request.
pub fn test_target(r: pb::TestStorageRequest) -> V<TestTarget> {
    match r.target {
        Some(pb::test_storage_request::Target::Id(i)) => Ok(TestTarget::Saved(id("id", &i)?)),
        Some(pb::test_storage_request::Target::Config(c)) => {
            let cfg =
                c.config.ok_or_else(|| FieldError::new("config.config", "one of local, s3, gcs, azure is required"))?;
            Ok(TestTarget::Unsaved(storage_spec(cfg.into())?))
        }
        None => Err(FieldError::new("target", "id or config is required")),
    }
}
