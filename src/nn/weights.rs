//! Host-side, backend-free model values: what flows between stages.
//!
//! [`Weights`] holds every trainable parameter by name, in program order (see
//! [`crate::nn::program::Program::params`]), and the batch-norm running statistics. Shapes are
//! those of [`ParamInfo::shape`](crate::nn::program::ParamInfo): conv weights
//! `[out, in/groups, k, k]` as PyTorch, linear weights `[in, out]` as burn computes with them
//! (checkpoints transpose them to PyTorch's `[out, in]`).
//!
//! [`Mask`] has one entry per *prunable* parameter (conv and linear weights), in program
//! order, one bool per element (`true` = kept); [`ModelSpec::prunable`] names the entries.
//! Biases and batch-norm parameters are never pruned element-wise, but a whole filter can be
//! switched off (RePr's drop): [`Mask::extra`] masks them by name, and is empty otherwise.

use std::collections::BTreeMap;

use super::program::ParamRole;
use super::{ModelSpec, NnError};

/// One named tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Named {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One trainable parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: ParamRole,
    pub data: Vec<f32>,
}

impl Param {
    pub fn is_prunable(&self) -> bool {
        matches!(self.role, ParamRole::ConvWeight | ParamRole::LinearWeight)
    }
}

/// A model's values: parameters and batch-norm running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// Every parameter, in program order.
    pub params: Vec<Param>,
    /// `<bn>.running_mean`, `<bn>.running_var` of each batch norm, in program order.
    pub buffers: Vec<Named>,
}

/// Which weights are kept: one entry per prunable parameter (program order), one bool per
/// element, `true` = kept.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Mask {
    pub layers: Vec<Vec<bool>>,
    /// Masks of non-prunable parameters (a conv's bias, a batch norm's `weight` and `bias`)
    /// by parameter name, one bool per element; a parameter not listed is kept whole. Filter-
    /// level masking (RePr) fills it; every other mask leaves it empty, which is exactly the
    /// behaviour before it existed. Masked entries are zero and get zero gradients, like
    /// masked weights.
    pub extra: BTreeMap<String, Vec<bool>>,
}

impl ModelSpec {
    /// Names of the prunable parameters (the entries of a [`Mask`]), in order.
    pub fn prunable(&self) -> Vec<String> {
        self.params()
            .into_iter()
            .filter(|p| p.is_weight())
            .map(|p| p.name)
            .collect()
    }

    /// Names of the batch-norm buffers, in order.
    pub fn buffer_names(&self) -> Vec<(String, usize)> {
        self.program()
            .map(|p| p.batch_norms())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|b| {
                [
                    (format!("{}.running_mean", b.layer), b.channels),
                    (format!("{}.running_var", b.layer), b.channels),
                ]
            })
            .collect()
    }
}

