//! Dense stride-1 convolutions on planes 16 or more wide, computed straight from a
//! zero-padded copy of each image with no unfolded (im2col) buffer: the forward (and with it
//! the input gradient, which [`super::conv`] runs as a forward) and the weight gradient.
//!
//! Why: with im2col, a 3×3 layer first writes its input out nine times, then `gemm` copies
//! that into its packed panels again; on ResNet-20 the unfolding, the copies and the zeroing
//! around them took nearly a third of a training step while the multiply-adds took under
//! half. Here the multiply-adds read the image itself.
//!
//! The trick (as for depthwise convolutions in [`super::conv`]): each input plane is copied
//! into a grid `pad` wider on every side. Output `(oy, ox)`'s tap `(ky, kx)` reads the grid
//! at `(oy + ky)·wg + ox + kx`, so sixteen outputs side by side in a row read sixteen grid
//! values side by side: one vector load per channel and tap, shared by four output channels.
//! Rows 16 or 32 wide are whole vectors, written straight into the output; other widths are
//! computed on grid-wide rows (output at `oy·wg + ox`, one run per plane, the columns past
//! `o_w` junk) in a scratch buffer and copied out.
//!
//! The kernels need AVX-512 (see [`Kernel`]); on other CPUs these convolutions keep im2col +
//! `gemm`, whose results differ from these in the last bits (as `gemm`'s own AVX2 and
//! AVX-512 kernels already did, see `bench/RESULTS.md`).
//!
//! Numerics: every output is a chain of fused multiply-adds over `(ci, ky, kx)` in order, and
//! every weight-gradient entry sums sixteen lanes in a fixed order, so results have the same
//! bits with any thread count; a plain-Rust version of the same arithmetic pins this down in
//! tests.

use rayon::prelude::*;

use super::conv::{ConvDims, onto_grid_rows, pad_plane, sized, sum_over_slices, with_scratch};
use super::raw;

/// Floats per vector (one AVX-512 register); the portable kernel uses the same lanes.
const LANES: usize = 16;

/// Output channels one tile computes at once (each weight load feeds `VECS` vectors).
const CO: usize = 4;

/// Vectors of outputs per forward tile: `CO × VECS` accumulators fill 24 of 32 registers.
const VECS: usize = 6;

/// `(ci, ky, kx)` entries per weight-gradient tile: `CO × KT` accumulators.
const KT: usize = 6;

/// Narrowest output these kernels take (narrower ones go to [`super::direct_narrow`] or
/// im2col). Measured per layer (forward + backward, batch 128, best of 7): on 8×8 planes,
/// whose grid rows are 10 wide, a quarter of the work is junk and unfolding won (64→64: 12.7 ms against 15.8; 256→256: 185 against 227); from 16
/// wide the direct kernels won (32→32 on 16×16: 12.3 against 13.8; 64→64 on 28×28, batch
/// 60: 60 against 63).
const MIN_WIDTH: usize = 16;

/// Output vectors per forward task at least: images with small planes are taken together so
/// that each output channel's weights, once in cache, serve this many vectors.
const WAVE_VECS: usize = 48;

/// Floats of images the weight gradient reads per pass (see [`weight_grad`]).
const CHUNK_FLOATS: usize = 1 << 18;

/// The kernel for this convolution, if the direct kernels take it: dense, stride 1, a
/// kernel wider than one tap, outputs at least [`MIN_WIDTH`] wide, on a CPU with AVX-512
/// (see [`Kernel`]).
pub(super) fn kernel_for(d: &ConvDims) -> Option<Kernel> {
    let fits = d.stride == 1 && d.groups == 1 && d.k_h * d.k_w > 1 && d.o_w >= MIN_WIDTH;
    fits.then(Kernel::detect).flatten()
}

/// Where the vectors of one output plane lie: `rows` rows of `vpr` vectors, rows `in_row`
/// floats apart on the grid and `out_row` apart in the output.
#[derive(Clone, Copy, Debug)]
struct Walk {
    rows: usize,
    vpr: usize,
    in_row: usize,
    out_row: usize,
}

impl Walk {
    fn vectors(&self) -> usize {
        self.rows * self.vpr
    }

