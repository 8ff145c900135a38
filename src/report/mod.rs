//! What people look at: run summaries, DVC-style diffs, the pivot table a pipeline's `report:`
//! asks for, the plots its `plots:` declare, exports (CSV, JSON, a tidy metrics table) and the
//! self-contained HTML / Markdown report of a run.

pub mod claim_eval;
pub mod claims;
pub mod diff;
pub mod export;
pub mod html;
pub mod names;
pub mod output;
pub mod pivot;
pub mod plot;
pub mod series;
pub mod stats;
pub mod table;

pub use table::Table;

/// Why a report, plot or export could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("drawing a plot failed: {0}")]
    Draw(String),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("{0}")]
    Invalid(String),
}

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
