//! Gathering a batch: the rows of a split as normalised `f32` inputs (`[n, c, h, w]`
//! flattened) and their targets, with optional augmentation.
//!
//! Augmentation is torchvision's `RandomCrop(size, padding=p)` then `RandomHorizontalFlip()`,
//! both applied before normalisation: the image is padded with pixel value 0 on every side, a
//! window of the original size is cut at a random offset, and the window is mirrored left to
//! right with probability 1/2. The draws come from a ChaCha8 stream keyed by the training seed
//! and the iteration, consumed in batch order (top offset, left offset, flip for each sample),
//! so the batch of iteration `k` is the same whether a training starts at 0 or resumes at `k`.

use std::ops::Range;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::split::{Inputs, Split, Targets};
use crate::rng::{self, Domain};

/// Training-time augmentation (the `augment` of a `data` block).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop with this much zero padding on every side (4 for CIFAR); 0 = no crop.
    #[serde(default)]
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    #[serde(default)]
    pub flip: bool,
}

impl Augment {
    /// Whether it changes anything.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip
    }
}

/// Augmentation of one training step: the settings, the training's seed and the iteration.
#[derive(Clone, Copy, Debug)]
pub struct AugmentStep<'a> {
    pub augment: &'a Augment,
    pub seed: u64,
    pub iteration: u64,
}

/// The targets of a gathered batch.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchTargets {
    Classes(Vec<u8>),
    Values(Vec<f32>),
}

impl Default for BatchTargets {
    fn default() -> Self {
        BatchTargets::Classes(Vec::new())
    }
}

impl BatchTargets {
    /// The class labels; `None` for regression targets.
    pub fn labels(&self) -> Option<&[u8]> {
        match self {
            BatchTargets::Classes(l) => Some(l),
            BatchTargets::Values(_) => None,
        }
    }

    /// The regression values (`dim` per sample); `None` for class labels.
    pub fn values(&self) -> Option<&[f32]> {
        match self {
            BatchTargets::Values(v) => Some(v),
            BatchTargets::Classes(_) => None,
        }
    }
}

/// One sample's crop offsets (into the padded image) and flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Draw {
    top: usize,
    left: usize,
    flip: bool,
}

/// Fills `inputs` (cleared first) with the normalised rows `idx` of `split` and `targets` with
/// their targets; with `augment`, each sample is cropped and flipped as the module docs say.
pub fn gather_batch(
    split: &Split,
    idx: &[usize],
    augment: Option<AugmentStep>,
    inputs: &mut Vec<f32>,
    targets: &mut BatchTargets,
) {
    let crops = augment.filter(|a| !a.augment.is_identity()).map(|a| Crops {
        padding: a.augment.crop_padding,
        draws: draws(a, idx.len()),
    });
    gather(split, idx.iter().copied(), crops.as_ref(), inputs, targets);
}

/// Fills `inputs` and `targets` with the rows `range` of `split`, unaugmented (evaluation).
pub fn gather_range(
    split: &Split,
    range: Range<usize>,
    inputs: &mut Vec<f32>,
    targets: &mut BatchTargets,
) {
    gather(split, range, None, inputs, targets);
}

/// One batch's augmentation: the crop padding and a draw per sample.
struct Crops {
    padding: usize,
    draws: Vec<Draw>,
}

/// The draws of one step's `n` samples.
fn draws(a: AugmentStep, n: usize) -> Vec<Draw> {
    let p = a.augment.crop_padding;
    let mut r = rng::stream(a.seed, Domain::Augment, a.iteration);
    (0..n)
        .map(|_| {
            // Without padding the window is the image itself: offset p = 0, nothing drawn.
            let (top, left) = if p > 0 {
                (r.random_range(0..=2 * p), r.random_range(0..=2 * p))
            } else {
                (0, 0)
            };
            let flip = a.augment.flip && r.random::<bool>();
            Draw { top, left, flip }
        })
        .collect()
}

