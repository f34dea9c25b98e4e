//! The commit check of a backup, as pure functions: what the agent reports at the end ([`BackupOutcome`])
//! against the attempt's plan ([`check_plan`]: the manifest key the layout dictates, storages among the
//! job's) and against the chunks the controller recorded for each storage ([`check_copies`]: every chunk
//! `0..n` recorded once, sizes adding up). A plan violation is a protocol breach (the attempt is refused);
//! a copy mismatch fails the commit. No I/O: `db::complete_backup` reads the records in the commit's
//! transaction and calls [`check_copies`] there.

use uuid::Uuid;

use crate::db::BackupOutcome;
pub use crate::db::CopySummary;

/// What the plan of an attempt allows a backup result to say.
#[derive(Clone, Copy, Debug)]
pub struct CommitPlan<'a> {
    /// The manifest key of the attempt's layout.
    pub manifest_key: &'a str,
    /// The globals key of the attempt's layout.
    pub globals_key: &'a str,
    /// The job's storages.
    pub storages: &'a [Uuid],
}

/// The result names a manifest, globals object or storage the plan does not: `Err` says which.
pub fn check_plan(plan: CommitPlan<'_>, outcome: &BackupOutcome) -> Result<(), String> {
    if outcome.manifest_key != plan.manifest_key {
        return Err(format!("manifest key {}, the plan says {}", outcome.manifest_key, plan.manifest_key));
    }
    if let Some((key, size, _)) = &outcome.globals {
        if key != plan.globals_key {
            return Err(format!("globals key {key}, the plan says {}", plan.globals_key));
        }
        if *size < 1 {
            return Err(format!("globals object of {size} bytes"));
        }
    }
    if let Some(s) = outcome.storage_ids.iter().find(|s| !plan.storages.contains(s)) {
        return Err(format!("storage {s} is not one of the job's storages"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(s) = outcome.storage_ids.iter().find(|s| !seen.insert(**s)) {
        return Err(format!("storage {s} is named twice"));
    }
    Ok(())
}

/// Every storage the result names holds exactly the chunks `0..chunk_count` with `stored_bytes` in all, as
/// recorded (one record per sequence number is the table's key); `Err` says what differs.
pub fn check_copies(outcome: &BackupOutcome, recorded: &[CopySummary]) -> Result<(), String> {
    if outcome.storage_ids.is_empty() {
        return Err("no storage holds a complete copy".into());
    }
    if outcome.chunk_count < 1 || outcome.stored_bytes < 0 {
        return Err(format!("{} chunks / {} bytes reported", outcome.chunk_count, outcome.stored_bytes));
    }
    for sid in &outcome.storage_ids {
        let s = recorded
            .iter()
            .find(|r| r.storage == *sid)
            .copied()
            .unwrap_or(CopySummary { storage: *sid, ..Default::default() });
        let contiguous = s.min_seq == Some(0) && s.max_seq == Some(outcome.chunk_count - 1);
        if s.chunks != i64::from(outcome.chunk_count) || s.bytes != outcome.stored_bytes || !contiguous {
            return Err(format!(
                "storage {sid}: {} chunks / {} bytes recorded, agent reported {} / {}",
                s.chunks, s.bytes, outcome.chunk_count, outcome.stored_bytes
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(storages: &[Uuid], chunks: i32, bytes: i64) -> BackupOutcome {
        BackupOutcome {
            raw_bytes: bytes * 2,
            stored_bytes: bytes,
            chunk_count: chunks,
            sha256: "ab".repeat(32),
            manifest_key: "ds/ex/1/manifest.json".into(),
            storage_ids: storages.to_vec(),
            tool_version: String::new(),
            server_version: String::new(),
            warnings: Vec::new(),
            encryption_key_id: None,
            wrapped_key_sha256: None,
            globals: None,
            table_counts: None,
            layout_sha256: None,
        }
    }

    fn copy(storage: Uuid, chunks: i64, bytes: i64, seqs: Option<(i32, i32)>) -> CopySummary {
        CopySummary { storage, chunks, bytes, min_seq: seqs.map(|s| s.0), max_seq: seqs.map(|s| s.1) }
    }

    #[test]
    fn the_plan_decides_manifest_and_storages() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let plan = CommitPlan {
            manifest_key: "ds/ex/1/manifest.json",
            globals_key: "ds/ex/1/globals.sql.zst",
            storages: &[a, b],
        };
        assert_eq!(check_plan(plan, &outcome(&[a, b], 3, 30)), Ok(()));
        assert_eq!(check_plan(plan, &outcome(&[b], 3, 30)), Ok(()), "a subset (fallback) is fine");
        assert!(check_plan(plan, &outcome(&[a, c], 3, 30)).is_err_and(|e| e.contains(&c.to_string())));
        assert!(check_plan(plan, &outcome(&[a, a], 3, 30)).is_err_and(|e| e.contains("twice")));
        let mut o = outcome(&[a], 3, 30);
        o.manifest_key = "ds/ex/2/manifest.json".into();
        assert!(check_plan(plan, &o).is_err_and(|e| e.contains("manifest key")));
        let mut o = outcome(&[a], 3, 30);
        o.globals = Some(("ds/ex/1/globals.sql.zst".into(), 12, "ab".repeat(32)));
        assert_eq!(check_plan(plan, &o), Ok(()));
        o.globals = Some(("ds/ex/1/00000000.zst".into(), 12, "ab".repeat(32)));
        assert!(check_plan(plan, &o).is_err_and(|e| e.contains("globals key")), "globals must not alias a chunk");
        o.globals = Some(("ds/ex/1/globals.sql.zst".into(), 0, "ab".repeat(32)));
        assert!(check_plan(plan, &o).is_err_and(|e| e.contains("globals object")));
    }

    #[test]
    fn every_named_copy_must_be_whole() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let whole = [copy(a, 3, 30, Some((0, 2))), copy(b, 3, 30, Some((0, 2)))];
        assert_eq!(check_copies(&outcome(&[a, b], 3, 30), &whole), Ok(()));
        // One chunk short, bytes off, a gap (0, 2, 3), a copy never recorded, nothing named, nothing stored.
        assert!(check_copies(&outcome(&[a], 3, 30), &[copy(a, 2, 20, Some((0, 1)))]).is_err());
        assert!(check_copies(&outcome(&[a], 3, 30), &[copy(a, 3, 31, Some((0, 2)))]).is_err());
        assert!(check_copies(&outcome(&[a], 3, 30), &[copy(a, 3, 30, Some((0, 3)))]).is_err());
        assert!(check_copies(&outcome(&[a], 3, 30), &[copy(a, 3, 30, Some((1, 3)))]).is_err());
        assert!(check_copies(&outcome(&[a, b], 3, 30), &whole[..1]).is_err_and(|e| e.contains(&b.to_string())));
        assert!(check_copies(&outcome(&[], 3, 30), &whole).is_err());
        assert!(check_copies(&outcome(&[a], 0, 0), &[copy(a, 0, 0, None)]).is_err());
        // Records of a storage the result does not name do not matter (a fallback storage that failed).
        assert_eq!(check_copies(&outcome(&[b], 3, 30), &[copy(a, 1, 5, Some((0, 0))), whole[1]]), Ok(()));
    }
}
