//! Storage specifications: the domain form of a storage configuration, how it is stored (non-secret fields
//! as JSON, write-only credentials encrypted with the row id as associated data) and how it is handed to an
//! agent or opened by the controller.

use dg_common::store::StoreConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    crypto::MasterKey,
    error::{ControllerError, ControllerResult},
    model::{Storage, StorageKind},
};

/// A validated storage configuration. Secrets are `None` when not given (an update keeps the stored ones).
#[derive(Clone)]
pub enum StorageSpec {
    /// A directory on an agent's host.
    Local {
        /// Absolute path.
        path: String,
        /// Agent.
        agent_id: Uuid,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Endpoint.
        endpoint: String,
        /// Region.
        region: String,
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
        /// Path-style.
        path_style: bool,
        /// Plain HTTP allowed.
        allow_http: bool,
        /// Without keys: the host's ambient credentials (else unsigned requests).
        ambient_credentials: bool,
        /// Keys.
        keys: Option<(String, SecretString)>,
    },
    /// A GCS bucket.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
        /// Emulator URL.
        endpoint: String,
        /// Plain HTTP allowed.
        allow_http: bool,
        /// Without a key: the host's ambient credentials (else unsigned requests).
        ambient_credentials: bool,
        /// Service account JSON.
        key: Option<SecretString>,
    },
    /// An Azure container.
    Azure {
        /// Account.
        account: String,
        /// Container.
        container: String,
        /// Prefix.
        prefix: String,
        /// Endpoint.
        endpoint: String,
        /// Plain HTTP allowed.
        allow_http: bool,
        /// Without a key: the host's ambient credentials (else unsigned requests).
        ambient_credentials: bool,
        /// Access key.
        key: Option<SecretString>,
    },
}

impl std::fmt::Debug for StorageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().as_str())
    }
}

/// Stored credentials (encrypted as a whole).
#[derive(Default, Serialize, Deserialize)]
struct Secrets {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    access_key_id: String,
    #[serde(default, skip_serializing_if = "no_secret", serialize_with = "crate::config::expose")]
    secret: SecretString,
}

fn no_secret(s: &SecretString) -> bool {
    s.expose_secret().is_empty()
}

/// Non-secret configuration as stored in `storage.config` (the operator view shows exactly this).
#[derive(Default, Serialize, Deserialize)]
pub struct PublicConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub prefix: String,
    #[serde(default)]
    /// See the storage kind's configuration message.
    pub path_style: bool,
    #[serde(default)]
    /// See the storage kind's configuration message.
    pub allow_http: bool,
    #[serde(default)]
    /// See the storage kind's configuration message.
    pub ambient_credentials: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub account: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    /// See the storage kind's configuration message.
    pub container: String,
}

impl StorageSpec {
    /// The kind.
    pub fn kind(&self) -> StorageKind {
        match self {
            StorageSpec::Local { .. } => StorageKind::Local,
            StorageSpec::S3 { .. } => StorageKind::S3,
            StorageSpec::Gcs { .. } => StorageKind::Gcs,
            StorageSpec::Azure { .. } => StorageKind::Azure,
        }
    }

    fn secrets(&self) -> Option<Secrets> {
        match self {
            StorageSpec::Local { .. } => None,
            StorageSpec::S3 { keys, .. } => {
                keys.as_ref().map(|(id, secret)| Secrets { access_key_id: id.clone(), secret: secret.clone() })
            }
            StorageSpec::Gcs { key, .. } | StorageSpec::Azure { key, .. } => {
                key.as_ref().map(|k| Secrets { access_key_id: String::new(), secret: k.clone() })
            }
        }
    }

