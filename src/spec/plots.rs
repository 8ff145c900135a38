//! `plots:` — figures a pipeline declares next to its `report:` table.
//!
//! ```yaml
//! plots:
//!   accuracy:
//!     title: Test accuracy by weights remaining
//!     select: ["imp.*.eval_*"]      # stage-name patterns
//!     x: remaining_pct              # a metric of those stages
//!     y: accuracy                   # a metric, or a list of metrics
//!     series: [stage, lr]           # one line per stage template × value of `lr`
//!     log_x: true
//!   dense_curve:
//!     curve: true                   # x and y are columns of the stages' curve.json
//!     select: [dense]
//!     y: [train_loss, val_loss]
//! ```
//!
//! Plots are views: nothing here reaches a stage key. They are checked against the expanded
//! stages when the pipeline loads (patterns that match nothing, unknown sweep variables), so a
//! typo is an error before anything runs rather than an empty figure after hours of training.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::Instance;
use super::diag::{Diagnostic, choices_hint};
use super::expand::glob_match;
use super::yaml::Node;

/// One way of splitting a plot's stages into lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeriesBy {
    /// A sweep variable (`lr`, `data.seed`), or `stage`: the stage's name inside its level group
    /// without the sweep part (`eval_ticket`).
    Key(String),
    /// Label → stage-name patterns; a stage goes to the first label one of whose patterns
    /// matches it, and stages that match none are left out of the plot.
    Patterns(BTreeMap<String, OneOrMany>),
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => OneOrMany(vec![s]),
            Raw::Many(v) => OneOrMany(v),
        })
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn iteration() -> String {
    "iteration".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotSpec {
    /// The key under `plots:`; names the output files.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub title: String,
    /// Stage-name patterns (`*` matches any run of characters).
    pub select: Vec<String>,
    /// A metric of the selected stages; with `curve: true` a column of curve.json.
    #[serde(default = "iteration")]
    pub x: String,
    /// One metric or several (several: one line per metric and series).
    pub y: OneOrMany,
    #[serde(default)]
    pub series: Vec<SeriesBy>,
    #[serde(default)]
    pub log_x: bool,
    #[serde(default)]
    pub log_y: bool,
    /// Read x and y from each stage's learning curve (`curve.json`) instead of its metrics.
    #[serde(default)]
    pub curve: bool,
    /// Sweep variables whose members are replicates of one point, aggregated as mean ± std (n).
    /// Unset: variables named `seed` or ending in `.seed`.
    #[serde(default)]
    pub replicates: Option<Vec<String>>,
    /// Draw ± one standard deviation over replicates.
    #[serde(default = "yes")]
    pub error_bars: bool,
    /// Stage-name patterns drawn as horizontal reference lines at their (mean) y.
    #[serde(default)]
    pub baseline: Vec<String>,
    /// Multiplies y (100 shows a fraction as a percentage).
    #[serde(default = "one")]
    pub y_scale: f64,
    #[serde(default)]
    pub x_label: Option<String>,
    #[serde(default)]
    pub y_label: Option<String>,
}

impl PlotSpec {
    /// Whether a sweep variable is a replicate dimension of this plot.
    pub fn is_replicate(&self, var: &str) -> bool {
        is_replicate(self.replicates.as_deref(), var)
    }
}

/// The replicate rule shared by plots and the report table: the listed variables, or by
/// default `seed` and any dotted path ending in `.seed`.
pub fn is_replicate(listed: Option<&[String]>, var: &str) -> bool {
    match listed {
        Some(vars) => vars.iter().any(|v| v == var),
        None => var == "seed" || var.ends_with(".seed"),
    }
}

/// A hint for a pattern that matched nothing: a near stage name if there is one.
fn pattern_hint(p: &str, names: &[&str]) -> String {
    match super::diag::did_you_mean(p, names.iter().copied()) {
        Some(m) => format!("did you mean `{m}`?"),
        None => "`pipe plan FILE` lists the stage names; `*` matches any run of characters".into(),
    }
}

fn valid_plot_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Reads and checks `plots:` against the expanded stages.
pub fn parse(
    node: Option<&Node>,
    instances: &[Instance],
) -> Result<Vec<PlotSpec>, Vec<Diagnostic>> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let Some(map) = node.as_map() else {
        return Err(vec![
            Diagnostic::at(
                &node.loc,
                format!("`plots` must be a map of plot name to plot, found {}", node.type_name()),
            )
            .hint("e.g. `plots: {accuracy: {select: [\"imp.*.eval_*\"], x: remaining_pct, y: accuracy}}`"),
        ]);
    };
    let names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (k, v) in map {
        if !valid_plot_name(&k.name) {
            errors.push(
                Diagnostic::at(&k.loc, format!("invalid plot name `{}`", k.name))
                    .hint("plot names become file names: use letters, digits, `_` and `-`"),
            );
            continue;
        }
        let json = v.to_json();
        let mut spec: PlotSpec = match serde_path_to_error::deserialize(&json) {
            Ok(s) => s,
            Err(e) => {
                let path: Vec<String> = e
                    .path()
                    .iter()
                    .map(|seg| seg.to_string())
                    .filter(|s| s != "?")
                    .collect();
                let (at, _) = v.locate(&path);
                let field = if path.is_empty() {
                    String::new()
                } else {
                    format!(" `{}`", path.join("."))
                };
                errors.push(
                    Diagnostic::at(&at.loc, format!("plot `{}`: invalid field{field}: {}", k.name, e.inner()))
                        .hint("a plot takes `select`, `x`, `y`, and optionally `title`, `series`, `log_x`, `log_y`, `curve`, `replicates`, `error_bars`, `baseline`, `y_scale`, `x_label`, `y_label`"),
                );
                continue;
            }
        };
        spec.name = k.name.clone();
        check(&spec, v, instances, &names, &mut errors);
        out.push(spec);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn check(
    spec: &PlotSpec,
    node: &Node,
    instances: &[Instance],
    names: &[&str],
    errors: &mut Vec<Diagnostic>,
) {
    let loc_of = |field: &str, i: Option<usize>| {
        let f = node.get(field);
        match (f, i) {
            (Some(n), Some(i)) => match &n.kind {
                super::yaml::NodeKind::Seq(items) => {
                    items.get(i).map(|x| x.loc.clone()).unwrap_or(n.loc.clone())
                }
                _ => n.loc.clone(),
            },
            (Some(n), None) => n.loc.clone(),
            (None, _) => node.loc.clone(),
        }
    };
    fn matching<'a>(instances: &'a [Instance], p: &'a str) -> impl Iterator<Item = &'a Instance> {
        instances.iter().filter(move |i| glob_match(p, &i.name))
    }
    if spec.select.is_empty() {
        errors.push(
            Diagnostic::at(
                &loc_of("select", None),
                format!("plot `{}` selects no stages", spec.name),
            )
            .hint("list stage names or patterns, e.g. `select: [\"imp.*.eval_*\"]`"),
        );
    }
    for (i, p) in spec.select.iter().enumerate() {
        if matching(instances, p).next().is_none() {
            errors.push(
                Diagnostic::at(
                    &loc_of("select", Some(i)),
                    format!("plot `{}`: `{p}` matches no stage", spec.name),
                )
                .hint(pattern_hint(p, names)),
            );
        }
    }
    for (i, p) in spec.baseline.iter().enumerate() {
        if matching(instances, p).next().is_none() {
            errors.push(
                Diagnostic::at(
                    &loc_of("baseline", Some(i)),
                    format!("plot `{}`: baseline `{p}` matches no stage", spec.name),
                )
                .hint(pattern_hint(p, names)),
            );
        }
    }
    if spec.x.is_empty() || spec.y.0.is_empty() || spec.y.0.iter().any(String::is_empty) {
        errors.push(
            Diagnostic::at(
                &node.loc,
                format!(
                    "plot `{}` needs a metric for `x` and at least one for `y`",
                    spec.name
                ),
            )
            .hint("e.g. `x: remaining_pct`, `y: accuracy`"),
        );
    }
    if !(spec.y_scale.is_finite() && spec.y_scale != 0.0) {
        errors.push(Diagnostic::at(
            &loc_of("y_scale", None),
            format!("plot `{}`: `y_scale` must be a non-zero number", spec.name),
        ));
    }
    // Sweep variables of the selected stages, for `series` and `replicates`.
    let mut vars: Vec<&str> = spec
        .select
        .iter()
        .flat_map(|p| matching(instances, p))
        .flat_map(|i| i.assignment.iter().map(|(k, _)| k.as_str()))
        .collect();
    vars.sort_unstable();
    vars.dedup();
    let mut choices = vars.clone();
    choices.push("stage");
    for (i, s) in spec.series.iter().enumerate() {
        match s {
            SeriesBy::Key(k) if k != "stage" && !vars.contains(&k.as_str()) => errors.push(
                Diagnostic::at(
                    &loc_of("series", Some(i)),
                    format!(
                        "plot `{}`: `{k}` is not a sweep variable of the selected stages",
                        spec.name
                    ),
                )
                .hint(choices_hint(k, &choices)),
            ),
            SeriesBy::Patterns(m) => {
                for pats in m.values() {
                    for p in &pats.0 {
                        if matching(instances, p).next().is_none() {
                            errors.push(
                                Diagnostic::at(
                                    &loc_of("series", Some(i)),
                                    format!(
                                        "plot `{}`: series pattern `{p}` matches no stage",
                                        spec.name
                                    ),
                                )
                                .hint(pattern_hint(p, names)),
                            );
                        }
                    }
                }
            }
            SeriesBy::Key(_) => {}
        }
    }
    if let Some(reps) = &spec.replicates {
        for (i, r) in reps.iter().enumerate() {
            if !vars.contains(&r.as_str()) {
                errors.push(
                    Diagnostic::at(
                        &loc_of("replicates", Some(i)),
                        format!("plot `{}`: replicate variable `{r}` is not a sweep variable of the selected stages", spec.name),
                    )
                    .hint(choices_hint(r, &vars)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::diag::{Loc, SourceFile};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn node(text: &str) -> Node {
        crate::spec::yaml::parse(Arc::new(SourceFile {
            path: PathBuf::from("p.yaml"),
            text: text.to_string(),
        }))
        .unwrap()
    }

    fn inst(name: &str, assignment: &[(&str, &str)]) -> Instance {
        Instance {
            param_locs: Default::default(),
            name: name.into(),
            template: name.split('[').next().unwrap().into(),
            kind: "evaluate".into(),
            params: serde_json::json!({}),
            inputs: vec![],
            assignment: assignment
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            level: None,
            loc: Loc {
                file: Arc::new(SourceFile {
                    path: PathBuf::from("p.yaml"),
                    text: String::new(),
                }),
                line: 1,
                col: 1,
            },
        }
    }

    fn stages() -> Vec<Instance> {
        vec![
            inst("eval_dense", &[]),
            inst(
                "imp.1.eval_ticket[lr=0.1,seed=0]",
                &[("lr", "0.1"), ("seed", "0")],
            ),
            inst(
                "imp.1.eval_ticket[lr=0.1,seed=1]",
                &[("lr", "0.1"), ("seed", "1")],
            ),
        ]
    }

    #[test]
    fn reads_a_plot_with_defaults() {
        let n = node(
            "plots:\n  acc:\n    select: [\"imp.*.eval_*\"]\n    x: remaining_pct\n    y: accuracy\n    series: [stage, lr, {tickets: \"imp.*.eval_ticket*\"}]\n    log_x: true\n",
        );
        let plots = parse(n.get("plots"), &stages()).unwrap();
        assert_eq!(plots.len(), 1);
        let p = &plots[0];
        assert_eq!(p.name, "acc");
        assert_eq!(p.y, OneOrMany(vec!["accuracy".into()]));
        assert!(p.log_x && !p.log_y && !p.curve && p.error_bars);
        assert_eq!(p.y_scale, 1.0);
        assert_eq!(
            p.series,
            vec![
                SeriesBy::Key("stage".into()),
                SeriesBy::Key("lr".into()),
                SeriesBy::Patterns(BTreeMap::from([(
                    "tickets".into(),
                    OneOrMany(vec!["imp.*.eval_ticket*".into()])
                )]))
            ]
        );
        assert!(p.is_replicate("seed") && p.is_replicate("data.seed") && !p.is_replicate("lr"));
    }

    #[test]
    fn typos_are_located_errors_with_hints() {
        let n = node(
            "plots:\n  acc:\n    select: [\"imp.*.eval_*\"]\n    baseline: [eval_dens]\n    x: remaining_pct\n    y: accuracy\n    series: [lrr]\n",
        );
        let errs = parse(n.get("plots"), &stages()).unwrap_err();
        let msgs: Vec<String> = errs
            .iter()
            .map(|d| {
                format!(
                    "{}:{} {} | {}",
                    d.loc.as_ref().unwrap().line,
                    d.loc.as_ref().unwrap().col,
                    d.message,
                    d.hint.clone().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            msgs,
            vec![
                "4:16 plot `acc`: baseline `eval_dens` matches no stage | did you mean `eval_dense`?".to_string(),
                "7:14 plot `acc`: `lrr` is not a sweep variable of the selected stages | did you mean `lr`? valid: `lr`, `seed`, `stage`".to_string(),
            ]
        );
        let n =
            node("plots:\n  acc:\n    select: [eval_dense]\n    y: accuracy\n    colour: red\n");
        let errs = parse(n.get("plots"), &stages()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .starts_with("plot `acc`: invalid field `colour`: unknown field `colour`"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[0].loc.as_ref().unwrap().line, 5);
        let n = node("plots: [1]\n");
        assert!(
            parse(n.get("plots"), &stages()).unwrap_err()[0]
                .message
                .starts_with("`plots` must be a map")
        );
    }
}
