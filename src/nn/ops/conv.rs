//! 2-D convolution on the CPU: forward, input gradient, weight and bias gradients, over
//! `f32` buffers in NCHW order, and its registration with Flex and `Autodiff<Flex>`.
//!
//! On CPUs with AVX-512, dense stride-1 convolutions run direct kernels without unfolding:
//! [`super::direct`] on planes 16 or more wide, [`super::direct_narrow`] (forward) and
//! [`super::narrow_weight_grad`] on narrower ones with output channels in vectors of 16.
//! Other dense and grouped ones unfold the input (im2col) and multiply with `gemm`. The input gradient of a
//! stride-1 convolution is computed as a forward convolution of the output gradient.
//! Depthwise ones (one input and one output channel per group) run a direct loop per plane,
//! where a product with one output row would waste `gemm`; at stride 1 on a zero-padded copy
//! of the plane, so that each tap is one contiguous multiply-add.
//!
//! Work is split over images (forward and input gradient) or over fixed slices of the batch
//! (weight gradient), never inside a sum whose order would then depend on the thread count:
//! every output has the same bits with any number of threads.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorPrimitive};
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::Conv2dGeometry;
use super::raw::{self, Dense, Mat, MatMut, matmul, matmul_into, valid_range};
use super::{direct, direct_narrow, narrow_weight_grad};

/// Columns of the unfolded input a product is given at least: images with small planes
/// (late VGG layers, 4×4) are stacked side by side up to this, so that one product does many
/// images instead of streaming the whole weight once per image.
const TARGET_COLS: usize = 512;

/// Most `f32`s the weight gradient's per-slice partial sums may take together (16 MiB).
const PARTIAL_BUDGET: usize = 4 << 20;

/// Most slices of the batch the weight gradient is split into.
const MAX_PARTS: usize = 16;

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    pub o_h: usize,
    pub o_w: usize,
}

/// Why a convolution's shapes do not fit together (a model-construction bug, reported by
/// the panic message burn's own ops would give too).
fn bad_shapes(x: [usize; 4], weight: [usize; 4], g: Conv2dGeometry) -> String {
    format!("conv2d: input {x:?} and weight {weight:?} do not fit {g:?}")
}

impl ConvDims {
    pub(crate) fn new(x: [usize; 4], weight: [usize; 4], g: Conv2dGeometry) -> Self {
        let [n, c_in, h, w] = x;
        let [c_out, cig, k_h, k_w] = weight;
        assert!(
            g.groups > 0
                && g.stride > 0
                && c_in == cig * g.groups
                && c_out % g.groups == 0
                && h + 2 * g.padding >= k_h
                && w + 2 * g.padding >= k_w,
            "{}",
            bad_shapes(x, weight, g)
        );
        ConvDims {
            n,
            c_in,
            h,
            w,
            c_out,
            k_h,
            k_w,
            stride: g.stride,
            pad: g.padding,
            groups: g.groups,
            o_h: (h + 2 * g.padding - k_h) / g.stride + 1,
            o_w: (w + 2 * g.padding - k_w) / g.stride + 1,
        }
    }

    fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of the unfolded input per group: `c_in/groups · k_h · k_w`.
    fn kdim(&self) -> usize {
        self.cig() * self.k_h * self.k_w
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Columns of a plane padded by `pad` on both sides (see [`pad_plane`]).
    pub(super) fn grid_width(&self) -> usize {
        self.w + 2 * self.pad
    }
    fn p(&self) -> usize {
        self.o_h * self.o_w
    }
    fn depthwise(&self) -> bool {
        self.cig() == 1 && self.cog() == 1
    }
    /// 1×1, stride 1, no padding: the unfolded input is the input.
    fn pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.pad == 0
    }
    /// Images per product (see [`TARGET_COLS`]).
    fn wave(&self) -> usize {
        TARGET_COLS
            .div_ceil(self.p().max(1))
            .clamp(1, self.n.max(1))
    }
    pub(crate) fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.o_h, self.o_w]
    }
}

/// Whether a product should thread inside itself: only when the outer split leaves cores idle.
/// (This changes no bits, see [`matmul`].)
fn thread_inside(tasks: usize) -> bool {
    tasks < rayon::current_num_threads()
}