    /// The request field holding this kind's secret.
    fn secret_field(&self) -> &'static str {
        match self {
            StorageSpec::Local { .. } => "local",
            StorageSpec::S3 { .. } => "s3.secret_access_key",
            StorageSpec::Gcs { .. } => "gcs.service_account_key",
            StorageSpec::Azure { .. } => "azure.access_key",
        }
    }

    /// The request field choosing ambient credentials.
    fn ambient_field(&self) -> &'static str {
        match self {
            StorageSpec::Local { .. } => "local",
            StorageSpec::S3 { .. } => "s3.ambient_credentials",
            StorageSpec::Gcs { .. } => "gcs.ambient_credentials",
            StorageSpec::Azure { .. } => "azure.ambient_credentials",
        }
    }

    /// Whether this spec asks for the host's ambient credentials.
    fn ambient_credentials(&self) -> bool {
        match self {
            StorageSpec::Local { .. } => false,
            StorageSpec::S3 { ambient_credentials, .. }
            | StorageSpec::Gcs { ambient_credentials, .. }
            | StorageSpec::Azure { ambient_credentials, .. } => *ambient_credentials,
        }
    }

    /// Fills `storage`'s kind, config, agent and (when given) encrypted credentials from this spec. Stored
    /// credentials are kept only while they keep going where they went: a new endpoint, region, bucket,
    /// account or container without the credentials again is refused (`INVALID_ARGUMENT` naming the secret's
    /// field), so whoever may update a storage cannot point its keys at a server of their own.
    ///
    /// Ambient credentials (the controller's and agents' own cloud identity) are refused unless
    /// `ambient_allowed` (the controller's `allow_ambient_credentials`); choosing them drops stored keys.
    pub fn apply(&self, storage: &mut Storage, key: &MasterKey, ambient_allowed: bool) -> ControllerResult<()> {
        if self.ambient_credentials() && !ambient_allowed {
            return Err(dg_common::error::FieldError::new(
                self.ambient_field(),
                "is refused: this controller does not let storages use the host's ambient cloud credentials \
                 (set allow_ambient_credentials = true in the controller configuration to allow it)",
            )
            .into());
        }
        let mut p = PublicConfig::default();
        let old = public(storage);
        let mut agent = None;
        match self {
            StorageSpec::Local { path, agent_id } => {
                p.path = path.clone();
                agent = Some(*agent_id);
            }
            StorageSpec::S3 {
                endpoint, region, bucket, prefix, path_style, allow_http, ambient_credentials, ..
            } => {
                (p.endpoint, p.region, p.bucket, p.prefix) =
                    (endpoint.clone(), region.clone(), bucket.clone(), prefix.clone());
                (p.path_style, p.allow_http, p.ambient_credentials) = (*path_style, *allow_http, *ambient_credentials);
            }
            StorageSpec::Gcs { bucket, prefix, endpoint, allow_http, ambient_credentials, .. } => {
                (p.bucket, p.prefix, p.endpoint) = (bucket.clone(), prefix.clone(), endpoint.clone());
                (p.allow_http, p.ambient_credentials) = (*allow_http, *ambient_credentials);
            }
            StorageSpec::Azure { account, container, prefix, endpoint, allow_http, ambient_credentials, .. } => {
                (p.account, p.container, p.prefix, p.endpoint) =
                    (account.clone(), container.clone(), prefix.clone(), endpoint.clone());
                (p.allow_http, p.ambient_credentials) = (*allow_http, *ambient_credentials);
            }
        }
        if storage.credentials_ciphertext.is_some()
            && self.secrets().is_none()
            && !p.ambient_credentials
            && retargeted(&old, &p)
        {
            return Err(dg_common::error::FieldError::new(
                self.secret_field(),
                "must be given again: the endpoint, region, bucket, account or container changed, and stored \
                 credentials are never sent to a new destination",
            )
            .into());
        }
        storage.agent_id = agent;
        storage.kind = self.kind();
        storage.config = serde_json::to_value(&p).map_err(|e| ControllerError::Pki(e.to_string()))?;
        if storage.kind == StorageKind::Local || p.ambient_credentials {
            storage.credentials_ciphertext = None;
        } else if let Some(s) = self.secrets() {
            let json = serde_json::to_vec(&s).map_err(|e| ControllerError::Pki(e.to_string()))?;
            storage.credentials_ciphertext = Some(key.encrypt(storage.id.as_bytes(), &json)?);
        }
        Ok(())
    }
}

