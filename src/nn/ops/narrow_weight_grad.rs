//! The weight gradient of the convolutions [`super::direct_narrow`] runs forward (dense,
//! stride 1, planes narrower than [`super::direct`] takes, output channels in vectors of 16).
//!
//! Why not im2col and `gemm`: the unfolded input holds a zero wherever a tap reads the
//! padding, and the product multiplies every one of them: a sixth of the work on an 8×8
//! plane with a 3×3 window, almost a third on 4×4, more than half on 2×2. Here a vector
//! holds sixteen output channels of `dy` at one pixel, and each step broadcasts the input
//! values that pixel meets under a few entries `(ci, ky, kx)` of the window. Entries of one
//! kernel row `ky` see the image only from some output rows (the first row's window sticks
//! out above the image, the last row's below); their sums run over those rows alone.
//!
//! Columns are not skipped: a tile whose entries share one tap `(ky, kx)` of eight input
//! channels, summed over only the pixels that see that tap inside, did a twelfth less work on
//! 8×8 planes but took a tenth longer (see `bench/RESULTS.md`).
//!
//! Numerics: each entry of the gradient is a chain of fused multiply-adds over its slice of
//! the batch (images, then rows, then columns, in order); slices (fixed by the shapes, as in
//! [`super::conv::weight_grad_split`]) are added in order. Threads split the entries, never
//! a sum: the bits do not depend on the thread count. Runs only on CPUs with AVX-512, like
//! the forward; a plain-Rust version of the tile checks the vector one in tests.

use std::ops::Range;

use rayon::prelude::*;

use super::conv::{ConvDims, sized, sum_over_slices, untranspose, with_scratch};
use super::direct::{Kernel, Layout};
use super::raw;

/// Channels per vector.
const LANES: usize = 16;

/// Entries of the window per tile: two input channels' three taps of a kernel row.
const ENTRIES: usize = 6;

/// Vectors of output channels per tile: `ENTRIES × BLOCKS` accumulators and `BLOCKS`
/// vectors of `dy`, 28 of 32 registers.
const BLOCKS: usize = 4;

/// Input channels whose entries one task computes (a tile's worth for a 3-wide window).
const CHANNELS_PER_TASK: usize = 2;

/// Output pixels per wave at least: a tile keeps its sums in registers over a wave's pixels
/// and adds them to memory once per wave. 512→512 channels on 2×2 planes (batch 128) took
/// 21–27 ms with waves of 256 pixels, 14–15 with 1024; 4×4 and 8×8 planes were the same.
const WAVE_PIXELS: usize = 1024;

/// `dL/dweight`, `[c_out, c_in, k_h, k_w]`, from `x` and `dy`, the batch cut into `parts`
/// slices summed in order.
pub(super) fn weight_grad(
    kernel: Kernel,
    x: &[f32],
    dy: &[f32],
    d: &ConvDims,
    parts: usize,
) -> Vec<f32> {
    let lay = Layout::new(d);
    let kd = lay.offs.len();
    let p = d.o_h * d.o_w;
    let (img_in, img_out) = (d.c_in * d.h * d.w, d.c_out * p);
    let grid_len = d.c_in * lay.plane;
    let nb = WAVE_PIXELS.div_ceil(p.max(1)).clamp(1, d.n.max(1));
    let total_t = sum_over_slices(d.n, parts, |slice| {
        // `[kd, c_out]`: a tile continues the sums of an entry along its row, in vectors.
        let mut acc_t = raw::zeros(kd * d.c_out);
        let mut start = slice.start;
        while start < slice.end {
            let imgs = nb.min(slice.end - start);
            with_scratch(|s| {
                // One slice may be the whole batch: its copies take every thread.
                let grids = sized(&mut s.col, imgs * grid_len);
                let x = &x[start * img_in..][..imgs * img_in];
                grids
                    .par_chunks_exact_mut(grid_len)
                    .zip(x.par_chunks_exact(img_in))
                    .for_each(|(grid, x)| lay.fill_grid(x, d, grid));
                // `dy` of the wave as `[imgs·p, c_out]`: channels of a pixel adjacent.
                let dy_t = sized(&mut s.mat, imgs * img_out);
                let dy = &dy[start * img_out..][..imgs * img_out];
                dy_t.par_chunks_exact_mut(img_out)
                    .zip(dy.par_chunks_exact(img_out))
                    .for_each(|(dy_t, dy)| {
                        for (co, plane) in dy.chunks_exact(p).enumerate() {
                            for (q, &v) in plane.iter().enumerate() {
                                dy_t[q * d.c_out + co] = v;
                            }
                        }
                    });
                let wave = Wave {
                    grids,
                    grid_len,
                    plane: lay.plane,
                    dy_t,
                    imgs,
                };
                wave_into(kernel, &wave, d, &mut acc_t);
            });
            start += imgs;
        }
        acc_t
    });
    untranspose(&total_t, 1, d.c_out, kd)
}

