//! `lesion`: the lesion study of Veit, Wilber & Belongie (2016) on a trained model — delete
//! or reorder its residual blocks (or, in a plain net, its shape-preserving conv layers) at
//! test time and measure the test error, with the trained weights and batch-norm statistics.
//!
//! Three kinds of lesion, each on the model's deletable units ([`crate::nn::methods::lesion`]):
//! - `single`: every unit deleted alone, evaluated on the whole split;
//! - `k` random units deleted together, `draws` times per k, on the first `draw_subset`
//!   images of the split;
//! - `swaps` random pairs of same-shape units swapped, `draws` times per count, on the same
//!   subset, with Kendall's τ of the resulting unit order.
//!
//! Errors are fractions (0.07 = 7% misclassified); a Δ is the lesioned error minus the
//! unlesioned error on the same images. Every row goes to `lesion.json`; the mean error by k
//! goes to `curve.json` (so a `curve: true` plot draws error against k); the summary and the
//! single deletions are metrics.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dataset::DataParams;
use super::evaluate::SplitName;
use super::model_facts::{ModelFacts, check_fits};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::data::{Split, subset};
use crate::nn::methods::lesion::eval::{LesionJob, evaluate_lesions};
use crate::nn::methods::lesion::{self, DELETABLE_KINDS, Unit, kendall_tau};
use crate::nn::program::Program;
use crate::nn::{ModelSpec, NnError};
use crate::rng::{self, Domain};
use crate::stats::round6;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LesionParams {
    /// Delete every unit alone (on the whole split).
    #[serde(default = "yes")]
    pub single: bool,
    /// Numbers of units deleted together at random (values above the number of deletable
    /// units are skipped). Default 1..=8.
    #[serde(default = "default_k")]
    pub k: Vec<usize>,
    /// Numbers of random same-shape pairs swapped (capped at the number of such pairs).
    /// Default 1..=6.
    #[serde(default = "default_swaps")]
    pub swaps: Vec<usize>,
    /// Random draws per k and per swap count.
    #[serde(default = "default_draws")]
    pub draws: usize,
    /// Seed of the random draws.
    #[serde(default)]
    pub seed: u64,
    /// Images of the split the random draws are evaluated on (its first N; 0 = all).
    #[serde(default = "default_draw_subset")]
    pub draw_subset: usize,
    /// Re-estimate batch-norm statistics on the first N training images for every lesioned
    /// model (0 = use the trained running statistics, the paper's setting).
    #[serde(default)]
    pub recalibrate: usize,
    #[serde(default = "test")]
    pub split: SplitName,
    #[serde(default)]
    pub data: DataParams,
}

fn yes() -> bool {
    true
}
fn default_k() -> Vec<usize> {
    (1..=8).collect()
}
fn default_swaps() -> Vec<usize> {
    (1..=6).collect()
}
fn default_draws() -> usize {
    10
}
fn default_draw_subset() -> usize {
    2000
}
fn test() -> SplitName {
    SplitName::Test
}

/// The deletable units of `spec`'s program, or why there are none.
fn units_of(spec: &ModelSpec, from: &str) -> Result<(Program, Vec<Unit>), String> {
    let program = spec.program()?;
    let units = lesion::units(&program).map_err(|e| e.to_string())?;
    if units.is_empty() {
        return Err(format!(
            "the model of `{from}` ({}) has no deletable unit; a lesion deletes {DELETABLE_KINDS}",
            spec.family()
        ));
    }
    Ok((program, units))
}

/// Pairs of unit indices `(i, j)`, `i < j`, of the same shape: the swaps a reordering may make.
fn swappable_pairs(units: &[Unit]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for i in 0..units.len() {
        for j in i + 1..units.len() {
            if units[i].shape == units[j].shape {
                out.push((i, j));
            }
        }
    }
    out
}

/// `k` distinct indices of `0..n`, in increasing order.
fn pick(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = rng.random_range(i..n);
        all.swap(i, j);
    }
    let mut out = all[..k].to_vec();
    out.sort_unstable();
    out
}