/// Unfolds group `g` of one image `x` (`[c_in, h, w]`) into rows `(ci, ky, kx)` of `col`
/// (row stride `ld`), columns `off .. off + o_h·o_w`.
fn im2col(x: &[f32], d: &ConvDims, g: usize, col: &mut [f32], ld: usize, off: usize) {
    let (hw, ow, s) = (d.hw(), d.o_w, d.stride);
    // Tap geometry outside the channel loop: on the small planes of late layers (2×2, 4×4)
    // working it out per row cost more than copying the row.
    for ky in 0..d.k_h {
        let (y_lo, y_hi) = valid_range(ky, d.pad, s, d.h, d.o_h);
        for kx in 0..d.k_w {
            let (x_lo, x_hi) = valid_range(kx, d.pad, s, d.w, ow);
            let tap = Tap::of(d, ky, kx, (y_lo, y_hi), (x_lo, x_hi));
            let first = (x_lo * s + kx).saturating_sub(d.pad);
            for ci in 0..d.cig() {
                let plane = &x[(g * d.cig() + ci) * hw..][..hw];
                let r = (ci * d.k_h + ky) * d.k_w + kx;
                let row = &mut col[r * ld + off..][..d.p()];
                row[..y_lo * ow].fill(0.0);
                row[y_hi * ow..].fill(0.0);
                if let Some(tap) = &tap {
                    shifted_plane(plane, d, tap, row);
                    continue;
                }
                if x_lo >= x_hi {
                    row[y_lo * ow..y_hi * ow].fill(0.0);
                    continue;
                }
                for oy in y_lo..y_hi {
                    let src = &plane[(oy * s + ky - d.pad) * d.w..][..d.w];
                    let dst = &mut row[oy * ow..][..ow];
                    zero_few(&mut dst[..x_lo]);
                    zero_few(&mut dst[x_hi..]);
                    if s == 1 {
                        dst[x_lo..x_hi].copy_from_slice(&src[first..first + x_hi - x_lo]);
                    } else {
                        for (o, v) in dst[x_lo..x_hi].iter_mut().enumerate() {
                            *v = src[first + o * s];
                        }
                    }
                }
            }
        }
    }
}

/// One tap `(ky, kx)` of a stride-1 convolution whose output is as wide as its input (3×3
/// with padding 1, the common case), on the flattened planes: output `(oy, ox)` reads input
/// `(oy + ky − pad, ox + kx − pad)`, so output index `i` reads input index `i + ahead − behind`
/// and a whole tap is one contiguous run over `a..b`, instead of one run per output row (which
/// costs a call per 8 to 32 floats). The outputs of the run in the edge columns read the
/// neighbouring row's input instead of padding, and are zeroed after the copy.
#[derive(Clone, Copy)]
struct Tap {
    a: usize,
    b: usize,
    ahead: usize,
    behind: usize,
    /// Output rows and columns whose input lies inside the plane.
    rows: (usize, usize),
    cols: (usize, usize),
}

impl Tap {
    /// The run of tap `(ky, kx)`, whose valid output rows and columns are `rows` and `cols`
    /// ([`valid_range`]), or `None` where the convolution is not stride 1 with the output as
    /// wide as the input, or the tap reads padding only.
    fn of(
        d: &ConvDims,
        ky: usize,
        kx: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Option<Tap> {
        if d.stride != 1 || d.o_w != d.w {
            return None;
        }
        if rows.0 >= rows.1 || cols.0 >= cols.1 {
            return None;
        }
        let (ahead, behind) = (ky * d.w + kx, d.pad * (d.w + 1));
        // The first and last outputs of the rows may read before or after the plane: both
        // are edge columns, left out of the run.
        let a = (rows.0 * d.w).max(behind.saturating_sub(ahead));
        let b = (rows.1 * d.w)
            .min((d.hw() + behind).saturating_sub(ahead))
            .max(a);
        Some(Tap {
            a,
            b,
            ahead,
            behind,
            rows,
            cols,
        })
    }

    /// The input indices the run reads.
    fn input(&self) -> std::ops::Range<usize> {
        self.a + self.ahead - self.behind..self.b + self.ahead - self.behind
    }
}

/// A tap `(ky, kx)` that reads inside the plane for some output: the output rows and columns
/// whose input lies in the plane ([`valid_range`]), and the input column the first of those
/// columns reads.
struct TapSpan {
    ky: usize,
    kx: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    first: usize,
}

impl TapSpan {
    /// The tap's position in its `k_h·k_w` kernel.
    fn index(&self, d: &ConvDims) -> usize {
        self.ky * d.k_w + self.kx
    }

    /// Each output row the tap reads inside the plane: where the input row it reads starts
    /// (`iy·w`), and the outputs of that row it reaches, as positions in the output plane.
    fn rows<'a>(&'a self, d: &'a ConvDims) -> impl Iterator<Item = (usize, Range<usize>)> + 'a {
        let (x_lo, x_hi) = self.cols;
        (self.rows.0..self.rows.1).map(move |oy| {
            let iy = oy * d.stride + self.ky - d.pad;
            (iy * d.w, oy * d.o_w + x_lo..oy * d.o_w + x_hi)
        })
    }
}

/// `dst[first + j·s] += a·src[j]` for every `j`.
fn add_strided(dst: &mut [f32], first: usize, s: usize, a: f32, src: &[f32]) {
    if s == 1 {
        for (o, v) in dst[first..first + src.len()].iter_mut().zip(src) {
            *o += a * v;
        }
    } else {
        for (j, v) in src.iter().enumerate() {
            dst[first + j * s] += a * v;
        }
    }
}

/// The taps of `d` that read inside the plane for at least one output column, in `(ky, kx)`
/// order (col2im and the strided depthwise loops; im2col also needs the others, to zero).
fn live_taps(d: &ConvDims) -> impl Iterator<Item = TapSpan> + '_ {
    let s = d.stride;
    (0..d.k_h).flat_map(move |ky| {
        let rows = valid_range(ky, d.pad, s, d.h, d.o_h);
        (0..d.k_w).filter_map(move |kx| {
            let cols = valid_range(kx, d.pad, s, d.w, d.o_w);
            (cols.0 < cols.1).then(|| TapSpan {
                ky,
                kx,
                rows,
                cols,
                first: cols.0 * s + kx - d.pad,
            })
        })
    })
}

