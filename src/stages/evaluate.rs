//! `evaluate`: accuracy and loss of a model on a split, with its per-layer density. When the
//! model comes from `train`, the training's early-stopping figures are carried along so that a
//! report can show them beside the accuracy.

use serde::{Deserialize, Serialize};

use super::dataset::DataParams;
use super::model_facts::{ModelFacts, check_fits};
use super::train::round4;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::evaluate;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Val,
    Test,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    #[serde(default = "test")]
    pub split: SplitName,
    #[serde(default)]
    pub data: DataParams,
}

fn test() -> SplitName {
    SplitName::Test
}

pub struct Evaluate;

impl Stage for Evaluate {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const ABOUT: &'static str = "accuracy, loss and per-layer density on a split {split, data}";

    fn external_inputs(&self, p: &EvaluateParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    fn key_params(&self, params: serde_json::Value) -> serde_json::Value {
        DataParams::strip_for_evaluation(params)
    }

    fn check(
        &self,
        p: &EvaluateParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        p.data.check()?;
        match ModelFacts::input(inputs, "model") {
            Some((
                from,
                ModelFacts {
                    spec: Some(spec), ..
                },
            )) => check_fits(&spec, &p.data, &from.name),
            _ => Ok(()),
        }
    }

    fn run(&self, p: &EvaluateParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.clone();
        let m = input.load_model()?;
        let splits = ctx.data().load(&p.data)?;
        let split = match p.split {
            SplitName::Train => &splits.train,
            SplitName::Val => &splits.val,
            SplitName::Test => &splits.test,
        };
        let (loss, acc) = evaluate(&m.spec, &m.weights, &m.mask, split, ctx.device())?;
        ctx.set_metric("accuracy", acc);
        ctx.set_metric("loss", loss);
        ctx.set_metric("remaining_pct", round4(m.mask.remaining_fraction() * 100.0));
        ctx.set_metric("weights_remaining", m.mask.kept() as u64);
        for (n, d) in m.spec.layer_names().iter().zip(m.mask.density()) {
            ctx.set_metric(&format!("density_{n}"), round4(d));
        }
        for k in ["early_stop_iteration", "early_stop_test_acc", "iterations"] {
            if let Some(v) = input.metrics.get(k) {
                ctx.set_metric(k, v.clone());
            }
        }
        Ok(())
    }
}