/// One lesion: what it did, and the program it gives.
struct Planned {
    row: Value,
    program: Program,
    on_subset: bool,
}

pub struct Lesion;

impl Stage for Lesion {
    type Params = LesionParams;
    const KIND: &'static str = "lesion";
    /// 2: the random deletions and swaps draw from their own stream (`rng::Domain::
    /// LesionDraws`) instead of a generator seeded from `seed` alone (issue 24).
    const VERSION: u32 = 2;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const ABOUT: &'static str = "test-time lesions of a trained model: delete single / k random residual blocks (or plain conv layers), swap k pairs {k, swaps, draws, seed, draw_subset, recalibrate, data}";
    const METRICS: &'static [&'static str] = &[
        "error",
        "error_subset",
        "deletable",
        "recalibrate",
        "single.*",
        "delete_k.*",
        "swap_k.*",
    ];

    fn external_inputs(&self, p: &LesionParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    fn key_params(&self, params: Value) -> Value {
        DataParams::strip_for_evaluation(params)
    }

    fn check(
        &self,
        p: &LesionParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        p.data.check()?;
        if let Some(k) = p.k.iter().find(|&&k| k == 0) {
            return Err(format!(
                "`k` holds {k}; each k is a number of blocks to delete, at least 1"
            ));
        }
        if let Some(s) = p.swaps.iter().find(|&&s| s == 0) {
            return Err(format!(
                "`swaps` holds {s}; each is a number of pairs to swap, at least 1"
            ));
        }
        if p.draws == 0 && !(p.k.is_empty() && p.swaps.is_empty()) {
            return Err("`draws` must be at least 1 (or give `k: []` and `swaps: []`)".into());
        }
        if let Some((
            from,
            ModelFacts {
                spec: Some(spec), ..
            },
        )) = ModelFacts::input(inputs, "model")
        {
            check_fits(&spec, &p.data, &from.name)?;
            units_of(&spec, &from.name)?;
        }
        Ok(())
    }

    fn run(&self, p: &LesionParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.clone();
        let m = input.load_model()?;
        let (program, units) = units_of(&m.spec, &input.name).map_err(StageError::Other)?;
        let weights = m.weights.masked(&m.mask);
        let splits = ctx.data().load(&p.data)?;
        let full = p.split.of(&splits);
        let sub: Split = if p.draw_subset == 0 {
            full.clone()
        } else {
            subset(full, p.draw_subset)
        };
        let recal = (p.recalibrate > 0).then(|| subset(&splits.train, p.recalibrate));
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        let bad = |e: lesion::LesionError| StageError::Other(e.to_string());

        // Every lesion first, then one pass of evaluation.
        let mut plan = vec![
            Planned {
                row: json!({"lesion": "none", "k": 0}),
                program: program.clone(),
                on_subset: false,
            },
            Planned {
                row: json!({"lesion": "none", "k": 0, "subset": true}),
                program: program.clone(),
                on_subset: true,
            },
        ];
        if p.single {
            for u in &units {
                plan.push(Planned {
                    row: json!({"lesion": "single", "k": 1, "deleted": [u.name]}),
                    program: lesion::delete(&program, &[u.name.as_str()]).map_err(bad)?,
                    on_subset: false,
                });
            }
        }
        let mut rng = rng::stream(p.seed, Domain::LesionDraws, 0);
        for &k in p.k.iter().filter(|&&k| k <= units.len()) {
            for draw in 0..p.draws {
                let gone: Vec<&str> = pick(&mut rng, units.len(), k)
                    .into_iter()
                    .map(|i| names[i])
                    .collect();
                plan.push(Planned {
                    row: json!({"lesion": "delete", "k": k, "draw": draw, "deleted": gone}),
                    program: lesion::delete(&program, &gone).map_err(bad)?,
                    on_subset: true,
                });
            }
        }
        let pairs = swappable_pairs(&units);
        for &k in p.swaps.iter().filter(|&&k| k <= pairs.len()) {
            for draw in 0..p.draws {
                let mut order: Vec<usize> = (0..units.len()).collect();
                let chosen: Vec<(usize, usize)> = pick(&mut rng, pairs.len(), k)
                    .into_iter()
                    .map(|i| pairs[i])
                    .collect();
                for &(a, b) in &chosen {
                    order.swap(a, b);
                }
                let swapped: Vec<[&str; 2]> =
                    chosen.iter().map(|&(a, b)| [names[a], names[b]]).collect();
                plan.push(Planned {
                    row: json!({
                        "lesion": "swap", "k": k, "draw": draw, "swapped": swapped,
                        "order": order.iter().map(|&i| names[i]).collect::<Vec<_>>(),
                        "tau": kendall_tau(&order),
                    }),
                    program: lesion::reorder(&program, &order).map_err(bad)?,
                    on_subset: true,
                });
            }
        }

        let jobs: Vec<LesionJob> = plan
            .iter()
            .map(|l| LesionJob {
                program: &l.program,
                split: if l.on_subset { &sub } else { full },
            })
            .collect();
        let total = jobs.len() as u64;
        let results = {
            let ctx = &*ctx;
            evaluate_lesions(
                &jobs,
                &weights,
                recal.as_ref(),
                ctx.device(),
                &|| ctx.cancelled(),
                &mut |done| ctx.progress(done as u64, total, "lesions evaluated"),
            )
        }
        .map_err(|e| match e {
            NnError::Cancelled => StageError::Cancelled,
            e => StageError::Nn(e),
        })?;

        let mut rows = Vec::with_capacity(plan.len());
        for (l, (loss, acc)) in plan.into_iter().zip(results) {
            let mut row = l.row;
            row["error"] = json!(round6(1.0 - acc));
            row["loss"] = json!(round6(loss));
            row["images"] = json!(if l.on_subset { sub.n } else { full.n });
            rows.push(row);
        }
        let summary = summarise(&rows);
        for (name, value) in &summary.metrics {
            ctx.set_metric(name, value.clone());
        }
        ctx.set_metric("deletable", units.len() as u64);
        // The batch-norm setting, as a metric so that a report can make it its rows.
        ctx.set_metric("recalibrate", p.recalibrate as u64);
        ctx.write_json(
            "lesion.json",
            &json!({
                "model": m.spec.family(),
                "units": units.iter().map(|u| json!({
                    "name": u.name, "kind": u.kind, "shape": u.shape.to_string(),
                })).collect::<Vec<_>>(),
                "recalibrate": p.recalibrate,
                "errors": "fractions of the images misclassified; delta = lesioned − unlesioned on the same images",
                "rows": rows,
            }),
        )?;
        ctx.write_json("curve.json", &summary.curve)
    }
}

