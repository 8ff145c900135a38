//! ReLU6 (`min(max(x, 0), 6)`, MobileNetV2's activation) on the CPU over `f32` buffers, and
//! its registration with Flex and `Autodiff<Flex>`.
//!
//! burn has no ReLU6: `clamp(0, 6)` on `Autodiff<Flex>` runs as a `clamp_max` and a
//! `clamp_min`, each a comparison into a boolean mask and a masked fill, and its backward pass
//! is two more masked fills: six passes over an activation-sized tensor where one forward and
//! one backward pass suffice (on MobileNetV2-tiny they were 15% of a training step).
//!
//! The gradient follows PyTorch's `hardtanh_backward`: it flows where `0 < x < 6` and is zero
//! elsewhere, boundaries included. That is decided from the output (`0 < y < 6` exactly when
//! `0 < x < 6`), so the backward pass keeps the output, which the next layer holds anyway,
//! rather than another activation-sized input. (burn's `clamp` lets it through at exactly 0
//! and 6.)

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorPrimitive};

use super::raw::{self, Dense};

/// The upper bound of ReLU6.
pub(crate) const SIX: f32 = 6.0;

/// Elements a thread takes at a time: large enough to amortise the scheduling, small enough
/// to split a 4-image batch of 8×8 planes.
const CHUNK: usize = 1 << 14;

/// `min(max(x, 0), 6)`; NaN stays NaN, as in burn's `clamp`. (Written as two selects, which
/// compile to vector min/max: an `if … else if` chain compiled to branches that mispredict on
/// every other element, and MobileNetV2-tiny's step was then slower than with burn's six passes.)
fn relu6(x: f32) -> f32 {
    let x = if x < 0.0 { 0.0 } else { x };
    if x > SIX { SIX } else { x }
}

pub(crate) fn relu6_forward(x: &[f32]) -> Vec<f32> {
    raw::par_zip_map(x, x, CHUNK, |_| |v, _| relu6(v))
}

/// `dx` from the forward pass's output `y` and the output gradient `dy`.
pub(crate) fn relu6_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    raw::par_zip_map(y, dy, CHUNK, |_| {
        |y, g| if (y > 0.0) & (y < SIX) { g } else { 0.0 }
    })
}

fn flex_prim(x: &FlexTensor) -> FlexTensor {
    raw::from_vec_like(relu6_forward(Dense::new(x).f32s()), x)
}

pub(crate) fn flex<const D: usize>(x: Tensor<Flex, D>) -> Tensor<Flex, D> {
    let xp = raw::primitive(x.clone());
    if !raw::is_f32(&xp) {
        return super::reference::relu6(x);
    }
    raw::tensor(flex_prim(&xp))
}

type Ad = Autodiff<Flex>;

#[derive(Debug)]
struct Relu6Backward;

impl Backward<Flex, 1> for Relu6Backward {
    /// The forward pass's output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = Dense::new(&grads.consume::<Flex>(&ops.node));
        let [Some(parent)] = ops.parents else { return };
        let y = Dense::new(&ops.state);
        let dx = relu6_backward(y.f32s(), dy.f32s());
        grads.register::<Flex>(parent.id, raw::from_vec_like(dx, &ops.state));
    }
}

pub(crate) fn autodiff<const D: usize>(x: Tensor<Ad, D>) -> Tensor<Ad, D> {
    let xa = x.clone().into_primitive().tensor();
    if !raw::is_f32(&xa.primitive) {
        return super::reference::relu6(x);
    }
    let y = flex_prim(&xa.primitive);
    let y = match Relu6Backward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}
