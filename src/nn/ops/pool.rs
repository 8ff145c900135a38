//! Pooling on the CPU — max (square window, with the position of each maximum kept for the
//! backward pass), average (padding counted in the divisor, as PyTorch's default) and global
//! average — over `f32` buffers in NCHW order, and its registration with Flex and
//! `Autodiff<Flex>`.
//!
//! Every kernel works one channel plane at a time, planes in parallel. Within a plane the
//! gradient is scattered in output order, so overlapping windows add up in the same order
//! with any number of threads. (Flex's max-pool backward scatters the whole batch on one
//! thread.)

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::raw::{self, Dense, valid_range};

/// Shapes of one pooling with a `k`×`k` window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub o_h: usize,
    pub o_w: usize,
}

impl PoolDims {
    pub(crate) fn new(x: [usize; 4], k: usize, stride: usize, pad: usize) -> Self {
        let [n, c, h, w] = x;
        assert!(
            k > 0 && stride > 0 && 2 * pad <= k && h + 2 * pad >= k && w + 2 * pad >= k,
            "pool2d: input {x:?} does not fit kernel {k}, stride {stride}, padding {pad}"
        );
        PoolDims {
            n,
            c,
            h,
            w,
            k,
            stride,
            pad,
            o_h: (h + 2 * pad - k) / stride + 1,
            o_w: (w + 2 * pad - k) / stride + 1,
        }
    }

    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn p(&self) -> usize {
        self.o_h * self.o_w
    }
    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.o_h, self.o_w]
    }
    /// Window taps `(first, end)` inside the input along one axis, for output position `o`.
    fn taps(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let first = self.pad.saturating_sub(start);
        let end = (len + self.pad - start).min(self.k);
        (first, end.max(first))
    }
}

/// No maximum: a window wholly in the padding (never the case for `2·pad ≤ k`).
const NO_INDEX: u32 = u32::MAX;

/// Max pooling: outputs and, per output, the plane offset of the first maximum in the window
/// (row-major), as burn's and PyTorch's kernels choose it.
pub(crate) fn max_forward(x: &[f32], d: &PoolDims) -> (Vec<f32>, Vec<u32>) {
    let (p, hw) = (d.p(), d.hw());
    let mut y = raw::zeros(d.n * d.c * p);
    let mut idx = vec![NO_INDEX; y.len()];
    if p == 0 {
        return (y, idx);
    }
    y.par_chunks_mut(p)
        .zip(idx.par_chunks_mut(p))
        .enumerate()
        .for_each(|(plane, (y, idx))| {
            let x = &x[plane * hw..][..hw];
            for oy in 0..d.o_h {
                let (ky0, ky1) = d.taps(oy, d.h);
                for ox in 0..d.o_w {
                    let (kx0, kx1) = d.taps(ox, d.w);
                    let (mut best, mut at) = (f32::NEG_INFINITY, NO_INDEX);
                    for ky in ky0..ky1 {
                        let iy = oy * d.stride + ky - d.pad;
                        for kx in kx0..kx1 {
                            let i = iy * d.w + ox * d.stride + kx - d.pad;
                            if at == NO_INDEX || x[i] > best {
                                (best, at) = (x[i], i as u32);
                            }
                        }
                    }
                    y[oy * d.o_w + ox] = best;
                    idx[oy * d.o_w + ox] = at;
                }
            }
        });
    (y, idx)
}

pub(crate) fn max_backward(dy: &[f32], idx: &[u32], d: &PoolDims) -> Vec<f32> {
    let (p, hw) = (d.p(), d.hw());
    let mut dx = raw::zeros(d.n * d.c * hw);
    if hw == 0 {
        return dx;
    }
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dx)| {
        let (dy, idx) = (&dy[plane * p..][..p], &idx[plane * p..][..p]);
        for (&g, &i) in dy.iter().zip(idx) {
            if i != NO_INDEX {
                dx[i as usize] += g;
            }
        }
    });
    dx
}

/// Average pooling, padding included in the divisor `k²`.
pub(crate) fn avg_forward(x: &[f32], d: &PoolDims) -> Vec<f32> {
    let (p, hw) = (d.p(), d.hw());
    let mut y = raw::zeros(d.n * d.c * p);
    if p == 0 {
        return y;
    }
    let scale = 1.0 / (d.k * d.k) as f32;
    y.par_chunks_mut(p).enumerate().for_each(|(plane, y)| {
        let x = &x[plane * hw..][..hw];
        for oy in 0..d.o_h {
            let (ky0, ky1) = d.taps(oy, d.h);
            for ox in 0..d.o_w {
                let (kx0, kx1) = d.taps(ox, d.w);
                let mut total = 0f32;
                for ky in ky0..ky1 {
                    let row = (oy * d.stride + ky - d.pad) * d.w + ox * d.stride;
                    total += x[row + kx0 - d.pad..row + kx1 - d.pad].iter().sum::<f32>();
                }
                y[oy * d.o_w + ox] = total * scale;
            }
        }
    });
    y
}

pub(crate) fn avg_backward(dy: &[f32], d: &PoolDims) -> Vec<f32> {
    let (p, hw) = (d.p(), d.hw());
    let mut dx = raw::zeros(d.n * d.c * hw);
    if hw == 0 {
        return dx;
    }
    let scale = 1.0 / (d.k * d.k) as f32;
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dx)| {
        let dy = &dy[plane * p..][..p];
        for ky in 0..d.k {
            let (y_lo, y_hi) = valid_range(ky, d.pad, d.stride, d.h, d.o_h);
            for kx in 0..d.k {
                let (x_lo, x_hi) = valid_range(kx, d.pad, d.stride, d.w, d.o_w);
                for oy in y_lo..y_hi {
                    let row = (oy * d.stride + ky - d.pad) * d.w;
                    for ox in x_lo..x_hi {
                        dx[row + ox * d.stride + kx - d.pad] += dy[oy * d.o_w + ox] * scale;
                    }
                }
            }
        }
    });
    dx
}

