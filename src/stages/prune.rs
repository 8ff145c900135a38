//! `prune`: removes a fraction of the *surviving* weights (magnitude or random, per layer or
//! global), composing the new mask with the one the input already had. Biases are never
//! pruned. The weights pass through unchanged (masked); `rewind` or `reinit` decide what the
//! survivors start from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::filter_prune::prune_filters;
use crate::nn::prune::global_pool;
use crate::nn::{Checkpoint, PruneMethod, PruneScope, prune};
use crate::spec::glob_match as glob;
use crate::stats::round4;

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
    /// Per-layer fractions by layer name (`fc3`, `layer1.0.conv2`), by pattern with `*`
    /// (`conv*`, `layer3.*`), or `output` for the model's output layer (the lottery ticket
    /// paper prunes it at half the rate). An exact name wins over `output`, which wins over
    /// patterns; among patterns the longest wins.
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

/// The rate of every prunable layer: its exact name, else `output` for the output layer,
/// else the longest matching pattern, else `fraction`. Every entry must match some layer.
fn layer_rates(
    given: &BTreeMap<String, f64>,
    fraction: f64,
    names: &[String],
    output: &str,
) -> Result<Vec<f64>, String> {
    for key in given.keys() {
        let matched = key == "output" || names.iter().any(|n| glob(key, n));
        if !matched {
            return Err(format!(
                "`layers` names `{key}`, which matches no layer of this model (its layers: {}; \
                 or `output`, or a pattern with `*`)",
                names.join(", ")
            ));
        }
    }
    Ok(names
        .iter()
        .map(|n| {
            if let Some(r) = given.get(n) {
                return *r;
            }
            if n == output
                && let Some(r) = given.get("output")
            {
                return *r;
            }
            given
                .iter()
                .filter(|(k, _)| k.contains('*') && glob(k, n))
                .max_by_key(|(k, _)| k.len())
                .map_or(fraction, |(_, r)| *r)
        })
        .collect())
}

impl Stage for Prune {
    type Params = PruneParams;
    const KIND: &'static str = "prune";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "removes a fraction of the surviving weights, or whole filters {method, scope, fraction, layers}";
    const METRICS: &'static [&'static str] = &[
        "remaining_pct",
        "weights_remaining",
        "density_*",
        "filters_*",
    ];

    /// `method: filter` masks the dropped filters' biases and batch-norm entries since its
    /// revision 2, which changes its checkpoints (not its accuracies: the channel was already
    /// cut where it is read), so its keys carry the revision; other methods' keys are as
    /// they were, their results being unchanged.
    fn key_params(&self, mut params: serde_json::Value) -> serde_json::Value {
        if params.get("method").and_then(|m| m.as_str()) == Some("filter")
            && let Some(map) = params.as_object_mut()
        {
            map.insert("filter_revision".into(), 2.into());
        }
        params
    }

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
        if p.method == PruneMethod::Filter && p.scope == PruneScope::Global {
            return Err(
                "`method: filter` ranks filters within each conv (L1 norms of different layers \
                 are not comparable); use `scope: layerwise`"
                    .into(),
            );
        }
        if let Some(spec) = ModelFacts::spec_of(inputs, "model") {
            let names = spec.layer_names();
            let rates = layer_rates(&p.layers, p.fraction, &names, &spec.output_layer())?;
            if p.scope == PruneScope::Global && p.method != PruneMethod::Filter {
                global_pool(&rates, &names)?;
            }
        }
        Ok(())
    }

    fn facts(&self, _p: &PruneParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> serde_json::Value {
        let Some((_, facts)) = ModelFacts::input(inputs, "model") else {
            return ModelFacts::default().to_value();
        };
        ModelFacts {
            optimizer: facts.optimizer,
            ..ModelFacts::of_spec(facts.spec)
        }
        .to_value()
    }

    fn run(&self, p: &PruneParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let entry = ctx.input("model")?.clone();
        let input = entry.load_model()?;
        let optimizer = entry.load_optimizer("model", &input.weights)?;
        let names = input.spec.layer_names();
        let output = input.spec.output_layer();
        let rates =
            layer_rates(&p.layers, p.fraction, &names, &output).map_err(StageError::Other)?;
        let mask = if p.method == PruneMethod::Filter {
            let (mask, filters) = prune_filters(&input.spec, &input.weights, &input.mask, &rates)?;
            for f in filters {
                ctx.set_metric(&format!("filters_{}", f.conv), f.after as u64);
            }
            mask
        } else {
            prune(
                &input.weights,
                &input.mask,
                p.method,
                p.scope,
                &rates,
                p.seed,
            )?
        };
        let weights = input.weights.masked(&mask);
        let density = mask.density();
        for (n, d) in names.iter().zip(&density) {
            ctx.set_metric(&format!("density_{n}"), round4(*d));
        }
        ctx.set_metric("remaining_pct", round4(mask.remaining_fraction() * 100.0));
        ctx.set_metric("weights_remaining", mask.kept() as u64);
        // The input's optimiser state travels with the pruned model, masked, for a fine-tuning
        // that asks to continue it (`resume_optimizer`).
        if let Some(state) = optimizer {
            ctx.save_optimizer("model", &weights, &state.masked(&weights, &mask))?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        assert!(glob("conv*", "conv12"));
        assert!(glob("layer*.conv2", "layer3.1.conv2"));
        assert!(!glob("layer*.conv2", "layer3.1.conv2x"));
        assert!(glob("*", "fc"));
        assert!(!glob("fc", "fc1"));
        assert!(glob("*.shortcut.0", "layer2.0.shortcut.0"));
    }

    #[test]
    fn only_filter_pruning_keys_carry_its_revision() {
        let key = |p: serde_json::Value| Prune.key_params(p);
        let magnitude = serde_json::json!({"scope": "global", "fraction": 0.8});
        assert_eq!(key(magnitude.clone()), magnitude);
        assert_eq!(
            key(serde_json::json!({"method": "filter", "fraction": 0.5})),
            serde_json::json!({"method": "filter", "fraction": 0.5, "filter_revision": 2})
        );
    }

    #[test]
    fn rates_follow_precedence() {
        // Conv-2 as Frankle & Carbin prune it: conv 10%, fc 20%, output 10%.
        let names: Vec<String> = ["conv1", "conv2", "fc1", "fc2", "fc3"]
            .map(String::from)
            .to_vec();
        let given = BTreeMap::from([
            ("conv*".to_string(), 0.1),
            ("fc*".to_string(), 0.2),
            ("output".to_string(), 0.1),
            ("fc2".to_string(), 0.3),
        ]);
        assert_eq!(
            layer_rates(&given, 0.5, &names, "fc3").unwrap(),
            vec![0.1, 0.1, 0.2, 0.3, 0.1]
        );
        let given = BTreeMap::from([
            ("layer1.*".to_string(), 0.1),
            ("layer1.0.*".to_string(), 0.4),
        ]);
        let names = ["layer1.0.conv1", "layer1.1.conv1", "fc"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            layer_rates(&given, 0.5, &names, "fc").unwrap(),
            vec![0.4, 0.1, 0.5]
        );
        let e = layer_rates(
            &BTreeMap::from([("cnv*".to_string(), 0.1)]),
            0.2,
            &names,
            "fc",
        )
        .unwrap_err();
        assert!(e.contains("`cnv*`, which matches no layer"), "{e}");
    }
}
