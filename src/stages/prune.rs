//! `prune`: removes a fraction of the *surviving* weights (magnitude or random, per layer or
//! global), composing the new mask with the one the input already had. Biases are never
//! pruned. The weights pass through unchanged (masked); `rewind` or `reinit` decide what the
//! survivors start from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::train::{require_models, round4};
use super::{Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::{Checkpoint, PruneMethod, PruneScope, prune};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    #[serde(default = "magnitude")]
    pub method: PruneMethod,
    #[serde(default = "layerwise")]
    pub scope: PruneScope,
    /// Fraction of each layer's surviving weights to remove.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Per-layer fractions by layer name (`fc3`), or `output` for the last layer (the lottery
    /// ticket paper prunes the output layer at half the rate).
    #[serde(default)]
    pub layers: BTreeMap<String, f64>,
    /// Seed for `method: random`.
    #[serde(default)]
    pub seed: u64,
}

fn magnitude() -> PruneMethod {
    PruneMethod::Magnitude
}
fn layerwise() -> PruneScope {
    PruneScope::Layerwise
}
fn default_fraction() -> f64 {
    0.2
}

pub struct Prune;

impl Stage for Prune {
    type Params = PruneParams;
    const KIND: &'static str = "prune";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("model")];
    const ABOUT: &'static str =
        "removes a fraction of the surviving weights {method, scope, fraction, layers}";

    fn check(&self, p: &PruneParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> Result<(), String> {
        if !(0.0..=1.0).contains(&p.fraction) {
            return Err(format!(
                "`fraction` must be between 0 and 1, got {}",
                p.fraction
            ));
        }
        for (name, f) in &p.layers {
            if !(0.0..=1.0).contains(f) {
                return Err(format!("`layers.{name}` must be between 0 and 1, got {f}"));
            }
        }
        require_models(inputs)
    }

    fn run(&self, p: &PruneParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.load_model()?;
        let names = input.spec.layer_names();
        let output = input.spec.output_layer();
        for layer in p.layers.keys() {
            if layer != "output" && !names.contains(layer) {
                return Err(StageError::Other(format!(
                    "`layers` names `{layer}`, which this model does not have (its layers: {}, or `output`)",
                    names.join(", ")
                )));
            }
        }
        let rates: Vec<f64> = names
            .iter()
            .map(|n| {
                p.layers
                    .get(n)
                    .or_else(|| {
                        if *n == output {
                            p.layers.get("output")
                        } else {
                            None
                        }
                    })
                    .copied()
                    .unwrap_or(p.fraction)
            })
            .collect();
        let mask = prune(
            &input.weights,
            &input.mask,
            p.method,
            p.scope,
            &rates,
            p.seed,
        )?;
        let weights = input.weights.masked(&mask);
        let density = mask.density();
        for (n, d) in names.iter().zip(&density) {
            ctx.set_metric(&format!("density_{n}"), round4(*d));
        }
        ctx.set_metric("remaining_pct", round4(mask.remaining_fraction() * 100.0));
        ctx.set_metric("weights_remaining", mask.kept() as u64);
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: input.spec,
                weights,
                mask,
                step: input.step,
                seed: input.seed,
            },
        )
    }
}
