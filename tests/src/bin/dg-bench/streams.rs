//! The parallel comparison (PostgreSQL, the `tables` and `big` data sets): per stream count N, `pg_dump -Fd
//! -jN -Z0` into a local directory against a DataGuardian backup of a job with `parallel: N` (zstd level 3,
//! to the local storage), and `pg_restore -jN` from that directory against a DataGuardian restore with
//! `parallel_jobs: N`; `pg_dump -Fc -Z0` into a file is the single-stream reference. Interleaved round by
//! round, every restore checked by its row count.

use std::{process::Stdio, time::Instant};

use dg_proto::v1 as pb;
use dg_tests::{cluster::authed, suffix};

use crate::{
    ZSTD_LEVEL,
    bench::Ctx,
    created::Created,
    dg::wait_exec,
    engine::{HOST, Kind, PG_USER},
    plain::{settle, timed, tool},
    report::mib,
    samples::{Samples, spread},
};

/// Figures of one stream count.
#[derive(Default)]
pub(crate) struct Row {
    pub(crate) n: u32,
    pub(crate) dump_dir: Samples,
    pub(crate) dg_backup: Samples,
    pub(crate) restore_dir: Samples,
    pub(crate) dg_restore: Samples,
    pub(crate) levels_note: Option<String>,
}

