//! The forward of dense stride-1 convolutions on planes narrower than [`super::direct`]
//! takes (VGG's and ResNet's 8×8, 4×4 and 2×2 layers), with vectors along output channels.
//! Their weight gradient is [`super::narrow_weight_grad`]'s.
//!
//! Why a second kernel: on a narrow plane a vector along the row covers junk columns of the
//! padded grid (a quarter of the work on 8×8), and unfolding (im2col) costs a copy nine
//! times the input. Here a vector holds sixteen output channels of one pixel: each step
//! broadcasts one input value per pixel of the tile from the padded grid and multiplies it by
//! the weights of those channels, so there is no junk and no copy of the input beyond the
//! padding. Output channels must come in whole vectors (the dense 3×3 layers of the ResNets,
//! VGGs and Conv-N after their first have 16, 32, 64 or more).
//!
//! Window taps that fall in the padding are skipped, not multiplied by zero: output
//! positions are grouped by which taps land inside the image ([`WindowClass`]: corners,
//! edges, the inside), and a tile takes pixels of one class (from one image or the next
//! few). On a 3×3 window with padding 1 that is 16% of the work on an 8×8 plane, 31% on 4×4,
//! 56% on 2×2. The taps inside form one run of columns per kernel row ([`Segment`]), so the
//! kernel finds each tap's weights by counting, without an index per tap (which cost a fifth
//! of the kernel's speed when tried). Skipping a zero product leaves every sum as it was.
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

/// Output positions whose window has the same taps inside the image, and those taps as one
/// segment per kernel row.
pub(super) struct WindowClass {
    /// Output positions `oy·o_w + ox` of the class, rising.
    positions: Vec<usize>,
    /// The taps inside, per input channel.
    segs: Vec<Segment>,
}

/// Taps `kx0..kx0 + len` of kernel row `ky`: grid offsets `grid + j` from the channel's plane,
/// weight entries `entry + j` within the channel's `k_h·k_w` (`grid = ky·wg + kx0`,
/// `entry = ky·k_w + kx0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    grid: usize,
    entry: usize,
    len: usize,
}