/// Whether credentials configured for `old` would now go somewhere else.
fn retargeted(old: &PublicConfig, new: &PublicConfig) -> bool {
    old.endpoint != new.endpoint
        || old.region != new.region
        || old.bucket != new.bucket
        || old.account != new.account
        || old.container != new.container
        || (new.allow_http && !old.allow_http)
}

/// The non-secret configuration of a storage.
pub fn public(s: &Storage) -> PublicConfig {
    serde_json::from_value(s.config.clone()).unwrap_or_default()
}

fn secrets(s: &Storage, key: &MasterKey) -> ControllerResult<Secrets> {
    match &s.credentials_ciphertext {
        Some(ct) => {
            let plain = key.decrypt(s.id.as_bytes(), ct)?;
            serde_json::from_slice(&plain).map_err(|_| ControllerError::Pki("stored credentials are malformed".into()))
        }
        None => Ok(Secrets::default()),
    }
}

/// The full configuration (with credentials) the controller opens cloud storages with.
pub fn store_config(s: &Storage, key: &MasterKey) -> ControllerResult<StoreConfig> {
    let p = public(s);
    let sec = secrets(s, key)?;
    Ok(match s.kind {
        StorageKind::Local => StoreConfig::Local { path: p.path },
        StorageKind::S3 => StoreConfig::S3 {
            endpoint: p.endpoint,
            region: p.region,
            bucket: p.bucket,
            prefix: p.prefix,
            path_style: p.path_style,
            access_key_id: sec.access_key_id,
            secret_access_key: sec.secret,
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        },
        StorageKind::Gcs => StoreConfig::Gcs {
            bucket: p.bucket,
            prefix: p.prefix,
            service_account_key: sec.secret,
            endpoint: p.endpoint,
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        },
        StorageKind::Azure => StoreConfig::Azure {
            account: p.account,
            container: p.container,
            prefix: p.prefix,
            access_key: sec.secret,
            endpoint: p.endpoint,
            allow_http: p.allow_http,
            ambient_credentials: p.ambient_credentials,
        },
    })
}

/// What an agent needs to open a storage (credentials included: the agent moves the bytes).
pub fn target(s: &Storage, key: &MasterKey) -> ControllerResult<dg_common::protocol::StorageTarget> {
    Ok(dg_common::protocol::StorageTarget { id: s.id.into(), config: store_config(s, key)? })
}

