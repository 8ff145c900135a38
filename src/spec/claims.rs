//! `claims:` — what a pipeline says its results show, written as code.
//!
//! ```yaml
//! claims:
//!   repr_beats_standard:
//!     text: "RePr training ends with a higher test accuracy than standard training"
//!     source: "Prakash et al. 2019, Table 1"
//!     left:  {stages: "eval_repr*", metric: accuracy, agg: mean}
//!     op: ">"
//!     right: {stages: "eval_std*", metric: accuracy, agg: mean, scale: 1.0, offset: 0.0}
//!   repr_wins_every_seed:
//!     left:  {wins: {a: "eval_repr*", b: "eval_std*", metric: accuracy}}
//!     op: ">="
//!     right: 3
//! ```
//!
//! Claims are views: nothing here reaches a stage key. They are checked against the expanded
//! stages when the pipeline loads (a pattern that matches nothing, an unknown `op` or `agg`, a
//! `wins` pairing that is ambiguous), and evaluated against the run's stage metrics after a run
//! (`crate::report::claims::evaluate`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Instance;
use super::diag::{Diagnostic, Loc, choices_hint, did_you_mean};
use super::expand::glob_match;
use super::yaml::{Node, NodeKind, Scalar};

/// How the two sides compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

pub const OPS: &[&str] = &["<", "<=", ">", ">=", "==", "!="];

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether `l op r` holds (exact comparison: counts and thresholds, no tolerance).
    pub fn holds(self, l: f64, r: f64) -> bool {
        match self {
            Op::Lt => l < r,
            Op::Le => l <= r,
            Op::Gt => l > r,
            Op::Ge => l >= r,
            Op::Eq => l == r,
            Op::Ne => l != r,
        }
    }
}

/// How a metric over several stages becomes one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    Mean,
    Median,
    Min,
    Max,
    /// Sample standard deviation (n − 1 in the denominator; 0 for one value).
    Std,
    Sum,
    Count,
}

pub const AGGS: &[&str] = &["mean", "median", "min", "max", "std", "sum", "count"];

impl Agg {
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "mean" => Agg::Mean,
            "median" => Agg::Median,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "std" => Agg::Std,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        AGGS[self as usize]
    }

    /// The aggregate of `values`; `None` for no values (a count of none is 0).
    pub fn apply(self, values: &[f64]) -> Option<f64> {
        let n = values.len();
        if self == Agg::Count {
            return Some(n as f64);
        }
        if n == 0 {
            return None;
        }
        Some(match self {
            Agg::Mean => crate::stats::mean(values)?,
            Agg::Sum => values.iter().sum(),
            Agg::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Agg::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Agg::Median => crate::stats::median(values)?,
            Agg::Std => crate::stats::sample_std(values)?,
            Agg::Count => unreachable!("handled above"),
        })
    }
}

/// One side of a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Side {
    Number(f64),
    /// `agg(metric over the matched stages) * scale + offset`.
    Metric {
        stages: String,
        metric: String,
        agg: Agg,
        scale: f64,
        offset: f64,
        /// Only stages of these levels (inclusive), when given.
        levels: Option<[u32; 2]>,
        /// The expanded stages the pattern matches, in pipeline order.
        matched: Vec<String>,
    },
    /// How many (a, b) pairs have a better than b.
    Wins {
        a: String,
        b: String,
        metric: String,
        lower_is_better: bool,
        levels: Option<[u32; 2]>,
        /// (a-stage, b-stage), paired on the level and sweep values they share.
        pairs: Vec<(String, String)>,
    },
    /// The mean of `a − b` over the (a, b) pairs (paired as for `Wins`): by how much a
    /// beats b, on average over the levels or seeds.
    Gap {
        a: String,
        b: String,
        metric: String,
        levels: Option<[u32; 2]>,
        pairs: Vec<(String, String)>,
    },
}

