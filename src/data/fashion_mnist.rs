//! Fashion-MNIST (Zalando Research): 28×28 grey images of clothing in 10 classes, in MNIST's
//! IDX layout and with MNIST's file names. Shipped in `data/fashion-mnist` (see its README).

use std::path::Path;

use super::idx::{IdxDataset, load_idx_dataset};
use super::{DataError, Dataset, MNIST_FILES, Source};

/// BLAKE3 digests of the decompressed IDX content of the four files (train images, train
/// labels, test images, test labels), as shipped in `data/fashion-mnist`.
pub const FASHION_MNIST_BLAKE3: [&str; 4] = [
    "feaca08b36e07f8d504641a929bff1554884ef73964323e44e59e39a986b4c9e",
    "b4d9ea8013b029ef778c95ea7de31195ef443589877589523ad330db2829ebd6",
    "a19b8c1e5f798e5a6fa7229093b630c04a620179497a1fa3a71e7334fb59a30b",
    "0a067399ed18bcc9d7dc26832b3b8e4481abf2d33fee04c611e90b9061296b90",
];

/// Mean and standard deviation of the training pixels scaled to [0, 1] (measured on the
/// shipped files: 0.28604 and 0.35302).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
pub const FASHION_MNIST_STD: f32 = 0.3530;

const IDX: IdxDataset = IdxDataset {
    title: "Fashion-MNIST",
    files: MNIST_FILES,
    blake3: FASHION_MNIST_BLAKE3,
    side: 28,
    classes: 10,
    mean: FASHION_MNIST_MEAN,
    std: FASHION_MNIST_STD,
    obtain: "put the four Fashion-MNIST files there (`*-ubyte.gz`, shipped in \
             data/fashion-mnist) or point the stage's `data.dir` at the folder that holds them",
};

pub static SOURCE: Source = Source {
    name: "fashion_mnist",
    title: "Fashion-MNIST",
    default_dir: Some("data/fashion-mnist"),
    files: &MNIST_FILES,
    shape: [1, 28, 28],
    classes: 10,
    obtain: IDX.obtain,
    load: load_fashion_mnist,
};

/// Loads Fashion-MNIST from `dir` (the four files named as MNIST's). With `verify`, each
/// file's BLAKE3 digest must equal the pinned one.
pub fn load_fashion_mnist(dir: &Path, verify: bool) -> Result<Dataset, DataError> {
    load_idx_dataset(dir, verify, &IDX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{BatchTargets, gather_range};

    fn shipped() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
    }

    #[test]
    fn shipped_files_load_and_verify() {
        let t = std::time::Instant::now();
        let d = load_fashion_mnist(&shipped(), true).unwrap();
        eprintln!("Fashion-MNIST loaded and verified in {:?}", t.elapsed());
        assert_eq!((d.train.n, d.test.n), (60_000, 10_000));
        assert_eq!(d.train.input_shape(), [1, 28, 28]);
        assert_eq!(d.train.bytes() + d.test.bytes(), 70_000 * 785);
        // Exactly 6,000 / 1,000 of each class; the first labels of the official files.
        let count = |l: &[u8]| {
            let mut c = [0usize; 10];
            l.iter().for_each(|&x| c[x as usize] += 1);
            c
        };
        assert_eq!(count(d.train.labels().unwrap()), [6000; 10]);
        assert_eq!(count(d.test.labels().unwrap()), [1000; 10]);
        assert_eq!(d.train.labels().unwrap()[..5], [9, 0, 0, 3, 0]);
        assert_eq!(d.test.labels().unwrap()[..5], [9, 2, 1, 1, 6]);
        // The constants are the training set's mean and std: normalised, mean 0 and std 1.
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(&d.train, 0..d.train.n, &mut x, &mut y);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
    }

    #[test]
    fn mnist_files_fail_fashion_verification() {
        let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
        let e = load_fashion_mnist(&mnist, true).unwrap_err().to_string();
        assert!(
            e.contains("(the official Fashion-MNIST file)") && e.contains(FASHION_MNIST_BLAKE3[0]),
            "{e}"
        );
        let missing = tempfile::tempdir().unwrap();
        let e = load_fashion_mnist(missing.path(), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "train-images-idx3-ubyte.gz does not exist; put the four Fashion-MNIST files"
            ),
            "{e}"
        );
    }
}
