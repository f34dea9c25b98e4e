//! The run: checks the tools, sets up the work directory, the sources, the in-process controller and the agent
//! process, then drives every step of every engine, round by round, and hands the figures to `report`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, anyhow};
use dg_controller::config::Config;
use dg_proto::v1 as pb;
use dg_tests::{
    cluster::{Clients, Cluster, ClusterOptions, authed},
    suffix,
};

use crate::{
    ADAPTIVE_MAX, ADAPTIVE_MIN, ZSTD_LEVEL,
    args::Args,
    created::Created,
    dg::{Variant, dg_backup, dg_backup_variant, dg_drill, dg_restore, dg_verify},
    engine::{HOST, Kind},
    plain::{first_line_of, on_path, pipeline, settle, timed, tool},
    report::{Memory, mib, print_report},
    rss::{RssSampler, proc_status_bytes},
    samples::{DgSamples, EngineReport, Problem, Samples},
    source::prepare_source,
};

pub(crate) struct Ctx<'a> {
    pub(crate) clients: &'a mut Clients,
    pub(crate) agent_id: String,
    pub(crate) storage_id: String,
    pub(crate) dir: PathBuf,
    pub(crate) rss: &'a RssSampler,
}

impl Ctx<'_> {
    /// Creates the datasource `name` for the bench database `db` of `kind` on the loopback server, bound to
    /// the bench agent (untimed set-up).
    pub(crate) async fn datasource(&mut self, kind: Kind, db: &str, name: String) -> anyhow::Result<pb::Datasource> {
        let req = pb::CreateDatasourceRequest {
            name,
            engine: kind.pb() as i32,
            host: HOST.into(),
            port: u32::from(kind.port()),
            database: db.into(),
            username: kind.user().into(),
            tls_mode: pb::TlsMode::Disable as i32,
            agent_id: self.agent_id.clone(),
            ..Default::default()
        };
        let token = &self.clients.token;
        Ok(self.clients.datasources.create_datasource(authed(req, token)).await?.into_inner())
    }
}

