//! Data loading: IDX files, MNIST, validation splits and seeded batch orders.
//!
//! Everything here is host-side and backend-free; the `nn` module turns the
//! gathered batches into tensors.

pub mod idx;
pub mod loader;
pub mod mnist;

use std::path::PathBuf;

pub use idx::{IdxArray, read_idx_u8, write_idx_u8_gz};
pub use loader::{BatchOrder, batch_indices, gather_batch, split_validation, subset};
pub use mnist::{MNIST_FILES, MNIST_MEAN, MNIST_STD, Mnist, Split, load_mnist};

/// Errors raised while reading or preparing data. Every variant that concerns a
/// file names it, says what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "data file {path} does not exist; put the file there (for MNIST: the four official \
         `*-ubyte.gz` files) or point the stage's data block at the right directory"
    )]
    Missing { path: PathBuf },

    #[error("cannot read data file {path}: {source}; check the path and its permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write data file {path}: {source}; check the directory exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} starts like a gzip file but cannot be decompressed ({source}); the file is \
         corrupt or incomplete, download it again"
    )]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid IDX file: {problem}; download the file again")]
    Format { path: PathBuf, problem: String },

    #[error(
        "{path} has BLAKE3 {actual}, expected {expected} (the official MNIST file); set \
         `verify: false` in the stage's data block to use your own files"
    )]
    Checksum {
        path: PathBuf,
        actual: String,
        expected: String,
    },

    #[error("{path} holds label {label} at index {index}; MNIST labels must be 0..=9")]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: u8,
    },

    #[error(
        "{images} holds {n_images} images but {labels} holds {n_labels} labels; the files do not belong together"
    )]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },

    #[error("invalid data setting: {0}")]
    Invalid(String),
}
