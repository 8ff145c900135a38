//! Host-side, backend-free weights and masks: what flows between stages.

use super::{ModelSpec, NnError};

/// One linear layer. `weight` is row-major `[in_dim, out_dim]` (the layout of
/// burn's `Linear`): `weight[i * out_dim + j]` connects input `i` to output `j`.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub in_dim: usize,
    pub out_dim: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The parameters of a model, layer by layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub layers: Vec<Layer>,
}

/// Which weights are kept: one bool per weight (same layout as
/// [`Layer::weight`]), `true` = kept. Biases are never pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub layers: Vec<Vec<bool>>,
}

impl Weights {
    /// Checks layer count, names and every shape against `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), NnError> {
        let dims = spec.layer_dims();
        let names = spec.layer_names();
        if self.layers.len() != dims.len() {
            return Err(NnError::Shape(format!(
                "weights have {} layers, the model spec has {}",
                self.layers.len(),
                dims.len()
            )));
        }
        for ((l, &(i, o)), name) in self.layers.iter().zip(&dims).zip(&names) {
            if l.name != *name || l.in_dim != i || l.out_dim != o {
                return Err(NnError::Shape(format!(
                    "layer {} is [{}, {}], the model spec expects {name} [{i}, {o}]",
                    l.name, l.in_dim, l.out_dim
                )));
            }
            if l.weight.len() != i * o || l.bias.len() != o {
                return Err(NnError::Shape(format!(
                    "layer {name} holds {} weights and {} biases, expected {} and {o}",
                    l.weight.len(),
                    l.bias.len(),
                    i * o
                )));
            }
        }
        Ok(())
    }

    /// Zeroes every weight the mask removes (biases untouched).
    ///
    /// Panics if the mask does not have the weights' shape.
    pub fn apply_mask(&mut self, mask: &Mask) {
        assert_eq!(
            self.layers.len(),
            mask.layers.len(),
            "mask/weights layer count"
        );
        for (l, m) in self.layers.iter_mut().zip(&mask.layers) {
            assert_eq!(l.weight.len(), m.len(), "mask/weights shape of {}", l.name);
            for (w, &keep) in l.weight.iter_mut().zip(m) {
                if !keep {
                    *w = 0.0;
                }
            }
        }
    }

    /// A copy with the masked weights zeroed.
    pub fn masked(&self, mask: &Mask) -> Weights {
        let mut w = self.clone();
        w.apply_mask(mask);
        w
    }

    /// Number of weights (biases excluded).
    pub fn num_weights(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len()).sum()
    }
}

impl Mask {
    /// The mask that keeps everything.
    pub fn dense(spec: &ModelSpec) -> Mask {
        Mask {
            layers: spec
                .layer_dims()
                .iter()
                .map(|&(i, o)| vec![true; i * o])
                .collect(),
        }
    }

    /// Checks the per-layer sizes against `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), NnError> {
        let dims = spec.layer_dims();
        let ok = self.layers.len() == dims.len()
            && self
                .layers
                .iter()
                .zip(&dims)
                .all(|(m, (i, o))| m.len() == i * o);
        if ok {
            Ok(())
        } else {
            Err(NnError::Shape(format!(
                "mask layer sizes {:?} do not match the model spec's {:?}",
                self.layers.iter().map(Vec::len).collect::<Vec<_>>(),
                dims.iter().map(|(i, o)| i * o).collect::<Vec<_>>()
            )))
        }
    }

    /// Fraction kept per layer (1.0 for an empty layer).
    pub fn density(&self) -> Vec<f64> {
        self.layers
            .iter()
            .map(|m| {
                if m.is_empty() {
                    1.0
                } else {
                    m.iter().filter(|&&k| k).count() as f64 / m.len() as f64
                }
            })
            .collect()
    }

    /// Number of kept weights.
    pub fn kept(&self) -> usize {
        self.layers
            .iter()
            .map(|m| m.iter().filter(|&&k| k).count())
            .sum()
    }

    /// Number of weights.
    pub fn total(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// `kept / total` (1.0 for an empty mask).
    pub fn remaining_fraction(&self) -> f64 {
        let t = self.total();
        if t == 0 {
            1.0
        } else {
            self.kept() as f64 / t as f64
        }
    }

    /// Element-wise AND (kept only where both keep).
    ///
    /// Panics if the shapes differ.
    pub fn and(&self, other: &Mask) -> Mask {
        assert_eq!(self.layers.len(), other.layers.len(), "mask layer count");
        Mask {
            layers: self
                .layers
                .iter()
                .zip(&other.layers)
                .map(|(a, b)| {
                    assert_eq!(a.len(), b.len(), "mask layer size");
                    a.iter().zip(b).map(|(&x, &y)| x && y).collect()
                })
                .collect(),
        }
    }

    /// Whether every weight this mask keeps is also kept by `other`.
    pub fn is_subset_of(&self, other: &Mask) -> bool {
        self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| !x || y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (ModelSpec, Weights) {
        let spec = ModelSpec::Mlp {
            widths: vec![2, 2, 1],
        };
        let w = Weights {
            layers: vec![
                Layer {
                    name: "fc1".into(),
                    in_dim: 2,
                    out_dim: 2,
                    weight: vec![1.0, 2.0, 3.0, 4.0],
                    bias: vec![0.5, 0.5],
                },
                Layer {
                    name: "fc2".into(),
                    in_dim: 2,
                    out_dim: 1,
                    weight: vec![5.0, 6.0],
                    bias: vec![0.1],
                },
            ],
        };
        (spec, w)
    }

    #[test]
    fn mask_stats_and_apply() {
        let (spec, w) = tiny();
        w.check(&spec).unwrap();
        let dense = Mask::dense(&spec);
        assert_eq!((dense.kept(), dense.total()), (6, 6));
        let m = Mask {
            layers: vec![vec![true, false, false, true], vec![false, true]],
        };
        m.check(&spec).unwrap();
        assert_eq!(m.density(), vec![0.5, 0.5]);
        assert_eq!(m.kept(), 3);
        assert_eq!(m.remaining_fraction(), 0.5);
        let mw = w.masked(&m);
        assert_eq!(mw.layers[0].weight, vec![1.0, 0.0, 0.0, 4.0]);
        assert_eq!(mw.layers[1].weight, vec![0.0, 6.0]);
        assert_eq!(mw.layers[0].bias, vec![0.5, 0.5]);
        let m2 = Mask {
            layers: vec![vec![true, true, false, false], vec![true, true]],
        };
        assert_eq!(
            m.and(&m2).layers,
            vec![vec![true, false, false, false], vec![false, true]]
        );
        assert!(m.and(&m2).is_subset_of(&m) && !m.is_subset_of(&m2));
    }

    #[test]
    fn shape_checks() {
        let (spec, mut w) = tiny();
        w.layers[1].bias.push(0.0);
        assert!(w.check(&spec).unwrap_err().to_string().contains("fc2"));
        let bad = Mask {
            layers: vec![vec![true; 4]],
        };
        assert!(bad.check(&spec).is_err());
    }
}
