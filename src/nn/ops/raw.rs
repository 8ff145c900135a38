//! Plain `f32` buffers in and out of Flex's tensor primitive, and the small numeric helpers
//! the kernels share (a matrix product and sums whose rounding does not depend on threads).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use rayon::prelude::*;

/// A Flex tensor's primitive, for a kernel.
pub(crate) fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// A kernel's result as a tensor.
pub(crate) fn tensor<const D: usize>(p: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Whether the kernels handle this tensor (they are written for `f32`; other element types
/// take burn's generic operations).
pub(crate) fn is_f32(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32
}

/// The tensor's elements in row-major order. Copies only when the tensor is a strided view.
pub(crate) struct Dense(FlexTensor);

impl Dense {
    pub(crate) fn new(t: &FlexTensor) -> Self {
        Dense(t.to_contiguous())
    }

    pub(crate) fn f32s(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("an f32 tensor made contiguous is an f32 slice")
    }
}

/// A contiguous `f32` tensor of `shape` over `data`, without copying.
pub(crate) fn from_vec(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

/// A contiguous `f32` tensor shaped like `like` over `data`, without copying.
pub(crate) fn from_vec_like(data: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, like.shape()))
}

/// The four dimensions of a rank-4 primitive.
pub(crate) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// One operand of [`matmul`]: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub(crate) fn rows(data: &'a [f32], rs: usize) -> Self {
        Mat { data, rs, cs: 1 }
    }

    /// The transpose of a row-major matrix with row stride `rs`.
    pub(crate) fn transposed(data: &'a [f32], rs: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: rs,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`, or `dst += …` with `accumulate`; `dst` is row-major with
/// row stride `dst_rs`.
///
/// Threads inside the product (`threaded`) change only who computes which block of `dst`:
/// each element's sum runs over `k` in blocks fixed by the cache sizes, so the bits are the
/// same with any number of threads (checked in the tests).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    threaded: bool,
) {
    let dst = MatMut {
        data: dst,
        rs: dst_rs,
        cs: 1,
    };
    matmul_into(m, n, k, dst, accumulate, lhs, rhs, threaded);
}

/// A destination of [`matmul_into`]: element `(i, j)` is `data[i·rs + j·cs]`.
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
    pub cs: usize,
}

/// [`matmul`] into a destination of any layout. `gemm` computes blocks of `dst` along its
/// contiguous direction, and wants the matching operand contiguous along the same direction
/// (else it copies that operand into a packed buffer first): choosing `dst`'s layout chooses
/// which operand may stay where it is.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut<'_>,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    threaded: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let out = Mat {
        data: &*dst.data,
        rs: dst.rs,
        cs: dst.cs,
    };
    assert!(
        out.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n),
        "matmul operands smaller than their shapes"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threaded {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above keeps every element gemm reads or writes inside the three
    // slices; `dst` is borrowed mutably, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `len` zeros, written by every thread: a kernel's output zeroed by one thread (`vec!`)
/// left the others idle while it filled an activation-sized buffer. Small buffers stay on
/// one thread.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < 1 << 16 {
        return vec![0.0; len];
    }
    let mut v = Vec::new();
    (0..len)
        .into_par_iter()
        .map(|_| 0f32)
        .collect_into_vec(&mut v);
    v
}

/// `out[i] = f(a[i], b[i])` for every `i` (`a` and `b` equally long), in chunks of `chunk`
/// elements in parallel, `f = per_chunk(chunk index)`, into a new vector that is not zeroed
/// first: on activation-sized buffers a serial zero fill cost as much as a parallel pass.
pub(crate) fn par_zip_map<F: Fn(f32, f32) -> f32>(
    a: &[f32],
    b: &[f32],
    chunk: usize,
    per_chunk: impl Fn(usize) -> F + Sync,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "par_zip_map: operands differ in length");
    let (len, chunk) = (a.len(), chunk.max(1));
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, part)| {
            let f = per_chunk(i);
            let (a, b) = (&a[i * chunk..][..part.len()], &b[i * chunk..][..part.len()]);
            for ((o, &x), &y) in part.iter_mut().zip(a).zip(b) {
                o.write(f(x, y));
            }
        });
    // SAFETY: the chunks cover `0..len` and the loop above writes every element of each.
    unsafe { out.set_len(len) };
    out
}

/// Lanes of the sums below: independent partial sums let the compiler use vector registers
/// without reordering anything, so the result is the same on every CPU and thread count.
const LANES: usize = 8;

/// `Σ xs` in `f64`, from `f32` partial sums over lanes.
pub(crate) fn sum(xs: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (tail, _) = add_chunks(&mut acc, xs, xs, |x, _| x);
    lanes_total(&acc, tail.iter().copied())
}

