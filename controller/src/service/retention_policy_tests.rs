//! Tests of the retention decision: hand-written histories with exact outcomes (including DST changes),
//! and properties over generated histories in several time zones.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{Datelike, Duration, TimeZone, Timelike};
use proptest::prelude::*;

use super::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("valid time")
}

fn backup(n: u128, completed_at: DateTime<Utc>) -> RetentionCandidate {
    RetentionCandidate { id: Uuid::from_u128(n), completed_at, good: true, pin: None, in_use: false }
}

fn gfs() -> RetentionPolicy {
    RetentionPolicy { mode: RetentionMode::Gfs, keep_daily: 0, ..RetentionPolicy::default() }
}

fn count(max_backups: u32) -> RetentionPolicy {
    RetentionPolicy { max_backups, keep_daily: 0, ..RetentionPolicy::default() }
}

/// `(backup number, reasons)` newest first, with `+` for kept and `-` for deleted.
fn outcome(d: &[Decision]) -> Vec<(u128, char, Vec<String>)> {
    d.iter().map(|d| (d.backup.id.as_u128(), if d.verdict.keeps() { '+' } else { '-' }, d.verdict.reasons())).collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn count_mode_keeps_the_newest_and_the_pinned() {
    let now = at(2026, 11, 30, 12, 0);
    let mut b: Vec<_> = (1..=5).map(|n| backup(n, now - Duration::hours(i64::try_from(n).expect("small")))).collect();
    b[3].pin = Some("before upgrade".into());
    let d = decide(&b, &count(2), Tz::UTC, now);
    assert_eq!(
        outcome(&d),
        vec![
            (1, '+', s(&["newest good backup", "newest 2: #1"])),
            (2, '+', s(&["newest 2: #2"])),
            (3, '-', s(&["beyond the newest 2"])),
            (4, '+', s(&["pinned: before upgrade"])),
            (5, '-', s(&["beyond the newest 2"])),
        ]
    );
    // The original rule: max_backups 0 keeps the sum of the three counts, as a plain count.
    let sum = RetentionPolicy { keep_daily: 1, keep_weekly: 1, keep_monthly: 1, ..count(0) };
    assert_eq!(decide(&b, &sum, Tz::UTC, now).iter().filter(|d| d.verdict.keeps()).count(), 4);
    // Every count 0: everything stays.
    assert!(decide(&b, &count(0), Tz::UTC, now).iter().all(|d| d.verdict.keeps()));
}

#[test]
fn gfs_days_and_weeks_follow_the_local_calendar_across_the_autumn_change() {
    // Berlin leaves summer time on Sunday 2026-10-25 at 01:00 UTC. 22:30 UTC on the 24th is already the 25th
    // there (00:30 CEST); in UTC it would still be the 24th.
    let berlin: Tz = "Europe/Berlin".parse().expect("zone");
    let b = vec![
        backup(1, at(2026, 10, 24, 10, 0)),
        backup(2, at(2026, 10, 24, 21, 30)),
        backup(3, at(2026, 10, 24, 22, 30)),
        backup(4, at(2026, 10, 25, 12, 0)),
    ];
    let p = RetentionPolicy { keep_daily: 2, keep_weekly: 1, ..gfs() };
    let now = at(2026, 10, 25, 13, 0);
    assert_eq!(
        outcome(&decide(&b, &p, berlin, now)),
        vec![
            (4, '+', s(&["newest good backup", "daily 2026-10-25", "weekly 2026-W43"])),
            (3, '-', s(&["not the newest of any kept period"])),
            (2, '+', s(&["daily 2026-10-24"])),
            (1, '-', s(&["not the newest of any kept period"])),
        ]
    );
    let utc: Vec<_> =
        decide(&b, &p, Tz::UTC, now).iter().filter(|d| d.verdict.keeps()).map(|d| d.backup.id.as_u128()).collect();
    assert_eq!(utc, vec![4, 3], "in UTC backup 3 is the newest of the 24th");
}

#[test]
fn gfs_the_repeated_hour_is_one_local_hour() {
    // 00:30 and 01:30 UTC on 2026-10-25 are both 02:30 in Berlin (CEST, then CET).
    let berlin: Tz = "Europe/Berlin".parse().expect("zone");
    let b = vec![
        backup(1, at(2026, 10, 25, 0, 30)),
        backup(2, at(2026, 10, 25, 1, 30)),
        backup(3, at(2026, 10, 25, 2, 10)),
    ];
    let p = RetentionPolicy { keep_hourly: 2, ..gfs() };
    assert_eq!(
        outcome(&decide(&b, &p, berlin, at(2026, 10, 25, 3, 0))),
        vec![
            (3, '+', s(&["newest good backup", "hourly 2026-10-25T03"])),
            (2, '+', s(&["hourly 2026-10-25T02"])),
            (1, '-', s(&["not the newest of any kept period"])),
        ]
    );
    // New York springs forward on 2026-03-08: 01:59 EST is followed by 03:00 EDT, and the two are
    // consecutive hour periods (the skipped hour has no backups, so it takes no slot).
    let ny: Tz = "America/New_York".parse().expect("zone");
    let b = vec![backup(1, at(2026, 3, 8, 6, 50)), backup(2, at(2026, 3, 8, 7, 10)), backup(3, at(2026, 3, 8, 7, 20))];
    let d = decide(
        &b,
        &RetentionPolicy { keep_hourly: 2, keep_monthly: 1, keep_yearly: 1, ..gfs() },
        ny,
        at(2026, 3, 8, 8, 0),
    );
    assert_eq!(
        outcome(&d),
        vec![
            (3, '+', s(&["newest good backup", "hourly 2026-03-08T03", "monthly 2026-03", "yearly 2026"])),
            (2, '-', s(&["not the newest of any kept period"])),
            (1, '+', s(&["hourly 2026-03-08T01"])),
        ]
    );
}

#[test]
fn max_age_min_count_and_protections() {
    let now = at(2026, 11, 30, 12, 0);
    let mut b: Vec<_> = (1..=5).map(|n| backup(n, now - Duration::days(i64::try_from(n).expect("small")))).collect();
    b[3].pin = Some("audit".into());
    b[4].in_use = true;
    let p = RetentionPolicy { min_backups: 2, max_age_secs: 36 * 3600, ..count(10) };
    assert_eq!(
        outcome(&decide(&b, &p, Tz::UTC, now)),
        vec![
            (1, '+', s(&["newest good backup", "min count", "newest 10: #1"])),
            (2, '+', s(&["min count"])),
            (3, '-', s(&["older than max_age (129600 s)"])),
            (4, '+', s(&["pinned: audit"])),
            (5, '+', s(&["in use by a restore or verification"])),
        ]
    );
    // A damaged newest backup does not count as the newest good one, and nothing keeps it.
    let mut b: Vec<_> = (1..=3).map(|n| backup(n, now - Duration::hours(i64::try_from(n).expect("small")))).collect();
    b[0].good = false;
    assert_eq!(
        outcome(&decide(&b, &count(1), Tz::UTC, now)),
        vec![
            (1, '-', s(&["damaged"])),
            (2, '+', s(&["newest good backup", "newest 1: #1"])),
            (3, '-', s(&["beyond the newest 1"])),
        ]
    );
    // Every backup older than max_age, nothing else set: only the newest good one stays.
    let p = RetentionPolicy { max_age_secs: 60, ..count(0) };
    let kept: Vec<_> =
        decide(&b, &p, Tz::UTC, now).iter().filter(|d| d.verdict.keeps()).map(|d| d.backup.id.as_u128()).collect();
    assert_eq!(kept, vec![2]);
}

// ---- properties ------------------------------------------------------------------------------------------

/// A period key computed from calendar fields (an oracle independent of [`Tier::period`]'s formatting).
fn oracle(tier: Tier, t: DateTime<Utc>, tz: Tz) -> (i32, u32, u32) {
    let l = t.with_timezone(&tz);
    match tier {
        Tier::Hourly => (l.year(), l.ordinal(), l.hour()),
        Tier::Daily => (l.year(), l.ordinal(), 0),
        Tier::Weekly => (l.iso_week().year(), l.iso_week().week(), 0),
        Tier::Monthly => (l.year(), l.month(), 0),
        Tier::Yearly => (l.year(), 0, 0),
    }
}

const TIERS: [Tier; 5] = [Tier::Hourly, Tier::Daily, Tier::Weekly, Tier::Monthly, Tier::Yearly];

fn zones() -> impl Strategy<Value = Tz> {
    prop_oneof![Just(Tz::UTC), Just(chrono_tz::Europe::Berlin), Just(chrono_tz::America::New_York)]
}

/// Histories that start just before a DST change of Berlin or New York and are spaced by minutes, hours or
/// days, so hour, day, week, month and year boundaries are all crossed.
fn histories() -> impl Strategy<Value = Vec<RetentionCandidate>> {
    let start = prop_oneof![
        Just(at(2026, 3, 29, 0, 0)),
        Just(at(2026, 10, 24, 22, 0)),
        Just(at(2026, 3, 8, 5, 0)),
        Just(at(2026, 10, 31, 23, 0)),
        Just(at(2025, 12, 28, 0, 0)),
    ];
    let gap = prop_oneof![1i64..90, (1i64..30).prop_map(|h| h * 60), (1i64..40).prop_map(|d| d * 1440)];
    let flags = (0u8..100, 0u8..100, 0u8..100);
    (start, prop::collection::vec((gap, flags), 0..40)).prop_map(|(start, steps)| {
        let mut t = start;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (gap, (good, pin, used)))| {
                t += Duration::minutes(gap);
                RetentionCandidate {
                    id: Uuid::from_u128(i as u128 + 1),
                    completed_at: t,
                    good: good >= 10,
                    pin: (pin < 10).then(|| format!("pin {i}")),
                    in_use: used < 5,
                }
            })
            .collect()
    })
}