    /// Grid and output offsets of vector `u`.
    fn at(&self, u: usize) -> (usize, usize) {
        let (r, j) = (u / self.vpr, u % self.vpr * LANES);
        (r * self.in_row + j, r * self.out_row + j)
    }

    /// One past the last grid float and the last output float a plane's vectors touch.
    fn reach(&self) -> (usize, usize) {
        let last = (self.rows - 1, self.vpr * LANES);
        (
            last.0 * self.in_row + last.1,
            last.0 * self.out_row + last.1,
        )
    }
}

/// Where one image's padded planes and outputs lie.
pub(super) struct Layout {
    /// Floats per padded input plane, including what the last vector of the last tap reads.
    pub(super) plane: usize,
    /// Output channels rounded up to whole tiles.
    co_pad: usize,
    /// Grid offset of each `(ci, ky, kx)` entry, in that order.
    pub(super) offs: Vec<usize>,
    /// Outputs straight into the output tensor's rows (`o_w` a whole number of vectors), or
    /// else on grid-wide rows (one run per plane, junk columns and all) in a scratch buffer.
    in_place: bool,
    /// The output plane's vectors.
    walk: Walk,
    /// Floats between output channels in what the kernels write (or read, for `dy`).
    out_plane: usize,
}

impl Layout {
    pub(super) fn new(d: &ConvDims) -> Self {
        let wg = d.grid_width();
        let in_place = d.o_w.is_multiple_of(LANES);
        let (walk, out_plane) = if in_place {
            let walk = Walk {
                rows: d.o_h,
                vpr: d.o_w / LANES,
                in_row: wg,
                out_row: d.o_w,
            };
            (walk, d.o_h * d.o_w)
        } else {
            let q = (d.o_h * wg).div_ceil(LANES) * LANES;
            let walk = Walk {
                rows: 1,
                vpr: q / LANES,
                in_row: 0,
                out_row: 0,
            };
            (walk, q)
        };
        let reach = (d.k_h - 1) * wg + d.k_w - 1;
        let plane = ((d.h + 2 * d.pad) * wg).max(reach + walk.reach().0);
        let mut offs = Vec::with_capacity(d.c_in * d.k_h * d.k_w);
        for ci in 0..d.c_in {
            for ky in 0..d.k_h {
                for kx in 0..d.k_w {
                    offs.push(ci * plane + ky * wg + kx);
                }
            }
        }
        Self {
            plane,
            co_pad: d.c_out.div_ceil(CO) * CO,
            offs,
            in_place,
            walk,
            out_plane,
        }
    }

    /// Copies one image (`[c_in, h, w]`) into its padded planes (`grid`: `c_in · plane`).
    pub(super) fn fill_grid(&self, x: &[f32], d: &ConvDims, grid: &mut [f32]) {
        for (plane, dst) in x
            .chunks_exact(d.h * d.w)
            .zip(grid.chunks_exact_mut(self.plane))
        {
            pad_plane(plane, d, dst);
        }
    }
}

/// `[c_out, kd]` weights regrouped per tile of `block` output channels as `[kd, block]`
/// (zeros past `c_out`, up to `c_pad` channels), so that a tile's weights for one entry are
/// adjacent.
pub(super) fn pack_weight(weight: &[f32], kd: usize, block: usize, c_pad: usize) -> Vec<f32> {
    let mut packed = raw::zeros(c_pad * kd);
    if packed.is_empty() {
        return packed;
    }
    // Tiles in parallel: a 512×4608 weight packed on one thread kept the other idle.
    packed
        .par_chunks_mut(block * kd)
        .zip(weight.par_chunks(block * kd))
        .for_each(|(tile, rows)| {
            for (c, row) in rows.chunks_exact(kd).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    tile[k * block + c] = v;
                }
            }
        });
    packed
}

/// A convolution's output `[n, c_out, o_h, o_w]`, computed in waves of up to `nb` images
/// in parallel: `wave(grids, y, imgs, mat)` gets the wave's images padded side by side
/// (`grids`, `c_in·lay.plane` floats per image), its `imgs` images' outputs `y`, and a spare
/// scratch buffer `mat`. Both direct kernels' forwards run on it.
pub(super) fn in_waves(
    x: &[f32],
    d: &ConvDims,
    lay: &Layout,
    nb: usize,
    wave: impl Fn(&[f32], &mut [f32], usize, &mut Vec<f32>) + Sync,
) -> Vec<f32> {
    let (img_in, img_out) = (d.c_in * d.h * d.w, d.c_out * d.o_h * d.o_w);
    let mut y = raw::zeros(d.n * img_out);
    if y.is_empty() {
        return y;
    }
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
                wave(grids, y, imgs, &mut s.mat);
            })
        });
    y
}

