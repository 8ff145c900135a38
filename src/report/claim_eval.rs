//! Evaluating a pipeline's `claims:` against a run's stage records.
//!
//! Only the metrics the stages recorded are read (cache hits bring the metrics recorded when
//! they ran), so this knows nothing of stage kinds. A side is unknown, and with it the claim,
//! when a matched stage did not finish or lacks the metric, or when a `wins` pairing paired
//! nothing; the reason says which.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fmt_float;
use crate::cache::{StageRecord, StageStatus};
use crate::spec::claims::{Agg, ClaimSpec, Side, levels_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Held,
    Failed,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One stage's value of a side's metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageValue {
    pub stage: String,
    pub value: f64,
}

/// One `wins` pair and whether `a` beat `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairResult {
    pub a: String,
    pub b: String,
    pub a_value: f64,
    pub b_value: f64,
    pub a_wins: bool,
}

/// A side's number and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideResult {
    /// `None` when unknown.
    pub value: Option<f64>,
    /// How the value came about, for people: `mean of accuracy over 2 stages: …`.
    pub describe: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agg: Option<Agg>,
    /// How many values were aggregated (or pairs compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Sample standard deviation of the values (for `mean`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairResult>,
    /// Why the value is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A claim's outcome as the run record holds it (`claims` in runs/ID.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimResult {
    pub name: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub op: String,
    pub left: SideResult,
    pub right: SideResult,
}

/// Reads a record's `claims` leniently: entries in another shape (records written by other
/// tools, which `pipe report` still shows from the raw JSON) are left out rather than making
/// the whole record unreadable.
pub fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ClaimResult>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| serde_json::from_value(i).ok())
            .collect(),
        _ => Vec::new(),
    })
}

/// A metric of a record: the key itself, or a path into nested objects (`single.median`).
pub fn metric_of(metrics: &Value, name: &str) -> Option<f64> {
    if let Some(v) = metrics.get(name) {
        return v.as_f64();
    }
    let mut cur = metrics;
    for seg in name.split('.') {
        cur = cur.get(seg)?;
    }
    cur.as_f64()
}

/// A stage's value of `metric`, or why there is none.
fn stage_value(stages: &[StageRecord], name: &str, metric: &str) -> Result<f64, String> {
    let Some(s) = stages.iter().find(|s| s.name == name) else {
        return Err(format!("stage `{name}` is not in the run"));
    };
    match s.status {
        StageStatus::Hit | StageStatus::Ran => {}
        StageStatus::Failed => return Err(format!("stage `{name}` failed")),
        StageStatus::Skipped => {
            return Err(format!("stage `{name}` was skipped (an input failed)"));
        }
        StageStatus::NotRun => return Err(format!("stage `{name}` did not run")),
        StageStatus::Queued => return Err(format!("stage `{name}` is still queued")),
    }
    metric_of(&s.metrics, metric)
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("stage `{name}` has no numeric metric `{metric}`"))
}

fn unknown(describe: String, reason: String) -> SideResult {
    SideResult {
        value: None,
        describe,
        metric: None,
        agg: None,
        n: None,
        std: None,
        stages: vec![],
        pairs: vec![],
        reason: Some(reason),
    }
}