fn policies() -> impl Strategy<Value = RetentionPolicy> {
    let counts = prop::collection::vec(0u32..5, 6);
    let age = prop_oneof![Just(0u64), 3600u64..(400 * 86_400)];
    (any::<bool>(), counts, 0u32..4, age).prop_map(|(is_gfs, c, min_backups, max_age_secs)| RetentionPolicy {
        mode: if is_gfs { RetentionMode::Gfs } else { RetentionMode::Count },
        max_backups: if is_gfs { 0 } else { c[0] },
        keep_hourly: if is_gfs { c[1] } else { 0 },
        keep_daily: c[2],
        keep_weekly: c[3],
        keep_monthly: c[4],
        keep_yearly: if is_gfs { c[5] } else { 0 },
        min_backups,
        max_age_secs,
    })
}

fn is_protection(r: &KeepReason) -> bool {
    matches!(r, KeepReason::Pinned(_) | KeepReason::InUse | KeepReason::NewestGood | KeepReason::MinCount)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn retention_invariants(
        history in histories(),
        policy in policies(),
        tz in zones(),
        later in 0i64..(3 * 1440),
    ) {
        let now = history.iter().map(|b| b.completed_at).max().unwrap_or_else(|| at(2026, 1, 1, 0, 0))
            + Duration::minutes(later);
        let d = decide(&history, &policy, tz, now);
        prop_assert_eq!(d.len(), history.len());
        prop_assert!(d.windows(2).all(|w| w[0].backup.completed_at >= w[1].backup.completed_at), "newest first");
        let ids: HashSet<Uuid> = d.iter().map(|d| d.backup.id).collect();
        prop_assert_eq!(ids, history.iter().map(|b| b.id).collect::<HashSet<_>>());

        let good: Vec<&Decision> = d.iter().filter(|d| d.backup.good).collect();
        let old = |b: &RetentionCandidate| {
            policy.max_age_secs > 0
                && now.signed_duration_since(b.completed_at) > Duration::seconds(i64::try_from(policy.max_age_secs).unwrap_or(i64::MAX))
        };
        for x in &d {
            let b = &x.backup;
            if b.pin.is_some() || b.in_use {
                prop_assert!(x.verdict.keeps(), "protected backup deleted: {:?}", x);
            }
            if let Verdict::Keep(r) = &x.verdict {
                prop_assert!(!r.is_empty());
                if old(b) {
                    prop_assert!(r.iter().all(is_protection), "old backup kept by a rule: {:?}", x);
                }
                if !b.good {
                    prop_assert!(r.iter().all(|r| matches!(r, KeepReason::Pinned(_) | KeepReason::InUse)));
                }
            }
        }
        if let Some(first) = good.first() {
            prop_assert!(first.verdict.keeps(), "newest good deleted");
        }
        for x in good.iter().take(policy.min_backups as usize) {
            prop_assert!(x.verdict.keeps(), "min count not respected");
        }

        let has = |x: &Decision, f: &dyn Fn(&KeepReason) -> bool| matches!(&x.verdict, Verdict::Keep(r) if r.iter().any(f));
        match policy.mode {
            RetentionMode::Count => {
                let selected: Vec<Uuid> = match policy.count() {
                    Some(k) => good.iter().take(k).filter(|x| !old(&x.backup)).map(|x| x.backup.id).collect(),
                    None => good.iter().filter(|x| !old(&x.backup)).map(|x| x.backup.id).collect(),
                };
                let got: Vec<Uuid> = d
                    .iter()
                    .filter(|x| has(x, &|r| matches!(r, KeepReason::Count { .. } | KeepReason::KeepAll)))
                    .map(|x| x.backup.id)
                    .collect();
                prop_assert_eq!(got, selected);
            }
            RetentionMode::Gfs => {
                for tier in TIERS {
                    let n = policy.tiers().iter().find(|(t, _)| *t == tier).map(|(_, n)| *n as usize).unwrap_or(0);
                    // Oracle: newest good backup per period, periods ordered newest first, the first n.
                    let mut newest: BTreeMap<(i32, u32, u32), &Decision> = BTreeMap::new();
                    for x in &good {
                        newest.entry(oracle(tier, x.backup.completed_at, tz)).or_insert(x);
                    }
                    let mut periods: Vec<&Decision> = newest.values().copied().collect();
                    periods.sort_by_key(|x| std::cmp::Reverse(x.backup.completed_at));
                    let expect: HashSet<Uuid> =
                        periods.iter().take(n).filter(|x| !old(&x.backup)).map(|x| x.backup.id).collect();
                    let mut per_period: HashMap<String, usize> = HashMap::new();
                    let mut got = HashSet::new();
                    for x in &d {
                        if let Verdict::Keep(r) = &x.verdict {
                            for r in r {
                                if let KeepReason::Tier(t, p) = r && *t == tier {
                                    prop_assert_eq!(p, &tier.period(x.backup.completed_at, tz));
                                    *per_period.entry(p.clone()).or_default() += 1;
                                    got.insert(x.backup.id);
                                }
                            }
                        }
                    }
                    prop_assert!(per_period.values().all(|c| *c == 1), "{:?}: two backups for one period", tier);
                    prop_assert_eq!(got, expect, "{:?}", tier);
                }
                // The shown period names and the calendar oracle agree on which backups share a period.
                for a in &good {
                    for b in &good {
                        for tier in TIERS {
                            prop_assert_eq!(
                                tier.period(a.backup.completed_at, tz) == tier.period(b.backup.completed_at, tz),
                                oracle(tier, a.backup.completed_at, tz) == oracle(tier, b.backup.completed_at, tz)
                            );
                        }
                    }
                }
            }
        }

        // Idempotent: the kept set, decided again, keeps everything.
        let kept: Vec<RetentionCandidate> = d.iter().filter(|x| x.verdict.keeps()).map(|x| x.backup.clone()).collect();
        let again = decide(&kept, &policy, tz, now);
        prop_assert!(again.iter().all(|x| x.verdict.keeps()), "second pass deletes: {:?}", again);
    }
}
