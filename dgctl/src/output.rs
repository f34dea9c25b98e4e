//! Printing: human tables by default, `-o json` / `-o yaml` of dgctl's own view structs (see `view`), whose
//! field names are the stable scripting interface.

use comfy_table::Table;
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// `-o` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Table,
    /// JSON (stable schema).
    Json,
    /// YAML (same schema as JSON).
    Yaml,
}

/// A view that can be one row of a table.
pub trait Row {
    /// Column headers.
    fn headers() -> Vec<&'static str>;
    /// This row's cells.
    fn cells(&self) -> Vec<String>;
}

/// Prints a list: a table, or a JSON/YAML array.
pub fn list<T: Serialize + Row>(format: Format, items: &[T]) -> CliResult<()> {
    match format {
        Format::Table => {
            let mut t = Table::new();
            t.set_header(T::headers());
            for i in items {
                t.add_row(i.cells());
            }
            println!("{t}");
            Ok(())
        }
        _ => structured(format, &items),
    }
}

/// Prints one object: field/value lines, or JSON/YAML.
pub fn one<T: Serialize>(format: Format, item: &T) -> CliResult<()> {
    match format {
        Format::Table => {
            let value = serde_json::to_value(item).map_err(|e| CliError::local(e.to_string()))?;
            let mut t = Table::new();
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    t.add_row(vec![k, cell(&v)]);
                }
            }
            println!("{t}");
            Ok(())
        }
        _ => structured(format, item),
    }
}

/// Prints a short confirmation (`deleted datasource "x"`) as text, or `{"message": …}` plus fields.
pub fn done<T: Serialize>(format: Format, message: &str, item: &T) -> CliResult<()> {
    match format {
        Format::Table => {
            println!("{message}");
            Ok(())
        }
        _ => structured(format, item),
    }
}

fn structured<T: Serialize + ?Sized>(format: Format, item: &T) -> CliResult<()> {
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(item).map_err(|e| CliError::local(e.to_string()))?,
        _ => serde_json::to_string_pretty(item).map_err(|e| CliError::local(e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// A JSON value as a table cell: strings bare, null empty, lists joined, objects compact.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// Bytes for humans (`1.5 MiB`).
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
