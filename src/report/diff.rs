//! `pipe diff A B`: parameters and metrics that differ between two runs, the table DVC users
//! know from `dvc params diff` / `dvc metrics diff`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Table, claim_eval, fmt_float, fmt_value};
use crate::cache::RunRecord;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffRow {
    /// The stage name.
    pub path: String,
    /// `params.lr` or `metrics.accuracy`; for a claim (path `claim NAME`) `outcome`, `left`,
    /// `op` or `right`.
    pub name: String,
    pub a: Value,
    pub b: Value,
    /// B − A for numbers.
    pub change: Option<f64>,
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn stage_values(run: &RunRecord) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for s in &run.stages {
        let mut flat = BTreeMap::new();
        flatten("params", &s.params, &mut flat);
        flatten("metrics", &s.metrics, &mut flat);
        for (k, v) in flat {
            if k == "metrics" && v.is_null() {
                continue;
            }
            out.insert((s.name.clone(), k), v);
        }
    }
    out
}

/// Claims' outcomes and numbers, keyed like stage values: (`claim NAME`, field).
fn claim_values(run: &RunRecord) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for c in &run.claims {
        for (field, v) in claim_eval::diff_fields(c) {
            out.insert((format!("claim {}", c.name), field.to_string()), v);
        }
    }
    out
}

/// Rows that differ (all rows with `all`), params before metrics, each by stage then name;
/// then the claims whose outcome or numbers differ (a claim only one run states included).
pub fn diff_runs(a: &RunRecord, b: &RunRecord, all: bool) -> Vec<DiffRow> {
    let mut rows = diff_maps(&stage_values(a), &stage_values(b), all, true);
    rows.extend(diff_maps(&claim_values(a), &claim_values(b), all, false));
    rows
}

fn diff_maps(
    va: &BTreeMap<(String, String), Value>,
    vb: &BTreeMap<(String, String), Value>,
    all: bool,
    params_first: bool,
) -> Vec<DiffRow> {
    let mut keys: Vec<&(String, String)> = va.keys().chain(vb.keys()).collect();
    let group = |k: &(String, String)| params_first && !k.1.starts_with("params");
    keys.sort_by(|x, y| (group(x), &x.0, &x.1).cmp(&(group(y), &y.0, &y.1)));
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let x = va.get(k).cloned().unwrap_or(Value::Null);
            let y = vb.get(k).cloned().unwrap_or(Value::Null);
            if x == y && !all {
                return None;
            }
            let change = match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => Some(q - p),
                _ => None,
            };
            Some(DiffRow {
                path: k.0.clone(),
                name: k.1.clone(),
                a: x,
                b: y,
                change,
            })
        })
        .collect()
}

pub fn diff_table(rows: &[DiffRow], a_label: &str, b_label: &str) -> Table {
    let mut t = Table::new(["Path", "Param/Metric", a_label, b_label, "Change (B − A)"]);
    for r in rows {
        t.push(vec![
            r.path.clone(),
            r.name.clone(),
            fmt_value(&r.a),
            fmt_value(&r.b),
            r.change
                .map(|c| {
                    if c > 0.0 {
                        format!("+{}", fmt_float(c))
                    } else {
                        fmt_float(c)
                    }
                })
                .unwrap_or_else(|| "—".into()),
        ]);
    }
    t
}
