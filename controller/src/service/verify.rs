//! Verify (checksum-only): which copies a verify of a backup reads ([`planned_copies`]: every complete copy
//! in a storage the verifying agent can reach, with the chunks recorded for it there), and the commit check
//! of what the agent reports ([`check_result`], pure): the findings must name exactly the plan's copies and
//! only chunks of them; each copy's verdict is then derived from the findings here
//! (`CopyFindings::status`), not taken from the agent. The executions service queues verifies and applies
//! the result; dispatch builds the plan.

use std::collections::HashSet;

use dg_common::protocol::{CopyStatus, VerifyResult};
use uuid::Uuid;

use super::storages;
use crate::{
    db::{CopyVerdict, Db},
    error::ControllerResult,
    model::{Chunk, Execution, Storage},
};

/// One copy a verify reads: its storage and the chunks recorded for it.
#[derive(Clone, Debug)]
pub struct PlannedCopy {
    /// The storage.
    pub storage: Storage,
    /// The chunks recorded for this copy, in order.
    pub chunks: Vec<Chunk>,
}

/// The copies of `backup` a verify run by `agent` reads: every complete copy in a storage that agent can
/// reach (a local storage of another agent cannot be read by it) and with chunk records, in recorded order.
pub async fn planned_copies(db: &Db, backup: &Execution, agent: Uuid) -> ControllerResult<Vec<PlannedCopy>> {
    let chunks = db.chunks(backup.id, backup.attempt).await?;
    let mut out = Vec::new();
    for sid in db.backup_storage_ids(backup.id).await? {
        if let Some(s) = db.storage(sid).await?
            && storages::reachable_by(&s, agent)
        {
            let chunks: Vec<Chunk> = chunks.iter().filter(|c| c.storage_id == sid).cloned().collect();
            if !chunks.is_empty() {
                // A copy without chunk records cannot be checked against anything.
                out.push(PlannedCopy { storage: s, chunks });
            }
        }
    }
    Ok(out)
}

/// What the controller makes of one copy's findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOutcome {
    /// The storage.
    pub storage_id: Uuid,
    /// The verdict to record; `None` when the copy could not be read (its previous verdict stays).
    pub verdict: Option<CopyVerdict>,
    /// One line for the verify's log.
    pub line: String,
}

