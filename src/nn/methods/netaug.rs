//! Network Augmentation (Cai et al., ICLR 2022, "Network Augmentation for Tiny Deep
//! Learning"): a tiny model is trained as the narrowest member of a family of wider models
//! that share its weights, so that it gets extra supervision from the wider ones.
//!
//! Weight sharing: the *master* parameters are those of the widest augmented model (every
//! conv of the base `convnet` widened by the largest factor). A sub-model of per-conv widths
//! `w_l` uses the first `w_l` output channels of each conv and the first `w_{l-1}` input
//! channels, the first `w_l` entries of each batch norm, and the first input features of the
//! classifier. Each is a prefix of every dimension of the master tensor, so one generic prefix
//! slice ([`prefix_slice`]) serves every parameter, and on the autodiff backend the gradient of
//! a sub-model flows into exactly those entries of the master.
//!
//! A training step (see [`netaug_train`]) runs the base model and one augmented model whose
//! widths are drawn independently per conv from `base × factors`, on the same batch, sums
//! the two label-smoothed cross-entropies and takes one SGD (Nesterov) step. At the start of
//! every epoch with width augmentation, each conv's output channels are sorted so the base
//! model holds the most important ones ([`sort_channels`]). Batch-norm running statistics are
//! never tracked during training: before every evaluation (and before writing the result)
//! they are re-estimated for the base model on a fixed set of training images
//! ([`calibrate_bn`]), as the reference does, because the shared statistics of a family of
//! widths describe none of its members.

use std::collections::HashMap;

use burn::module::{Param, ParamId};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use rand::seq::index::sample;

use crate::data::{BatchOrder, BatchTargets, Split, gather_batch};
use crate::nn::arch::ConvnetSpec;
use crate::nn::device::{BackendTask, DeviceSpec, dispatch};
use crate::nn::host::PoolFollower;
use crate::nn::init::{InitDraw, draw_weights};
use crate::nn::net::{BnMode, Net, Plan, from_net};
use crate::nn::ops::{NnBackend, TrainBackend};
use crate::nn::program::{Op, Program};
use crate::nn::schedule::{LrSchedule, lr_at};
use crate::nn::train::{Directive, EvalPoint, Progress, TrainHooks, check_split, eval_split};
use crate::nn::{InitScheme, ModelSpec, NnError, Weights};
use crate::rng::{self, Domain};

/// The widths NetAug uses: for each conv of the base model, its base width and the
/// augmented choices `round(base × factor)` (ascending, deduplicated, the base first).
#[derive(Clone, Debug, PartialEq)]
pub struct WidthFamily {
    pub base: ConvnetSpec,
    pub choices: Vec<Vec<usize>>,
}

impl WidthFamily {
    /// `factors` must contain 1 (the base) and be ≥ 1.
    pub fn new(base: &ConvnetSpec, factors: &[f64]) -> WidthFamily {
        let choices = base
            .conv_widths()
            .into_iter()
            .map(|w| {
                let mut c: Vec<usize> = factors
                    .iter()
                    .map(|f| ((w as f64 * f).round() as usize).max(1))
                    .collect();
                c.push(w);
                c.sort_unstable();
                c.dedup();
                c
            })
            .collect();
        WidthFamily {
            base: base.clone(),
            choices,
        }
    }

    pub fn base_widths(&self) -> Vec<usize> {
        self.base.conv_widths()
    }

    pub fn max_widths(&self) -> Vec<usize> {
        self.choices
            .iter()
            .map(|c| *c.last().expect("a width"))
            .collect()
    }

    pub fn spec(&self, widths: &[usize]) -> ModelSpec {
        ModelSpec::Convnet(self.base.with_conv_widths(widths))
    }

    /// One width per conv, each drawn uniformly from its choices.
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<usize> {
        self.choices
            .iter()
            .map(|c| c[rng.random_range(0..c.len())])
            .collect()
    }
}

/// In-memory shapes of the parameters of `spec`, in program order.
pub fn param_shapes(spec: &ModelSpec) -> Vec<Vec<usize>> {
    spec.params().into_iter().map(|p| p.shape).collect()
}

/// For each element of a tensor of shape `sub` (row-major), its flat index in a tensor of
/// shape `full` when `sub` is the leading corner (`[0..sub₀, 0..sub₁, …]`) of `full`.
pub fn prefix_indices(full: &[usize], sub: &[usize]) -> Vec<usize> {
    assert_eq!(full.len(), sub.len(), "same rank");
    let mut out = vec![0usize];
    let mut stride = 1usize;
    // Built from the last dimension outwards: every index gains the outer dimension's offset.
    let mut strides = vec![0usize; full.len()];
    for d in (0..full.len()).rev() {
        strides[d] = stride;
        stride *= full[d];
    }
    for d in 0..full.len() {
        assert!(sub[d] <= full[d], "prefix {sub:?} exceeds {full:?}");
        let step = strides[d];
        out = out
            .iter()
            .flat_map(|&base| (0..sub[d]).map(move |i| base + i * step))
            .collect();
    }
    out
}

/// The leading corner `sub` of the flat tensor `t` of shape `full`, flat again. On the
/// autodiff backend the gradient flows back into those entries of `t` only.
pub fn prefix_slice<B: Backend>(t: Tensor<B, 1>, full: &[usize], sub: &[usize]) -> Tensor<B, 1> {
    if full == sub {
        return t;
    }
    let n: usize = sub.iter().product();
    match full.len() {
        1 => t.narrow(0, 0, sub[0]),
        2 => t
            .reshape([full[0], full[1]])
            .slice([0..sub[0], 0..sub[1]])
            .reshape([n]),
        3 => t
            .reshape([full[0], full[1], full[2]])
            .slice([0..sub[0], 0..sub[1], 0..sub[2]])
            .reshape([n]),
        4 => t
            .reshape([full[0], full[1], full[2], full[3]])
            .slice([0..sub[0], 0..sub[1], 0..sub[2], 0..sub[3]])
            .reshape([n]),
        r => panic!("parameters have rank 1 to 4, not {r}"),
    }
}