impl Weights {
    /// Checks names, order, shapes and sizes of parameters and buffers against `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), NnError> {
        let want = spec.params();
        if self.params.len() != want.len() {
            return Err(NnError::Shape(format!(
                "weights have {} parameters, the model spec has {}",
                self.params.len(),
                want.len()
            )));
        }
        for (p, w) in self.params.iter().zip(&want) {
            if p.name != w.name || p.shape != w.shape || p.role != w.role {
                return Err(NnError::Shape(format!(
                    "parameter `{}` {:?} where the model spec has `{}` {:?}",
                    p.name, p.shape, w.name, w.shape
                )));
            }
            if p.data.len() != w.len() {
                return Err(NnError::Shape(format!(
                    "parameter `{}` holds {} values for shape {:?}",
                    p.name,
                    p.data.len(),
                    p.shape
                )));
            }
        }
        let bufs = spec.buffer_names();
        let ok = self.buffers.len() == bufs.len()
            && self
                .buffers
                .iter()
                .zip(&bufs)
                .all(|(b, (name, c))| &b.name == name && b.shape == [*c] && b.data.len() == *c);
        if !ok {
            return Err(NnError::Shape(format!(
                "batch-norm buffers {:?} do not match the model spec's {:?}",
                self.buffers.iter().map(|b| &b.name).collect::<Vec<_>>(),
                bufs.iter().map(|b| &b.0).collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    /// The prunable parameters (the entries of a [`Mask`]), in order.
    pub fn prunable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.is_prunable())
    }

    pub fn prunable_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.params.iter_mut().filter(|p| p.is_prunable())
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Zeroes every weight the mask removes, and the biases and batch-norm parameters its
    /// [`Mask::extra`] entries remove.
    ///
    /// Panics if the mask does not have the weights' shape.
    pub fn apply_mask(&mut self, mask: &Mask) {
        let n = self.prunable().count();
        assert_eq!(n, mask.layers.len(), "mask/weights layer count");
        let zero = |p: &mut Param, m: &[bool]| {
            assert_eq!(p.data.len(), m.len(), "mask/weights shape of {}", p.name);
            for (w, &keep) in p.data.iter_mut().zip(m) {
                if !keep {
                    *w = 0.0;
                }
            }
        };
        for (p, m) in self.prunable_mut().zip(&mask.layers) {
            zero(p, m);
        }
        for p in self.params.iter_mut().filter(|p| !p.is_prunable()) {
            if let Some(m) = mask.extra.get(&p.name) {
                zero(p, m);
            }
        }
    }

    /// A copy with the masked weights zeroed.
    pub fn masked(&self, mask: &Mask) -> Weights {
        let mut w = self.clone();
        w.apply_mask(mask);
        w
    }

    /// Number of prunable weights (biases and batch norm excluded).
    pub fn num_weights(&self) -> usize {
        self.prunable().map(|p| p.data.len()).sum()
    }
}

impl Mask {
    /// A mask of the prunable weights only (no [`Mask::extra`] entries).
    pub fn new(layers: Vec<Vec<bool>>) -> Mask {
        Mask {
            layers,
            extra: BTreeMap::new(),
        }
    }

    /// The mask that keeps everything.
    pub fn dense(spec: &ModelSpec) -> Mask {
        Mask::new(
            spec.params()
                .iter()
                .filter(|p| p.is_weight())
                .map(|p| vec![true; p.len()])
                .collect(),
        )
    }

    /// The mask of parameter `index` of `weights.params`, when it is masked at all.
    pub fn of_param<'a>(&'a self, weights: &Weights, index: usize) -> Option<&'a [bool]> {
        let p = &weights.params[index];
        if p.is_prunable() {
            let k = weights.params[..index]
                .iter()
                .filter(|q| q.is_prunable())
                .count();
            self.layers.get(k).map(Vec::as_slice)
        } else {
            self.extra.get(&p.name).map(Vec::as_slice)
        }
    }

