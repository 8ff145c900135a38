//! `repr_drop`: RePr's drop (Prakash et al., CVPR 2019). Ranks the filters of the ranked conv
//! layers by their overlap with the other filters of their layer, globally, and switches off
//! the `fraction` that overlap most: their weights, bias and batch-norm entries become exactly
//! zero and stay masked through the next `train`. The input model is kept as `at_drop.*` (the
//! dropped filters' values at drop time, and the mask before the drop), and `dropped.json`
//! lists what was dropped, for `repr_reinit`. See [`crate::nn::methods::repr`] for the exact rules.

use serde::{Deserialize, Serialize};

use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::methods::repr::{
    ConvFilters, RankedLayer, choose_drops, conv_layers, drop_mask, orthogonality,
};
use crate::nn::{Checkpoint, ModelSpec};
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReprDropParams {
    /// Fraction of the ranked filters to drop: `round(fraction · candidates)`, half up.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Rank the first conv layer too. Off by default: the paper's author said the first layer
    /// is not ranked (its filters cannot be orthogonal when fan-in < filters, 27 < 32 on
    /// CIFAR, so ranking it makes it lose most of the drops).
    #[serde(default)]
    pub rank_first: bool,
    /// The conv layers to rank, by name (`conv2`, `layer1.0.conv1`); default every dense conv
    /// but the first (all of them with `rank_first`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

fn default_fraction() -> f64 {
    0.3
}

/// What `repr_drop` writes to `dropped.json` (and `repr_reinit` reads).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DropRecord {
    pub fraction: f64,
    pub candidates: usize,
    pub dropped: usize,
    /// Layers that kept their last filter although the ranking would have dropped it.
    pub capped: Vec<String>,
    pub layers: Vec<DropLayer>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DropLayer {
    pub conv: String,
    /// Dropped filter indices, ascending.
    pub dropped: Vec<usize>,
    /// Every filter's overlap O_f at drop time.
    pub overlap: Vec<f64>,
}

/// The conv layers `p` ranks in `spec`, or a message naming what is wrong.
pub(crate) fn ranked_layers(
    spec: &ModelSpec,
    layers: Option<&[String]>,
    rank_first: bool,
) -> Result<Vec<ConvFilters>, String> {
    let program = spec.program()?;
    let convs = conv_layers(&program);
    match layers {
        Some(names) => names
            .iter()
            .map(|n| {
                convs.iter().find(|c| &c.conv == n).cloned().ok_or_else(|| {
                    format!(
                        "`layers` names `{n}`, which is no dense conv layer of this model (its \
                         conv layers: {})",
                        convs
                            .iter()
                            .map(|c| c.conv.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect(),
        None => Ok(convs.into_iter().skip(usize::from(!rank_first)).collect()),
    }
}

pub struct ReprDrop;

impl Stage for ReprDrop {
    type Params = ReprDropParams;
    const KIND: &'static str = "repr_drop";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "RePr: masks the filters that overlap most with their layer, ranked globally {fraction, rank_first, layers}";
    const METRICS: &'static [&'static str] = &[
        "dropped_filters",
        "candidate_filters",
        "capped_layers",
        "remaining_pct",
        "dropped_*",
        "overlap_mean_*",
    ];

    fn check(
        &self,
        p: &ReprDropParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        if !(p.fraction.is_finite() && (0.0..1.0).contains(&p.fraction)) {
            return Err(format!(
                "`fraction` must be in [0, 1), got {}; RePr drops about 0.3",
                p.fraction
            ));
        }
        if p.layers.is_some() && p.rank_first {
            return Err(
                "give `layers` (exactly the conv layers to rank) or `rank_first`, not both".into(),
            );
        }
        if let Some(spec) = ModelFacts::spec_of(inputs, "model") {
            let ranked = ranked_layers(&spec, p.layers.as_deref(), p.rank_first)?;
            if ranked.is_empty() {
                return Err(
                    "the model has no conv layer to rank (the first is left out unless \
                     `rank_first: true`)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    fn facts(
        &self,
        _p: &ReprDropParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> serde_json::Value {
        ModelFacts::of_spec(ModelFacts::spec_of(inputs, "model")).to_value()
    }

    fn run(&self, p: &ReprDropParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.load_model()?;
        let convs = ranked_layers(&input.spec, p.layers.as_deref(), p.rank_first)
            .map_err(StageError::Other)?;
        let names = input.spec.prunable();
        let mut ranked = Vec::new();
        for c in &convs {
            let weight = format!("{}.weight", c.conv);
            let k = names.iter().position(|n| *n == weight).ok_or_else(|| {
                StageError::Other(format!("`{weight}` is not a prunable parameter"))
            })?;
            let data = &input.weights.param(&weight).expect("a conv's weight").data;
            // A filter the mask already removed entirely (pruned earlier) is no candidate.
            let candidate = (0..c.filters)
                .map(|f| input.mask.layers[k][f * c.fan_in..(f + 1) * c.fan_in].contains(&true))
                .collect();
            ranked.push(RankedLayer {
                conv: c.conv.clone(),
                overlap: orthogonality(data, c.filters),
                candidate,
            });
        }
        let (drops, capped) = choose_drops(&ranked, p.fraction);
        let mask = drop_mask(&input.spec, &input.mask, &convs, &drops)?;
        let weights = input.weights.masked(&mask);
        let candidates: usize = ranked
            .iter()
            .map(|l| l.candidate.iter().filter(|&&c| c).count())
            .sum();
        let dropped: usize = drops.iter().map(Vec::len).sum();
        let record = DropRecord {
            fraction: p.fraction,
            candidates,
            dropped,
            capped: capped.clone(),
            layers: ranked
                .iter()
                .zip(&drops)
                .map(|(l, d)| DropLayer {
                    conv: l.conv.clone(),
                    dropped: d.clone(),
                    overlap: l.overlap.iter().map(|&o| round4(o)).collect(),
                })
                .collect(),
        };
        let mut log = format!(
            "repr_drop: ranked {} ({candidates} candidate filters; first conv {}), dropped \
             round({} x {candidates}) = {dropped}\n",
            convs
                .iter()
                .map(|c| c.conv.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if p.rank_first || p.layers.is_some() {
                "as listed"
            } else {
                "not ranked"
            },
            p.fraction
        );
        for (l, d) in ranked.iter().zip(&drops) {
            let mean = l.overlap.iter().sum::<f64>() / l.overlap.len().max(1) as f64;
            log.push_str(&format!(
                "  {}: dropped {} of {} filters {:?}; mean overlap {:.4}\n",
                l.conv,
                d.len(),
                l.overlap.len(),
                d,
                mean
            ));
            ctx.set_metric(&format!("dropped_{}", l.conv), d.len() as u64);
            ctx.set_metric(&format!("overlap_mean_{}", l.conv), round4(mean));
        }
        if !capped.is_empty() {
            log.push_str(&format!(
                "  kept the last filter of {} (the ranking would have emptied them)\n",
                capped.join(", ")
            ));
        }
        tracing::info!(stage = ctx.name(), "{}", log.trim_end());
        std::fs::write(ctx.out_dir().join("repr.log"), &log)
            .map_err(|e| StageError::io(ctx.out_dir().join("repr.log"), e))?;
        ctx.set_metric("dropped_filters", dropped as u64);
        ctx.set_metric("candidate_filters", candidates as u64);
        ctx.set_metric("capped_layers", capped.len() as u64);
        ctx.set_metric("remaining_pct", round4(mask.remaining_fraction() * 100.0));
        ctx.write_json("dropped.json", &record)?;
        ctx.save_model("at_drop", &input)?;
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: input.spec.clone(),
                weights,
                mask,
                step: input.step,
                seed: input.seed,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_conv_is_ranked_only_when_asked() {
        let spec: ModelSpec =
            serde_json::from_str(r#"{"arch":"convnet","layers":[32,"M",32,"M",32,"M"],"fc":[]}"#)
                .unwrap();
        let names = |l: Vec<ConvFilters>| l.into_iter().map(|c| c.conv).collect::<Vec<_>>();
        assert_eq!(
            names(ranked_layers(&spec, None, false).unwrap()),
            ["conv2", "conv3"]
        );
        assert_eq!(
            names(ranked_layers(&spec, None, true).unwrap()),
            ["conv1", "conv2", "conv3"]
        );
        let listed = ["conv3".to_string(), "conv1".to_string()];
        assert_eq!(
            names(ranked_layers(&spec, Some(&listed), false).unwrap()),
            ["conv3", "conv1"]
        );
        let e = ranked_layers(&spec, Some(&["fc".to_string()]), false).unwrap_err();
        assert!(
            e.contains("`fc`, which is no dense conv layer") && e.contains("conv1, conv2, conv3"),
            "{e}"
        );
    }
}