/// The sub-model of shapes `sub` cut out of the master parameters (of shapes `full`): a
/// dense [`Net`] whose parameters are slices of `master` (on the autodiff backend, nodes of
/// its graph).
pub fn sub_net<B: Backend>(
    master: &[Tensor<B, 1>],
    full: &[Vec<usize>],
    sub: &[Vec<usize>],
) -> Net<B> {
    let params = master
        .iter()
        .zip(full.iter().zip(sub))
        .map(|(t, (f, s))| {
            // `initialized`, not `from_tensor`: the slice must stay a node of the graph.
            Param::initialized(ParamId::new(), prefix_slice(t.clone(), f, s))
        })
        .collect::<Vec<_>>();
    let masks = vec![None; params.len()];
    Net { params, masks }
}

/// The master (widest) weights: `base` in the leading corner of every parameter, the extra
/// channels freshly drawn with `scheme` from `seed`.
pub fn widen_weights(
    base_spec: &ModelSpec,
    base: &Weights,
    master_spec: &ModelSpec,
    scheme: InitScheme,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut master: Vec<Vec<f32>> = draw_weights(master_spec, scheme, seed, InitDraw::NetAugWide)
        .params
        .into_iter()
        .map(|p| p.data)
        .collect();
    for ((m, full), (b, sub)) in master
        .iter_mut()
        .zip(param_shapes(master_spec))
        .zip(base.params.iter().zip(param_shapes(base_spec)))
    {
        for (j, i) in prefix_indices(&full, &sub).into_iter().enumerate() {
            m[i] = b.data[j];
        }
    }
    master
}

/// Who reads a conv's output channels.
#[derive(Clone, Debug, PartialEq)]
enum Reader {
    /// The next conv's weight (its input dimension).
    Conv { weight: usize },
    /// The first linear layer's weight `[in, out]`, `block` input features per channel
    /// (1 after a global pool, `h·w` after a flatten).
    Linear { weight: usize, block: usize },
}

/// A conv whose output channels can be permuted: its parameters and its reader's.
#[derive(Clone, Debug, PartialEq)]
struct ChannelGroup {
    channels: usize,
    conv_weight: usize,
    conv_bias: Option<usize>,
    bn: Option<(usize, usize)>,
    reader: Reader,
}

/// Every conv of a plain (non-residual) program with the parameters its channel order
/// touches.
fn channel_groups(program: &Program) -> Result<Vec<ChannelGroup>, String> {
    let mut next = 0usize;
    let mut take = || {
        next += 1;
        next - 1
    };
    let mut groups = Vec::new();
    let mut open: Option<ChannelGroup> = None;
    for op in &program.ops {
        match op {
            Op::Conv {
                c_out,
                bias,
                groups: g,
                ..
            } => {
                if *g != 1 {
                    return Err("grouped convolutions cannot be width-augmented".into());
                }
                let weight = take();
                let conv_bias = bias.then(&mut take);
                if let Some(mut prev) = open.take() {
                    prev.reader = Reader::Conv { weight };
                    groups.push(prev);
                }
                open = Some(ChannelGroup {
                    channels: *c_out,
                    conv_weight: weight,
                    conv_bias,
                    bn: None,
                    reader: Reader::Conv { weight: usize::MAX },
                });
            }
            Op::BatchNorm { .. } => {
                let (gamma, beta) = (take(), take());
                match open.as_mut() {
                    Some(g) if g.bn.is_none() => g.bn = Some((gamma, beta)),
                    _ => return Err("a batch norm must follow a conv".into()),
                }
            }
            Op::Linear { d_in, bias, .. } => {
                let weight = take();
                if *bias {
                    take();
                }
                if let Some(mut prev) = open.take() {
                    prev.reader = Reader::Linear {
                        weight,
                        block: d_in / prev.channels,
                    };
                    groups.push(prev);
                }
            }
            Op::Residual { .. } => {
                return Err("residual blocks cannot be width-augmented here".into());
            }
            Op::Relu | Op::Relu6 | Op::MaxPool { .. } | Op::GlobalAvgPool | Op::Flatten => {}
        }
    }
    if open.is_some() {
        return Err("the last conv's channels must be read by a linear layer".into());
    }
    Ok(groups)
}

/// Per-channel L1 norm of the reader's weights for channel `c` (what the channel feeds).
fn reader_l1(group: &ChannelGroup, shapes: &[Vec<usize>], params: &[Vec<f32>]) -> Vec<f64> {
    let mut norm = vec![0f64; group.channels];
    match group.reader {
        Reader::Conv { weight } => {
            let s = &shapes[weight];
            let (o, i, kk) = (s[0], s[1], s[2] * s[3]);
            for a in 0..o {
                for (c, n) in norm.iter_mut().enumerate() {
                    let start = (a * i + c) * kk;
                    *n += params[weight][start..start + kk]
                        .iter()
                        .map(|v| v.abs() as f64)
                        .sum::<f64>();
                }
            }
        }
        Reader::Linear { weight, block } => {
            let out = shapes[weight][1];
            for (c, n) in norm.iter_mut().enumerate() {
                let rows = &params[weight][c * block * out..(c + 1) * block * out];
                *n = rows.iter().map(|v| v.abs() as f64).sum();
            }
        }
    }
    norm
}

