//! Round trips and field-naming refusals of the wire conversions (`super` is `protocol::wire`).
use super::*;

fn db() -> DatabaseTarget {
    DatabaseTarget {
        engine: Engine::Postgres,
        host: "db.example".into(),
        port: 5432,
        database: "app".into(),
        username: "backup".into(),
        password: "s3cret".into(),
        tls_mode: TlsMode::Require,
    }
}

fn exec() -> ExecutionRef {
    ExecutionRef { id: ExecutionId::new(), attempt: Attempt(2) }
}

fn storage() -> StorageTarget {
    StorageTarget { id: StorageId::new(), config: StoreConfig::Local { path: "/var/backups/x".into() } }
}

fn backup(execution: ExecutionRef) -> Assignment {
    Assignment {
        execution,
        trace_context: Default::default(),
        plan: Plan::Backup(BackupPlan {
            source: db(),
            storages: vec![storage()],
            strategy: Strategy::Replicate,
            layout: ObjectLayout { datasource: DatasourceId::new(), execution },
            compression_level: 5,
            chunk_size: 4 << 20,
            upload_concurrency: 2,
            compression_workers: 2,
            adaptive_compression: Some(super::LevelBounds { min: -1, max: 9 }),
            encryption_key_id: Some("prod.2026".into()),
            include_globals: true,
            parallel: 4,
        }),
    }
}

