//! The forward of dense stride-1 convolutions on planes narrower than [`super::direct`]
//! takes (VGG's and ResNet's 8×8, 4×4 and 2×2 layers), with vectors along output channels.
//!
//! Why a second kernel: on a narrow plane a vector along the row covers junk columns of the
//! padded grid (a quarter of the work on 8×8), and unfolding (im2col) costs a copy nine
//! times the input. Here a vector holds sixteen output channels of one pixel: each step
//! broadcasts one input value per pixel of the tile from the padded grid and multiplies it by
//! the weights of those channels, so there is no junk and no copy of the input beyond the
//! padding. Output channels must come in whole vectors (the dense 3×3 layers of the ResNets,
//! VGGs and Conv-N after their first have 16, 32, 64 or more).
//!
//! Window rows that fall in the padding are skipped, not multiplied by zero: output rows
//! are grouped by which kernel rows land inside the image ([`RowClass`]), and a tile takes
//! pixels of one class (whole rows, from one image or the next few). On a 3×3 window with
//! padding 1 that is a third of the taps of the first and last rows: 8% of the work on an
//! 8×8 plane, 17% on 4×4, 33% on 2×2. Skipping a zero product leaves every sum as it was.
//!
//! Numerics: each output is a chain of fused multiply-adds over `(ci, ky, kx)` in order (a
//! plain-Rust version of the same arithmetic checks the AVX-512 kernel in tests). Like
//! [`super::direct`], it runs only on CPUs with AVX-512.

use super::conv::ConvDims;
use super::direct::{Kernel, Layout, in_waves, pack_weight};

/// Channels per vector.
const LANES: usize = 16;

/// Pixels one tile computes at once.
const PIX: usize = 8;

/// Vectors of output channels per tile: `PIX × BLOCKS` accumulators, 24 of 32 registers.
const BLOCKS: usize = 3;

/// Output pixels per task at least: images of small planes are taken together so that the
/// weights, once in cache, serve this many pixels.
const WAVE_PIXELS: usize = 256;

/// The kernel for this convolution, if this forward takes it: dense, stride 1, a kernel
/// wider than one tap, output channels in whole vectors, a CPU with AVX-512 (`conv` offers
/// it only what [`super::direct`] does not take).
pub(super) fn kernel_for(d: &ConvDims) -> Option<Kernel> {
    let fits = d.stride == 1 && d.groups == 1 && d.k_h * d.k_w > 1 && d.c_out.is_multiple_of(LANES);
    fits.then(Kernel::detect).flatten()
}

/// Output rows whose window has the same kernel rows inside the image, and those taps: for
/// each input channel, the entries `(ky, kx)` with `ky` inside, one run of `k_w` per row.
pub(super) struct RowClass {
    /// Output rows `oy` of the class, rising.
    rows: Vec<usize>,
    /// The first entry of the run within a channel's `k_h·k_w`: `ky_first·k_w`.
    first: usize,
    /// Grid offset of each tap of the run from its channel's plane: `ky·wg + kx`, rising.
    run: Vec<usize>,
}

impl RowClass {
    /// The classes of a stride-1 convolution's output rows (three for a 3×3 kernel with
    /// padding 1 on a plane at least 3 high: first row, last row, the rest).
    pub(super) fn of(d: &ConvDims) -> Vec<RowClass> {
        let mut classes: Vec<(std::ops::Range<usize>, RowClass)> = Vec::new();
        for oy in 0..d.o_h {
            let inside = d.pad.saturating_sub(oy)..(d.h + d.pad - oy).min(d.k_h);
            if let Some((_, class)) = classes.iter_mut().find(|(r, _)| *r == inside) {
                class.rows.push(oy);
                continue;
            }
            let run = inside
                .clone()
                .flat_map(|ky| (0..d.k_w).map(move |kx| ky * d.grid_width() + kx))
                .collect();
            let first = inside.start * d.k_w;
            classes.push((
                inside,
                RowClass {
                    rows: vec![oy],
                    first,
                    run,
                },
            ));
        }
        classes.into_iter().map(|(_, class)| class).collect()
    }
}

/// What a tile reads: the grids and their planes per channel, and the weights.
#[derive(Clone, Copy)]
pub(super) struct Operands<'a> {
    pub(super) grids: &'a [f32],
    pub(super) plane: usize,
    pub(super) c_in: usize,
    /// `[blocks, kd, 16]` packed weights of up to three blocks of output channels.
    pub(super) w: &'a [f32],
    /// Entries per block: `c_in·k_h·k_w`.
    pub(super) kd: usize,
}