pub(crate) async fn bench(args: &Args, created: &mut Created) -> anyhow::Result<bool> {
    let mut missing = Vec::new();
    let mut needed = vec!["bash", "zstd", "sha256sum", "tee", "kill"];
    for k in &args.engines {
        needed.extend(k.tools());
    }
    for t in needed {
        if !on_path(t) {
            missing.push(t);
        }
    }
    anyhow::ensure!(missing.is_empty(), "missing tools on PATH: {}", missing.join(", "));
    let exe = std::env::current_exe().context("locate this executable")?;
    let agent_bin = exe.parent().map(|d| d.join("dg-agent")).filter(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no dg-agent next to {}: build both with `cargo build --release -p dg-agent -p dg-tests`",
            exe.display()
        )
    })?;

    // Work directory: everything under <work>/dg-bench-<random>, removed at the end.
    let run_dir = match &args.work_dir {
        Some(w) => {
            let w = std::path::absolute(w)?;
            if !w.exists() {
                std::fs::create_dir_all(&w).with_context(|| format!("create {}", w.display()))?;
                created.paths.push(w.clone());
            }
            w.join(format!("dg-bench-{}", suffix()))
        }
        None => std::env::temp_dir().join(format!("dg-bench-{}", suffix())),
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    created.paths.push(run_dir.clone());
    // The agent refuses local storages reached through symlinks.
    let run_dir = std::fs::canonicalize(&run_dir)?;

    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load1: f64 = load_start.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    if load1 > cores as f64 / 2.0 {
        println!(
            "WARNING: load average {load1:.2} on {cores} cores before the bench starts: something else is busy and \
             will skew the figures"
        );
    }
    println!(
        "dg-bench: data sets {:?}, engines {:?}, {} run(s), work dir {}",
        args.datasets,
        args.engines,
        args.runs,
        run_dir.display()
    );
    println!(
        "  cores {cores}, load average at start {}",
        load_start.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "  agent binary {} ({})",
        agent_bin.display(),
        first_line_of(&agent_bin.to_string_lossy(), &["--version"])
    );
    if let Ok(m) = std::fs::metadata(&agent_bin).and_then(|m| m.modified()) {
        println!("  agent binary built {}", chrono::DateTime::<chrono::Utc>::from(m).format("%Y-%m-%d %H:%M:%S UTC"));
    }
    for k in &args.engines {
        println!("  {}", first_line_of(k.dump_tool(), &["--version"]));
    }
    println!("  {}", first_line_of("zstd", &["--version"]));

    // 1. Sources: every data set in every engine.
    let mut reports = Vec::new();
    for &dataset in &args.datasets {
        for &kind in &args.engines {
            let source = prepare_source(kind, dataset, args, created).await?;
            println!(
                "[{} {dataset}] source {}: {} on disk, {} rows{}",
                kind.short(),
                source.name,
                mib(source.bytes),
                source.rows,
                source.generated.map(|s| format!(", generated in {s:.1} s")).unwrap_or_default()
            );
            reports.push(EngineReport {
                kind,
                source,
                dump_file: Samples::default(),
                dump_alone: Samples::default(),
                pipeline: Samples::default(),
                dg_backup: DgSamples::default(),
                dg_backup_l1: DgSamples::default(),
                dg_backup_adaptive: DgSamples::default(),
                adaptive_levels: Vec::new(),
                plain_restore: Samples::default(),
                dg_restore: DgSamples::default(),
                dg_verify: DgSamples::default(),
                dg_drill: DgSamples::default(),
                drill_rto: Vec::new(),
                notes: Vec::new(),
                error: None,
            });
        }
    }

    // 2. Controller in-process, agent as its own process.
    let chunk_size = Config::default().chunk_size_bytes;
    let cluster = Cluster::start_with(ClusterOptions { chunk_size, ..ClusterOptions::default() })
        .await
        .context("start the controller (needs PostgreSQL and Redis on their default ports)")?;
    let endpoint = cluster.api_endpoint();
    let mut clients = cluster.clients().await?;
    println!(
        "controller: {endpoint} (in-process); chunk size {}, zstd level {ZSTD_LEVEL}, {} compression workers, {} \
         concurrent uploads",
        mib(chunk_size),
        cluster.config.compression_workers,
        cluster.config.upload_concurrency
    );
    created.cluster = Some(cluster);

    let jt = clients
        .agents
        .create_join_token(authed(pb::CreateJoinTokenRequest::default(), &clients.token))
        .await?
        .into_inner();
    let state_dir = run_dir.join("agent-state");
    let enroll = tool(&agent_bin.to_string_lossy())
        .arg("enroll")
        .args(["--controller", &endpoint, "--token", &jt.token, "--ca-fingerprint", &jt.ca_fingerprint])
        .arg("--state-dir")
        .arg(&state_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .await
        .context("run dg-agent enroll")?;
    anyhow::ensure!(
        enroll.status.success(),
        "dg-agent enroll failed ({}): {}",
        enroll.status,
        String::from_utf8_lossy(&enroll.stderr)
    );
    let agent_id = String::from_utf8_lossy(&enroll.stdout).lines().last().unwrap_or_default().trim().to_owned();
    anyhow::ensure!(!agent_id.is_empty(), "dg-agent enroll printed no agent id");
    let run_help = tool(&agent_bin.to_string_lossy()).args(["run", "--help"]).output().await?;
    let local_root = String::from_utf8_lossy(&run_help.stdout).contains("--local-root");
    let log_path = run_dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let mut run_cmd = tool(&agent_bin.to_string_lossy());
    run_cmd.arg("run").arg("--state-dir").arg(&state_dir);
    if local_root {
        run_cmd.arg("--local-root").arg(&run_dir);
    }
    let child = run_cmd.stdout(log.try_clone()?).stderr(log).spawn().context("start dg-agent run")?;
    let pid = child.id().ok_or_else(|| anyhow!("dg-agent exited at once; see {}", log_path.display()))?;
    created.agent = Some(child);
    clients
        .wait_agent_status(&agent_id, pb::AgentStatus::Online, Duration::from_secs(60))
        .await
        .with_context(|| format!("agent online (log: {})", log_path.display()))?;
    let rss = RssSampler::start(pid);
    let idle_rss = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    println!(
        "agent: {agent_id}, pid {pid}, online{}; VmRSS when idle {}",
        if local_root { format!(", --local-root {}", run_dir.display()) } else { String::new() },
        mib(idle_rss)
    );

    let storage_dir = run_dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let storage = clients
        .storages
        .create_storage(authed(
            pb::CreateStorageRequest {
                name: format!("bench-local-{}", suffix()),
                config: Some(pb::create_storage_request::Config::Local(pb::LocalStorageConfig {
                    path: storage_dir.to_string_lossy().into_owned(),
                    agent_id: agent_id.clone(),
                })),
                ..Default::default()
            },
            &clients.token,
        ))
        .await?
        .into_inner();

    // 3. Per engine.
    let mut ctx = Ctx { clients: &mut clients, agent_id, storage_id: storage.id, dir: run_dir.clone(), rss: &rss };
    if !args.only_parallel {
        for r in &mut reports {
            println!("\n[{}] benchmarking {}", r.label(), r.source.name);
            if let Err(e) = bench_engine(r, &mut ctx, created, args.runs, !args.no_level_comparison).await {
                eprintln!("[{}] error: {e:#}", r.label());
                r.error = Some(format!("{e:#}"));
            }
        }
    }
    // The parallel comparison, on the PostgreSQL sources of the tables and big data sets.
    let mut parallel = Vec::new();
    let mut parallel_ok = true;
    if !args.no_parallel_comparison {
        for r in reports.iter().filter(|r| {
            r.kind == crate::engine::Kind::Postgres
                && matches!(r.source.dataset, crate::dataset::Dataset::Tables | crate::dataset::Dataset::Big)
        }) {
            println!("\n[{}] parallel comparison on {}", r.label(), r.source.name);
            let (label, name, rows) = (r.label(), r.source.name.clone(), r.source.rows);
            match crate::streams::compare(&label, &name, rows, &args.parallel, args.runs, &mut ctx, created).await {
                Ok(p) => parallel.push(p),
                Err(e) => {
                    eprintln!("[{label}] parallel comparison error: {e:#}");
                    parallel_ok = false;
                }
            }
        }
    }

    // Agent peak memory just before stopping it.
    let hwm = proc_status_bytes(pid, "VmHWM");
    let mem = Memory { idle: idle_rss, sampled: rss.overall(), hwm };
    drop(rss);
    let exit = created.stop_agent().await;
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let ok = if args.only_parallel {
        println!(
            "\nagent memory: idle {}, peak VmHWM {}; load average at start {}, at end {}",
            mib(mem.idle),
            mem.hwm.map(mib).unwrap_or_else(|| "?".into()),
            load_start.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            load_end.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        true
    } else {
        print_report(args, &reports, &mem, (&load_start, &load_end), &log_path, exit)
    };
    crate::streams::print(&parallel);
    Ok(ok && parallel_ok)
}

async fn bench_engine(
    r: &mut EngineReport,
    ctx: &mut Ctx<'_>,
    created: &mut Created,
    runs: u32,
    levels: bool,
) -> anyhow::Result<()> {
    let kind = r.kind;
    let k = kind.short();
    let label = r.label();
    let db = r.source.name.clone();
    let sfx = suffix();
    let dump_path = ctx.dir.join(format!("{k}.dump"));
    let t = ctx.clients.token.clone();

    // The DataGuardian side, configured once (untimed).
    let ds = ctx.datasource(kind, &db, format!("bench-{k}-{sfx}")).await?;
    let test =
        ctx.clients.datasources.test_datasource(authed(pb::TestDatasourceRequest { id: ds.id.clone() }, &t)).await?;
    let test = test.into_inner();
    if test.ok {
        println!("[{label}] datasource test through the agent: ok ({})", test.server_version);
    } else {
        println!("[{label}] datasource test through the agent FAILED: {} (trying a backup anyway)", test.error);
        r.notes.push(format!("TestDatasource failed: {}", test.error));
    }
    let job = ctx
        .clients
        .jobs
        .create_backup_job(authed(
            pb::CreateBackupJobRequest {
                name: format!("bench-{k}-{sfx}"),
                datasource_id: ds.id.clone(),
                storage_ids: vec![ctx.storage_id.clone()],
                storage_strategy: pb::StorageStrategy::Fallback as i32,
                compression_level: ZSTD_LEVEL,
                ..Default::default()
            },
            &t,
        ))
        .await?
        .into_inner();
    // (c1) and (c2): the same backup at fixed level 1 and with an adaptive level.
    let variant_job =
        |suffix: &str, level: i32, adaptive: Option<pb::AdaptiveCompression>| pb::CreateBackupJobRequest {
            name: format!("bench-{k}-{sfx}-{suffix}"),
            datasource_id: ds.id.clone(),
            storage_ids: vec![ctx.storage_id.clone()],
            storage_strategy: pb::StorageStrategy::Fallback as i32,
            compression_level: level,
            adaptive_compression: adaptive,
            ..Default::default()
        };
    let job_l1 = ctx.clients.jobs.create_backup_job(authed(variant_job("l1", 1, None), &t)).await?.into_inner();
    let bounds = pb::AdaptiveCompression { min_level: ADAPTIVE_MIN, max_level: ADAPTIVE_MAX };
    let job_ad = ctx
        .clients
        .jobs
        .create_backup_job(authed(variant_job("adaptive", ZSTD_LEVEL, Some(bounds)), &t))
        .await?
        .into_inner();
    let drill = pb::CreateRestoreDrillRequest {
        name: format!("bench-{k}-{sfx}"),
        datasource_id: ds.id.clone(),
        target_datasource_id: ds.id.clone(),
        max_backup_age: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
        scratch_database_prefix: format!("{db}_drill_"),
        ..Default::default()
    };
    let drill = ctx.clients.drills.create_restore_drill(authed(drill, &t)).await?.into_inner();

    for round in 1..=runs {
        let tag = if runs > 1 { format!("[{label} {round}/{runs}]") } else { format!("[{label}]") };

        // Reference: the dump into a file (also the plain restore's input).
        let mut c = kind.dump_cmd(&db);
        c.stdout(std::fs::File::create(&dump_path)?);
        settle(kind).await;
        ctx.rss.begin();
        let secs = timed(c, &format!("{} > file", kind.dump_tool())).await?;
        let dump_bytes = std::fs::metadata(&dump_path)?.len();
        r.dump_file.push(secs, Some(dump_bytes), ctx.rss.end());
        println!("{tag} {} > file: {secs:.2} s, {}", kind.dump_display(), mib(dump_bytes));

        // (a) the dump alone.
        let mut c = kind.dump_cmd(&db);
        c.stdout(Stdio::null());
        settle(kind).await;
        ctx.rss.begin();
        let secs = timed(c, &format!("{} > /dev/null", kind.dump_tool())).await?;
        r.dump_alone.push(secs, None, ctx.rss.end());
        println!("{tag} (a) {} > /dev/null: {secs:.2} s", kind.dump_display());

        // (b) the shell pipeline.
        pipeline(r, ctx, &tag).await?;

        // (c) DataGuardian backup.
        let backup_id =
            if r.dg_backup.problem.is_none() { dg_backup(r, ctx, &job.id, &tag, dump_bytes).await? } else { None };

        if levels {
            dg_backup_variant(r, ctx, &job_l1.id, &tag, Variant::Level1).await?;
            dg_backup_variant(r, ctx, &job_ad.id, &tag, Variant::Adaptive).await?;
        }

        // (d) the plain restore into a fresh database, timed from the same start line as (e): the database is
        // created inside the timing, as a DataGuardian restore creates its own.
        let plain_db = format!("{db}_plain_{sfx}_{round}");
        created.track_db(kind, &plain_db);
        settle(kind).await;
        ctx.rss.begin();
        let started = std::time::Instant::now();
        kind.create_db(&plain_db).await?;
        let create = started.elapsed().as_secs_f64();
        let c = kind.restore_cmd(&plain_db, &dump_path)?;
        let secs = create + timed(c, kind.restore_tool()).await?;
        r.plain_restore.push(secs, None, ctx.rss.end());
        let n = kind.rows(&plain_db).await?;
        let tool = kind.restore_tool();
        println!("{tag} (d) CREATE DATABASE + {tool} into it: {secs:.2} s (create {create:.2} s; {n} rows restored)");
        anyhow::ensure!(n == r.source.rows, "plain restore has {n} rows, the source {}", r.source.rows);
        created.drop_db_now(kind, &plain_db).await;

        // (e) DataGuardian restore into a fresh database, (f) a verify of the same backup.
        if let Some(backup_id) = backup_id {
            dg_restore(r, ctx, created, backup_id.clone(), &format!("{db}_dg_{sfx}_{round}"), &tag).await?;
            dg_verify(r, ctx, &backup_id, &tag).await?;
            // (g) a restore drill of the newest good backup: this one.
            dg_drill(r, ctx, &drill.id, &tag).await?;
        }
    }
    let _ = std::fs::remove_file(&dump_path);
    if r.dg_restore.wall.secs.is_empty() && r.dg_restore.problem.is_none() {
        r.dg_restore.problem = Some(Problem::Failed("no backup to restore".into()));
    }
    Ok(())
}
