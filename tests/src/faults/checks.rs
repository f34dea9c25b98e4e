//! The invariants every trial is checked against, read from the controllers' database and the storage's
//! directory (the harness's view from outside, not the controller's own opinion): no attempt still
//! `running` after its lease plus one heartbeat, never two completed backups for one schedule slot, and no
//! object left in the storage that does not belong to the attempt of a completed backup.

use std::{collections::HashSet, path::Path, time::Duration};

use sqlx::Row as _;
use uuid::Uuid;

/// Attempts still `running` although their lease ended more than `slack` ago (`None`: the database did not
/// answer, as while it restarts).
pub async fn stuck(db: &sqlx::PgPool, slack: Duration) -> Option<Vec<(Uuid, i32)>> {
    let rows = sqlx::query(
        "SELECT id, attempt FROM execution WHERE status = 'running' AND lease_until < now() - make_interval(secs => $1)",
    )
    .bind(slack.as_secs_f64())
    .fetch_all(db)
    .await
    .ok()?;
    Some(rows.iter().filter_map(|r| Some((r.try_get("id").ok()?, r.try_get("attempt").ok()?))).collect())
}

/// Schedule slots with more than one completed execution.
pub async fn doubled_slots(db: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT job_id::text AS job, scheduled_for::text AS slot, count(*) AS n FROM execution \
         WHERE status = 'completed' AND scheduled_for IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (job, slot, n): (String, String, i64) = (
                r.try_get("job").unwrap_or_default(),
                r.try_get("slot").unwrap_or_default(),
                r.try_get("n").unwrap_or(0),
            );
            format!("job {job} slot {slot}: {n} completed")
        })
        .collect())
}

/// Completed scheduled backups of `job`, oldest first.
pub async fn completed_of_job(db: &sqlx::PgPool, job: Uuid) -> anyhow::Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT id FROM execution WHERE job_id = $1 AND operation = 'backup' AND status = 'completed' ORDER BY created_at",
    )
    .bind(job)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().filter_map(|r| r.try_get("id").ok()).collect())
}

/// Whether every execution has ended (none queued or running).
pub async fn all_ended(db: &sqlx::PgPool) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM execution WHERE status IN ('queued', 'running')")
        .fetch_one(db)
        .await?;
    Ok(n == 0)
}

/// Files in the storage that belong to no completed backup's own attempt: `<datasource>/<execution>/
/// <attempt>/<file>` is kept only for a completed backup with exactly that attempt. Files of attempts
/// still running are skipped.
pub async fn leaked_objects(db: &sqlx::PgPool, root: &Path) -> anyhow::Result<Vec<String>> {
    let rows =
        sqlx::query("SELECT id, attempt, status FROM execution WHERE operation = 'backup'").fetch_all(db).await?;
    let mut kept = HashSet::new();
    let mut running = HashSet::new();
    for r in &rows {
        let (id, attempt, status): (Uuid, i32, String) =
            (r.try_get("id")?, r.try_get("attempt")?, r.try_get("status")?);
        match status.as_str() {
            "completed" => {
                kept.insert((id, attempt));
            }
            "running" | "queued" => {
                running.insert(id);
            }
            _ => {}
        }
    }
    let mut leaked = Vec::new();
    for path in files_below(root)? {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        let owner = match parts.as_slice() {
            [_, ex, attempt, _file, ..] => ex.parse::<Uuid>().ok().zip(attempt.parse::<i32>().ok()),
            _ => None,
        };
        match owner {
            Some((ex, _)) if running.contains(&ex) => {}
            Some(k) if kept.contains(&k) => {}
            _ => leaked.push(rel),
        }
    }
    Ok(leaked)
}

fn files_below(root: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    Ok(out)
}

/// Every execution of `job`: (status, attempt, error).
pub async fn executions_of_job(db: &sqlx::PgPool, job: Uuid) -> anyhow::Result<Vec<(String, i32, String)>> {
    let rows = sqlx::query("SELECT status, attempt, coalesce(error, '') AS error FROM execution WHERE job_id = $1")
        .bind(job)
        .fetch_all(db)
        .await?;
    rows.iter().map(|r| Ok((r.try_get("status")?, r.try_get("attempt")?, r.try_get("error")?))).collect()
}