/// One im2col row from a [`Tap`]: the run is one copy, and the outputs that read padding
/// (edge columns, and rows outside `tap.rows`) are zeroed.
fn shifted_plane(plane: &[f32], d: &ConvDims, tap: &Tap, row: &mut [f32]) {
    let w = d.w;
    let (y_lo, y_hi) = tap.rows;
    row[tap.a..tap.b].copy_from_slice(&plane[tap.input()]);
    zero_few(&mut row[y_lo * w..tap.a]);
    zero_few(&mut row[tap.b..y_hi * w]);
    for oy in y_lo..y_hi {
        let dst = &mut row[oy * w..][..w];
        zero_few(&mut dst[..tap.cols.0]);
        zero_few(&mut dst[tap.cols.1..]);
    }
}

/// `y += a · x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Zeroes a slice of usually one or two elements with plain stores (`fill` calls `memset`,
/// whose call costs more than the store).
fn zero_few(xs: &mut [f32]) {
    match xs {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => {
            *a = 0.0;
            *b = 0.0;
        }
        _ => xs.fill(0.0),
    }
}

/// Adds the unfolded gradient `col` (layout as in [`im2col`]) back onto group `g` of one
/// image's input gradient `dx`.
fn col2im(col: &[f32], ld: usize, off: usize, d: &ConvDims, g: usize, dx: &mut [f32]) {
    let (hw, s) = (d.hw(), d.stride);
    // Tap geometry outside the channel loop, as in `im2col`. Each input still takes its taps'
    // contributions in `(ky, kx)` order.
    for tap in live_taps(d) {
        for ci in 0..d.cig() {
            let plane = &mut dx[(g * d.cig() + ci) * hw..][..hw];
            let r = ci * d.k_h * d.k_w + tap.index(d);
            let row = &col[r * ld + off..][..d.p()];
            for (input, out) in tap.rows(d) {
                // `1·v` is `v`: the sums are those of a plain addition.
                add_strided(&mut plane[input..][..d.w], tap.first, s, 1.0, &row[out]);
            }
        }
    }
}

/// Group `g` of the `imgs` consecutive images `x`, unfolded side by side into `buf`:
/// `[kd, imgs·p]`.
fn unfold<'a>(x: &[f32], d: &ConvDims, g: usize, imgs: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let (p, img_in) = (d.p(), d.c_in * d.hw());
    let ld = imgs * p;
    let col = sized(buf, d.kdim() * ld);
    for i in 0..imgs {
        im2col(&x[i * img_in..][..img_in], d, g, col, ld, i * p);
    }
    col
}

/// Scratch buffers of one worker, reused across the images it handles.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) mat: Vec<f32>,
}