fn sha(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

#[test]
fn a_backup_assignment_round_trips_and_keeps_its_layout() {
    let a = backup(exec());
    let back = Assignment::try_from(pb::Assign::from(a.clone())).expect("valid");
    assert_eq!(back.execution, a.execution);
    let (Plan::Backup(p), Plan::Backup(q)) = (&a.plan, &back.plan) else { panic!("a backup") };
    assert_eq!(p.layout, q.layout);
    assert_eq!(q.layout.chunk_key(7), format!("{}/00000007.zst", p.layout.prefix()));
    assert_eq!((q.compression_level, q.chunk_size, q.upload_concurrency), (5, 4 << 20, 2));
    assert_eq!(q.source, p.source);
    assert_eq!(q.storages[0].id, p.storages[0].id);
    assert_eq!(q.encryption_key_id.as_deref(), Some("prod.2026"));
    assert_eq!(q.adaptive_compression, p.adaptive_compression);
    assert_eq!(q.parallel, 4);
    assert!(!format!("{q:?}").contains("s3cret"), "Debug hides the password");
}

#[test]
fn adaptive_bounds_that_do_not_hold_are_refused() {
    for (min, max) in [(5, 3), (-8, 3), (1, 20), (1, 0)] {
        let mut w = pb::Assign::from(backup(exec()));
        let Some(pb::assign::Task::Backup(t)) = w.task.as_mut() else { panic!("a backup") };
        t.adaptive_compression = Some(pb::LevelBounds { min_level: min, max_level: max });
        let e = Assignment::try_from(w).expect_err("reversed or out-of-range bounds");
        assert_eq!(e.field, "backup.adaptive_compression", "{min}..{max}");
    }
    let mut w = pb::Assign::from(backup(exec()));
    let Some(pb::assign::Task::Backup(t)) = w.task.as_mut() else { panic!("a backup") };
    t.adaptive_compression = None;
    let Plan::Backup(p) = Assignment::try_from(w).expect("valid").plan else { panic!("a backup") };
    assert_eq!(p.adaptive_compression, None, "absent: a fixed level");
}

#[test]
fn parallel_zero_is_one_stream_and_beyond_the_range_is_refused() {
    let parallel_of = |n: u32| {
        let mut w = pb::Assign::from(backup(exec()));
        let Some(pb::assign::Task::Backup(t)) = w.task.as_mut() else { panic!("a backup") };
        t.parallel = n;
        Assignment::try_from(w).map(|a| match a.plan {
            Plan::Backup(p) => p.parallel,
            _ => panic!("a backup"),
        })
    };
    assert_eq!(parallel_of(0).expect("an older controller"), 1, "0: one stream");
    assert_eq!(parallel_of(1).expect("one"), 1);
    assert_eq!(parallel_of(16).expect("the most"), 16);
    for n in [17, 1000, u32::MAX] {
        let e = parallel_of(n).expect_err("beyond the range");
        assert_eq!(e.field, "backup.parallel", "{n}");
        assert!(e.to_string().contains("1 to 16"), "{e}");
    }
}

#[test]
fn backup_settings_are_clamped_and_the_prefix_must_match_the_ids() {
    let a = backup(exec());
    let mut w = pb::Assign::from(a);
    let Some(pb::assign::Task::Backup(t)) = w.task.as_mut() else { panic!("a backup") };
    t.chunk_size = 1;
    t.compression_level = 99;
    t.upload_concurrency = 0;
    t.compression_workers = 1000;
    let Plan::Backup(p) = Assignment::try_from(w.clone()).expect("valid").plan else { panic!("a backup") };
    assert_eq!((p.chunk_size, p.compression_level, p.upload_concurrency, p.compression_workers), (1 << 20, 3, 1, 16));

    let Some(pb::assign::Task::Backup(t)) = w.task.as_mut() else { panic!("a backup") };
    t.key_prefix = format!("{}/../../etc", t.datasource_id);
    let e = Assignment::try_from(w).expect_err("a prefix that is not the ids' is refused");
    assert_eq!(e.field, "backup.key_prefix");
}

#[test]
fn bad_fields_are_named() {
    type Edit = Box<dyn Fn(&mut pb::Assign)>;
    let mut cases: Vec<(&str, Edit)> = vec![
        ("attempt", Box::new(|a| a.attempt = 0)),
        ("execution_id", Box::new(|a| a.execution_id = "nope".into())),
        ("task", Box::new(|a| a.task = None)),
    ];
    let backup_case = |f: fn(&mut pb::BackupTask)| -> Edit {
        Box::new(move |a| {
            if let Some(pb::assign::Task::Backup(t)) = a.task.as_mut() {
                f(t)
            }
        })
    };
    cases.push(("backup.source.port", backup_case(|t| t.source.as_mut().map_or((), |s| s.port = 70000))));
    cases.push(("backup.source.engine", backup_case(|t| t.source.as_mut().map_or((), |s| s.engine = 0))));
    cases.push(("backup.source.username", backup_case(|t| t.source.as_mut().map_or((), |s| s.username = "-U".into()))));
    cases.push(("backup.source", backup_case(|t| t.source = None)));
    cases.push(("backup.storages", backup_case(|t| t.storages.clear())));
    cases.push(("backup.storages[0].storage_id", backup_case(|t| t.storages[0].storage_id = "x".into())));
    cases.push(("backup.encryption_key_id", backup_case(|t| t.encryption_key_id = "../k".into())));
    cases.push(("backup.datasource_id", backup_case(|t| t.datasource_id = String::new())));
    for (field, f) in cases {
        let mut w = pb::Assign::from(backup(exec()));
        f(&mut w);
        let e = Assignment::try_from(w).expect_err(field);
        assert_eq!(e.field, field, "{e}");
    }
}

fn restore_task() -> pb::RestoreTask {
    pb::RestoreTask::from(RestorePlan {
        target: db(),
        target_plan: TargetDatabasePlan::CreateIfMissing { drop_existing: true },
        storages: vec![storage()],
        chunks: (0..3)
            .map(|seq| ChunkRef { seq, key: format!("a/b/1/{seq:08}.zst"), size: 10, sha256: sha('a') })
            .collect(),
        sha256: sha('b'),
        source_engine: Engine::Postgres,
        manifest_key: "a/b/1/manifest.json".into(),
        parallel_jobs: Some(4),
        restore_globals: false,
        recorded: Some(RecordedBackup {
            globals: Some(StoredObject { key: "a/b/1/globals.sql.zst".into(), size: 7, sha256: sha('c') }),
            encryption: Some(RecordedEncryption { key_id: "prod-1".into(), wrapped_key_sha256: sha('d') }),
            layout_sha256: Some(sha('9')),
        }),
        raw_bytes: Some(1234),
        checks: None,
    })
}

fn restore_assign(t: pb::RestoreTask) -> pb::Assign {
    pb::Assign {
        execution_id: ExecutionId::new().to_string(),
        attempt: 1,
        trace_context: Default::default(),
        task: Some(pb::assign::Task::Restore(t)),
    }
}

#[test]
fn restore_plans_round_trip_and_chunks_must_be_in_order_with_safe_keys() {
    let a = Assignment::try_from(restore_assign(restore_task())).expect("valid");
    let Plan::Restore(p) = a.plan else { panic!("a restore") };
    assert_eq!(p.target_plan, TargetDatabasePlan::CreateIfMissing { drop_existing: true });
    assert_eq!(p.chunks.len(), 3);
    assert_eq!(p.parallel_jobs, Some(4));
    let mut unset = restore_task();
    unset.parallel_jobs = 0;
    let Plan::Restore(as_taken) = Assignment::try_from(restore_assign(unset)).expect("valid").plan else {
        panic!("a restore")
    };
    assert_eq!(as_taken.parallel_jobs, None, "0 on the wire: as the backup was taken");
    let recorded = p.recorded.expect("recorded");
    assert_eq!(recorded.globals.expect("globals").size, 7);
    assert_eq!(recorded.encryption.expect("encryption").key_id, "prod-1");
    assert_eq!(recorded.layout_sha256, Some(sha('9')));
    assert_eq!(p.raw_bytes, Some(1234));

    // What the controller recorded travels whole, or not at all (a backup recorded before protocol 4).
    let mut t = restore_task();
    t.recorded = None;
    let Plan::Restore(p) = Assignment::try_from(restore_assign(t)).expect("legacy").plan else { panic!("a restore") };
    assert_eq!(p.recorded, None);
    let mut t = restore_task();
    t.recorded.as_mut().expect("recorded").wrapped_key_sha256 = String::new();
    let e = Assignment::try_from(restore_assign(t)).expect_err("binding");
    assert_eq!(e.field, "restore.recorded.wrapped_key_sha256");
    let mut t = restore_task();
    t.recorded.as_mut().expect("recorded").encryption_key_id = String::new();
    let e = Assignment::try_from(restore_assign(t)).expect_err("binding without key");
    assert_eq!(e.field, "restore.recorded.wrapped_key_sha256");
    // A layout binding is a sha256 or nothing (a single stream).
    for bad in ["ABCD", "zz", &sha('A'), &"a".repeat(63)] {
        let mut t = restore_task();
        t.recorded.as_mut().expect("recorded").layout_sha256 = bad.into();
        let e = Assignment::try_from(restore_assign(t)).expect_err("layout binding");
        assert_eq!(e.field, "restore.recorded.layout_sha256", "{bad:?}");
    }
    let mut t = restore_task();
    t.recorded.as_mut().expect("recorded").layout_sha256 = String::new();
    let Plan::Restore(p) = Assignment::try_from(restore_assign(t)).expect("single").plan else { panic!("a restore") };
    assert_eq!(p.recorded.expect("recorded").layout_sha256, None, "empty: a single stream");
    let mut t = restore_task();
    t.recorded.as_mut().and_then(|r| r.globals.as_mut()).expect("globals").key = "/etc/passwd".into();
    let e = Assignment::try_from(restore_assign(t)).expect_err("globals key");
    assert_eq!(e.field, "restore.recorded.globals.key");

    let mut t = restore_task();
    t.chunks.swap(0, 1);
    assert_eq!(Assignment::try_from(restore_assign(t)).expect_err("order").field, "restore.chunks[0].seq");
    let mut t = restore_task();
    t.chunks[2].key = "../../etc/passwd".into();
    assert_eq!(Assignment::try_from(restore_assign(t)).expect_err("key").field, "restore.chunks[2].key");
    let mut t = restore_task();
    t.chunks[1].sha256 = "ABC".into();
    assert_eq!(Assignment::try_from(restore_assign(t)).expect_err("sha").field, "restore.chunks[1].sha256");
    let mut t = restore_task();
    t.drop_after = true;
    assert_eq!(Assignment::try_from(restore_assign(t)).expect_err("scratch").field, "restore.drop_after");
}

#[test]
fn the_target_database_plan_covers_every_request() {
    for create in [false, true] {
        for drop in [false, true] {
            let scratch = TargetDatabasePlan::decide(create, drop, true);
            assert_eq!(scratch, TargetDatabasePlan::Scratch);
            assert!(scratch.creates() && !scratch.drops_existing() && scratch.is_scratch());
            let p = TargetDatabasePlan::decide(create, drop, false);
            assert_eq!((p.creates(), p.drops_existing(), p.is_scratch()), (create, drop, false));
            // What is sent is what is received.
            let mut t = restore_task();
            t.create_database = p.creates();
            t.drop_existing = p.drops_existing();
            let Plan::Restore(back) = Assignment::try_from(restore_assign(t)).expect("valid").plan else {
                panic!("a restore")
            };
            assert_eq!(back.target_plan, p);
        }
    }
}

#[test]
fn reports_round_trip_and_are_validated() {
    let e = exec();
    let reports = vec![
        AgentReport::ChunkStored(ChunkStored {
            execution: e,
            storage: StorageId::new(),
            seq: 3,
            key: "a/b/2/00000003.zst".into(),
            size: 99,
            sha256: sha('c'),
            raw_bytes: 1000,
        }),
        AgentReport::Progress(Progress { execution: e, raw_bytes: 1, stored_bytes: 2, chunks: 3 }),
        AgentReport::Log(LogReport { execution: e, level: LogLevel::Warn, message: "careful".into() }),
        AgentReport::BackupCompleted {
            execution: e,
            result: BackupResult {
                raw_bytes: 10,
                stored_bytes: 5,
                chunk_count: 1,
                sha256: sha('d'),
                manifest_key: "a/b/2/manifest.json".into(),
                storages: vec![StorageId::new()],
                tool_version: "pg_dump 15".into(),
                server_version: "15.2".into(),
                warnings: vec!["w".into()],
                encryption_key_id: Some("k1".into()),
                wrapped_key_sha256: Some(sha('e')),
                globals: Some(StoredObject { key: "a/b/2/globals.sql.zst".into(), size: 3, sha256: sha('f') }),
                table_counts: Some(vec![crate::protocol::drill::TableCount {
                    schema: "public".into(),
                    table: "t".into(),
                    rows: 3,
                    exact: true,
                }]),
                layout_sha256: Some(sha('0')),
            },
        },
        AgentReport::RestoreCompleted {
            execution: e,
            result: RestoreResult {
                raw_bytes: 7,
                tool_version: "x".into(),
                observed: Some(crate::protocol::drill::DrillObservation {
                    queryable_after_ms: 5,
                    ..Default::default()
                }),
            },
        },
        AgentReport::Failed { execution: e, error: "boom".into(), cancelled: true },
    ];
    for r in reports {
        let back = report_of(r.clone().into()).expect("a report").expect("valid");
        assert_eq!(back, r);
        assert_eq!(back.execution(), e);
    }

    let bad = pb::agent_message::Kind::ChunkReported(pb::ChunkReported {
        execution: Some(e.into()),
        storage_id: StorageId::new().to_string(),
        key: "/abs".into(),
        sha256: sha('a'),
        ..Default::default()
    });
    assert_eq!(report_of(bad).expect("a report").expect_err("abs key").field, "chunk_reported.key");
    let no_result = pb::agent_message::Kind::Completed(pb::Completed { execution: Some(e.into()), result: None });
    assert_eq!(report_of(no_result).expect("a report").expect_err("result").field, "completed.result");
    let no_exec = pb::agent_message::Kind::Failed(pb::Failed::default());
    assert_eq!(report_of(no_exec).expect("a report").expect_err("execution").field, "failed.execution");
    assert!(report_of(pb::agent_message::Kind::Heartbeat(pb::Heartbeat::default())).is_none());

    // An encrypted result without the wrapped key's binding (or the reverse) is refused.
    let completed = |key_id: &str, wrapped: &str| {
        pb::agent_message::Kind::Completed(pb::Completed {
            execution: Some(e.into()),
            result: Some(pb::completed::Result::Backup(pb::BackupResult {
                sha256: sha('d'),
                manifest_key: "a/b/2/manifest.json".into(),
                storage_ids: vec![StorageId::new().to_string()],
                encryption_key_id: key_id.into(),
                wrapped_key_sha256: wrapped.into(),
                ..Default::default()
            })),
        })
    };
    for (key_id, wrapped) in [("k1", ""), ("", "ab"), ("k1", "xyz")] {
        let err = report_of(completed(key_id, wrapped)).expect("a report").expect_err("binding");
        assert_eq!(err.field, "completed.backup.wrapped_key_sha256", "{key_id:?} {wrapped:?}");
    }
    assert!(report_of(completed("", "")).expect("a report").is_ok());

    // A layout binding that is not a sha256 is refused naming the field; empty is a single stream.
    let with_layout = |layout: &str| {
        pb::agent_message::Kind::Completed(pb::Completed {
            execution: Some(e.into()),
            result: Some(pb::completed::Result::Backup(pb::BackupResult {
                sha256: sha('d'),
                manifest_key: "a/b/2/manifest.json".into(),
                storage_ids: vec![StorageId::new().to_string()],
                layout_sha256: layout.into(),
                ..Default::default()
            })),
        })
    };
    for bad in ["xyz", &sha('F'), &"0".repeat(65)] {
        let err = report_of(with_layout(bad)).expect("a report").expect_err("layout binding");
        assert_eq!(err.field, "completed.backup.layout_sha256", "{bad:?}");
    }
    let layout_of = |layout: &str| match report_of(with_layout(layout)).expect("a report").expect("valid") {
        AgentReport::BackupCompleted { result, .. } => result.layout_sha256,
        other => panic!("a backup result, not {other:?}"),
    };
    assert_eq!(layout_of(""), None);
    assert_eq!(layout_of(&sha('7')), Some(sha('7')));
}

fn verify_task() -> pb::VerifyTask {
    let chunks: Vec<ChunkRef> =
        (0..2).map(|seq| ChunkRef { seq, key: format!("a/b/1/{seq:08}.zst"), size: 10, sha256: sha('a') }).collect();
    pb::VerifyTask::from(VerifyPlan {
        copies: vec![
            VerifyCopy { storage: storage(), chunks: chunks.clone() },
            VerifyCopy { storage: storage(), chunks },
        ],
        sha256: sha('b'),
        manifest_key: "a/b/1/manifest.json".into(),
        recorded: Some(RecordedBackup { globals: None, encryption: None, layout_sha256: Some(sha('c')) }),
        read_rate_bytes_per_second: 1 << 20,
    })
}

fn verify_assign(t: pb::VerifyTask) -> pb::Assign {
    pb::Assign {
        execution_id: ExecutionId::new().to_string(),
        attempt: 1,
        trace_context: Default::default(),
        task: Some(pb::assign::Task::Verify(t)),
    }
}

#[test]
fn verify_tasks_and_results_round_trip_and_bad_fields_are_named() {
    let a = Assignment::try_from(verify_assign(verify_task())).expect("valid");
    let Plan::Verify(p) = a.plan else { panic!("a verify") };
    assert_eq!(p.copies.len(), 2);
    assert_eq!(p.copies[1].chunks[1].key, "a/b/1/00000001.zst");
    assert_eq!(p.manifest_key, "a/b/1/manifest.json");

    type Tweak = Box<dyn Fn(&mut pb::VerifyTask)>;
    let cases: Vec<(&str, Tweak)> = vec![
        ("verify.copies", Box::new(|t| t.copies.clear())),
        ("verify.copies[1].chunks[0].seq", Box::new(|t| t.copies[1].chunks[0].seq = 1)),
        ("verify.copies[0].chunks[1].key", Box::new(|t| t.copies[0].chunks[1].key = "../x".into())),
        ("verify.copies[0].chunks", Box::new(|t| t.copies[0].chunks.clear())),
        ("verify.copies[0].storage", Box::new(|t| t.copies[0].storage = None)),
        ("verify.copies[1].storage", Box::new(|t| t.copies[1].storage = t.copies[0].storage.clone())),
        ("verify.sha256", Box::new(|t| t.sha256 = "x".into())),
        ("verify.manifest_key", Box::new(|t| t.manifest_key = "/m".into())),
    ];
    for (field, f) in cases {
        let mut t = verify_task();
        f(&mut t);
        assert_eq!(Assignment::try_from(verify_assign(t)).expect_err(field).field, field);
    }

    let e = exec();
    let (s1, s2) = (StorageId::new(), StorageId::new());
    let mut damaged = CopyFindings::clean(s1);
    damaged.damaged_chunks = vec![
        ChunkDamage { seq: 0, fault: ChunkFault::Sha256, detail: String::new() },
        ChunkDamage { seq: 1, fault: ChunkFault::Missing, detail: "gone".into() },
    ];
    damaged.manifest_problem = Some("disagrees".into());
    let r = AgentReport::VerifyCompleted {
        execution: e,
        result: VerifyResult { copies: vec![damaged, CopyFindings::clean(s2)] },
    };
    assert_eq!(report_of(r.clone().into()).expect("a report").expect("valid"), r);

    let bad_fault = pb::agent_message::Kind::Completed(pb::Completed {
        execution: Some(e.into()),
        result: Some(pb::completed::Result::Verify(pb::VerifyResult {
            copies: vec![pb::CopyFindings {
                storage_id: s1.to_string(),
                damaged_chunks: vec![pb::ChunkDamage { seq: 0, fault: 0, detail: String::new() }],
                ..Default::default()
            }],
        })),
    });
    let err = report_of(bad_fault).expect("a report").expect_err("fault");
    assert_eq!(err.field, "completed.verify.copies[0].damaged_chunks[0].fault");
    let no_copies = pb::agent_message::Kind::Completed(pb::Completed {
        execution: Some(e.into()),
        result: Some(pb::completed::Result::Verify(pb::VerifyResult { copies: vec![] })),
    });
    assert_eq!(report_of(no_copies).expect("a report").expect_err("copies").field, "completed.verify.copies");
}

#[test]
fn a_copy_verdict_follows_from_its_findings() {
    use super::super::CopyStatus;
    let s = StorageId::new();
    let missing = |seq| ChunkDamage { seq, fault: ChunkFault::Missing, detail: String::new() };
    assert_eq!(CopyFindings::clean(s).status(3), Some(CopyStatus::Intact));
    let mut f = CopyFindings::clean(s);
    f.manifest_missing = true;
    f.damaged_chunks = (0..3).map(missing).collect();
    assert_eq!(f.status(3), Some(CopyStatus::Missing), "manifest and every chunk gone");
    assert_eq!(f.status(4), Some(CopyStatus::Damaged), "one chunk still there");
    f.damaged_chunks[2].fault = ChunkFault::Size;
    assert_eq!(f.status(3), Some(CopyStatus::Damaged));
    let mut f = CopyFindings::clean(s);
    f.damaged_chunks = (0..3).map(missing).collect();
    assert_eq!(f.status(3), Some(CopyStatus::Damaged), "the manifest is still there");
    for tweak in [
        (|f: &mut CopyFindings| f.manifest_missing = true) as fn(&mut CopyFindings),
        |f| f.manifest_problem = Some("x".into()),
        |f| f.stream_mismatch = true,
        |f| f.globals_problem = Some("x".into()),
        |f| f.damaged_chunks.push(ChunkDamage { seq: 1, fault: ChunkFault::Sha256, detail: String::new() }),
    ] {
        let mut f = CopyFindings::clean(s);
        tweak(&mut f);
        assert_eq!(f.status(3), Some(CopyStatus::Damaged), "{f:?}");
        assert!(f.damaged_chunks.len() == 1 || !f.problems().is_empty(), "{f:?}");
    }
    let mut f = CopyFindings::clean(s);
    f.unreadable = Some("storage down".into());
    f.manifest_missing = true;
    assert_eq!(f.status(3), None, "no verdict on a copy that could not be read");
}
