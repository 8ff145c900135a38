//! MNIST from the four standard IDX files.

use std::path::{Path, PathBuf};

use super::DataError;
use super::idx::{decompress, parse_idx_u8, read_file};

/// The four standard file names, in the order train images, train labels,
/// test images, test labels. The engine hashes these files into cache keys.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// BLAKE3 digests of the *decompressed* IDX content of [`MNIST_FILES`] (same
/// order): 60,000 training and 10,000 test samples. Hashing the content rather
/// than the `.gz` bytes accepts every faithful copy, however it was compressed
/// (the committed files are a recompressed copy of LeCun's originals).
pub const MNIST_BLAKE3: [&str; 4] = [
    "c6e6fd8c67d07c8a9b7bffa7dd0413ff4b8af241607b049b7721107f379df9fd",
    "8ebcfdf2fe191516f9cb37fceb75d2d19289d91ee92026534ed45e44144b5642",
    "f8d502322cd9f186e155a74a3dff598ed56c1a7b5a5c8d312749ac47c4a2bec7",
    "6d43ea317fa8f5851bb85404bb7358defd48b0294cf31f60cdcde8106fe2c3ad",
];

/// The usual MNIST normalisation: the mean and standard deviation of the
/// training pixels after scaling to [0, 1].
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;

/// One split of a dataset: `n` images of [`PIXELS`] normalised floats each,
/// stored row-major (`images[i * 784 .. (i + 1) * 784]` is image `i`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    pub n: usize,
}

impl Split {
    /// Number of features per sample (784 for MNIST; 0 for an empty split).
    pub fn dim(&self) -> usize {
        self.images.len().checked_div(self.n).unwrap_or(0)
    }

    /// The empty split.
    pub fn empty() -> Split {
        Split::default()
    }
}

/// The MNIST training and test sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

/// Normalises one raw pixel: `pixel / 255`, then `(x - 0.1307) / 0.3081`.
pub fn normalise_pixel(p: u8) -> f32 {
    (p as f32 / 255.0 - MNIST_MEAN) / MNIST_STD
}

/// Loads MNIST from `dir`, which must hold the four [`MNIST_FILES`]. With
/// `verify`, each file's BLAKE3 digest must equal the pinned official digest.
pub fn load_mnist(dir: &Path, verify: bool) -> Result<Mnist, DataError> {
    let paths: Vec<PathBuf> = MNIST_FILES.iter().map(|f| dir.join(f)).collect();
    let mut arrays = Vec::with_capacity(4);
    for (i, path) in paths.iter().enumerate() {
        let bytes = read_file(path)?;
        let bytes = decompress(path, &bytes)?;
        if verify {
            let actual = blake3::hash(&bytes).to_hex().to_string();
            if actual != MNIST_BLAKE3[i] {
                return Err(DataError::Checksum {
                    path: path.clone(),
                    actual,
                    expected: MNIST_BLAKE3[i].to_string(),
                });
            }
        }
        arrays.push(parse_idx_u8(path, &bytes)?);
    }
    let mut it = arrays.into_iter();
    let (tri, trl, tei, tel) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let train = make_split(&paths[0], tri, &paths[1], trl)?;
    let test = make_split(&paths[2], tei, &paths[3], tel)?;
    Ok(Mnist { train, test })
}

