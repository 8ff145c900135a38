//! The `data:` block shared by stages that read a dataset, and a per-process cache so that
//! fifty stages of one run decode MNIST once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::{DataError, MNIST_FILES, Split, load_mnist, split_validation, subset};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DatasetName {
    Mnist,
}

/// Where the data comes from and how it is split. `dir` and `verify` locate and check the
/// files and stay out of the key; the files' content enters it instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataParams {
    #[serde(default = "mnist")]
    pub dataset: DatasetName,
    /// The folder holding the dataset's files, relative to the current directory.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Size of the validation split carved (seeded) out of the training set; the lottery
    /// ticket paper uses 5,000 of MNIST's 60,000.
    #[serde(default = "default_val")]
    pub val_size: usize,
    #[serde(default)]
    pub split_seed: u64,
    /// Use only the first N training examples (after the validation split): tiny pipelines.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Use only the first N test (and validation) examples.
    #[serde(default)]
    pub test_subset: Option<usize>,
    /// Check the files against the official MNIST digests.
    #[serde(default = "yes")]
    pub verify: bool,
}

fn mnist() -> DatasetName {
    DatasetName::Mnist
}
fn default_dir() -> PathBuf {
    PathBuf::from("data/mnist")
}
fn default_val() -> usize {
    5000
}
fn yes() -> bool {
    true
}

impl Default for DataParams {
    fn default() -> Self {
        DataParams {
            dataset: DatasetName::Mnist,
            dir: default_dir(),
            val_size: default_val(),
            split_seed: 0,
            train_subset: None,
            test_subset: None,
            verify: true,
        }
    }
}

impl DataParams {
    pub fn files(&self) -> Vec<PathBuf> {
        match self.dataset {
            DatasetName::Mnist => MNIST_FILES.iter().map(|f| self.dir.join(f)).collect(),
        }
    }

    /// Removes the fields that must not enter a key from a stage's normalised parameters.
    pub fn strip_locations(mut params: Value) -> Value {
        if let Some(d) = params.get_mut("data").and_then(Value::as_object_mut) {
            d.remove("dir");
            d.remove("verify");
        }
        params
    }
}

/// Train, validation and test splits, shared between stages.
pub struct Splits {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

#[derive(Default)]
pub struct DataCache {
    splits: Mutex<HashMap<String, Arc<Splits>>>,
}

impl DataCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn load(&self, p: &DataParams) -> Result<Arc<Splits>, DataError> {
        let memo_key = serde_json::to_string(p).expect("data params serialise");
        if let Some(s) = self
            .splits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&memo_key)
        {
            return Ok(s.clone());
        }
        let DatasetName::Mnist = p.dataset;
        let m = load_mnist(&p.dir, p.verify)?;
        let (mut train, mut val) = split_validation(&m.train, p.val_size, p.split_seed)?;
        let mut test = m.test;
        if let Some(n) = p.train_subset {
            train = subset(&train, n);
        }
        if let Some(n) = p.test_subset {
            test = subset(&test, n);
            val = subset(&val, n);
        }
        let s = Arc::new(Splits { train, val, test });
        self.splits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(memo_key, s.clone());
        Ok(s)
    }
}
