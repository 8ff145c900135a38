//! Generated regression data as a stage artifact (`teacher_data` writes it, `train`,
//! `evaluate` and `correlate` read it): a `dataset.json` that records the shapes, and per
//! split two raw little-endian `f32` files, `<split>.x.f32` (`n × d_in`) and `<split>.y.f32`
//! (`n × d_out`), row-major. Raw floats keep reading trivial and bounded (the size is known
//! before a byte is read); the JSON says what the bytes are.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, Inputs, Split, Targets};

/// The artifact name of a generated dataset (what its kind declares it produces).
pub const DATASET: &str = "dataset";

/// The description file of a generated dataset.
pub const DATASET_JSON: &str = "dataset.json";

/// Format tag of the split files.
pub const F32LE: &str = "f32le";

/// `dataset.json`: the shape of the data in the split files.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeneratedMeta {
    /// Always `f32le`: raw little-endian IEEE-754 single floats, row-major.
    pub format: String,
    /// Input values per sample.
    pub d_in: usize,
    /// Regression targets per sample.
    pub d_out: usize,
    /// Samples in `train.*.f32`.
    pub train: usize,
    /// Samples in `eval.*.f32`.
    pub eval: usize,
}

impl GeneratedMeta {
    /// Bytes of both splits' files.
    pub fn bytes(&self) -> u128 {
        (self.train as u128 + self.eval as u128) * (self.d_in as u128 + self.d_out as u128) * 4
    }
}

/// The file names of one split: `(inputs, targets)`.
pub fn split_files(split: &str) -> (String, String) {
    (format!("{split}.x.f32"), format!("{split}.y.f32"))
}

/// Writes `values` as raw little-endian f32.
pub fn write_f32(path: &Path, values: &[f32]) -> Result<(), DataError> {
    let io = |e| DataError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(f);
    for v in values {
        w.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Reads exactly `count` raw little-endian f32 from `path`.
pub fn read_f32(path: &Path, count: usize) -> Result<Vec<f32>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if bytes.len() != count * 4 {
        return Err(DataError::Invalid(format!(
            "{} holds {} bytes, {} expected ({count} f32); re-run the stage that wrote it",
            path.display(),
            bytes.len(),
            count * 4
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Reads one split of `n` samples: inputs of shape `[d_in, 1, 1]`, `d_out` regression values
/// each.
pub fn read_split(
    x: &Path,
    y: &Path,
    n: usize,
    d_in: usize,
    d_out: usize,
) -> Result<Split, DataError> {
    let inputs = read_f32(x, n * d_in)?;
    let targets = read_f32(y, n * d_out)?;
    Split::new(
        Inputs::f32(inputs, [d_in, 1, 1]),
        Targets::values(targets, d_out),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_files_round_trip_and_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = split_files("eval");
        let (x, y) = (dir.path().join(x), dir.path().join(y));
        write_f32(&x, &[1.0, -2.5, 3.0, 0.25]).unwrap();
        write_f32(&y, &[7.0, 8.0]).unwrap();
        assert_eq!(std::fs::read(&x).unwrap()[4..8], (-2.5f32).to_le_bytes());
        let s = read_split(&x, &y, 2, 2, 1).unwrap();
        assert_eq!(s.n, 2);
        assert_eq!(s.input_shape(), [2, 1, 1]);
        assert_eq!(s.targets, Targets::values(vec![7.0, 8.0], 1));
        let e = read_split(&x, &y, 3, 2, 1).unwrap_err().to_string();
        assert!(e.contains("holds 16 bytes, 24 expected"), "{e}");
    }
}
