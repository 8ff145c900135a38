//! `teacher`: the fixed random ReLU teacher network of Tian et al. 2019 ("Luck Matters"), as
//! an `mlp` model, so that `teacher_data`, `evaluate` and `correlate` read it like any model.
//! See [`crate::nn::methods::luck::teacher`] for how it is drawn (every layer, the output layer included).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model_facts::ModelFacts;
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::methods::luck::teacher::{check_teacher_widths, teacher_weights};
use crate::nn::{Checkpoint, Mask, ModelSpec};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TeacherParams {
    /// Input width, hidden widths, output width. Default `[20, 10, 15, 20, 25, 100]`: the
    /// reference's `--data_d 20 --ks '[10, 15, 20, 25]'` and `d_output = 100` for Gaussian
    /// data.
    #[serde(default = "default_widths")]
    pub widths: Vec<usize>,
    /// Seed of the weight draws (default 0).
    #[serde(default)]
    pub seed: u64,
}

fn default_widths() -> Vec<usize> {
    vec![20, 10, 15, 20, 25, 100]
}

pub struct Teacher;

impl Stage for Teacher {
    type Params = TeacherParams;
    const KIND: &'static str = "teacher";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "Luck Matters' random ReLU teacher MLP: distinct rows from \
        {±.5, ±.25, 0}, bias U(-.5,.5), each row and bias / its norm, every layer \
        {widths (default [20,10,15,20,25,100]), seed (0)}";
    const METRICS: &'static [&'static str] = &["weights"];

    fn facts(&self, p: &TeacherParams, _inputs: &[(String, Vec<UpstreamInfo>)]) -> Value {
        ModelFacts::of_spec(Some(ModelSpec::mlp(p.widths.clone()))).to_value()
    }

    fn check(
        &self,
        p: &TeacherParams,
        _inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        check_teacher_widths(&p.widths).map_err(|e| format!("`widths`: {e}"))
    }

    fn run(&self, p: &TeacherParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let spec = ModelSpec::mlp(p.widths.clone());
        let weights = teacher_weights(&p.widths, p.seed)?;
        ctx.set_metric("weights", spec.num_weights() as u64);
        ctx.save_model(
            "model",
            &Checkpoint {
                mask: Mask::dense(&spec),
                spec,
                weights,
                step: 0,
                seed: p.seed,
            },
        )
    }
}