thread_local! {
    /// Each thread's scratch buffers, kept from one convolution to the next: allocating
    /// them per call made every call page fresh memory in (12% of a ResNet-20 step).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers. A nested call (a product threaded inside
/// itself whose worker picks up another image meanwhile) gets fresh ones.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

pub(super) fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Copies group `g` of the images `imgs` of an NCHW-like buffer (`c` channels of `p`
/// elements per image) into `[c/groups, imgs·p]`, images side by side.
fn stack(src: &[f32], c: usize, p: usize, cg: usize, g: usize, imgs: usize, dst: &mut [f32]) {
    let ld = imgs * p;
    for i in 0..imgs {
        for r in 0..cg {
            dst[r * ld + i * p..][..p].copy_from_slice(&src[(i * c + g * cg + r) * p..][..p]);
        }
    }
}

/// Inverse of [`stack`]: writes `[c/groups, imgs·p]` back into the images' channels.
fn unstack(src: &[f32], c: usize, p: usize, cg: usize, g: usize, imgs: usize, dst: &mut [f32]) {
    let ld = imgs * p;
    for i in 0..imgs {
        for r in 0..cg {
            dst[(i * c + g * cg + r) * p..][..p].copy_from_slice(&src[r * ld + i * p..][..p]);
        }
    }
}

/// `y = conv(x, weight) + bias`, `[n, c_out, o_h, o_w]`.
pub(crate) fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, d: &ConvDims) -> Vec<f32> {
    let p = d.p();
    let direct_out = match (direct::kernel_for(d), direct_narrow::kernel_for(d)) {
        (Some(kernel), _) => Some(direct::forward(kernel, x, weight, d)),
        (None, Some(kernel)) => Some(direct_narrow::forward(kernel, x, weight, d)),
        (None, None) => None,
    };
    if let Some(mut out) = direct_out {
        add_bias(&mut out, bias, d);
        return out;
    }
    let mut out = raw::zeros(d.n * d.c_out * p);
    if out.is_empty() {
        return out;
    }
    if d.depthwise() {
        out.par_chunks_mut(p).enumerate().for_each(|(plane, y)| {
            let c = plane % d.c_out;
            let x = &x[(plane / d.c_out * d.c_in + c) * d.hw()..][..d.hw()];
            let w = &weight[c * d.k_h * d.k_w..][..d.k_h * d.k_w];
            with_scratch(|s| depthwise_forward(x, w, d, y, s));
        });
    } else {
        let nb = d.wave();
        let threaded = thread_inside(d.n.div_ceil(nb));
        let img_in = d.c_in * d.hw();
        out.par_chunks_mut(nb * d.c_out * p)
            .enumerate()
            .for_each(|(wi, y)| {
                let imgs = y.len() / (d.c_out * p);
                let x = &x[wi * nb * img_in..][..imgs * img_in];
                with_scratch(|s| forward_wave(x, weight, d, imgs, y, threaded, s));
            });
    }
    add_bias(&mut out, bias, d);
    out
}

fn add_bias(out: &mut [f32], bias: Option<&[f32]>, d: &ConvDims) {
    if let Some(bias) = bias {
        out.par_chunks_mut(d.p())
            .enumerate()
            .for_each(|(plane, y)| {
                let b = bias[plane % d.c_out];
                y.iter_mut().for_each(|v| *v += b);
            });
    }
}

/// The forward of `imgs` consecutive images `x` into their outputs `y`.
fn forward_wave(
    x: &[f32],
    weight: &[f32],
    d: &ConvDims,
    imgs: usize,
    y: &mut [f32],
    threaded: bool,
    s: &mut Scratch,
) {
    let (p, kd, cog) = (d.p(), d.kdim(), d.cog());
    let ld = imgs * p;
    for g in 0..d.groups {
        let w_g = Mat::rows(&weight[g * cog * kd..][..cog * kd], kd);
        let col: &[f32] = if d.pointwise() && imgs == 1 {
            &x[g * kd * p..][..kd * p]
        } else {
            unfold(x, d, g, imgs, &mut s.col)
        };
        if imgs == 1 {
            let dst = &mut y[g * cog * p..][..cog * p];
            matmul(cog, p, kd, dst, p, false, w_g, Mat::rows(col, p), threaded);
        } else {
            let tmp = sized(&mut s.mat, cog * ld);
            let rhs = Mat::rows(col, ld);
            matmul(cog, ld, kd, tmp, ld, false, w_g, rhs, threaded);
            unstack(tmp, d.c_out, p, cog, g, imgs, y);
        }
    }
}

/// `dL/dx` from `dy` (`[n, c_out, o_h, o_w]`).
pub(crate) fn input_grad(dy: &[f32], weight: &[f32], d: &ConvDims) -> Vec<f32> {
    if let Some((flipped, dims)) = as_forward(weight, d) {
        return forward(dy, &flipped, None, &dims);
    }
    let (p, hw) = (d.p(), d.hw());
    let mut dx = raw::zeros(d.n * d.c_in * hw);
    if dx.is_empty() {
        return dx;
    }
    if d.depthwise() {
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dx)| {
            let c = plane % d.c_in;
            let dy = &dy[(plane / d.c_in * d.c_out + c) * p..][..p];
            let w = &weight[c * d.k_h * d.k_w..][..d.k_h * d.k_w];
            with_scratch(|s| depthwise_input_grad(dy, w, d, dx, s));
        });
        return dx;
    }
    let nb = d.wave();
    let threaded = thread_inside(d.n.div_ceil(nb));
    let img_out = d.c_out * p;
    dx.par_chunks_mut(nb * d.c_in * hw)
        .enumerate()
        .for_each(|(wi, dx)| {
            let imgs = dx.len() / (d.c_in * hw);
            let dy = &dy[wi * nb * img_out..][..imgs * img_out];
            with_scratch(|s| input_grad_wave(dy, weight, d, imgs, dx, threaded, s));
        });
    dx
}

