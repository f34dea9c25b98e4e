//! The report printed at the end: per engine, the table of steps and the ratios against their targets, then
//! the agent's memory, the load average and the summary of verdicts. `print_report` returns false when a figure
//! is missing.

use std::{fmt::Write as _, path::Path};

use crate::{
    ADAPTIVE_MAX, ADAPTIVE_MIN, ZSTD_LEVEL,
    args::Args,
    engine::Kind,
    samples::{DgSamples, EngineReport, Problem, Samples, median, spread},
};

/// Targets.
const BACKUP_VS_DUMP: f64 = 1.1;
const RESTORE_VS_PLAIN: f64 = 1.1;
const RSS_LIMIT: u64 = 64 * 1024 * 1024;

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// The per-engine table; the min..max column only appears with several runs.
struct Table<'a> {
    out: &'a mut String,
    runs: u32,
}

impl Table<'_> {
    fn header(&mut self) {
        let label = if self.runs > 1 { format!("median of {}", self.runs) } else { "seconds".into() };
        let spread = if self.runs > 1 { format!("  {:<12}", "min..max") } else { String::new() };
        let _ = writeln!(self.out, "  {:<62} {label:>12}{spread}  {:<24} agent VmRSS peak", "step", "bytes");
        let _ = writeln!(self.out, "  {}", "-".repeat(if self.runs > 1 { 134 } else { 120 }));
    }

    fn row(&mut self, step: &str, secs: &[f64], bytes: &str, rss: &str) {
        let med = median(secs).map(|s| format!("{s:>12.2}")).unwrap_or_else(|| format!("{:>12}", "-"));
        let spread = if self.runs > 1 { format!("  {:<12}", spread(secs)) } else { String::new() };
        let _ = writeln!(self.out, "  {step:<62} {med}{spread}  {bytes:<24} {rss}");
    }

    fn step(&mut self, label: &str, s: &Samples) {
        let rss = if s.secs.is_empty() { String::new() } else { mib(s.rss) };
        self.row(label, &s.secs, &s.bytes.map(mib).unwrap_or_default(), &rss);
    }

    fn dg(&mut self, label: &str, dg: &DgSamples, backup: bool) {
        match &dg.problem {
            Some(Problem::Unavailable(why)) => self.row(label, &[], &format!("unavailable in this build: {why}"), ""),
            Some(Problem::Failed(why)) => self.row(label, &[], &format!("FAILED: {why}"), ""),
            None if dg.wall.secs.is_empty() => self.row(label, &[], "not run", ""),
            None => {
                let bytes = if backup {
                    format!("{} stored", dg.wall.bytes.map(mib).unwrap_or_default())
                } else {
                    String::new()
                };
                self.row(label, &dg.wall.secs, &bytes, &mib(dg.wall.rss));
                let detail = if backup { format!("raw {}, {} chunks", mib(dg.raw), dg.chunks) } else { String::new() };
                self.row("    execution started_at -> finished_at", &dg.exec, &detail, "");
            }
        }
    }
}

/// One ratio line; returns the verdict when there is a target and both figures exist.
fn ratio_line(out: &mut String, what: &str, num: Option<f64>, den: Option<f64>, target: Option<f64>) -> Option<bool> {
    let tgt = target.map(|t| format!("<= {t:.2}")).unwrap_or_default();
    let (Some(n), Some(d)) = (num, den) else {
        let _ = writeln!(out, "  {what:<46} {:>7}   {tgt:<10} n/a", "-");
        return None;
    };
    let r = if d > 0.0 { n / d } else { f64::INFINITY };
    match target {
        Some(t) => {
            let pass = r <= t;
            let _ = writeln!(out, "  {what:<46} {r:>7.3}   {tgt:<10} {}", verdict(pass));
            Some(pass)
        }
        None => {
            let _ = writeln!(out, "  {what:<46} {r:>7.3}   {tgt:<10} (info)");
            None
        }
    }
}

/// Agent memory: idle VmRSS, highest sample, VmHWM.
pub(crate) struct Memory {
    pub(crate) idle: u64,
    pub(crate) sampled: u64,
    pub(crate) hwm: Option<u64>,
}

