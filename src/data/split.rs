//! One split of a dataset in memory: inputs (raw image bytes, or ready features for generated
//! data) and targets (class labels, or regression values).
//!
//! Storage is shared (`Arc`), so cloning a split is cheap; subsets and validation splits copy
//! only their rows.

use std::sync::Arc;

use super::DataError;

/// Per-channel normalisation of raw pixels: `(p / 255 - mean[c]) / std[c]`, in `f32`, in
/// exactly this order (MNIST's LeNet results depend on it bit for bit).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn new(mean: &[f32], std: &[f32]) -> Normalization {
        Normalization {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// The normalised value of pixel `p` in channel `c`.
    pub fn apply(&self, c: usize, p: u8) -> f32 {
        (p as f32 / 255.0 - self.mean[c]) / self.std[c]
    }

    /// A lookup table of 256 values per channel (`table[c * 256 + p]`): gathering a batch is
    /// then one lookup per pixel.
    pub fn table(&self) -> Vec<f32> {
        (0..self.mean.len())
            .flat_map(|c| (0..=255u8).map(move |p| self.apply(c, p)))
            .collect()
    }
}

/// The inputs of a split, `n` samples of shape `[channels, height, width]`, row-major
/// (`[n, c, h, w]` flattened).
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// Raw pixels, normalised by `norm` when a batch is gathered.
    U8 {
        data: Arc<[u8]>,
        shape: [usize; 3],
        norm: Normalization,
    },
    /// Ready-to-use values (generated data, benchmarks). A feature vector of `d` values has
    /// shape `[d, 1, 1]`.
    F32 { data: Arc<[f32]>, shape: [usize; 3] },
}

impl Inputs {
    pub fn u8(data: Vec<u8>, shape: [usize; 3], norm: Normalization) -> Inputs {
        Inputs::U8 {
            data: data.into(),
            shape,
            norm,
        }
    }

    pub fn f32(data: Vec<f32>, shape: [usize; 3]) -> Inputs {
        Inputs::F32 {
            data: data.into(),
            shape,
        }
    }

    pub fn shape(&self) -> [usize; 3] {
        match self {
            Inputs::U8 { shape, .. } | Inputs::F32 { shape, .. } => *shape,
        }
    }

    /// Stored values (bytes or floats), all samples together.
    fn len(&self) -> usize {
        match self {
            Inputs::U8 { data, .. } => data.len(),
            Inputs::F32 { data, .. } => data.len(),
        }
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Inputs::U8 { data, .. } => data.len(),
            Inputs::F32 { data, .. } => data.len() * 4,
        }
    }
}

/// The targets of a split.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class label per sample, each below `classes`.
    Classes { labels: Arc<[u8]>, classes: usize },
    /// `dim` regression values per sample.
    Values { data: Arc<[f32]>, dim: usize },
}

impl Targets {
    pub fn classes(labels: Vec<u8>, classes: usize) -> Targets {
        Targets::Classes {
            labels: labels.into(),
            classes,
        }
    }

    pub fn values(data: Vec<f32>, dim: usize) -> Targets {
        Targets::Values {
            data: data.into(),
            dim,
        }
    }

    /// Number of samples.
    fn count(&self) -> Option<usize> {
        match self {
            Targets::Classes { labels, .. } => Some(labels.len()),
            Targets::Values { data, dim } => data.len().checked_div(*dim),
        }
    }
}

/// One split: `n` samples of inputs and targets. Build it with [`Split::new`], which checks
/// that the parts agree; [`Split::check`] re-checks a split built field by field.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub inputs: Inputs,
    pub targets: Targets,
    pub n: usize,
}

impl Default for Split {
    fn default() -> Split {
        Split::empty()
    }
}

impl Split {
    /// A split of `inputs` and `targets`, checked to agree.
    pub fn new(inputs: Inputs, targets: Targets) -> Result<Split, DataError> {
        let n = targets.count().ok_or_else(|| {
            DataError::Invalid("regression targets need a dimension of at least 1".into())
        })?;
        let split = Split { inputs, targets, n };
        split.check()?;
        Ok(split)
    }

    /// The empty split (no samples, no features).
    pub fn empty() -> Split {
        Split {
            inputs: Inputs::f32(Vec::new(), [0, 0, 0]),
            targets: Targets::classes(Vec::new(), 0),
            n: 0,
        }
    }

