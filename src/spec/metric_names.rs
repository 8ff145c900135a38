//! Every metric a `report:`, a claim or a plot names must be one that the stages it selects can
//! produce, checked against their kinds' declared metrics (`Stage::METRICS`) before anything
//! runs: a misspelt metric (`acc`, `test_accuracy`) would otherwise cost a whole training and
//! end in an empty table or an `unknown` claim. A kind that declares nothing (`*`) is not
//! checked.

use super::claims::{ClaimSpec, Side};
use super::diag::did_you_mean;
use super::expand::glob_match;
use super::plots::PlotSpec;
use super::yaml::{Node, NodeKind};
use super::{Diagnostic, Instance, Loc, ReportSpec};
use crate::stages::Registry;

/// What a view asks of the stages it selects.
struct Wanted<'a> {
    /// `the report's `values``, `claim `c``, …, for the message.
    what: String,
    metric: &'a str,
    stages: Vec<&'a str>,
    loc: Loc,
}

pub fn check(
    root: &Node,
    instances: &[Instance],
    report: Option<&ReportSpec>,
    plots: &[PlotSpec],
    claims: &[ClaimSpec],
    registry: &Registry,
) -> Vec<Diagnostic> {
    let mut wanted = Vec::new();
    let selected = |patterns: &[String]| -> Vec<&str> {
        instances
            .iter()
            .filter(|i| patterns.iter().any(|p| glob_match(p, &i.name)))
            .map(|i| i.name.as_str())
            .collect()
    };
    if let (Some(r), Some(node)) = (report, root.get("report")) {
        let stages = selected(&r.select);
        for (field, metric) in
            std::iter::once(("rows", &r.rows)).chain(r.values.iter().map(|v| ("values", v)))
        {
            wanted.push(Wanted {
                what: format!("the report's `{field}`"),
                metric,
                stages: stages.clone(),
                loc: value_loc(node, metric).unwrap_or_else(|| node.loc.clone()),
            });
        }
    }
    let plot_nodes = root.get("plots");
    for p in plots.iter().filter(|p| !p.curve) {
        let node = plot_nodes.and_then(|n| n.get(&p.name));
        let stages = selected(&p.select);
        for metric in std::iter::once(&p.x).chain(p.y.0.iter()) {
            let loc = node.and_then(|n| value_loc(n, metric));
            wanted.push(Wanted {
                what: format!("plot `{}`", p.name),
                metric,
                stages: stages.clone(),
                loc: loc
                    .or_else(|| node.map(|n| n.loc.clone()))
                    .unwrap_or_else(|| root.loc.clone()),
            });
        }
    }
    let claim_nodes = root.get("claims");
    for c in claims {
        let node = claim_nodes.and_then(|n| n.get(&c.name));
        for side in [&c.left, &c.right] {
            let (metric, stages): (&str, Vec<&str>) = match side {
                Side::Number(_) => continue,
                Side::Metric {
                    metric, matched, ..
                } => (metric, matched.iter().map(String::as_str).collect()),
                Side::Wins { metric, pairs, .. } | Side::Gap { metric, pairs, .. } => (
                    metric,
                    pairs
                        .iter()
                        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
                        .collect(),
                ),
            };
            wanted.push(Wanted {
                what: format!("claim `{}`", c.name),
                metric,
                stages,
                loc: node
                    .and_then(|n| value_loc(n, metric))
                    .unwrap_or_else(|| c.loc.clone()),
            });
        }
    }
    let kind_of = |name: &str| {
        instances
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| registry.get(&i.kind))
    };
    let mut errors = Vec::new();
    for w in wanted {
        let kinds: Vec<_> = w.stages.iter().filter_map(|s| kind_of(s)).collect();
        // Nothing selected is reported by the view's own checks; a kind that declares no
        // metrics may produce any.
        if kinds.is_empty() || kinds.iter().any(|k| k.metrics().contains(&"*")) {
            continue;
        }
        if kinds
            .iter()
            .any(|k| k.metrics().iter().any(|p| glob_match(p, w.metric)))
        {
            continue;
        }
        let mut kind_names: Vec<&str> = kinds.iter().map(|k| k.kind()).collect();
        kind_names.sort_unstable();
        kind_names.dedup();
        let mut known: Vec<&str> = kinds
            .iter()
            .flat_map(|k| k.metrics().iter().copied())
            .collect();
        known.sort_unstable();
        known.dedup();
        let hint = match closest(w.metric, &known) {
            Some(m) => format!("did you mean `{m}`? `pipe kinds KIND` lists each kind's metrics"),
            None => format!("they produce {}", backticked(&known)),
        };
        errors.push(
            Diagnostic::at(
                &w.loc,
                format!(
                    "{} names metric `{}`, which none of the stages it selects produces (they are {})",
                    w.what,
                    w.metric,
                    kind_names
                        .iter()
                        .map(|k| format!("`{k}` stages"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .hint(hint),
        );
    }
    errors
}

/// The declared name a misspelt metric most likely meant: the nearest by spelling, else one
/// that begins with it or that it begins with (`acc` → `accuracy`, `test_accuracy` →
/// `test_acc`), the longest shared beginning first.
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let names = || known.iter().copied().filter(|m| !m.contains('*'));
    did_you_mean(word, names()).or_else(|| {
        names()
            .filter(|m| m.starts_with(word) || word.starts_with(m))
            .max_by_key(|m| m.len().min(word.len()))
    })
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where under `node` the scalar `value` is written (the first place, depth first).
fn value_loc(node: &Node, value: &str) -> Option<Loc> {
    match &node.kind {
        NodeKind::Map(entries) => entries.iter().find_map(|(_, v)| value_loc(v, value)),
        NodeKind::Seq(items) => items.iter().find_map(|v| value_loc(v, value)),
        _ => (node.as_str() == Some(value)).then(|| node.loc.clone()),
    }
}
