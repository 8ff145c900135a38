//! Evaluations a stage has already run on a model it saved, recorded in its entry so that an
//! `evaluate` of the same model on exactly the same data reads the figures instead of running
//! the model over the split a second time. A `train` stage ends with a test pass over its final
//! weights, and the `evaluate` after it is the same work: for ResNet-20 on 10k images that is
//! seconds per stage, once per arm and level of a pipeline.
//!
//! A record is only written by a stage whose evaluation is the same computation as
//! [`crate::nn::evaluate`] on the saved checkpoint (`nn::train`'s tests compare the two bit for
//! bit), and only read when the data is identified exactly; anything else evaluates again.

use serde::{Deserialize, Serialize};

use super::dataset::DataParams;
use super::evaluate::SplitName;
use super::{InputEntry, StageContext, StageError};

/// The entry file holding the records.
pub const FILE: &str = "evaluations.json";

/// Which samples an evaluation ran on: every parameter the loaded split depends on and the
/// split's name, or the cache key of the generated dataset and which of its splits. Two
/// identities are equal only when the samples, their order and their normalisation are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DataIdentity(String);

impl DataIdentity {
    /// A split of a dataset loaded from `data:` parameters.
    pub fn of_params(data: &DataParams, split: SplitName) -> Self {
        // `verify` only decides whether the files are checked, not which samples load.
        let samples = DataParams {
            verify: true,
            ..data.clone()
        };
        DataIdentity(format!("{} split={split:?}", samples.load_key()))
    }

    /// A split of a generated dataset (`teacher_data`): its training split or its held-out
    /// one (which generated data uses for both validation and test).
    pub fn of_generated(dataset: &InputEntry, train_split: bool) -> Self {
        let which = if train_split { "train" } else { "held-out" };
        DataIdentity(format!("generated {} split={which}", dataset.key))
    }
}

/// One evaluation of the checkpoint `model` (an artifact stem of the entry) on `data`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub model: String,
    pub data: DataIdentity,
    pub loss: f64,
    /// `None` under a regression objective (MSE), which has no accuracy.
    pub accuracy: Option<f64>,
}

impl Evaluation {
    /// From `nn`'s `(loss, accuracy)` pair, whose accuracy is `NaN` when there is none.
    pub fn new(model: &str, data: DataIdentity, (loss, accuracy): (f64, f64)) -> Self {
        Evaluation {
            model: model.to_string(),
            data,
            loss,
            accuracy: accuracy.is_finite().then_some(accuracy),
        }
    }

    /// Back to `nn`'s `(loss, accuracy)` pair.
    pub fn figures(&self) -> (f64, f64) {
        (self.loss, self.accuracy.unwrap_or(f64::NAN))
    }
}

/// Writes the records of the entry being computed.
pub fn record(ctx: &StageContext, evaluations: &[Evaluation]) -> Result<(), StageError> {
    ctx.write_json(FILE, &evaluations)
}

/// The evaluation `input` recorded of its checkpoint `model` on `data`, if it recorded one.
/// An entry from before records were kept has none; a record file that does not decode is an
/// error (the entry is damaged), not a silent second evaluation.
pub fn recorded(
    input: &InputEntry,
    model: &str,
    data: &DataIdentity,
) -> Result<Option<Evaluation>, StageError> {
    if !input.has_file(FILE) {
        return Ok(None);
    }
    let all: Vec<Evaluation> = input.read_json(FILE)?;
    Ok(all
        .into_iter()
        .find(|e| e.model == model && &e.data == data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_with_any_field_of_the_split_and_ignore_augmentation() {
        let base: DataParams =
            serde_json::from_value(serde_json::json!({"dataset": "mnist"})).unwrap();
        let id = |d: &DataParams, s| DataIdentity::of_params(d, s);
        assert_eq!(
            id(&base, SplitName::Test),
            id(&base.clone(), SplitName::Test)
        );
        assert_ne!(id(&base, SplitName::Test), id(&base, SplitName::Val));
        let mut fewer = base.clone();
        fewer.test_subset = Some(100);
        assert_ne!(id(&base, SplitName::Test), id(&fewer, SplitName::Test));
        let mut seeded = base.clone();
        seeded.split_seed = 1;
        assert_ne!(id(&base, SplitName::Test), id(&seeded, SplitName::Test));
        let augmented: DataParams = serde_json::from_value(serde_json::json!({
            "dataset": "mnist", "augment": {"flip": true}
        }))
        .unwrap();
        assert_eq!(id(&base, SplitName::Test), id(&augmented, SplitName::Test));
        let unverified = DataParams {
            verify: false,
            ..base.clone()
        };
        assert_eq!(id(&base, SplitName::Test), id(&unverified, SplitName::Test));
    }

    #[test]
    fn figures_round_trip_through_the_record_file_bit_for_bit() {
        let loss = 0.1 + 0.2;
        let e = Evaluation::new("model", DataIdentity("d".into()), (loss, 0.9731));
        let back: Evaluation = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.figures().0.to_bits(), loss.to_bits());
        assert_eq!(back, e);
        let mse = Evaluation::new("model", DataIdentity("d".into()), (loss, f64::NAN));
        assert_eq!(mse.accuracy, None);
        assert!(mse.figures().1.is_nan());
    }
}