/// `data` viewed as `[outer, channels, inner]`, channels reordered so that new channel `k`
/// is old channel `perm[k]`.
fn permute_axis(data: &mut [f32], channels: usize, inner: usize, perm: &[usize]) {
    let outer = data.len() / (channels * inner);
    let old = data.to_vec();
    for a in 0..outer {
        for (k, &p) in perm.iter().enumerate() {
            let dst = (a * channels + k) * inner;
            let src = (a * channels + p) * inner;
            data[dst..dst + inner].copy_from_slice(&old[src..src + inner]);
        }
    }
}

fn apply_permutation(
    group: &ChannelGroup,
    perm: &[usize],
    shapes: &[Vec<usize>],
    data: &mut [Vec<f32>],
) {
    let c = group.channels;
    let w = &shapes[group.conv_weight];
    permute_axis(&mut data[group.conv_weight], c, w[1] * w[2] * w[3], perm);
    for i in group
        .conv_bias
        .into_iter()
        .chain(group.bn.into_iter().flat_map(|(g, b)| [g, b]))
    {
        permute_axis(&mut data[i], c, 1, perm);
    }
    match group.reader {
        Reader::Conv { weight } => {
            let s = &shapes[weight];
            permute_axis(&mut data[weight], c, s[2] * s[3], perm);
        }
        Reader::Linear { weight, block } => {
            permute_axis(&mut data[weight], c, block * shapes[weight][1], perm);
        }
    }
}

/// Sorts every conv's output channels by importance, descending (stable on ties), so that a
/// prefix of the channels keeps the most important ones. Importance is the L1 norm of the
/// weights that read the channel (the next conv's input slice, or the classifier's rows), as
/// the reference sorts by the L1 norm of the point-conv input weights. The conv, its bias and
/// batch norm, and the reader are permuted together, so the model computes the same function;
/// `also` (e.g. momentum buffers of the same shapes) get the same permutations. Returns the
/// permutation of each conv (new channel `k` = old channel `perm[k]`).
pub fn sort_channels(
    program: &Program,
    params: &mut [Vec<f32>],
    also: &mut [&mut [Vec<f32>]],
) -> Result<Vec<Vec<usize>>, String> {
    let shapes: Vec<Vec<usize>> = program.params().into_iter().map(|p| p.shape).collect();
    let groups = channel_groups(program)?;
    let perms: Vec<Vec<usize>> = groups
        .iter()
        .map(|g| {
            let norm = reader_l1(g, &shapes, params);
            let mut perm: Vec<usize> = (0..g.channels).collect();
            perm.sort_by(|&a, &b| norm[b].total_cmp(&norm[a]));
            perm
        })
        .collect();
    for (g, perm) in groups.iter().zip(&perms) {
        apply_permutation(g, perm, &shapes, params);
        for data in also.iter_mut() {
            apply_permutation(g, perm, &shapes, data);
        }
    }
    Ok(perms)
}

/// Re-estimated batch-norm statistics `[mean₀, var₀, …]` of `net` on the samples `idx` of
/// `split`: each batch of `batch` samples is normalised with its own statistics (no
/// gradient), and the batch means and (biased) variances are averaged, weighted by batch
/// size, as the reference's `reset_bn` does.
pub fn calibrate_bn<B: NnBackend>(
    net: &Net<B>,
    plan: &Plan,
    split: &Split,
    idx: &[usize],
    batch: usize,
    device: &B::Device,
) -> Vec<Tensor<B, 1>> {
    let [c, h, w] = plan.input();
    let mut sums: Vec<Tensor<B, 1>> = Vec::new();
    let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
    for chunk in idx.chunks(batch.max(1)) {
        gather_batch(split, chunk, None, &mut images, &mut targets);
        let n = chunk.len();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(std::mem::take(&mut images), [n, c, h, w]),
            device,
        );
        let (_, stats) = net.forward(plan, x, &BnMode::Batch);
        let weighted = stats
            .into_iter()
            .flat_map(|s| [s.mean * n as f64, s.var * n as f64]);
        sums = if sums.is_empty() {
            weighted.collect()
        } else {
            sums.into_iter().zip(weighted).map(|(a, b)| a + b).collect()
        };
    }
    let total = idx.len().max(1) as f64;
    sums.into_iter().map(|s| s / total).collect()
}

/// `(1 − ε)·onehot + ε / classes` for each label, `[n, classes]`.
pub fn smoothed_targets(labels: &[u8], classes: usize, eps: f64) -> TensorData {
    let off = (eps / classes as f64) as f32;
    let on = (1.0 - eps + eps / classes as f64) as f32;
    let mut v = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = on;
    }
    TensorData::new(v, [labels.len(), classes])
}

/// Mean cross-entropy of `logits` against (smoothed) target distributions.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets)
        .sum()
        .mul_scalar(-1.0 / n)
}

/// SGD as PyTorch runs it (dampening 0): `d = g + wd·p` (decay only where `decay[i]`),
/// `buf = m·buf + d`, then `p −= lr·(d + m·buf)` with Nesterov or `p −= lr·buf` without.
/// Held here, not in burn's optimiser, so that biases and batch norm get no weight decay and
/// the momentum buffers can be permuted with the channels.
pub struct Sgd<B: Backend> {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub decay: Vec<bool>,
    pub buffers: Vec<Tensor<B, 1>>,
}

