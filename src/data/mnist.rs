//! MNIST from the four standard IDX files.

use std::path::Path;

use super::idx::{IdxDataset, load_idx_dataset};
use super::{DataError, Dataset, Source};

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

const IDX: IdxDataset = IdxDataset {
    title: "MNIST",
    files: MNIST_FILES,
    blake3: MNIST_BLAKE3,
    side: SIDE,
    classes: 10,
    mean: MNIST_MEAN,
    std: MNIST_STD,
    obtain: "put the four MNIST files there (`*-ubyte.gz`, shipped in data/mnist) or point \
             the stage's `data.dir` at the folder that holds them",
};

pub static SOURCE: Source = Source {
    name: "mnist",
    title: "MNIST",
    default_dir: Some("data/mnist"),
    files: &MNIST_FILES,
    shape: [1, SIDE, SIDE],
    classes: 10,
    obtain: IDX.obtain,
    load: load_mnist,
};

/// Loads MNIST from `dir`, which must hold the four [`MNIST_FILES`]. With
/// `verify`, each file's BLAKE3 digest must equal the pinned official digest.
/// Pixels are normalised with `(p / 255 - 0.1307) / 0.3081` when gathered.
pub fn load_mnist(dir: &Path, verify: bool) -> Result<Dataset, DataError> {
    load_idx_dataset(dir, verify, &IDX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::idx::decompress;
    use crate::data::{BatchTargets, Split, gather_range, write_idx_u8_gz};

    /// All inputs of a split, normalised.
    fn normalised(s: &Split) -> Vec<f32> {
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(s, 0..s.n, &mut x, &mut y);
        x
    }

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
        assert_eq!(m.train.input_shape(), [1, 28, 28]);
        assert_eq!(m.train.bytes(), 5 * 784 + 5);
        assert_eq!(m.train.labels(), Some(&[0u8, 1, 2, 3, 4][..]));
        let x = normalised(&m.train);
        assert_eq!(x.len(), 5 * 784);
        assert_eq!(x[0], (0.0 - 0.1307) / 0.3081);
        assert_eq!(x[255], (1.0 - 0.1307) / 0.3081);
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
                    classes: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("train-labels-idx1-ubyte.gz"));
        assert!(
            e.to_string().contains("MNIST labels must be below 10"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join(MNIST_FILES[3])).unwrap();
        write_idx_u8_gz(&dir.path().join(MNIST_FILES[1]), &[4], &[0, 1, 2, 3]).unwrap();
        let e = load_mnist(dir.path(), false).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz does not exist; put the four MNIST files there"),
            "{e}"
        );
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
        assert_eq!(m.train.bytes(), 60_000 * 785);
        // Well-known first labels of the official files.
        assert_eq!(
            (m.train.labels().unwrap()[0], m.test.labels().unwrap()[0]),
            (5, 7)
        );
        // The normalisation constants are the training-set mean and std.
        let x = normalised(&m.train);
        let n = x.len() as f64;
        let mean = x.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = x.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }
}
