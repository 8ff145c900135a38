//! Path lengths and their gradients (Veit, Wilber & Belongie 2016, section 5 and Fig. 6): a
//! ResNet of `n` blocks is a collection of `2^n` paths, `C(n, k)` of them of length `k` (the
//! blocks whose residual branch the path takes). For each length, sampled paths of that length
//! carry the gradient back to the input alone: the forward pass is the whole trained network
//! (batch norm with its running statistics, as trained), and in the backward pass each block
//! lets the gradient through its branch (the path's `k` blocks) or through its shortcut (the
//! others), never both ([`Route`]). The norm of the gradient reaching the input, times the
//! number of paths of that length, is the length's share of the total gradient magnitude.
//!
//! Norms are per image: the L2 norm of `∂ℓᵢ/∂xᵢ`, the gradient of image `i`'s own
//! cross-entropy at its input, averaged over the batch.

use burn::tensor::{ElementConversion, Tensor, TensorData};

use crate::data::{BatchTargets, Split, gather_range};
use crate::nn::device::{BackendTask, DeviceSpec, dispatch};
use crate::nn::net::{BnMode, Plan, Route, buffers_to_device, to_net};
use crate::nn::objective::Objective;
use crate::nn::{Checkpoint, NnError};
use crate::rng::{self, Domain};

/// The gradient norms measured for one path length.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthNorms {
    /// Blocks whose branch the paths take.
    pub k: usize,
    /// One mean per-image norm per sampled path.
    pub norms: Vec<f64>,
}

/// The blocks of a path of length `k` out of `n`, draw `draw`: one stream per (k, draw).
pub fn sample_path(n: usize, k: usize, seed: u64, draw: u64) -> Vec<bool> {
    let mut r = rng::stream(seed, Domain::PathDraws, ((k as u64) << 32) | draw);
    rng::choose_k(&mut r, n, k)
}

/// `C(n, k)` as a float (exact up to 2^53; ResNet-110's largest, C(54, 27), is 1.9·10^15).
pub fn paths_of_length(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64)
}

/// For every length `0..=n` of the model's `n` residual blocks, `draws` sampled paths' mean
/// per-image input-gradient norms on `batch` (its images all at once).
pub fn path_gradient_norms(
    model: &Checkpoint,
    batch: &Split,
    draws: usize,
    seed: u64,
    device: &DeviceSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LengthNorms>, NnError> {
    struct Task<'a> {
        model: &'a Checkpoint,
        batch: &'a Split,
        draws: usize,
        seed: u64,
        progress: &'a mut dyn FnMut(usize, usize),
    }
    impl BackendTask for Task<'_> {
        type Output = Vec<LengthNorms>;
        fn run<B: crate::nn::ops::TrainBackend>(
            self,
            device: B::Device,
        ) -> Result<Vec<LengthNorms>, NnError> {
            let program = self.model.spec.program().map_err(NnError::Invalid)?;
            let plan = Plan::new(&program);
            let n = plan.residual_blocks();
            let net = to_net::<B>(
                &self.model.spec,
                &self.model.weights,
                &self.model.mask,
                &device,
            )?;
            let running = buffers_to_device::<B>(&self.model.weights, &device);
            let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
            gather_range(self.batch, 0..self.batch.n, &mut images, &mut targets);
            let m = self.batch.n;
            let [c, h, w] = plan.input();
            let y: Tensor<B, 2> = Objective::CrossEntropy
                .targets(&targets, self.model.spec.output_dim(), &device)
                .ok_or_else(|| {
                    NnError::Invalid("path gradients need class labels (a cross-entropy)".into())
                })?;
            let total = (n + 1) * self.draws;
            let mut out = Vec::with_capacity(n + 1);
            for k in 0..=n {
                let mut norms = Vec::with_capacity(self.draws);
                for d in 0..self.draws {
                    let routes: Vec<Route> = sample_path(n, k, self.seed, d as u64)
                        .into_iter()
                        .map(|b| {
                            if b {
                                Route::GradientThroughBranch
                            } else {
                                Route::GradientThroughShortcut
                            }
                        })
                        .collect();
                    let x = Tensor::<B, 4>::from_data(
                        TensorData::new(images.clone(), [m, c, h, w]),
                        &device,
                    );
                    let g = input_gradient(&net, &plan.with_routes(&routes), &running, x, &y)?;
                    let per_image = g.reshape([m, c * h * w]).powf_scalar(2.0).sum_dim(1).sqrt();
                    let mean: f64 = per_image.mean().into_scalar().elem();
                    norms.push(mean);
                    (self.progress)(k * self.draws + d + 1, total);
                }
                out.push(LengthNorms { k, norms });
            }
            Ok(out)
        }
    }
    if batch.n == 0 {
        return Err(NnError::Invalid(
            "path gradients need at least one image".into(),
        ));
    }
    dispatch(
        device,
        Task {
            model,
            batch,
            draws,
            seed,
            progress,
        },
    )
}

