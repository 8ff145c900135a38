//! CIFAR-10 in its standard binary format ("CIFAR-10 binary version", the folder
//! `cifar-10-batches-bin`): five training files `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each a sequence of 3,073-byte records (10,000 in the official files):
//! one label byte (0–9), then the 32×32 red plane, green plane and blue plane, each row-major.
//! That is exactly `[3, 32, 32]` channel-major order, so a record's pixels are copied as they
//! are.
//!
//! The files are not shipped with `pipe` (163 MB): a pipeline names their folder in
//! `data.dir`. No digests are pinned, because no copy of the files was at hand when this
//! reader was written; `verify` checks the official layout instead (10,000 records per file).

use std::path::{Path, PathBuf};

use super::idx::read_file;
use super::split::{Inputs, Normalization, Split, Targets};
use super::{DataError, Dataset, Source};

/// The six files, training files first.
pub const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// `[channels, height, width]`.
pub const CIFAR10_SHAPE: [usize; 3] = [3, 32, 32];
const PIXELS: usize = 3 * 32 * 32;
/// Bytes per record: the label and the pixels.
pub const RECORD: usize = 1 + PIXELS;
/// Records per file in the official distribution.
pub const RECORDS_PER_FILE: usize = 10_000;

/// Per-channel (R, G, B) mean and standard deviation of the training pixels scaled to
/// [0, 1], as published with the data set's usual training recipes (0.49140, 0.48216, 0.44653
/// and 0.24703, 0.24349, 0.26159 to five places).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

const OBTAIN: &str = "CIFAR-10 is not shipped with pipe: download the binary version \
                      (cifar-10-binary.tar.gz, from the CIFAR-10 page of the University of \
                      Toronto), extract it and set the stage's `data.dir` to the extracted \
                      `cifar-10-batches-bin` folder";

pub static SOURCE: Source = Source {
    name: "cifar10",
    title: "CIFAR-10",
    default_dir: None,
    files: &CIFAR10_FILES,
    shape: CIFAR10_SHAPE,
    classes: 10,
    obtain: OBTAIN,
    load: load_cifar10,
};

/// Loads CIFAR-10 from `dir`, which must hold the six [`CIFAR10_FILES`]. With `verify`,
/// every file must hold exactly [`RECORDS_PER_FILE`] records.
pub fn load_cifar10(dir: &Path, verify: bool) -> Result<Dataset, DataError> {
    let paths: Vec<PathBuf> = CIFAR10_FILES.iter().map(|f| dir.join(f)).collect();
    let (train_files, test_file) = paths.split_at(5);
    Ok(Dataset {
        train: read_files(train_files, verify)?,
        test: read_files(test_file, verify)?,
    })
}

/// The records of `paths`, concatenated in order, as one split.
fn read_files(paths: &[PathBuf], verify: bool) -> Result<Split, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = read_file(path).map_err(|e| e.advise(OBTAIN))?;
        let format = |problem: String| DataError::Format {
            path: path.clone(),
            format: "CIFAR-10 binary",
            problem,
        };
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(format(format!(
                "its {} bytes are not a whole number of {RECORD}-byte records (1 label byte \
                 and 3,072 pixel bytes each); the file is truncated or not from the binary \
                 version",
                bytes.len()
            )));
        }
        let records = bytes.len() / RECORD;
        if verify && records != RECORDS_PER_FILE {
            return Err(format(format!(
                "it holds {records} records, the official file {RECORDS_PER_FILE}; set \
                 `verify: false` in the stage's data block to use other files in this format"
            )));
        }
        pixels.reserve(records * PIXELS);
        labels.reserve(records);
        for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] >= 10 {
                return Err(DataError::BadLabel {
                    path: path.clone(),
                    dataset: "CIFAR-10",
                    index,
                    label: record[0],
                    classes: 10,
                });
            }
            labels.push(record[0]);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Split::new(
        Inputs::u8(
            pixels,
            CIFAR10_SHAPE,
            Normalization::new(&CIFAR10_MEAN, &CIFAR10_STD),
        ),
        Targets::classes(labels, 10),
    )
}