impl<B: Backend> Sgd<B> {
    pub fn step(&mut self, params: &mut [Tensor<B, 1>], grads: Vec<Option<Tensor<B, 1>>>, lr: f64) {
        for (i, g) in grads.into_iter().enumerate() {
            let Some(mut d) = g else { continue };
            if self.decay[i] && self.weight_decay > 0.0 {
                d = d + params[i].clone() * self.weight_decay;
            }
            let update = if self.momentum > 0.0 {
                let buf = self.buffers[i].clone() * self.momentum + d.clone();
                self.buffers[i] = buf.clone();
                if self.nesterov {
                    d + buf * self.momentum
                } else {
                    buf
                }
            } else {
                d
            };
            params[i] = params[i].clone() - update * lr;
        }
    }
}

/// NetAug training settings (iterations = `epochs × ⌊n / batch⌋`).
#[derive(Clone, Debug)]
pub struct NetAugConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// On conv and linear weights only.
    pub weight_decay: f64,
    pub batch: usize,
    pub epochs: u64,
    pub schedule: LrSchedule,
    pub warmup_epochs: u64,
    pub label_smoothing: f64,
    /// Width factors (1 = the base; the largest sets the master's width).
    pub factors: Vec<f64>,
    /// Width augmentation during the first `⌊fraction × epochs⌉` epochs, base only after.
    pub stop_aug_fraction: f64,
    /// `false`: train the base model alone (no master, no sort), same loss, optimiser,
    /// schedule and calibration: the baseline arm.
    pub augment: bool,
    pub calibration_images: usize,
    /// Seed of the calibration images (fixed across runs, like the reference's).
    pub calibration_seed: u64,
    /// Seed of the data order, the width draws and the extra channels' initialisation.
    pub seed: u64,
    /// Calibrate and evaluate after every this many epochs (and after the last).
    pub eval_every_epochs: u64,
}

impl NetAugConfig {
    /// Epochs with width augmentation.
    pub fn aug_epochs(&self) -> u64 {
        if self.augment {
            (self.stop_aug_fraction * self.epochs as f64).round() as u64
        } else {
            0
        }
    }
}

/// Where a NetAug training stands after iteration `done` (a progress checkpoint): everything
/// its continuation depends on, so that a run continued from it ends bit for bit where the
/// uninterrupted run ends. It is taken after a step and before the end-of-epoch work (the
/// epoch's mean loss, its evaluation) of that step's epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct NetAugState {
    pub done: u64,
    /// The master parameters, in program order and burn's layout (channels as sorted so far).
    pub params: Vec<Vec<f32>>,
    /// The SGD momentum buffers of the master parameters.
    pub momentum: Vec<Vec<f32>>,
    pub curve: Vec<EvalPoint>,
    /// The sum of this epoch's base losses so far, as the device added them in `f32`.
    pub loss_sum: f32,
    /// The last finished epoch's mean loss (NaN during the first).
    pub last_loss: f64,
}

/// The trained base model (BN statistics calibrated) and one curve point per epoch.
#[derive(Clone, Debug)]
pub struct NetAugOutput {
    pub weights: Weights,
    pub curve: Vec<EvalPoint>,
    pub iterations: u64,
}

/// The fixed calibration images: `n` training indices (all when `n ≥ split.n`) drawn
/// without replacement from `seed`, ascending.
pub fn calibration_indices(split_n: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= split_n {
        return (0..split_n).collect();
    }
    let mut rng = rng::stream(seed, Domain::NetAugCalibration, 0);
    let mut idx = sample(&mut rng, split_n, n).into_vec();
    idx.sort_unstable();
    idx
}

/// Trains the base `convnet` `spec` (dense weights `init`) with NetAug (or, with
/// `augment: false`, alone) on `train`, evaluating on `val` (if non-empty) and `test` after
/// every epoch, continuing from `from` when given (a state an earlier attempt handed to
/// `hooks`). See the module docs.
#[allow(clippy::too_many_arguments)]
pub fn netaug_train(
    spec: &ModelSpec,
    init: &Weights,
    train: &Split,
    val: &Split,
    test: &Split,
    cfg: &NetAugConfig,
    device: &DeviceSpec,
    from: Option<NetAugState>,
    hooks: &mut dyn TrainHooks<NetAugState>,
) -> Result<NetAugOutput, NnError> {
    let ModelSpec::Convnet(base) = spec else {
        return Err(NnError::Invalid(format!(
            "NetAug widens `convnet` models; this model is a `{}`",
            spec.family()
        )));
    };
    spec.validate().map_err(NnError::Invalid)?;
    init.check(spec)?;
    check_split(spec, train, "training")?;
    check_split(spec, val, "validation")?;
    check_split(spec, test, "test")?;
    if test.n == 0 {
        return Err(NnError::Invalid("the test split is empty".into()));
    }
    if cfg.epochs == 0 {
        return Err(NnError::Invalid("NetAug needs at least one epoch".into()));
    }
    if cfg.factors.is_empty() || cfg.factors.iter().any(|f| !(f.is_finite() && *f >= 1.0)) {
        return Err(NnError::Invalid(format!(
            "width factors {:?} must be finite and >= 1",
            cfg.factors
        )));
    }
    let order = BatchOrder::new(train.n, cfg.batch, cfg.seed, 0)?;
    let family = WidthFamily::new(base, &cfg.factors);
    channel_groups(
        &family
            .spec(&family.max_widths())
            .program()
            .map_err(NnError::Invalid)?,
    )
    .map_err(NnError::Invalid)?;
    if let Some(state) = &from {
        let total = cfg.epochs * order.batches_per_epoch() as u64;
        let master = if cfg.aug_epochs() > 0 {
            family.spec(&family.max_widths())
        } else {
            family.spec(&family.base_widths())
        };
        check_state(state, &param_shapes(&master), total)?;
    }
    dispatch(
        device,
        Task {
            family,
            init,
            train,
            val,
            test,
            cfg,
            from,
            hooks,
        },
    )
}