/// `y = conv(x, weight)` (no bias), `[n, c_out, o_h, o_w]`, a few images per task (see
/// [`WAVE_VECS`]).
pub(super) fn forward(kernel: Kernel, x: &[f32], weight: &[f32], d: &ConvDims) -> Vec<f32> {
    let lay = Layout::new(d);
    let packed = pack_weight(weight, lay.offs.len(), CO, lay.co_pad);
    let img_out = d.c_out * d.o_h * d.o_w;
    let nb = WAVE_VECS
        .div_ceil(lay.walk.vectors().max(1))
        .clamp(1, d.n.max(1));
    in_waves(x, d, &lay, nb, |grids, y, imgs, mat| {
        if lay.in_place {
            forward_wave(kernel, grids, &packed, &lay, imgs, (y, img_out), d.c_out);
            return;
        }
        let out_img = d.c_out * lay.out_plane;
        let out = sized(mat, imgs * out_img);
        forward_wave(kernel, grids, &packed, &lay, imgs, (out, out_img), d.c_out);
        for (y, out) in y.chunks_exact_mut(img_out).zip(out.chunks_exact(out_img)) {
            for (co, y) in y.chunks_exact_mut(d.o_h * d.o_w).enumerate() {
                for (oy, row) in y.chunks_exact_mut(d.o_w).enumerate() {
                    let src = &out[co * lay.out_plane + oy * d.grid_width()..][..d.o_w];
                    row.copy_from_slice(src);
                }
            }
        }
    })
}

/// The `channels` output planes of `imgs` images (padded planes side by side in `grids`)
/// into `out`, each image's `out.1` floats apart and its channels `lay.out_plane` apart.
///
/// Output channels outermost: a tile's weights stay in the nearest cache while it sweeps the
/// wave's images, instead of every image streaming all of a wide layer's weights again.
fn forward_wave(
    kernel: Kernel,
    grids: &[f32],
    packed: &[f32],
    lay: &Layout,
    imgs: usize,
    (out, out_img): (&mut [f32], usize),
    channels: usize,
) {
    let (kd, per_img) = (lay.offs.len(), lay.walk.vectors());
    let grid_len = grids.len() / imgs;
    let (pin, pout): (Vec<usize>, Vec<usize>) = (0..imgs * per_img)
        .map(|u| {
            let (i, o) = lay.walk.at(u % per_img);
            let img = u / per_img;
            (img * grid_len + i, img * out_img + o)
        })
        .unzip();
    for (tile, w) in packed.chunks_exact(CO * kd).enumerate() {
        let c0 = tile * CO;
        let dst = &mut out[c0 * lay.out_plane..];
        for (pin, pout) in pin.chunks(VECS).zip(pout.chunks(VECS)) {
            let at = Tile {
                pin,
                pout,
                channels: CO.min(channels - c0),
            };
            kernel.forward_tile(&at, grids, &lay.offs, w, dst, lay.out_plane);
        }
    }
}

