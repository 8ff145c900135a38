//! 2-D batch norm on the CPU (training mode with batch statistics, evaluation mode with given
//! statistics) over `f32` buffers in NCHW order, and its registration with Flex and
//! `Autodiff<Flex>`.
//!
//! Everything runs on the `[n·c, h·w]` view: a channel's statistics are sums over its `n`
//! rows, and the normalisation is one scale and shift per row. (burn's generic version
//! broadcasts `[1, c, 1, 1]` operands against `[n, c, h, w]`, which Flex runs as a scalar loop
//! on one thread.) Row sums use fixed lanes and are added in row order in `f64`, so the
//! statistics have the same bits with any number of threads.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::BatchNormTrain;
use super::raw::{self, Dense, LaneSum};

/// `[n, c, h·w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BnDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnDims {
    fn of(x: &FlexTensor) -> Self {
        let [n, c, h, w] = raw::dims4(x);
        BnDims { n, c, hw: h * w }
    }

    /// Row `r` (image `r / c`, channel `r % c`) of `t`.
    fn row<'a>(&self, t: &'a [f32], r: usize) -> &'a [f32] {
        &t[r * self.hw..][..self.hw]
    }

    /// Elements per channel.
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// Per channel, the sum that `f(sum, row)` adds each of the channel's rows to, rows taken in
/// batch order.
fn per_channel(d: &BnDims, f: impl Fn(&mut LaneSum, usize) + Sync) -> Vec<f64> {
    (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = LaneSum::new();
            (0..d.n).for_each(|i| f(&mut acc, i * d.c + ch));
            acc.total()
        })
        .collect()
}

/// Two sums per channel, as [`per_channel`] makes one, from one pass over the rows.
fn per_channel_pair(
    d: &BnDims,
    f: impl Fn([&mut LaneSum; 2], usize) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let (mut a, mut b) = (LaneSum::new(), LaneSum::new());
            (0..d.n).for_each(|i| f([&mut a, &mut b], i * d.c + ch));
            (a.total(), b.total())
        })
        .unzip()
}

/// `out[i] = f(a[i], b[i])` with `f = per_channel(channel of i)`, rows in parallel.
fn per_row<F: Fn(f32, f32) -> f32>(
    a: &[f32],
    b: &[f32],
    d: &BnDims,
    per_channel: impl Fn(usize) -> F + Sync,
) -> Vec<f32> {
    raw::par_zip_map(a, b, d.hw, |row| per_channel(row % d.c))
}

/// Training-mode output and what its backward pass needs.
pub(crate) struct TrainOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

pub(crate) fn train_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: &BnDims,
    eps: f64,
) -> TrainOut {
    let row = |r: usize| &x[r * d.hw..][..d.hw];
    let mean: Vec<f32> = per_channel(d, |s, r| s.add(row(r), row(r), |x, _| x))
        .into_iter()
        .map(|s| (s / d.count()) as f32)
        .collect();
    let var64: Vec<f64> = per_channel(d, |s, r| {
        let m = mean[r % d.c];
        s.add(row(r), row(r), |x, _| (x - m) * (x - m));
    })
    .into_iter()
    .map(|s| s / d.count())
    .collect();
    let inv_std: Vec<f32> = var64
        .iter()
        .map(|v| (1.0 / (v + eps).sqrt()) as f32)
        .collect();
    let var = var64.iter().map(|&v| v as f32).collect();
    let y = per_row(x, x, d, |ch| {
        let (m, a, b) = (mean[ch], gamma[ch] * inv_std[ch], beta[ch]);
        move |v, _| (v - m) * a + b
    });
    TrainOut {
        y,
        mean,
        var,
        inv_std,
    }
}

/// Gradients of the training-mode batch norm: `dx` (when `need_x`), `dgamma`, `dbeta`.
pub(crate) fn train_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    d: &BnDims,
    need_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let row = |t, r| d.row(t, r);
    // Both sums in one pass over `dy` (each added in the same order as alone).
    let (sum_dy, sum_dy_xc) = per_channel_pair(d, |[s, t], r| {
        let m = mean[r % d.c];
        s.add(row(dy, r), row(dy, r), |g, _| g);
        t.add(row(dy, r), row(x, r), |g, v| g * (v - m));
    });
    let dgamma = (0..d.c)
        .map(|ch| (sum_dy_xc[ch] * f64::from(inv_std[ch])) as f32)
        .collect();
    let dbeta = sum_dy.iter().map(|&s| s as f32).collect();
    let dx = need_x.then(|| {
        // dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂)) = k1·dy + k2·(x − μ) + k3
        let k: Vec<[f32; 3]> = (0..d.c)
            .map(|ch| {
                let (g, s) = (f64::from(gamma[ch]), f64::from(inv_std[ch]));
                [
                    (g * s) as f32,
                    (-g * s * s * s * sum_dy_xc[ch] / d.count()) as f32,
                    (-g * s * sum_dy[ch] / d.count()) as f32,
                ]
            })
            .collect();
        per_row(dy, x, d, |ch| {
            let ([k1, k2, k3], m) = (k[ch], mean[ch]);
            move |g, v| k1 * g + (k2 * (v - m) + k3)
        })
    });
    (dx, dgamma, dbeta)
}

