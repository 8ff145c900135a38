//! `teacher_data`: Gaussian inputs labelled by a teacher network (Tian et al. 2019): x drawn
//! from N(0, std²) in every input dimension, targets = the teacher's outputs (regression).
//! Written as a generated dataset ([`crate::data::generated`]): a training split and an
//! evaluation split, that `train`, `evaluate` and `correlate` take through their `data` input.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dataset::DataParams;
use super::model_facts::ModelFacts;
use super::{InputEntry, MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::data::generated::{
    DATASET, DATASET_JSON, F32LE, GeneratedMeta, read_split, split_files, write_f32,
};
use crate::data::{Split, Targets};
use crate::nn::ModelSpec;
use crate::nn::methods::luck::teacher::{gaussian_inputs, mlp_layer_outputs};

/// The most a generated dataset may take on disk (and in memory when read): 2 GiB.
pub const MAX_DATASET_BYTES: u128 = 2 << 30;

/// Samples labelled at a time (bounds the teacher's activations in memory).
const CHUNK: usize = 8192;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TeacherDataParams {
    /// Standard deviation of every input value (default 10, the reference's `--data_std`;
    /// its README says std 1 gives low correlations).
    #[serde(default = "default_std")]
    pub std: f64,
    /// Training samples (default 100,000).
    #[serde(default = "default_train")]
    pub train: usize,
    /// Held-out samples (default 1,024): validation and test of a training, and the
    /// samples `correlate` compares activations on.
    #[serde(default = "default_eval")]
    pub eval: usize,
    /// Seed of the inputs (default 0); the training and evaluation inputs are independent
    /// streams of it.
    #[serde(default)]
    pub seed: u64,
}

fn default_std() -> f64 {
    10.0
}
fn default_train() -> usize {
    100_000
}
fn default_eval() -> usize {
    1024
}

pub struct TeacherData;

impl TeacherData {
    fn meta(p: &TeacherDataParams, spec: &ModelSpec) -> GeneratedMeta {
        GeneratedMeta {
            format: F32LE.into(),
            d_in: spec.input_dim(),
            d_out: spec.output_dim(),
            train: p.train,
            eval: p.eval,
        }
    }
}

impl Stage for TeacherData {
    type Params = TeacherDataParams;
    const KIND: &'static str = "teacher_data";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[Role::one("teacher").taking(MODEL)];
    const PRODUCES: Option<&'static str> = Some(DATASET);
    const ABOUT: &'static str = "Gaussian inputs labelled by a teacher model (regression targets) \
        {std (10), train (100000), eval (1024), seed (0)}; inputs: teacher (an mlp model)";
    const METRICS: &'static [&'static str] = &[
        "train",
        "eval",
        "d_in",
        "d_out",
        "target_mean",
        "target_var",
    ];

    fn facts(&self, p: &TeacherDataParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> Value {
        match ModelFacts::spec_of(inputs, "teacher") {
            Some(spec) => serde_json::to_value(Self::meta(p, &spec)).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }

    fn check(
        &self,
        p: &TeacherDataParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        if !(p.std.is_finite() && p.std > 0.0) {
            return Err(format!("`std` must be a positive number, got {}", p.std));
        }
        if p.train == 0 {
            return Err("`train: 0` leaves no training samples; give at least 1".into());
        }
        if p.eval < 2 {
            return Err(format!(
                "`eval: {}`: give at least 2 held-out samples (a correlation needs 2)",
                p.eval
            ));
        }
        let Some((from, facts)) = ModelFacts::input(inputs, "teacher") else {
            return Ok(());
        };
        let Some(spec) = facts.spec else {
            return Ok(());
        };
        if !matches!(spec, ModelSpec::Mlp(_)) {
            return Err(format!(
                "the teacher `{}` is a `{}` model; teacher_data labels with an `mlp`",
                from.name,
                spec.family()
            ));
        }
        let meta = Self::meta(p, &spec);
        if meta.bytes() > MAX_DATASET_BYTES {
            return Err(format!(
                "`train: {}` + `eval: {}` samples of {} inputs and {} targets take {:.1} GiB as \
                 f32; the limit is {} GiB: use fewer samples",
                p.train,
                p.eval,
                meta.d_in,
                meta.d_out,
                meta.bytes() as f64 / (1u64 << 30) as f64,
                MAX_DATASET_BYTES >> 30
            ));
        }
        Ok(())
    }

    fn run(&self, p: &TeacherDataParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let teacher = ctx.input("teacher")?.load_model()?;
        let meta = Self::meta(p, &teacher.spec);
        if meta.bytes() > MAX_DATASET_BYTES {
            return Err(StageError::Other(format!(
                "the dataset would take {} bytes; the limit is {MAX_DATASET_BYTES}",
                meta.bytes()
            )));
        }
        let (d_in, d_out) = (meta.d_in, meta.d_out);
        let mut summary = (0f64, 0f64, 0usize);
        for (stream, (split, n)) in [("train", p.train), ("eval", p.eval)]
            .into_iter()
            .enumerate()
        {
            let x = gaussian_inputs(n, d_in, p.std, p.seed, stream as u64);
            let mut y = Vec::with_capacity(n * d_out);
            for rows in chunks(n) {
                if ctx.cancelled() {
                    return Err(StageError::Cancelled);
                }
                let xs = &x[rows.start * d_in..rows.end * d_in];
                let out = mlp_layer_outputs(&teacher.spec, &teacher.weights, &teacher.mask, xs)?;
                y.extend_from_slice(out.last().expect("an mlp has a layer"));
                ctx.progress(rows.end as u64, n as u64, split);
            }
            if stream == 0 {
                summary = y.iter().fold((0.0, 0.0, 0), |(s, q, c), &v| {
                    (s + v as f64, q + (v as f64).powi(2), c + 1)
                });
            }
            let (fx, fy) = split_files(split);
            write_f32(&ctx.out_dir().join(fx), &x)?;
            write_f32(&ctx.out_dir().join(fy), &y)?;
        }
        ctx.write_json(DATASET_JSON, &meta)?;
        let (s, q, c) = summary;
        let mean = s / c.max(1) as f64;
        ctx.set_metric("train", p.train as u64);
        ctx.set_metric("eval", p.eval as u64);
        ctx.set_metric("d_in", d_in as u64);
        ctx.set_metric("d_out", d_out as u64);
        // The scale of the targets: an MSE is read against their variance.
        ctx.set_metric("target_mean", mean);
        ctx.set_metric("target_var", q / c.max(1) as f64 - mean * mean);
        Ok(())
    }
}

fn chunks(n: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n).step_by(CHUNK).map(move |s| s..(s + CHUNK).min(n))
}

/// A generated dataset handed to a stage's `data` input: its description and splits.
pub struct GeneratedData {
    pub meta: GeneratedMeta,
    /// `None` unless asked for.
    pub train: Option<Split>,
    pub eval: Split,
}

/// Reads the dataset of `entry` (a `teacher_data` stage): the evaluation split, and the
/// training split when `with_train`.
pub fn read_generated(entry: &InputEntry, with_train: bool) -> Result<GeneratedData, StageError> {
    let meta: GeneratedMeta = entry.read_json(DATASET_JSON)?;
    if meta.format != F32LE {
        return Err(StageError::Other(format!(
            "{}: unknown dataset format `{}`",
            entry.name, meta.format
        )));
    }
    if meta.bytes() > MAX_DATASET_BYTES {
        return Err(StageError::Other(format!(
            "{}: the dataset claims {} bytes, over the limit",
            entry.name,
            meta.bytes()
        )));
    }
    let read = |split: &str, n: usize| -> Result<Split, StageError> {
        let (fx, fy) = split_files(split);
        Ok(read_split(
            &entry.file(&fx)?,
            &entry.file(&fy)?,
            n,
            meta.d_in,
            meta.d_out,
        )?)
    };
    let train = if with_train {
        Some(read("train", meta.train)?)
    } else {
        None
    };
    let eval = read("eval", meta.eval)?;
    debug_assert!(matches!(eval.targets, Targets::Values { .. }));
    Ok(GeneratedData { meta, train, eval })
}

/// The facts of the generated dataset bound to `role`, when known at plan time.
pub fn generated_facts(
    inputs: &[(String, Vec<UpstreamInfo>)],
    role: &str,
) -> Option<(String, GeneratedMeta)> {
    let u = inputs.iter().find(|(r, _)| r == role)?.1.first()?;
    let meta = serde_json::from_value(u.facts.clone()).ok()?;
    Some((u.name.clone(), meta))
}

/// Whether a generated dataset is bound to the `data` input.
pub fn data_input(inputs: &[(String, Vec<UpstreamInfo>)]) -> bool {
    inputs.iter().any(|(r, u)| r == "data" && !u.is_empty())
}

/// Plan-time checks of a model fed by the generated dataset of the `data` input: the `data:`
/// parameter must be left out (it would be ignored), and the model must take the data's
/// inputs and give one output per target.
pub fn check_generated_fits(
    data: &DataParams,
    spec: Option<&ModelSpec>,
    from: &str,
    inputs: &[(String, Vec<UpstreamInfo>)],
) -> Result<(), String> {
    if *data != DataParams::default() {
        return Err(
            "the `data` input (a generated dataset) replaces the `data:` parameter; \
                    remove `data:` from this stage (and from its defaults)"
                .into(),
        );
    }
    let (Some(spec), Some((name, meta))) = (spec, generated_facts(inputs, "data")) else {
        return Ok(());
    };
    if spec.input_dim() != meta.d_in || spec.output_dim() != meta.d_out {
        return Err(format!(
            "the model of `{from}` maps {} inputs to {} outputs, but `{name}` has {} inputs and \
             {} targets per sample",
            spec.input_dim(),
            spec.output_dim(),
            meta.d_in,
            meta.d_out
        ));
    }
    Ok(())
}
