//! The burn side of a model: one module type, [`Net`], that runs any [`Program`].
//!
//! Parameters are held flat (`Param<Tensor<B, 1>>`, program order) and reshaped to their
//! layer shapes in the forward pass, so one module type serves every family and the
//! optimiser sees exactly the parameters of [`Weights`]. A masked parameter carries a
//! constant 0/1 tensor (not a parameter, not seen by the optimiser); the forward pass uses
//! `W ⊙ M`, so the gradient of every masked weight is exactly zero. Biases and batch-norm
//! parameters masked by [`Mask::extra`] (a dropped filter) go through the same product, so
//! their gradients, and with them every optimiser state built from gradients (momentum, Adam's
//! moments), stay exactly zero too.
//!
//! Convolutions, batch norm and pooling go through [`NnBackend`], so a faster kernel for a
//! backend speeds every family up. Batch-norm running statistics are not module state: the
//! training session owns them (see [`BatchStat`]), as they are not trained.

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::ops::{Conv2dGeometry, NnBackend};
use super::program::{Op, Program, Shortcut};
use super::weights::{Named, Param as HostParam};
use super::{Mask, ModelSpec, NnError, Weights};

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Weight of the newest batch in the running statistics (PyTorch's `momentum` 0.1).
pub const BN_MOMENTUM: f64 = 0.1;

/// Every parameter of a model, flat, with its mask.
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    pub params: Vec<Param<Tensor<B, 1>>>,
    /// `masks[i]` is the constant mask of `params[i]`, or `None` when it is dense.
    pub masks: Vec<Option<Tensor<B, 1>>>,
}

/// A [`Program`] with every operation bound to its parameter indices.
#[derive(Clone, Debug)]
pub struct Plan {
    input: [usize; 3],
    steps: Vec<Step>,
    shapes: Vec<Vec<usize>>,
    batch_norms: usize,
}

#[derive(Clone, Debug)]
enum Step {
    Conv {
        weight: usize,
        bias: Option<usize>,
        geometry: Conv2dGeometry,
    },
    BatchNorm {
        gamma: usize,
        beta: usize,
        index: usize,
    },
    Relu,
    Relu6,
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    GlobalAvgPool,
    Flatten,
    Linear {
        weight: usize,
        bias: Option<usize>,
    },
    Residual {
        body: Vec<Step>,
        shortcut: Skip,
        relu: bool,
        route: Route,
    },
}

/// What a residual block passes on, and which of its paths a gradient may take back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Route {
    /// Branch plus shortcut, both ways (the network as built).
    #[default]
    Both,
    /// The shortcut alone: stochastic depth dropped the branch for this step.
    ShortcutOnly,
    /// Branch plus shortcut forward, the gradient back through the branch only (the
    /// shortcut's contribution is detached): a path through this block takes its branch.
    GradientThroughBranch,
    /// Branch plus shortcut forward, the gradient back through the shortcut only.
    GradientThroughShortcut,
}

#[derive(Clone, Debug)]
enum Skip {
    Identity,
    ZeroPad {
        c_in: usize,
        c_out: usize,
        stride: usize,
    },
    Projection(Vec<Step>),
}

/// Batch statistics of one batch-norm layer in a training forward pass.
pub struct BatchStat<B: Backend> {
    pub mean: Tensor<B, 1>,
    /// Biased variance (what normalised the batch).
    pub var: Tensor<B, 1>,
    /// Values per channel (batch × height × width).
    pub count: usize,
    /// Which batch norm (program order) they belong to.
    pub index: usize,
}

/// Which statistics batch norm uses.
pub enum BnMode<'a, B: Backend> {
    /// Training: the batch's own, reported back.
    Batch,
    /// Evaluation: running mean and variance, `[mean₀, var₀, mean₁, var₁, …]`.
    Running(&'a [Tensor<B, 1>]),
}