/// A storage is usable by `agent`: cloud storages by any agent, a local one only by its own agent.
pub fn reachable_by(s: &Storage, agent: Uuid) -> bool {
    s.kind != StorageKind::Local || s.agent_id == Some(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_on_gcs_or_azure_needs_the_key_again() {
        let key = MasterKey::from_hex(&"44".repeat(32)).expect("key");
        let mut s = blank(Uuid::now_v7());
        let gcs = |allow_http, key: Option<&str>| StorageSpec::Gcs {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: "https://gcs.example.com".into(),
            allow_http,
            ambient_credentials: false,
            key: key.map(Into::into),
        };
        gcs(false, Some("{}")).apply(&mut s, &key, false).expect("apply");
        let e = gcs(true, None).apply(&mut s, &key, false).expect_err("plain http without the key");
        assert!(e.to_string().contains("gcs.service_account_key"), "{e}");
        assert!(!public(&s).allow_http);
        gcs(true, Some("{}")).apply(&mut s, &key, false).expect("with the key");
        assert!(public(&s).allow_http);
        assert!(matches!(store_config(&s, &key), Ok(StoreConfig::Gcs { allow_http: true, .. })));
    }

    fn blank(id: Uuid) -> Storage {
        Storage {
            id,
            name: "s".into(),
            kind: StorageKind::Local,
            config: serde_json::json!({}),
            agent_id: None,
            credentials_ciphertext: None,
            labels: serde_json::json!({}),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn secrets_are_encrypted_kept_on_update_and_never_public() {
        let key = MasterKey::from_hex(&"33".repeat(32)).expect("key");
        let mut s = blank(Uuid::now_v7());
        let spec = StorageSpec::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "eu".into(),
            bucket: "b".into(),
            prefix: "p".into(),
            path_style: true,
            allow_http: true,
            ambient_credentials: false,
            keys: Some(("AKID-1".into(), "s3cr3t-value".into())),
        };
        spec.apply(&mut s, &key, false).expect("apply");
        let stored = format!("{} {:?}", s.config, s.credentials_ciphertext);
        assert!(!stored.contains("s3cr3t-value") && !stored.contains("AKID-1"), "{stored}");
        let public = format!("{:?}", serde_json::to_string(&public(&s)));
        assert!(!public.contains("s3cr3t-value") && !public.contains("AKID-1"));
        // An update without keys keeps the stored ones while they go to the same place (prefix, path style)…
        let no_keys = StorageSpec::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "eu".into(),
            bucket: "b".into(),
            prefix: String::new(),
            path_style: false,
            allow_http: true,
            ambient_credentials: false,
            keys: None,
        };
        no_keys.apply(&mut s, &key, false).expect("apply");
        // …and a new endpoint, region or bucket without them is refused, naming the field, changing nothing.
        let before = s.clone();
        for (endpoint, region, bucket) in [
            ("http://evil:9000", "eu", "b"),
            ("http://127.0.0.1:9000", "us", "b"),
            ("http://127.0.0.1:9000", "eu", "b2"),
        ] {
            let moved = StorageSpec::S3 {
                endpoint: endpoint.into(),
                region: region.into(),
                bucket: bucket.into(),
                prefix: String::new(),
                path_style: false,
                allow_http: true,
                ambient_credentials: false,
                keys: None,
            };
            let e = moved.apply(&mut s, &key, false).expect_err("retargeted without keys");
            assert!(e.to_string().contains("s3.secret_access_key"), "{e}");
            assert_eq!(
                (s.config.clone(), s.credentials_ciphertext.clone()),
                (before.config.clone(), before.credentials_ciphertext.clone())
            );
        }
        match store_config(&s, &key).expect("config") {
            StoreConfig::S3 { access_key_id, secret_access_key, bucket, .. } => {
                assert_eq!(
                    (access_key_id.as_str(), secret_access_key.expose_secret(), bucket.as_str()),
                    ("AKID-1", "s3cr3t-value", "b")
                );
            }
            other => panic!("{other:?}"),
        }
        // Ambient credentials only where the controller allows them; choosing them drops the stored keys.
        let ambient = StorageSpec::S3 {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "eu".into(),
            bucket: "b".into(),
            prefix: String::new(),
            path_style: false,
            allow_http: true,
            ambient_credentials: true,
            keys: None,
        };
        let e = ambient.apply(&mut s, &key, false).expect_err("ambient credentials not allowed");
        assert!(
            e.to_string().contains("s3.ambient_credentials") && e.to_string().contains("allow_ambient_credentials")
        );
        assert_eq!(s.credentials_ciphertext, before.credentials_ciphertext);
        let mut dropped = s.clone();
        ambient.apply(&mut dropped, &key, true).expect("ambient credentials allowed");
        assert!(dropped.credentials_ciphertext.is_none() && super::public(&dropped).ambient_credentials);
        // Bound to the row: another id cannot decrypt.
        let mut moved = s.clone();
        moved.id = Uuid::now_v7();
        assert!(store_config(&moved, &key).is_err());
    }
}
