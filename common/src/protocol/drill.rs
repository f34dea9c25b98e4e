//! Restore drills in the agent protocol (version 7): the row counts a backup records ([`TableCount`]), the
//! checks a drill's restore asks for ([`DrillChecks`]) and what the agent observed ([`DrillObservation`]).
//! The agent only observes; the controller compares (it is the trust root). Conversions from the wire
//! validate and bound every list and text here, naming the field.

use dg_proto::v1 as pb;

use super::{ProtocolError, ProtocolResult};

/// Most tables counted per backup or drill (more are dropped with a problem note by the agent).
pub const MAX_TABLES: usize = 10_000;
/// Most user queries per drill.
pub const MAX_QUERIES: usize = 64;
/// Longest query text.
pub const MAX_QUERY_CHARS: usize = 16 * 1024;
/// Longest value or error text kept from a query.
pub const MAX_VALUE_CHARS: usize = 4096;

/// Rows of one table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TableCount {
    /// Schema (PostgreSQL) or database (MariaDB/MySQL).
    pub schema: String,
    /// Table.
    pub table: String,
    /// Rows.
    pub rows: u64,
    /// Counted with COUNT(*) (not estimated).
    pub exact: bool,
}

/// One user query of a drill.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillQuery {
    /// Assertion name.
    pub name: String,
    /// SQL.
    pub sql: String,
}

/// What a drill's restore must observe before the scratch database is dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillChecks {
    /// Count the rows of every table.
    pub table_counts: bool,
    /// Count schema objects.
    pub schema_counts: bool,
    /// User queries, in order.
    pub queries: Vec<DrillQuery>,
}

/// Schema objects of a database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchemaCounts {
    /// Ordinary tables.
    pub tables: u64,
    /// Views.
    pub views: u64,
    /// Functions and procedures.
    pub functions: u64,
    /// Sequences.
    pub sequences: u64,
}

/// The outcome of one user query.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueryObservation {
    /// Assertion name.
    pub name: String,
    /// At least one row came back.
    pub has_row: bool,
    /// First column of the first row as text (`None`: NULL or no row).
    pub first_value: Option<String>,
    /// Error text, redacted (`None`: it ran).
    pub error: Option<String>,
}

/// What the agent observed in a drill's restored database.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillObservation {
    /// Milliseconds from the attempt's start on the agent until the restored database answered `SELECT 1`.
    pub queryable_after_ms: u64,
    /// Rows per table (when asked and counted).
    pub table_counts: Option<Vec<TableCount>>,
    /// Schema objects (when asked and counted).
    pub schema: Option<SchemaCounts>,
    /// One per query of the checks, in order.
    pub queries: Vec<QueryObservation>,
    /// Why an observation could not be made.
    pub problem: Option<String>,
}

fn text(s: &str, max: usize) -> String {
    s.chars().filter(|c| *c == '\t' || !c.is_control()).take(max).collect()
}

/// Row counts from the wire (bounded; names required).
pub fn table_counts_of(list: Vec<pb::TableRowCount>, field: &str) -> ProtocolResult<Vec<TableCount>> {
    if list.len() > MAX_TABLES {
        return Err(ProtocolError::new(field, format!("must list at most {MAX_TABLES} tables")));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.table.is_empty() || t.table.len() > 256 || t.schema.len() > 256 {
                return Err(ProtocolError::new(format!("{field}[{i}].table"), "must be 1 to 256 bytes"));
            }
            Ok(TableCount { schema: text(&t.schema, 256), table: text(&t.table, 256), rows: t.rows, exact: t.exact })
        })
        .collect()
}

impl From<TableCount> for pb::TableRowCount {
    fn from(t: TableCount) -> Self {
        pb::TableRowCount { schema: t.schema, table: t.table, rows: t.rows, exact: t.exact }
    }
}

impl TryFrom<pb::DrillChecks> for DrillChecks {
    type Error = ProtocolError;
    fn try_from(c: pb::DrillChecks) -> ProtocolResult<Self> {
        if c.queries.len() > MAX_QUERIES {
            return Err(ProtocolError::new("queries", format!("must list at most {MAX_QUERIES} queries")));
        }
        let queries = c
            .queries
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                if q.sql.trim().is_empty() || q.sql.chars().count() > MAX_QUERY_CHARS {
                    return Err(ProtocolError::new(
                        format!("queries[{i}].sql"),
                        format!("must be 1 to {MAX_QUERY_CHARS} characters"),
                    ));
                }
                Ok(DrillQuery { name: text(&q.name, 256), sql: q.sql })
            })
            .collect::<ProtocolResult<_>>()?;
        Ok(DrillChecks { table_counts: c.table_counts, schema_counts: c.schema_counts, queries })
    }
}