enum Act<B: Backend> {
    Map(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
}

impl<B: Backend> Act<B> {
    fn map(self) -> Tensor<B, 4> {
        match self {
            Act::Map(x) => x,
            // Program::check rules this out; a 1×1 map is the faithful reading anyway.
            Act::Flat(x) => {
                let [n, d] = x.dims();
                x.reshape([n, d, 1, 1])
            }
        }
    }
    fn flat(self) -> Tensor<B, 2> {
        match self {
            Act::Flat(x) => x,
            Act::Map(x) => {
                let [n, c, h, w] = x.dims();
                x.reshape([n, c * h * w])
            }
        }
    }
}

impl Plan {
    pub fn new(program: &Program) -> Plan {
        let mut next = 0usize;
        let mut bn = 0usize;
        let steps = compile(&program.ops, &mut next, &mut bn);
        Plan {
            input: program.input,
            steps,
            shapes: program.params().into_iter().map(|p| p.shape).collect(),
            batch_norms: bn,
        }
    }

    /// Input shape `[c, h, w]` of one sample.
    pub fn input(&self) -> [usize; 3] {
        self.input
    }

    pub fn batch_norms(&self) -> usize {
        self.batch_norms
    }

    /// Number of residual blocks (top level, in order).
    pub fn residual_blocks(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Residual { .. }))
            .count()
    }

    /// This plan with the residual branch of block `b` dropped wherever `keep[b]` is false
    /// (stochastic depth: the block passes its shortcut on, and its batch norms see nothing).
    pub fn with_kept_blocks(&self, keep: &[bool]) -> Plan {
        let routes: Vec<Route> = keep
            .iter()
            .map(|&k| if k { Route::Both } else { Route::ShortcutOnly })
            .collect();
        self.with_routes(&routes)
    }

    /// This plan with block `b` routed as `routes[b]` (blocks past the list: [`Route::Both`]).
    pub fn with_routes(&self, routes: &[Route]) -> Plan {
        let mut plan = self.clone();
        let blocks = plan.steps.iter_mut().filter_map(|s| match s {
            Step::Residual { route, .. } => Some(route),
            _ => None,
        });
        for (route, &r) in blocks.zip(routes) {
            *route = r;
        }
        plan
    }
}

/// Binds parameter indices in the order of [`Program::params`] and batch-norm indices in
/// the order of [`Program::batch_norms`] (both: an operation, then its residual body, then
/// its projection).
fn compile(ops: &[Op], next: &mut usize, bn: &mut usize) -> Vec<Step> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let mut take = || {
            *next += 1;
            *next - 1
        };
        out.push(match op {
            Op::Conv {
                stride,
                padding,
                groups,
                bias,
                ..
            } => {
                let weight = take();
                Step::Conv {
                    weight,
                    bias: bias.then(take),
                    geometry: Conv2dGeometry {
                        stride: *stride,
                        padding: *padding,
                        groups: *groups,
                    },
                }
            }
            Op::Linear { bias, .. } => {
                let weight = take();
                Step::Linear {
                    weight,
                    bias: bias.then(take),
                }
            }
            Op::BatchNorm { .. } => {
                let gamma = take();
                let beta = take();
                *bn += 1;
                Step::BatchNorm {
                    gamma,
                    beta,
                    index: *bn - 1,
                }
            }
            Op::Relu => Step::Relu,
            Op::Relu6 => Step::Relu6,
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => Step::MaxPool {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            Op::GlobalAvgPool => Step::GlobalAvgPool,
            Op::Flatten => Step::Flatten,
            Op::Residual {
                body,
                shortcut,
                relu,
                ..
            } => {
                let body = compile(body, next, bn);
                let shortcut = match shortcut {
                    Shortcut::Identity => Skip::Identity,
                    Shortcut::ZeroPad {
                        c_in,
                        c_out,
                        stride,
                    } => Skip::ZeroPad {
                        c_in: *c_in,
                        c_out: *c_out,
                        stride: *stride,
                    },
                    Shortcut::Projection { ops } => Skip::Projection(compile(ops, next, bn)),
                };
                Step::Residual {
                    body,
                    shortcut,
                    relu: *relu,
                    route: Route::Both,
                }
            }
        });
    }
    out
}

impl<B: NnBackend> Net<B> {
    /// Parameter `i`, masked, in its layer shape.
    fn weight<const D: usize>(&self, plan: &Plan, i: usize) -> Tensor<B, D> {
        let mut dims = [0usize; D];
        dims.copy_from_slice(&plan.shapes[i]);
        self.value(i).reshape(dims)
    }