/// The result names exactly the plan's copies (`storage id → chunk count`), once each, and only chunks
/// `0..count` of each, once each: `Err` says what does not fit. Otherwise the verdict per copy.
pub fn check_result(planned: &[(Uuid, usize)], result: &VerifyResult) -> Result<Vec<CopyOutcome>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(result.copies.len());
    for f in &result.copies {
        let sid = f.storage.0;
        let Some((_, count)) = planned.iter().find(|(s, _)| *s == sid) else {
            return Err(format!("storage {sid} holds no copy this verify was asked to read"));
        };
        if !seen.insert(sid) {
            return Err(format!("storage {sid} is reported twice"));
        }
        let mut seqs = HashSet::new();
        for d in &f.damaged_chunks {
            if d.seq as usize >= *count {
                return Err(format!("storage {sid}: chunk {} is not one of its {count} chunks", d.seq));
            }
            if !seqs.insert(d.seq) {
                return Err(format!("storage {sid}: chunk {} is reported twice", d.seq));
            }
        }
        let Some(status) = f.status(*count) else {
            let why = f.unreadable.clone().unwrap_or_default();
            out.push(CopyOutcome {
                storage_id: sid,
                verdict: None,
                line: format!(
                    "copy in storage {sid}: not verified (the storage cannot be read: {why}); its previous status stays"
                ),
            });
            continue;
        };
        let damaged: Vec<serde_json::Value> = f
            .damaged_chunks
            .iter()
            .map(|d| serde_json::json!({ "seq": d.seq, "fault": d.fault.as_str(), "detail": d.detail }))
            .collect();
        let problems = f.problems();
        let line = match status {
            CopyStatus::Intact => format!("copy in storage {sid}: intact ({count} chunks checked)"),
            other => {
                let chunks: Vec<String> =
                    f.damaged_chunks.iter().take(20).map(|d| format!("chunk {} {}", d.seq, d.fault.as_str())).collect();
                let what: Vec<String> = chunks.into_iter().chain(problems.iter().cloned()).collect();
                format!(
                    "copy in storage {sid}: {}: {}; restores and downloads skip it",
                    other.as_str(),
                    what.join("; ")
                )
            }
        };
        out.push(CopyOutcome {
            storage_id: sid,
            verdict: Some(CopyVerdict {
                storage_id: sid,
                status: status.as_str(),
                detail: serde_json::json!({ "damaged_chunks": damaged, "problems": problems }),
            }),
            line,
        });
    }
    if let Some((missing, _)) = planned.iter().find(|(s, _)| !seen.contains(s)) {
        return Err(format!("storage {missing}: its copy is not reported"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use dg_common::{
        ids::StorageId,
        protocol::{ChunkDamage, ChunkFault, CopyFindings},
    };

    use super::*;

    fn damage(seq: u32, fault: ChunkFault) -> ChunkDamage {
        ChunkDamage { seq, fault, detail: String::new() }
    }

    #[test]
    fn verdicts_are_derived_here_and_only_copies_and_chunks_of_the_plan_are_accepted() {
        let (a, b) = (StorageId::new(), StorageId::new());
        let planned = [(a.0, 3), (b.0, 3)];
        let mut bad = CopyFindings::clean(a);
        bad.damaged_chunks = vec![damage(0, ChunkFault::Sha256), damage(2, ChunkFault::Missing)];
        let ok = CopyFindings::clean(b);
        let out = check_result(&planned, &VerifyResult { copies: vec![bad.clone(), ok.clone()] }).expect("fits");
        let v = out[0].verdict.as_ref().expect("a verdict");
        assert_eq!(v.status, "damaged");
        assert_eq!(v.detail["damaged_chunks"][1]["seq"], 2);
        assert_eq!(v.detail["damaged_chunks"][1]["fault"], "missing");
        assert!(out[0].line.contains("chunk 0 sha256; chunk 2 missing"), "{}", out[0].line);
        assert_eq!(out[1].verdict.as_ref().map(|v| v.status), Some("intact"));

        let mut gone = CopyFindings::clean(b);
        gone.manifest_missing = true;
        gone.damaged_chunks = (0..3).map(|s| damage(s, ChunkFault::Missing)).collect();
        let out = check_result(&planned, &VerifyResult { copies: vec![bad.clone(), gone] }).expect("fits");
        assert_eq!(out[1].verdict.as_ref().map(|v| v.status), Some("missing"));

        let mut unreadable = CopyFindings::clean(b);
        unreadable.unreadable = Some("connection refused".into());
        let copies = vec![CopyFindings::clean(a), unreadable];
        let out = check_result(&planned, &VerifyResult { copies }).expect("fits");
        assert_eq!(out[1].verdict, None, "no verdict: the previous one stays");

        let stranger = CopyFindings::clean(StorageId::new());
        let mut past_end = CopyFindings::clean(a);
        past_end.damaged_chunks = vec![damage(3, ChunkFault::Size)];
        let mut twice = CopyFindings::clean(a);
        twice.damaged_chunks = vec![damage(1, ChunkFault::Size), damage(1, ChunkFault::Sha256)];
        let refused = [
            (vec![ok.clone(), stranger], "holds no copy"),
            (vec![ok.clone(), ok.clone()], "reported twice"),
            (vec![past_end, ok.clone()], "not one of its 3 chunks"),
            (vec![twice, ok.clone()], "chunk 1 is reported twice"),
            (vec![ok], "is not reported"),
        ];
        for (copies, why) in refused {
            let e = check_result(&planned, &VerifyResult { copies }).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