/// The input gradient of a stride-1 convolution as a forward convolution of `dy`: with the
/// kernel flipped in both directions, input and output channels swapped within each group,
/// and padding `k − 1 − pad`, the output is `dx`.
///
/// Why: the direct way multiplies the transposed weight with `dy` (a product only `c_out`
/// deep) into an unfolded buffer nine times the size of `dx` for a 3×3 kernel, then folds it
/// back with scattered additions; as a forward, the product is `9·c_out` deep and the
/// unfolding a copy. Strided convolutions skip input positions and keep the direct way; so
/// do 1×1 ones, whose direct product needs no unfolding at all.
fn as_forward(weight: &[f32], d: &ConvDims) -> Option<(Vec<f32>, ConvDims)> {
    let fits = d.stride == 1 && d.k_h == d.k_w && d.pad < d.k_h && !d.pointwise();
    if !fits || d.depthwise() {
        return None;
    }
    let (cig, cog, kk) = (d.cig(), d.cog(), d.k_h * d.k_w);
    let mut flipped = vec![0f32; weight.len()];
    if !flipped.is_empty() {
        // `[groups, cig, cog, kk]`, one `(g, ci)` per task.
        flipped
            .par_chunks_mut(cog * kk)
            .enumerate()
            .for_each(|(gci, dst)| {
                let (g, ci) = (gci / cig, gci % cig);
                for (co, dst) in dst.chunks_exact_mut(kk).enumerate() {
                    let src = &weight[((g * cog + co) * cig + ci) * kk..][..kk];
                    for (t, v) in dst.iter_mut().zip(src.iter().rev()) {
                        *t = *v;
                    }
                }
            });
    }
    let geometry = Conv2dGeometry {
        stride: 1,
        padding: d.k_h - 1 - d.pad,
        groups: d.groups,
    };
    let dims = ConvDims::new(
        [d.n, d.c_out, d.o_h, d.o_w],
        [d.c_in, cog, d.k_h, d.k_w],
        geometry,
    );
    debug_assert_eq!((dims.o_h, dims.o_w), (d.h, d.w));
    Some((flipped, dims))
}

/// The input gradient of `imgs` consecutive images from their `dy`.
fn input_grad_wave(
    dy: &[f32],
    weight: &[f32],
    d: &ConvDims,
    imgs: usize,
    dx: &mut [f32],
    threaded: bool,
    s: &mut Scratch,
) {
    let (p, kd, cog, hw) = (d.p(), d.kdim(), d.cog(), d.hw());
    let ld = imgs * p;
    for g in 0..d.groups {
        let w_t = Mat::transposed(&weight[g * cog * kd..][..cog * kd], kd);
        let dy_g: &[f32] = if imgs == 1 {
            &dy[g * cog * p..][..cog * p]
        } else {
            let m = sized(&mut s.mat, cog * ld);
            stack(dy, d.c_out, p, cog, g, imgs, m);
            m
        };
        if d.pointwise() && imgs == 1 {
            let dst = &mut dx[g * kd * hw..][..kd * hw];
            matmul(kd, p, cog, dst, p, false, w_t, Mat::rows(dy_g, p), threaded);
        } else {
            let col = sized(&mut s.col, kd * ld);
            matmul(
                kd,
                ld,
                cog,
                col,
                ld,
                false,
                w_t,
                Mat::rows(dy_g, ld),
                threaded,
            );
            for i in 0..imgs {
                let dx_i = &mut dx[i * d.c_in * hw..][..d.c_in * hw];
                col2im(col, ld, i * p, d, g, dx_i);
            }
        }
    }
}

/// `dL/dweight` (`[c_out, c_in/groups, k_h, k_w]`) from `x` and `dy`.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], d: &ConvDims) -> Vec<f32> {
    weight_grad_split(x, dy, d, PARTIAL_BUDGET)
}

/// [`weight_grad`] with the partial-sum budget as a parameter, so that tests reach every
/// split with small shapes.
///
/// The batch is cut into slices fixed by the shapes alone (never by the thread count); each
/// slice sums its images in order into its own partial gradient, and the partials are added
/// in slice order.
pub(crate) fn weight_grad_split(x: &[f32], dy: &[f32], d: &ConvDims, budget: usize) -> Vec<f32> {
    let (p, kd, cog, hw) = (d.p(), d.kdim(), d.cog(), d.hw());
    let wsize = d.c_out * kd;
    if wsize == 0 || d.n == 0 {
        return vec![0f32; wsize];
    }
    if d.depthwise() {
        let kk = d.k_h * d.k_w;
        let mut dw = vec![0f32; wsize];
        dw.par_chunks_mut(kk).enumerate().for_each(|(c, dw)| {
            let mut acc = vec![0f64; kk];
            for i in 0..d.n {
                let x = &x[(i * d.c_in + c) * hw..][..hw];
                let dy = &dy[(i * d.c_out + c) * p..][..p];
                with_scratch(|s| depthwise_weight_grad(x, dy, d, &mut acc, s));
            }
            for (w, a) in dw.iter_mut().zip(acc) {
                *w = a as f32;
            }
        });
        return dw;
    }
    let parts = (budget / wsize).clamp(1, d.n.min(MAX_PARTS));
    if let Some(kernel) = direct::kernel_for(d) {
        return direct::weight_grad(kernel, x, dy, d, parts);
    }
    if let Some(kernel) = direct_narrow::kernel_for(d) {
        return narrow_weight_grad::weight_grad(kernel, x, dy, d, parts);
    }
    let threaded = thread_inside(parts);
    let nb = d.wave();
    let (img_in, img_out) = (d.c_in * hw, d.c_out * p);
    let total_t = sum_over_slices(d.n, parts, |slice| {
        // Per group `[kd, cog]`: the transpose of the gradient, see `weight_grad_wave`.
        let mut acc_t = raw::zeros(wsize);
        let mut start = slice.start;
        while start < slice.end {
            let imgs = nb.min(slice.end - start);
            let x = &x[start * img_in..][..imgs * img_in];
            let dy = &dy[start * img_out..][..imgs * img_out];
            with_scratch(|s| weight_grad_wave(x, dy, d, imgs, &mut acc_t, threaded, s));
            start += imgs;
        }
        acc_t
    });
    untranspose(&total_t, d.groups, cog, kd)
}

