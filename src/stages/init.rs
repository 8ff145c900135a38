//! `init`: a seeded, untrained network θ0 (the weights the lottery ticket rewinds to).

use serde::{Deserialize, Serialize};

use serde_json::Value;

use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError};
use crate::nn::{Checkpoint, InitScheme, Mask, ModelSpec, init_weights};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct InitParams {
    #[serde(default = "ModelSpec::lenet_300_100")]
    pub model: ModelSpec,
    #[serde(default = "kaiming_normal")]
    pub init: InitScheme,
    #[serde(default)]
    pub seed: u64,
}

pub(crate) fn kaiming_normal() -> InitScheme {
    InitScheme::KaimingNormal
}

pub struct Init;

impl Stage for Init {
    type Params = InitParams;
    const KIND: &'static str = "init";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "a seeded untrained network θ0 {model, init, seed}";
    const METRICS: &'static [&'static str] = &["weights", "remaining_pct"];

    // Until 2026-12-07 a training step gave a projection shortcut's batch statistics to the
    // block's first batch norm (and each body norm its predecessor's): every model with a
    // projection trained to wrong running statistics. Their keys (and all keys downstream)
    // change with this mark, so that no cached result of the bug is reused; every other
    // model keeps its key.
    fn key_params(&self, mut params: Value) -> Value {
        let projects = params
            .get("model")
            .and_then(|m| serde_json::from_value::<ModelSpec>(m.clone()).ok())
            .and_then(|m| m.program().ok())
            .is_some_and(|p| p.has_projection());
        if projects && let Some(o) = params.as_object_mut() {
            o.insert("batch_stats_fix".into(), Value::from(1));
        }
        params
    }

    fn facts(&self, p: &InitParams, _inputs: &[(String, Vec<super::UpstreamInfo>)]) -> Value {
        ModelFacts::of_spec(Some(p.model.clone())).to_value()
    }

    fn check(
        &self,
        p: &InitParams,
        _inputs: &[(String, Vec<super::UpstreamInfo>)],
    ) -> Result<(), String> {
        p.model.validate()
    }

    fn run(&self, p: &InitParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let weights = init_weights(&p.model, p.init, p.seed);
        let mask = Mask::dense(&p.model);
        ctx.set_metric("weights", p.model.num_weights() as u64);
        ctx.set_metric("remaining_pct", 100.0);
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: p.model.clone(),
                weights,
                mask,
                step: 0,
                seed: p.seed,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_models_with_a_projection_carry_the_batch_statistics_mark() {
        let key = |model: Value| Init.key_params(json!({"model": model, "seed": 1}));
        let a = json!({"arch": "resnet", "depth": 20});
        assert_eq!(key(a.clone()), json!({"model": a, "seed": 1}));
        let b = json!({"arch": "resnet", "depth": 20, "shortcut": "b"});
        assert_eq!(
            key(b.clone()),
            json!({"model": b, "seed": 1, "batch_stats_fix": 1})
        );
        // A malformed model is left for `check` to report.
        let bad = json!({"arch": "resnet", "depth": 21});
        assert_eq!(key(bad.clone()), json!({"model": bad, "seed": 1}));
    }
}
