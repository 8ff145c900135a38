//! The layer operations the model families are built from, as a burn backend extension.
//!
//! [`NnBackend`] is implemented for every backend `pipe` trains on. Its default methods are
//! burn's own generic operations, which is what the CUDA backend uses; the CPU backend
//! (`Flex`, and `Autodiff<Flex>` for training) may override them with faster kernels, each
//! checked against these defaults in tests. Models call only these functions for
//! convolutions, batch norm and pooling, so a faster kernel speeds every family up at once.
//!
//! Why an extension trait rather than a patched burn-flex: the kernels live in this crate
//! (no fork of burn to carry across upgrades), each is one autodiff node with a hand-written
//! backward pass, and other backends (CUDA) keep burn's kernels untouched. The cost is that
//! only models built on these functions (all of `pipe`'s) get the speed; burn's own modules
//! do not. The same kernels would fit burn-flex's `conv2d_x_backward` /
//! `conv2d_weight_backward` overrides upstream.

use std::cell::Cell;
use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

mod activation;
mod adam;
mod batch_norm;
mod conv;
mod direct;
mod direct_narrow;
mod narrow_weight_grad;
mod pool;
mod raw;
pub mod reference;
#[cfg(test)]
mod tests;

/// The environment variable that, set to `reference`, makes the CPU backend run burn's
/// generic operations instead of its kernels (to time one against the other in the same
/// binary, or to bisect a numeric difference).
pub const OPS_ENV: &str = "PIPE_NN_OPS";

thread_local! {
    /// Set by [`with_reference_ops`] for the calling thread.
    static REFERENCE_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the CPU backend's [`NnBackend`] methods run burn's generic operations on this
/// thread: inside [`with_reference_ops`], or everywhere with `PIPE_NN_OPS=reference`.
pub fn reference_ops() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    REFERENCE_HERE.get()
        || *FROM_ENV.get_or_init(|| std::env::var(OPS_ENV).is_ok_and(|v| v == "reference"))
}

/// Runs `f` with the CPU backend on burn's generic operations (on this thread only), for
/// comparing whole models with and without the kernels.
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = REFERENCE_HERE.replace(true);
    let out = f();
    REFERENCE_HERE.set(before);
    out
}

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

/// One Adam step's constants (burn's `Adam` with `amsgrad` off, and its weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// L2 penalty added to the gradient (`p·λ + g`), as burn's `WeightDecay`.
    pub weight_decay: Option<f32>,
    /// The step's number, from 1.
    pub time: usize,
    pub lr: f64,
}

/// Convolutions, batch norm, pooling, ReLU6 and the Adam step. Every method has burn's generic implementation
/// ([`reference`]) as its default.
pub trait NnBackend: Backend {
    /// `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in / groups, k, k]`, `bias` `[c_out]`.
    fn nn_conv2d(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 1>>,
        g: Conv2dGeometry,
    ) -> Tensor<Self, 4> {
        reference::conv2d(x, weight, bias, g)
    }

    /// Normalises each channel with its batch statistics, then scales by `gamma` and shifts
    /// by `beta` (all `[c]`). The CPU kernels return the statistics as constants (no
    /// gradient flows through them); they only feed the running statistics.
    fn nn_batch_norm_train(
        x: Tensor<Self, 4>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        eps: f64,
    ) -> BatchNormTrain<Self> {
        reference::batch_norm_train(x, gamma, beta, eps)
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
        reference::batch_norm_eval(x, gamma, beta, mean, var, eps)
    }

    /// Max pooling with a `kernel`×`kernel` window (`2·padding ≤ kernel`).
    fn nn_max_pool2d(
        x: Tensor<Self, 4>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Tensor<Self, 4> {
        reference::max_pool2d(x, kernel, stride, padding)
    }

    /// Average pooling with a `kernel`×`kernel` window (`2·padding ≤ kernel`); padded
    /// positions count towards the divisor, as in PyTorch's default.
    fn nn_avg_pool2d(
        x: Tensor<Self, 4>,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Tensor<Self, 4> {
        reference::avg_pool2d(x, kernel, stride, padding)
    }

    /// Mean over each channel's whole plane: `[n, c, h, w]` → `[n, c]`.
    fn nn_global_avg_pool(x: Tensor<Self, 4>) -> Tensor<Self, 2> {
        reference::global_avg_pool(x)
    }

    /// ReLU6, `min(max(x, 0), 6)`, element-wise.
    fn nn_relu6<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        reference::relu6(x)
    }

    /// One Adam step of a parameter: the new parameter and first and second moments, from
    /// the parameter, its gradient and the moments before (`None` at step 1).
    #[allow(clippy::type_complexity)]
    fn nn_adam_step<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        c: &AdamStep,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        reference::adam_step(param, grad, moments, c)
    }
}

