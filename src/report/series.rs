//! From a run's stage records to the lines of a plot: stages selected by pattern, split into
//! series by sweep variables, stage templates or labelled patterns, replicates (seeds) folded
//! into one point as mean ± std (n). Learning curves come from each stage's `curve.json`.

use serde::Serialize;
use serde_json::Value;

use super::names::StageName;
use super::stats::Agg;
use crate::cache::{StageRecord, StageStatus};
use crate::spec::{PlotSpec, SeriesBy, glob_match};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: Agg,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
    /// Drawn dashed (the second run of `pipe diff --plots`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dashed: bool,
    /// Index into the palette; series of two runs with the same label share a colour.
    #[serde(skip)]
    pub colour: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    pub label: String,
    pub y: Agg,
}

/// Everything needed to draw one figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlotData {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub error_bars: bool,
    pub series: Vec<Series>,
    pub baselines: Vec<Baseline>,
    /// What could not be plotted and why (missing metrics, missing curves).
    pub notes: Vec<String>,
}

impl PlotData {
    pub fn point_count(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// One row per point: series, x, y mean, std, n — the figure's data as a table.
    pub fn rows(&self) -> Vec<(String, f64, Agg)> {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| (s.label.clone(), p.x, p.y)))
            .collect()
    }
}

/// Reads a stage's learning curve (rows of curve.json), or `None` if it has none.
pub type CurveReader<'a> = dyn Fn(&StageRecord) -> Option<Vec<Value>> + 'a;

fn usable(r: &StageRecord) -> bool {
    matches!(r.status, StageStatus::Ran | StageStatus::Hit)
}

/// The series label of a stage, or `None` when a pattern part leaves it out of the plot.
fn label_of(spec: &PlotSpec, rec: &StageRecord, name: &StageName) -> Option<String> {
    let mut parts = Vec::new();
    for s in &spec.series {
        match s {
            SeriesBy::Key(k) if k == "stage" => parts.push(name.base.clone()),
            SeriesBy::Key(k) => {
                if let Some(v) = name.value(k) {
                    parts.push(format!("{k}={v}"));
                }
            }
            SeriesBy::Patterns(m) => {
                let hit = m
                    .iter()
                    .find(|(_, pats)| pats.0.iter().any(|p| glob_match(p, &rec.name)))?;
                parts.push(hit.0.clone());
            }
        }
    }
    Some(parts.join(" "))
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|f| f.is_finite())
}

/// One point's values: (series label, point id), then its xs and ys (replicates).
type Slot = ((String, String), Vec<f64>, Vec<f64>);

/// Values of (series label, point identity, x) → ys, kept in first-seen order.
#[derive(Default)]
struct Groups {
    slots: Vec<Slot>,
    order: Vec<String>,
}

impl Groups {
    fn add(&mut self, label: &str, point: String, x: f64, y: f64) {
        if !self.order.iter().any(|l| l == label) {
            self.order.push(label.to_string());
        }
        let key = (label.to_string(), point);
        match self.slots.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, xs, ys)) => {
                xs.push(x);
                ys.push(y);
            }
            None => self.slots.push((key, vec![x], vec![y])),
        }
    }

    fn series(self) -> Vec<Series> {
        self.order
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let mut points: Vec<Point> = self
                    .slots
                    .iter()
                    .filter(|((l, _), _, _)| l == label)
                    .filter_map(|(_, xs, ys)| {
                        Some(Point {
                            x: Agg::of(xs)?.mean,
                            y: Agg::of(ys)?,
                        })
                    })
                    .collect();
                points.sort_by(|a, b| a.x.total_cmp(&b.x));
                Series {
                    label: label.clone(),
                    points,
                    dashed: false,
                    colour: i,
                }
            })
            .collect()
    }
}