/// One wave's images: padded input planes and `dy` with channels innermost.
struct Wave<'a> {
    grids: &'a [f32],
    grid_len: usize,
    plane: usize,
    dy_t: &'a [f32],
    imgs: usize,
}

/// The output rows where kernel row `ky` lands inside the image.
fn rows_inside(d: &ConvDims, ky: usize) -> Range<usize> {
    d.pad.saturating_sub(ky)..(d.h + d.pad).saturating_sub(ky).min(d.o_h)
}

/// Adds the wave's gradient to `acc_t` (`[kd, c_out]`), input channels split over tasks.
fn wave_into(kernel: Kernel, wave: &Wave, d: &ConvDims, acc_t: &mut [f32]) {
    let (kk, wg, p) = (d.k_h * d.k_w, d.grid_width(), d.o_h * d.o_w);
    // Per kernel row, each pixel it sees: where its window row starts on the grids, where
    // its channels lie in `dy_t`.
    let pixels: Vec<(Vec<usize>, Vec<usize>)> = (0..d.k_h)
        .map(|ky| {
            let rows = rows_inside(d, ky);
            (0..wave.imgs)
                .flat_map(|img| rows.clone().map(move |oy| (img, oy)))
                .flat_map(|(img, oy)| (0..d.o_w).map(move |ox| (img, oy, ox)))
                .map(|(img, oy, ox)| {
                    let at = img * wave.grid_len + (oy + ky) * wg + ox;
                    (at, (img * p + oy * d.o_w + ox) * d.c_out)
                })
                .unzip()
        })
        .collect();
    let blocks = d.c_out / LANES;
    acc_t
        .par_chunks_mut(CHANNELS_PER_TASK * kk * d.c_out)
        .enumerate()
        .for_each(|(task, acc)| {
            let ci0 = task * CHANNELS_PER_TASK;
            let cis = acc.len() / (kk * d.c_out);
            for (ky, (pin, pdy)) in pixels.iter().enumerate() {
                // The entries `(ci, ky, kx)` of the task's channels: grid offset, row in `acc`.
                let entries: Vec<(usize, usize)> = (0..cis)
                    .flat_map(|c| (0..d.k_w).map(move |kx| (c, kx)))
                    .map(|(c, kx)| ((ci0 + c) * wave.plane + kx, c * kk + ky * d.k_w + kx))
                    .collect();
                for chunk in entries.chunks(ENTRIES) {
                    // Entries past the chunk read offset 0 and are dropped.
                    let mut offs = [0usize; ENTRIES];
                    let mut rows = [0usize; ENTRIES];
                    for ((o, r), &(off, k)) in offs.iter_mut().zip(&mut rows).zip(chunk) {
                        (*o, *r) = (off, k * d.c_out);
                    }
                    let mut b0 = 0;
                    while b0 < blocks {
                        let nbk = BLOCKS.min(blocks - b0);
                        let at = Pixels {
                            pin,
                            pdy,
                            co0: b0 * LANES,
                        };
                        let sums = Sums {
                            acc: &mut *acc,
                            rows,
                            entries: chunk.len(),
                        };
                        kernel.narrow_grad_tile(wave, &at, &offs, nbk, sums);
                        b0 += nbk;
                    }
                }
            }
        });
}