/// `Σ a·b` in `f64`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (ta, tb) = add_chunks(&mut acc, a, b, |x, y| x * y);
    lanes_total(&acc, ta.iter().zip(tb).map(|(x, y)| x * y))
}

/// Adds `term(a[i], b[i])` into lane `i mod LANES` for the whole chunks of `a` and `b`
/// (equally long), and returns the two tails left over.
fn add_chunks<'a>(
    acc: &mut [f32; LANES],
    a: &'a [f32],
    b: &'a [f32],
    term: impl Fn(f32, f32) -> f32,
) -> (&'a [f32], &'a [f32]) {
    debug_assert_eq!(a.len(), b.len());
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tails = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += term(x[l], y[l]);
        }
    }
    tails
}

/// Elements a [`LaneSum`] takes in `f32` lanes before it moves them into its `f64` total.
const FLUSH: usize = 1024;

/// A sum over many slices, each term added into one of [`LANES`] `f32` lanes and the lanes
/// moved into an `f64` total every [`FLUSH`] elements. Batch-norm statistics sum one channel
/// over every image's plane; on small planes (16 elements at 4×4) a separate `f64` total
/// per plane cost more than the arithmetic. Where the lanes flush depends only on the slices'
/// lengths, so the result is the same with any number of threads.
pub(crate) struct LaneSum {
    acc: [f32; LANES],
    pending: usize,
    total: f64,
}

impl LaneSum {
    pub(crate) fn new() -> Self {
        LaneSum {
            acc: [0.0; LANES],
            pending: 0,
            total: 0.0,
        }
    }

    /// Adds `term(a[i], b[i])` for every `i` (`a` and `b` equally long).
    pub(crate) fn add(&mut self, a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) {
        let (ta, tb) = add_chunks(&mut self.acc, a, b, &term);
        for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
            self.acc[l] += term(x, y);
        }
        self.pending += a.len();
        if self.pending >= FLUSH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.total += self.acc.iter().map(|&a| f64::from(a)).sum::<f64>();
        self.acc = [0.0; LANES];
        self.pending = 0;
    }

    pub(crate) fn total(mut self) -> f64 {
        self.flush();
        self.total
    }
}

fn lanes_total(acc: &[f32; LANES], tail: impl Iterator<Item = f32>) -> f64 {
    let lanes: f64 = acc.iter().map(|&a| f64::from(a)).sum();
    lanes + tail.map(f64::from).sum::<f64>()
}

/// Output positions `o` (of `outputs`) whose input position `o·stride + offset − pad` lies in
/// `0..len`, as a range.
pub(crate) fn valid_range(
    offset: usize,
    pad: usize,
    stride: usize,
    len: usize,
    outputs: usize,
) -> (usize, usize) {
    // o·stride ≥ pad − offset
    let lo = if pad > offset {
        (pad - offset).div_ceil(stride)
    } else {
        0
    };
    // o·stride + offset − pad ≤ len − 1
    let hi = if len + pad > offset {
        ((len - 1 + pad - offset) / stride + 1).min(outputs)
    } else {
        0
    };
    (lo.min(hi), hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_a_scan() {
        for stride in 1..4usize {
            for pad in 0..3 {
                for offset in 0..4 {
                    for len in 1..7usize {
                        let outputs = (len + 2 * pad).saturating_sub(offset) / stride + 1;
                        let scan: Vec<usize> = (0..outputs)
                            .filter(|&o| {
                                let i = (o * stride + offset) as isize - pad as isize;
                                i >= 0 && i < len as isize
                            })
                            .collect();
                        let (lo, hi) = valid_range(offset, pad, stride, len, outputs);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            scan,
                            "{stride} {pad} {offset} {len}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sums_agree_with_f64_arithmetic() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = xs.iter().map(|&x| f64::from(x)).sum();
        assert!((sum(&xs) - exact).abs() < 1e-5);
        let exact: f64 = xs
            .iter()
            .zip(&ys)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        assert!((dot(&xs, &ys) - exact).abs() < 1e-5);
    }

    #[test]
    fn lane_sums_over_many_slices_agree_with_f64_arithmetic() {
        // 300 slices of 7 (tails only into the lanes, several flushes) and one of 2000.
        let xs: Vec<f32> = (0..4100).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..4100).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut lanes = LaneSum::new();
        let cuts: Vec<(usize, usize)> = (0..300)
            .map(|k| (7 * k, 7 * k + 7))
            .chain([(2100, 4100)])
            .collect();
        for &(a, b) in &cuts {
            lanes.add(&xs[a..b], &ys[a..b], |x, y| x * (y - 0.25));
        }
        let exact: f64 = cuts
            .iter()
            .flat_map(|&(a, b)| a..b)
            .map(|i| f64::from(xs[i]) * (f64::from(ys[i]) - 0.25))
            .sum();
        let got = lanes.total();
        assert!((got - exact).abs() < 1e-4, "{got} against {exact}");
    }
}
