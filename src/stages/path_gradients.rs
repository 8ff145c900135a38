//! `path_gradients`: the gradient each path length carries in a trained ResNet (Veit, Wilber &
//! Belongie 2016, section 5, Fig. 6). A ResNet of `n` blocks has `C(n, k)` paths of length
//! `k`; for each `k` in `0..=n`, `draws` sampled paths carry the gradient of a fixed batch of
//! images back to the input alone ([`crate::nn::methods::lesion::path_gradients`]), and the stage records the
//! mean input-gradient norm per length, the number of paths, and their product, the length's
//! total gradient magnitude.
//!
//! `curve.json` has one row per length (`k`, `paths`, `grad_norm`, `grad_norm_std`, `total`,
//! `share` of the summed total), so `curve: true` plots draw Fig. 6's three panels. Metrics:
//! `blocks`, `log_slope` (least-squares slope of ln norm against k: negative when the
//! gradient vanishes exponentially with length), `short_share` (the share of the total from
//! paths shorter than the median length n/2), `peak_length` (the length of largest total).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dataset::DataParams;
use super::evaluate::SplitName;
use super::model_facts::{ModelFacts, check_fits};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::methods::lesion::path_gradients::{
    log_linear_slope, path_gradient_norms, paths_of_length,
};
use crate::nn::train::probe_indices;
use crate::nn::{ModelSpec, NnError};
use crate::stats::{mean, round6, sample_std};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PathGradientsParams {
    /// Images in the batch whose gradients are measured: evenly spaced over the split.
    #[serde(default = "default_images")]
    pub images: usize,
    /// Sampled paths per length.
    #[serde(default = "default_draws")]
    pub draws: usize,
    /// Seed of the sampled paths.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "train_split")]
    pub split: SplitName,
    #[serde(default)]
    pub data: DataParams,
}

fn default_images() -> usize {
    128
}
fn default_draws() -> usize {
    10
}
fn train_split() -> SplitName {
    SplitName::Train
}

/// The residual blocks of `spec`, or why it has none.
fn blocks_of(spec: &ModelSpec, from: &str) -> Result<usize, String> {
    let n = spec.program()?.residual_blocks().len();
    if n == 0 {
        return Err(format!(
            "the model of `{from}` ({}) has no residual block: path lengths are those of a ResNet's blocks",
            spec.family()
        ));
    }
    Ok(n)
}

pub struct PathGradients;

impl Stage for PathGradients {
    type Params = PathGradientsParams;
    const KIND: &'static str = "path_gradients";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const ABOUT: &'static str = "input-gradient norm per path length of a trained ResNet (Veit et al. Fig. 6): sampled single paths, count × norm {images, draws, seed, split, data}";
    const METRICS: &'static [&'static str] = &[
        "blocks",
        "images",
        "log_slope",
        "short_share",
        "peak_length",
    ];

    fn external_inputs(&self, p: &PathGradientsParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    fn key_params(&self, params: Value) -> Value {
        DataParams::strip_for_evaluation(params)
    }

    fn check(
        &self,
        p: &PathGradientsParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        p.data.check()?;
        if p.images == 0 || p.draws == 0 {
            return Err("`images` and `draws` must be at least 1".into());
        }
        if let Some((
            from,
            ModelFacts {
                spec: Some(spec), ..
            },
        )) = ModelFacts::input(inputs, "model")
        {
            check_fits(&spec, &p.data, &from.name)?;
            blocks_of(&spec, &from.name)?;
        }
        Ok(())
    }

    fn run(&self, p: &PathGradientsParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.clone();
        let m = input.load_model()?;
        let n = blocks_of(&m.spec, &input.name).map_err(StageError::Other)?;
        let splits = ctx.data().load(&p.data)?;
        let split = p.split.of(&splits);
        let batch = split.take(&probe_indices(split.n, p.images));
        let total = ((n + 1) * p.draws) as u64;
        let lengths = {
            let ctx = &*ctx;
            path_gradient_norms(&m, &batch, p.draws, p.seed, ctx.device(), &mut |done, _| {
                ctx.progress(done as u64, total, "paths")
            })
        }
        .map_err(|e| match e {
            NnError::Cancelled => StageError::Cancelled,
            e => StageError::Nn(e),
        })?;

        let rows: Vec<(usize, f64, f64, f64)> = lengths
            .iter()
            .map(|l| {
                let norm = mean(&l.norms).unwrap_or(f64::NAN);
                let std = sample_std(&l.norms).unwrap_or(0.0);
                (l.k, paths_of_length(n, l.k), norm, std)
            })
            .collect();
        let sum: f64 = rows.iter().map(|r| r.1 * r.2).sum();
        let curve: Vec<Value> = rows
            .iter()
            .map(|&(k, paths, norm, std)| {
                json!({
                    "k": k,
                    "paths": paths,
                    "grad_norm": norm,
                    "grad_norm_std": std,
                    "total": paths * norm,
                    "share": round6(paths * norm / sum),
                })
            })
            .collect();
        let slope = log_linear_slope(&rows.iter().map(|r| (r.0 as f64, r.2)).collect::<Vec<_>>());
        let short: f64 = rows.iter().filter(|r| 2 * r.0 < n).map(|r| r.1 * r.2).sum();
        let peak = rows
            .iter()
            .max_by(|a, b| (a.1 * a.2).total_cmp(&(b.1 * b.2)))
            .map(|r| r.0)
            .unwrap_or(0);
        ctx.set_metric("blocks", n as u64);
        ctx.set_metric("images", batch.n as u64);
        if let Some(s) = slope {
            ctx.set_metric("log_slope", round6(s));
        }
        ctx.set_metric("short_share", round6(short / sum));
        ctx.set_metric("peak_length", peak as u64);
        ctx.write_json("curve.json", &curve)
    }
}