/// Writes `(label, pixels)` records (3,072 pixel bytes each, R plane, G plane, B plane) as a
/// CIFAR-10 binary file: for tests and small examples.
pub fn write_cifar10_file(path: &Path, records: &[(u8, Vec<u8>)]) -> Result<(), DataError> {
    let mut bytes = Vec::with_capacity(records.len() * RECORD);
    for (i, (label, px)) in records.iter().enumerate() {
        if px.len() != PIXELS {
            return Err(DataError::Invalid(format!(
                "writing {}: record {i} has {} pixel bytes, a CIFAR-10 record {PIXELS}",
                path.display(),
                px.len()
            )));
        }
        bytes.push(*label);
        bytes.extend_from_slice(px);
    }
    std::fs::write(path, bytes).map_err(|source| DataError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{BatchTargets, gather_range};

    /// Record `k` of file `f`: label `(f + k) % 10`; red pixel i = (i + k) % 256, green
    /// pixel i = 100 + f, blue pixel i = 200 + (i % 32) (the column).
    fn record(f: usize, k: usize) -> (u8, Vec<u8>) {
        let mut px = Vec::with_capacity(PIXELS);
        px.extend((0..1024).map(|i| ((i + k) % 256) as u8));
        px.extend(std::iter::repeat_n((100 + f) as u8, 1024));
        px.extend((0..1024).map(|i| (200 + i % 32) as u8));
        (((f + k) % 10) as u8, px)
    }

    /// Writes the six files with `per_file` records each (file f, record k as [`record`]).
    pub(crate) fn write_fake_cifar10(dir: &Path, per_file: usize) {
        for (f, name) in CIFAR10_FILES.iter().enumerate() {
            let recs: Vec<_> = (0..per_file).map(|k| record(f, k)).collect();
            write_cifar10_file(&dir.join(name), &recs).unwrap();
        }
    }

    #[test]
    fn reads_written_files_in_channel_order() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar10(dir.path(), 3);
        let d = load_cifar10(dir.path(), false).unwrap();
        assert_eq!((d.train.n, d.test.n), (15, 3));
        assert_eq!(d.train.input_shape(), [3, 32, 32]);
        assert_eq!(d.train.classes(), Some(10));
        assert_eq!(
            d.train.labels().unwrap(),
            [0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 5, 4, 5, 6]
        );
        assert_eq!(d.test.labels().unwrap(), [5, 6, 7]);
        let Inputs::U8 { data, .. } = &d.train.inputs else {
            panic!("CIFAR-10 is kept as bytes")
        };
        assert_eq!(d.train.bytes(), 15 * 3073);
        // Sample 4 = file 1 (data_batch_2), record 1.
        let img = &data[4 * PIXELS..5 * PIXELS];
        assert_eq!(img, record(1, 1).1);
        // Row-major planes: red (y=1, x=2) is pixel 34 + k; green is 101; blue (y, x) is 200 + x.
        assert_eq!(
            (img[32 + 2], img[1024 + 500], img[2048 + 32 * 7 + 5]),
            (35, 101, 205)
        );
        // Normalised per channel with the CIFAR-10 statistics, channels in R, G, B order.
        let (mut x, mut y) = (Vec::new(), BatchTargets::default());
        gather_range(&d.train, 4..5, &mut x, &mut y);
        let norm = |c: usize, p: f32| (p / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
        assert_eq!(x[34], norm(0, 35.0));
        assert_eq!(x[1024 + 500], norm(1, 101.0));
        assert_eq!(x[2048 + 32 * 7 + 5], norm(2, 205.0));
        assert!((x[1024] - (101.0 / 255.0 - 0.4822) / 0.2435).abs() < 1e-6);
        assert_eq!(y.labels(), Some(&[2u8][..]));
    }

    #[test]
    fn verify_wants_official_sized_files() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar10(dir.path(), 2);
        let e = load_cifar10(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_1.bin is not a valid CIFAR-10 binary file: it holds 2 records, the official file 10000; set `verify: false`"),
            "{e}"
        );
    }

    #[test]
    fn truncated_bad_label_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_cifar10(dir.path(), 2);
        let p = dir.path().join("data_batch_3.bin");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = load_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_3.bin is not a valid CIFAR-10 binary file: its 6046 bytes are not a whole number of 3073-byte records")
                && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&p, []).unwrap();
        let e = load_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("its 0 bytes"), "{e}");

        let mut bad = vec![record(0, 0), record(0, 1)];
        bad[1].0 = 10;
        write_cifar10_file(&p, &bad).unwrap();
        let e = load_cifar10(dir.path(), false).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadLabel {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(
            "data_batch_3.bin holds label 10 at index 1; CIFAR-10 labels must be below 10"
        ));

        std::fs::remove_file(&p).unwrap();
        let e = load_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_3.bin does not exist; CIFAR-10 is not shipped with pipe")
                && e.contains("cifar-10-batches-bin"),
            "{e}"
        );
        let e = write_cifar10_file(&p, &[(0, vec![0; 5])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 0 has 5 pixel bytes"), "{e}");
    }
}
