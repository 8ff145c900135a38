//! The `data:` block shared by stages that read a dataset, and a per-process cache so that
//! fifty stages of one run decode a dataset once.
//!
//! ```yaml
//! data:
//!   dataset: cifar10            # mnist (default) | fashion_mnist | cifar10
//!   dir: /data/cifar-10-batches-bin   # default: data/mnist, data/fashion-mnist; cifar10: none
//!   val_size: 5000              # seeded validation split out of the training set
//!   split_seed: 0
//!   train_subset: 10000         # first N training samples (after the validation split) ...
//!   test_subset: 2000           # ... first N test (and validation) samples
//!   subset_balanced: true       # ... or N/classes of each class, picked with subset_seed
//!   subset_seed: 0
//!   pad_to: 32                  # zero-pad images to 32×32 at load (Fashion-MNIST for CIFAR nets)
//!   augment: {crop_padding: 4, flip: true}   # training only: random crop + horizontal flip
//!   verify: true                # check the files against the official ones
//! ```
//!
//! Keys: `dir` and `verify` only locate and check files and never enter a key (the files'
//! content does). The fields added after the first release (`subset_balanced`, `subset_seed`,
//! `pad_to`, `augment`) are left out of the normalised parameters at their defaults, so the
//! keys of pipelines that do not use them are unchanged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::data::{
    Augment, DataError, Source, Split, balanced_subset, source, source_names, split_validation,
    subset,
};

/// The dataset a `data` block names: a registered [`Source`], written as its name.
#[derive(Clone, Copy, Debug)]
pub struct DatasetName(pub &'static Source);

impl DatasetName {
    pub const MNIST: DatasetName = DatasetName(&crate::data::mnist::SOURCE);

    pub fn source(&self) -> &'static Source {
        self.0
    }
}

impl PartialEq for DatasetName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for DatasetName {}

impl std::hash::Hash for DatasetName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state)
    }
}

impl Serialize for DatasetName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for DatasetName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        source(&name).map(DatasetName).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown dataset `{name}`; the datasets are: {}",
                source_names()
            ))
        })
    }
}

/// Where the data comes from and how it is split. `dir` and `verify` locate and check the
/// files and stay out of the key; the files' content enters it instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataParams {
    #[serde(default = "mnist")]
    pub dataset: DatasetName,
    /// The folder holding the dataset's files, relative to the current directory; the
    /// dataset's own folder when not given (see [`DataParams::dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Size of the validation split carved (seeded) out of the training set; the lottery
    /// ticket paper uses 5,000 of MNIST's 60,000.
    #[serde(default = "default_val")]
    pub val_size: usize,
    #[serde(default)]
    pub split_seed: u64,
    /// Use only N training examples (after the validation split): the first N, or a
    /// class-balanced N with `subset_balanced`.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Use only N test (and validation) examples, as `train_subset`.
    #[serde(default)]
    pub test_subset: Option<usize>,
    /// Subsets take `N / classes` samples of every class (seeded by `subset_seed`) instead
    /// of the first N.
    #[serde(default, skip_serializing_if = "is_false")]
    pub subset_balanced: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subset_seed: u64,
    /// Zero-pad every image to `pad_to × pad_to` (centred), when the data is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to: Option<usize>,
    /// Training-time augmentation; evaluation never augments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Check the files against the official ones.
    #[serde(default = "yes")]
    pub verify: bool,
}

