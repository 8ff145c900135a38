//! What the model-producing kinds tell each other at plan time: the architecture of the
//! model a stage will produce and, for a training, the iterations it saves. With them a
//! pipeline's mistakes that only the model reveals — pruning a layer the model does not have,
//! an MLP whose input width is not the dataset's, rewinding to an iteration that is never
//! saved — are reported before anything runs, with the stage's location.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::UpstreamInfo;
use super::dataset::DataParams;
use crate::nn::program::Op;
use crate::nn::{ModelSpec, OptimizerKind};

/// Plan-time facts of a model artifact ([`super::Stage::facts`] of the model kinds).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ModelFacts {
    /// The architecture, when it is known (always, for models made by the built-in kinds).
    #[serde(default)]
    pub spec: Option<ModelSpec>,
    /// For a training: the iterations whose checkpoints it keeps (`save_at`).
    #[serde(default)]
    pub checkpoints: Option<Vec<u64>>,
    /// The next training's length is scaled at run time (Scratch-B), so iteration counts
    /// cannot be checked at plan time.
    #[serde(default)]
    pub length_scaled: bool,
    /// The optimiser whose state the model carries (a training with momentum or Adam, and
    /// what rewinds or prunes such a training's checkpoints), for `resume_optimizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
}

impl ModelFacts {
    pub fn of_spec(spec: Option<ModelSpec>) -> ModelFacts {
        ModelFacts {
            spec,
            ..ModelFacts::default()
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The facts an upstream stage declared (none for kinds that declare none).
    pub fn of(u: &UpstreamInfo) -> ModelFacts {
        serde_json::from_value(u.facts.clone()).unwrap_or_default()
    }

    /// The facts of the (first) stage bound to `role`.
    pub fn input<'a>(
        inputs: &'a [(String, Vec<UpstreamInfo>)],
        role: &str,
    ) -> Option<(&'a UpstreamInfo, ModelFacts)> {
        let u = inputs.iter().find(|(r, _)| r == role)?.1.first()?;
        Some((u, ModelFacts::of(u)))
    }

    /// The architecture of the model bound to `role`, when known.
    pub fn spec_of(inputs: &[(String, Vec<UpstreamInfo>)], role: &str) -> Option<ModelSpec> {
        Self::input(inputs, role).and_then(|(_, f)| f.spec)
    }
}

/// Whether a model of `spec` (made by stage `from`) can take the samples `data` gives: the
/// input shape (an MLP flattens, so only the width must agree) and at least one output per
/// class.
pub fn check_fits(spec: &ModelSpec, data: &DataParams, from: &str) -> Result<(), String> {
    let shape = data.input_shape();
    let dataset = data.dataset.source().name;
    let flattens = matches!(
        spec.program().ok().and_then(|p| p.ops.first().cloned()),
        Some(Op::Flatten)
    );
    let width: usize = shape.iter().product();
    if flattens && spec.input_dim() != width {
        return Err(format!(
            "the model of `{from}` takes {} inputs, but `{dataset}` gives {shape:?} = {width} \
             values per sample; set the model's first width to {width}",
            spec.input_dim()
        ));
    }
    if !flattens && spec.input_shape() != shape {
        return Err(format!(
            "the model of `{from}` takes input {:?}, but `{dataset}` gives {shape:?}; set the \
             model's `input: {shape:?}` (or the data's `pad_to`)",
            spec.input_shape()
        ));
    }
    let classes = data.classes();
    if spec.output_dim() < classes {
        return Err(format!(
            "the model of `{from}` has {} outputs, but `{dataset}` has {classes} classes; give \
             it at least {classes}",
            spec.output_dim()
        ));
    }
    Ok(())
}