/// A state to continue from must be of this training: its master's shapes, within its length.
fn check_state(state: &NetAugState, shapes: &[Vec<usize>], total: u64) -> Result<(), NnError> {
    let fits = |v: &[Vec<f32>]| {
        v.len() == shapes.len()
            && v.iter()
                .zip(shapes)
                .all(|(v, s)| v.len() == s.iter().product::<usize>())
    };
    if !(1..=total).contains(&state.done) || !fits(&state.params) || !fits(&state.momentum) {
        return Err(NnError::Invalid(format!(
            "the NetAug state at iteration {} is not one of this training ({total} iterations, \
             {} master parameters)",
            state.done,
            shapes.len()
        )));
    }
    Ok(())
}

struct Task<'a, 'b> {
    family: WidthFamily,
    init: &'a Weights,
    train: &'a Split,
    val: &'a Split,
    test: &'a Split,
    cfg: &'a NetAugConfig,
    from: Option<NetAugState>,
    hooks: &'b mut dyn TrainHooks<NetAugState>,
}

/// A sub-model's plan and parameter shapes.
struct SubModel {
    plan: Plan,
    shapes: Vec<Vec<usize>>,
}

impl SubModel {
    fn new(spec: &ModelSpec) -> Result<SubModel, NnError> {
        Ok(SubModel {
            plan: Plan::new(&spec.program().map_err(NnError::Invalid)?),
            shapes: param_shapes(spec),
        })
    }
}

fn to_device<B: Backend>(data: &[Vec<f32>], device: &B::Device) -> Vec<Tensor<B, 1>> {
    data.iter()
        .map(|v| Tensor::from_data(TensorData::new(v.clone(), [v.len()]), device))
        .collect()
}

fn to_host<B: Backend>(data: &[Tensor<B, 1>]) -> Vec<Vec<f32>> {
    data.iter()
        .map(|t| t.clone().into_data().to_vec::<f32>().expect("f32 tensors"))
        .collect()
}

impl BackendTask for Task<'_, '_> {
    type Output = NetAugOutput;

