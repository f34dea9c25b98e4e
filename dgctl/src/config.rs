//! The config file: named contexts (endpoint, pinned CA, credentials) and the current one. Lives at
//! `$XDG_CONFIG_HOME/dataguardian/dgctl.toml` unless `--config`/`DGCTL_CONFIG` says otherwise. It holds
//! bearer tokens, so it is written with mode 0600 and refused when group or others can read it.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ConfigFile {
    /// Context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One controller and how to talk to it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Context {
    /// `https://host:port` of the operator API.
    pub endpoint: String,
    /// `sha256:<hex>` of the controller CA, as pinned at first login.
    pub ca_fingerprint: String,
    /// The pinned CA (PEM): the only certificate later connections trust.
    pub ca_pem: String,
    /// User name of the session (empty for an API token).
    #[serde(default)]
    pub username: String,
    /// Bearer token: a session token from Login or an API token; absent after logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// "session" or "api".
    #[serde(default)]
    pub token_kind: String,
    /// Session expiry (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Where the config file is: the explicit path, else the user's config directory.
pub fn config_path(explicit: Option<&Path>) -> CliResult<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let dir = dirs::config_dir()
        .ok_or_else(|| CliError::local("no config directory (set HOME or XDG_CONFIG_HOME, or pass --config)"))?;
    Ok(dir.join("dataguardian").join("dgctl.toml"))
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty configuration. Refuses a file group or others can read.
    pub fn load(path: &Path) -> CliResult<Self> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(CliError::local(format!("{}: {e}", path.display()))),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CliError::local(format!(
                "{} holds tokens but has mode {mode:03o}: run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| CliError::local(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| CliError::local(format!("{}: {e}", path.display())))
    }

    /// Writes the file atomically with mode 0600 (a temporary file in the same directory, then renamed).
    pub fn save(&self, path: &Path) -> CliResult<()> {
        let text = toml::to_string_pretty(self).map_err(|e| CliError::local(format!("encode config: {e}")))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CliError::local(format!("{}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".dgctl.toml.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| CliError::local(format!("{}: {e}", tmp.display())))?;
        // The mode of an existing file is not changed by open(): set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).map_err(|e| CliError::local(format!("{}: {e}", path.display())))?;
        Ok(())
    }

    /// The context named `name`, else the current one.
    pub fn context(&self, name: Option<&str>) -> CliResult<(String, &Context)> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n.to_owned(),
            None => return Err(CliError::Denied("no context: log in first (dgctl login --endpoint …)".into())),
        };
        let ctx = self
            .contexts
            .get(&name)
            .ok_or_else(|| CliError::NotFound(format!("no context \"{name}\" (dgctl context list)")))?;
        Ok((name, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_with_mode_0600_and_group_readable_file_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("dgctl.toml");
        let mut cfg = ConfigFile::default();
        cfg.contexts.insert(
            "a".into(),
            Context {
                endpoint: "https://h:1".into(),
                ca_fingerprint: "sha256:00".into(),
                ca_pem: "pem".into(),
                username: "admin".into(),
                token: Some("t".into()),
                token_kind: "session".into(),
                expires_at: None,
            },
        );
        cfg.current_context = Some("a".into());
        cfg.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = ConfigFile::load(&path).expect("load");
        assert_eq!(back.context(None).expect("ctx").1.token.as_deref(), Some("t"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ConfigFile::load(&path).expect_err("group-readable refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