    /// Checks that inputs, targets and `n` agree and that every label is below the class
    /// count.
    pub fn check(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Invalid(m));
        let want = self.n * self.dim();
        if self.inputs.len() != want {
            return bad(format!(
                "the split holds {} input values for {} samples of shape {:?} ({want} expected)",
                self.inputs.len(),
                self.n,
                self.input_shape()
            ));
        }
        if self.targets.count() != Some(self.n) {
            return bad(format!(
                "the split has {} samples but targets for {:?}",
                self.n,
                self.targets.count()
            ));
        }
        if let Targets::Classes { labels, classes } = &self.targets
            && let Some((i, &l)) = labels
                .iter()
                .enumerate()
                .find(|(_, l)| **l as usize >= *classes)
        {
            return bad(format!(
                "sample {i} has label {l} but the split has {classes} classes"
            ));
        }
        Ok(())
    }

    /// `[channels, height, width]` of one sample.
    pub fn input_shape(&self) -> [usize; 3] {
        self.inputs.shape()
    }

    /// Values per sample (`c * h * w`): what a gathered batch holds per row.
    pub fn dim(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// The number of classes; `None` for regression targets.
    pub fn classes(&self) -> Option<usize> {
        match &self.targets {
            Targets::Classes { classes, .. } => Some(*classes),
            Targets::Values { .. } => None,
        }
    }

    /// The class labels; `None` for regression targets.
    pub fn labels(&self) -> Option<&[u8]> {
        match &self.targets {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values { .. } => None,
        }
    }

    /// Bytes held in memory by inputs and targets.
    pub fn bytes(&self) -> usize {
        let t = match &self.targets {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values { data, .. } => data.len() * 4,
        };
        self.inputs.bytes() + t
    }

    /// A new split of the rows `idx` (each below `n`), in the order given.
    pub fn take(&self, idx: &[usize]) -> Split {
        let d = self.dim();
        let inputs = match &self.inputs {
            Inputs::U8 { data, shape, norm } => Inputs::U8 {
                data: rows(data, d, idx),
                shape: *shape,
                norm: norm.clone(),
            },
            Inputs::F32 { data, shape } => Inputs::F32 {
                data: rows(data, d, idx),
                shape: *shape,
            },
        };
        let targets = match &self.targets {
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: rows(labels, 1, idx),
                classes: *classes,
            },
            Targets::Values { data, dim } => Targets::Values {
                data: rows(data, *dim, idx),
                dim: *dim,
            },
        };
        Split {
            inputs,
            targets,
            n: idx.len(),
        }
    }

    /// The split with every image zero-padded (pixel value 0, before normalisation) to
    /// `side × side`, centred; an odd difference puts the extra row/column at the bottom/right.
    /// Fashion-MNIST's 28×28 become 32×32 for the CIFAR architectures, as a
    /// `transforms.Pad(2)` would do.
    pub fn pad_to(&self, side: usize) -> Result<Split, DataError> {
        let [c, h, w] = self.input_shape();
        if side < h || side < w {
            return Err(DataError::Invalid(format!(
                "`pad_to: {side}` is smaller than the images ({h}×{w}); use at least {}",
                h.max(w)
            )));
        }
        let (top, left) = ((side - h) / 2, (side - w) / 2);
        let shape = [c, side, side];
        fn pad<T: Copy + Default>(
            src: &[T],
            n: usize,
            [c, h, w]: [usize; 3],
            side: usize,
            (top, left): (usize, usize),
        ) -> Arc<[T]> {
            let mut out = vec![T::default(); n * c * side * side];
            for (plane_out, plane_in) in out.chunks_exact_mut(side * side).zip(src.chunks(h * w)) {
                for y in 0..h {
                    let o = (y + top) * side + left;
                    plane_out[o..o + w].copy_from_slice(&plane_in[y * w..(y + 1) * w]);
                }
            }
            out.into()
        }
        let inputs = match &self.inputs {
            Inputs::U8 { data, norm, .. } => Inputs::U8 {
                data: pad(data, self.n, [c, h, w], side, (top, left)),
                shape,
                norm: norm.clone(),
            },
            Inputs::F32 { data, .. } => Inputs::F32 {
                data: pad(data, self.n, [c, h, w], side, (top, left)),
                shape,
            },
        };
        Ok(Split {
            inputs,
            targets: self.targets.clone(),
            n: self.n,
        })
    }
}

