//! The pure decisions of restore drills, no I/O: what a drill expects ([`Expectations`]: row counts
//! recorded with the backup, SQL results, schema minimums) against what the agent observed in the restored
//! scratch database ([`judge`] → one [`AssertionOutcome`] each), the recovery time ([`rto_ms`]) and when a
//! scheduled drill is due ([`slot_decision`]). The controller judges; the agent only observes. Called by
//! `service::drills`.

use chrono::{DateTime, Utc};
use dg_common::protocol::drill::{DrillObservation, SchemaCounts, TableCount};

/// What a SQL assertion expects.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The first column of the first row, as text, equals this.
    Scalar(String),
    /// At least one row.
    AtLeastOneRow,
}

/// A user SQL assertion of a drill.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SqlAssertion {
    /// Unique name within the drill.
    pub name: String,
    /// The query.
    pub query: String,
    /// What must hold.
    pub expect: Expect,
}

/// Schema minimums (`None`: not checked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SchemaExpect {
    /// Ordinary tables.
    pub min_tables: Option<u64>,
    /// Views.
    pub min_views: Option<u64>,
    /// Functions and procedures.
    pub min_functions: Option<u64>,
    /// Sequences.
    pub min_sequences: Option<u64>,
}

impl SchemaExpect {
    /// Some minimum is set.
    pub fn any(&self) -> bool {
        self.min_tables.is_some()
            || self.min_views.is_some()
            || self.min_functions.is_some()
            || self.min_sequences.is_some()
    }
}

/// One checked assertion, as the evidence keeps it (field names are part of the export format).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssertionOutcome {
    /// Name ("rows public.t", the SQL assertion's name, "min tables"…).
    pub name: String,
    /// `row_count`, `sql_scalar`, `sql_rows` or `schema`.
    pub kind: String,
    /// Expected value as text.
    pub expected: String,
    /// Observed value as text.
    pub actual: String,
    /// It held.
    pub passed: bool,
}

/// What a drill run expects.
#[derive(Clone, Copy, Debug)]
pub struct Expectations<'a> {
    /// Row counts recorded with the backup (`None`: the backup recorded none).
    pub recorded: Option<&'a [TableCount]>,
    /// Compare row counts.
    pub assert_row_counts: bool,
    /// Allowed difference in percent of the recorded count.
    pub tolerance_percent: f64,
    /// SQL assertions, in the order the agent ran them.
    pub sql: &'a [SqlAssertion],
    /// Schema minimums.
    pub schema: SchemaExpect,
}

/// The verdict: outcomes, and notes about what was not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Every assertion checked.
    pub outcomes: Vec<AssertionOutcome>,
    /// What was skipped, and why.
    pub notes: Vec<String>,
}

impl Judgement {
    /// Every outcome passed.
    pub fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.passed)
    }
}

fn outcome(name: String, kind: &str, expected: String, actual: String, passed: bool) -> AssertionOutcome {
    AssertionOutcome { name, kind: kind.to_owned(), expected, actual, passed }
}

fn qualified(t: &TableCount) -> String {
    if t.schema.is_empty() { t.table.clone() } else { format!("{}.{}", t.schema, t.table) }
}

/// Whether `actual` is within `tolerance_percent` of `expected` (relative to `expected`; 0 % is exact).
pub fn within_tolerance(expected: u64, actual: u64, tolerance_percent: f64) -> bool {
    let allowed = (expected as f64) * tolerance_percent.clamp(0.0, 100.0) / 100.0;
    (expected.abs_diff(actual) as f64) <= allowed.floor()
}

