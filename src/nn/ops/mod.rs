//! The layer operations the model families are built from, as a burn backend extension.
//!
//! [`NnBackend`] is implemented for every backend `pipe` trains on. Its default methods are
//! burn's own generic operations, which is what the CUDA backend uses; the CPU backend
//! (`Flex`, and `Autodiff<Flex>` for training) may override them with faster kernels, each
//! checked against these defaults in tests. Models call only these functions for
//! convolutions, batch norm and pooling, so a faster kernel speeds every family up at once.

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module;
use burn::tensor::ops::ConvOptions;

/// Geometry of a 2-D convolution (square kernels are the only ones the families use, but
/// the shape comes from the weight tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub stride: usize,
    pub padding: usize,
    /// 1 for a dense convolution; the channel count for a depthwise one.
    pub groups: usize,
}

/// Batch-norm output in training mode, with the batch statistics it used.
pub struct BatchNormTrain<B: Backend> {
    pub output: Tensor<B, 4>,
    /// Per-channel mean over (batch, height, width).
    pub mean: Tensor<B, 1>,
    /// Per-channel *biased* variance over (batch, height, width) (the one used to normalise;
    /// running statistics use the unbiased one, `var · n / (n − 1)`, as PyTorch does).
    pub var: Tensor<B, 1>,
}

/// Convolutions, batch norm and pooling. Every method has burn's generic implementation as
/// its default.
pub trait NnBackend: Backend {
    /// `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in / groups, k, k]`, `bias` `[c_out]`.
    fn nn_conv2d(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 1>>,
        g: Conv2dGeometry,
    ) -> Tensor<Self, 4> {
        module::conv2d(
            x,
            weight,
            bias,
            ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], g.groups),
        )
    }

    /// Normalises each channel with its batch statistics, then scales by `gamma` and shifts
    /// by `beta` (all `[c]`).
    fn nn_batch_norm_train(
        x: Tensor<Self, 4>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        eps: f64,
    ) -> BatchNormTrain<Self> {
        let [n, c, h, w] = x.dims();
        // [c, n·h·w] view: statistics per row.
        let rows = x.clone().swap_dims(0, 1).reshape([c, n * h * w]);
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

    /// Normalises each channel with given (running) statistics.
    fn nn_batch_norm_eval(
        x: Tensor<Self, 4>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        mean: Tensor<Self, 1>,
        var: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, 4> {
        let c = x.dims()[1];
        let scale = gamma / (var + eps).sqrt();
        let shift = beta - mean * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }

    /// Max pooling with a `kernel`×`kernel` window.
    fn nn_max_pool2d(
        x: Tensor<Self, 4>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Tensor<Self, 4> {
        module::max_pool2d(x, [kernel; 2], [stride; 2], [padding; 2], [1, 1], false)
    }

    /// Mean over each channel's whole plane: `[n, c, h, w]` → `[n, c]`.
    fn nn_global_avg_pool(x: Tensor<Self, 4>) -> Tensor<Self, 2> {
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }
}

impl NnBackend for Flex {}
impl NnBackend for Autodiff<Flex> {}
#[cfg(feature = "cuda")]
impl NnBackend for burn::backend::Cuda {}
#[cfg(feature = "cuda")]
impl NnBackend for Autodiff<burn::backend::Cuda> {}

/// A backend `pipe` trains on: autodiff with the extension, over an inner backend (used for
/// evaluation) that has it too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: NnBackend> + NnBackend {}
impl<B> TrainBackend for B where B: AutodiffBackend<InnerBackend: NnBackend> + NnBackend {}
