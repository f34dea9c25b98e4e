//! The agent's state directory: `agent.json` (ids and endpoints), `key.pem` and `cert.pem` (mode 0600),
//! `ca.pem`. Files are replaced atomically (write to a temp file in the same directory, then rename).

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::ConnectionError;

/// What enrollment recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentState {
    /// Agent id.
    pub agent_id: String,
    /// Operator API / enrollment endpoint.
    pub controller: String,
    /// Session endpoint.
    pub agent_endpoint: String,
}

/// Paths in the state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700) a state directory.
    pub fn open(root: &Path) -> Result<Self, ConnectionError> {
        fs::create_dir_all(root)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        Ok(Self { root: root.to_owned() })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Atomically writes a file with the given mode.
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), ConnectionError> {
        let tmp = self.path(&format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(name))?;
        Ok(())
    }

    /// Reads a text file.
    pub fn read(&self, name: &str) -> Result<String, ConnectionError> {
        fs::read_to_string(self.path(name)).map_err(|e| {
            ConnectionError::Config(format!("{}: {e} (has this agent been enrolled?)", self.path(name).display()))
        })
    }

    /// Loads `agent.json`.
    pub fn load(&self) -> Result<AgentState, ConnectionError> {
        serde_json::from_str(&self.read("agent.json")?).map_err(|e| ConnectionError::Config(format!("agent.json: {e}")))
    }

    /// Saves `agent.json`.
    pub fn save(&self, s: &AgentState) -> Result<(), ConnectionError> {
        let json = serde_json::to_vec_pretty(s).map_err(|e| ConnectionError::Config(e.to_string()))?;
        self.write("agent.json", &json, 0o600)
    }
}