    /// Checks the per-parameter sizes against `spec`.
    pub fn check(&self, spec: &ModelSpec) -> Result<(), NnError> {
        let sizes: Vec<usize> = spec
            .params()
            .iter()
            .filter(|p| p.is_weight())
            .map(|p| p.len())
            .collect();
        let ok = self.layers.len() == sizes.len()
            && self.layers.iter().zip(&sizes).all(|(m, &n)| m.len() == n);
        let params = spec.params();
        for (name, m) in &self.extra {
            match params.iter().find(|p| &p.name == name) {
                Some(p) if !p.is_weight() && p.len() == m.len() => {}
                Some(p) if !p.is_weight() => {
                    return Err(NnError::Shape(format!(
                        "the mask of `{name}` has {} entries, the parameter {}",
                        m.len(),
                        p.len()
                    )));
                }
                _ => {
                    return Err(NnError::Shape(format!(
                        "the mask has an entry `{name}`, which is no bias or batch-norm \
                         parameter of the model"
                    )));
                }
            }
        }
        if ok {
            Ok(())
        } else {
            Err(NnError::Shape(format!(
                "mask layer sizes {:?} do not match the model spec's {:?}",
                self.layers.iter().map(Vec::len).collect::<Vec<_>>(),
                sizes
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

    /// Element-wise AND (kept only where both keep), [`Mask::extra`] included (a name one
    /// side does not list counts as all kept there).
    ///
    /// Panics if the shapes differ.
    pub fn and(&self, other: &Mask) -> Mask {
        assert_eq!(self.layers.len(), other.layers.len(), "mask layer count");
        let both = |a: &Vec<bool>, b: &Vec<bool>| -> Vec<bool> {
            assert_eq!(a.len(), b.len(), "mask layer size");
            a.iter().zip(b).map(|(&x, &y)| x && y).collect()
        };
        let mut extra = self.extra.clone();
        for (name, b) in &other.extra {
            let merged = match extra.get(name) {
                Some(a) => both(a, b),
                None => b.clone(),
            };
            extra.insert(name.clone(), merged);
        }
        Mask {
            layers: self
                .layers
                .iter()
                .zip(&other.layers)
                .map(|(a, b)| both(a, b))
                .collect(),
            extra,
        }
    }

    /// Whether every weight (and [`Mask::extra`] entry) this mask keeps is also kept by
    /// `other`.
    pub fn is_subset_of(&self, other: &Mask) -> bool {
        let subset =
            |a: &[bool], b: &[bool]| a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| !x || y);
        let extra_ok = other
            .extra
            .iter()
            .all(|(name, b)| match self.extra.get(name) {
                Some(a) => subset(a, b),
                None => b.iter().all(|&y| y),
            });
        extra_ok
            && self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| subset(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (ModelSpec, Weights) {
        let spec = ModelSpec::mlp(vec![2, 2, 1]);
        let p = |name: &str, shape: Vec<usize>, role, data: Vec<f32>| Param {
            name: name.into(),
            shape,
            role,
            data,
        };
        let w = Weights {
            params: vec![
                p(
                    "fc1.weight",
                    vec![2, 2],
                    ParamRole::LinearWeight,
                    vec![1.0, 2.0, 3.0, 4.0],
                ),
                p("fc1.bias", vec![2], ParamRole::Bias, vec![0.5, 0.5]),
                p(
                    "fc2.weight",
                    vec![2, 1],
                    ParamRole::LinearWeight,
                    vec![5.0, 6.0],
                ),
                p("fc2.bias", vec![1], ParamRole::Bias, vec![0.1]),
            ],
            buffers: vec![],
        };
        (spec, w)
    }

    #[test]
    fn mask_stats_and_apply() {
        let (spec, w) = tiny();
        w.check(&spec).unwrap();
        assert_eq!(spec.prunable(), ["fc1.weight", "fc2.weight"]);
        let dense = Mask::dense(&spec);
        assert_eq!((dense.kept(), dense.total()), (6, 6));
        let m = Mask::new(vec![vec![true, false, false, true], vec![false, true]]);
        m.check(&spec).unwrap();
        assert_eq!(m.density(), vec![0.5, 0.5]);
        assert_eq!(m.kept(), 3);
        assert_eq!(m.remaining_fraction(), 0.5);
        let mw = w.masked(&m);
        assert_eq!(mw.params[0].data, vec![1.0, 0.0, 0.0, 4.0]);
        assert_eq!(mw.params[2].data, vec![0.0, 6.0]);
        assert_eq!(mw.params[1].data, vec![0.5, 0.5]);
        let m2 = Mask::new(vec![vec![true, true, false, false], vec![true, true]]);
        assert_eq!(
            m.and(&m2).layers,
            vec![vec![true, false, false, false], vec![false, true]]
        );
        assert!(m.and(&m2).is_subset_of(&m) && !m.is_subset_of(&m2));
    }

    #[test]
    fn extra_entries_mask_biases_by_name() {
        let (spec, w) = tiny();
        let mut m = Mask::dense(&spec);
        m.extra.insert("fc1.bias".into(), vec![false, true]);
        m.check(&spec).unwrap();
        assert_eq!(w.masked(&m).params[1].data, vec![0.0, 0.5]);
        assert_eq!(m.of_param(&w, 1), Some(&[false, true][..]));
        assert_eq!(m.of_param(&w, 2), Some(&[true, true][..]));
        assert_eq!(m.of_param(&w, 3), None);
        let dense = Mask::dense(&spec);
        assert!(m.is_subset_of(&dense) && !dense.is_subset_of(&m));
        assert_eq!(dense.and(&m), m);
        // A name that is a weight, unknown, or of the wrong length is refused.
        for (name, len) in [("fc1.weight", 4), ("fc9.bias", 2), ("fc2.bias", 2)] {
            let mut bad = Mask::dense(&spec);
            bad.extra.insert(name.into(), vec![true; len]);
            assert!(bad.check(&spec).is_err(), "{name}");
        }
    }

    #[test]
    fn shape_checks() {
        let (spec, mut w) = tiny();
        w.params[3].data.push(0.0);
        assert!(w.check(&spec).unwrap_err().to_string().contains("fc2.bias"));
        let bad = Mask::new(vec![vec![true; 4]]);
        assert!(bad.check(&spec).is_err());
    }
}