pub(crate) fn print_report(
    args: &Args,
    reports: &[EngineReport],
    mem: &Memory,
    loads: (&str, &str),
    agent_log: &Path,
    agent_exit: Option<std::process::ExitStatus>,
) -> bool {
    let mut out = String::new();
    let mut ok = true;
    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let runs = if args.runs > 1 { format!(", {} runs each, medians", args.runs) } else { String::new() };
    let _ = writeln!(
        out,
        "\n=============================== dg-bench results ({}{runs}) ===============================",
        args.datasets.iter().map(|d| d.describe(args)).collect::<Vec<_>>().join("; ")
    );
    for r in reports {
        let k = r.kind;
        let _ = writeln!(
            out,
            "\n{} — source {}: {} on disk, {} rows",
            r.title(),
            r.source.name,
            mib(r.source.bytes),
            r.source.rows
        );
        let mut t = Table { out: &mut out, runs: args.runs };
        t.header();
        t.step(&format!("    {} > file (reference, input of (d))", k.dump_tool()), &r.dump_file);
        t.step(&format!("(a) {} > /dev/null", k.dump_tool()), &r.dump_alone);
        t.step(&format!("(b) {} | zstd -{ZSTD_LEVEL} -T2 | tee >(sha256sum) > file", k.dump_tool()), &r.pipeline);
        t.dg("(c) DataGuardian backup, RunNow -> completed", &r.dg_backup, true);
        if !r.dg_backup_l1.wall.secs.is_empty() || r.dg_backup_l1.problem.is_some() {
            t.dg("(c1) DataGuardian backup, fixed level 1", &r.dg_backup_l1, true);
        }
        if !r.dg_backup_adaptive.wall.secs.is_empty() || r.dg_backup_adaptive.problem.is_some() {
            t.dg(
                &format!("(c2) DataGuardian backup, adaptive {ADAPTIVE_MIN}..{ADAPTIVE_MAX}"),
                &r.dg_backup_adaptive,
                true,
            );
        }
        let restore = match k {
            Kind::Postgres => "(d) CREATE DATABASE + pg_restore -d db file",
            Kind::Mariadb => "(d) CREATE DATABASE + mariadb db < file",
        };
        t.step(restore, &r.plain_restore);
        t.dg("(e) DataGuardian restore (create_database), call -> completed", &r.dg_restore, false);
        t.dg("(f) DataGuardian verify (checksums only), call -> completed", &r.dg_verify, false);
        t.dg("(g) DataGuardian restore drill (restore, count, drop), call -> passed", &r.dg_drill, false);
        if r.dg_drill.problem.is_none() && !r.drill_rto.is_empty() {
            t.row("    drill RTO: run start -> scratch database queryable", &r.drill_rto, "", "");
        }
        let _ = writeln!(out, "  dump command: {}", k.dump_display());

        let _ = writeln!(out, "\n  {:<46} {:>7}   {:<10} result", "ratio", "value", "target");
        let (b, e) = (r.dg_backup.median(), r.dg_restore.median());
        let checks = [
            (
                "DG backup / dump alone        (c)/(a)",
                format!("backup <= {BACKUP_VS_DUMP} x dump alone"),
                b,
                r.dump_alone.median(),
                BACKUP_VS_DUMP,
            ),
            ("DG backup / pipeline          (c)/(b)", "backup <= pipeline".to_owned(), b, r.pipeline.median(), 1.0),
            (
                "DG restore / plain restore    (e)/(d)",
                format!("restore <= {RESTORE_VS_PLAIN} x {}", k.restore_tool()),
                e,
                r.plain_restore.median(),
                RESTORE_VS_PLAIN,
            ),
        ];
        for (what, short, n, d, t) in checks {
            match ratio_line(&mut out, what, n, d, Some(t)) {
                Some(pass) => verdicts.push((format!("{} {short}", r.title()), pass)),
                None => missing.push(format!("{} {short}", r.title())),
            }
        }
        let exec_b = if r.dg_backup.problem.is_none() { median(&r.dg_backup.exec) } else { None };
        let exec_e = if r.dg_restore.problem.is_none() { median(&r.dg_restore.exec) } else { None };
        ratio_line(&mut out, "DG backup execution span / dump alone", exec_b, r.dump_alone.median(), None);
        ratio_line(&mut out, "DG restore execution span / plain restore", exec_e, r.plain_restore.median(), None);
        let c2 = r.dg_backup_adaptive.median();
        ratio_line(&mut out, "DG adaptive backup / dump alone (c2)/(a)", c2, r.dump_alone.median(), None);
        ratio_line(&mut out, "DG adaptive backup / pipeline  (c2)/(b)", c2, r.pipeline.median(), None);
        let stored = |d: &DgSamples| if d.problem.is_none() { d.wall.bytes.map(|x| x as f64) } else { None };
        ratio_line(
            &mut out,
            "stored: adaptive / level 3     (c2)/(c)",
            stored(&r.dg_backup_adaptive),
            stored(&r.dg_backup),
            None,
        );
        ratio_line(
            &mut out,
            "stored: adaptive / level 1     (c2)/(c1)",
            stored(&r.dg_backup_adaptive),
            stored(&r.dg_backup_l1),
            None,
        );
        for (i, l) in r.adaptive_levels.iter().enumerate() {
            let _ = writeln!(out, "  adaptive run {}: {l}", i + 1);
        }
        ratio_line(&mut out, "DG verify / DG backup          (f)/(c)", r.dg_verify.median(), b, None);
        ratio_line(&mut out, "DG drill / DG restore          (g)/(e)", r.dg_drill.median(), e, None);
        let stored = if r.dg_backup.problem.is_none() { r.dg_backup.wall.bytes } else { None };
        ratio_line(
            &mut out,
            "DG bytes stored / pipeline file bytes",
            stored.map(|x| x as f64),
            r.pipeline.bytes.map(|x| x as f64),
            None,
        );
        ratio_line(
            &mut out,
            "pipeline / dump alone          (b)/(a)",
            r.pipeline.median(),
            r.dump_alone.median(),
            None,
        );
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        if matches!(r.dg_backup.problem, Some(Problem::Unavailable(_))) {
            let _ = writeln!(out, "  note: the DataGuardian {} rows are unavailable in this build", k.label());
        }
        if matches!(r.dg_backup.problem, Some(Problem::Failed(_)))
            || matches!(r.dg_restore.problem, Some(Problem::Failed(_)))
            || matches!(r.dg_verify.problem, Some(Problem::Failed(_)))
            || matches!(r.dg_drill.problem, Some(Problem::Failed(_)))
        {
            ok = false;
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  ERROR: {e}");
            ok = false;
        }
        if let Some(s) = r.source.generated {
            let _ = writeln!(out, "  (source generated in {s:.1} s)");
        }
    }

    let _ =
        writeln!(out, "\nDataGuardian agent (its own process; the dump and restore tools it spawns are not counted)");
    let _ = writeln!(out, "  VmRSS idle after start                    {}", mib(mem.idle));
    for r in reports {
        if r.dg_backup.problem.is_none() && !r.dg_backup.wall.secs.is_empty() {
            let _ = writeln!(out, "  VmRSS peak during the {:<20} backups  {}", r.title(), mib(r.dg_backup.wall.rss));
        }
        if r.dg_restore.problem.is_none() && !r.dg_restore.wall.secs.is_empty() {
            let _ = writeln!(out, "  VmRSS peak during the {:<20} restores {}", r.title(), mib(r.dg_restore.wall.rss));
        }
    }
    let _ = writeln!(out, "  highest 100 ms VmRSS sample of the run    {}", mib(mem.sampled));
    match mem.hwm {
        Some(h) => {
            // The kernel raises the high-water mark lazily (memory handed back with madvise never raises it),
            // so a sample can exceed it: the peak is the larger of the two.
            let peak = h.max(mem.sampled);
            let pass = peak < RSS_LIMIT;
            let _ = writeln!(out, "  VmHWM just before stopping it             {}", mib(h));
            let _ = writeln!(
                out,
                "  peak RSS = max(VmHWM, samples)            {}   target < {}   {}",
                mib(peak),
                mib(RSS_LIMIT),
                verdict(pass)
            );
            verdicts.push(("agent peak RSS < 64 MiB".into(), pass));
        }
        None => {
            let _ = writeln!(out, "  peak RSS (VmHWM): unreadable (did the agent exit early?)");
            ok = false;
        }
    }
    let _ = writeln!(
        out,
        "  stopped with SIGTERM: {}",
        agent_exit.map(|s| s.to_string()).unwrap_or_else(|| "did not stop in time, killed".into())
    );
    let la = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        out,
        "\nload average: start {}, end {} (on few cores anything else running skews the figures)",
        la(loads.0),
        la(loads.1)
    );

    let _ = writeln!(out, "\nsummary");
    for (what, pass) in &verdicts {
        let _ = writeln!(out, "  {} {what}", verdict(*pass));
    }
    for what in &missing {
        let _ = writeln!(out, "  n/a  {what} (not measured)");
    }
    let passed = verdicts.iter().filter(|v| v.1).count();
    let _ = writeln!(
        out,
        "  {passed}/{} targets met{}",
        verdicts.len(),
        if ok { "" } else { "; some figures are missing (errors above)" }
    );
    if !ok {
        let log = std::fs::read_to_string(agent_log).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nlast lines of the agent's log ({}, removed at exit):\n{}",
            agent_log.display(),
            tail(&log, 30)
        );
    }
    print!("{out}");
    ok
}
