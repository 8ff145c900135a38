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