/// Adds the weight gradient of `imgs` consecutive images to `acc_t`, which holds per group
/// its transpose `[kd, cog]`.
///
/// Why transposed: `gemm` runs along the destination's contiguous direction and copies the
/// operand that is not contiguous along it into a packed buffer. Laid out as `[kd, cog]`, the
/// destination runs along output channels, so the operand to repack is `dy` (`cog` rows)
/// rather than the unfolded input (`kd = 9·cog` rows for a 3×3 layer): the repacking went
/// from 13% of a ResNet-20 step to a transpose of `dy` nine times smaller.
fn weight_grad_wave(
    x: &[f32],
    dy: &[f32],
    d: &ConvDims,
    imgs: usize,
    acc_t: &mut [f32],
    threaded: bool,
    s: &mut Scratch,
) {
    let (p, kd, cog) = (d.p(), d.kdim(), d.cog());
    let ld = imgs * p;
    for g in 0..d.groups {
        let col = unfold(x, d, g, imgs, &mut s.col);
        // dy of group g as `[imgs·p, cog]`.
        let dy_t = sized(&mut s.mat, ld * cog);
        for i in 0..imgs {
            for co in 0..cog {
                let src = &dy[(i * d.c_out + g * cog + co) * p..][..p];
                for (q, &v) in src.iter().enumerate() {
                    dy_t[(i * p + q) * cog + co] = v;
                }
            }
        }
        let dst = MatMut {
            data: &mut acc_t[g * cog * kd..][..cog * kd],
            rs: 1,
            cs: cog,
        };
        let lhs = Mat::transposed(dy_t, cog);
        let rhs = Mat::transposed(col, ld);
        matmul_into(cog, kd, ld, dst, true, lhs, rhs, threaded);
    }
}

/// The sum over the batch (`n` images) cut into `parts` slices fixed by the shapes: each
/// slice's `part(images)` computed in parallel, the results added in slice order, so the bits
/// do not depend on the thread count. All three weight gradients sum this way.
pub(super) fn sum_over_slices(
    n: usize,
    parts: usize,
    part: impl Fn(Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let partials = (0..parts)
        .into_par_iter()
        .map(|i| part(i * n / parts..(i + 1) * n / parts))
        .collect();
    sum_in_order(partials)
}

/// `[c_out, kd]` back from its transpose, per group `[kd, cog]` (as the weight gradients
/// accumulate it), sixteen output channels per task so that each row of the transpose is
/// read a cache line at a time.
pub(super) fn untranspose(total_t: &[f32], groups: usize, cog: usize, kd: usize) -> Vec<f32> {
    let mut dw = raw::zeros(groups * cog * kd);
    dw.par_chunks_mut(cog * kd)
        .zip(total_t.par_chunks(cog * kd))
        .for_each(|(dst, src)| {
            dst.par_chunks_mut(16 * kd)
                .enumerate()
                .for_each(|(cb, dst)| {
                    let (c0, cn) = (cb * 16, dst.len() / kd);
                    for (k, row) in src.chunks_exact(cog).enumerate() {
                        for (c, &v) in row[c0..c0 + cn].iter().enumerate() {
                            dst[c * kd + k] = v;
                        }
                    }
                });
        });
    dw
}

/// Element-wise sum of equally long buffers, always in the order given.
fn sum_in_order(mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut total = parts.remove(0);
    if parts.is_empty() {
        return total;
    }
    total
        .par_chunks_mut(4096)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for part in &parts {
                for (t, v) in chunk.iter_mut().zip(&part[ci * 4096..]) {
                    *t += v;
                }
            }
        });
    total
}

/// `dL/dbias`: `dy` summed over images and positions, per output channel.
pub(crate) fn bias_grad(dy: &[f32], d: &ConvDims) -> Vec<f32> {
    let p = d.p();
    (0..d.c_out)
        .into_par_iter()
        .map(|c| {
            let total: f64 = (0..d.n)
                .map(|i| raw::sum(&dy[(i * d.c_out + c) * p..][..p]))
                .sum();
            total as f32
        })
        .collect()
}