/// `dL/dweight` (`[c_out, c_in, k_h, k_w]`) from `x` and `dy`.
///
/// The batch is cut into `parts` slices (set by [`super::conv`] from the shapes alone, never
/// the thread count, to bound the partials' memory), each slice into chunks of images read
/// in one pass. Within a chunk every entry sums its products in sixteen lanes, images and
/// positions in order; the lanes are then added in a fixed order into the slice's partial
/// gradient, and the partials are added in slice order.
pub(super) fn weight_grad(
    kernel: Kernel,
    x: &[f32],
    dy: &[f32],
    d: &ConvDims,
    parts: usize,
) -> Vec<f32> {
    let lay = Layout::new(d);
    let kd = lay.offs.len();
    let dy_copy = if lay.in_place {
        0
    } else {
        d.c_out * lay.out_plane
    };
    let chunk = (CHUNK_FLOATS / (d.c_in * lay.plane + dy_copy)).clamp(1, d.n);
    let (img_in, img_out) = (d.c_in * d.h * d.w, d.c_out * d.o_h * d.o_w);
    sum_over_slices(d.n, parts, |slice| {
        let mut acc = vec![0f32; d.c_out * kd];
        let mut start = slice.start;
        while start < slice.end {
            let imgs = chunk.min(slice.end - start);
            with_scratch(|s| {
                let grid_len = d.c_in * lay.plane;
                let grids = sized(&mut s.col, imgs * grid_len);
                for (i, grid) in grids.chunks_exact_mut(grid_len).enumerate() {
                    lay.fill_grid(&x[(start + i) * img_in..][..img_in], d, grid);
                }
                let dy = &dy[start * img_out..][..imgs * img_out];
                let (dys, dy_len) = if lay.in_place {
                    (dy, img_out)
                } else {
                    let rows = sized(&mut s.mat, imgs * dy_copy);
                    for (dy, rows) in dy.chunks_exact(img_out).zip(rows.chunks_exact_mut(dy_copy)) {
                        grid_rows(dy, d, &lay, rows);
                    }
                    (&*rows, dy_copy)
                };
                let chunk = Chunk {
                    grids,
                    grid_len,
                    dys,
                    dy_len,
                    imgs,
                };
                weight_grad_chunk(kernel, &chunk, d.c_out, &lay, &mut acc);
            });
            start += imgs;
        }
        acc
    })
}

/// One image's `dy` (`[c_out, o_h, o_w]`) on grid-wide rows (`lay.out_plane` per channel),
/// zero wherever there is no output (junk columns, the rounding).
fn grid_rows(dy: &[f32], d: &ConvDims, lay: &Layout, rows: &mut [f32]) {
    let valid = d.o_h * d.grid_width();
    for (plane, dst) in dy
        .chunks_exact(d.o_h * d.o_w)
        .zip(rows.chunks_exact_mut(lay.out_plane))
    {
        onto_grid_rows(plane, d, dst);
        dst[valid..].fill(0.0);
    }
}

/// Images the weight gradient reads in one pass: their padded planes (`grid_len` each) and
/// their output gradients (`dy_len` each, channels `lay.out_plane` apart).
struct Chunk<'a> {
    grids: &'a [f32],
    grid_len: usize,
    dys: &'a [f32],
    dy_len: usize,
    imgs: usize,
}

/// Adds one chunk's weight gradient into `acc` (`[c_out, kd]`).
fn weight_grad_chunk(kernel: Kernel, chunk: &Chunk, c_out: usize, lay: &Layout, acc: &mut [f32]) {
    let kd = lay.offs.len();
    // Entries past `kd` read offset 0, channels past `c_out` channel 0; both are dropped.
    let mut offs = [0usize; KT];
    for co0 in (0..c_out).step_by(CO) {
        let cn = CO.min(c_out - co0);
        let chans = std::array::from_fn(|c| if c < cn { (co0 + c) * lay.out_plane } else { 0 });
        for k0 in (0..kd).step_by(KT) {
            let kt = KT.min(kd - k0);
            offs[..kt].copy_from_slice(&lay.offs[k0..k0 + kt]);
            offs[kt..].fill(0);
            let sums = kernel.weight_grad_tile(chunk, &chans, &lay.walk, &offs);
            for (c, sums) in sums.iter().enumerate().take(cn) {
                let dst = &mut acc[(co0 + c) * kd + k0..][..kt];
                for (a, s) in dst.iter_mut().zip(sums) {
                    *a += s;
                }
            }
        }
    }
}

#[cfg(test)]
/// Sums sixteen lanes pairwise: lane `i` gains lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`
/// (the AVX-512 kernel's shuffles add the same pairs, sixteen sums at a time).
fn sum_lanes(v: &[f32; LANES]) -> f32 {
    let mut w = *v;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

/// The output vectors one forward tile computes: grid offsets `pin`, output offsets
/// `pout`, and how many of the tile's [`CO`] channels to store.
struct Tile<'a> {
    pin: &'a [usize],
    pout: &'a [usize],
    channels: usize,
}