/// `y = conv(x, weight)` (no bias), `[n, c_out, o_h, o_w]`.
pub(super) fn forward(kernel: Kernel, x: &[f32], weight: &[f32], d: &ConvDims) -> Vec<f32> {
    let lay = Layout::new(d);
    let kd = lay.offs.len();
    // `[c_out / 16, kd, 16]`: one vector load per entry and block of channels.
    let packed = pack_weight(weight, kd, LANES, d.c_out);
    let classes = RowClass::of(d);
    let p = d.o_h * d.o_w;
    let img_out = d.c_out * p;
    let grid_len = d.c_in * lay.plane;
    let nb = WAVE_PIXELS.div_ceil(p.max(1)).clamp(1, d.n.max(1));
    in_waves(x, d, &lay, nb, |grids, y, imgs, _| {
        for class in &classes {
            // Each output pixel of the class: where its window starts on the grids, where it
            // goes in `y`.
            let (pin, pout): (Vec<usize>, Vec<usize>) = (0..imgs)
                .flat_map(|img| class.rows.iter().map(move |&oy| (img, oy)))
                .flat_map(|(img, oy)| (0..d.o_w).map(move |ox| (img, oy, ox)))
                .map(|(img, oy, ox)| {
                    let at = img * grid_len + oy * d.grid_width() + ox;
                    (at, img * img_out + oy * d.o_w + ox)
                })
                .unzip();
            let blocks = d.c_out / LANES;
            let mut b0 = 0;
            while b0 < blocks {
                let nbk = BLOCKS.min(blocks - b0);
                let w = &packed[b0 * kd * LANES..][..nbk * kd * LANES];
                let ops = Operands {
                    grids,
                    plane: lay.plane,
                    c_in: d.c_in,
                    w,
                    kd,
                };
                for (pin, pout) in pin.chunks(PIX).zip(pout.chunks(PIX)) {
                    let sums = kernel.narrow_tile(ops, pin, class, nbk);
                    for (i, &at) in pout.iter().enumerate() {
                        for (c, &v) in sums[i][..nbk * LANES].iter().enumerate() {
                            y[(b0 * LANES + c) * p + at] = v;
                        }
                    }
                }
                b0 += nbk;
            }
        }
    })
}

impl Kernel {
    /// For each pixel `i` of the tile and output channel `c < blocks·16`, the sum over input
    /// channels `ci` and the class's taps `t`, in that order, of
    /// `grid[pin[i] + ci·plane + run[t]] · w[(c / 16)·kd·16 + (ci·kk + first + t)·16 + c mod 16]`
    /// (`kk = kd / c_in`).
    pub(super) fn narrow_tile(
        self,
        ops: Operands,
        pin: &[usize],
        class: &RowClass,
        blocks: usize,
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        let Operands {
            grids,
            c_in,
            kd,
            w,
            plane,
        } = ops;
        assert!((1..=PIX).contains(&pin.len()) && (1..=BLOCKS).contains(&blocks));
        assert!(c_in > 0 && kd.is_multiple_of(c_in) && w.len() >= blocks * kd * LANES);
        assert!(class.first + class.run.len() <= kd / c_in);
        // `run` rises (`RowClass::of` builds it so): its last entry is its largest.
        debug_assert!(class.run.is_sorted());
        let reach = (c_in - 1) * plane + class.run.last().unwrap_or(&0);
        assert!(reach + pin.iter().max().unwrap_or(&0) < grids.len());
        let t = Taps {
            plane,
            c_in,
            kk: kd / c_in,
            kd,
            first: class.first,
            run: &class.run,
        };
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe { avx512::narrow_tile(grids, pin, &t, w, blocks) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => unreachable!("detected only on x86-64"),
            #[cfg(test)]
            Kernel::Portable => portable_tile(grids, pin, &t, w, blocks),
        }
    }
}

/// The taps of a tile, with the sizes that place them (see [`Kernel::narrow_tile`]).
struct Taps<'a> {
    plane: usize,
    c_in: usize,
    /// Entries per input channel, `k_h·k_w`.
    kk: usize,
    kd: usize,
    first: usize,
    run: &'a [usize],
}

