//! Data loading: dataset sources, in-memory splits, batch gathering with augmentation,
//! validation splits, subsets and seeded batch orders.
//!
//! Everything here is host-side and backend-free; the `nn` module turns the gathered batches
//! into tensors. Images stay `u8` in memory (`[channels, height, width]` per image) and are
//! normalised per channel when a batch is gathered: the CIFAR-10 training set is 154 MB as
//! bytes and would be 614 MB as `f32`.
//!
//! A dataset source is one file here exporting a [`Source`], plus one line in [`SOURCES`].

pub mod batch;
pub mod cifar10;
pub mod fashion_mnist;
pub mod generated;
pub mod idx;
pub mod loader;
pub mod mnist;
pub mod split;

use std::path::{Path, PathBuf};

pub use batch::{Augment, AugmentStep, BatchTargets, gather_batch, gather_range};
pub use idx::{IdxArray, read_idx_u8, write_idx_u8_gz};
pub use loader::{BatchOrder, balanced_subset, batch_indices, split_validation, subset};
pub use mnist::{MNIST_FILES, MNIST_MEAN, MNIST_STD, load_mnist};
pub use split::{Inputs, Normalization, Split, Targets};

/// The training and test sets of a dataset, as its source delivers them.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub train: Split,
    pub test: Split,
}

/// A dataset source: what a pipeline's `data.dataset` names.
#[derive(Debug)]
pub struct Source {
    /// The name in a pipeline (`data.dataset`), snake_case.
    pub name: &'static str,
    /// The name in messages.
    pub title: &'static str,
    /// The folder used when the pipeline names none; `None` when the data is not shipped
    /// with `pipe` (the pipeline must set `data.dir`).
    pub default_dir: Option<&'static str>,
    /// The files read from the folder; their content enters the cache keys.
    pub files: &'static [&'static str],
    /// `[channels, height, width]` of one image.
    pub shape: [usize; 3],
    pub classes: usize,
    /// What to do when a file is missing: where the files come from.
    pub obtain: &'static str,
    /// Reads the files from a folder; `verify` checks them against the official files.
    pub load: fn(dir: &Path, verify: bool) -> Result<Dataset, DataError>,
}

/// Every dataset source. Adding a dataset: one file exporting a [`Source`], one line here.
pub static SOURCES: &[&Source] = &[&mnist::SOURCE, &fashion_mnist::SOURCE, &cifar10::SOURCE];

/// The source named `name` (as in a pipeline's `data.dataset`).
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().copied().find(|s| s.name == name)
}

/// The names of all sources, for messages.
pub fn source_names() -> String {
    SOURCES
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors raised while reading or preparing data. Every variant that concerns a
/// file names it, says what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data file {path} does not exist; {advice}")]
    Missing { path: PathBuf, advice: String },

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

    #[error("{path} is not a valid {format} file: {problem}; download the file again")]
    Format {
        path: PathBuf,
        format: &'static str,
        problem: String,
    },

    #[error(
        "{path} has BLAKE3 {actual}, expected {expected} (the official {dataset} file); set \
         `verify: false` in the stage's data block to use your own files"
    )]
    Checksum {
        path: PathBuf,
        dataset: &'static str,
        actual: String,
        expected: String,
    },

    #[error(
        "{path} holds label {label} at index {index}; {dataset} labels must be below {classes}; \
         the file is corrupt or belongs to another dataset"
    )]
    BadLabel {
        path: PathBuf,
        dataset: &'static str,
        index: usize,
        label: u8,
        classes: usize,
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

impl DataError {
    /// Replaces the generic advice of a [`DataError::Missing`] by a dataset's own (where its
    /// files come from); other errors pass unchanged.
    pub fn advise(self, advice: &str) -> DataError {
        match self {
            DataError::Missing { path, .. } => DataError::Missing {
                path,
                advice: advice.to_string(),
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_found() {
        assert_eq!(source_names(), "mnist, fashion_mnist, cifar10");
        for s in SOURCES {
            assert!(std::ptr::eq(source(s.name).unwrap(), *s));
        }
        assert!(source("imagenet").is_none());
        assert_eq!(source("cifar10").unwrap().default_dir, None);
        assert_eq!(
            source("fashion_mnist").unwrap().default_dir,
            Some("data/fashion-mnist")
        );
    }
}