impl From<DrillChecks> for pb::DrillChecks {
    fn from(c: DrillChecks) -> Self {
        pb::DrillChecks {
            table_counts: c.table_counts,
            schema_counts: c.schema_counts,
            queries: c.queries.into_iter().map(|q| pb::DrillQuery { name: q.name, sql: q.sql }).collect(),
        }
    }
}

impl TryFrom<pb::DrillObservation> for DrillObservation {
    type Error = ProtocolError;
    fn try_from(o: pb::DrillObservation) -> ProtocolResult<Self> {
        if o.queries.len() > MAX_QUERIES {
            return Err(ProtocolError::new("queries", format!("must list at most {MAX_QUERIES} queries")));
        }
        let queries = o
            .queries
            .into_iter()
            .map(|q| QueryObservation {
                name: text(&q.name, 256),
                has_row: q.has_row,
                first_value: q.first_value.map(|v| text(&v, MAX_VALUE_CHARS)),
                error: (!q.error.is_empty()).then(|| text(&q.error, MAX_VALUE_CHARS)),
            })
            .collect();
        let counted = !o.table_counts.is_empty();
        Ok(DrillObservation {
            queryable_after_ms: o.queryable_after_ms,
            table_counts: counted.then(|| table_counts_of(o.table_counts, "table_counts")).transpose()?,
            schema: o.schema.map(|s| SchemaCounts {
                tables: s.tables,
                views: s.views,
                functions: s.functions,
                sequences: s.sequences,
            }),
            queries,
            problem: (!o.problem.is_empty()).then(|| text(&o.problem, MAX_VALUE_CHARS)),
        })
    }
}

impl From<DrillObservation> for pb::DrillObservation {
    fn from(o: DrillObservation) -> Self {
        pb::DrillObservation {
            queryable_after_ms: o.queryable_after_ms,
            table_counts: o.table_counts.unwrap_or_default().into_iter().map(Into::into).collect(),
            schema: o.schema.map(|s| pb::SchemaCounts {
                tables: s.tables,
                views: s.views,
                functions: s.functions,
                sequences: s.sequences,
            }),
            queries: o
                .queries
                .into_iter()
                .map(|q| pb::QueryObservation {
                    name: q.name,
                    has_row: q.has_row,
                    first_value: q.first_value,
                    error: q.error.unwrap_or_default(),
                })
                .collect(),
            problem: o.problem.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_round_trip_and_bounds_hold() {
        let o = DrillObservation {
            queryable_after_ms: 42,
            table_counts: Some(vec![TableCount { schema: "public".into(), table: "t".into(), rows: 3, exact: true }]),
            schema: Some(SchemaCounts { tables: 1, views: 0, functions: 2, sequences: 1 }),
            queries: vec![
                QueryObservation { name: "a".into(), has_row: true, first_value: Some("3".into()), error: None },
                QueryObservation { name: "b".into(), has_row: true, first_value: None, error: None },
                QueryObservation { name: "c".into(), has_row: false, first_value: None, error: Some("boom".into()) },
            ],
            problem: None,
        };
        assert_eq!(DrillObservation::try_from(pb::DrillObservation::from(o.clone())), Ok(o));
        let many = pb::DrillChecks {
            queries: (0..=MAX_QUERIES).map(|_| pb::DrillQuery { name: "q".into(), sql: "select 1".into() }).collect(),
            ..Default::default()
        };
        assert!(DrillChecks::try_from(many).is_err_and(|e| e.field == "queries"));
        let empty = pb::DrillChecks {
            queries: vec![pb::DrillQuery { name: "q".into(), sql: " ".into() }],
            ..Default::default()
        };
        assert!(DrillChecks::try_from(empty).is_err_and(|e| e.field == "queries[0].sql"));
        let nameless = vec![pb::TableRowCount { schema: "s".into(), table: String::new(), rows: 1, exact: true }];
        assert!(table_counts_of(nameless, "table_counts").is_err_and(|e| e.field == "table_counts[0].table"));
    }
}