/// Compares what a run expects with what the agent observed. Row counts: every recorded table must be
/// restored with a count within the tolerance (a table restored but not recorded is a note: MariaDB counts
/// are taken in their own snapshot, so a table created meanwhile is possible). SQL: each assertion by its
/// position (and name). Schema: each minimum set.
pub fn judge(e: Expectations<'_>, o: &DrillObservation) -> Judgement {
    let mut j = Judgement::default();
    let problem = o.problem.as_deref().unwrap_or("not observed");
    if e.assert_row_counts {
        match (e.recorded, &o.table_counts) {
            (None, _) => j.notes.push(
                "row counts not compared: the backup recorded none (counting failed at backup time, or an agent \
                 before protocol 7 took it)"
                    .into(),
            ),
            (Some(_), None) => j.outcomes.push(outcome(
                "rows (every table)".into(),
                "row_count",
                "counts of the backup".into(),
                format!("not observed: {problem}"),
                false,
            )),
            (Some(recorded), Some(observed)) => {
                for r in recorded {
                    let found = observed.iter().find(|t| t.schema == r.schema && t.table == r.table);
                    let (actual, passed) = match found {
                        Some(t) => (t.rows.to_string(), within_tolerance(r.rows, t.rows, e.tolerance_percent)),
                        None => ("table absent".into(), false),
                    };
                    let expected = if e.tolerance_percent > 0.0 {
                        format!("{} (±{}%)", r.rows, e.tolerance_percent)
                    } else {
                        r.rows.to_string()
                    };
                    j.outcomes.push(outcome(format!("rows {}", qualified(r)), "row_count", expected, actual, passed));
                }
                for t in
                    observed.iter().filter(|t| !recorded.iter().any(|r| r.schema == t.schema && r.table == t.table))
                {
                    j.notes.push(format!(
                        "table {} restored with {} rows was not recorded at backup time",
                        qualified(t),
                        t.rows
                    ));
                }
            }
        }
    }
    for (i, a) in e.sql.iter().enumerate() {
        let seen = o.queries.get(i).filter(|q| q.name == a.name);
        let (kind, expected) = match &a.expect {
            Expect::Scalar(v) => ("sql_scalar", v.clone()),
            Expect::AtLeastOneRow => ("sql_rows", "at least one row".to_owned()),
        };
        let (actual, passed) = match seen {
            None => (format!("not observed: {problem}"), false),
            Some(q) => match (&q.error, &a.expect) {
                (Some(err), _) => (format!("error: {err}"), false),
                (None, Expect::AtLeastOneRow) => {
                    (if q.has_row { "at least one row" } else { "no rows" }.to_owned(), q.has_row)
                }
                (None, Expect::Scalar(v)) => match (&q.first_value, q.has_row) {
                    (_, false) => ("no rows".to_owned(), false),
                    (None, true) => ("NULL".to_owned(), false),
                    (Some(x), true) => (x.clone(), x == v),
                },
            },
        };
        j.outcomes.push(outcome(a.name.clone(), kind, expected, actual, passed));
    }
    if e.schema.any() {
        let minimums = [
            ("tables", e.schema.min_tables, o.schema.map(|s: SchemaCounts| s.tables)),
            ("views", e.schema.min_views, o.schema.map(|s| s.views)),
            ("functions", e.schema.min_functions, o.schema.map(|s| s.functions)),
            ("sequences", e.schema.min_sequences, o.schema.map(|s| s.sequences)),
        ];
        for (what, min, seen) in minimums {
            let Some(min) = min else { continue };
            let (actual, passed) = match seen {
                Some(n) => (n.to_string(), n >= min),
                None => (format!("not observed: {problem}"), false),
            };
            j.outcomes.push(outcome(format!("min {what}"), "schema", format!(">= {min}"), actual, passed));
        }
    }
    j
}

/// Recovery time: the controller's wait from the run's start until the agent claimed the restore (both
/// timestamps from the controller database's clock), plus the agent's own time from its start to a queryable
/// database (its monotonic clock). No clock of one side is compared with the other's, so skew cannot distort it.
pub fn rto_ms(run_started: DateTime<Utc>, claimed: Option<DateTime<Utc>>, queryable_after_ms: u64) -> Option<u64> {
    let claimed = claimed?;
    let wait = u64::try_from((claimed - run_started).num_milliseconds()).unwrap_or(0);
    (queryable_after_ms > 0).then(|| wait.saturating_add(queryable_after_ms))
}

/// What the scheduler does with one drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotDecision {
    /// Nothing: not due yet.
    Wait,
    /// No slot recorded yet: record `next` (no run).
    Arm {
        /// The slot to record.
        next: DateTime<Utc>,
    },
    /// The slot `due` has come: run once for it (however many slots were missed) and move to `next`.
    Run {
        /// The slot being run (the compare-and-set value).
        due: DateTime<Utc>,
        /// The next slot after now.
        next: DateTime<Utc>,
    },
}