fn mnist() -> DatasetName {
    DatasetName::MNIST
}
fn default_val() -> usize {
    5000
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl Default for DataParams {
    fn default() -> Self {
        DataParams {
            dataset: DatasetName::MNIST,
            dir: None,
            val_size: default_val(),
            split_seed: 0,
            train_subset: None,
            test_subset: None,
            subset_balanced: false,
            subset_seed: 0,
            pad_to: None,
            augment: None,
            verify: true,
        }
    }
}

impl DataParams {
    /// The folder the files are read from: `dir`, or the dataset's default folder.
    pub fn dir(&self) -> Result<PathBuf, DataError> {
        let src = self.dataset.source();
        match (&self.dir, src.default_dir) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(d)) => Ok(PathBuf::from(d)),
            (None, None) => Err(DataError::Invalid(format!(
                "dataset `{}` has no default folder. {}",
                src.name, src.obtain
            ))),
        }
    }

    /// The dataset files, whose content enters the key. Empty when the folder is unknown
    /// ([`DataParams::check`] reports that).
    pub fn files(&self) -> Vec<PathBuf> {
        match self.dir() {
            Ok(dir) => self
                .dataset
                .source()
                .files
                .iter()
                .map(|f| dir.join(f))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `[channels, height, width]` of the samples the stages see (after `pad_to`).
    pub fn input_shape(&self) -> [usize; 3] {
        let [c, h, w] = self.dataset.source().shape;
        match self.pad_to {
            Some(p) => [c, p.max(h), p.max(w)],
            None => [c, h, w],
        }
    }

    pub fn classes(&self) -> usize {
        self.dataset.source().classes
    }

    /// Checks that need no file: a stage's `check` calls it, so the mistake is reported
    /// when the pipeline is read.
    pub fn check(&self) -> Result<(), String> {
        self.dir().map_err(|e| e.to_string())?;
        let src = self.dataset.source();
        for (field, n) in [
            ("train_subset", self.train_subset),
            ("test_subset", self.test_subset),
        ] {
            if n == Some(0) {
                return Err(format!(
                    "`data.{field}: 0` leaves no samples; give a positive count or remove it"
                ));
            }
        }
        if self.subset_balanced && self.train_subset.is_none() && self.test_subset.is_none() {
            return Err(
                "`data.subset_balanced` applies to `train_subset` and `test_subset`; \
                        set one of them or remove it"
                    .into(),
            );
        }
        if self.subset_seed != 0 && !self.subset_balanced {
            return Err("`data.subset_seed` only picks class-balanced subsets; set \
                        `subset_balanced: true` or remove it"
                .into());
        }
        if let Some(p) = self.pad_to {
            let [_, h, w] = src.shape;
            if p < h || p < w {
                return Err(format!(
                    "`data.pad_to: {p}` is smaller than {}'s {h}×{w} images; use at least {}",
                    src.title,
                    h.max(w)
                ));
            }
        }
        if self.augment.as_ref().is_some_and(Augment::is_identity) {
            return Err(
                "`data.augment` does nothing: set `crop_padding` above 0 or \
                        `flip: true`, or remove it"
                    .into(),
            );
        }
        Ok(())
    }

    /// Removes the fields that must not enter a key from a stage's normalised parameters.
    pub fn strip_locations(mut params: Value) -> Value {
        if let Some(d) = params.get_mut("data").and_then(Value::as_object_mut) {
            d.remove("dir");
            d.remove("verify");
        }
        params
    }

    /// As [`DataParams::strip_locations`], and also drops `augment`, which an evaluation
    /// ignores (a `data` block shared with training may carry it).
    pub fn strip_for_evaluation(params: Value) -> Value {
        let mut params = Self::strip_locations(params);
        if let Some(d) = params.get_mut("data").and_then(Value::as_object_mut) {
            d.remove("augment");
        }
        params
    }

    /// The fields the loaded splits depend on (everything but `augment`): the memo key of
    /// loaded splits, and what identifies a split's samples in a recorded evaluation.
    pub(crate) fn load_key(&self) -> String {
        let mut p = self.clone();
        p.augment = None;
        p.dir = self.dir().ok();
        serde_json::to_string(&p).expect("data params serialise")
    }
}

/// Train, validation and test splits, shared between stages.
pub struct Splits {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Splits {
    /// Bytes held in memory by the three splits.
    pub fn bytes(&self) -> usize {
        self.train.bytes() + self.val.bytes() + self.test.bytes()
    }
}

/// Loaded splits by the parameters that shape them (all but `augment`), for the life of
/// the process. Images stay bytes: MNIST's splits take 55 MB, CIFAR-10's 184 MB.
#[derive(Default)]
pub struct DataCache {
    splits: Mutex<HashMap<String, Arc<Splits>>>,
}

impl DataCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn load(&self, p: &DataParams) -> Result<Arc<Splits>, DataError> {
        let memo_key = p.load_key();
        if let Some(s) = self
            .splits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&memo_key)
        {
            return Ok(s.clone());
        }
        let s = Arc::new(load_splits(p)?);
        self.splits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(memo_key, s.clone());
        Ok(s)
    }
}

