//! burn's own generic operations for every [`NnBackend`](super::NnBackend) method: the trait's
//! defaults (what the CUDA backend runs), the fallback of the CPU kernels for element types
//! other than `f32`, and the reference the CPU kernels are tested and benchmarked against.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module;
use burn::tensor::ops::ConvOptions;

use super::{AdamStep, BatchNormTrain, Conv2dGeometry};

pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    g: Conv2dGeometry,
) -> Tensor<B, 4> {
    module::conv2d(
        x,
        weight,
        bias,
        ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], g.groups),
    )
}

pub fn batch_norm_train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> BatchNormTrain<B> {
    let [n, c, h, w] = x.dims();
    // [c, n·h·w] view: statistics per row.
    let rows = x.swap_dims(0, 1).reshape([c, n * h * w]);
    let mean = rows.clone().mean_dim(1);
    let centred = rows - mean.clone();
    let var = centred.clone().powi_scalar(2).mean_dim(1);
    let inv_std = (var.clone() + eps).sqrt().recip();
    let y = centred * inv_std * gamma.reshape([c, 1]) + beta.reshape([c, 1]);
    BatchNormTrain {
        output: y.reshape([c, n, h, w]).swap_dims(0, 1),
        mean: mean.reshape([c]),
        var: var.reshape([c]),
    }
}

pub fn batch_norm_eval<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 4> {
    let c = x.dims()[1];
    let scale = gamma / (var + eps).sqrt();
    let shift = beta - mean * scale.clone();
    x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
}

pub fn max_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    module::max_pool2d(x, [kernel; 2], [stride; 2], [padding; 2], [1, 1], false)
}

/// Padded positions count towards the divisor (PyTorch's default, `count_include_pad`).
pub fn avg_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    module::avg_pool2d(x, [kernel; 2], [stride; 2], [padding; 2], true, false)
}

pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// `clamp(x, 0, 6)`: burn's gradient flows at exactly 0 and 6 too (the CPU kernel's does not,
/// as PyTorch's).
pub fn relu6<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clamp(0.0, 6.0)
}

/// burn's `Adam` step (`amsgrad` off), operation for operation.
#[allow(clippy::type_complexity)]
pub fn adam_step<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    c: &AdamStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let grad = match c.weight_decay {
        Some(penalty) => param.clone().mul_scalar(penalty).add(grad),
        None => grad,
    };
    let (f1, f2) = (1.0 - c.beta_1, 1.0 - c.beta_2);
    let (m1, m2) = match moments {
        Some((m1, m2)) => (
            m1.mul_scalar(c.beta_1).add(grad.clone().mul_scalar(f1)),
            m2.mul_scalar(c.beta_2).add(grad.square().mul_scalar(f2)),
        ),
        None => (grad.clone().mul_scalar(f1), grad.square().mul_scalar(f2)),
    };
    let t = i32::try_from(c.time).unwrap_or(i32::MAX);
    let bc2_sqrt = (1.0 - c.beta_2.powi(t)).sqrt();
    let combined = bc2_sqrt / (1.0 - c.beta_1.powi(t));
    let update = m1
        .clone()
        .mul_scalar(combined)
        .div(m2.clone().sqrt().add_scalar(c.epsilon * bc2_sqrt));
    (param - update.mul_scalar(c.lr), m1, m2)
}
