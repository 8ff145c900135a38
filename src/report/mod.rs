//! Tables for people: run summaries, DVC-style diffs, and the pivot table a pipeline's
//! `report:` asks for.

pub mod diff;
pub mod pivot;
pub mod table;

pub use table::Table;

use serde_json::Value;

/// A metric or parameter value as a short, stable string.
pub fn fmt_value(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => fmt_float(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub fn fmt_float(f: f64) -> String {
    if f == 0.0 {
        "0".into()
    } else if f.abs() >= 1e-3 && f.abs() < 1e6 {
        let s = format!("{f:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{f:.3e}")
    }
}
