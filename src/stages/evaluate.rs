//! `evaluate`: accuracy and loss of a model on a split, with its per-layer density. When the
//! model comes from `train`, the training's early-stopping figures are carried along so that a
//! report can show them beside the accuracy.

use serde::{Deserialize, Serialize};

use super::dataset::DataParams;
use super::evaluations::{self, DataIdentity};
use super::model_facts::{ModelFacts, check_fits};
use super::teacher_data::{check_generated_fits, data_input, read_generated};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::data::generated::DATASET;
use crate::nn::evaluate;
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Val,
    Test,
}

impl SplitName {
    /// This split of `splits`.
    pub fn of(self, splits: &super::dataset::Splits) -> &crate::data::Split {
        match self {
            SplitName::Train => &splits.train,
            SplitName::Val => &splits.val,
            SplitName::Test => &splits.test,
        }
    }
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
    /// `data` (optional): a generated dataset (`teacher_data`) instead of the `data:`
    /// parameter; `split: train` reads its training split, `val` and `test` its held-out one.
    const ROLES: &'static [Role] = &[
        Role::one("model").taking(MODEL),
        Role::optional("data").taking(DATASET),
    ];
    const ABOUT: &'static str = "accuracy, loss and per-layer density on a split {split, data}; inputs: model, data (optional: a generated dataset; loss = MSE, no accuracy)";
    const METRICS: &'static [&'static str] = &[
        "accuracy",
        "loss",
        "remaining_pct",
        "weights_remaining",
        "density_*",
        "early_stop_iteration",
        "early_stop_test_acc",
        "iterations",
    ];

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
        if data_input(inputs) {
            return match ModelFacts::input(inputs, "model") {
                Some((from, facts)) => {
                    check_generated_fits(&p.data, facts.spec.as_ref(), &from.name, inputs)
                }
                None => Ok(()),
            };
        }
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
        // What is evaluated, first: the data's identity decides whether the model's own stage
        // already has the figures; only when it does not is the split loaded.
        let dataset = ctx.inputs("data").first().cloned();
        let train_split = p.split == SplitName::Train;
        let identity = match &dataset {
            None => DataIdentity::of_params(&p.data, p.split),
            Some(d) => DataIdentity::of_generated(d, train_split),
        };
        let (loss, acc) = match reuse(ctx, &input, &identity)? {
            Some(figures) => figures,
            None => match &dataset {
                None => {
                    let splits = ctx.data().load(&p.data)?;
                    evaluate(
                        &m.spec,
                        &m.weights,
                        &m.mask,
                        p.split.of(&splits),
                        ctx.device(),
                    )?
                }
                Some(d) => {
                    let g = read_generated(d, train_split)?;
                    let split = g.train.as_ref().unwrap_or(&g.eval);
                    evaluate(&m.spec, &m.weights, &m.mask, split, ctx.device())?
                }
            },
        };
        // Regression targets (MSE) have no accuracy.
        if acc.is_finite() {
            ctx.set_metric("accuracy", acc);
        }
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

/// The figures the model's own stage recorded for its saved model on exactly this data, if it
/// did (a `train` stage's final test pass): the same computation, so it is not run twice.
fn reuse(
    ctx: &StageContext,
    input: &super::InputEntry,
    data: &DataIdentity,
) -> Result<Option<(f64, f64)>, StageError> {
    let Some(e) = evaluations::recorded(input, "model", data)? else {
        return Ok(None);
    };
    tracing::info!(
        "{}: loss and accuracy as `{}` recorded them for its model on the same data (not evaluated twice)",
        ctx.name(),
        input.name
    );
    Ok(Some(e.figures()))
}