/// The parallel comparison of one data set.
pub(crate) struct Report {
    pub(crate) label: String,
    pub(crate) dump_fc: Samples,
    pub(crate) rows: Vec<Row>,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Runs the comparison for the PostgreSQL source `db` holding `rows` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn compare(
    label: &str,
    db: &str,
    rows: i64,
    ns: &[u32],
    runs: u32,
    ctx: &mut Ctx<'_>,
    created: &mut Created,
) -> anyhow::Result<Report> {
    let kind = Kind::Postgres;
    let t = ctx.clients.token.clone();
    let sfx = suffix();
    let ds = ctx.datasource(kind, db, format!("bench-par-{sfx}")).await?;
    let mut jobs = Vec::new();
    for &n in ns {
        let req = pb::CreateBackupJobRequest {
            name: format!("bench-par-{sfx}-{n}"),
            datasource_id: ds.id.clone(),
            storage_ids: vec![ctx.storage_id.clone()],
            compression_level: ZSTD_LEVEL,
            parallel: n,
            ..Default::default()
        };
        jobs.push(ctx.clients.jobs.create_backup_job(authed(req, &t)).await?.into_inner());
    }
    let mut report = Report {
        label: label.into(),
        dump_fc: Samples::default(),
        rows: ns.iter().map(|&n| Row { n, ..Row::default() }).collect(),
    };
    let file = ctx.dir.join("par.dump");
    let dir = ctx.dir.join("par.dir");
    for round in 1..=runs {
        let tag = format!("[{label} parallel {round}/{runs}]");
        let mut c = kind.dump_cmd(db);
        c.stdout(std::fs::File::create(&file)?);
        settle(kind).await;
        let secs = timed(c, "pg_dump -Fc > file").await?;
        report.dump_fc.push(secs, Some(std::fs::metadata(&file)?.len()), 0);
        println!("{tag} pg_dump -Fc -Z0 > file: {secs:.2} s");
        let _ = std::fs::remove_file(&file);

        for (row, job) in report.rows.iter_mut().zip(&jobs) {
            let n = row.n;
            let _ = std::fs::remove_dir_all(&dir);
            let mut c = tool("pg_dump");
            c.args(["-h", HOST, "-p", "5432", "-U", PG_USER, "-Fd", "-Z0", &format!("-j{n}"), "-f"])
                .arg(&dir)
                .arg(db)
                .stdout(Stdio::null());
            settle(kind).await;
            let secs = timed(c, "pg_dump -Fd").await?;
            row.dump_dir.push(secs, Some(dir_bytes(&dir)), 0);
            println!("{tag} pg_dump -Fd -Z0 -j{n} > dir: {secs:.2} s, {}", mib(dir_bytes(&dir)));

            settle(kind).await;
            ctx.rss.begin();
            let start = Instant::now();
            let ex = ctx.clients.jobs.run_now(authed(pb::RunNowRequest { job_id: job.id.clone() }, &t)).await?;
            let done = wait_exec(ctx.clients, &ex.into_inner().id).await?;
            let secs = start.elapsed().as_secs_f64();
            let rss = ctx.rss.end();
            anyhow::ensure!(done.status == pb::ExecutionStatus::Completed as i32, "parallel {n}: {}", done.error);
            row.dg_backup.push(secs, Some(done.stored_bytes), rss);
            let logs = ctx.clients.logs(&done.id).await.unwrap_or_default();
            row.levels_note = logs.lines().find_map(|l| l.split("table data in ").nth(1)).map(str::to_owned);
            println!(
                "{tag} DataGuardian parallel {n}: {secs:.2} s, stored {}, agent VmRSS peak {}",
                mib(done.stored_bytes),
                mib(rss)
            );

            let plain_db = format!("{db}_pr_{sfx}_{round}_{n}");
            created.track_db(kind, &plain_db);
            kind.create_db(&plain_db).await?;
            let mut c = tool("pg_restore");
            c.args(["-h", HOST, "-p", "5432", "-U", PG_USER, "-d", &plain_db, &format!("-j{n}")])
                .arg(&dir)
                .stdout(Stdio::null());
            settle(kind).await;
            let secs = timed(c, "pg_restore -j").await?;
            let got = kind.rows(&plain_db).await?;
            anyhow::ensure!(got == rows, "pg_restore -j{n} restored {got} rows of {rows}");
            row.restore_dir.push(secs, None, 0);
            println!("{tag} pg_restore -j{n} from dir: {secs:.2} s");
            created.drop_db_now(kind, &plain_db).await;
            let _ = std::fs::remove_dir_all(&dir);

            let dg_db = format!("{db}_dr_{sfx}_{round}_{n}");
            created.track_db(kind, &dg_db);
            settle(kind).await;
            ctx.rss.begin();
            let start = Instant::now();
            let req = pb::RestoreBackupRequest {
                backup_id: done.id.clone(),
                target_database: dg_db.clone(),
                create_database: true,
                confirm_target_database: dg_db.clone(),
                parallel_jobs: n,
                ..Default::default()
            };
            let r = ctx.clients.backups.restore_backup(authed(req, &t)).await?.into_inner();
            let rdone = wait_exec(ctx.clients, &r.id).await?;
            let secs = start.elapsed().as_secs_f64();
            let rss = ctx.rss.end();
            anyhow::ensure!(rdone.status == pb::ExecutionStatus::Completed as i32, "restore {n}: {}", rdone.error);
            let got = kind.rows(&dg_db).await?;
            anyhow::ensure!(got == rows, "DataGuardian restore with {n} jobs restored {got} rows of {rows}");
            row.dg_restore.push(secs, None, rss);
            println!("{tag} DataGuardian restore, {n} jobs: {secs:.2} s, agent VmRSS peak {}", mib(rss));
            created.drop_db_now(kind, &dg_db).await;
            let _ = ctx.clients.backups.delete_backup(authed(pb::DeleteBackupRequest { id: done.id }, &t)).await;
        }
    }
    Ok(report)
}

fn cell(s: &Samples) -> String {
    match s.median() {
        Some(m) if s.secs.len() > 1 => format!("{m:.2} s ({})", spread(&s.secs)),
        Some(m) => format!("{m:.2} s"),
        None => "-".into(),
    }
}

fn ratio(a: &Samples, b: &Samples) -> String {
    match (a.median(), b.median()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Prints the comparison tables.
pub(crate) fn print(reports: &[Report]) {
    for r in reports {
        println!("\n== {}: parallel streams (medians, min..max) ==", r.label);
        println!("pg_dump -Fc -Z0 > file (one stream): {}", cell(&r.dump_fc));
        println!(
            "{:>2} | {:<22} | {:<22} | {:>7} | {:>7} | {:>9} | {:<22} | {:<22} | {:>7} | {:>8}",
            "N",
            "pg_dump -Fd -jN",
            "DataGuardian backup",
            "vs -Fd",
            "vs -Fc",
            "stored",
            "pg_restore -jN",
            "DataGuardian restore",
            "ratio",
            "RSS"
        );
        for row in &r.rows {
            println!(
                "{:>2} | {:<22} | {:<22} | {:>7} | {:>7} | {:>9} | {:<22} | {:<22} | {:>7} | {:>8}",
                row.n,
                cell(&row.dump_dir),
                cell(&row.dg_backup),
                ratio(&row.dg_backup, &row.dump_dir),
                ratio(&row.dg_backup, &r.dump_fc),
                row.dg_backup.bytes.map(mib).unwrap_or_default(),
                cell(&row.restore_dir),
                cell(&row.dg_restore),
                ratio(&row.dg_restore, &row.restore_dir),
                mib(row.dg_backup.rss.max(row.dg_restore.rss)),
            );
        }
        if let Some(note) = r.rows.last().and_then(|l| l.levels_note.as_deref()) {
            println!("(largest N: table data in {note})");
        }
        let first = r.rows.first().and_then(|f| f.dg_backup.median());
        let last = r.rows.last().and_then(|l| l.dg_backup.median());
        if let (Some(a), Some(b), Some(n), true) = (first, last, r.rows.last().map(|l| l.n), r.rows.len() > 1) {
            println!("DataGuardian backup speed-up from N = {} to N = {n}: {:.2}x", r.rows[0].n, a / b);
        }
    }
}