fn evaluate_side(side: &Side, stages: &[StageRecord]) -> SideResult {
    match side {
        Side::Number(x) => SideResult {
            value: Some(*x),
            describe: fmt_float(*x),
            metric: None,
            agg: None,
            n: None,
            std: None,
            stages: vec![],
            pairs: vec![],
            reason: None,
        },
        Side::Metric {
            stages: pattern,
            metric,
            agg,
            scale,
            offset,
            levels,
            matched,
        } => {
            let head = format!(
                "{} of {metric} over {} stage{} `{pattern}`{}",
                agg.as_str(),
                matched.len(),
                if matched.len() == 1 { "" } else { "s" },
                levels_text(levels)
            );
            let mut values = Vec::new();
            for name in matched {
                match stage_value(stages, name, metric) {
                    Ok(v) => values.push(StageValue {
                        stage: name.clone(),
                        value: v,
                    }),
                    Err(reason) => return unknown(head, reason),
                }
            }
            let xs: Vec<f64> = values.iter().map(|v| v.value).collect();
            let Some(raw) = agg.apply(&xs) else {
                return unknown(
                    head,
                    format!("`{pattern}` matched no stage{}", levels_text(levels)),
                );
            };
            let value = raw * scale + offset;
            let std = (*agg == Agg::Mean).then(|| Agg::Std.apply(&xs).unwrap_or(0.0));
            let listed = values
                .iter()
                .map(|v| format!("{} {}", v.stage, fmt_float(v.value)))
                .collect::<Vec<_>>()
                .join(", ");
            let mut describe = format!("{head}: {listed}");
            match std {
                // One stage: its value is the whole story (no `± 0 (n=1)`).
                _ if xs.len() == 1 => {}
                Some(s) => describe.push_str(&format!(
                    "; {} ± {} (n={})",
                    fmt_float(raw),
                    fmt_float(s),
                    xs.len()
                )),
                None => describe.push_str(&format!("; {} (n={})", fmt_float(raw), xs.len())),
            }
            if *scale != 1.0 {
                describe.push_str(&format!(" × {}", fmt_float(*scale)));
            }
            if *offset != 0.0 {
                describe.push_str(&format!(" + {}", fmt_float(*offset)));
            }
            SideResult {
                value: Some(value),
                describe,
                metric: Some(metric.clone()),
                agg: Some(*agg),
                n: Some(xs.len()),
                std,
                stages: values,
                pairs: vec![],
                reason: None,
            }
        }
        Side::Wins {
            a,
            b,
            metric,
            lower_is_better,
            levels,
            pairs,
        } => {
            let cmp = if *lower_is_better { "<" } else { ">" };
            let head = format!(
                "wins of `{a}` over `{b}`{} on {metric} (a {cmp} b)",
                levels_text(levels)
            );
            let out = match pair_values(a, b, levels, pairs, stages, metric, *lower_is_better) {
                Ok(out) => out,
                Err(reason) => return unknown(head, reason),
            };
            let wins = out.iter().filter(|p| p.a_wins).count();
            SideResult {
                value: Some(wins as f64),
                describe: format!("{head}: {wins} of {} pairs: {}", out.len(), listed(&out)),
                metric: Some(metric.clone()),
                agg: None,
                n: Some(out.len()),
                std: None,
                stages: vec![],
                pairs: out,
                reason: None,
            }
        }
        Side::Gap {
            a,
            b,
            metric,
            levels,
            pairs,
        } => {
            let head = format!("mean gap `{a}` − `{b}`{} on {metric}", levels_text(levels));
            let out = match pair_values(a, b, levels, pairs, stages, metric, false) {
                Ok(out) => out,
                Err(reason) => return unknown(head, reason),
            };
            let gaps: Vec<f64> = out.iter().map(|p| p.a_value - p.b_value).collect();
            let mean = crate::stats::mean(&gaps).expect("at least one pair");
            let std = Agg::Std.apply(&gaps).unwrap_or(0.0);
            SideResult {
                value: Some(mean),
                describe: format!(
                    "{head}: {} ± {} over {} pairs: {}",
                    fmt_float(mean),
                    fmt_float(std),
                    out.len(),
                    listed(&out)
                ),
                metric: Some(metric.clone()),
                agg: Some(Agg::Mean),
                n: Some(out.len()),
                std: Some(std),
                stages: vec![],
                pairs: out,
                reason: None,
            }
        }
    }
}

/// Both stages' values of every (a, b) pair; `a_wins` is a < b with `lower_is_better`, else
/// a > b. Unknown (with the reason) when there are no pairs or a stage has no value.
fn pair_values(
    a: &str,
    b: &str,
    levels: &Option<[u32; 2]>,
    pairs: &[(String, String)],
    stages: &[StageRecord],
    metric: &str,
    lower_is_better: bool,
) -> Result<Vec<PairResult>, String> {
    if pairs.is_empty() {
        return Err(format!(
            "`{a}` and `{b}` have no stages with the same level and shared sweep values to pair{}",
            levels_text(levels)
        ));
    }
    pairs
        .iter()
        .map(|(sa, sb)| {
            let va = stage_value(stages, sa, metric)?;
            let vb = stage_value(stages, sb, metric)?;
            Ok(PairResult {
                a: sa.clone(),
                b: sb.clone(),
                a_value: va,
                b_value: vb,
                a_wins: if lower_is_better { va < vb } else { va > vb },
            })
        })
        .collect()
}

