//! One Adam step of a parameter on the CPU, in one pass over `f32` buffers.
//!
//! burn's `Adam` runs a step as about a dozen whole-tensor operations (moments, squares,
//! bias corrections, square root, division, learning rate, subtraction), each a pass over
//! memory with its own allocation: on LeNet-300-100 they were a quarter of a training step.
//! Here every element goes through the same `f32` operations in the same order, so the
//! results are burn's bit for bit (a test checks it), in one pass.

use burn::backend::Flex;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::AdamStep;
use super::raw::{self, Dense};

/// Elements a thread takes at a time.
const CHUNK: usize = 1 << 14;

/// The step's scalars, as burn computes them.
#[derive(Clone, Copy)]
struct Scalars {
    b1: f32,
    b2: f32,
    /// `1 − β₁`, `1 − β₂`.
    f1: f32,
    f2: f32,
    /// `√(1 − β₂ᵗ) / (1 − β₁ᵗ)`.
    combined: f32,
    /// `ε·√(1 − β₂ᵗ)`.
    eps: f32,
    lr: f32,
    penalty: f32,
}

/// New parameter and moments from the parameter `p`, its gradient `g` and the moments before
/// this step (`None` before the first).
fn step(
    p: &[f32],
    g: &[f32],
    moments: Option<(&[f32], &[f32])>,
    c: &AdamStep,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = p.len();
    let t = i32::try_from(c.time).unwrap_or(i32::MAX);
    let bc2_sqrt = (1.0 - c.beta_2.powi(t)).sqrt();
    let k = Scalars {
        b1: c.beta_1,
        b2: c.beta_2,
        f1: 1.0 - c.beta_1,
        f2: 1.0 - c.beta_2,
        combined: bc2_sqrt / (1.0 - c.beta_1.powi(t)),
        eps: c.epsilon * bc2_sqrt,
        lr: c.lr as f32,
        penalty: c.weight_decay.unwrap_or(0.0),
    };
    // Before the first step there are no moments: `g` stands in, unread.
    let (m1, m2) = moments.unwrap_or((g, g));
    let (mut p_new, mut m1_new, mut m2_new) = (raw::zeros(n), raw::zeros(n), raw::zeros(n));
    p_new
        .par_chunks_mut(CHUNK)
        .zip(m1_new.par_chunks_mut(CHUNK))
        .zip(m2_new.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, ((po, m1o), m2o))| {
            let r = i * CHUNK..i * CHUNK + po.len();
            let ins = [&p[r.clone()], &g[r.clone()], &m1[r.clone()], &m2[r]];
            let outs = [po, m1o, m2o];
            // One loop per case, so that none branches per element (and it vectorises).
            match (c.weight_decay.is_some(), moments.is_some()) {
                (true, true) => lanes::<true, true>(&k, ins, outs),
                (true, false) => lanes::<true, false>(&k, ins, outs),
                (false, true) => lanes::<false, true>(&k, ins, outs),
                (false, false) => lanes::<false, false>(&k, ins, outs),
            }
        });
    (p_new, m1_new, m2_new)
}

/// The step of one chunk: `[p, g, m1, m2]` in, `[p, m1, m2]` out; `DECAY`: add the penalty
/// to the gradient, `MOMENTS`: the moments before are `m1`, `m2` (else zero).
#[inline(always)]
fn lanes<const DECAY: bool, const MOMENTS: bool>(
    k: &Scalars,
    [p, g, m1, m2]: [&[f32]; 4],
    [po, m1o, m2o]: [&mut [f32]; 3],
) {
    let n = po.len();
    let (p, g, m1, m2) = (&p[..n], &g[..n], &m1[..n], &m2[..n]);
    let (m1o, m2o) = (&mut m1o[..n], &mut m2o[..n]);
    let k = *k;
    for j in 0..n {
        // burn's `WeightDecay::transform`: `p·λ + g`.
        let g = if DECAY { p[j] * k.penalty + g[j] } else { g[j] };
        let (a, b) = if MOMENTS {
            (m1[j] * k.b1 + g * k.f1, m2[j] * k.b2 + g * g * k.f2)
        } else {
            (g * k.f1, g * g * k.f2)
        };
        let update = a * k.combined / (b.sqrt() + k.eps);
        po[j] = p[j] - update * k.lr;
        m1o[j] = a;
        m2o[j] = b;
    }
}

/// Flex's Adam step; burn's operations for element types other than `f32`.
pub(crate) fn flex<const D: usize>(
    param: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    moments: Option<(Tensor<Flex, D>, Tensor<Flex, D>)>,
    c: &AdamStep,
) -> (Tensor<Flex, D>, Tensor<Flex, D>, Tensor<Flex, D>) {
    let pp = raw::primitive(param.clone());
    let gp = raw::primitive(grad.clone());
    let mp = moments
        .as_ref()
        .map(|(m1, m2)| (raw::primitive(m1.clone()), raw::primitive(m2.clone())));
    let all_f32 = raw::is_f32(&pp)
        && raw::is_f32(&gp)
        && mp
            .as_ref()
            .is_none_or(|(m1, m2)| raw::is_f32(m1) && raw::is_f32(m2));
    if !all_f32 || param.dims() != grad.dims() {
        return super::reference::adam_step(param, grad, moments, c);
    }
    let (p, g) = (Dense::new(&pp), Dense::new(&gp));
    let m = mp.as_ref().map(|(m1, m2)| (Dense::new(m1), Dense::new(m2)));
    let (p_new, m1, m2) = step(
        p.f32s(),
        g.f32s(),
        m.as_ref().map(|(m1, m2)| (m1.f32s(), m2.f32s())),
        c,
    );
    let like = |v| raw::tensor(raw::from_vec_like(v, &pp));
    (like(p_new), like(m1), like(m2))
}