    /// Parameter `i`, masked, flat.
    fn value(&self, i: usize) -> Tensor<B, 1> {
        match &self.masks[i] {
            Some(m) => self.params[i].val() * m.clone(),
            None => self.params[i].val(),
        }
    }

    /// Logits for a batch `[n, c, h, w]`, and (in [`BnMode::Batch`]) each batch norm's
    /// statistics, in program order.
    pub fn forward(
        &self,
        plan: &Plan,
        x: Tensor<B, 4>,
        mode: &BnMode<B>,
    ) -> (Tensor<B, 2>, Vec<BatchStat<B>>) {
        let mut stats = Vec::new();
        let out = self.run(plan, &plan.steps, Act::Map(x), mode, &mut stats);
        // A projection shortcut runs before its block's body, so the statistics arrive out of
        // program order; callers index running buffers by position, so put them in order.
        stats.sort_by_key(|s| s.index);
        (out.flat(), stats)
    }

    fn run(
        &self,
        plan: &Plan,
        steps: &[Step],
        mut x: Act<B>,
        mode: &BnMode<B>,
        stats: &mut Vec<BatchStat<B>>,
    ) -> Act<B> {
        for step in steps {
            x = match step {
                Step::Conv {
                    weight,
                    bias,
                    geometry,
                } => Act::Map(B::nn_conv2d(
                    x.map(),
                    self.weight(plan, *weight),
                    bias.map(|b| self.value(b)),
                    *geometry,
                )),
                Step::Linear { weight, bias } => {
                    let mut y = x.flat().matmul(self.weight(plan, *weight));
                    if let Some(b) = bias {
                        y = y + self.value(*b).unsqueeze_dim(0);
                    }
                    Act::Flat(y)
                }
                Step::BatchNorm { gamma, beta, index } => {
                    let (g, b) = (self.value(*gamma), self.value(*beta));
                    let x = x.map();
                    match mode {
                        BnMode::Batch => {
                            let [n, _, h, w] = x.dims();
                            let out = B::nn_batch_norm_train(x, g, b, BN_EPS);
                            stats.push(BatchStat {
                                mean: out.mean,
                                var: out.var,
                                count: n * h * w,
                                index: *index,
                            });
                            Act::Map(out.output)
                        }
                        BnMode::Running(running) => Act::Map(B::nn_batch_norm_eval(
                            x,
                            g,
                            b,
                            running[2 * index].clone(),
                            running[2 * index + 1].clone(),
                            BN_EPS,
                        )),
                    }
                }
                Step::Relu => match x {
                    Act::Map(t) => Act::Map(relu(t)),
                    Act::Flat(t) => Act::Flat(relu(t)),
                },
                Step::Relu6 => match x {
                    Act::Map(t) => Act::Map(B::nn_relu6(t)),
                    Act::Flat(t) => Act::Flat(B::nn_relu6(t)),
                },
                Step::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => Act::Map(B::nn_max_pool2d(x.map(), *kernel, *stride, *padding)),
                Step::GlobalAvgPool => Act::Flat(B::nn_global_avg_pool(x.map())),
                Step::Flatten => Act::Flat(x.flat()),
                Step::Residual {
                    body,
                    shortcut,
                    relu: after,
                    route,
                } => {
                    let input = x.map();
                    let skip = match shortcut {
                        Skip::Identity => input.clone(),
                        Skip::ZeroPad {
                            c_in,
                            c_out,
                            stride,
                        } => zero_pad_shortcut(input.clone(), *c_in, *c_out, *stride),
                        Skip::Projection(ops) => self
                            .run(plan, ops, Act::Map(input.clone()), mode, stats)
                            .map(),
                    };
                    let mut branch = || {
                        self.run(plan, body, Act::Map(input.clone()), mode, stats)
                            .map()
                    };
                    let y = match route {
                        Route::Both => branch() + skip,
                        Route::ShortcutOnly => skip,
                        Route::GradientThroughBranch => branch() + skip.detach(),
                        Route::GradientThroughShortcut => branch().detach() + skip,
                    };
                    Act::Map(if *after { relu(y) } else { y })
                }
            };
        }
        x
    }
}