#[cfg(test)]
fn portable_tile(
    grids: &[f32],
    pin: &[usize],
    t: &Taps,
    w: &[f32],
    blocks: usize,
) -> [[f32; BLOCKS * LANES]; PIX] {
    let mut acc = [[0f32; BLOCKS * LANES]; PIX];
    for ci in 0..t.c_in {
        for (j, &r) in t.run.iter().enumerate() {
            let k = ci * t.kk + t.first + j;
            for (acc, &at) in acc.iter_mut().zip(pin) {
                let xv = grids[at + ci * t.plane + r];
                for b in 0..blocks {
                    let wv = &w[(b * t.kd + k) * LANES..][..LANES];
                    for (a, &wv) in acc[b * LANES..][..LANES].iter_mut().zip(wv) {
                        *a = xv.mul_add(wv, *a);
                    }
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The portable tile's loops with the accumulators in AVX-512 registers.
    use std::arch::x86_64::*;

    use super::{BLOCKS, LANES, PIX, Taps};

    /// See `Kernel::narrow_tile`, which checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn narrow_tile(
        grids: &[f32],
        pin: &[usize],
        t: &Taps,
        w: &[f32],
        blocks: usize,
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        match (pin.len(), blocks) {
            (PIX, 3) => tile::<PIX, 3>(grids, pin, t, w),
            (PIX, 2) => tile::<PIX, 2>(grids, pin, t, w),
            (PIX, 1) => tile::<PIX, 1>(grids, pin, t, w),
            (4, 3) => tile::<4, 3>(grids, pin, t, w),
            (4, 2) => tile::<4, 2>(grids, pin, t, w),
            (4, 1) => tile::<4, 1>(grids, pin, t, w),
            (n, 3) => tile_any::<3>(n, grids, pin, t, w),
            (n, 2) => tile_any::<2>(n, grids, pin, t, w),
            (n, _) => tile_any::<1>(n, grids, pin, t, w),
        }
    }

    /// Fewer pixels than a whole tile, one at a time.
    #[target_feature(enable = "avx512f")]
    fn tile_any<const B: usize>(
        n: usize,
        grids: &[f32],
        pin: &[usize],
        t: &Taps,
        w: &[f32],
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        let mut out = [[0f32; BLOCKS * LANES]; PIX];
        for i in 0..n {
            out[i] = tile::<1, B>(grids, &pin[i..i + 1], t, w)[0];
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn tile<const P: usize, const B: usize>(
        grids: &[f32],
        pin: &[usize],
        t: &Taps,
        w: &[f32],
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        // SAFETY (all blocks below): `pin[i] + ci·plane + run[j] < grids.len()` and
        // `(b·kd + ci·kk + first + j + 1)·LANES ≤ w.len()`, checked by the caller.
        let base: [*const f32; P] = std::array::from_fn(|i| unsafe { grids.as_ptr().add(pin[i]) });
        let stride = t.kd * LANES;
        let mut acc = [[_mm512_setzero_ps(); B]; P];
        for ci in 0..t.c_in {
            let g = ci * t.plane;
            let wc = unsafe { w.as_ptr().add((ci * t.kk + t.first) * LANES) };
            for (j, &r) in t.run.iter().enumerate() {
                unsafe {
                    let wk = wc.add(j * LANES);
                    let wv: [__m512; B] =
                        std::array::from_fn(|b| _mm512_loadu_ps(wk.add(b * stride)));
                    for (acc, base) in acc.iter_mut().zip(&base) {
                        let xv = _mm512_set1_ps(*base.add(g + r));
                        for (a, &wv) in acc.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(xv, wv, *a);
                        }
                    }
                }
            }
        }
        let mut out = [[0f32; BLOCKS * LANES]; PIX];
        for (out, acc) in out.iter_mut().zip(&acc) {
            for (b, &a) in acc.iter().enumerate() {
                // SAFETY: `out` holds `BLOCKS ≥ B` vectors.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(b * LANES), a) };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::tests::randoms;

    #[test]
    fn vector_and_portable_tiles_give_the_same_bits() {
        if Kernel::detect() != Some(Kernel::Avx512) {
            return;
        }
        // 5 channels of 9 entries, a run of 6 from entry 3 (a first row's taps), planes of 30.
        let class = RowClass {
            rows: Vec::new(),
            first: 3,
            run: vec![6, 7, 8, 12, 13, 14],
        };
        let (c_in, kd, plane) = (5, 45, 30);
        let grids = randoms(c_in * plane + 260, 9);
        let w = randoms(3 * kd * LANES, 10);
        let ops = Operands {
            grids: &grids,
            plane,
            c_in,
            w: &w,
            kd,
        };
        let pin = [0, 90, 7, 250, 33, 1, 120, 64];
        for n in [PIX, 4, 3, 1] {
            for blocks in 1..=BLOCKS {
                let a = Kernel::Avx512.narrow_tile(ops, &pin[..n], &class, blocks);
                let b = Kernel::Portable.narrow_tile(ops, &pin[..n], &class, blocks);
                for i in 0..n {
                    assert_eq!(
                        a[i][..blocks * LANES],
                        b[i][..blocks * LANES],
                        "{n} px, {blocks}"
                    );
                }
            }
        }
    }

    /// A 3×3 window with padding 1 on a 4-row plane: the first row keeps kernel rows 1 and
    /// 2, the last rows 0 and 1, the middle two all three.
    #[test]
    fn row_classes_keep_the_kernel_rows_inside_the_image() {
        let geometry = crate::nn::ops::Conv2dGeometry {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let d = ConvDims::new([1, 2, 4, 5], [16, 2, 3, 3], geometry);
        let wg = d.grid_width();
        let classes = RowClass::of(&d);
        let rows: Vec<&[usize]> = classes.iter().map(|c| &c.rows[..]).collect();
        assert_eq!(rows, [&[0][..], &[1, 2], &[3]]);
        let taps = |ky: std::ops::Range<usize>| -> Vec<usize> {
            ky.flat_map(|ky| (0..3).map(move |kx| ky * wg + kx))
                .collect()
        };
        assert_eq!((classes[0].first, &classes[0].run), (3, &taps(1..3)));
        assert_eq!((classes[1].first, &classes[1].run), (0, &taps(0..3)));
        assert_eq!((classes[2].first, &classes[2].run), (0, &taps(0..2)));
        // One row: only the middle kernel row lands inside.
        let d = ConvDims::new([1, 1, 1, 1], [16, 1, 3, 3], geometry);
        let classes = RowClass::of(&d);
        assert_eq!(classes.len(), 1);
        assert_eq!((classes[0].first, &classes[0].run[..]), (3, &[3, 4, 5][..]));
    }
}
