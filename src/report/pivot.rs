//! The table a pipeline's `report:` asks for: one row per value of a metric (weights remaining,
//! say), one column per stage template and sweep member, cells holding the chosen metrics.

use std::collections::BTreeSet;

use super::{Table, fmt_value};
use crate::cache::{StageRecord, StageStatus};
use crate::spec::{Pipeline, ReportSpec, did_you_mean, glob_match as glob};

/// The column a stage falls in: its name within its level group plus its sweep members.
fn column_of(template: &str, assignment: &[(String, String)]) -> String {
    let base = template.rsplit('.').next().unwrap_or(template);
    if assignment.is_empty() {
        base.to_string()
    } else {
        let parts: Vec<String> = assignment.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{base}[{}]", parts.join(","))
    }
}

fn cell(rec: &StageRecord, values: &[String]) -> String {
    values
        .iter()
        .map(|v| match rec.metrics.get(v) {
            Some(x) if v.contains("acc") => x
                .as_f64()
                .map_or_else(|| fmt_value(x), |f| format!("{:.2}", f * 100.0)),
            Some(x) => fmt_value(x),
            None => "—".into(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

pub fn build(spec: &ReportSpec, pipeline: &Pipeline, records: &[StageRecord]) -> Table {
    let mut columns: Vec<String> = Vec::new();
    // (row value, row label, cells as (column, text))
    type Row = (f64, String, Vec<(String, String)>);
    let mut rows: Vec<Row> = Vec::new();
    for rec in records {
        if !spec.select.iter().any(|p| glob(p, &rec.name)) {
            continue;
        }
        let Some(inst) = pipeline.get(&rec.name) else {
            continue;
        };
        let col = column_of(&inst.template, &inst.assignment);
        if !columns.contains(&col) {
            columns.push(col.clone());
        }
        let Some(rv) = rec.metrics.get(&spec.rows).and_then(|v| v.as_f64()) else {
            continue;
        };
        let label = format!("{rv:.1}");
        let c = cell(rec, &spec.values);
        match rows.iter_mut().find(|(_, l, _)| *l == label) {
            Some((_, _, cells)) => cells.push((col, c)),
            None => rows.push((rv, label, vec![(col, c)])),
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut t = Table::new(std::iter::once(spec.rows.clone()).chain(columns.iter().cloned()));
    for (_, label, cells) in rows {
        let mut row = vec![label];
        for c in &columns {
            row.push(
                cells
                    .iter()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            );
        }
        t.push(row);
    }
    t
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
