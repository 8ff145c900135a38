//! A run's tables in the formats analysis tools read: CSV (RFC 4180, one header row) and JSON
//! (an array of objects, `pandas.read_json(orient="records")`). The tidy metrics table has one
//! row per (stage, metric) with the stage's sweep variables and parameters as columns, so
//! `pandas.read_csv` or `polars.read_csv` gives a frame ready for `groupby` / `pivot`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::names::StageName;
use super::series::PlotData;
use super::{ReportError, Table, pivot};
use crate::cache::RunRecord;

/// Columns and typed rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Records {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// The tables `pipe show RUN --table NAME` knows.
pub const TABLES: &[&str] = &["summary", "report", "metrics"];

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Records {
    pub fn to_csv(&self) -> Result<String, ReportError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let csv_err = |e: csv::Error| ReportError::Invalid(format!("CSV: {e}"));
        w.write_record(&self.columns).map_err(csv_err)?;
        for r in &self.rows {
            w.write_record(r.iter().map(cell_text)).map_err(csv_err)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| ReportError::Invalid(format!("CSV: {e}")))?;
        Ok(String::from_utf8(bytes).expect("CSV of UTF-8 strings"))
    }

    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    Value::Object(
                        self.columns
                            .iter()
                            .cloned()
                            .zip(r.iter().cloned())
                            .collect::<Map<String, Value>>(),
                    )
                })
                .collect(),
        )
    }

    pub fn to_table(&self) -> Table {
        let mut t = Table::new(self.columns.clone());
        for r in &self.rows {
            t.push(r.iter().map(super::fmt_value).collect());
        }
        t
    }

    /// A displayed table as records of strings.
    pub fn from_table(t: &Table) -> Records {
        Records {
            columns: t.headers.clone(),
            rows: t
                .rows
                .iter()
                .map(|r| r.iter().map(|c| Value::String(c.clone())).collect())
                .collect(),
        }
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// Arrays and objects as JSON text, so that every cell is a scalar.
fn scalar(v: &Value) -> Value {
    match v {
        Value::Array(_) | Value::Object(_) => Value::String(v.to_string()),
        other => other.clone(),
    }
}

/// One row per (stage, metric): run, stage, group, level, template, kind, key, status, each
/// sweep variable, each parameter (`param.` + its dotted path), metric, value.
pub fn tidy_metrics(run: &RunRecord) -> Records {
    let mut vars = BTreeSet::new();
    let mut params = BTreeSet::new();
    let parsed: Vec<(StageName, BTreeMap<String, Value>)> = run
        .stages
        .iter()
        .map(|s| {
            let n = StageName::parse(&s.name);
            for (k, _) in &n.assignment {
                vars.insert(k.clone());
            }
            let mut flat = BTreeMap::new();
            flatten("", &s.params, &mut flat);
            params.extend(flat.keys().cloned());
            (n, flat)
        })
        .collect();
    let mut columns: Vec<String> = [
        "run", "stage", "group", "level", "template", "kind", "key", "status",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    columns.extend(vars.iter().cloned());
    columns.extend(params.iter().map(|p| format!("param.{p}")));
    columns.push("metric".into());
    columns.push("value".into());
    let mut rows = Vec::new();
    for (s, (n, flat)) in run.stages.iter().zip(&parsed) {
        let Value::Object(metrics) = &s.metrics else {
            continue;
        };
        let mut head: Vec<Value> = vec![
            run.id.clone().into(),
            s.name.clone().into(),
            n.level
                .as_ref()
                .map_or(Value::Null, |(g, _)| g.clone().into()),
            n.level.as_ref().map_or(Value::Null, |(_, l)| (*l).into()),
            n.base.clone().into(),
            s.kind.clone().into(),
            s.key.clone().into(),
            s.status.as_str().into(),
        ];
        for v in &vars {
            head.push(n.value(v).map_or(Value::Null, |x| {
                // Sweep values as numbers where they are numbers, so a column of lrs is numeric.
                x.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(x.to_string()), Value::Number)
            }));
        }
        for p in &params {
            head.push(flat.get(p).map_or(Value::Null, scalar));
        }
        for (m, v) in metrics {
            let mut row = head.clone();
            row.push(m.clone().into());
            row.push(scalar(v));
            rows.push(row);
        }
    }
    Records { columns, rows }
}

/// The run's stages: name, kind, status, key, seconds, error.
pub fn summary(run: &RunRecord) -> Records {
    Records {
        columns: ["stage", "kind", "status", "key", "duration_s", "error"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: run
            .stages
            .iter()
            .map(|s| {
                vec![
                    s.name.clone().into(),
                    s.kind.clone().into(),
                    s.status.as_str().into(),
                    s.key.clone().into(),
                    serde_json::Number::from_f64((s.duration_s * 1000.0).round() / 1000.0)
                        .map_or(Value::Null, Value::Number),
                    s.error.clone().map_or(Value::Null, Value::String),
                ]
            })
            .collect(),
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// The report table in long form: row value, column, metric, mean, std, n.
pub fn report(run: &RunRecord) -> Option<Records> {
    let spec = run.report_spec.as_ref()?;
    let p = pivot::build_data(spec, &run.stages);
    Some(Records {
        columns: vec![
            spec.rows.clone(),
            "column".into(),
            "metric".into(),
            "mean".into(),
            "std".into(),
            "n".into(),
        ],
        rows: p
            .cells
            .iter()
            .map(|c| {
                vec![
                    number(c.row),
                    c.column.clone().into(),
                    c.metric.clone().into(),
                    number(c.mean),
                    number(c.std),
                    c.n.into(),
                ]
            })
            .collect(),
    })
}

/// A plot's data: series, x, y mean, std, n.
pub fn plot(d: &PlotData) -> Records {
    Records {
        columns: ["series", "x", "y", "std", "n"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: d
            .rows()
            .into_iter()
            .map(|(s, x, a)| {
                vec![
                    s.into(),
                    number(x),
                    number(a.mean),
                    number(a.std),
                    a.n.into(),
                ]
            })
            .collect(),
    }
}

/// One of [`TABLES`] by name.
pub fn table(run: &RunRecord, name: &str) -> Result<Records, ReportError> {
    match name {
        "summary" => Ok(summary(run)),
        "metrics" => Ok(tidy_metrics(run)),
        "report" => report(run).ok_or_else(|| {
            ReportError::Invalid(format!(
                "run {} has no report table (its pipeline declares no `report:`, or the run predates recorded report settings)",
                run.id
            ))
        }),
        other => Err(ReportError::Invalid(format!(
            "unknown table `{other}`; tables: {}",
            TABLES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{StageRecord, StageStatus};
    use serde_json::json;

    pub(crate) fn run() -> RunRecord {
        let st = |name: &str, kind: &str, params: Value, metrics: Value| StageRecord {
            name: name.into(),
            kind: kind.into(),
            key: format!("{:a>64}", ""),
            status: StageStatus::Ran,
            duration_s: 1.25,
            params,
            metrics,
            error: None,
            job: None,
            resumed_at: None,
        };
        RunRecord {
            id: "20260101-000000-abcd".into(),
            pipeline: "p".into(),
            files: vec![],
            overrides: vec![],
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 2.5,
            device: "cpu".into(),
            executor: None,
            outcome: "ok".into(),
            stages: vec![
                st(
                    "dense",
                    "train",
                    json!({"lr": 0.1, "data": {"dir": "d, with comma"}}),
                    json!({"test_acc": 0.9}),
                ),
                st(
                    "imp.2.eval[lr=6e-3,seed=1]",
                    "evaluate",
                    json!({"split": "test"}),
                    json!({"accuracy": 0.5, "note": "a \"quoted\" text"}),
                ),
            ],
            report: None,
            pipe_version: "t".into(),
            report_spec: None,
            plots: vec![],
            claims: vec![],
            sources: vec![],
        }
    }

    #[test]
    fn tidy_metrics_has_one_row_per_stage_and_metric() {
        let r = tidy_metrics(&run());
        assert_eq!(
            r.columns,
            vec![
                "run",
                "stage",
                "group",
                "level",
                "template",
                "kind",
                "key",
                "status",
                "lr",
                "seed",
                "param.data.dir",
                "param.lr",
                "param.split",
                "metric",
                "value"
            ]
        );
        assert_eq!(r.rows.len(), 3);
        let row = &r.rows[1];
        assert_eq!(row[1], json!("imp.2.eval[lr=6e-3,seed=1]"));
        assert_eq!(
            (&row[2], &row[3], &row[4]),
            (&json!("imp"), &json!(2), &json!("eval"))
        );
        assert_eq!((&row[8], &row[9]), (&json!(0.006), &json!(1.0)));
        assert_eq!((&row[13], &row[14]), (&json!("accuracy"), &json!(0.5)));
        let csv = r.to_csv().unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].contains(",\"d, with comma\",0.1,,test_acc,0.9"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].ends_with(",note,\"a \"\"quoted\"\" text\""),
            "{}",
            lines[3]
        );
        let js = r.to_json();
        assert_eq!(js[0]["param.lr"], json!(0.1));
        assert_eq!(js[0]["lr"], Value::Null);
    }

    #[test]
    fn unknown_and_missing_tables_are_explained() {
        let e = table(&run(), "metric").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown table `metric`; tables: summary, report, metrics"
        );
        assert!(
            table(&run(), "report")
                .unwrap_err()
                .to_string()
                .contains("no report table")
        );
        let s = table(&run(), "summary").unwrap();
        assert_eq!(s.rows[0][4], json!(1.25));
    }
}