pub fn build(spec: &PlotSpec, records: &[StageRecord], curves: &CurveReader) -> PlotData {
    let selected: Vec<&StageRecord> = records
        .iter()
        .filter(|r| usable(r) && spec.select.iter().any(|p| glob_match(p, &r.name)))
        .collect();
    let mut groups = Groups::default();
    let mut notes = Vec::new();
    let multi_y = spec.y.0.len() > 1;
    let mut missing: Vec<(&str, usize)> = Vec::new();
    let mut note_missing = |what: &'static str| match missing.iter_mut().find(|(w, _)| *w == what) {
        Some((_, n)) => *n += 1,
        None => missing.push((what, 1)),
    };
    for rec in &selected {
        let name = StageName::parse(&rec.name);
        let Some(mut label) = label_of(spec, rec, &name) else {
            continue;
        };
        if spec.series.is_empty() && spec.curve {
            label = name.without(|v| spec.is_replicate(v));
        }
        let point_id = name.without(|v| spec.is_replicate(v));
        for y in &spec.y.0 {
            let series = match (multi_y, label.is_empty()) {
                (true, true) => y.clone(),
                (true, false) => format!("{label} · {y}"),
                (false, _) => label.clone(),
            };
            if spec.curve {
                let Some(rows) = curves(rec) else {
                    note_missing("curve");
                    continue;
                };
                for row in rows {
                    if let (Some(xv), Some(yv)) = (num(row.get(&spec.x)), num(row.get(y))) {
                        // The curve's x is the point identity: replicates align on iterations.
                        groups.add(&series, format!("{xv}"), xv, yv * spec.y_scale);
                    }
                }
            } else {
                match (num(rec.metrics.get(&spec.x)), num(rec.metrics.get(y))) {
                    (Some(xv), Some(yv)) => {
                        groups.add(&series, point_id.clone(), xv, yv * spec.y_scale)
                    }
                    (None, _) => note_missing("x"),
                    (_, None) => note_missing("y"),
                }
            }
        }
    }
    for (what, n) in missing {
        notes.push(match what {
            "curve" => {
                format!("{n} selected stage(s) have no curve.json (only train stages write one)")
            }
            "x" => format!("{n} selected stage(s) have no numeric metric `{}`", spec.x),
            _ => format!(
                "{n} selected stage(s) lack a numeric metric among `{}`",
                spec.y.0.join("`, `")
            ),
        });
    }
    if selected.is_empty() {
        notes.push("no finished stage of this run matches `select`".into());
    }
    let mut baselines = Vec::new();
    for p in &spec.baseline {
        let ys: Vec<f64> = records
            .iter()
            .filter(|r| usable(r) && glob_match(p, &r.name))
            .filter_map(|r| num(r.metrics.get(&spec.y.0[0])))
            .map(|y| y * spec.y_scale)
            .collect();
        if let Some(y) = Agg::of(&ys) {
            baselines.push(Baseline {
                label: p.clone(),
                y,
            });
        }
    }
    PlotData {
        name: spec.name.clone(),
        title: if spec.title.is_empty() {
            spec.name.clone()
        } else {
            spec.title.clone()
        },
        x_label: spec.x_label.clone().unwrap_or_else(|| spec.x.clone()),
        y_label: spec
            .y_label
            .clone()
            .unwrap_or_else(|| default_y_label(spec)),
        log_x: spec.log_x,
        log_y: spec.log_y,
        error_bars: spec.error_bars,
        series: groups.series(),
        baselines,
        notes,
    }
}

/// Learning curves that no pipeline declared: the stages matching `pattern`, loss and
/// accuracy against iterations.
pub fn implicit_curves(pattern: &str) -> Vec<PlotSpec> {
    let make = |name: &str, title: &str, y: &[&str]| PlotSpec {
        name: name.into(),
        title: format!("{title}: {pattern}"),
        select: vec![pattern.into()],
        x: "iteration".into(),
        y: crate::spec::plots::OneOrMany(y.iter().map(|s| s.to_string()).collect()),
        series: vec![],
        log_x: false,
        log_y: false,
        curve: true,
        replicates: None,
        error_bars: true,
        baseline: vec![],
        y_scale: 1.0,
        x_label: None,
        y_label: None,
    };
    vec![
        make(
            "curves_loss",
            "Learning curves (loss)",
            &["train_loss", "val_loss"],
        ),
        make(
            "curves_accuracy",
            "Learning curves (accuracy)",
            &["val_acc", "test_acc"],
        ),
    ]
}

/// Two runs' versions of one plot in one figure: A solid, B dashed, same colour per label.
pub fn overlay(a: &PlotData, b: &PlotData, a_label: &str, b_label: &str) -> PlotData {
    let mut labels: Vec<&str> = Vec::new();
    for s in a.series.iter().chain(&b.series) {
        if !labels.contains(&s.label.as_str()) {
            labels.push(&s.label);
        }
    }
    let colour = |l: &str| labels.iter().position(|x| *x == l).unwrap_or(0);
    let tag = |run: &str, s: &Series, dashed: bool| Series {
        label: if s.label.is_empty() {
            run.to_string()
        } else {
            format!("{run}: {}", s.label)
        },
        points: s.points.clone(),
        dashed,
        colour: colour(&s.label),
    };
    let mut out = a.clone();
    out.title = format!("{} ({a_label} solid, {b_label} dashed)", a.title);
    out.series = a
        .series
        .iter()
        .map(|s| tag(a_label, s, false))
        .chain(b.series.iter().map(|s| tag(b_label, s, true)))
        .collect();
    out.baselines = a
        .baselines
        .iter()
        .map(|x| Baseline {
            label: format!("{a_label}: {}", x.label),
            y: x.y,
        })
        .chain(b.baselines.iter().map(|x| Baseline {
            label: format!("{b_label}: {}", x.label),
            y: x.y,
        }))
        .collect();
    out.notes = a
        .notes
        .iter()
        .map(|n| format!("{a_label}: {n}"))
        .chain(b.notes.iter().map(|n| format!("{b_label}: {n}")))
        .collect();
    out
}

