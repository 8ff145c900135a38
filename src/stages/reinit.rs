//! `reinit`: Rethinking's control. The same mask with freshly drawn random weights. With
//! `budget: same_flops` (Scratch-B) the next `train` runs FLOPs_dense / FLOPs_pruned times as
//! many iterations; `same_epochs` (Scratch-E) keeps the length.

use serde::{Deserialize, Serialize};

use super::init::kaiming_normal;
use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::{Checkpoint, InitDraw, InitScheme, Mask, draw_weights, forward_flops};
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    SameEpochs,
    SameFlops,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReinitParams {
    #[serde(default = "kaiming_normal")]
    pub init: InitScheme,
    #[serde(default = "one")]
    pub seed: u64,
    #[serde(default = "same_epochs")]
    pub budget: Budget,
}

fn one() -> u64 {
    1
}
fn same_epochs() -> Budget {
    Budget::SameEpochs
}

pub struct Reinit;

impl Stage for Reinit {
    type Params = ReinitParams;
    const KIND: &'static str = "reinit";
    /// 2: the fresh weights come from `reinit`'s own random streams, not `init`'s (with `init`
    /// and `reinit` at the same seed, version 1 reproduced the ticket's θ0 exactly); every
    /// reinit key, and every key downstream of one, changed with it, on purpose.
    const VERSION: u32 = 2;
    const ROLES: &'static [Role] = &[Role::one("mask").taking(MODEL)];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str =
        "the mask with fresh random weights (Rethinking's control) {init, seed, budget}";
    const METRICS: &'static [&'static str] = &[
        "flops_dense",
        "flops_pruned",
        "budget_scale",
        "remaining_pct",
    ];

    fn facts(&self, p: &ReinitParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> serde_json::Value {
        ModelFacts {
            spec: ModelFacts::spec_of(inputs, "mask"),
            checkpoints: None,
            length_scaled: p.budget == Budget::SameFlops,
            optimizer: None,
        }
        .to_value()
    }

    fn run(&self, p: &ReinitParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let src = ctx.input("mask")?.load_model()?;
        let fresh = draw_weights(&src.spec, p.init, p.seed, InitDraw::Reinit).masked(&src.mask);
        let dense = forward_flops(&src.spec, &Mask::dense(&src.spec));
        let pruned = forward_flops(&src.spec, &src.mask);
        ctx.set_metric("flops_dense", dense);
        ctx.set_metric("flops_pruned", pruned);
        if p.budget == Budget::SameFlops {
            ctx.set_metric("budget_scale", dense as f64 / pruned.max(1) as f64);
        }
        ctx.set_metric(
            "remaining_pct",
            round4(src.mask.remaining_fraction() * 100.0),
        );
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: src.spec,
                weights: fresh,
                mask: src.mask,
                step: 0,
                seed: p.seed,
            },
        )
    }
}