/// ` at levels 7–15`, for a side's description; empty without a level filter.
pub fn levels_text(levels: &Option<[u32; 2]>) -> String {
    match levels {
        Some([a, b]) if a == b => format!(" at level {a}"),
        Some([a, b]) => format!(" at levels {a}–{b}"),
        None => String::new(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimSpec {
    pub name: String,
    pub text: Option<String>,
    pub source: Option<String>,
    pub left: Side,
    pub op: Op,
    pub right: Side,
    /// Where the claim is written (the key under `claims:`).
    pub loc: Loc,
}

const CLAIM_FIELDS: &[&str] = &["text", "source", "left", "op", "right"];
const METRIC_FIELDS: &[&str] = &["stages", "metric", "agg", "scale", "offset", "levels"];
const WINS_FIELDS: &[&str] = &["a", "b", "metric", "lower_is_better", "levels"];
const GAP_FIELDS: &[&str] = &["a", "b", "metric", "levels"];

fn number(n: &Node) -> Option<f64> {
    match &n.kind {
        NodeKind::Scalar(Scalar::Int(i)) => Some(*i as f64),
        NodeKind::Scalar(Scalar::Float(f)) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// A hint for a pattern that matches no stage: the closest names, then the stages there are.
fn pattern_hint(p: &str, names: &[&str]) -> String {
    const SHOWN: usize = 12;
    let close = did_you_mean(p, names.iter().copied())
        .map(|m| format!("did you mean `{m}`? "))
        .or_else(|| {
            // The part before the first `*` usually names the stage; compare names with it.
            let stem = p.split('*').next().unwrap_or(p);
            did_you_mean(
                stem,
                names.iter().map(|&n| n.split('[').next().unwrap_or(n)),
            )
            .map(|m| format!("did you mean `{m}*`? "))
        })
        .unwrap_or_default();
    let mut list = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    format!("{close}the stages are {list}; `*` matches any run of characters")
}

struct Checker<'a> {
    claim: &'a str,
    instances: &'a [Instance],
    names: Vec<&'a str>,
    errors: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    fn err(&mut self, loc: &Loc, msg: String, hint: String) {
        self.errors
            .push(Diagnostic::at(loc, format!("claim `{}`: {msg}", self.claim)).hint(hint));
    }

    fn unknown_fields(&mut self, node: &Node, valid: &[&str], what: &str) {
        for (k, _) in node.as_map().into_iter().flatten() {
            if !valid.contains(&k.name.as_str()) {
                self.err(
                    &k.loc,
                    format!("unknown field `{}` in {what}", k.name),
                    choices_hint(&k.name, valid),
                );
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str, what: &str) -> Option<String> {
        match node.get(field) {
            None => {
                self.err(
                    &node.loc,
                    format!("{what} has no `{field}`"),
                    format!("add `{field}: ...` (see README, \"Claims\")"),
                );
                None
            }
            Some(v) => match &v.kind {
                NodeKind::Scalar(Scalar::Str(s)) if !s.is_empty() => Some(s.clone()),
                _ => {
                    self.err(
                        &v.loc,
                        format!(
                            "`{field}` must be a non-empty string, found {}",
                            v.type_name()
                        ),
                        format!("e.g. `{field}: accuracy`"),
                    );
                    None
                }
            },
        }
    }

    fn matched(&mut self, pattern: &str, at: &Loc, levels: Option<[u32; 2]>) -> Vec<&'a Instance> {
        let instances: &'a [Instance] = self.instances;
        let m: Vec<&'a Instance> = instances
            .iter()
            .filter(|i| glob_match(pattern, &i.name))
            .collect();
        if m.is_empty() {
            let hint = pattern_hint(pattern, &self.names);
            self.err(at, format!("`{pattern}` matches no stage"), hint);
            return m;
        }
        let Some([lo, hi]) = levels else {
            return m;
        };
        let kept: Vec<&'a Instance> = m
            .iter()
            .copied()
            .filter(|i| i.level.as_ref().is_some_and(|(_, l)| (lo..=hi).contains(l)))
            .collect();
        // Stages outside any level group cannot be at a level: that is a mistake in the claim.
        // Levels the run lacks are not: `-S levels.imp.count=3` leaves a claim about levels
        // 7–15 nothing to check, and `count=10` only part of it; either way the claim comes
        // out `unknown` (saying so), not an error, and never judged on part of its range.
        if m.iter().all(|i| i.level.is_none()) {
            self.err(
                at,
                format!("`{pattern}` matches no stage{}", levels_text(&levels)),
                "its stages are not in a `levels:` group; drop `levels`".into(),
            );
        }
        let present = |l: u32| {
            kept.iter()
                .any(|i| i.level.as_ref().is_some_and(|(_, k)| *k == l))
        };
        if !(lo..=hi).all(present) {
            return Vec::new();
        }
        kept
    }

    /// `levels: [FROM, TO]` (inclusive) or `levels: N`: only stages of those levels.
    fn levels(&mut self, node: &Node) -> Option<Option<[u32; 2]>> {
        let Some(v) = node.get("levels") else {
            return Some(None);
        };
        let level = |n: &Node| match &n.kind {
            NodeKind::Scalar(Scalar::Int(i)) if *i >= 1 => u32::try_from(*i).ok(),
            _ => None,
        };
        let range = match &v.kind {
            NodeKind::Seq(items) if items.len() == 2 => level(&items[0])
                .zip(level(&items[1]))
                .map(|(a, b)| [a, b])
                .filter(|[a, b]| a <= b),
            _ => level(v).map(|l| [l, l]),
        };
        if range.is_none() {
            self.err(
                &v.loc,
                format!(
                    "`levels` must be a level or a range `[FROM, TO]` of levels (from 1, FROM ≤ TO), found `{}`",
                    v.display_text()
                ),
                "e.g. `levels: [7, 15]` for levels 7 to 15".into(),
            );
            return None;
        }
        Some(range)
    }

    fn required_side(&mut self, claim: &Node, at: &Loc, which: &str) -> Option<Side> {
        match claim.get(which) {
            None => {
                self.err(
                    at,
                    format!("has no `{which}`"),
                    format!(
                        "add `{which}: {{stages: \"eval*\", metric: accuracy, agg: mean}}` or a number"
                    ),
                );
                None
            }
            Some(s) => self.side(s, which),
        }
    }

    fn side(&mut self, node: &Node, which: &str) -> Option<Side> {
        if let Some(x) = number(node) {
            return Some(Side::Number(x));
        }
        let Some(map) = node.as_map() else {
            self.err(
                &node.loc,
                format!("`{which}` must be a number or a map, found {}", node.type_name()),
                "e.g. `{stages: \"eval*\", metric: accuracy, agg: mean}`, `{wins: {a: \"eval_a*\", b: \"eval_b*\", metric: accuracy}}` or `0.5`".into(),
            );
            return None;
        };
        for paired in ["wins", "gap"] {
            let Some(w) = node.get(paired) else {
                continue;
            };
            if map.len() > 1 {
                let other = map
                    .iter()
                    .find(|(k, _)| k.name != paired)
                    .expect("two keys");
                self.err(
                    &other.0.loc,
                    format!(
                        "a `{paired}` side takes nothing beside `{paired}`, found `{}`",
                        other.0.name
                    ),
                    format!("put `metric` and `levels` inside `{paired}: {{...}}`"),
                );
            }
            return self.paired(w, paired == "gap");
        }
        self.unknown_fields(node, METRIC_FIELDS, &format!("`{which}`"));
        let stages = self.string(node, "stages", &format!("`{which}`"));
        let metric = self.string(node, "metric", &format!("`{which}`"));
        let agg = match node.get("agg") {
            None => Some(Agg::Mean),
            Some(a) => match a.as_str().and_then(Agg::parse) {
                Some(agg) => Some(agg),
                None => {
                    let shown = a.display_text();
                    self.err(
                        &a.loc,
                        format!("unknown agg `{shown}`"),
                        choices_hint(&shown, AGGS),
                    );
                    None
                }
            },
        };
        let mut factor = |field: &str, default: f64| match node.get(field) {
            None => Some(default),
            Some(v) => number(v).or_else(|| {
                self.err(
                    &v.loc,
                    format!(
                        "`{field}` must be a finite number, found `{}`",
                        v.display_text()
                    ),
                    format!("e.g. `{field}: {default}`"),
                );
                None
            }),
        };
        let scale = factor("scale", 1.0);
        let offset = factor("offset", 0.0);
        let levels = self.levels(node);
        let stages = stages?;
        let levels = levels?;
        let at = node.get("stages").map_or(&node.loc, |n| &n.loc).clone();
        let matched = self
            .matched(&stages, &at, levels)
            .iter()
            .map(|i| i.name.clone())
            .collect();
        Some(Side::Metric {
            levels,
            stages,
            metric: metric?,
            agg: agg?,
            scale: scale?,
            offset: offset?,
            matched,
        })
    }

    /// A `wins` side, or with `gap` a `gap` side (the same pairing, no `lower_is_better`).
    fn paired(&mut self, w: &Node, gap: bool) -> Option<Side> {
        let what = if gap { "`gap`" } else { "`wins`" };
        if w.as_map().is_none() {
            self.err(
                &w.loc,
                format!("{what} must be a map, found {}", w.type_name()),
                format!(
                    "e.g. `{}: {{a: \"eval_repr*\", b: \"eval_std*\", metric: accuracy}}`",
                    what.trim_matches('`')
                ),
            );
            return None;
        }
        self.unknown_fields(w, if gap { GAP_FIELDS } else { WINS_FIELDS }, what);
        let a = self.string(w, "a", what);
        let b = self.string(w, "b", what);
        let metric = self.string(w, "metric", what);
        let levels = self.levels(w);
        let lower_is_better = match w.get("lower_is_better") {
            None => Some(false),
            Some(v) => match &v.kind {
                NodeKind::Scalar(Scalar::Bool(b)) => Some(*b),
                _ => {
                    self.err(
                        &v.loc,
                        format!(
                            "`lower_is_better` must be true or false, found `{}`",
                            v.display_text()
                        ),
                        "e.g. `lower_is_better: true` for an error or a loss".into(),
                    );
                    None
                }
            },
        };
        let (a, b, levels) = (a?, b?, levels?);
        let loc = |f: &str| w.get(f).map_or(&w.loc, |n| &n.loc).clone();
        let am = self.matched(&a, &loc("a"), levels);
        let bm = self.matched(&b, &loc("b"), levels);
        let pairs = match pair(&am, &bm) {
            Ok(p) => p,
            Err(msg) => {
                self.err(
                    &w.loc,
                    msg,
                    "narrow `a` and `b` so that each level and shared sweep value has one stage on each side".into(),
                );
                return None;
            }
        };
        if gap {
            return Some(Side::Gap {
                a,
                b,
                metric: metric?,
                levels,
                pairs,
            });
        }
        Some(Side::Wins {
            a,
            b,
            metric: metric?,
            lower_is_better: lower_is_better?,
            levels,
            pairs,
        })
    }
}

/// What a stage pairs on: its level (when every stage of both sides has one) and its values of
/// the sweep variables that every stage of both sides has.
fn pair_key(i: &Instance, shared: &[String], levels: bool) -> String {
    let mut parts = Vec::new();
    if levels && let Some((_, l)) = &i.level {
        parts.push(format!("level={l}"));
    }
    for (k, v) in &i.assignment {
        if shared.contains(k) {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(",")
}

/// Pairs a-stages with b-stages on the level and sweep values they share; a key held by two
/// stages of one side is ambiguous. Keys on one side only are left unpaired.
pub fn pair(a: &[&Instance], b: &[&Instance]) -> Result<Vec<(String, String)>, String> {
    let all = || a.iter().chain(b.iter());
    let levels = all().all(|i| i.level.is_some());
    let mut shared: Vec<String> = match all().next() {
        Some(first) => first.assignment.iter().map(|(k, _)| k.clone()).collect(),
        None => return Ok(Vec::new()),
    };
    shared.retain(|k| all().all(|i| i.assignment.iter().any(|(v, _)| v == k)));
    let side = |stages: &[&Instance], label: &str| -> Result<BTreeMap<String, String>, String> {
        let mut m = BTreeMap::new();
        for i in stages {
            let key = pair_key(i, &shared, levels);
            if let Some(prev) = m.insert(key.clone(), i.name.clone()) {
                return Err(format!(
                    "`wins` cannot pair: `{prev}` and `{}` (both `{label}`) share {}",
                    i.name,
                    if key.is_empty() {
                        "everything they could be paired on".to_string()
                    } else {
                        format!("`{key}`")
                    }
                ));
            }
        }
        Ok(m)
    };
    let am = side(a, "a")?;
    let bm = side(b, "b")?;
    Ok(am
        .iter()
        .filter_map(|(k, an)| bm.get(k).map(|bn| (an.clone(), bn.clone())))
        .collect())
}

/// The text fields `text` and `source`: strings when present.
fn optional_text(c: &mut Checker, node: &Node, field: &str) -> Option<String> {
    let v = node.get(field)?;
    match &v.kind {
        NodeKind::Scalar(Scalar::Str(s)) => Some(s.clone()),
        _ => {
            c.err(
                &v.loc,
                format!("`{field}` must be a string, found {}", v.type_name()),
                "quote it: `text: \"...\"`".into(),
            );
            None
        }
    }
}

/// Reads and checks `claims:` against the expanded stages.
pub fn parse(
    node: Option<&Node>,
    instances: &[Instance],
) -> Result<Vec<ClaimSpec>, Vec<Diagnostic>> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let Some(map) = node.as_map() else {
        return Err(vec![
            Diagnostic::at(
                &node.loc,
                format!(
                    "`claims` must be a map of claim name to claim, found {}",
                    node.type_name()
                ),
            )
            .hint("e.g. `claims: {learns: {left: {stages: \"eval*\", metric: accuracy}, op: \">\", right: 0.5}}`"),
        ]);
    };
    let names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (k, v) in map {
        let mut c = Checker {
            claim: &k.name,
            instances,
            names: names.clone(),
            errors: Vec::new(),
        };
        if v.as_map().is_none() {
            c.err(
                &v.loc,
                format!("a claim is a map, found {}", v.type_name()),
                "a claim takes `left`, `op`, `right`, and optionally `text` and `source`".into(),
            );
            errors.append(&mut c.errors);
            continue;
        }
        c.unknown_fields(v, CLAIM_FIELDS, "a claim");
        let text = optional_text(&mut c, v, "text");
        let source = optional_text(&mut c, v, "source");
        let op = match v.get("op") {
            None => {
                c.err(
                    &k.loc,
                    "has no `op`".into(),
                    format!("add `op: \">=\"`; valid: {}", OPS.join(" ")),
                );
                None
            }
            Some(o) => {
                let shown = o.display_text();
                let op = o.as_str().and_then(Op::parse);
                if op.is_none() {
                    c.err(
                        &o.loc,
                        format!("unknown op `{shown}`"),
                        choices_hint(&shown, OPS),
                    );
                }
                op
            }
        };
        let left = c.required_side(v, &k.loc, "left");
        let right = c.required_side(v, &k.loc, "right");
        if c.errors.is_empty()
            && let (Some(left), Some(op), Some(right)) = (left, op, right)
        {
            out.push(ClaimSpec {
                name: k.name.clone(),
                text,
                source,
                left,
                op,
                right,
                loc: k.loc.clone(),
            });
        }
        errors.append(&mut c.errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::diag::SourceFile;
    use std::sync::Arc;

    fn inst(name: &str, assignment: &[(&str, &str)], level: Option<u32>) -> Instance {
        Instance {
            param_locs: Default::default(),
            name: name.into(),
            template: name.into(),
            kind: "evaluate".into(),
            params: serde_json::Value::Null,
            inputs: vec![],
            assignment: assignment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            level: level.map(|l| ("imp".to_string(), l)),
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

    #[test]
    fn aggregates_median_of_even_n_and_sample_std() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(Agg::Median.apply(&v), Some(2.5));
        assert_eq!(Agg::Median.apply(&[3.0, 1.0, 2.0]), Some(2.0));
        let std = Agg::Std.apply(&v).unwrap();
        assert!((std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{std}");
        assert_eq!(Agg::Std.apply(&[7.0]), Some(0.0));
        assert_eq!(Agg::Mean.apply(&v), Some(2.5));
        assert_eq!(
            (Agg::Min.apply(&v), Agg::Max.apply(&v), Agg::Sum.apply(&v)),
            (Some(1.0), Some(4.0), Some(10.0))
        );
        assert_eq!(
            (Agg::Count.apply(&[]), Agg::Mean.apply(&[])),
            (Some(0.0), None)
        );
        assert_eq!(Agg::parse("median").map(Agg::as_str), Some("median"));
    }

    fn refs(v: &[Instance]) -> Vec<&Instance> {
        v.iter().collect()
    }

    #[test]
    fn wins_pair_on_shared_sweep_values_and_levels() {
        let a = [
            inst("eval_repr[seed=1]", &[("seed", "1")], None),
            inst("eval_repr[seed=2]", &[("seed", "2")], None),
            inst("eval_repr[seed=3]", &[("seed", "3")], None),
        ];
        let b = [
            inst(
                "eval_std[lr=0.1,seed=2]",
                &[("lr", "0.1"), ("seed", "2")],
                None,
            ),
            inst(
                "eval_std[lr=0.1,seed=1]",
                &[("lr", "0.1"), ("seed", "1")],
                None,
            ),
        ];
        assert_eq!(
            pair(&refs(&a), &refs(&b)).unwrap(),
            vec![
                ("eval_repr[seed=1]".into(), "eval_std[lr=0.1,seed=1]".into()),
                ("eval_repr[seed=2]".into(), "eval_std[lr=0.1,seed=2]".into()),
            ]
        );
        // Stages of a level group pair on their level too.
        let la = [
            inst("imp.1.eval_a", &[], Some(1)),
            inst("imp.2.eval_a", &[], Some(2)),
        ];
        let lb = [
            inst("imp.2.eval_b", &[], Some(2)),
            inst("imp.1.eval_b", &[], Some(1)),
        ];
        assert_eq!(
            pair(&refs(&la), &refs(&lb)).unwrap(),
            vec![
                ("imp.1.eval_a".into(), "imp.1.eval_b".into()),
                ("imp.2.eval_a".into(), "imp.2.eval_b".into()),
            ]
        );
        // Two a-stages with the same key cannot be told apart.
        let e = pair(&refs(&la), &refs(&b[..1])).unwrap_err();
        assert_eq!(
            e,
            "`wins` cannot pair: `imp.1.eval_a` and `imp.2.eval_a` (both `a`) share everything they could be paired on"
        );
    }

    #[test]
    fn ops_compare_exactly() {
        assert!(Op::parse(">=").unwrap().holds(3.0, 3.0));
        assert!(!Op::Gt.holds(3.0, 3.0));
        assert!(Op::Ne.holds(1.0, 2.0));
        assert_eq!(Op::parse("=>"), None);
    }

    fn parsed(yaml: &str, instances: &[Instance]) -> Result<Vec<ClaimSpec>, Vec<String>> {
        let node = crate::spec::yaml::parse(Arc::new(SourceFile {
            path: "t.yaml".into(),
            text: yaml.into(),
        }))
        .unwrap();
        parse(Some(&node), instances).map_err(|e| {
            e.iter()
                .map(|d| format!("{} ({})", d.message, d.hint.clone().unwrap_or_default()))
                .collect()
        })
    }

    #[test]
    fn levels_narrow_a_side_to_a_range_of_levels_and_gap_pairs_like_wins() {
        let mut stages = Vec::new();
        for l in 1..=4 {
            stages.push(inst(&format!("imp.{l}.eval_t"), &[], Some(l)));
            stages.push(inst(&format!("imp.{l}.eval_r"), &[], Some(l)));
        }
        stages.push(inst("eval_dense", &[], None));
        let c = parsed(
            "m: {left: {stages: \"imp.*.eval_t\", metric: accuracy, agg: min, levels: [2, 3]}, op: \">=\", right: {stages: eval_dense, metric: accuracy}}\n\
             g: {left: {gap: {a: \"imp.*.eval_t\", b: \"imp.*.eval_r\", metric: accuracy, levels: 4}}, op: \">\", right: 0}\n",
            &stages,
        )
        .unwrap();
        match &c[0].left {
            Side::Metric {
                matched, levels, ..
            } => {
                assert_eq!(matched, &["imp.2.eval_t", "imp.3.eval_t"]);
                assert_eq!(levels, &Some([2, 3]));
            }
            other => panic!("{other:?}"),
        }
        match &c[1].left {
            Side::Gap { pairs, .. } => {
                assert_eq!(
                    pairs,
                    &[("imp.4.eval_t".to_string(), "imp.4.eval_r".to_string())]
                )
            }
            other => panic!("{other:?}"),
        }
        // Levels the group does not have (a `count` override) leave the side empty: the claim
        // is unknown in that run (see `claim_eval`), not an error.
        // So do levels it has only part of: a claim about levels 3–6 is not judged on 3 and 4.
        let c = parsed(
            "c: {left: {stages: \"imp.*.eval_t\", metric: accuracy, levels: [7, 9]}, op: \">\", right: 0}\n\
             p: {left: {wins: {a: \"imp.*.eval_t\", b: \"imp.*.eval_r\", metric: accuracy, levels: [3, 6]}}, op: \"==\", right: 4}\n",
            &stages,
        )
        .unwrap();
        assert!(matches!(&c[0].left, Side::Metric { matched, .. } if matched.is_empty()));
        assert!(matches!(&c[1].left, Side::Wins { pairs, .. } if pairs.is_empty()));
        let errors = parsed(
            "a: {left: {stages: eval_dense, metric: accuracy, levels: [1, 2]}, op: \">\", right: 0}\n\
             b: {left: {stages: \"imp.*.eval_t\", metric: accuracy, levels: [3, 2]}, op: \">\", right: 0}\n\
             d: {left: {gap: {a: \"imp.*.eval_t\", b: \"imp.*.eval_r\", metric: accuracy, lower_is_better: true}}, op: \">\", right: 0}\n",
            &stages,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "claim `a`: `eval_dense` matches no stage at levels 1–2 (its stages are not in a `levels:` group; drop `levels`)",
                "claim `b`: `levels` must be a level or a range `[FROM, TO]` of levels (from 1, FROM ≤ TO), found `[3,2]` (e.g. `levels: [7, 15]` for levels 7 to 15)",
                "claim `d`: unknown field `lower_is_better` in `gap` (valid: `a`, `b`, `metric`, `levels`)",
            ]
        );
    }
}
