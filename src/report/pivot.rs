//! The table a pipeline's `report:` asks for: one row per value of a metric (weights remaining,
//! say), one column per stage template and sweep member, cells holding the chosen metrics.
//! Members that differ only in a replicate variable (a seed) share a column, and their cell
//! shows mean ± std (n) instead of one column per seed.
//!
//! It is built from run records alone (names carry the template and the sweep assignment), so
//! a run can be re-rendered and exported later without its YAML.

use std::collections::BTreeSet;

use serde::Serialize;

use super::names::StageName;
use super::stats::Agg;
use super::{Table, fmt_float, fmt_value};
use crate::cache::{StageRecord, StageStatus};
use crate::spec::{ReportSpec, did_you_mean, glob_match as glob, is_replicate};

/// The column a stage falls in: its name within its level group plus its sweep members,
/// replicate variables left out.
fn column_of(name: &StageName, replicate: impl Fn(&str) -> bool) -> String {
    let parts: Vec<String> = name
        .assignment
        .iter()
        .filter(|(k, _)| !replicate(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        name.base.clone()
    } else {
        format!("{}[{}]", name.base, parts.join(","))
    }
}

/// One cell value of the report, in long form (what `--csv` exports).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PivotCell {
    /// The row metric's value (e.g. remaining_pct).
    pub row: f64,
    pub column: String,
    pub metric: String,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

/// The report's data: rows (row value, label) high to low, columns in first-seen order, and
/// every cell's aggregate. Non-numeric metric values are kept as text for display.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pivot {
    pub row_metric: String,
    pub rows: Vec<(f64, String)>,
    pub columns: Vec<String>,
    pub cells: Vec<PivotCell>,
    /// (row label, column, metric) → text, for values that are not numbers.
    pub texts: Vec<(String, String, String, String)>,
}

fn row_label(v: f64) -> String {
    format!("{v:.1}")
}

pub fn build_data(spec: &ReportSpec, records: &[StageRecord]) -> Pivot {
    let replicate = |v: &str| is_replicate(spec.replicates.as_deref(), v);
    let mut columns: Vec<String> = Vec::new();
    // (row label, column, metric) → values over replicates, in record order.
    type Slot = ((String, String, String), Vec<f64>);
    let mut slots: Vec<Slot> = Vec::new();
    let mut rows: Vec<(f64, String)> = Vec::new();
    let mut texts = Vec::new();
    for rec in records {
        if !spec.select.iter().any(|p| glob(p, &rec.name)) {
            continue;
        }
        let name = StageName::parse(&rec.name);
        let col = column_of(&name, replicate);
        if !columns.contains(&col) {
            columns.push(col.clone());
        }
        let Some(rv) = rec.metrics.get(&spec.rows).and_then(|v| v.as_f64()) else {
            continue;
        };
        let label = row_label(rv);
        if !rows.iter().any(|(_, l)| *l == label) {
            rows.push((rv, label.clone()));
        }
        for m in &spec.values {
            let key = (label.clone(), col.clone(), m.clone());
            match rec.metrics.get(m) {
                Some(x) if x.as_f64().is_some() => {
                    let f = x.as_f64().expect("checked");
                    match slots.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, vs)) => vs.push(f),
                        None => slots.push((key, vec![f])),
                    }
                }
                Some(x) => texts.push((key.0, key.1, key.2, fmt_value(x))),
                None => {}
            }
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let cells = slots
        .into_iter()
        .filter_map(|((label, column, metric), vs)| {
            let a = Agg::of(&vs)?;
            let row = rows.iter().find(|(_, l)| *l == label)?.0;
            Some(PivotCell {
                row,
                column,
                metric,
                mean: a.mean,
                std: a.std,
                n: a.n,
            })
        })
        .collect();
    Pivot {
        row_metric: spec.rows.clone(),
        rows,
        columns,
        cells,
        texts,
    }
}

/// A cell's number as the metric is everywhere else (`pipe show`, claims, diffs, exports):
/// accuracies stay fractions, with four decimals so that columns align.
fn fmt_metric(metric: &str, v: f64) -> String {
    if metric.contains("acc") {
        format!("{v:.4}")
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        fmt_float(v)
    }
}

/// The displayed table: one text per cell, metrics joined by ` / `.
pub fn table(spec: &ReportSpec, p: &Pivot) -> Table {
    let mut t = Table::new(std::iter::once(spec.rows.clone()).chain(p.columns.iter().cloned()));
    for (rv, label) in &p.rows {
        let mut row = vec![label.clone()];
        for c in &p.columns {
            let parts: Vec<String> = spec
                .values
                .iter()
                .map(|m| {
                    if let Some(cell) = p
                        .cells
                        .iter()
                        .find(|x| x.row == *rv && &x.column == c && &x.metric == m)
                    {
                        Agg {
                            mean: cell.mean,
                            std: cell.std,
                            n: cell.n,
                        }
                        .display(|v| fmt_metric(m, v))
                    } else if let Some(t) = p
                        .texts
                        .iter()
                        .find(|x| x.0 == *label && &x.1 == c && &x.2 == m)
                    {
                        t.3.clone()
                    } else {
                        "—".into()
                    }
                })
                .collect();
            // A column with no stage at this row stays empty rather than a row of dashes.
            if parts.iter().all(|s| s == "—")
                && !p.cells.iter().any(|x| x.row == *rv && &x.column == c)
            {
                row.push(String::new());
            } else {
                row.push(parts.join(" / "));
            }
        }
        t.push(row);
    }
    t
}