/// `a 0.97 vs b 0.95, …` for a side's description.
fn listed(pairs: &[PairResult]) -> String {
    pairs
        .iter()
        .map(|p| {
            format!(
                "{} {} vs {} {}",
                p.a,
                fmt_float(p.a_value),
                p.b,
                fmt_float(p.b_value)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every claim's outcome against the stages of one run.
pub fn evaluate(claims: &[ClaimSpec], stages: &[StageRecord]) -> Vec<ClaimResult> {
    claims
        .iter()
        .map(|c| {
            let left = evaluate_side(&c.left, stages);
            let right = evaluate_side(&c.right, stages);
            let outcome = match (left.value, right.value) {
                (Some(l), Some(r)) if c.op.holds(l, r) => Outcome::Held,
                (Some(_), Some(_)) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            ClaimResult {
                name: c.name.clone(),
                outcome,
                text: c.text.clone(),
                source: c.source.clone(),
                op: c.op.as_str().into(),
                left,
                right,
            }
        })
        .collect()
}

fn side_text(s: &SideResult) -> String {
    match &s.reason {
        Some(r) => format!("{}: unknown, {r}", s.describe),
        None => s.describe.clone(),
    }
}

/// `claim NAME: held  0.8 >= 0.5  (left = …; right = …)`, the line `pipe run` prints.
pub fn line(c: &ClaimResult) -> String {
    let v = |s: &SideResult| s.value.map_or_else(|| "?".to_string(), fmt_float);
    let outcome = match c.outcome {
        Outcome::Failed => "FAILED",
        o => o.as_str(),
    };
    format!(
        "claim {}: {outcome}  {} {} {}  (left = {}; right = {})",
        c.name,
        v(&c.left),
        c.op,
        v(&c.right),
        side_text(&c.left),
        side_text(&c.right)
    )
}

/// The numbers a claim turns on, for diffs: (field, value) of its outcome and both sides.
pub fn diff_fields(c: &ClaimResult) -> Vec<(&'static str, Value)> {
    let num = |x: Option<f64>| x.map_or(Value::Null, Value::from);
    vec![
        ("outcome", Value::from(c.outcome.as_str())),
        ("left", num(c.left.value)),
        ("op", Value::from(c.op.clone())),
        ("right", num(c.right.value)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::claims::Op;
    use crate::spec::diag::{Loc, SourceFile};
    use serde_json::json;
    use std::sync::Arc;

    fn rec(name: &str, status: StageStatus, metrics: Value) -> StageRecord {
        StageRecord {
            name: name.into(),
            kind: "evaluate".into(),
            key: "0".repeat(64),
            status,
            duration_s: 0.0,
            params: Value::Null,
            metrics,
            error: None,
            job: None,
            resumed_at: None,
        }
    }

    fn claim(left: Side, op: Op, right: Side) -> ClaimSpec {
        ClaimSpec {
            name: "c".into(),
            text: None,
            source: None,
            left,
            op,
            right,
            loc: Loc {
                file: Arc::new(SourceFile {
                    path: "t.yaml".into(),
                    text: String::new(),
                }),
                line: 1,
                col: 1,
            },
        }
    }

    fn metric(matched: &[&str], agg: Agg) -> Side {
        Side::Metric {
            stages: "e*".into(),
            metric: "acc".into(),
            agg,
            scale: 1.0,
            offset: 0.0,
            levels: None,
            matched: matched.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_claim_holds_fails_or_is_unknown_with_its_reason() {
        let stages = vec![
            rec(
                "e1",
                StageStatus::Ran,
                json!({"acc": 0.5, "nested": {"x": 2}}),
            ),
            rec("e2", StageStatus::Hit, json!({"acc": 0.7})),
            rec("e3", StageStatus::Failed, Value::Null),
        ];
        let held = evaluate(
            &[claim(
                metric(&["e1", "e2"], Agg::Mean),
                Op::Gt,
                Side::Number(0.5),
            )],
            &stages,
        );
        assert_eq!(held[0].outcome, Outcome::Held);
        assert_eq!(held[0].left.n, Some(2));
        assert!((held[0].left.value.unwrap() - 0.6).abs() < 1e-12);
        assert!((held[0].left.std.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            line(&held[0]),
            "claim c: held  0.6 > 0.5  (left = mean of acc over 2 stages `e*`: e1 0.5, e2 0.7; 0.6 ± 0.1414 (n=2); right = 0.5)"
        );
        // One stage: its value, without a spread over one.
        let one = evaluate(
            &[claim(metric(&["e2"], Agg::Mean), Op::Gt, Side::Number(0.5))],
            &stages,
        );
        assert_eq!(
            line(&one[0]),
            "claim c: held  0.7 > 0.5  (left = mean of acc over 1 stage `e*`: e2 0.7; right = 0.5)"
        );
        let failed = evaluate(
            &[claim(
                metric(&["e1", "e2"], Agg::Max),
                Op::Gt,
                Side::Number(2.0),
            )],
            &stages,
        );
        assert_eq!(failed[0].outcome, Outcome::Failed);
        let unknown = evaluate(
            &[claim(
                metric(&["e1", "e3"], Agg::Mean),
                Op::Gt,
                Side::Number(0.0),
            )],
            &stages,
        );
        assert_eq!(unknown[0].outcome, Outcome::Unknown);
        assert_eq!(unknown[0].left.reason.as_deref(), Some("stage `e3` failed"));
        assert_eq!(metric_of(&stages[0].metrics, "nested.x"), Some(2.0));
    }

    #[test]
    fn wins_count_pairs_where_a_beats_b() {
        let stages = vec![
            rec("a[seed=1]", StageStatus::Ran, json!({"acc": 0.9})),
            rec("a[seed=2]", StageStatus::Ran, json!({"acc": 0.4})),
            rec("b[seed=1]", StageStatus::Ran, json!({"acc": 0.8})),
            rec("b[seed=2]", StageStatus::Ran, json!({"acc": 0.5})),
        ];
        let wins = |lower_is_better, pairs: Vec<(String, String)>| Side::Wins {
            a: "a*".into(),
            b: "b*".into(),
            metric: "acc".into(),
            lower_is_better,
            levels: None,
            pairs,
        };
        let pairs = vec![
            ("a[seed=1]".to_string(), "b[seed=1]".to_string()),
            ("a[seed=2]".to_string(), "b[seed=2]".to_string()),
        ];
        let r = evaluate(
            &[
                claim(wins(false, pairs.clone()), Op::Ge, Side::Number(2.0)),
                claim(wins(true, pairs), Op::Eq, Side::Number(1.0)),
                claim(wins(false, vec![]), Op::Ge, Side::Number(0.0)),
            ],
            &stages,
        );
        assert_eq!(r[0].outcome, Outcome::Failed);
        assert_eq!(r[0].left.value, Some(1.0));
        assert_eq!(
            r[0].left.pairs.iter().map(|p| p.a_wins).collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(r[1].outcome, Outcome::Held);
        assert_eq!(r[2].outcome, Outcome::Unknown);
    }

    #[test]
    fn a_gap_is_the_mean_paired_difference() {
        let stages = vec![
            rec("a[seed=1]", StageStatus::Ran, json!({"acc": 0.75})),
            rec("a[seed=2]", StageStatus::Ran, json!({"acc": 0.5})),
            rec("b[seed=1]", StageStatus::Ran, json!({"acc": 0.5})),
            rec("b[seed=2]", StageStatus::Ran, json!({"acc": 0.625})),
            rec("b[seed=3]", StageStatus::Failed, json!({})),
        ];
        let gap = |pairs: &[(&str, &str)]| Side::Gap {
            a: "a*".into(),
            b: "b*".into(),
            metric: "acc".into(),
            levels: Some([2, 3]),
            pairs: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let both = [("a[seed=1]", "b[seed=1]"), ("a[seed=2]", "b[seed=2]")];
        let r = evaluate(
            &[
                claim(gap(&both), Op::Gt, Side::Number(0.0)),
                claim(
                    gap(&[("a[seed=1]", "b[seed=3]")]),
                    Op::Gt,
                    Side::Number(0.0),
                ),
            ],
            &stages,
        );
        // (0.25 + (−0.125)) / 2, exact in binary.
        assert_eq!(r[0].left.value, Some(0.0625));
        assert_eq!(r[0].outcome, Outcome::Held);
        assert_eq!(r[0].left.n, Some(2));
        assert!(
            r[0].left
                .describe
                .starts_with("mean gap `a*` − `b*` at levels 2–3 on acc: 0.0625"),
            "{}",
            r[0].left.describe
        );
        assert_eq!(r[1].outcome, Outcome::Unknown);
        assert_eq!(
            r[1].left.reason.as_deref(),
            Some("stage `b[seed=3]` failed")
        );
    }
}