/// Option A: keep every `stride`-th row and column (`x[:, :, ::s, ::s]`), then add
/// `c_out − c_in` zero channels, half before and half after, as the reference CIFAR code
/// does (`F.pad(..., (0, 0, 0, 0, p, p))`).
fn zero_pad_shortcut<B: Backend>(
    x: Tensor<B, 4>,
    c_in: usize,
    c_out: usize,
    stride: usize,
) -> Tensor<B, 4> {
    let [n, _, h, w] = x.dims();
    let device = x.device();
    let x = if stride > 1 {
        let (hs, ws) = (h.div_ceil(stride), w.div_ceil(stride));
        // Rows and columns past the edge are padding that the subsampling drops.
        let x = if h % stride != 0 || w % stride != 0 {
            let grown = Tensor::zeros([n, c_in, hs * stride, ws * stride], &device);
            grown.slice_assign([0..n, 0..c_in, 0..h, 0..w], x)
        } else {
            x
        };
        x.reshape([n * c_in * hs, stride, ws, stride])
            .narrow(1, 0, 1)
            .narrow(3, 0, 1)
            .reshape([n, c_in, hs, ws])
    } else {
        x
    };
    let [_, _, h, w] = x.dims();
    let front = (c_out - c_in) / 2;
    let back = c_out - c_in - front;
    let mut parts = Vec::with_capacity(3);
    if front > 0 {
        parts.push(Tensor::zeros([n, front, h, w], &device));
    }
    parts.push(x);
    if back > 0 {
        parts.push(Tensor::zeros([n, back, h, w], &device));
    }
    Tensor::cat(parts, 1)
}

impl<B: AutodiffBackend> Net<B> {
    /// Multiplies the masked parameters by their masks (keeps pruned weights exactly zero
    /// whatever the optimiser did). Works on the inner backend, so no autodiff graph is
    /// recorded; parameter ids and the `require_grad` flag are preserved.
    pub fn reapply_masks(mut self) -> Self {
        for (p, mask) in self.params.iter_mut().zip(&self.masks) {
            if let Some(m) = mask {
                let m = m.clone().inner();
                *p = p.clone().map(|t| {
                    let grad = t.is_require_grad();
                    let t = Tensor::from_inner(t.inner() * m);
                    if grad { t.require_grad() } else { t }
                });
            }
        }
        self
    }
}