/// Rows `idx` of `width` values each, copied out of `data`.
fn rows<T: Copy>(data: &[T], width: usize, idx: &[usize]) -> Arc<[T]> {
    let mut out = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        out.extend_from_slice(&data[i * width..(i + 1) * width]);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm1() -> Normalization {
        Normalization::new(&[0.5], &[0.25])
    }

    #[test]
    fn normalisation_table_is_per_channel() {
        let rgb = Normalization::new(&[0.1, 0.2, 0.3], &[0.5, 0.25, 0.5]);
        let t = rgb.table();
        assert_eq!(t.len(), 768);
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
        assert!(close(t[0], -0.2), "{}", t[0]);
        assert!(close(t[256 + 255], 3.2), "{}", t[256 + 255]);
        assert!(close(t[512 + 51], -0.2), "{}", t[512 + 51]);
        assert_eq!(t[256 + 17], rgb.apply(1, 17));
    }

    #[test]
    fn new_checks_lengths_and_labels() {
        let s = Split::new(
            Inputs::u8(vec![0; 2 * 4], [1, 2, 2], norm1()),
            Targets::classes(vec![1, 0], 2),
        )
        .unwrap();
        assert_eq!(
            (s.n, s.dim(), s.input_shape(), s.classes()),
            (2, 4, [1, 2, 2], Some(2))
        );
        assert_eq!(s.bytes(), 10);
        let e = Split::new(
            Inputs::u8(vec![0; 7], [1, 2, 2], norm1()),
            Targets::classes(vec![1, 0], 2),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("7 input values for 2 samples of shape [1, 2, 2] (8 expected)"),
            "{e}"
        );
        let e = Split::new(
            Inputs::u8(vec![0; 8], [1, 2, 2], norm1()),
            Targets::classes(vec![1, 2], 2),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sample 1 has label 2 but the split has 2 classes"),
            "{e}"
        );
        let v = Split::new(
            Inputs::f32(vec![1.0; 6], [3, 1, 1]),
            Targets::values(vec![0.5; 4], 2),
        )
        .unwrap();
        assert_eq!((v.n, v.classes(), v.labels()), (2, None, None));
        assert_eq!(Split::empty().check().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn take_copies_rows_in_order() {
        let s = Split::new(
            Inputs::u8((0..12).collect(), [1, 1, 3], norm1()),
            Targets::classes(vec![0, 1, 2, 3], 4),
        )
        .unwrap();
        let t = s.take(&[3, 0]);
        assert_eq!(t.n, 2);
        assert_eq!(
            t.inputs,
            Inputs::u8(vec![9, 10, 11, 0, 1, 2], [1, 1, 3], norm1())
        );
        assert_eq!(t.labels(), Some(&[3u8, 0][..]));
    }

    #[test]
    fn pad_to_centres_images() {
        // Two 2-channel 2×2 images padded to 4×4 and one odd case (2×2 to 5×5).
        let s = Split::new(
            Inputs::u8((1..=16).collect(), [2, 2, 2], norm1()),
            Targets::classes(vec![0, 1], 2),
        )
        .unwrap();
        let p = s.pad_to(4).unwrap();
        assert_eq!(p.input_shape(), [2, 4, 4]);
        let Inputs::U8 { data, .. } = &p.inputs else {
            unreachable!()
        };
        #[rustfmt::skip]
        let first_plane = [
            0, 0, 0, 0,
            0, 1, 2, 0,
            0, 3, 4, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(data[..16], first_plane);
        // Image 1, channel 1 holds 13..=16.
        assert_eq!(data[3 * 16 + 5..3 * 16 + 7], [13, 14]);
        assert_eq!(data[3 * 16 + 9..3 * 16 + 11], [15, 16]);
        assert_eq!(
            data.iter().map(|&x| x as u32).sum::<u32>(),
            (1..=16u32).sum::<u32>()
        );
        let odd = s.pad_to(5).unwrap();
        let Inputs::U8 { data, .. } = &odd.inputs else {
            unreachable!()
        };
        assert_eq!(data[5 + 1..5 + 3], [1, 2]);
        assert_eq!(data[10 + 1..10 + 3], [3, 4]);
        assert_eq!(s.pad_to(2).unwrap(), s);
        let e = s.pad_to(1).unwrap_err().to_string();
        assert!(
            e.contains("`pad_to: 1` is smaller than the images (2×2)"),
            "{e}"
        );
    }
}