/// `1/√(var + ε)` per channel.
fn inv_std_of(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
        .collect()
}

pub(crate) fn eval_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    d: &BnDims,
    eps: f64,
) -> Vec<f32> {
    let inv_std = inv_std_of(var, eps);
    per_row(x, x, d, |ch| {
        let (m, a, b) = (mean[ch], gamma[ch] * inv_std[ch], beta[ch]);
        move |v, _| (v - m) * a + b
    })
}

/// Gradients of the evaluation-mode batch norm, each only when asked for:
/// `[dx, dgamma, dbeta, dmean, dvar]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    d: &BnDims,
    eps: f64,
    need: [bool; 5],
) -> [Option<Vec<f32>>; 5] {
    let inv_std = inv_std_of(var, eps);
    let row = |t, r| d.row(t, r);
    let sums = need[1..].iter().any(|&b| b);
    let sum_dy = if sums {
        per_channel(d, |s, r| s.add(row(dy, r), row(dy, r), |g, _| g))
    } else {
        Vec::new()
    };
    let sum_dy_xc = if need[1] || need[4] {
        per_channel(d, |s, r| {
            let m = mean[r % d.c];
            s.add(row(dy, r), row(x, r), |g, v| g * (v - m));
        })
    } else {
        Vec::new()
    };
    let per_c = |f: &dyn Fn(usize) -> f64| (0..d.c).map(|ch| f(ch) as f32).collect::<Vec<_>>();
    let dx = need[0].then(|| {
        per_row(dy, dy, d, |ch| {
            let a = gamma[ch] * inv_std[ch];
            move |g, _| a * g
        })
    });
    let s = |ch: usize| f64::from(inv_std[ch]);
    let g = |ch: usize| f64::from(gamma[ch]);
    [
        dx,
        need[1].then(|| per_c(&|ch| sum_dy_xc[ch] * s(ch))),
        need[2].then(|| per_c(&|ch| sum_dy[ch])),
        need[3].then(|| per_c(&|ch| -g(ch) * s(ch) * sum_dy[ch])),
        need[4].then(|| per_c(&|ch| -0.5 * g(ch) * s(ch).powi(3) * sum_dy_xc[ch])),
    ]
}

// ---- burn registration ----

fn all_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| raw::is_f32(t))
}