/// A host vector as a 1-D tensor on `device` (every parameter and buffer is held flat).
pub(crate) fn tensor1<B: Backend>(data: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

/// Builds the module for `spec` with `mask` applied: masked weights (and biases and
/// batch-norm parameters in [`Mask::extra`]) are zeroed and every parameter that is not fully
/// dense gets a constant mask tensor.
pub fn to_net<B: Backend>(
    spec: &ModelSpec,
    weights: &Weights,
    mask: &Mask,
    device: &B::Device,
) -> Result<Net<B>, NnError> {
    weights.check(spec)?;
    mask.check(spec)?;
    let mut masks_left = mask.layers.iter();
    let mut params = Vec::with_capacity(weights.params.len());
    let mut masks = Vec::with_capacity(weights.params.len());
    for p in &weights.params {
        let m = if p.is_prunable() {
            masks_left.next()
        } else {
            mask.extra.get(&p.name)
        }
        .filter(|m| m.iter().any(|&keep| !keep));
        let data: Vec<f32> = match m {
            Some(m) => p
                .data
                .iter()
                .zip(m)
                .map(|(&w, &keep)| if keep { w } else { 0.0 })
                .collect(),
            None => p.data.clone(),
        };
        params.push(Param::from_tensor(tensor1(data, device)));
        masks.push(m.map(|m| {
            let v: Vec<f32> = m.iter().map(|&keep| if keep { 1.0 } else { 0.0 }).collect();
            tensor1(v, device)
        }));
    }
    Ok(Net { params, masks })
}

/// The running statistics of `weights` as device tensors, `[mean₀, var₀, …]`.
pub fn buffers_to_device<B: Backend>(weights: &Weights, device: &B::Device) -> Vec<Tensor<B, 1>> {
    weights
        .buffers
        .iter()
        .map(|b| tensor1(b.data.clone(), device))
        .collect()
}

/// Reads the module's parameters and the given running statistics back into host
/// [`Weights`].
pub fn from_net<B: Backend>(net: &Net<B>, running: &[Tensor<B, 1>], spec: &ModelSpec) -> Weights {
    let params = net
        .params
        .iter()
        .zip(spec.params())
        .map(|(t, info)| HostParam {
            data: t.val().into_data().to_vec::<f32>().expect("f32 parameters"),
            name: info.name,
            shape: info.shape,
            role: info.role,
        })
        .collect();
    let buffers = running
        .iter()
        .zip(spec.buffer_names())
        .map(|(t, (name, c))| Named {
            name,
            shape: vec![c],
            data: t.clone().into_data().to_vec::<f32>().expect("f32 buffers"),
        })
        .collect();
    Weights { params, buffers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::program::{Op, Program, Shortcut};
    use crate::nn::{InitScheme, init_weights};
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn mlp_forward_matches_a_host_computation() {
        let spec = ModelSpec::mlp(vec![3, 4, 2]);
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        w.params[1].data = vec![0.1, -0.2, 0.3, 0.0];
        w.params[3].data = vec![0.5, -0.5];
        let x = [0.5f32, -1.0, 2.0];
        let (w1, b1) = (&w.params[0].data, &w.params[1].data);
        let (w2, b2) = (&w.params[2].data, &w.params[3].data);
        let h: Vec<f32> = (0..4)
            .map(|j| ((0..3).map(|i| x[i] * w1[i * 4 + j]).sum::<f32>() + b1[j]).max(0.0))
            .collect();
        let want: Vec<f32> = (0..2)
            .map(|j| (0..4).map(|i| h[i] * w2[i * 2 + j]).sum::<f32>() + b2[j])
            .collect();
        let plan = Plan::new(&spec.program().unwrap());
        let net: Net<Flex> = to_net(&spec, &w, &Mask::dense(&spec), &FlexDevice).unwrap();
        let input = Tensor::from_data(TensorData::new(x.to_vec(), [1, 1, 1, 3]), &FlexDevice);
        let got = values(net.forward(&plan, input, &BnMode::Running(&[])).0);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert_eq!(from_net(&net, &[], &spec), w);
    }

    #[test]
    fn masked_net_zeroes_weights_and_keeps_dense_layers_unmasked() {
        let spec = ModelSpec::mlp(vec![3, 4, 2]);
        let w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        let mut mask = Mask::dense(&spec);
        mask.layers[0][5] = false;
        let net: Net<Flex> = to_net(&spec, &w, &mask, &FlexDevice).unwrap();
        assert!(net.masks[0].is_some() && net.masks[2].is_none());
        let back = from_net(&net, &[], &spec);
        assert_eq!(back, w.masked(&mask));
        assert_eq!(back.params[0].data[5], 0.0);
        let bad = Mask::new(vec![vec![true; 12]]);
        assert!(to_net::<Flex>(&spec, &w, &bad, &FlexDevice).is_err());
    }

    #[test]
    fn zero_pad_shortcut_subsamples_and_pads_both_sides() {
        // One sample, 1 channel, 3×3 (odd: ceil(3/2) = 2 rows and columns kept).
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &FlexDevice,
        );
        let y = zero_pad_shortcut(x, 1, 3, 2);
        assert_eq!(y.dims(), [1, 3, 2, 2]);
        assert_eq!(
            values(y),
            vec![0.0, 0.0, 0.0, 0.0, 1.0, 3.0, 7.0, 9.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn conv_batch_norm_residual_forward_matches_a_host_computation() {
        // A 1-channel residual block on a 2×2 input, checked by hand: a 3×3 conv (padding 1)
        // whose kernel is 2 at the centre doubles the input; eval-mode batch norm is affine.
        let program = Program {
            input: [1, 2, 2],
            ops: vec![
                Op::Residual {
                    name: "b".into(),
                    body: vec![
                        Op::Conv {
                            name: "b.conv1".into(),
                            c_in: 1,
                            c_out: 1,
                            kernel: 3,
                            stride: 1,
                            padding: 1,
                            groups: 1,
                            bias: false,
                        },
                        Op::BatchNorm {
                            name: "b.bn1".into(),
                            channels: 1,
                        },
                    ],
                    shortcut: Shortcut::Identity,
                    relu: true,
                },
                Op::GlobalAvgPool,
                Op::Linear {
                    name: "fc".into(),
                    d_in: 1,
                    d_out: 1,
                    bias: false,
                },
            ],
            output: "fc".into(),
        };
        let plan = Plan::new(&program);
        assert_eq!(plan.batch_norms(), 1);
        let mut kernel = vec![0.0f32; 9];
        kernel[4] = 2.0;
        let net = Net::<Flex> {
            params: [kernel, vec![3.0], vec![0.5], vec![1.0]]
                .into_iter()
                .map(|v| Param::from_tensor(tensor1(v, &FlexDevice)))
                .collect(),
            masks: vec![None, None, None, None],
        };
        let x = Tensor::from_data(
            TensorData::new(vec![1.0f32, -1.0, 2.0, 0.0], [1, 1, 2, 2]),
            &FlexDevice,
        );
        // Running mean 1, variance 4: bn(v) = 3 · (v − 1) / sqrt(4 + eps) + 0.5.
        let running = [
            tensor1(vec![1.0], &FlexDevice),
            tensor1(vec![4.0], &FlexDevice),
        ];
        let (y, stats) = net.forward(&plan, x.clone(), &BnMode::Running(&running));
        assert!(stats.is_empty());
        let bn = |v: f64| 3.0 * (v - 1.0) / (4.0 + BN_EPS).sqrt() + 0.5;
        let want: f64 = [1.0, -1.0, 2.0, 0.0]
            .iter()
            .map(|&v| (bn(2.0 * v) + v).max(0.0))
            .sum::<f64>()
            / 4.0;
        let got = values(y)[0] as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Training mode reports the batch statistics of the conv output 2·x = [2, −2, 4, 0].
        let (_, stats) = net.forward(&plan, x, &BnMode::Batch);
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].count, 4);
        assert_eq!(values(stats[0].mean.clone()), vec![1.0]);
        assert_eq!(values(stats[0].var.clone()), vec![5.0]);
    }

    #[test]
    fn batch_statistics_come_back_in_program_order_when_a_projection_runs_first() {
        // A projection shortcut runs before its block's body, yet its statistics must land on
        // its own batch norm: a bottleneck's unequal widths exposed the mix-up, a basic block's
        // equal widths had hidden it (option-B running statistics went to the wrong layers).
        use crate::nn::arch::{BlockKind, ResnetSpec, ShortcutOption};
        let spec = ModelSpec::Resnet(ResnetSpec {
            depth: None,
            stages: Some(vec![1]),
            block: BlockKind::Bottleneck,
            shortcut: ShortcutOption::B,
            width: 2,
            input: [1, 4, 4],
            ..ResnetSpec::standard(20)
        });
        let program = spec.program().unwrap();
        let plan = Plan::new(&program);
        let w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        let net: Net<Flex> = to_net(&spec, &w, &Mask::dense(&spec), &FlexDevice).unwrap();
        let x = Tensor::from_data(
            TensorData::new(
                (0..32).map(|v| v as f32 / 7.0).collect::<Vec<_>>(),
                [2, 1, 4, 4],
            ),
            &FlexDevice,
        );
        let (_, stats) = net.forward(&plan, x, &BnMode::Batch);
        let got: Vec<(usize, usize)> = stats.iter().map(|s| (s.index, s.mean.dims()[0])).collect();
        // stem bn1 (2), block bn1 (2), bn2 (2), bn3 (8), shortcut.1 (8).
        assert_eq!(got, [(0, 2), (1, 2), (2, 2), (3, 8), (4, 8)]);
        let widths: Vec<usize> = program
            .params()
            .into_iter()
            .filter(|p| p.role == crate::nn::program::ParamRole::BnWeight)
            .map(|p| p.shape[0])
            .collect();
        assert_eq!(widths, [2, 2, 2, 8, 8]);
    }
}