/// The gradient at the input `x` of the summed cross-entropy of the batch (each image's
/// gradient is that of its own loss: images do not interact in eval-mode batch norm), with
/// the blocks routed as `plan` says.
fn input_gradient<B: crate::nn::ops::TrainBackend>(
    net: &crate::nn::net::Net<B>,
    plan: &Plan,
    running: &[Tensor<B, 1>],
    x: Tensor<B, 4>,
    y: &Tensor<B, 2>,
) -> Result<Tensor<B::InnerBackend, 4>, NnError> {
    let x = x.require_grad();
    let (logits, _) = net.forward(plan, x.clone(), &BnMode::Running(running));
    let m = y.dims()[0];
    let loss = Objective::CrossEntropy.loss(logits, y.clone()) * m as f64;
    let grads = loss.backward();
    x.grad(&grads)
        .ok_or_else(|| NnError::Invalid("no gradient reached the input".into()))
}

/// The least-squares slope of `ln y` against `x` over the points with `y > 0` (`None` with
/// fewer than two).
pub fn log_linear_slope(points: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, y)| *y > 0.0)
        .map(|&(x, y)| (x, y.ln()))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::arch::ResnetSpec;
    use crate::nn::{InitScheme, Mask, ModelSpec, init_weights};
    use burn::backend::flex::FlexDevice;
    use burn::backend::{Autodiff, Flex};

    type Ad = Autodiff<Flex>;

    #[test]
    fn path_counts_and_draws() {
        assert_eq!(paths_of_length(5, 2), 10.0);
        assert_eq!(paths_of_length(27, 0), 1.0);
        let c = paths_of_length(54, 27);
        assert!((c / 1_946_939_425_648_112.0 - 1.0).abs() < 1e-12, "{c}");
        let p = sample_path(9, 4, 1, 0);
        assert_eq!(p.iter().filter(|b| **b).count(), 4);
        assert_eq!(p, sample_path(9, 4, 1, 0));
        assert_ne!(p, sample_path(9, 4, 1, 1));
        assert_eq!(
            log_linear_slope(&[(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)])
                .map(|s| (s / 2f64.ln() * 1e9).round()),
            Some(-1e9)
        );
        assert_eq!(log_linear_slope(&[(0.0, 1.0)]), None);
    }

    #[test]
    fn the_full_gradient_is_the_sum_of_its_paths() {
        // Given the forward pass, the backward pass is linear: each block's Jacobian is
        // ReLU'·(branch + shortcut), so the network's input gradient is the sum of the 2^n
        // single-path gradients. Two blocks (one with a zero-pad shortcut): four paths.
        let spec = ModelSpec::Resnet(ResnetSpec {
            depth: None,
            stages: Some(vec![1, 1]),
            width: 2,
            classes: 3,
            input: [1, 4, 4],
            ..ResnetSpec::standard(20)
        });
        let w = init_weights(&spec, InitScheme::KaimingNormal, 4);
        let dev = FlexDevice;
        let net = to_net::<Ad>(&spec, &w, &Mask::dense(&spec), &dev).unwrap();
        let plan = Plan::new(&spec.program().unwrap());
        assert_eq!(plan.residual_blocks(), 2);
        let running = buffers_to_device::<Ad>(&w, &dev);
        let x = || {
            Tensor::<Ad, 4>::from_data(
                TensorData::new(
                    (0..32).map(|v| (v as f32 * 0.61).cos()).collect(),
                    [2, 1, 4, 4],
                ),
                &dev,
            )
        };
        let y = Tensor::<Ad, 2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0], [2, 3]),
            &dev,
        );
        let grad = |routes: &[Route]| {
            input_gradient(&net, &plan.with_routes(routes), &running, x(), &y)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let full = grad(&[Route::Both, Route::Both]);
        let (b, s) = (Route::GradientThroughBranch, Route::GradientThroughShortcut);
        let mut sum = vec![0.0f32; full.len()];
        for routes in [[b, b], [b, s], [s, b], [s, s]] {
            for (acc, v) in sum.iter_mut().zip(grad(&routes)) {
                *acc += v;
            }
        }
        let scale = full.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (f, s) in full.iter().zip(&sum) {
            assert!((f - s).abs() <= 1e-5 * scale, "{full:?} vs {sum:?}");
        }
        // The routes leave the forward pass alone.
        let logits = |routes: &[Route]| {
            net.forward(&plan.with_routes(routes), x(), &BnMode::Running(&running))
                .0
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(logits(&[b, s]), logits(&[Route::Both, Route::Both]));
    }
}