fn gather(
    split: &Split,
    rows: impl Iterator<Item = usize> + Clone,
    crops: Option<&Crops>,
    inputs: &mut Vec<f32>,
    targets: &mut BatchTargets,
) {
    let shape = split.input_shape();
    let (d, plane) = (split.dim(), shape[1] * shape[2]);
    inputs.clear();
    match &split.inputs {
        Inputs::U8 { data, norm, .. } => {
            let table = norm.table();
            for (k, i) in rows.clone().enumerate() {
                let img = &data[i * d..(i + 1) * d];
                match crops {
                    None => {
                        for (c, px) in img.chunks_exact(plane.max(1)).enumerate() {
                            let t = &table[c * 256..(c + 1) * 256];
                            inputs.extend(px.iter().map(|&p| t[p as usize]));
                        }
                    }
                    Some(cr) => augmented(
                        inputs,
                        shape,
                        cr.padding,
                        cr.draws[k],
                        |c, o| table[c * 256 + img[o] as usize],
                        |c| table[c * 256],
                    ),
                }
            }
        }
        Inputs::F32 { data, .. } => {
            for (k, i) in rows.clone().enumerate() {
                let img = &data[i * d..(i + 1) * d];
                match crops {
                    None => inputs.extend_from_slice(img),
                    Some(cr) => augmented(
                        inputs,
                        shape,
                        cr.padding,
                        cr.draws[k],
                        |_, o| img[o],
                        |_| 0.0,
                    ),
                }
            }
        }
    }
    match (&split.targets, targets) {
        (Targets::Classes { labels, .. }, BatchTargets::Classes(out)) => {
            out.clear();
            out.extend(rows.map(|i| labels[i]));
        }
        (Targets::Values { data, dim }, BatchTargets::Values(out)) => {
            out.clear();
            for i in rows {
                out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
            }
        }
        (Targets::Classes { labels, .. }, t) => {
            *t = BatchTargets::Classes(rows.map(|i| labels[i]).collect());
        }
        (Targets::Values { data, dim }, t) => {
            *t = BatchTargets::Values(
                rows.flat_map(|i| data[i * dim..(i + 1) * dim].iter().copied())
                    .collect(),
            );
        }
    }
}