/// One input plane of a stride-1 depthwise convolution copied into a zero grid `pad` wider
/// on every side (`wp` columns). On the grid, every tap of every output reads one contiguous
/// run: output `(oy, ox)` computed on grid-wide rows (index `oy·wp + ox`, the last `wp − o_w`
/// columns of each row junk) reads grid index `oy·wp + ox + ky·wp + kx`. One multiply-add
/// over the run per tap replaces a loop per output row, which on the small planes of late
/// layers (4×4) cost more to set up than to run.
struct Grid<'a> {
    data: &'a [f32],
    wp: usize,
}

impl Grid<'_> {
    /// Floats a grid takes: its rows, and the overhang the last tap's run reads past them.
    fn len(d: &ConvDims) -> usize {
        (d.h + 2 * d.pad) * d.grid_width() + d.k_w
    }

    /// The run tap `t` (`ky·k_w + kx`) reads, as long as the grid-wide output.
    fn tap(&self, t: usize, d: &ConvDims) -> &[f32] {
        &self.data[(t / d.k_w) * self.wp + t % d.k_w..][..d.o_h * self.wp]
    }
}

/// Copies one input plane (`[h, w]`) into `dst` zero-padded by `pad` on every side, rows
/// [`ConvDims::grid_width`] apart; the rest of `dst` is zeroed.
pub(super) fn pad_plane(src: &[f32], d: &ConvDims, dst: &mut [f32]) {
    let wg = d.grid_width();
    dst.fill(0.0);
    for (iy, row) in src.chunks_exact(d.w).enumerate() {
        dst[(iy + d.pad) * wg + d.pad..][..d.w].copy_from_slice(row);
    }
}

/// Copies one output plane (`[o_h, o_w]`) onto the first `o_h` grid-wide rows of `dst`
/// (output `(oy, ox)` at `oy·grid_width + ox`), the junk columns zeroed.
pub(super) fn onto_grid_rows(src: &[f32], d: &ConvDims, dst: &mut [f32]) {
    let wg = d.grid_width();
    for (oy, src) in src.chunks_exact(d.o_w).enumerate() {
        dst[oy * wg..][..d.o_w].copy_from_slice(src);
        zero_few(&mut dst[oy * wg + d.o_w..(oy + 1) * wg]);
    }
}

fn padded_grid<'a>(x: &[f32], d: &ConvDims, buf: &'a mut Vec<f32>) -> Grid<'a> {
    let grid = sized(buf, Grid::len(d));
    pad_plane(x, d, grid);
    Grid {
        data: grid,
        wp: d.grid_width(),
    }
}

/// One output-gradient plane on grid-wide rows (see [`Grid`]), junk columns zero.
fn grid_rows<'a>(dy: &[f32], d: &ConvDims, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let rows = sized(buf, d.o_h * d.grid_width());
    onto_grid_rows(dy, d, rows);
    rows
}

/// One channel plane of a depthwise convolution: `y += Σ_taps w · x(shifted)`.
fn depthwise_forward(x: &[f32], w: &[f32], d: &ConvDims, y: &mut [f32], s: &mut Scratch) {
    if d.stride == 1 {
        let grid = padded_grid(x, d, &mut s.col);
        let out = sized(&mut s.mat, d.o_h * grid.wp);
        out.fill(0.0);
        for (t, &wv) in w.iter().enumerate() {
            axpy(out, wv, grid.tap(t, d));
        }
        for (oy, y) in y.chunks_exact_mut(d.o_w).enumerate() {
            y.copy_from_slice(&out[oy * grid.wp..][..d.o_w]);
        }
        return;
    }
    let s = d.stride;
    for tap in live_taps(d) {
        let wv = w[tap.index(d)];
        for (input, out) in tap.rows(d) {
            let src = &x[input..][..d.w];
            for (j, o) in y[out].iter_mut().enumerate() {
                *o += wv * src[tap.first + j * s];
            }
        }
    }
}

/// One channel plane of a depthwise convolution's input gradient.
fn depthwise_input_grad(dy: &[f32], w: &[f32], d: &ConvDims, dx: &mut [f32], s: &mut Scratch) {
    if d.stride == 1 {
        let rows = grid_rows(dy, d, &mut s.mat);
        let wp = d.grid_width();
        let grid = sized(&mut s.col, Grid::len(d));
        grid.fill(0.0);
        for (t, &wv) in w.iter().enumerate() {
            let at = (t / d.k_w) * wp + t % d.k_w;
            axpy(&mut grid[at..][..rows.len()], wv, rows);
        }
        for (iy, dx) in dx.chunks_exact_mut(d.w).enumerate() {
            dx.copy_from_slice(&grid[(iy + d.pad) * wp + d.pad..][..d.w]);
        }
        return;
    }
    for tap in live_taps(d) {
        let wv = w[tap.index(d)];
        for (input, out) in tap.rows(d) {
            add_strided(&mut dx[input..][..d.w], tap.first, d.stride, wv, &dy[out]);
        }
    }
}