/// Which kernel runs. Only CPUs with AVX-512 get one: there the kernels beat im2col +
/// `gemm` (see `bench/RESULTS.md`), while elsewhere `gemm`'s AVX2 kernels are the fast way
/// and the convolutions keep it. `Portable`, the same arithmetic in plain Rust (fifty times
/// slower than the AVX-512 kernel), is the kernels' definition in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Kernel {
    /// AVX-512 registers (x86-64 with `avx512f`).
    Avx512,
    /// Plain Rust with fused multiply-adds, lane by lane.
    #[cfg(test)]
    Portable,
}

impl Kernel {
    /// The kernel this CPU runs, if any.
    pub(super) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Kernel::Avx512);
        }
        None
    }

    /// For the tile's channels `c` and vectors `v`, lanes `l` (`offs` rising):
    /// `dst[c·ld + pout[v] + l] = Σ_k w[k·CO + c] · grid[offs[k] + pin[v] + l]`.
    fn forward_tile(
        self,
        at: &Tile,
        grid: &[f32],
        offs: &[usize],
        w: &[f32],
        dst: &mut [f32],
        ld: usize,
    ) {
        let max = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
        assert!((1..=VECS).contains(&at.pin.len()) && at.pin.len() == at.pout.len());
        assert!((1..=CO).contains(&at.channels) && w.len() >= offs.len() * CO);
        // `offs` rise (see `Layout::new`): the last is the largest.
        debug_assert!(offs.is_sorted());
        assert!(offs.last().unwrap_or(&0) + max(at.pin) + LANES <= grid.len());
        assert!((at.channels - 1) * ld + max(at.pout) + LANES <= dst.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe { avx512::forward_tile(at, grid, offs, w, dst, ld) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => unreachable!("detected only on x86-64"),
            #[cfg(test)]
            Kernel::Portable => portable::forward_tile(at, grid, offs, w, dst, ld),
        }
    }

    /// For channel `c` of the tile (output-gradient plane at `chans[c]` of each image) and
    /// entry `t`: `Σ_images Σ_vectors dy[chans[c] + out] · grid[offs[t] + in]`, summed per lane
    /// then across lanes.
    fn weight_grad_tile(
        self,
        chunk: &Chunk,
        chans: &[usize; CO],
        walk: &Walk,
        offs: &[usize; KT],
    ) -> [[f32; KT]; CO] {
        let (reach_in, reach_out) = walk.reach();
        let max = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
        assert!(chunk.imgs >= 1 && walk.vectors() >= 1);
        assert!(max(offs) + reach_in <= chunk.grid_len);
        assert!(chunk.grids.len() >= chunk.imgs * chunk.grid_len);
        assert!(max(chans) + reach_out <= chunk.dy_len);
        assert!(chunk.dys.len() >= chunk.imgs * chunk.dy_len);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` saw avx512f; the asserts above bound every access.
            Kernel::Avx512 => unsafe { avx512::weight_grad_tile(chunk, chans, walk, offs) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512 => unreachable!("detected only on x86-64"),
            #[cfg(test)]
            Kernel::Portable => portable::weight_grad_tile(chunk, chans, walk, offs)
                .map(|row| row.map(|v| sum_lanes(&v))),
        }
    }
}

#[cfg(test)]
mod portable {
    //! The kernels' arithmetic in plain Rust, lane by lane.
    use super::{CO, Chunk, KT, LANES, Tile, VECS, Walk};

    pub(super) fn forward_tile(
        at: &Tile,
        grid: &[f32],
        offs: &[usize],
        w: &[f32],
        dst: &mut [f32],
        ld: usize,
    ) {
        let mut acc = [[[0f32; LANES]; VECS]; CO];
        for (k, &o) in offs.iter().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                let wv = w[k * CO + c];
                for (acc, &pin) in acc.iter_mut().zip(at.pin) {
                    let x = &grid[o + pin..][..LANES];
                    for (a, &xv) in acc.iter_mut().zip(x) {
                        *a = wv.mul_add(xv, *a);
                    }
                }
            }
        }
        for (c, acc) in acc.iter().enumerate().take(at.channels) {
            for (acc, &pout) in acc.iter().zip(at.pout) {
                dst[c * ld + pout..][..LANES].copy_from_slice(acc);
            }
        }
    }

    pub(super) fn weight_grad_tile(
        chunk: &Chunk,
        chans: &[usize; CO],
        walk: &Walk,
        offs: &[usize; KT],
    ) -> [[[f32; LANES]; KT]; CO] {
        let mut acc = [[[0f32; LANES]; KT]; CO];
        for img in 0..chunk.imgs {
            let grid = &chunk.grids[img * chunk.grid_len..][..chunk.grid_len];
            let dy = &chunk.dys[img * chunk.dy_len..][..chunk.dy_len];
            for u in 0..walk.vectors() {
                let (pin, pout) = walk.at(u);
                for (acc, &ch) in acc.iter_mut().zip(chans) {
                    let g = &dy[ch + pout..][..LANES];
                    for (acc, &o) in acc.iter_mut().zip(offs) {
                        let x = &grid[o + pin..][..LANES];
                        for l in 0..LANES {
                            acc[l] = g[l].mul_add(x[l], acc[l]);
                        }
                    }
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The portable kernels' loops with the accumulators in AVX-512 registers.
    use std::arch::x86_64::*;

    use super::{CO, Chunk, KT, LANES, Tile, Walk};

    /// See `Kernel::forward_tile`, which checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_tile(
        at: &Tile,
        grid: &[f32],
        offs: &[usize],
        w: &[f32],
        dst: &mut [f32],
        ld: usize,
    ) {
        match at.pin.len() {
            6 => tile::<6>(at, grid, offs, w, dst, ld),
            5 => tile::<5>(at, grid, offs, w, dst, ld),
            4 => tile::<4>(at, grid, offs, w, dst, ld),
            3 => tile::<3>(at, grid, offs, w, dst, ld),
            2 => tile::<2>(at, grid, offs, w, dst, ld),
            1 => tile::<1>(at, grid, offs, w, dst, ld),
            n => unreachable!("{n} vectors"),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn tile<const V: usize>(
        at: &Tile,
        grid: &[f32],
        offs: &[usize],
        w: &[f32],
        dst: &mut [f32],
        ld: usize,
    ) {
        let wp = w.as_ptr();
        // SAFETY (all blocks below): `offs[k] + pin[v] + LANES ≤ grid.len()`,
        // `(k + 1)·CO ≤ w.len()` and `(c)·ld + pout[v] + LANES ≤ dst.len()` for the stored
        // channels, checked by the caller.
        let base: [*const f32; V] =
            std::array::from_fn(|v| unsafe { grid.as_ptr().add(at.pin[v]) });
        let mut acc = [[_mm512_setzero_ps(); V]; CO];
        for (k, &o) in offs.iter().enumerate() {
            unsafe {
                let x: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(base[v].add(o)));
                for (c, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wp.add(k * CO + c));
                    for (a, &x) in acc.iter_mut().zip(&x) {
                        *a = _mm512_fmadd_ps(wv, x, *a);
                    }
                }
            }
        }
        let d = dst.as_mut_ptr();
        for (c, acc) in acc.iter().enumerate().take(at.channels) {
            for (&a, &pout) in acc.iter().zip(at.pout) {
                unsafe { _mm512_storeu_ps(d.add(c * ld + pout), a) };
            }
        }
    }

    /// See `Kernel::weight_grad_tile`, which checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad_tile(
        chunk: &Chunk,
        chans: &[usize; CO],
        walk: &Walk,
        offs: &[usize; KT],
    ) -> [[f32; KT]; CO] {
        let mut acc = [[_mm512_setzero_ps(); KT]; CO];
        for img in 0..chunk.imgs {
            // SAFETY: every index below is under `imgs·grid_len` or `imgs·dy_len`
            // (`offs[t] + reach_in ≤ grid_len`, `chans[c] + reach_out ≤ dy_len`), checked
            // by the caller.
            unsafe {
                let g = chunk.grids.as_ptr().add(img * chunk.grid_len);
                let r = chunk.dys.as_ptr().add(img * chunk.dy_len);
                for row in 0..walk.rows {
                    let (gr, rr) = (g.add(row * walk.in_row), r.add(row * walk.out_row));
                    for j in (0..walk.vpr * LANES).step_by(LANES) {
                        let dy: [__m512; CO] =
                            std::array::from_fn(|c| _mm512_loadu_ps(rr.add(chans[c] + j)));
                        for t in 0..KT {
                            let x = _mm512_loadu_ps(gr.add(offs[t] + j));
                            for (acc, &dy) in acc.iter_mut().zip(&dy) {
                                acc[t] = _mm512_fmadd_ps(dy, x, acc[t]);
                            }
                        }
                    }
                }
            }
        }
        reduce(&acc)
    }

    /// Each accumulator's lane sum. Kept out of line: inlined, it made the compiler keep
    /// the accumulators of the loop above in memory rather than registers (2× slower).
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn reduce(acc: &[[__m512; KT]; CO]) -> [[f32; KT]; CO] {
        let [a, b, c, d] = *acc;
        let z = _mm512_setzero_ps();
        let first = sum16([
            a[0], a[1], a[2], a[3], a[4], a[5], b[0], b[1], b[2], b[3], b[4], b[5], c[0], c[1],
            c[2], c[3],
        ]);
        let rest = sum16([
            c[4], c[5], d[0], d[1], d[2], d[3], d[4], d[5], z, z, z, z, z, z, z, z,
        ]);
        std::array::from_fn(|c| {
            std::array::from_fn(|t| {
                let i = c * KT + t;
                let (lanes, i) = if i < 16 { (&first, i) } else { (&rest, i - 16) };
                lanes[4 * (i % 4) + i / 4]
            })
        })
    }

    /// The lane sums of sixteen vectors (the pairs of `sum_lanes`), vector `i`'s in lane
    /// `4·(i mod 4) + i / 4`: each step adds two halves of two vectors in one instruction.
    #[target_feature(enable = "avx512f")]
    fn sum16(v: [__m512; 16]) -> [f32; LANES] {
        // Lane i + 8 onto i: vectors (2i, 2i+1) → 8 sums each, side by side.
        let p: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        });
        // Lane i + 4 onto i: four vectors' 4 sums per result, one per 128-bit block.
        let q: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (p[2 * i], p[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        });
        // Lane i + 2 onto i, then i + 1 onto i, within each 128-bit block.
        let r: [__m512; 2] = std::array::from_fn(|i| {
            let (a, b) = (q[2 * i], q[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        });
        let s = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(r[0], r[1]),
            _mm512_shuffle_ps::<0xDD>(r[0], r[1]),
        );
        let mut out = [0f32; LANES];
        // SAFETY: `out` is sixteen floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), s) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::tests::randoms;

    #[test]
    fn vector_and_portable_kernels_give_the_same_bits() {
        if Kernel::detect() != Some(Kernel::Avx512) {
            return;
        }
        let offs: Vec<usize> = (0..37).map(|k| k * 3 + k % 2).collect();
        let grid = randoms(400, 1);
        let w = randoms(37 * CO, 2);
        let pin = [0, 70, 3, 140, 17, 99];
        let pout = [40, 0, 90, 20, 150, 120];
        let ld = 170;
        for vecs in 1..=VECS {
            for channels in [CO, 1] {
                let at = Tile {
                    pin: &pin[..vecs],
                    pout: &pout[..vecs],
                    channels,
                };
                let (mut a, mut b) = (vec![7f32; CO * ld], vec![7f32; CO * ld]);
                Kernel::Avx512.forward_tile(&at, &grid, &offs, &w, &mut a, ld);
                Kernel::Portable.forward_tile(&at, &grid, &offs, &w, &mut b, ld);
                assert_eq!(a, b, "forward, {vecs} vectors, {channels} channels");
                let written = a.iter().filter(|&&v| v != 7.0).count();
                assert_eq!(written, vecs * LANES * channels, "only the tile is written");
            }
        }
        // Two rows of two vectors, rows 40 apart on the grid and 35 apart in `dy`.
        let walk = Walk {
            rows: 2,
            vpr: 2,
            in_row: 40,
            out_row: 35,
        };
        let (grid_len, dy_len) = (160, 200);
        let grids = randoms(3 * grid_len, 3);
        let dys = randoms(3 * dy_len, 4);
        let chunk = Chunk {
            grids: &grids,
            grid_len,
            dys: &dys,
            dy_len,
            imgs: 3,
        };
        let offs = [0, 5, 17, 40, 88, 1];
        let chans = [0, 67, 1, 133];
        let a = Kernel::Avx512.weight_grad_tile(&chunk, &chans, &walk, &offs);
        let b = Kernel::Portable.weight_grad_tile(&chunk, &chans, &walk, &offs);
        assert_eq!(a, b, "weight gradient");
    }
}
