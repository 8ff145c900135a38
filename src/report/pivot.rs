//! The table a pipeline's `report:` asks for: one row per value of a metric (weights remaining,
//! say), one column per stage template and sweep member, cells holding the chosen metrics.

use super::{Table, fmt_value};
use crate::cache::StageRecord;
use crate::spec::{Pipeline, ReportSpec, glob_match as glob};

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