/// Mean of each of the `rows` rows of `hw` elements.
pub(crate) fn global_avg_forward(x: &[f32], rows: usize, hw: usize) -> Vec<f32> {
    (0..rows)
        .into_par_iter()
        .map(|r| (raw::sum(&x[r * hw..][..hw]) / hw as f64) as f32)
        .collect()
}

pub(crate) fn global_avg_backward(dy: &[f32], hw: usize) -> Vec<f32> {
    let mut dx = raw::zeros(dy.len() * hw);
    if hw == 0 {
        return dx;
    }
    let scale = 1.0 / hw as f32;
    dx.par_chunks_mut(hw)
        .zip(dy.par_iter())
        .for_each(|(row, &g)| row.fill(g * scale));
    dx
}

// ---- burn registration ----

/// Which pooling an op is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Max,
    Avg,
}

fn flex_prim(x: &FlexTensor, kind: Kind, d: &PoolDims) -> (FlexTensor, Option<Arc<Vec<u32>>>) {
    let xs = Dense::new(x);
    match kind {
        Kind::Max => {
            let (y, idx) = max_forward(xs.f32s(), d);
            (raw::from_vec(y, &d.out_shape()), Some(Arc::new(idx)))
        }
        Kind::Avg => (
            raw::from_vec(avg_forward(xs.f32s(), d), &d.out_shape()),
            None,
        ),
    }
}

fn reference<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 4>,
    kind: Kind,
    k: usize,
    stride: usize,
    pad: usize,
) -> Tensor<B, 4> {
    match kind {
        Kind::Max => super::reference::max_pool2d(x, k, stride, pad),
        Kind::Avg => super::reference::avg_pool2d(x, k, stride, pad),
    }
}

pub(crate) fn flex(
    x: Tensor<Flex, 4>,
    kind: Kind,
    k: usize,
    stride: usize,
    pad: usize,
) -> Tensor<Flex, 4> {
    let xp = raw::primitive(x.clone());
    if !raw::is_f32(&xp) {
        return reference(x, kind, k, stride, pad);
    }
    let d = PoolDims::new(raw::dims4(&xp), k, stride, pad);
    raw::tensor(flex_prim(&xp, kind, &d).0)
}

pub(crate) fn flex_global_avg(x: Tensor<Flex, 4>) -> Tensor<Flex, 2> {
    let xp = raw::primitive(x.clone());
    if !raw::is_f32(&xp) {
        return super::reference::global_avg_pool(x);
    }
    let [n, c, h, w] = raw::dims4(&xp);
    let y = global_avg_forward(Dense::new(&xp).f32s(), n * c, h * w);
    raw::tensor(raw::from_vec(y, &[n, c]))
}

type Ad = Autodiff<Flex>;

#[derive(Clone, Debug)]
struct PoolState {
    dims: PoolDims,
    /// Max pooling's positions of the maxima.
    idx: Option<Arc<Vec<u32>>>,
}

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = PoolState;

    fn backward(self, ops: Ops<PoolState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Dense::new(&grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let d = &ops.state.dims;
        let dx = match &ops.state.idx {
            Some(idx) => max_backward(dy.f32s(), idx, d),
            None => avg_backward(dy.f32s(), d),
        };
        grads.register::<Flex>(parent.id, raw::from_vec(dx, &[d.n, d.c, d.h, d.w]));
    }
}

pub(crate) fn autodiff(
    x: Tensor<Ad, 4>,
    kind: Kind,
    k: usize,
    stride: usize,
    pad: usize,
) -> Tensor<Ad, 4> {
    let xa = x.clone().into_primitive().tensor();
    if !raw::is_f32(&xa.primitive) {
        return reference(x, kind, k, stride, pad);
    }
    let dims = PoolDims::new(raw::dims4(&xa.primitive), k, stride, pad);
    let (y, idx) = flex_prim(&xa.primitive, kind, &dims);
    let y = match PoolBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(PoolState { dims, idx }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

#[derive(Debug)]
struct GlobalAvgBackward;

impl Backward<Flex, 1> for GlobalAvgBackward {
    /// `[n, c, h, w]` of the input.
    type State = [usize; 4];

    fn backward(self, ops: Ops<[usize; 4], 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Dense::new(&grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let [_, _, h, w] = ops.state;
        let dx = global_avg_backward(dy.f32s(), h * w);
        grads.register::<Flex>(parent.id, raw::from_vec(dx, &ops.state));
    }
}

pub(crate) fn autodiff_global_avg(x: Tensor<Ad, 4>) -> Tensor<Ad, 2> {
    let xa = x.clone().into_primitive().tensor();
    if !raw::is_f32(&xa.primitive) {
        return super::reference::global_avg_pool(x);
    }
    let dims = raw::dims4(&xa.primitive);
    let [n, c, h, w] = dims;
    let y = global_avg_forward(Dense::new(&xa.primitive).f32s(), n * c, h * w);
    let y = raw::from_vec(y, &[n, c]);
    let y = match GlobalAvgBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(dims, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}