/// The y axis names the metric and, when the values are scaled, how: a fraction times 100 reads
/// as a percentage, so that an axis in percent never sits under a bare metric name.
fn default_y_label(spec: &PlotSpec) -> String {
    let names = spec.y.0.join(", ");
    if spec.y_scale == 1.0 {
        names
    } else if spec.y_scale == 100.0 {
        format!("{names} (%)")
    } else {
        format!("{names} (× {})", spec.y_scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::plots::OneOrMany;
    use serde_json::json;

    fn rec(name: &str, metrics: Value) -> StageRecord {
        StageRecord {
            name: name.into(),
            kind: "evaluate".into(),
            key: "0".repeat(64),
            status: StageStatus::Ran,
            duration_s: 1.0,
            params: json!({}),
            metrics,
            error: None,
            job: None,
            resumed_at: None,
        }
    }

    fn spec() -> PlotSpec {
        let mut s = implicit_curves("x").remove(0);
        s.name = "acc".into();
        s.title = String::new();
        s.curve = false;
        s.select = vec!["imp.*.eval_*".into()];
        s.x = "remaining_pct".into();
        s.y = OneOrMany(vec!["accuracy".into()]);
        s.series = vec![SeriesBy::Key("stage".into()), SeriesBy::Key("lr".into())];
        s.baseline = vec!["eval_dense".into()];
        s.y_scale = 100.0;
        s
    }

    #[test]
    fn series_by_template_and_variable_with_seeds_folded() {
        let records = vec![
            rec(
                "eval_dense",
                json!({"remaining_pct": 100.0, "accuracy": 0.98}),
            ),
            rec(
                "imp.1.eval_ticket[lr=0.1,seed=0]",
                json!({"remaining_pct": 80.0, "accuracy": 0.97}),
            ),
            rec(
                "imp.1.eval_ticket[lr=0.1,seed=1]",
                json!({"remaining_pct": 80.0, "accuracy": 0.95}),
            ),
            rec(
                "imp.2.eval_ticket[lr=0.1,seed=0]",
                json!({"remaining_pct": 64.0, "accuracy": 0.96}),
            ),
            rec(
                "imp.1.eval_random[lr=0.1,seed=0]",
                json!({"remaining_pct": 80.0}),
            ),
        ];
        let d = build(&spec(), &records, &|_| None);
        assert_eq!(d.title, "acc");
        assert_eq!(d.y_label, "accuracy (%)", "y_scale 100 reads as percent");
        assert_eq!(d.series.len(), 1, "eval_random has no accuracy: no series");
        let s = &d.series[0];
        assert_eq!(s.label, "eval_ticket lr=0.1");
        assert_eq!(
            s.points.iter().map(|p| (p.x, p.y.n)).collect::<Vec<_>>(),
            vec![(64.0, 1), (80.0, 2)]
        );
        assert!((s.points[1].y.mean - 96.0).abs() < 1e-9);
        assert!((s.points[1].y.std - 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(d.baselines.len(), 1);
        assert!((d.baselines[0].y.mean - 98.0).abs() < 1e-9);
        assert_eq!(
            d.notes,
            vec!["1 selected stage(s) lack a numeric metric among `accuracy`".to_string()]
        );
    }

    #[test]
    fn the_y_axis_says_how_its_values_are_scaled() {
        let mut s = spec();
        s.y_scale = 1.0;
        assert_eq!(default_y_label(&s), "accuracy");
        s.y_scale = 1000.0;
        assert_eq!(default_y_label(&s), "accuracy (× 1000)");
        s.y_label = Some("top-1".into());
        assert_eq!(
            build(&s, &[], &|_| None).y_label,
            "top-1",
            "a given label is kept"
        );
    }

    #[test]
    fn learning_curves_from_curve_json_and_overlay() {
        let mut s = implicit_curves("dense").remove(0);
        s.y = OneOrMany(vec!["val_loss".into()]);
        let records = vec![rec("dense", json!({})), rec("other", json!({}))];
        let reader = |r: &StageRecord| {
            (r.name == "dense").then(|| {
                vec![
                    json!({"iteration": 0, "val_loss": 2.3}),
                    json!({"iteration": 10, "val_loss": 1.1}),
                    json!({"iteration": 20, "val_loss": null}),
                ]
            })
        };
        let d = build(&s, &records, &reader);
        assert_eq!(d.series.len(), 1);
        assert_eq!(d.series[0].label, "dense");
        assert_eq!(
            d.series[0]
                .points
                .iter()
                .map(|p| (p.x, p.y.mean))
                .collect::<Vec<_>>(),
            vec![(0.0, 2.3), (10.0, 1.1)]
        );
        let o = overlay(&d, &d, "A", "B");
        assert_eq!(
            o.series
                .iter()
                .map(|s| (s.label.as_str(), s.dashed, s.colour))
                .collect::<Vec<_>>(),
            vec![("A: dense", false, 0), ("B: dense", true, 0)]
        );
    }
}