/// Flex's training-mode batch norm; `None` for element types the kernel does not handle.
fn flex_train_parts(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> Option<(FlexTensor, TrainOut, BnDims)> {
    if !all_f32(&[x, gamma, beta]) {
        return None;
    }
    let d = BnDims::of(x);
    let (xs, gs, bs) = (Dense::new(x), Dense::new(gamma), Dense::new(beta));
    let mut out = train_forward(xs.f32s(), gs.f32s(), bs.f32s(), &d, eps);
    let y = raw::from_vec(std::mem::take(&mut out.y), &raw::dims4(x));
    Some((y, out, d))
}

pub(crate) fn flex_train(
    x: Tensor<Flex, 4>,
    gamma: Tensor<Flex, 1>,
    beta: Tensor<Flex, 1>,
    eps: f64,
) -> BatchNormTrain<Flex> {
    let (xp, gp, bp) = (
        raw::primitive(x.clone()),
        raw::primitive(gamma.clone()),
        raw::primitive(beta.clone()),
    );
    match flex_train_parts(&xp, &gp, &bp, eps) {
        Some((y, out, d)) => BatchNormTrain {
            output: raw::tensor(y),
            mean: raw::tensor(raw::from_vec(out.mean, &[d.c])),
            var: raw::tensor(raw::from_vec(out.var, &[d.c])),
        },
        None => super::reference::batch_norm_train(x, gamma, beta, eps),
    }
}

fn flex_eval_prim(ts: [&FlexTensor; 5], eps: f64) -> Option<FlexTensor> {
    if !all_f32(&ts) {
        return None;
    }
    let d = BnDims::of(ts[0]);
    let [x, g, b, m, v] = ts.map(Dense::new);
    let y = eval_forward(x.f32s(), g.f32s(), b.f32s(), m.f32s(), v.f32s(), &d, eps);
    Some(raw::from_vec(y, &raw::dims4(ts[0])))
}

pub(crate) fn flex_eval(
    x: Tensor<Flex, 4>,
    gamma: Tensor<Flex, 1>,
    beta: Tensor<Flex, 1>,
    mean: Tensor<Flex, 1>,
    var: Tensor<Flex, 1>,
    eps: f64,
) -> Tensor<Flex, 4> {
    let xp = raw::primitive(x.clone());
    let others = [&gamma, &beta, &mean, &var].map(|t| raw::primitive(t.clone()));
    let [gp, bp, mp, vp] = &others;
    match flex_eval_prim([&xp, gp, bp, mp, vp], eps) {
        Some(y) => raw::tensor(y),
        None => super::reference::batch_norm_eval(x, gamma, beta, mean, var, eps),
    }
}

type Ad = Autodiff<Flex>;

#[derive(Clone, Debug)]
struct TrainState {
    x: FlexTensor,
    gamma: FlexTensor,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    dims: BnDims,
}

#[derive(Debug)]
struct TrainBackward;

impl Backward<Flex, 3> for TrainBackward {
    type State = TrainState;

    fn backward(self, ops: Ops<TrainState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Dense::new(&grads.consume::<Flex>(&ops.node));
        let [px, pg, pb]: [Option<NodeId>; 3] = ops.parents.map(|p| p.map(|n| n.id));
        let s = ops.state;
        let (x, gamma) = (Dense::new(&s.x), Dense::new(&s.gamma));
        let d = &s.dims;
        let (dx, dgamma, dbeta) = train_backward(
            dy.f32s(),
            x.f32s(),
            gamma.f32s(),
            &s.mean,
            &s.inv_std,
            d,
            px.is_some(),
        );
        if let (Some(id), Some(dx)) = (px, dx) {
            grads.register::<Flex>(id, raw::from_vec_like(dx, &s.x));
        }
        if let Some(id) = pg {
            grads.register::<Flex>(id, raw::from_vec(dgamma, &[d.c]));
        }
        if let Some(id) = pb {
            grads.register::<Flex>(id, raw::from_vec(dbeta, &[d.c]));
        }
    }
}

fn ad<const D: usize>(t: &Tensor<Ad, D>) -> burn::tensor::ops::FloatTensor<Ad> {
    t.clone().into_primitive().tensor()
}

/// The batch statistics are returned as constants: the running statistics they feed take no
/// gradient.
pub(crate) fn autodiff_train(
    x: Tensor<Ad, 4>,
    gamma: Tensor<Ad, 1>,
    beta: Tensor<Ad, 1>,
    eps: f64,
) -> BatchNormTrain<Ad> {
    let (xa, ga, ba) = (ad(&x), ad(&gamma), ad(&beta));
    let Some((y, out, d)) = flex_train_parts(&xa.primitive, &ga.primitive, &ba.primitive, eps)
    else {
        return super::reference::batch_norm_train(x, gamma, beta, eps);
    };
    let mean = Tensor::from_inner(raw::tensor(raw::from_vec(out.mean.clone(), &[d.c])));
    let var = Tensor::from_inner(raw::tensor(raw::from_vec(out.var, &[d.c])));
    let y = match TrainBackward
        .prepare::<NoCheckpointing>([xa.node.clone(), ga.node.clone(), ba.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            TrainState {
                x: xa.primitive.clone(),
                gamma: ga.primitive.clone(),
                mean: out.mean,
                inv_std: out.inv_std,
                dims: d,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    BatchNormTrain {
        output: Tensor::from_primitive(TensorPrimitive::Float(y)),
        mean,
        var,
    }
}

#[derive(Clone, Debug)]
struct EvalState {
    /// x, gamma, beta, mean, var.
    inputs: [FlexTensor; 5],
    eps: f64,
}

#[derive(Debug)]
struct EvalBackward;

impl Backward<Flex, 5> for EvalBackward {
    type State = EvalState;

    fn backward(self, ops: Ops<EvalState, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Dense::new(&grads.consume::<Flex>(&ops.node));
        let ids: [Option<NodeId>; 5] = ops.parents.map(|p| p.map(|n| n.id));
        let EvalState { inputs, eps } = ops.state;
        let d = BnDims::of(&inputs[0]);
        let [x, g, _, m, v] = inputs.each_ref().map(Dense::new);
        let need = ids.map(|id| id.is_some());
        let out = eval_backward(
            dy.f32s(),
            x.f32s(),
            g.f32s(),
            m.f32s(),
            v.f32s(),
            &d,
            eps,
            need,
        );
        for (i, (id, grad)) in ids.into_iter().zip(out).enumerate() {
            if let (Some(id), Some(grad)) = (id, grad) {
                grads.register::<Flex>(id, raw::from_vec_like(grad, &inputs[i]));
            }
        }
    }
}

pub(crate) fn autodiff_eval(
    x: Tensor<Ad, 4>,
    gamma: Tensor<Ad, 1>,
    beta: Tensor<Ad, 1>,
    mean: Tensor<Ad, 1>,
    var: Tensor<Ad, 1>,
    eps: f64,
) -> Tensor<Ad, 4> {
    let ts = [ad(&x), ad(&gamma), ad(&beta), ad(&mean), ad(&var)];
    let prims = ts.each_ref().map(|t| &t.primitive);
    let Some(y) = flex_eval_prim(prims, eps) else {
        return super::reference::batch_norm_eval(x, gamma, beta, mean, var, eps);
    };
    let y = match EvalBackward
        .prepare::<NoCheckpointing>(ts.each_ref().map(|t| t.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            EvalState {
                inputs: ts.each_ref().map(|t| t.primitive.clone()),
                eps,
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}