/// Appends one augmented sample: output pixel `(c, y, x)` is source pixel
/// `(c, y + top - p, x' + left - p)` with `x' = w - 1 - x` when flipped (the flip mirrors the
/// cropped window), or `fill(c)` (pixel value 0) where that lies in the padding.
/// `at(c, offset)` reads the source at a flat offset within the image.
fn augmented(
    out: &mut Vec<f32>,
    [ch, h, w]: [usize; 3],
    p: usize,
    draw: Draw,
    at: impl Fn(usize, usize) -> f32,
    fill: impl Fn(usize) -> f32,
) {
    for c in 0..ch {
        let zero = fill(c);
        for y in 0..h {
            // Below 0 wraps to a huge value: one comparison tests both ends.
            let sy = (y + draw.top).wrapping_sub(p);
            if sy >= h {
                out.extend(std::iter::repeat_n(zero, w));
                continue;
            }
            let row = c * h * w + sy * w;
            for x in 0..w {
                let xs = if draw.flip { w - 1 - x } else { x };
                let sx = (xs + draw.left).wrapping_sub(p);
                out.push(if sx < w { at(c, row + sx) } else { zero });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Normalization, Split, Targets};

    /// Two 1-channel 3×3 images: image 0 holds pixels 1..=9, image 1 holds 11..=19.
    /// The normalisation (mean 0, std 1) maps pixel p to p / 255.
    fn tiny() -> Split {
        let px: Vec<u8> = (1..=9).chain(11..=19).collect();
        Split::new(
            Inputs::u8(px, [1, 3, 3], unit()),
            Targets::classes(vec![4, 7], 10),
        )
        .unwrap()
    }

    fn unit() -> Normalization {
        Normalization::new(&[0.0], &[1.0])
    }

    /// Normalised values back to pixel values.
    fn pixels(x: &[f32]) -> Vec<f32> {
        x.iter().map(|v| (v * 255.0).round()).collect()
    }

    /// Sample `i` augmented with `draw` (padding `p`), as pixel values.
    fn one(split: &Split, i: usize, p: usize, draw: Draw) -> Vec<f32> {
        let mut out = Vec::new();
        let d = split.dim();
        let Inputs::U8 { data, norm, .. } = &split.inputs else {
            unreachable!()
        };
        let t = norm.table();
        augmented(
            &mut out,
            split.input_shape(),
            p,
            draw,
            |c, o| t[c * 256 + data[i * d + o] as usize],
            |c| t[c * 256],
        );
        pixels(&out)
    }

    #[test]
    fn gathers_normalised_rows_and_labels() {
        let s = tiny();
        let (mut x, mut y) = (vec![7.0; 3], BatchTargets::Values(vec![1.0]));
        gather_batch(&s, &[1, 0, 1], None, &mut x, &mut y);
        let row0: Vec<f32> = (1..=9).map(|p| p as f32).collect();
        let row1: Vec<f32> = (11..=19).map(|p| p as f32).collect();
        assert_eq!(pixels(&x), [row1.clone(), row0.clone(), row1].concat());
        assert_eq!(x[0], 11.0 / 255.0);
        assert_eq!(y, BatchTargets::Classes(vec![7, 4, 7]));
        gather_range(&s, 0..1, &mut x, &mut y);
        assert_eq!((pixels(&x), y.labels()), (row0, Some(&[4u8][..])));
    }

    #[test]
    fn mnist_normalisation_is_applied_per_pixel() {
        let s = Split::new(
            Inputs::u8(
                vec![0, 255, 128, 1],
                [1, 2, 2],
                Normalization::new(&[0.1307], &[0.3081]),
            ),
            Targets::classes(vec![3], 10),
        )
        .unwrap();
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(&s, 0..1, &mut x, &mut y);
        // (p / 255 - 0.1307) / 0.3081, worked out by hand in decimal.
        let want = [-0.424_212_918, 2.821_486_530, 1.205_000_923, -0.411_484_685];
        for (got, want) in x.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Bit for bit the f32 formula MNIST has always used.
        let formula = |p: u8| (p as f32 / 255.0 - 0.1307) / 0.3081;
        assert_eq!(x, [0, 255, 128, 1].map(formula));
    }

    #[test]
    fn per_channel_statistics() {
        let s = Split::new(
            Inputs::u8(
                vec![51, 51, 102, 102],
                [2, 1, 2],
                Normalization::new(&[0.2, 0.1], &[0.5, 0.25]),
            ),
            Targets::classes(vec![0], 1),
        )
        .unwrap();
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(&s, 0..1, &mut x, &mut y);
        let want = [0.0, 0.0, 1.2, 1.2];
        assert!(
            x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{x:?}"
        );
    }

    #[test]
    fn crop_and_flip_on_a_hand_made_image() {
        let s = tiny();
        let d = |top, left, flip| Draw { top, left, flip };
        // Padding 1: offset (1, 1) is the identity, (0, 0) shifts the image down-right.
        assert_eq!(
            one(&s, 0, 1, d(1, 1, false)),
            [1., 2., 3., 4., 5., 6., 7., 8., 9.]
        );
        assert_eq!(
            one(&s, 0, 1, d(0, 0, false)),
            [0., 0., 0., 0., 1., 2., 0., 4., 5.]
        );
        assert_eq!(
            one(&s, 0, 1, d(2, 2, false)),
            [5., 6., 0., 8., 9., 0., 0., 0., 0.]
        );
        assert_eq!(
            one(&s, 0, 1, d(2, 0, false)),
            [0., 4., 5., 0., 7., 8., 0., 0., 0.]
        );
        // A flip mirrors the cropped window.
        assert_eq!(
            one(&s, 0, 0, d(0, 0, true)),
            [3., 2., 1., 6., 5., 4., 9., 8., 7.]
        );
        assert_eq!(
            one(&s, 1, 1, d(0, 0, true)),
            [0., 0., 0., 12., 11., 0., 15., 14., 0.]
        );
        // Padding wider than the image: everything is padding.
        assert_eq!(one(&s, 0, 3, d(0, 0, false)), [0.0; 9]);
    }

    #[test]
    fn augmentation_is_seeded_by_seed_and_iteration() {
        // 64 samples of one 8×8 image with distinct pixels.
        let img: Vec<u8> = (0..64).collect();
        let s = Split::new(
            Inputs::u8(img.repeat(64), [1, 8, 8], unit()),
            Targets::classes(vec![0; 64], 1),
        )
        .unwrap();
        let idx: Vec<usize> = (0..64).collect();
        let aug = Augment {
            crop_padding: 2,
            flip: true,
        };
        let batch = |seed, iteration| {
            let (mut x, mut y) = (Vec::new(), BatchTargets::default());
            let step = AugmentStep {
                augment: &aug,
                seed,
                iteration,
            };
            gather_batch(&s, &idx, Some(step), &mut x, &mut y);
            x
        };
        let a = batch(3, 10);
        assert_eq!(a.len(), 64 * 64);
        assert_eq!(a, batch(3, 10));
        assert_ne!(a, batch(3, 11));
        assert_ne!(a, batch(4, 10));
        // Each sample is one of the 5 × 5 × 2 possible crops and the draws cover them.
        let mut seen = std::collections::HashSet::new();
        for (k, sample) in a.chunks(64).enumerate() {
            let found = (0..5)
                .flat_map(|t| (0..5).flat_map(move |l| [(t, l, false), (t, l, true)]))
                .find(|&(t, l, f)| {
                    one(
                        &s,
                        0,
                        2,
                        Draw {
                            top: t,
                            left: l,
                            flip: f,
                        },
                    ) == pixels(sample)
                });
            assert!(found.is_some(), "sample {k} is no crop");
            seen.insert(found.unwrap());
        }
        assert!(seen.len() > 25, "only {} distinct crops", seen.len());
        // The draws of sample k depend only on (seed, iteration, k): a shorter batch draws
        // the same first samples.
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        let step = AugmentStep {
            augment: &aug,
            seed: 3,
            iteration: 10,
        };
        gather_batch(&s, &idx[..5], Some(step), &mut x, &mut y);
        assert_eq!(x, a[..5 * 64]);
        // No augmentation (or an identity one) gathers the plain images.
        let plain: Vec<f32> = img.iter().map(|&p| p as f32 / 255.0).collect();
        let none = Augment::default();
        let step = AugmentStep {
            augment: &none,
            seed: 3,
            iteration: 10,
        };
        gather_batch(&s, &[0], Some(step), &mut x, &mut y);
        assert_eq!(x, plain);
    }

    #[test]
    fn f32_inputs_and_value_targets() {
        let s = Split::new(
            Inputs::f32(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2]),
            Targets::values(vec![0.5, -0.5, 1.5, -1.5], 2),
        )
        .unwrap();
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_batch(&s, &[1, 0], None, &mut x, &mut y);
        assert_eq!(x, [3.0, 4.0, 1.0, 2.0]);
        assert_eq!(y.values(), Some(&[1.5, -1.5, 0.5, -0.5][..]));
        // Flipped, no crop.
        let aug = Augment {
            crop_padding: 0,
            flip: true,
        };
        let flips: Vec<Vec<f32>> = (0..20)
            .map(|it| {
                let step = AugmentStep {
                    augment: &aug,
                    seed: 0,
                    iteration: it,
                };
                gather_batch(&s, &[0], Some(step), &mut x, &mut y);
                x.clone()
            })
            .collect();
        assert!(flips.contains(&vec![2.0, 1.0]) && flips.contains(&vec![1.0, 2.0]));
        assert!(flips.iter().all(|f| f == &[2.0, 1.0] || f == &[1.0, 2.0]));
    }
}