pub fn build(spec: &ReportSpec, records: &[StageRecord]) -> Table {
    table(spec, &build_data(spec, records))
}

/// One warning per metric the report names (as `rows` or in `values`) that no finished
/// selected stage has. Metrics are known only once stages have run, so this is checked after
/// the run (the patterns themselves are checked at plan time); it stays quiet when no selected
/// stage finished, since then the failures say what went wrong.
pub fn missing_metrics(spec: &ReportSpec, records: &[StageRecord]) -> Vec<String> {
    let finished: Vec<&StageRecord> = records
        .iter()
        .filter(|r| matches!(r.status, StageStatus::Hit | StageStatus::Ran))
        .filter(|r| spec.select.iter().any(|p| glob(p, &r.name)))
        .collect();
    if finished.is_empty() {
        return Vec::new();
    }
    let known: BTreeSet<&str> = finished
        .iter()
        .filter_map(|r| r.metrics.as_object())
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let mut wanted: Vec<&str> = std::iter::once(spec.rows.as_str())
        .chain(spec.values.iter().map(String::as_str))
        .collect();
    wanted.dedup();
    wanted
        .into_iter()
        .filter(|m| !known.contains(m))
        .map(|m| {
            let hint = match did_you_mean(m, known.iter().copied()) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!(
                    "they have: {}",
                    known.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            };
            format!(
                "report: none of the {} selected stages has a metric `{m}`, so its cells are empty; {hint}",
                finished.len()
            )
        })
        .collect()
}

/// The report as Markdown with its title and a legend of what each cell holds.
pub fn render(spec: &ReportSpec, table: &Table) -> String {
    let mut out = String::new();
    if !spec.title.is_empty() {
        out.push_str(&format!("{}\n\n", spec.title));
    }
    out.push_str(&format!("cells: {}\n\n", spec.values.join(" / ")));
    out.push_str(&table.render_md());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StageStatus;
    use serde_json::json;

    pub(crate) fn rec(name: &str, metrics: serde_json::Value) -> StageRecord {
        StageRecord {
            name: name.into(),
            kind: "evaluate".into(),
            key: format!("{:0>64}", name.len()),
            status: StageStatus::Ran,
            duration_s: 1.0,
            params: json!({}),
            metrics,
            error: None,
            job: None,
            resumed_at: None,
        }
    }

    fn spec(replicates: Option<Vec<String>>) -> ReportSpec {
        ReportSpec {
            title: "t".into(),
            select: vec!["eval_dense".into(), "imp.*.eval_*".into()],
            rows: "remaining_pct".into(),
            values: vec!["accuracy".into(), "early_stop_iteration".into()],
            replicates,
        }
    }

    #[test]
    fn seeds_share_a_column_as_mean_std_n() {
        let records = vec![
            rec(
                "eval_dense",
                json!({"remaining_pct": 100.0, "accuracy": 0.98, "early_stop_iteration": 2500}),
            ),
            rec(
                "imp.1.eval_ticket[lr=0.1,seed=0]",
                json!({"remaining_pct": 80.0, "accuracy": 0.97, "early_stop_iteration": 2000}),
            ),
            rec(
                "imp.1.eval_ticket[lr=0.1,seed=1]",
                json!({"remaining_pct": 80.0, "accuracy": 0.95, "early_stop_iteration": 3000}),
            ),
            rec(
                "imp.1.eval_random[lr=0.1,seed=0]",
                json!({"remaining_pct": 80.0, "accuracy": 0.9, "early_stop_iteration": "n/a"}),
            ),
        ];
        let t = build(&spec(None), &records);
        assert_eq!(
            t.headers,
            vec![
                "remaining_pct",
                "eval_dense",
                "eval_ticket[lr=0.1]",
                "eval_random[lr=0.1]"
            ]
        );
        assert_eq!(
            t.rows,
            vec![
                vec![
                    "100.0".to_string(),
                    "0.9800 / 2500".into(),
                    String::new(),
                    String::new()
                ],
                vec![
                    "80.0".to_string(),
                    String::new(),
                    "0.9600 ± 0.0141 (2) / 2500 ± 707.1068 (2)".into(),
                    "0.9000 / n/a".into()
                ],
            ]
        );
        // With no replicate variables, each seed keeps its own column.
        let t = build(&spec(Some(vec![])), &records);
        assert_eq!(t.headers.len(), 5);
        assert_eq!(t.headers[2], "eval_ticket[lr=0.1,seed=0]");
        let p = build_data(&spec(None), &records);
        let c = p
            .cells
            .iter()
            .find(|c| c.column == "eval_ticket[lr=0.1]" && c.metric == "accuracy")
            .unwrap();
        assert_eq!((c.row, c.n), (80.0, 2));
        assert!((c.mean - 0.96).abs() < 1e-12);
    }
}