fn make_split(
    img_path: &Path,
    images: super::IdxArray,
    lbl_path: &Path,
    labels: super::IdxArray,
) -> Result<Split, DataError> {
    if images.dims.len() != 3 || images.dims[1] != SIDE || images.dims[2] != SIDE {
        return Err(DataError::Format {
            path: img_path.to_path_buf(),
            problem: format!(
                "image file has dimensions {:?}, expected [n, 28, 28]",
                images.dims
            ),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::Format {
            path: lbl_path.to_path_buf(),
            problem: format!("label file has dimensions {:?}, expected [n]", labels.dims),
        });
    }
    let (n_images, n_labels) = (images.dims[0], labels.dims[0]);
    if n_images != n_labels {
        return Err(DataError::CountMismatch {
            images: img_path.to_path_buf(),
            n_images,
            labels: lbl_path.to_path_buf(),
            n_labels,
        });
    }
    if let Some((index, &label)) = labels.data.iter().enumerate().find(|(_, l)| **l >= 10) {
        return Err(DataError::BadLabel {
            path: lbl_path.to_path_buf(),
            index,
            label,
        });
    }
    // A 256-entry table: normalisation is then a lookup per pixel.
    let table: Vec<f32> = (0..=255u8).map(normalise_pixel).collect();
    let pixels = images.data.iter().map(|&p| table[p as usize]).collect();
    Ok(Split {
        images: pixels,
        labels: labels.data,
        n: n_images,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::write_idx_u8_gz;

    /// Writes a tiny MNIST-shaped data set (`n_train`/`n_test` images) into `dir`.
    pub(crate) fn write_fake_mnist(dir: &Path, n_train: usize, n_test: usize) {
        for (k, n) in [(0usize, n_train), (2, n_test)] {
            let img: Vec<u8> = (0..n * PIXELS).map(|i| (i % 256) as u8).collect();
            write_idx_u8_gz(&dir.join(MNIST_FILES[k]), &[n, SIDE, SIDE], &img).unwrap();
            let lbl: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            write_idx_u8_gz(&dir.join(MNIST_FILES[k + 1]), &[n], &lbl).unwrap();
        }
    }

    #[test]
    fn loads_fake_files_and_normalises() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_mnist(dir.path(), 5, 3);
        let m = load_mnist(dir.path(), false).unwrap();
        assert_eq!((m.train.n, m.test.n), (5, 3));
        assert_eq!(m.train.images.len(), 5 * 784);
        assert_eq!(m.train.labels, vec![0, 1, 2, 3, 4]);
        assert_eq!(m.train.images[0], (0.0 - 0.1307) / 0.3081);
        assert_eq!(m.train.images[255], (1.0 - 0.1307) / 0.3081);
        assert_eq!(m.train.dim(), 784);
    }

    #[test]
    fn verify_rejects_non_official_files() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_mnist(dir.path(), 2, 2);
        let e = load_mnist(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz has BLAKE3"), "{e}");
        assert!(
            e.contains(MNIST_BLAKE3[0]) && e.contains("verify: false"),
            "{e}"
        );
    }

    #[test]
    fn count_mismatch_and_bad_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_mnist(dir.path(), 4, 2);
        write_idx_u8_gz(&dir.path().join(MNIST_FILES[1]), &[3], &[0, 1, 2]).unwrap();
        let e = load_mnist(dir.path(), false).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::CountMismatch {
                    n_images: 4,
                    n_labels: 3,
                    ..
                }
            ),
            "{e}"
        );
        write_idx_u8_gz(&dir.path().join(MNIST_FILES[1]), &[4], &[0, 1, 10, 2]).unwrap();
        let e = load_mnist(dir.path(), false).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 2,
                    label: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("train-labels-idx1-ubyte.gz"));
        std::fs::remove_file(dir.path().join(MNIST_FILES[3])).unwrap();
        write_idx_u8_gz(&dir.path().join(MNIST_FILES[1]), &[4], &[0, 1, 2, 3]).unwrap();
        let e = load_mnist(dir.path(), false).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
    }

    /// The real files, when present (they are in this repository's shared data).
    #[test]
    fn official_files_verify() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"));
        let got: Vec<String> = MNIST_FILES
            .iter()
            .map(|f| {
                let path = dir.join(f);
                let bytes = std::fs::read(&path).unwrap();
                blake3::hash(&decompress(&path, &bytes).unwrap())
                    .to_hex()
                    .to_string()
            })
            .collect();
        assert_eq!(got, MNIST_BLAKE3, "{got:#?}");
        let m = load_mnist(dir, true).unwrap();
        assert_eq!((m.train.n, m.test.n), (60_000, 10_000));
        assert_eq!(m.train.images.len(), 60_000 * 784);
        // Well-known first labels of the official files.
        assert_eq!((m.train.labels[0], m.test.labels[0]), (5, 7));
        // The normalisation constants are the training-set mean and std.
        let n = m.train.images.len() as f64;
        let mean = m.train.images.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = m
            .train
            .images
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}
