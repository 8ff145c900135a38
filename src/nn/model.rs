//! The burn module: an MLP of `Linear` layers with ReLU between them and
//! constant 0/1 masks on the weights.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::{Layer, Mask, ModelSpec, NnError, Weights};

/// MLP with masked weights. `masks[k]` is `None` for a dense layer, else a
/// constant (non-trainable, not seen by the optimiser) 0/1 tensor of the
/// weight's shape. The forward pass uses `x · (W ⊙ M) + b`, so the gradient
/// of every masked weight is exactly zero.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub layers: Vec<Linear<B>>,
    pub masks: Vec<Option<Tensor<B, 2>>>,
}

impl<B: Backend> Mlp<B> {
    /// Logits for a batch `[n, in]` → `[n, out]`.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len().saturating_sub(1);
        for (k, (layer, mask)) in self.layers.iter().zip(&self.masks).enumerate() {
            let w = match mask {
                Some(m) => layer.weight.val() * m.clone(),
                None => layer.weight.val(),
            };
            x = x.matmul(w);
            if let Some(b) = &layer.bias {
                x = x + b.val().unsqueeze_dim(0);
            }
            if k < last {
                x = relu(x);
            }
        }
        x
    }
}

impl<B: AutodiffBackend> Mlp<B> {
    /// Multiplies the weights of the masked layers by their masks (keeps
    /// pruned weights exactly zero whatever the optimiser did). Works on the
    /// inner backend, so no autodiff graph is recorded; parameter ids and the
    /// `require_grad` flag are preserved.
    pub fn reapply_masks(mut self) -> Self {
        for (layer, mask) in self.layers.iter_mut().zip(&self.masks) {
            if let Some(m) = mask {
                let m = m.clone().inner();
                layer.weight = layer.weight.clone().map(|t| {
                    let grad = t.is_require_grad();
                    let t = Tensor::from_inner(t.inner() * m);
                    if grad { t.require_grad() } else { t }
                });
            }
        }
        self
    }
}

fn tensor2<B: Backend>(data: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Builds the dense module (no masks) for `spec` from `weights`.
///
/// Panics if `weights` does not match `spec` (check with [`Weights::check`]).
pub fn to_module<B: Backend>(spec: &ModelSpec, weights: &Weights, device: &B::Device) -> Mlp<B> {
    build(spec, weights, None, device)
}

/// Builds the module with `mask` applied: masked weights are zeroed and every
/// layer that is not fully dense gets a constant mask tensor.
pub fn to_masked_module<B: Backend>(
    spec: &ModelSpec,
    weights: &Weights,
    mask: &Mask,
    device: &B::Device,
) -> Result<Mlp<B>, NnError> {
    weights.check(spec)?;
    mask.check(spec)?;
    Ok(build(spec, weights, Some(mask), device))
}

fn build<B: Backend>(
    spec: &ModelSpec,
    weights: &Weights,
    mask: Option<&Mask>,
    device: &B::Device,
) -> Mlp<B> {
    if let Err(e) = weights.check(spec) {
        panic!("to_module: {e}");
    }
    let mut layers = Vec::new();
    let mut masks = Vec::new();
    for (k, l) in weights.layers.iter().enumerate() {
        let m = mask
            .map(|m| &m.layers[k])
            .filter(|m| m.iter().any(|&keep| !keep));
        let w: Vec<f32> = match m {
            Some(m) => l
                .weight
                .iter()
                .zip(m)
                .map(|(&w, &keep)| if keep { w } else { 0.0 })
                .collect(),
            None => l.weight.clone(),
        };
        let shape = [l.in_dim, l.out_dim];
        layers.push(Linear {
            weight: Param::from_tensor(tensor2(w, shape, device)),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(l.bias.clone(), [l.out_dim]),
                device,
            ))),
        });
        masks.push(m.map(|m| {
            let v: Vec<f32> = m.iter().map(|&keep| if keep { 1.0 } else { 0.0 }).collect();
            tensor2(v, shape, device)
        }));
    }
    Mlp { layers, masks }
}

/// Reads the module's parameters back into host [`Weights`] (layer names from `spec`).
pub fn from_module<B: Backend>(module: &Mlp<B>, spec: &ModelSpec) -> Weights {
    let layers = module
        .layers
        .iter()
        .zip(spec.layer_names())
        .map(|(l, name)| {
            let [in_dim, out_dim] = l.weight.val().dims();
            let weight = l
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .expect("f32 weights");
            let bias = match &l.bias {
                Some(b) => b.val().into_data().to_vec::<f32>().expect("f32 biases"),
                None => vec![0.0; out_dim],
            };
            Layer {
                name,
                in_dim,
                out_dim,
                weight,
                bias,
            }
        })
        .collect();
    Weights { layers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, init_weights};
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;

    #[test]
    fn round_trip_and_forward_matches_host() {
        let spec = ModelSpec::Mlp {
            widths: vec![3, 4, 2],
        };
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        w.layers[0].bias = vec![0.1, -0.2, 0.3, 0.0];
        w.layers[1].bias = vec![0.5, -0.5];
        let m: Mlp<Flex> = to_module(&spec, &w, &FlexDevice);
        assert_eq!(from_module(&m, &spec), w);
        // Host reference forward for one sample.
        let x = [0.5f32, -1.0, 2.0];
        let h: Vec<f32> = (0..4)
            .map(|j| {
                let s: f32 = (0..3)
                    .map(|i| x[i] * w.layers[0].weight[i * 4 + j])
                    .sum::<f32>();
                (s + w.layers[0].bias[j]).max(0.0)
            })
            .collect();
        let want: Vec<f32> = (0..2)
            .map(|j| {
                (0..4)
                    .map(|i| h[i] * w.layers[1].weight[i * 2 + j])
                    .sum::<f32>()
                    + w.layers[1].bias[j]
            })
            .collect();
        let got = m
            .forward(tensor2(x.to_vec(), [1, 3], &FlexDevice))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn masked_module_zeroes_weights_and_keeps_dense_layers_unmasked() {
        let spec = ModelSpec::Mlp {
            widths: vec![3, 4, 2],
        };
        let w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        let mut mask = Mask::dense(&spec);
        mask.layers[0][5] = false;
        let m: Mlp<Flex> = to_masked_module(&spec, &w, &mask, &FlexDevice).unwrap();
        assert!(m.masks[0].is_some() && m.masks[1].is_none());
        let back = from_module(&m, &spec);
        assert_eq!(back, w.masked(&mask));
        assert_eq!(back.layers[0].weight[5], 0.0);
        let bad = Mask {
            layers: vec![vec![true; 12]],
        };
        assert!(to_masked_module::<Flex>(&spec, &w, &bad, &FlexDevice).is_err());
    }
}
