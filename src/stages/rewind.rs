//! `rewind`: the lottery ticket. The survivors of `mask` take their values from `weights` at
//! iteration `iteration` (0 = the original initialisation θ0; k > 0 = late rewinding to θk,
//! which needs the training stage to have saved iteration k).

use serde::{Deserialize, Serialize};

use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::Checkpoint;
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RewindParams {
    #[serde(default)]
    pub iteration: u64,
}

pub struct Rewind;

impl Stage for Rewind {
    type Params = RewindParams;
    const KIND: &'static str = "rewind";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[
        Role::one("weights").taking(MODEL),
        Role::one("mask").taking(MODEL),
    ];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str =
        "survivors of `mask` rewound to `weights` at `iteration` (0 = θ0) {iteration}";
    const METRICS: &'static [&'static str] = &["iteration", "remaining_pct"];

    fn check(
        &self,
        p: &RewindParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        let Some((w, facts)) = ModelFacts::input(inputs, "weights") else {
            return Ok(());
        };
        if let (Some(a), Some(b)) = (&facts.spec, ModelFacts::spec_of(inputs, "mask"))
            && *a != b
        {
            return Err(format!(
                "`weights` (`{}`) and `mask` are models of different architectures; rewind \
                 needs a mask of the same model",
                w.name
            ));
        }
        if let Some(saved) = facts.checkpoints {
            if !saved.contains(&p.iteration) {
                return Err(format!(
                    "rewinds to iteration {} of `{}`, which saves only {:?}; add {} to its `save_at`",
                    p.iteration, w.name, saved, p.iteration
                ));
            }
        } else if p.iteration != 0 {
            return Err(format!(
                "`iteration: {}` needs `weights` to be a train stage with that iteration in `save_at`; `{}` is a `{}` stage",
                p.iteration, w.name, w.kind
            ));
        }
        Ok(())
    }

    fn facts(&self, p: &RewindParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> serde_json::Value {
        let Some((w, facts)) = ModelFacts::input(inputs, "weights") else {
            return ModelFacts::default().to_value();
        };
        // A training's checkpoint after step 0 carries its optimiser state; θ0 has none.
        let optimizer = facts
            .optimizer
            .filter(|_| w.kind != "train" || p.iteration > 0);
        ModelFacts {
            optimizer,
            ..ModelFacts::of_spec(facts.spec)
        }
        .to_value()
    }

    fn run(&self, p: &RewindParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let w_in = ctx.input("weights")?.clone();
        let stem = if w_in.kind == "train" {
            format!("ckpt/iter_{}", p.iteration)
        } else {
            "model".to_string()
        };
        let weights = w_in.load_checkpoint(&stem)?;
        let optimizer = w_in.load_optimizer(&stem, &weights.weights)?;
        let mask_src = ctx.input("mask")?.load_model()?;
        if weights.spec != mask_src.spec {
            return Err(StageError::Input {
                role: "mask".into(),
                message: format!(
                    "its architecture {:?} differs from the weights' {:?}",
                    mask_src.spec, weights.spec
                ),
            });
        }
        let w = weights.weights.masked(&mask_src.mask);
        ctx.set_metric("iteration", p.iteration);
        ctx.set_metric(
            "remaining_pct",
            round4(mask_src.mask.remaining_fraction() * 100.0),
        );
        // The optimiser state of the rewound checkpoint travels with it, masked, for a
        // training that asks to continue it (`resume_optimizer`).
        if let Some(state) = optimizer {
            ctx.save_optimizer("model", &w, &state.masked(&w, &mask_src.mask))?;
        }
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: weights.spec,
                weights: w,
                mask: mask_src.mask,
                step: p.iteration,
                seed: weights.seed,
            },
        )
    }
}