/// The mean of a non-empty list (NaN for none, which the callers never pass).
fn mean(xs: &[f64]) -> f64 {
    crate::stats::mean(xs).unwrap_or(f64::NAN)
}

fn median(xs: &[f64]) -> f64 {
    crate::stats::median(xs).unwrap_or(f64::NAN)
}

struct Summary {
    metrics: Vec<(String, Value)>,
    /// Rows `{k, delete_error, swap_error, swap_tau}`, k = 0 the unlesioned model.
    curve: Vec<Value>,
}

/// The stage's metrics and error-by-k curve from its rows.
fn summarise(rows: &[Value]) -> Summary {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    fn of<'a>(rows: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
        rows.iter().filter(move |r| r["lesion"] == kind)
    }
    let full = of(rows, "none").find(|r| r.get("subset").is_none());
    let part = of(rows, "none").find(|r| r.get("subset").is_some());
    let e0 = full.map(|r| f(r, "error")).unwrap_or(f64::NAN);
    let e0_sub = part.map(|r| f(r, "error")).unwrap_or(f64::NAN);
    let mut metrics = vec![
        ("error".to_string(), json!(e0)),
        ("error_subset".to_string(), json!(e0_sub)),
    ];
    let singles: Vec<(String, f64)> = of(rows, "single")
        .map(|r| {
            (
                r["deleted"][0].as_str().unwrap_or("").to_string(),
                f(r, "error"),
            )
        })
        .collect();
    if !singles.is_empty() {
        let deltas: Vec<f64> = singles.iter().map(|(_, e)| e - e0).collect();
        let max = deltas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        metrics.push((
            "single.median_delta_error".into(),
            json!(round6(median(&deltas))),
        ));
        metrics.push((
            "single.mean_delta_error".into(),
            json!(round6(mean(&deltas))),
        ));
        metrics.push(("single.max_delta_error".into(), json!(round6(max))));
        for (name, e) in &singles {
            metrics.push((format!("single.{name}.error"), json!(e)));
        }
    }
    let mut curve =
        vec![json!({"k": 0, "delete_error": e0_sub, "swap_error": e0_sub, "swap_tau": 1.0})];
    let mut ks: Vec<u64> = rows
        .iter()
        .filter(|r| r["lesion"] == "delete" || r["lesion"] == "swap")
        .filter_map(|r| r["k"].as_u64())
        .collect();
    ks.sort_unstable();
    ks.dedup();
    for k in ks {
        let mut point = json!({"k": k});
        for (kind, prefix, col) in [
            ("delete", "delete_k", "delete_error"),
            ("swap", "swap_k", "swap_error"),
        ] {
            let at_k: Vec<&Value> = of(rows, kind)
                .filter(|r| r["k"].as_u64() == Some(k))
                .collect();
            if at_k.is_empty() {
                continue;
            }
            let errors: Vec<f64> = at_k.iter().map(|r| f(r, "error")).collect();
            let e = round6(mean(&errors));
            metrics.push((format!("{prefix}.{k}.mean_error"), json!(e)));
            point[col] = json!(e);
            if kind == "swap" {
                let tau = round6(mean(&at_k.iter().map(|r| f(r, "tau")).collect::<Vec<_>>()));
                metrics.push((format!("{prefix}.{k}.mean_tau"), json!(tau)));
                point["swap_tau"] = json!(tau);
            }
        }
        curve.push(point);
    }
    Summary { metrics, curve }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_rows() {
        let rows = vec![
            json!({"lesion": "none", "k": 0, "error": 0.10}),
            json!({"lesion": "none", "k": 0, "subset": true, "error": 0.12}),
            json!({"lesion": "single", "k": 1, "deleted": ["a"], "error": 0.11}),
            json!({"lesion": "single", "k": 1, "deleted": ["b"], "error": 0.14}),
            json!({"lesion": "single", "k": 1, "deleted": ["c"], "error": 0.30}),
            json!({"lesion": "delete", "k": 2, "error": 0.2}),
            json!({"lesion": "delete", "k": 2, "error": 0.4}),
            json!({"lesion": "swap", "k": 1, "error": 0.13, "tau": 0.5}),
        ];
        let s = summarise(&rows);
        let m: std::collections::BTreeMap<_, _> = s.metrics.into_iter().collect();
        assert_eq!(m["single.median_delta_error"], json!(0.04));
        assert_eq!(m["single.max_delta_error"], json!(0.2));
        assert_eq!(m["single.mean_delta_error"], json!(0.083333));
        assert_eq!(m["single.c.error"], json!(0.30));
        assert_eq!(m["delete_k.2.mean_error"], json!(0.3));
        assert_eq!(m["swap_k.1.mean_tau"], json!(0.5));
        assert_eq!(s.curve.len(), 3);
        assert_eq!(
            s.curve[1],
            json!({"k": 1, "swap_error": 0.13, "swap_tau": 0.5})
        );
        assert_eq!(s.curve[2], json!({"k": 2, "delete_error": 0.3}));
    }

    #[test]
    fn picks_are_distinct_and_sorted() {
        let mut rng = rng::stream(7, Domain::LesionDraws, 0);
        for k in 0..=5 {
            let p = pick(&mut rng, 5, k);
            assert_eq!(p.len(), k);
            assert!(p.windows(2).all(|w| w[0] < w[1]) && p.iter().all(|&i| i < 5));
        }
    }
}