/// The scheduler's decision for a drill whose recorded slot is `recorded` and whose next slot after `now` is
/// `next` (from its cron). The caller moves the slot with a compare-and-set on `recorded`, and only the
/// replica whose update lands starts the run, so a slot runs once.
pub fn slot_decision(recorded: Option<DateTime<Utc>>, next: DateTime<Utc>, now: DateTime<Utc>) -> SlotDecision {
    match recorded {
        None => SlotDecision::Arm { next },
        Some(due) if due <= now => SlotDecision::Run { due, next },
        Some(_) => SlotDecision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use dg_common::protocol::drill::QueryObservation;

    use super::*;

    fn t(schema: &str, table: &str, rows: u64) -> TableCount {
        TableCount { schema: schema.into(), table: table.into(), rows, exact: true }
    }

    fn q(name: &str, value: Option<&str>, has_row: bool, error: Option<&str>) -> QueryObservation {
        QueryObservation {
            name: name.into(),
            has_row,
            first_value: value.map(Into::into),
            error: error.map(Into::into),
        }
    }

    fn expectations<'a>(recorded: Option<&'a [TableCount]>, sql: &'a [SqlAssertion]) -> Expectations<'a> {
        Expectations { recorded, assert_row_counts: true, tolerance_percent: 0.0, sql, schema: SchemaExpect::default() }
    }

    #[test]
    fn row_counts_match_exactly_or_within_the_tolerance() {
        let recorded = [t("public", "a", 100), t("public", "b", 0)];
        let obs = DrillObservation {
            table_counts: Some(vec![t("public", "a", 100), t("public", "b", 0)]),
            ..Default::default()
        };
        let j = judge(expectations(Some(&recorded), &[]), &obs);
        assert!(j.passed(), "{j:?}");
        assert_eq!(j.outcomes.len(), 2);
        assert_eq!((j.outcomes[0].name.as_str(), j.outcomes[0].expected.as_str()), ("rows public.a", "100"));

        let off = DrillObservation {
            table_counts: Some(vec![t("public", "a", 97), t("public", "b", 0)]),
            ..Default::default()
        };
        let j = judge(expectations(Some(&recorded), &[]), &off);
        assert!(!j.passed());
        assert_eq!((j.outcomes[0].expected.as_str(), j.outcomes[0].actual.as_str()), ("100", "97"));
        let mut e = expectations(Some(&recorded), &[]);
        e.tolerance_percent = 3.0;
        assert!(judge(e, &off).passed(), "3 of 100 is within 3 %");
        e.tolerance_percent = 2.5;
        assert!(!judge(e, &off).passed(), "3 of 100 is not within 2.5 %");
        assert!(within_tolerance(0, 0, 50.0) && !within_tolerance(0, 1, 50.0));
        assert!(within_tolerance(10, 11, 10.0) && !within_tolerance(10, 12, 10.0));
    }

    #[test]
    fn an_absent_table_fails_an_extra_one_is_a_note_and_no_record_skips() {
        let recorded = [t("", "a", 5), t("", "gone", 1)];
        let obs = DrillObservation { table_counts: Some(vec![t("", "a", 5), t("", "new", 2)]), ..Default::default() };
        let j = judge(expectations(Some(&recorded), &[]), &obs);
        assert!(!j.passed());
        assert_eq!(j.outcomes[1].name, "rows gone");
        assert_eq!(j.outcomes[1].actual, "table absent");
        assert!(j.notes.iter().any(|n| n.contains("table new")), "{:?}", j.notes);

        let j = judge(expectations(None, &[]), &obs);
        assert!(j.passed() && j.outcomes.is_empty());
        assert!(j.notes[0].contains("recorded none"));

        let unobserved = DrillObservation { problem: Some("permission denied".into()), ..Default::default() };
        let j = judge(expectations(Some(&recorded), &[]), &unobserved);
        assert!(!j.passed());
        assert!(j.outcomes[0].actual.contains("permission denied"));

        let mut off = expectations(Some(&recorded), &[]);
        off.assert_row_counts = false;
        assert!(judge(off, &unobserved).outcomes.is_empty(), "row counts not asked for");
    }

    #[test]
    fn sql_assertions_compare_text_and_tell_null_no_row_and_errors_apart() {
        let sql = [
            SqlAssertion {
                name: "count".into(),
                query: "select count(*) from t".into(),
                expect: Expect::Scalar("3".into()),
            },
            SqlAssertion { name: "any".into(), query: "select 1 from t".into(), expect: Expect::AtLeastOneRow },
        ];
        let ok = DrillObservation {
            queries: vec![q("count", Some("3"), true, None), q("any", Some("1"), true, None)],
            ..Default::default()
        };
        assert!(judge(expectations(None, &sql), &ok).passed());
        for (obs, actual) in [
            (q("count", Some("4"), true, None), "4"),
            (q("count", None, true, None), "NULL"),
            (q("count", None, false, None), "no rows"),
            (q("count", None, false, Some("relation \"t\" does not exist")), "error: relation \"t\" does not exist"),
        ] {
            let o = DrillObservation { queries: vec![obs, q("any", Some("1"), true, None)], ..Default::default() };
            let j = judge(expectations(None, &sql), &o);
            assert!(!j.passed(), "{actual}");
            assert_eq!((j.outcomes[0].expected.as_str(), j.outcomes[0].actual.as_str()), ("3", actual));
            assert!(j.outcomes[1].passed);
        }
        let empty = DrillObservation {
            queries: vec![q("count", Some("3"), true, None), q("any", None, false, None)],
            ..Default::default()
        };
        let j = judge(expectations(None, &sql), &empty);
        assert_eq!(
            (j.outcomes[1].kind.as_str(), j.outcomes[1].actual.as_str(), j.outcomes[1].passed),
            ("sql_rows", "no rows", false)
        );
        // A missing or misnamed observation never passes.
        let short = DrillObservation { queries: vec![q("other", Some("3"), true, None)], ..Default::default() };
        assert!(judge(expectations(None, &sql), &short).outcomes.iter().all(|o| !o.passed));
    }

    #[test]
    fn schema_minimums_are_checked_when_set() {
        let obs = DrillObservation {
            schema: Some(SchemaCounts { tables: 3, views: 1, functions: 0, sequences: 2 }),
            ..Default::default()
        };
        let mut e = expectations(None, &[]);
        e.schema =
            SchemaExpect { min_tables: Some(3), min_views: Some(1), min_functions: None, min_sequences: Some(2) };
        let j = judge(e, &obs);
        assert!(j.passed() && j.outcomes.len() == 3, "{j:?}");
        e.schema.min_functions = Some(1);
        let j = judge(e, &obs);
        let f = j.outcomes.iter().find(|o| o.name == "min functions").expect("checked");
        assert_eq!((f.expected.as_str(), f.actual.as_str(), f.passed), (">= 1", "0", false));
        assert!(!judge(e, &DrillObservation::default()).passed(), "not observed fails");
    }

    #[test]
    fn rto_adds_the_controller_wait_to_the_agent_time() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("date");
        let claimed = start + chrono::Duration::milliseconds(1500);
        assert_eq!(rto_ms(start, Some(claimed), 2500), Some(4000));
        assert_eq!(rto_ms(start, None, 2500), None, "never claimed");
        assert_eq!(rto_ms(start, Some(claimed), 0), None, "never queryable");
        assert_eq!(rto_ms(claimed, Some(start), 10), Some(10), "a claim before the start counts as no wait");
    }

    #[test]
    fn a_slot_is_armed_then_run_once_when_due() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("date");
        let next = now + chrono::Duration::minutes(5);
        assert_eq!(slot_decision(None, next, now), SlotDecision::Arm { next });
        assert_eq!(slot_decision(Some(next), next + chrono::Duration::minutes(5), now), SlotDecision::Wait);
        let missed = now - chrono::Duration::hours(3);
        assert_eq!(
            slot_decision(Some(missed), next, now),
            SlotDecision::Run { due: missed, next },
            "missed slots run once"
        );
        assert_eq!(slot_decision(Some(now), next, now), SlotDecision::Run { due: now, next });
    }
}
