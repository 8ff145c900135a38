//! What training minimises: cross-entropy on class labels, or the mean squared error on
//! regression targets (the teacher–student setting of Tian et al. 2019).
//!
//! The objective follows from the data: a split of class labels ([`Targets::Classes`]) is
//! learnt with cross-entropy, a split of regression values ([`Targets::Values`]) with MSE. So
//! no configuration (and no stage key) names it, and classification runs exactly as before.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::NnError;
use crate::data::{BatchTargets, Split, Targets};

/// The loss a training minimises and an evaluation reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Mean over the batch of `−log softmax(logits)[label]`; evaluation also counts accuracy.
    CrossEntropy,
    /// PyTorch's `nn.MSELoss()` (reduction `mean`): the mean of `(output − target)²` over every
    /// element of the batch (samples × outputs), as the Luck Matters code uses. Evaluation
    /// reports no accuracy.
    Mse,
}

impl Objective {
    /// The objective of a split's targets.
    pub fn of(split: &Split) -> Objective {
        match split.targets {
            Targets::Classes { .. } => Objective::CrossEntropy,
            Targets::Values { .. } => Objective::Mse,
        }
    }

    /// Checks that `split`'s targets fit a model with `outputs` outputs.
    pub fn check(split: &Split, outputs: usize, what: &str) -> Result<(), NnError> {
        match &split.targets {
            Targets::Classes { labels, .. } => {
                if let Some(&l) = labels.iter().find(|&&l| l as usize >= outputs) {
                    return Err(NnError::Shape(format!(
                        "{what} split has label {l} but the model has {outputs} outputs"
                    )));
                }
            }
            Targets::Values { dim, .. } => {
                if *dim != outputs {
                    return Err(NnError::Shape(format!(
                        "{what} split has {dim} regression targets per sample but the model \
                         has {outputs} outputs"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The batch's targets as a `[n, outputs]` tensor: one-hot rows for labels, the values
    /// themselves for regression. `None` when the batch holds the other kind of targets.
    pub fn targets<B: Backend>(
        &self,
        targets: &BatchTargets,
        outputs: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 2>> {
        let data = match (self, targets) {
            (Objective::CrossEntropy, BatchTargets::Classes(labels)) => one_hot(labels, outputs),
            (Objective::Mse, BatchTargets::Values(v)) => {
                TensorData::new(v.clone(), [v.len() / outputs.max(1), outputs])
            }
            _ => return None,
        };
        Some(Tensor::from_data(data, device))
    }

    /// The mean loss of `output` against `targets` (as [`Objective::targets`] builds them).
    pub fn loss<B: Backend>(&self, output: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
        match self {
            Objective::CrossEntropy => cross_entropy(output, targets),
            Objective::Mse => {
                let [n, d] = output.dims();
                let diff = output - targets;
                (diff.clone() * diff)
                    .sum()
                    .mul_scalar(1.0 / (n * d).max(1) as f64)
            }
        }
    }

    /// Adds one evaluation batch (the model's outputs, row-major `[n, outputs]`, read back to
    /// the host) to `acc`, in f64.
    pub fn accumulate(&self, outputs: &[f32], targets: &BatchTargets, acc: &mut EvalSums) {
        match (self, targets) {
            (Objective::CrossEntropy, BatchTargets::Classes(labels)) => {
                let classes = outputs.len() / labels.len().max(1);
                for (row, &label) in outputs.chunks_exact(classes.max(1)).zip(labels) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                    let lse = max
                        + row
                            .iter()
                            .map(|&v| (v as f64 - max).exp())
                            .sum::<f64>()
                            .ln();
                    acc.loss += lse - row[label as usize] as f64;
                    // First maximum wins ties.
                    let pred = row
                        .iter()
                        .enumerate()
                        .fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
                    acc.correct += usize::from(pred == label as usize);
                    acc.samples += 1;
                }
            }
            (Objective::Mse, BatchTargets::Values(values)) => {
                acc.loss += outputs
                    .iter()
                    .zip(values)
                    .map(|(&o, &t)| (o as f64 - t as f64).powi(2))
                    .sum::<f64>();
                acc.elements += values.len();
            }
            // The splits were checked against the objective before training.
            _ => {}
        }
    }
}

/// Running sums of an evaluation; see [`EvalSums::finish`].
#[derive(Clone, Debug, Default)]
pub struct EvalSums {
    loss: f64,
    correct: usize,
    samples: usize,
    elements: usize,
}

impl EvalSums {
    /// `(mean loss, accuracy)`: for cross-entropy the mean over `n` samples and the fraction
    /// correct; for MSE the mean over every element and `NaN` (no accuracy).
    pub fn finish(&self, objective: Objective, n: usize) -> (f64, f64) {
        match objective {
            Objective::CrossEntropy => (self.loss / n as f64, self.correct as f64 / n as f64),
            Objective::Mse => (self.loss / self.elements.max(1) as f64, f64::NAN),
        }
    }
}

pub(crate) fn one_hot(labels: &[u8], classes: usize) -> TensorData {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    TensorData::new(v, [labels.len(), classes])
}

/// Mean cross-entropy of `logits` against one-hot `targets`.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets)
        .sum()
        .mul_scalar(-1.0 / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;
    use burn::tensor::ElementConversion;

    #[test]
    fn mse_is_the_mean_over_every_element() {
        let o = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &FlexDevice,
        );
        let t = Objective::Mse
            .targets::<Flex>(
                &BatchTargets::Values(vec![0.0, 2.0, 1.0, 0.0]),
                2,
                &FlexDevice,
            )
            .unwrap();
        let l = Objective::Mse.loss(o, t).into_scalar().elem::<f64>();
        // (1 + 0 + 4 + 16) / 4
        assert_eq!(l, 5.25);
        let mut sums = EvalSums::default();
        Objective::Mse.accumulate(
            &[1.0, 2.0],
            &BatchTargets::Values(vec![0.0, 2.0]),
            &mut sums,
        );
        Objective::Mse.accumulate(
            &[3.0, 4.0],
            &BatchTargets::Values(vec![1.0, 0.0]),
            &mut sums,
        );
        let (loss, acc) = sums.finish(Objective::Mse, 2);
        assert_eq!(loss, 5.25);
        assert!(acc.is_nan());
        // The wrong kind of targets builds nothing.
        assert!(
            Objective::Mse
                .targets::<Flex>(&BatchTargets::Classes(vec![1]), 2, &FlexDevice)
                .is_none()
        );
    }

    #[test]
    fn targets_must_fit_the_outputs() {
        use crate::data::Inputs;
        let s = Split::new(
            Inputs::f32(vec![0.0; 4], [2, 1, 1]),
            Targets::values(vec![0.0; 6], 3),
        )
        .unwrap();
        assert_eq!(Objective::of(&s), Objective::Mse);
        assert!(Objective::check(&s, 3, "training").is_ok());
        let e = Objective::check(&s, 4, "training").unwrap_err().to_string();
        assert!(
            e.contains("3 regression targets per sample but the model has 4 outputs"),
            "{e}"
        );
    }
}
