//! Validation of `RestoreDrillService` requests into `service::drills` values; a failure names the field.

use std::time::Duration;

use dg_common::error::FieldError;
use dg_common::protocol::drill::{MAX_QUERIES, MAX_QUERY_CHARS};
use dg_proto::v1 as pb;

use super::{V, cron_and_zone, id, name};
use crate::service::{
    drill_judge::{Expect, SchemaExpect, SqlAssertion},
    drills::{DrillPatch, NewDrill},
    schedule,
};

/// Longest expected scalar.
const MAX_SCALAR_CHARS: usize = 4096;

fn max_age(d: Option<prost_types::Duration>, required: bool) -> V<Option<Duration>> {
    match d {
        None if required => Err(FieldError::new("max_backup_age", "is required")),
        None => Ok(None),
        Some(d) if d.seconds < 1 || d.nanos != 0 || d.seconds > 10 * 366 * 86_400 => {
            Err(FieldError::new("max_backup_age", "must be whole seconds, from 1 s to 10 years"))
        }
        Some(d) => Ok(Some(Duration::from_secs(d.seconds.unsigned_abs()))),
    }
}

fn tolerance(t: f64) -> V<f64> {
    if t.is_finite() && (0.0..=100.0).contains(&t) {
        Ok(t)
    } else {
        Err(FieldError::new("row_count_tolerance_percent", "must be between 0 and 100"))
    }
}

/// SQL assertions: unique names, non-empty bounded queries, an expectation each.
pub fn sql_assertions(list: Vec<pb::SqlAssertion>) -> V<Vec<SqlAssertion>> {
    if list.len() > MAX_QUERIES {
        return Err(FieldError::new("sql_assertions", format!("must list at most {MAX_QUERIES} assertions")));
    }
    let mut out: Vec<SqlAssertion> = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let n = name("sql_assertions.name", &a.name)
            .map_err(|e| FieldError::new("sql_assertions.name", format!("[{i}]: {}", e.reason)))?;
        if out.iter().any(|o| o.name == n) {
            return Err(FieldError::new("sql_assertions.name", format!("[{i}]: \"{n}\" is used twice")));
        }
        if a.query.trim().is_empty() || a.query.chars().count() > MAX_QUERY_CHARS {
            return Err(FieldError::new(
                "sql_assertions.query",
                format!("[{i}]: must be 1 to {MAX_QUERY_CHARS} characters"),
            ));
        }
        let expect = match a.expect {
            Some(pb::sql_assertion::Expect::Scalar(s)) if s.chars().count() <= MAX_SCALAR_CHARS => Expect::Scalar(s),
            Some(pb::sql_assertion::Expect::Scalar(_)) => {
                return Err(FieldError::new(
                    "sql_assertions.scalar",
                    format!("[{i}]: at most {MAX_SCALAR_CHARS} characters"),
                ));
            }
            Some(pb::sql_assertion::Expect::AtLeastOneRow(true)) => Expect::AtLeastOneRow,
            _ => {
                return Err(FieldError::new(
                    "sql_assertions.expect",
                    format!("[{i}]: set scalar or at_least_one_row = true"),
                ));
            }
        };
        out.push(SqlAssertion { name: n, query: a.query, expect });
    }
    Ok(out)
}

/// A scratch database name prefix: empty for the default, else `[a-z_][a-z0-9_]*`, at most 40 characters
/// (12 hex digits follow; the name stays within PostgreSQL's 63 and MariaDB's 64).
fn scratch_prefix(p: &str) -> V<String> {
    if p.is_empty() {
        return Ok("dg_drill_".into());
    }
    let ok = p.len() <= 40
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !p.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(p.to_owned())
    } else {
        Err(FieldError::new(
            "scratch_database_prefix",
            "must be lowercase letters, digits and _ (not first), at most 40",
        ))
    }
}

fn schema(s: Option<pb::SchemaExpectations>) -> SchemaExpect {
    s.map(|s| SchemaExpect {
        min_tables: s.min_tables,
        min_views: s.min_views,
        min_functions: s.min_functions,
        min_sequences: s.min_sequences,
    })
    .unwrap_or_default()
}

impl TryFrom<pb::CreateRestoreDrillRequest> for NewDrill {
    type Error = FieldError;
    fn try_from(r: pb::CreateRestoreDrillRequest) -> V<Self> {
        let name = name("name", &r.name)?;
        let datasource_id = id("datasource_id", &r.datasource_id)?;
        let target_datasource_id = id("target_datasource_id", &r.target_datasource_id)?;
        let (cron, time_zone) = cron_and_zone(&r.cron, &r.time_zone)?;
        Ok(NewDrill {
            name,
            datasource_id,
            target_datasource_id,
            cron,
            time_zone,
            max_backup_age: max_age(r.max_backup_age, true)?.unwrap_or(Duration::from_secs(1)),
            tolerance_percent: tolerance(r.row_count_tolerance_percent)?,
            assert_row_counts: r.assert_row_counts.unwrap_or(true),
            sql: sql_assertions(r.sql_assertions)?,
            schema: schema(r.schema),
            enabled: r.enabled.unwrap_or(true),
            scratch_prefix: scratch_prefix(&r.scratch_database_prefix)?,
        })
    }
}

/// An update request: the drill id and the patch.
pub fn drill_patch(r: pb::UpdateRestoreDrillRequest) -> V<(uuid::Uuid, DrillPatch)> {
    let drill = id("id", &r.id)?;
    if let Some(tz) = &r.time_zone {
        schedule::time_zone(tz)?;
    }
    if !r.replace_sql_assertions && !r.sql_assertions.is_empty() {
        return Err(FieldError::new("replace_sql_assertions", "must be true to replace the SQL assertions"));
    }
    Ok((
        drill,
        DrillPatch {
            name: r.name.as_deref().map(|n| name("name", n)).transpose()?,
            cron: r.cron.map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ")),
            time_zone: r.time_zone,
            max_backup_age: max_age(r.max_backup_age, false)?,
            tolerance_percent: r.row_count_tolerance_percent.map(tolerance).transpose()?,
            assert_row_counts: r.assert_row_counts,
            sql: if r.replace_sql_assertions { Some(sql_assertions(r.sql_assertions)?) } else { None },
            schema: r.schema.map(|s| schema(Some(s))),
            enabled: r.enabled,
        },
    ))
}

/// An optional timestamp field.
pub fn opt_time(field: &'static str, t: Option<prost_types::Timestamp>) -> V<Option<chrono::DateTime<chrono::Utc>>> {
    t.map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .ok_or_else(|| FieldError::new(field, "is out of range"))
    })
    .transpose()
}