/// Reads the dataset and cuts it as `p` says: pad, validation split, subsets.
fn load_splits(p: &DataParams) -> Result<Splits, DataError> {
    let src = p.dataset.source();
    let dir = p.dir()?;
    let t = std::time::Instant::now();
    let mut d = (src.load)(&dir, p.verify)?;
    if let Some(side) = p.pad_to {
        d.train = d.train.pad_to(side)?;
        d.test = d.test.pad_to(side)?;
    }
    let (mut train, mut val) = split_validation(&d.train, p.val_size, p.split_seed)?;
    drop(d.train);
    let mut test = d.test;
    let cut = |s: &Split, n: usize| -> Result<Split, DataError> {
        if p.subset_balanced {
            balanced_subset(s, n, p.subset_seed)
        } else {
            Ok(subset(s, n))
        }
    };
    if let Some(n) = p.train_subset {
        train = cut(&train, n)?;
    }
    if let Some(n) = p.test_subset {
        test = cut(&test, n)?;
        val = cut(&val, n)?;
    }
    let s = Splits { train, val, test };
    tracing::info!(
        dataset = src.name,
        dir = %dir.display(),
        train = s.train.n,
        val = s.val.n,
        test = s.test.n,
        bytes = s.bytes(),
        ms = t.elapsed().as_millis() as u64,
        "dataset loaded"
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Inputs, Targets};
    use serde_json::json;

    fn parse(v: Value) -> Result<DataParams, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn normalised(v: Value) -> Value {
        serde_json::to_value(parse(v).unwrap()).unwrap()
    }

    #[test]
    fn defaults_normalise_to_the_original_fields() {
        // Exactly the fields (and values) the data block has always had: keys stay the same.
        let want = json!({
            "dataset": "mnist", "dir": "data/mnist", "val_size": 5000, "split_seed": 0,
            "train_subset": null, "test_subset": null, "verify": true
        });
        assert_eq!(normalised(json!({"dir": "data/mnist"})), want);
        let mut no_dir = want.clone();
        no_dir.as_object_mut().unwrap().remove("dir");
        assert_eq!(normalised(json!({})), no_dir);
        // Defaults written out explicitly are omitted too.
        let explicit = json!({
            "dir": "data/mnist", "subset_balanced": false, "subset_seed": 0,
            "pad_to": null, "augment": null
        });
        assert_eq!(normalised(explicit), want);
        assert_eq!(
            DataParams::strip_locations(json!({"data": normalised(json!({}))})),
            json!({"data": {"dataset": "mnist", "val_size": 5000, "split_seed": 0,
                            "train_subset": null, "test_subset": null}})
        );
    }

    #[test]
    fn new_fields_enter_the_normalised_form_when_set() {
        let v = normalised(json!({
            "dataset": "fashion_mnist", "train_subset": 100, "subset_balanced": true,
            "subset_seed": 3, "pad_to": 32, "augment": {"flip": true}
        }));
        assert_eq!(
            v,
            json!({
                "dataset": "fashion_mnist", "val_size": 5000, "split_seed": 0,
                "train_subset": 100, "test_subset": null, "subset_balanced": true,
                "subset_seed": 3, "pad_to": 32,
                "augment": {"crop_padding": 0, "flip": true}, "verify": true
            })
        );
        let eval = DataParams::strip_for_evaluation(json!({ "data": v.clone() }));
        assert!(eval["data"].get("augment").is_none() && eval["data"]["pad_to"] == 32);
        let train = DataParams::strip_locations(json!({ "data": v }));
        assert_eq!(train["data"]["augment"]["flip"], true);
    }

    #[test]
    fn bad_settings_are_reported() {
        let e = parse(json!({"dataset": "imagenet"})).unwrap_err();
        assert!(
            e.contains(
                "unknown dataset `imagenet`; the datasets are: mnist, fashion_mnist, cifar10"
            ),
            "{e}"
        );
        assert!(
            parse(json!({"augment": {"crop": 4}}))
                .unwrap_err()
                .contains("unknown field")
        );
        let check = |v| parse(v).unwrap().check().unwrap_err();
        let e = check(json!({"dataset": "cifar10"}));
        assert!(
            e.contains(
                "dataset `cifar10` has no default folder. CIFAR-10 is not shipped with pipe"
            ) && e.contains(
                "set the stage's `data.dir` to the extracted `cifar-10-batches-bin` folder"
            ),
            "{e}"
        );
        assert!(check(json!({"subset_balanced": true})).contains("set one of them"));
        assert!(
            check(json!({"train_subset": 5, "subset_seed": 2})).contains("subset_balanced: true")
        );
        let e = check(json!({"dataset": "fashion_mnist", "pad_to": 20}));
        assert!(
            e.contains("`data.pad_to: 20` is smaller than Fashion-MNIST's 28×28"),
            "{e}"
        );
        assert!(check(json!({"augment": {}})).contains("does nothing"));
        let ok = parse(json!({"dataset": "cifar10", "dir": "x", "augment": {"crop_padding": 4}}))
            .unwrap();
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.input_shape(), [3, 32, 32]);
        assert_eq!(ok.files()[5], PathBuf::from("x/test_batch.bin"));
        let padded = parse(json!({"dataset": "fashion_mnist", "pad_to": 32})).unwrap();
        assert_eq!(padded.input_shape(), [1, 32, 32]);
        assert_eq!(
            padded.files()[0],
            PathBuf::from("data/fashion-mnist/train-images-idx3-ubyte.gz")
        );
    }

    /// The shipped MNIST through the cache: today's split sizes, bytes in memory, one load
    /// for parameters that differ only in `augment`.
    #[test]
    fn cache_loads_u8_splits_once() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = DataParams {
            dir: Some(root.join("data/mnist")),
            train_subset: Some(1000),
            test_subset: Some(500),
            ..DataParams::default()
        };
        let cache = DataCache::new();
        let a = cache.load(&p).unwrap();
        assert_eq!((a.train.n, a.val.n, a.test.n), (1000, 500, 500));
        assert!(matches!(a.train.inputs, Inputs::U8 { .. }));
        assert_eq!(a.bytes(), 2000 * 785);
        let aug = DataParams {
            augment: Some(Augment {
                crop_padding: 2,
                flip: false,
            }),
            ..p.clone()
        };
        assert!(Arc::ptr_eq(&a, &cache.load(&aug).unwrap()));
        // Balanced subsets: 100 of each class.
        let bal = cache
            .load(&DataParams {
                subset_balanced: true,
                ..p
            })
            .unwrap();
        let mut counts = [0usize; 10];
        bal.train
            .labels()
            .unwrap()
            .iter()
            .for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [100; 10]);
        let Targets::Classes { classes: 10, .. } = bal.test.targets else {
            panic!("class targets")
        };
    }

    #[test]
    fn fashion_mnist_padded_to_32() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = DataParams {
            dataset: DatasetName(&crate::data::fashion_mnist::SOURCE),
            dir: Some(root.join("data/fashion-mnist")),
            val_size: 0,
            test_subset: Some(10),
            pad_to: Some(32),
            ..DataParams::default()
        };
        let s = DataCache::new().load(&p).unwrap();
        assert_eq!((s.train.n, s.val.n, s.test.n), (60_000, 0, 10));
        assert_eq!(s.train.input_shape(), [1, 32, 32]);
        assert_eq!(s.train.bytes(), 60_000 * (1024 + 1));
        let Inputs::U8 { data, .. } = &s.test.inputs else {
            panic!("bytes")
        };
        // The border is padding: rows 0, 1, 30, 31 and columns 0, 1, 30, 31 are 0.
        for img in data.chunks(1024) {
            for i in 0..32 {
                for j in [0, 1, 30, 31] {
                    assert_eq!((img[i * 32 + j], img[j * 32 + i]), (0, 0));
                }
            }
        }
    }
}