    fn run<B: TrainBackend>(self, device: B::Device) -> Result<NetAugOutput, NnError> {
        let Task {
            family,
            init,
            train,
            val,
            test,
            cfg,
            from,
            hooks,
        } = self;
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let base_spec = family.spec(&family.base_widths());
        let aug_epochs = cfg.aug_epochs();
        // Without augmentation the master is the base model itself (every slice is whole).
        let master_spec = if aug_epochs > 0 {
            family.spec(&family.max_widths())
        } else {
            base_spec.clone()
        };
        let master_program = master_spec.program().map_err(NnError::Invalid)?;
        let master_shapes = param_shapes(&master_spec);
        let base = SubModel::new(&base_spec)?;
        let classes = base_spec.output_dim();
        let host_master = widen_weights(
            &base_spec,
            init,
            &master_spec,
            InitScheme::KaimingNormal,
            cfg.seed,
        );
        let mut params = to_device::<I<B>>(&host_master, &device);
        let mut sgd = Sgd::<I<B>> {
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: cfg.weight_decay,
            decay: master_spec.params().iter().map(|p| p.is_weight()).collect(),
            buffers: master_shapes
                .iter()
                .map(|s| Tensor::zeros([s.iter().product::<usize>()], &device))
                .collect(),
        };
        let per_epoch = (train.n / cfg.batch) as u64;
        let total = cfg.epochs * per_epoch;
        let warmup = cfg.warmup_epochs * per_epoch;
        let calib = calibration_indices(train.n, cfg.calibration_images, cfg.calibration_seed);
        let mut rng = rng::stream(cfg.seed, Domain::NetAugWidths, 0);
        let mut curve = Vec::new();
        let mut it = 0u64;
        let mut last_loss = f64::NAN;
        // A continued run: the epoch it was in, the steps of that epoch already done, and
        // their loss sum. The width draws of the steps done are drawn again and dropped, so
        // that the stream stands where it stood.
        let mut resumed: Option<(u64, f32)> = None;
        let mut first_epoch = 0;
        if let Some(state) = from {
            params = to_device(&state.params, &device);
            sgd.buffers = to_device(&state.momentum, &device);
            for _ in 0..state.done.min(aug_epochs * per_epoch) {
                family.sample(&mut rng);
            }
            first_epoch = (state.done - 1) / per_epoch;
            resumed = Some((state.done - first_epoch * per_epoch, state.loss_sum));
            it = state.done;
            curve = state.curve;
            last_loss = state.last_loss;
        }
        let mut order = BatchOrder::new(train.n, cfg.batch, cfg.seed, it)?;
        let mut plans: HashMap<Vec<usize>, SubModel> = HashMap::new();
        let [c, h, w] = base.plan.input();

        let evaluate = |params: &[Tensor<I<B>, 1>]| {
            let net = sub_net(params, &master_shapes, &base.shapes);
            let running = calibrate_bn(&net, &base.plan, train, &calib, cfg.batch, &device);
            let test_point = eval_split(&net, &base.plan, &running, test, &device);
            let val_point =
                (val.n > 0).then(|| eval_split(&net, &base.plan, &running, val, &device));
            (net, running, test_point, val_point)
        };

        let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
        let mut last = None;
        let mut threads = PoolFollower::default();
        for epoch in first_epoch..cfg.epochs {
            let augmenting = epoch < aug_epochs;
            let (steps_done, mut loss_sum) = match resumed.take() {
                Some((done, sum)) => (
                    done,
                    Some(Tensor::<I<B>, 1>::from_data(
                        TensorData::new(vec![sum], [1]),
                        &device,
                    )),
                ),
                None => (0, None),
            };
            // The sort opens an epoch; a continued epoch was sorted before it was saved.
            if augmenting && steps_done == 0 {
                let mut host = to_host(&params);
                let mut bufs = to_host(&sgd.buffers);
                sort_channels(&master_program, &mut host, &mut [&mut bufs])
                    .map_err(NnError::Invalid)?;
                params = to_device(&host, &device);
                sgd.buffers = to_device(&bufs, &device);
            }
            for _ in steps_done..per_epoch {
                // The step on the stage's current share of the cores.
                let step = threads.run(hooks.cpu_threads(), || {
                    gather_batch(train, order.next_batch(), None, &mut images, &mut targets);
                    let labels = targets.labels().unwrap_or_default();
                    let n = labels.len();
                    let x = Tensor::<B, 4>::from_data(
                        TensorData::new(std::mem::take(&mut images), [n, c, h, w]),
                        &device,
                    );
                    let y = Tensor::<B, 2>::from_data(
                        smoothed_targets(labels, classes, cfg.label_smoothing),
                        &device,
                    );
                    let leaves: Vec<Tensor<B, 1>> = params
                        .iter()
                        .map(|p| Tensor::from_inner(p.clone()).require_grad())
                        .collect();
                    let net = sub_net(&leaves, &master_shapes, &base.shapes);
                    let (logits, _) = net.forward(&base.plan, x.clone(), &BnMode::Batch);
                    let base_loss = soft_cross_entropy(logits, y.clone());
                    let mut loss = base_loss.clone();
                    if augmenting {
                        let widths = family.sample(&mut rng);
                        if !plans.contains_key(&widths) {
                            let sub = SubModel::new(&family.spec(&widths))?;
                            plans.insert(widths.clone(), sub);
                        }
                        let sub = &plans[&widths];
                        let net = sub_net(&leaves, &master_shapes, &sub.shapes);
                        let (logits, _) = net.forward(&sub.plan, x, &BnMode::Batch);
                        loss = loss + soft_cross_entropy(logits, y);
                    }
                    let grads = loss.backward();
                    let g: Vec<_> = leaves.iter().map(|t| t.grad(&grads)).collect();
                    let lr = lr_at(cfg.lr, &cfg.schedule, warmup, it, total);
                    sgd.step(&mut params, g, lr);
                    Ok::<_, NnError>(base_loss.inner())
                });
                let b = step?;
                it += 1;
                let sum = match loss_sum {
                    Some(s) => s + b,
                    None => b,
                };
                let directive = hooks.after_step(&Progress {
                    iteration: it,
                    total,
                    train_loss: last_loss,
                });
                if matches!(
                    directive,
                    Directive::Checkpoint | Directive::CheckpointAndStop
                ) {
                    hooks.checkpoint(&NetAugState {
                        done: it,
                        params: to_host(&params),
                        momentum: to_host(&sgd.buffers),
                        curve: curve.clone(),
                        loss_sum: sum.clone().into_scalar().elem::<f32>(),
                        last_loss,
                    })?;
                }
                if matches!(directive, Directive::Stop | Directive::CheckpointAndStop) {
                    return Err(NnError::Cancelled);
                }
                loss_sum = Some(sum);
            }
            let mean = loss_sum
                .map(|s| s.into_scalar().elem::<f64>() / per_epoch as f64)
                .unwrap_or(f64::NAN);
            if !mean.is_finite() {
                return Err(NnError::Diverged(format!(
                    "the mean training loss of epoch {} is {mean}",
                    epoch + 1
                )));
            }
            last_loss = mean;
            let done = epoch + 1;
            if done % cfg.eval_every_epochs.max(1) != 0 && done != cfg.epochs {
                continue;
            }
            let (net, running, (test_loss, test_acc), v) = evaluate(&params);
            last = Some((net, running));
            curve.push(EvalPoint {
                iteration: it,
                train_loss: mean,
                val_loss: v.map(|v| v.0),
                val_acc: v.map(|v| v.1),
                test_loss,
                test_acc,
                train_error: None,
            });
        }
        // The parameters have not changed since the last epoch's calibration (the last epoch
        // is always evaluated).
        let (net, running) = last.expect("at least one epoch");
        Ok(NetAugOutput {
            weights: from_net(&net, &running, &base_spec),
            curve,
            iterations: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Inputs, Targets};
    use crate::nn::arch::convnet::{ConvLayer, StridedConv};
    use crate::nn::init_weights;
    use crate::nn::{Mask, to_net};
    use burn::backend::flex::FlexDevice;
    use burn::backend::{Autodiff, Flex};

    type Ad = Autodiff<Flex>;

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// The reduced plan's tiny CNN at width `k` (k = 1: 4-8-16-16), on 8×8 inputs.
    fn tiny(k: usize) -> ConvnetSpec {
        ConvnetSpec {
            layers: vec![
                ConvLayer::Conv(4 * k),
                ConvLayer::Strided(StridedConv {
                    conv: 8 * k,
                    stride: 2,
                }),
                ConvLayer::Strided(StridedConv {
                    conv: 16 * k,
                    stride: 2,
                }),
                ConvLayer::Conv(16 * k),
            ],
            fc: vec![],
            classes: 10,
            input: [1, 8, 8],
            batch_norm: true,
            global_pool: true,
        }
    }

    fn batch<B: Backend<Device = FlexDevice>>(n: usize, seed: u64) -> Tensor<B, 4> {
        let mut rng = rng::stream(seed, Domain::Augment, 0);
        let v: Vec<f32> = (0..n * 64)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Tensor::from_data(TensorData::new(v, [n, 1, 8, 8]), &FlexDevice)
    }

    /// Master weights of the ×3 family with non-trivial batch-norm parameters.
    fn master(family: &WidthFamily) -> (ModelSpec, Vec<Vec<f32>>) {
        let spec = family.spec(&family.max_widths());
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 7);
        let mut rng = rng::stream(3, Domain::Batches, 0);
        for p in w.params.iter_mut().filter(|p| {
            matches!(
                p.role,
                crate::nn::program::ParamRole::BnWeight | crate::nn::program::ParamRole::BnBias
            )
        }) {
            for v in p.data.iter_mut() {
                *v = rng.random_range(0.5f32..1.5);
            }
        }
        (spec, w.params.into_iter().map(|p| p.data).collect())
    }

    #[test]
    fn tiny_cnn_has_the_plans_shape() {
        let s = ModelSpec::Convnet(tiny(1));
        // conv 1→4, 4→8, 8→16, 16→16 (3×3, no bias), BN, FC 16→10.
        assert_eq!(s.num_weights(), 9 * (4 + 32 + 128 + 256) + 160);
        assert_eq!(s.output_layer(), "fc1");
        let family = WidthFamily::new(&tiny(1), &[1.0, 2.0, 3.0]);
        assert_eq!(family.max_widths(), vec![12, 24, 48, 48]);
        assert_eq!(family.choices[0], vec![4, 8, 12]);
        // The new keys are not written at their defaults: old specs keep their JSON.
        let old = r#"{"arch":"convnet","layers":[8,"M"],"fc":[],"classes":10,"input":[1,28,28],"batch_norm":true}"#;
        let spec: ModelSpec = serde_json::from_str(old).unwrap();
        assert_eq!(serde_json::to_string(&spec).unwrap(), old);
        let new = serde_json::to_string(&s).unwrap();
        assert!(new.contains(r#"{"conv":8,"stride":2}"#) && new.contains(r#""global_pool":true"#));
        assert_eq!(serde_json::from_str::<ModelSpec>(&new).unwrap(), s);
    }

    #[test]
    fn prefix_indices_pick_the_leading_corner() {
        // [2, 3] out of [3, 4]: rows 0-1, columns 0-2.
        assert_eq!(prefix_indices(&[3, 4], &[2, 3]), vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(prefix_indices(&[5], &[2]), vec![0, 1]);
    }

    #[test]
    fn base_slice_computes_the_standalone_base_model() {
        let family = WidthFamily::new(&tiny(1), &[1.0, 2.0, 3.0]);
        let (mspec, mdata) = master(&family);
        let base_spec = family.spec(&family.base_widths());
        let (full, sub) = (param_shapes(&mspec), param_shapes(&base_spec));
        // The base model as its own weights: the leading corner of every master parameter.
        let mut base = init_weights(&base_spec, InitScheme::KaimingNormal, 0);
        for (p, (m, (f, s))) in base
            .params
            .iter_mut()
            .zip(mdata.iter().zip(full.iter().zip(&sub)))
        {
            p.data = prefix_indices(f, s).into_iter().map(|i| m[i]).collect();
        }
        let plan = Plan::new(&base_spec.program().unwrap());
        let alone: Net<Flex> =
            to_net(&base_spec, &base, &Mask::dense(&base_spec), &FlexDevice).unwrap();
        let master_t = to_device::<Flex>(&mdata, &FlexDevice);
        let sliced = sub_net(&master_t, &full, &sub);
        let x = batch::<Flex>(6, 1);
        let (a, sa) = alone.forward(&plan, x.clone(), &BnMode::Batch);
        let (b, sb) = sliced.forward(&plan, x, &BnMode::Batch);
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), 60);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-6, "{u} vs {v}");
        }
        assert_eq!(values(sa[3].mean.clone()), values(sb[3].mean.clone()));
    }