/// Adds one image's contribution to a depthwise channel's weight gradient (`acc`, per tap).
fn depthwise_weight_grad(x: &[f32], dy: &[f32], d: &ConvDims, acc: &mut [f64], s: &mut Scratch) {
    if d.stride == 1 {
        let grid = padded_grid(x, d, &mut s.col);
        let rows = grid_rows(dy, d, &mut s.mat);
        for (t, a) in acc.iter_mut().enumerate() {
            *a += raw::dot(rows, grid.tap(t, d));
        }
        return;
    }
    let s = d.stride;
    for tap in live_taps(d) {
        let mut total = 0f64;
        for (input, out) in tap.rows(d) {
            let src = &x[input..][..d.w];
            total += dy[out]
                .iter()
                .enumerate()
                .map(|(j, &g)| f64::from(g * src[tap.first + j * s]))
                .sum::<f64>();
        }
        acc[tap.index(d)] += total;
    }
}

// ---- burn registration ----

/// Flex's forward: `None` when the kernel does not handle the element type.
pub(crate) fn flex_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    g: Conv2dGeometry,
) -> Option<FlexTensor> {
    if !raw::is_f32(x) || !raw::is_f32(weight) || bias.is_some_and(|b| !raw::is_f32(b)) {
        return None;
    }
    let d = ConvDims::new(raw::dims4(x), raw::dims4(weight), g);
    let (xs, ws) = (Dense::new(x), Dense::new(weight));
    let bs = bias.map(Dense::new);
    let y = forward(xs.f32s(), ws.f32s(), bs.as_ref().map(Dense::f32s), &d);
    Some(raw::from_vec(y, &d.out_shape()))
}

pub(crate) fn flex(
    x: Tensor<Flex, 4>,
    weight: Tensor<Flex, 4>,
    bias: Option<Tensor<Flex, 1>>,
    g: Conv2dGeometry,
) -> Tensor<Flex, 4> {
    let (xp, wp) = (
        x.clone().into_primitive().tensor(),
        weight.clone().into_primitive().tensor(),
    );
    let bp = bias.clone().map(|b| b.into_primitive().tensor());
    match flex_forward(&xp, &wp, bp.as_ref(), g) {
        Some(y) => raw::tensor(y),
        None => super::reference::conv2d(x, weight, bias, g),
    }
}

/// What the backward pass needs: the forward's input and weight.
#[derive(Clone, Debug)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    dims: ConvDims,
}

#[derive(Debug)]
struct ConvBackward;

impl ConvBackward {
    /// Registers the gradients of the parents that need one (`parents`: x, weight, bias).
    fn grads(
        state: ConvState,
        dy: FlexTensor,
        parents: [Option<NodeId>; 3],
        grads: &mut Gradients,
    ) {
        let dy = Dense::new(&dy);
        let d = &state.dims;
        let [px, pw, pb] = parents;
        if let Some(id) = px {
            let dx = input_grad(dy.f32s(), Dense::new(&state.weight).f32s(), d);
            grads.register::<Flex>(id, raw::from_vec(dx, &[d.n, d.c_in, d.h, d.w]));
        }
        if let Some(id) = pw {
            let dw = weight_grad(Dense::new(&state.x).f32s(), dy.f32s(), d);
            let shape = [d.c_out, d.cig(), d.k_h, d.k_w];
            grads.register::<Flex>(id, raw::from_vec(dw, &shape));
        }
        if let Some(id) = pb {
            grads.register::<Flex>(id, raw::from_vec(bias_grad(dy.f32s(), d), &[d.c_out]));
        }
    }
}

impl Backward<Flex, 2> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [px, pw] = ops.parents.map(|p| p.map(|n| n.id));
        Self::grads(ops.state, dy, [px, pw, None], grads);
    }
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        Self::grads(ops.state, dy, ops.parents.map(|p| p.map(|n| n.id)), grads);
    }
}

type Ad = Autodiff<Flex>;

pub(crate) fn autodiff(
    x: Tensor<Ad, 4>,
    weight: Tensor<Ad, 4>,
    bias: Option<Tensor<Ad, 1>>,
    g: Conv2dGeometry,
) -> Tensor<Ad, 4> {
    let xa = x.clone().into_primitive().tensor();
    let wa = weight.clone().into_primitive().tensor();
    let ba = bias.clone().map(|b| b.into_primitive().tensor());
    let Some(y) = flex_forward(
        &xa.primitive,
        &wa.primitive,
        ba.as_ref().map(|b| &b.primitive),
        g,
    ) else {
        return super::reference::conv2d(x, weight, bias, g);
    };
    let state = || ConvState {
        x: xa.primitive.clone(),
        weight: wa.primitive.clone(),
        dims: ConvDims::new(raw::dims4(&xa.primitive), raw::dims4(&wa.primitive), g),
    };
    let out = match &ba {
        None => match ConvBackward
            .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        Some(b) => match ConvBackward
            .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
