//! Discovery of the dump and restore tools on this host; the session reports them to the controller in
//! Hello (converting them to the wire there), the engines resolve tools through [`Tools`].

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

/// Tools the agent knows how to use.
pub const KNOWN_TOOLS: &[&str] = &["pg_dump", "pg_restore", "psql", "mariadb-dump", "mariadb", "mysqldump", "mysql"];

/// Where the agent looks for database client tools: the configured directories first (e.g. a newer
/// `/usr/lib/postgresql/16/bin`), then `PATH`; and where it writes the credential files (passfile, option
/// file) it hands them.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    dirs: Arc<Vec<PathBuf>>,
    credentials: Option<Arc<PathBuf>>,
}

impl Tools {
    /// Tools looked up in `dirs` before `PATH`.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self { dirs: Arc::new(dirs), credentials: None }
    }

    /// The same tools, with credential files written in `dir` (else the system's temporary directory).
    pub fn with_credentials_dir(mut self, dir: PathBuf) -> Self {
        self.credentials = Some(Arc::new(dir));
        self
    }

    /// Where credential files go, when set.
    pub fn credentials_dir(&self) -> Option<&Path> {
        self.credentials.as_deref().map(PathBuf::as_path)
    }

    /// The executable for `name`, if installed.
    pub fn resolve(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).or_else(|| which::which(name).ok())
    }
}

/// An installed tool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundTool {
    /// One of [`KNOWN_TOOLS`].
    pub name: &'static str,
    /// Its version number (empty when it did not tell).
    pub version: String,
    /// Where it is.
    pub path: PathBuf,
}

/// Finds each known tool and asks for its version.
pub async fn discover(tools: &Tools) -> Vec<FoundTool> {
    let mut out = Vec::new();
    for name in KNOWN_TOOLS {
        let Some(path) = tools.resolve(name) else {
            continue;
        };
        let version = version_of(&path.to_string_lossy()).await.unwrap_or_default();
        out.push(FoundTool { name, version, path });
    }
    out
}

/// `tool --version`, reduced to its version number (e.g. "pg_dump (PostgreSQL) 15.19" -> "15.19").
pub async fn version_of(path: &str) -> Option<String> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(parse_version(&text))
}

fn parse_version(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned())
        .unwrap_or_else(|| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)\n"), "15.19");
        assert_eq!(
            parse_version("mariadb-dump from 11.8.3-MariaDB, client 10.19 for debian-linux-gnu (x86_64)"),
            "11.8.3-MariaDB"
        );
    }
}
