//! What every job on this agent shares: the directories local storages may live under, the key directory
//! for encryption at rest, and a work directory for the few cases that need a temporary file.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// Agent-wide settings handed to jobs and requests.
#[derive(Clone, Debug)]
pub struct AgentContext {
    /// Local storages must be below one of these directories.
    pub local_roots: Arc<Vec<PathBuf>>,
    /// Key-encryption keys (`<id>.key`).
    pub keys_dir: PathBuf,
    /// Temporary files (parallel PostgreSQL restores).
    pub work_dir: PathBuf,
    /// Database client tools.
    pub tools: crate::tools::Tools,
}

impl AgentContext {
    /// The context of an agent with state directory `state_dir`. Credential files of the database tools go
    /// to `<state>/work/credentials` (0700), emptied here: files a killed agent left behind are gone at its
    /// next start. Without that directory they fall back to the system's temporary directory (and a
    /// warning says so).
    pub fn new(state_dir: &Path, local_roots: Vec<PathBuf>, tools: crate::tools::Tools) -> Self {
        let work_dir = state_dir.join("work");
        let tools = match prepare_credentials_dir(&work_dir.join("credentials")) {
            Ok(dir) => tools.with_credentials_dir(dir),
            Err(e) => {
                tracing::warn!(error = %e, "no private credentials directory; credential files go to the temporary directory");
                tools
            }
        };
        Self { local_roots: Arc::new(local_roots), keys_dir: crate::keys::keys_dir(state_dir), work_dir, tools }
    }

    /// Checks that `path` lies below a configured root and that no component from the root down is a
    /// symlink (so a link planted in a storage directory cannot redirect writes elsewhere).
    pub fn confine(&self, path: &Path) -> Result<(), String> {
        if self.local_roots.is_empty() {
            return Err("no local storage root is configured on this agent (dg-agent run --local-root DIR)".into());
        }
        if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err("local path must be absolute and must not contain '..'".into());
        }
        let root = self.local_roots.iter().find(|r| path.starts_with(r)).ok_or_else(|| {
            let roots: Vec<_> = self.local_roots.iter().map(|r| r.display().to_string()).collect();
            format!("{} is outside this agent's local storage roots ({})", path.display(), roots.join(", "))
        })?;
        let mut cur = root.clone();
        let rest = path.strip_prefix(root).map_err(|e| e.to_string())?;
        for comp in rest.components() {
            cur.push(comp);
            if cur.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!("{} is a symlink; refusing it", cur.display()));
            }
        }
        Ok(())
    }
}

/// Creates `dir` (0700) and removes every file in it.
fn prepare_credentials_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_credential_files_are_removed_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().expect("dir");
        let creds = state.path().join("work/credentials");
        std::fs::create_dir_all(&creds).expect("mkdir");
        std::fs::write(creds.join("dg-pgpass-left-by-a-kill"), "h:5432:*:u:secret").expect("write");
        let ctx = AgentContext::new(state.path(), vec![], crate::tools::Tools::default());
        assert_eq!(ctx.tools.credentials_dir(), Some(creds.as_path()));
        assert_eq!(std::fs::read_dir(&creds).expect("read").count(), 0, "the stale passfile is gone");
        let mode = std::fs::metadata(&creds).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let f = crate::engine::credentials_file(&ctx.tools, "dg-pgpass-", "x").expect("file");
        assert!(f.path().starts_with(&creds), "new credential files go there");
    }

    #[test]
    fn local_paths_are_confined_to_roots_without_symlinks() {
        let root = tempfile::tempdir().expect("dir");
        let ctx = AgentContext::new(root.path(), vec![root.path().to_owned()], Default::default());
        assert!(ctx.confine(&root.path().join("a/b")).is_ok());
        assert!(ctx.confine(Path::new("/etc")).is_err());
        assert!(ctx.confine(&root.path().join("a/../../etc")).is_err());
        let outside = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).expect("symlink");
        assert!(ctx.confine(&root.path().join("link/x")).unwrap_err().contains("symlink"));
        let none = AgentContext::new(root.path(), vec![], Default::default());
        assert!(none.confine(&root.path().join("a")).is_err());
    }
}
