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
//! Numerics: each output is a chain of fused multiply-adds over `(ci, ky, kx)` in order (a
//! plain-Rust version of the same arithmetic checks the AVX-512 kernel in tests). Like
//! [`super::direct`], it runs only on CPUs with AVX-512.

use rayon::prelude::*;

use super::conv::{ConvDims, sized, with_scratch};
use super::direct::{Kernel, Layout, pack_weight};

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

/// `y = conv(x, weight)` (no bias), `[n, c_out, o_h, o_w]`.
pub(super) fn forward(kernel: Kernel, x: &[f32], weight: &[f32], d: &ConvDims) -> Vec<f32> {
    let lay = Layout::new(d);
    let kd = lay.offs.len();
    // `[c_out / 16, kd, 16]`: one vector load per entry and block of channels.
    let packed = pack_weight(weight, kd, LANES, d.c_out);
    let (img_in, p) = (d.c_in * d.h * d.w, d.o_h * d.o_w);
    let img_out = d.c_out * p;
    let mut y = vec![0f32; d.n * img_out];
    if y.is_empty() {
        return y;
    }
    let nb = WAVE_PIXELS.div_ceil(p).clamp(1, d.n);
    let grid_len = d.c_in * lay.plane;
    y.par_chunks_mut(nb * img_out)
        .enumerate()
        .for_each(|(wi, y)| {
            let imgs = y.len() / img_out;
            with_scratch(|s| {
                let grids = sized(&mut s.col, imgs * grid_len);
                for (i, grid) in grids.chunks_exact_mut(grid_len).enumerate() {
                    lay.fill_grid(&x[(wi * nb + i) * img_in..][..img_in], d, grid);
                }
                // Each output pixel: where its window starts on the grids, where it goes in `y`.
                let (pin, pout): (Vec<usize>, Vec<usize>) = (0..imgs * p)
                    .map(|u| {
                        let (img, q) = (u / p, u % p);
                        let (oy, ox) = (q / d.o_w, q % d.o_w);
                        (img * grid_len + oy * d.grid_width() + ox, img * img_out + q)
                    })
                    .unzip();
                let blocks = d.c_out / LANES;
                let mut b0 = 0;
                while b0 < blocks {
                    let nbk = BLOCKS.min(blocks - b0);
                    let w = &packed[b0 * kd * LANES..][..nbk * kd * LANES];
                    for (pin, pout) in pin.chunks(PIX).zip(pout.chunks(PIX)) {
                        let sums = kernel.narrow_tile(grids, pin, &lay.offs, w, nbk);
                        for (i, &at) in pout.iter().enumerate() {
                            for (c, &v) in sums[i][..nbk * LANES].iter().enumerate() {
                                y[(b0 * LANES + c) * p + at] = v;
                            }
                        }
                    }
                    b0 += nbk;
                }
            })
        });
    y
}

impl Kernel {
    /// For each pixel `i` of the tile and output channel `c < blocks·16`:
    /// `Σ_k grid[pin[i] + offs[k]] · w[(c / 16)·kd·16 + k·16 + c mod 16]`, `offs` rising.
    pub(super) fn narrow_tile(
        self,
        grids: &[f32],
        pin: &[usize],
        offs: &[usize],
        w: &[f32],
        blocks: usize,
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        let kd = offs.len();
        assert!((1..=PIX).contains(&pin.len()) && (1..=BLOCKS).contains(&blocks));
        assert!(w.len() >= blocks * kd * LANES);
        debug_assert!(offs.is_sorted());
        let reach = offs.last().unwrap_or(&0) + pin.iter().max().unwrap_or(&0);
        assert!(reach < grids.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe { avx512::narrow_tile(grids, pin, offs, w, blocks) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => unreachable!("detected only on x86-64"),
            #[cfg(test)]
            Kernel::Portable => portable_tile(grids, pin, offs, w, blocks),
        }
    }
}

#[cfg(test)]
fn portable_tile(
    grids: &[f32],
    pin: &[usize],
    offs: &[usize],
    w: &[f32],
    blocks: usize,
) -> [[f32; BLOCKS * LANES]; PIX] {
    let kd = offs.len();
    let mut acc = [[0f32; BLOCKS * LANES]; PIX];
    for (k, &o) in offs.iter().enumerate() {
        for (acc, &at) in acc.iter_mut().zip(pin) {
            let xv = grids[at + o];
            for b in 0..blocks {
                let wv = &w[(b * kd + k) * LANES..][..LANES];
                for (a, &wv) in acc[b * LANES..][..LANES].iter_mut().zip(wv) {
                    *a = xv.mul_add(wv, *a);
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

    use super::{BLOCKS, LANES, PIX};

    /// See `Kernel::narrow_tile`, which checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn narrow_tile(
        grids: &[f32],
        pin: &[usize],
        offs: &[usize],
        w: &[f32],
        blocks: usize,
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        match (pin.len(), blocks) {
            (PIX, 3) => tile::<PIX, 3>(grids, pin, offs, w),
            (PIX, 2) => tile::<PIX, 2>(grids, pin, offs, w),
            (PIX, 1) => tile::<PIX, 1>(grids, pin, offs, w),
            (4, 3) => tile::<4, 3>(grids, pin, offs, w),
            (4, 2) => tile::<4, 2>(grids, pin, offs, w),
            (4, 1) => tile::<4, 1>(grids, pin, offs, w),
            (n, 3) => tile_any::<3>(n, grids, pin, offs, w),
            (n, 2) => tile_any::<2>(n, grids, pin, offs, w),
            (n, _) => tile_any::<1>(n, grids, pin, offs, w),
        }
    }

    /// Fewer pixels than a whole tile, one at a time.
    #[target_feature(enable = "avx512f")]
    fn tile_any<const B: usize>(
        n: usize,
        grids: &[f32],
        pin: &[usize],
        offs: &[usize],
        w: &[f32],
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        let mut out = [[0f32; BLOCKS * LANES]; PIX];
        for i in 0..n {
            out[i] = tile::<1, B>(grids, &pin[i..i + 1], offs, w)[0];
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn tile<const P: usize, const B: usize>(
        grids: &[f32],
        pin: &[usize],
        offs: &[usize],
        w: &[f32],
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        let kd = offs.len();
        // SAFETY (all blocks below): `pin[i] + offs[k] < grids.len()` and
        // `(b·kd + k + 1)·LANES ≤ w.len()`, checked by the caller.
        let base: [*const f32; P] = std::array::from_fn(|i| unsafe { grids.as_ptr().add(pin[i]) });
        let wp = w.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); B]; P];
        for (k, &o) in offs.iter().enumerate() {
            unsafe {
                let wv: [__m512; B] =
                    std::array::from_fn(|b| _mm512_loadu_ps(wp.add((b * kd + k) * LANES)));
                for (acc, base) in acc.iter_mut().zip(&base) {
                    let xv = _mm512_set1_ps(*base.add(o));
                    for (a, &wv) in acc.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, wv, *a);
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
        let offs: Vec<usize> = (0..29).map(|k| k * 5 + k % 3).collect();
        let grids = randoms(400, 9);
        let w = randoms(3 * 29 * LANES, 10);
        let pin = [0, 90, 7, 250, 33, 1, 120, 64];
        for n in [PIX, 4, 3, 1] {
            for blocks in 1..=BLOCKS {
                let a = Kernel::Avx512.narrow_tile(&grids, &pin[..n], &offs, &w, blocks);
                let b = Kernel::Portable.narrow_tile(&grids, &pin[..n], &offs, &w, blocks);
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
}
