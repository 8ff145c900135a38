//! `data_splits`: the training, validation and test splits of a dataset exactly as `train` and
//! `evaluate` see them (validation carve-out, subsets, padding), written for a user's program
//! (a `command` stage), so that a PyTorch script trains and tests on the same samples as pipe
//! and normalises them the same way without knowing pipe's constants.
//!
//! Files: `data.json` (dataset, classes, image shape, per-channel normalisation, per split its
//! file and size) and per non-empty split `<split>.safetensors` with `images` (u8
//! `[n, c, h, w]`) and `labels` (u8 `[n]`). Pixels stay bytes, as pipe keeps them: a script
//! gets pipe's inputs bit for bit with `(images / 255 - mean[c]) / std[c]` in f32, in that
//! order.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::dataset::DataParams;
use super::{Role, Stage, StageContext, StageError};
use crate::data::{Inputs, Split, Targets};

/// The artifact this kind produces.
pub const SPLITS: &str = "splits";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DataSplitsParams {
    #[serde(default)]
    pub data: DataParams,
}

pub struct DataSplits;

impl Stage for DataSplits {
    type Params = DataSplitsParams;
    const KIND: &'static str = "data_splits";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[];
    const PRODUCES: Option<&'static str> = Some(SPLITS);
    const ABOUT: &'static str = "a dataset's train/val/test splits as train and evaluate see them, for a command stage (data.json + <split>.safetensors) {data}";
    const METRICS: &'static [&'static str] = &["train_n", "val_n", "test_n"];

    fn external_inputs(&self, p: &DataSplitsParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    /// `augment` is left out: the splits are written unaugmented.
    fn key_params(&self, params: serde_json::Value) -> serde_json::Value {
        DataParams::strip_for_evaluation(params)
    }

    fn check(
        &self,
        p: &DataSplitsParams,
        _inputs: &[(String, Vec<super::UpstreamInfo>)],
    ) -> Result<(), String> {
        p.data.check()
    }

    fn run(&self, p: &DataSplitsParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let splits = ctx.data().load(&p.data)?;
        let [c, h, w] = splits.train.input_shape();
        let mut listed = serde_json::Map::new();
        let mut norm = None;
        for (name, split) in [
            ("train", &splits.train),
            ("val", &splits.val),
            ("test", &splits.test),
        ] {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            ctx.set_metric(&format!("{name}_n"), split.n as u64);
            if split.n == 0 {
                listed.insert(name.into(), json!({"n": 0}));
                continue;
            }
            let (images, labels, n) = bytes_of(split)?;
            norm.get_or_insert(n);
            let file = format!("{name}.safetensors");
            write_split(&ctx.out_dir().join(&file), images, labels, [c, h, w])?;
            listed.insert(name.into(), json!({"file": file, "n": split.n}));
        }
        let norm = norm.ok_or_else(|| StageError::Other("every split is empty".into()))?;
        ctx.write_json(
            "data.json",
            &json!({
                "dataset": p.data.dataset.source().name,
                "classes": p.data.classes(),
                "shape": [c, h, w],
                "normalization": {
                    "mean": norm.mean,
                    "std": norm.std,
                    "formula": "(images / 255 - mean[c]) / std[c], in float32, in this order",
                },
                "splits": listed,
            }),
        )
    }
}

/// A split's raw pixels, labels and normalisation (image datasets only).
fn bytes_of(split: &Split) -> Result<(&[u8], &[u8], crate::data::Normalization), StageError> {
    match (&split.inputs, &split.targets) {
        (Inputs::U8 { data, norm, .. }, Targets::Classes { labels, .. }) => {
            Ok((data, labels, norm.clone()))
        }
        _ => Err(StageError::Other(
            "data_splits writes image datasets with class labels; this one is not".into(),
        )),
    }
}

fn write_split(
    path: &std::path::Path,
    images: &[u8],
    labels: &[u8],
    [c, h, w]: [usize; 3],
) -> Result<(), StageError> {
    use safetensors::tensor::{Dtype, TensorView};
    let n = labels.len();
    let bad =
        |e: safetensors::SafeTensorError| StageError::Other(format!("{}: {e}", path.display()));
    let views = vec![
        (
            "images".to_string(),
            TensorView::new(Dtype::U8, vec![n, c, h, w], images).map_err(bad)?,
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::U8, vec![n], labels).map_err(bad)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None).map_err(bad)?;
    std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}