/// The pixels a tile sums over and the output channels it takes.
struct Pixels<'a> {
    /// Grid offset of each pixel's window row (the entry's offset is added).
    pin: &'a [usize],
    /// Offset of each pixel's channels in `dy_t`.
    pdy: &'a [usize],
    /// First output channel of the tile.
    co0: usize,
}

/// Where a tile's sums go: entry `e < entries` continues the sums at
/// `acc[rows[e] + co0..][..blocks·16]`.
struct Sums<'a> {
    acc: &'a mut [f32],
    rows: [usize; ENTRIES],
    entries: usize,
}

impl Kernel {
    /// For each entry `e < sums.entries` and output channel `c < blocks·16` of the tile,
    /// adds to `sums.acc[sums.rows[e] + co0 + c]`, pixel `i` after pixel, in order,
    /// `grids[pin[i] + offs[e]] · dy_t[pdy[i] + co0 + c]` (one fused multiply-add each).
    fn narrow_grad_tile(
        self,
        wave: &Wave,
        at: &Pixels,
        offs: &[usize; ENTRIES],
        blocks: usize,
        sums: Sums,
    ) {
        assert!((1..=BLOCKS).contains(&blocks) && at.pin.len() == at.pdy.len());
        assert!(sums.entries <= ENTRIES);
        let last_row = sums.rows[..sums.entries].iter().max().unwrap_or(&0);
        assert!(sums.entries == 0 || last_row + at.co0 + blocks * LANES <= sums.acc.len());
        let reach = offs.iter().max().unwrap_or(&0) + at.pin.iter().max().unwrap_or(&0);
        assert!(at.pin.is_empty() || reach < wave.grids.len());
        let top = at.pdy.iter().max().unwrap_or(&0) + at.co0 + blocks * LANES;
        assert!(at.pdy.is_empty() || top <= wave.dy_t.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe { avx512::grad_tile(wave, at, offs, blocks, sums) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => unreachable!("detected only on x86-64"),
            #[cfg(test)]
            Kernel::Portable => portable_tile(wave, at, offs, blocks, sums),
        }
    }
}

#[cfg(test)]
fn portable_tile(wave: &Wave, at: &Pixels, offs: &[usize; ENTRIES], blocks: usize, sums: Sums) {
    for (&off, &row) in offs.iter().zip(&sums.rows).take(sums.entries) {
        let acc = &mut sums.acc[row + at.co0..][..blocks * LANES];
        for (&pin, &pdy) in at.pin.iter().zip(at.pdy) {
            let xv = wave.grids[pin + off];
            let dy = &wave.dy_t[pdy + at.co0..][..blocks * LANES];
            for (a, &g) in acc.iter_mut().zip(dy) {
                *a = xv.mul_add(g, *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The portable tile's loops with the accumulators in AVX-512 registers.
    use std::arch::x86_64::*;

    use super::{ENTRIES, LANES, Pixels, Sums, Wave};

    /// See `Kernel::narrow_grad_tile`, which checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad_tile(
        wave: &Wave,
        at: &Pixels,
        offs: &[usize; ENTRIES],
        blocks: usize,
        sums: Sums,
    ) {
        match blocks {
            4 => tile::<4>(wave, at, offs, sums),
            3 => tile::<3>(wave, at, offs, sums),
            2 => tile::<2>(wave, at, offs, sums),
            _ => tile::<1>(wave, at, offs, sums),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn tile<const B: usize>(wave: &Wave, at: &Pixels, offs: &[usize; ENTRIES], sums: Sums) {
        // SAFETY (all blocks below): `rows[e] + co0 + B·16 ≤ acc.len()` for `e < entries`,
        // `pin + offs[e] < grids.len()` and `pdy + co0 + B·16 ≤ dy_t.len()`, checked by
        // the caller. Entries past `entries` start from zero and are not stored.
        let dst: [*mut f32; ENTRIES] =
            std::array::from_fn(|e| unsafe { sums.acc.as_mut_ptr().add(sums.rows[e] + at.co0) });
        let mut acc = [[_mm512_setzero_ps(); B]; ENTRIES];
        for (acc, &dst) in acc.iter_mut().zip(&dst).take(sums.entries) {
            for (b, a) in acc.iter_mut().enumerate() {
                *a = unsafe { _mm512_loadu_ps(dst.add(b * LANES)) };
            }
        }
        for (&pin, &pdy) in at.pin.iter().zip(at.pdy) {
            unsafe {
                let g = wave.grids.as_ptr().add(pin);
                let dy = wave.dy_t.as_ptr().add(pdy + at.co0);
                let dv: [__m512; B] = std::array::from_fn(|b| _mm512_loadu_ps(dy.add(b * LANES)));
                for (acc, &off) in acc.iter_mut().zip(offs) {
                    let xv = _mm512_set1_ps(*g.add(off));
                    for (a, &dv) in acc.iter_mut().zip(&dv) {
                        *a = _mm512_fmadd_ps(xv, dv, *a);
                    }
                }
            }
        }
        for (acc, &dst) in acc.iter().zip(&dst).take(sums.entries) {
            for (b, &a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(dst.add(b * LANES), a) };
            }
        }
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
        let grids = randoms(400, 3);
        let dy_t = randoms(9 * 80, 4);
        let wave = Wave {
            grids: &grids,
            grid_len: 200,
            plane: 40,
            dy_t: &dy_t,
            imgs: 2,
        };
        let pin = [0, 7, 9, 31, 200, 201, 350];
        let pdy = [0, 80, 160, 240, 320, 400, 560];
        let offs = [0, 1, 2, 40, 41, 42];
        // Six rows of 80 sums, starting from random values; a tile of four entries leaves
        // the last two rows alone.
        let start = randoms(6 * 80, 5);
        let rows = [0, 80, 160, 240, 320, 400];
        for entries in [ENTRIES, 4] {
            for blocks in 1..=BLOCKS {
                for co0 in [0, 16] {
                    let at = Pixels {
                        pin: &pin,
                        pdy: &pdy,
                        co0: co0.min(80 - blocks * LANES),
                    };
                    let [mut a, mut b] = [start.clone(), start.clone()];
                    for (kernel, acc) in [(Kernel::Avx512, &mut a), (Kernel::Portable, &mut b)] {
                        let sums = Sums { acc, rows, entries };
                        kernel.narrow_grad_tile(&wave, &at, &offs, blocks, sums);
                    }
                    assert_eq!(a, b, "{entries} entries, {blocks} blocks, from {co0}");
                    assert_ne!(a, start);
                    assert_eq!(
                        a[entries * 80..],
                        start[entries * 80..],
                        "{entries} entries"
                    );
                }
            }
        }
    }

    /// A 3×3 window with padding 1 on 4 rows: kernel row 0 lands inside from output rows
    /// 1–3, row 1 from all four, row 2 from rows 0–2; on one row only the middle one does.
    #[test]
    fn kernel_rows_land_inside_from_the_right_output_rows() {
        let geometry = crate::nn::ops::Conv2dGeometry {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let d = ConvDims::new([1, 2, 4, 5], [16, 2, 3, 3], geometry);
        let rows: Vec<Range<usize>> = (0..3).map(|ky| rows_inside(&d, ky)).collect();
        assert_eq!(rows, [1..4, 0..4, 0..3]);
        let d = ConvDims::new([1, 1, 1, 1], [16, 1, 3, 3], geometry);
        let rows: Vec<Range<usize>> = (0..3).map(|ky| rows_inside(&d, ky)).collect();
        assert_eq!(rows, [1..1, 0..1, 0..0]);
    }
}
