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
    /// The context of an agent with state directory `state_dir`.
    pub fn new(state_dir: &Path, local_roots: Vec<PathBuf>, tools: crate::tools::Tools) -> Self {
        Self {
            local_roots: Arc::new(local_roots),
            keys_dir: crate::keys::keys_dir(state_dir),
            work_dir: state_dir.join("work"),
            tools,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