    #[test]
    fn gradients_land_only_in_the_sliced_channels() {
        let family = WidthFamily::new(&tiny(1), &[1.0, 2.0, 3.0]);
        let (mspec, mdata) = master(&family);
        let widths = vec![8, 8, 32, 16];
        let sub_spec = family.spec(&widths);
        let (full, sub) = (param_shapes(&mspec), param_shapes(&sub_spec));
        let leaves: Vec<Tensor<Ad, 1>> = to_device::<Flex>(&mdata, &FlexDevice)
            .into_iter()
            .map(|t| Tensor::from_inner(t).require_grad())
            .collect();
        let net = sub_net(&leaves, &full, &sub);
        let plan = Plan::new(&sub_spec.program().unwrap());
        let (logits, _) = net.forward(&plan, batch::<Ad>(5, 2), &BnMode::Batch);
        let y =
            Tensor::<Ad, 2>::from_data(smoothed_targets(&[0, 1, 2, 3, 4], 10, 0.1), &FlexDevice);
        let grads = soft_cross_entropy(logits, y).backward();
        for (i, leaf) in leaves.iter().enumerate() {
            let g = values(
                leaf.grad(&grads)
                    .expect("every master parameter gets a gradient"),
            );
            let inside: std::collections::HashSet<usize> =
                prefix_indices(&full[i], &sub[i]).into_iter().collect();
            assert_eq!(g.len(), full[i].iter().product::<usize>());
            for (j, v) in g.iter().enumerate() {
                if !inside.contains(&j) {
                    assert_eq!(*v, 0.0, "param {i} entry {j} is outside the slice");
                }
            }
            assert!(
                inside.iter().any(|&j| g[j] != 0.0),
                "param {i} got no gradient"
            );
        }
    }