impl WindowClass {
    /// The classes of a stride-1 convolution's output positions (nine for a 3×3 kernel with
    /// padding 1 on a plane at least 3 high and wide: four corners, four edges, the rest).
    pub(super) fn of(d: &ConvDims) -> Vec<WindowClass> {
        // Taps `k` along one axis inside an input `len` long for output position `o`.
        let inside = |o: usize, len: usize, k: usize| {
            d.pad.saturating_sub(o)..(len + d.pad).saturating_sub(o).min(k)
        };
        let mut classes: Vec<WindowClass> = Vec::new();
        for q in 0..d.o_h * d.o_w {
            let xs = inside(q % d.o_w, d.w, d.k_w);
            let segs: Vec<Segment> = inside(q / d.o_w, d.h, d.k_h)
                .map(|ky| Segment {
                    grid: ky * d.grid_width() + xs.start,
                    entry: ky * d.k_w + xs.start,
                    len: xs.len(),
                })
                .collect();
            match classes.iter_mut().find(|c| c.segs == segs) {
                Some(class) => class.positions.push(q),
                None => classes.push(WindowClass {
                    positions: vec![q],
                    segs,
                }),
            }
        }
        classes
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
    let classes = WindowClass::of(d);
    let p = d.o_h * d.o_w;
    let img_out = d.c_out * p;
    let grid_len = d.c_in * lay.plane;
    let nb = WAVE_PIXELS.div_ceil(p.max(1)).clamp(1, d.n.max(1));
    in_waves(x, d, &lay, nb, |grids, y, imgs, _| {
        for class in &classes {
            // Each output pixel of the class: where its window starts on the grids, where it
            // goes in `y`.
            let (pin, pout): (Vec<usize>, Vec<usize>) = (0..imgs)
                .flat_map(|img| class.positions.iter().map(move |&q| (img, q)))
                .map(|(img, q)| {
                    let at = img * grid_len + (q / d.o_w) * d.grid_width() + q % d.o_w;
                    (at, img * img_out + q)
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
    /// channels `ci`, the class's segments and their taps `j`, in that order, of
    /// `grid[pin[i] + ci·plane + seg.grid + j] · w[(c / 16)·kd·16 + (ci·kk + seg.entry + j)·16 + c mod 16]`
    /// (`kk = kd / c_in`).
    pub(super) fn narrow_tile(
        self,
        ops: Operands,
        pin: &[usize],
        class: &WindowClass,
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
        let kk = kd / c_in;
        assert!(class.segs.iter().all(|s| s.entry + s.len <= kk));
        let last = class.segs.iter().map(|s| s.grid + s.len).max().unwrap_or(1);
        let reach = (c_in - 1) * plane + last.max(1) - 1;
        assert!(reach + pin.iter().max().unwrap_or(&0) < grids.len());
        let t = Taps {
            plane,
            c_in,
            kk,
            kd,
            segs: &class.segs,
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
    segs: &'a [Segment],
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
        for seg in t.segs {
            for j in 0..seg.len {
                let k = ci * t.kk + seg.entry + j;
                for (acc, &at) in acc.iter_mut().zip(pin) {
                    let xv = grids[at + ci * t.plane + seg.grid + j];
                    for b in 0..blocks {
                        let wv = &w[(b * t.kd + k) * LANES..][..LANES];
                        for (a, &wv) in acc[b * LANES..][..LANES].iter_mut().zip(wv) {
                            *a = xv.mul_add(wv, *a);
                        }
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
        // Every tile size has its own loop: with the taps cut at the edges, the classes of
        // corners and edges leave tiles of any size (7×7 planes, six images a wave: corner
        // tiles of 6, edge tiles of 8, 8, 8, 6).
        match pin.len() {
            PIX => by_blocks::<PIX>(grids, pin, t, w, blocks),
            7 => by_blocks::<7>(grids, pin, t, w, blocks),
            6 => by_blocks::<6>(grids, pin, t, w, blocks),
            5 => by_blocks::<5>(grids, pin, t, w, blocks),
            4 => by_blocks::<4>(grids, pin, t, w, blocks),
            3 => by_blocks::<3>(grids, pin, t, w, blocks),
            2 => by_blocks::<2>(grids, pin, t, w, blocks),
            _ => by_blocks::<1>(grids, pin, t, w, blocks),
        }
    }

    #[target_feature(enable = "avx512f")]
    fn by_blocks<const P: usize>(
        grids: &[f32],
        pin: &[usize],
        t: &Taps,
        w: &[f32],
        blocks: usize,
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        match blocks {
            3 => tile::<P, 3>(grids, pin, t, w),
            2 => tile::<P, 2>(grids, pin, t, w),
            _ => tile::<P, 1>(grids, pin, t, w),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn tile<const P: usize, const B: usize>(
        grids: &[f32],
        pin: &[usize],
        t: &Taps,
        w: &[f32],
    ) -> [[f32; BLOCKS * LANES]; PIX] {
        // SAFETY (all blocks below): `pin[i] + ci·plane + seg.grid + j < grids.len()` and
        // `(b·kd + ci·kk + seg.entry + j + 1)·LANES ≤ w.len()`, checked by the caller.
        let base: [*const f32; P] = std::array::from_fn(|i| unsafe { grids.as_ptr().add(pin[i]) });
        let stride = t.kd * LANES;
        let mut acc = [[_mm512_setzero_ps(); B]; P];
        for ci in 0..t.c_in {
            let g = ci * t.plane;
            let wc = unsafe { w.as_ptr().add(ci * t.kk * LANES) };
            for seg in t.segs {
                for j in 0..seg.len {
                    unsafe {
                        let wk = wc.add((seg.entry + j) * LANES);
                        let wv: [__m512; B] =
                            std::array::from_fn(|b| _mm512_loadu_ps(wk.add(b * stride)));
                        let r = g + seg.grid + j;
                        for (acc, base) in acc.iter_mut().zip(&base) {
                            let xv = _mm512_set1_ps(*base.add(r));
                            for (a, &wv) in acc.iter_mut().zip(&wv) {
                                *a = _mm512_fmadd_ps(xv, wv, *a);
                            }
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
        // 5 channels of 9 entries; a corner's taps (kernel rows 1 and 2, columns 1 and 2,
        // grid rows 6 wide), planes of 30.
        let class = WindowClass {
            positions: Vec::new(),
            segs: vec![
                Segment {
                    grid: 7,
                    entry: 4,
                    len: 2,
                },
                Segment {
                    grid: 13,
                    entry: 7,
                    len: 2,
                },
            ],
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
        for n in 1..=PIX {
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

    /// A 3×3 window with padding 1 on a plane 4 high and 5 wide: nine classes (corners,
    /// edges, the inside), each with the kernel rows and columns inside the image. On a 2×2
    /// plane each position is a corner with four taps; on 1×1 only the centre tap is inside.
    #[test]
    fn window_classes_keep_the_taps_inside_the_image() {
        let geometry = crate::nn::ops::Conv2dGeometry {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let seg = |grid, entry, len| Segment { grid, entry, len };
        let d = ConvDims::new([1, 2, 4, 5], [16, 2, 3, 3], geometry);
        let wg = d.grid_width();
        let classes = WindowClass::of(&d);
        let positions: Vec<Vec<usize>> = classes.iter().map(|c| c.positions.clone()).collect();
        let expected: [&[usize]; 9] = [
            &[0],
            &[1, 2, 3],
            &[4],
            &[5, 10],
            &[6, 7, 8, 11, 12, 13],
            &[9, 14],
            &[15],
            &[16, 17, 18],
            &[19],
        ];
        assert_eq!(positions, expected);
        // Top-left corner: rows 1–2, columns 1–2; the inside: everything; bottom-right:
        // rows 0–1, columns 0–1.
        assert_eq!(classes[0].segs, [seg(wg + 1, 4, 2), seg(2 * wg + 1, 7, 2)]);
        assert_eq!(
            classes[4].segs,
            [seg(0, 0, 3), seg(wg, 3, 3), seg(2 * wg, 6, 3)]
        );
        assert_eq!(classes[8].segs, [seg(0, 0, 2), seg(wg, 3, 2)]);

        let d = ConvDims::new([1, 1, 2, 2], [16, 1, 3, 3], geometry);
        let wg = d.grid_width();
        let classes = WindowClass::of(&d);
        let segs: Vec<(Vec<usize>, Vec<Segment>)> =
            classes.into_iter().map(|c| (c.positions, c.segs)).collect();
        assert_eq!(
            segs,
            [
                (vec![0], vec![seg(wg + 1, 4, 2), seg(2 * wg + 1, 7, 2)]),
                (vec![1], vec![seg(wg, 3, 2), seg(2 * wg, 6, 2)]),
                (vec![2], vec![seg(1, 1, 2), seg(wg + 1, 4, 2)]),
                (vec![3], vec![seg(0, 0, 2), seg(wg, 3, 2)]),
            ]
        );

        let d = ConvDims::new([1, 1, 1, 1], [16, 1, 3, 3], geometry);
        let wg = d.grid_width();
        let classes = WindowClass::of(&d);
        assert_eq!(classes.len(), 1);
        assert_eq!(classes[0].segs, [seg(wg + 1, 4, 1)]);
    }
}