/// Implements [`NnBackend`] for a CPU backend with the given kernels, each falling back to
/// burn's generic ops while [`reference_ops`] is set (for before/after timings and tests).
macro_rules! cpu_kernels {
    (
        $backend:ty,
        $conv:path,
        $bn_train:path,
        $bn_eval:path,
        $pool:path,
        $global_avg:path,
        $relu6:path,
        $adam:path
    ) => {
        impl NnBackend for $backend {
            fn nn_conv2d(
                x: Tensor<Self, 4>,
                weight: Tensor<Self, 4>,
                bias: Option<Tensor<Self, 1>>,
                g: Conv2dGeometry,
            ) -> Tensor<Self, 4> {
                if reference_ops() {
                    return reference::conv2d(x, weight, bias, g);
                }
                $conv(x, weight, bias, g)
            }

            fn nn_batch_norm_train(
                x: Tensor<Self, 4>,
                gamma: Tensor<Self, 1>,
                beta: Tensor<Self, 1>,
                eps: f64,
            ) -> BatchNormTrain<Self> {
                if reference_ops() {
                    return reference::batch_norm_train(x, gamma, beta, eps);
                }
                $bn_train(x, gamma, beta, eps)
            }

            fn nn_batch_norm_eval(
                x: Tensor<Self, 4>,
                gamma: Tensor<Self, 1>,
                beta: Tensor<Self, 1>,
                mean: Tensor<Self, 1>,
                var: Tensor<Self, 1>,
                eps: f64,
            ) -> Tensor<Self, 4> {
                if reference_ops() {
                    return reference::batch_norm_eval(x, gamma, beta, mean, var, eps);
                }
                $bn_eval(x, gamma, beta, mean, var, eps)
            }

            fn nn_max_pool2d(
                x: Tensor<Self, 4>,
                kernel: usize,
                stride: usize,
                padding: usize,
            ) -> Tensor<Self, 4> {
                if reference_ops() {
                    return reference::max_pool2d(x, kernel, stride, padding);
                }
                $pool(x, pool::Kind::Max, kernel, stride, padding)
            }

            fn nn_avg_pool2d(
                x: Tensor<Self, 4>,
                kernel: usize,
                stride: usize,
                padding: usize,
            ) -> Tensor<Self, 4> {
                if reference_ops() {
                    return reference::avg_pool2d(x, kernel, stride, padding);
                }
                $pool(x, pool::Kind::Avg, kernel, stride, padding)
            }

            fn nn_global_avg_pool(x: Tensor<Self, 4>) -> Tensor<Self, 2> {
                if reference_ops() {
                    return reference::global_avg_pool(x);
                }
                $global_avg(x)
            }

            fn nn_relu6<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
                if reference_ops() {
                    return reference::relu6(x);
                }
                $relu6(x)
            }

            fn nn_adam_step<const D: usize>(
                param: Tensor<Self, D>,
                grad: Tensor<Self, D>,
                moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
                c: &AdamStep,
            ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
                if reference_ops() {
                    return reference::adam_step(param, grad, moments, c);
                }
                $adam(param, grad, moments, c)
            }
        }
    };
}

// The CPU backend's kernels (element types other than `f32` take the defaults).
cpu_kernels!(
    Flex,
    conv::flex,
    batch_norm::flex_train,
    batch_norm::flex_eval,
    pool::flex,
    pool::flex_global_avg,
    activation::flex,
    adam::flex
);
// The same kernels as single autodiff operations with hand-written backward passes.
cpu_kernels!(
    Autodiff<Flex>,
    conv::autodiff,
    batch_norm::autodiff_train,
    batch_norm::autodiff_eval,
    pool::autodiff,
    pool::autodiff_global_avg,
    activation::autodiff,
    reference::adam_step
);

#[cfg(feature = "cuda")]
impl NnBackend for burn::backend::Cuda {}
#[cfg(feature = "cuda")]
impl NnBackend for Autodiff<burn::backend::Cuda> {}

/// A backend `pipe` trains on: autodiff with the extension, over an inner backend (used for
/// evaluation) that has it too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: NnBackend> + NnBackend {}
impl<B> TrainBackend for B where B: AutodiffBackend<InnerBackend: NnBackend> + NnBackend {}