    #[test]
    fn channel_sort_keeps_the_widest_models_function() {
        let family = WidthFamily::new(&tiny(1), &[1.0, 2.0, 3.0]);
        let (mspec, mut data) = master(&family);
        let program = mspec.program().unwrap();
        let plan = Plan::new(&program);
        let x = batch::<Flex>(4, 5);
        let logits = |d: &[Vec<f32>]| {
            let net = Net::<Flex> {
                params: to_device::<Flex>(d, &FlexDevice)
                    .into_iter()
                    .map(Param::from_tensor)
                    .collect(),
                masks: vec![None; d.len()],
            };
            values(net.forward(&plan, x.clone(), &BnMode::Batch).0)
        };
        let before = logits(&data);
        let mut momentum = data.clone();
        let perms = sort_channels(&program, &mut data, &mut [&mut momentum]).unwrap();
        assert_eq!(momentum, data, "the buffers get the same permutations");
        assert_eq!(perms.len(), 4);
        assert!(
            perms
                .iter()
                .all(|p| p.iter().enumerate().any(|(k, &o)| k != o))
        );
        let after = logits(&data);
        for (u, v) in before.iter().zip(&after) {
            assert!((u - v).abs() <= 1e-5, "{u} vs {v}");
        }
        // Sorted: the importance (the reader's L1 norm) now descends, and sorting again is
        // the identity.
        let shapes = param_shapes(&mspec);
        for g in channel_groups(&program).unwrap() {
            let n = reader_l1(&g, &shapes, &data);
            assert!(n.windows(2).all(|w| w[0] >= w[1]), "{n:?}");
        }
        let again = sort_channels(&program, &mut data, &mut []).unwrap();
        assert!(
            again
                .iter()
                .all(|p| p.iter().enumerate().all(|(k, &o)| k == o))
        );
    }

    #[test]
    fn bn_calibration_averages_the_batch_statistics() {
        // One conv whose kernels are 1 and 2 at the centre: BN sees the image and twice it.
        let spec = ConvnetSpec {
            layers: vec![ConvLayer::Conv(2)],
            fc: vec![],
            classes: 3,
            input: [1, 2, 2],
            batch_norm: true,
            global_pool: true,
        };
        let mspec = ModelSpec::Convnet(spec);
        let mut w = init_weights(&mspec, InitScheme::KaimingNormal, 1);
        let mut kernel = vec![0.0f32; 18];
        kernel[4] = 1.0;
        kernel[13] = 2.0;
        w.params[0].data = kernel;
        let images: Vec<f32> = (0..5 * 4)
            .map(|i| ((i * 37) % 11) as f32 * 0.25 - 1.0)
            .collect();
        let split = Split::new(
            Inputs::f32(images.clone(), [1, 2, 2]),
            Targets::classes(vec![0, 1, 2, 0, 1], 3),
        )
        .unwrap();
        let net: Net<Flex> = to_net(&mspec, &w, &Mask::dense(&mspec), &FlexDevice).unwrap();
        let plan = Plan::new(&mspec.program().unwrap());
        // Samples 0, 2, 3 in batches of 2: {0, 2} then {3}.
        let got: Vec<Vec<f32>> = calibrate_bn(&net, &plan, &split, &[0, 2, 3], 2, &FlexDevice)
            .into_iter()
            .map(values)
            .collect();
        let stats = |samples: &[usize]| {
            let v: Vec<f64> = samples
                .iter()
                .flat_map(|&s| images[s * 4..s * 4 + 4].iter().map(|&x| x as f64))
                .collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var)
        };
        let (m1, v1) = stats(&[0, 2]);
        let (m2, v2) = stats(&[3]);
        let mean = (2.0 * m1 + m2) / 3.0;
        let var = (2.0 * v1 + v2) / 3.0;
        let want = [vec![mean, 2.0 * mean], vec![var, 4.0 * var]];
        assert_eq!(got.len(), 2);
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((*a as f64 - b).abs() <= 1e-6, "{g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn label_smoothing_and_nesterov_sgd_by_hand() {
        let t = smoothed_targets(&[1], 4, 0.2).to_vec::<f32>().unwrap();
        assert_eq!(t, vec![0.05, 0.85, 0.05, 0.05]);
        // Two steps on p = [1, 2] with gradient [1, -1]: weight decay 0.1, momentum 0.5.
        let dev = FlexDevice;
        let mut p = vec![Tensor::<Flex, 1>::from_data([1.0f32, 2.0], &dev)];
        let mut sgd = Sgd::<Flex> {
            momentum: 0.5,
            nesterov: true,
            weight_decay: 0.1,
            decay: vec![true],
            buffers: vec![Tensor::zeros([2], &dev)],
        };
        let g = || vec![Some(Tensor::<Flex, 1>::from_data([1.0f32, -1.0], &dev))];
        sgd.step(&mut p, g(), 0.1);
        // d = [1.1, -0.8], buf = d, p -= 0.1·(d + 0.5·buf) = 0.1·1.5·d.
        let after1 = [1.0 - 0.165, 2.0 + 0.12];
        for (a, b) in values(p[0].clone()).iter().zip(after1) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        sgd.step(&mut p, g(), 0.1);
        let d = [1.0 + 0.1 * after1[0], -1.0 + 0.1 * after1[1]];
        let buf = [0.5 * 1.1 + d[0], 0.5 * -0.8 + d[1]];
        let want = [
            after1[0] - 0.1 * (d[0] + 0.5 * buf[0]),
            after1[1] - 0.1 * (d[1] + 0.5 * buf[1]),
        ];
        for (a, b) in values(p[0].clone()).iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
    }
}
