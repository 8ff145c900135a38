//! `correlate`: how a trained student's hidden nodes match a teacher's (Tian et al. 2019).
//!
//! On the held-out split of a `teacher_data` dataset, for every hidden layer and every teacher
//! node: the best-correlated student node (Pearson over samples of post-ReLU activations), the
//! rank that node had at initialisation (with an `init` input: the student before training),
//! and the fan-out norms of matched against unmatched student nodes. Everything per node goes
//! to `correlate.json`; per-layer summaries are metrics (`layer1.best_mean`, …).
//!
//! It uses all held-out samples by default (1,024 for the default dataset). The reference
//! computes correlations on its first 3 batches of 64 (192 samples), which PROTOCOLS.md notes
//! is noisy for a gate on a 0.95 threshold; `samples` can reproduce it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::model_facts::ModelFacts;
use super::teacher_data::{generated_facts, read_generated};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::data::Inputs;
use crate::data::generated::DATASET;
use crate::nn::methods::luck::correlate::{Acts, LayerMatch, fanout_norms, match_layer};
use crate::nn::methods::luck::teacher::mlp_layer_outputs;
use crate::nn::{Checkpoint, ModelSpec};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct CorrelateParams {
    /// Use the first N held-out samples (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
}

pub struct Correlate;

/// The hidden widths of an mlp (all widths but the input and output).
fn hidden(spec: &ModelSpec) -> Option<Vec<usize>> {
    match spec {
        ModelSpec::Mlp(m) if m.widths.len() >= 2 => Some(m.widths[1..m.widths.len() - 1].to_vec()),
        _ => None,
    }
}

impl Stage for Correlate {
    type Params = CorrelateParams;
    const KIND: &'static str = "correlate";
    const VERSION: u32 = 1;
    const ROLES: &'static [Role] = &[
        Role::one("teacher").taking(MODEL),
        Role::one("student").taking(MODEL),
        Role::optional("init").taking(MODEL),
        Role::one("data").taking(DATASET),
    ];
    const ABOUT: &'static str = "teacher-student node matching on held-out data: best Pearson \
        correlation per teacher node, winners' rank at init, fan-out norms of matched vs \
        unmatched student nodes {samples (all)}; inputs: teacher, student, init (optional), data";
    const METRICS: &'static [&'static str] = &["samples", "layer*"];

    fn check(
        &self,
        p: &CorrelateParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        if let Some(n) = p.samples
            && n < 2
        {
            return Err(format!(
                "`samples: {n}`: a correlation needs at least 2 samples"
            ));
        }
        let mut depth: Option<((usize, usize), String)> = None;
        for role in ["teacher", "student", "init"] {
            let Some((
                from,
                ModelFacts {
                    spec: Some(spec), ..
                },
            )) = ModelFacts::input(inputs, role)
            else {
                continue;
            };
            let Some(h) = hidden(&spec) else {
                return Err(format!(
                    "input `{role}` (`{}`) is a `{}` model; correlate compares `mlp` models",
                    from.name,
                    spec.family()
                ));
            };
            if let Some((d, first)) = &depth
                && *d != (h.len(), spec.input_dim())
            {
                return Err(format!(
                    "input `{role}` (`{}`) has {} hidden layers and {} inputs, but `{first}` has \
                     {} and {}; teacher and student must have the same depth and input",
                    from.name,
                    h.len(),
                    spec.input_dim(),
                    d.0,
                    d.1
                ));
            }
            if let Some((_, meta)) = generated_facts(inputs, "data")
                && meta.d_in != spec.input_dim()
            {
                return Err(format!(
                    "input `{role}` (`{}`) takes {} inputs but the data has {}",
                    from.name,
                    spec.input_dim(),
                    meta.d_in
                ));
            }
            depth.get_or_insert(((h.len(), spec.input_dim()), from.name.clone()));
        }
        if let (Some(n), Some((name, meta))) = (p.samples, generated_facts(inputs, "data"))
            && n > meta.eval
        {
            return Err(format!(
                "`samples: {n}` but `{name}` has {} held-out samples",
                meta.eval
            ));
        }
        Ok(())
    }

    fn run(&self, p: &CorrelateParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let teacher = ctx.input("teacher")?.load_model()?;
        let student = ctx.input("student")?.load_model()?;
        let init = match ctx.inputs("init") {
            [] => None,
            _ => Some(ctx.input("init")?.load_model()?),
        };
        let data = read_generated(ctx.input("data")?, false)?;
        let Inputs::F32 { data: x, .. } = &data.eval.inputs else {
            return Err(StageError::Other("generated inputs are f32".into()));
        };
        let n = p.samples.unwrap_or(data.eval.n).min(data.eval.n);
        let x = &x[..n * data.meta.d_in];
        let outputs = |m: &Checkpoint| mlp_layer_outputs(&m.spec, &m.weights, &m.mask, x);
        let (t_out, s_out) = (outputs(&teacher)?, outputs(&student)?);
        let i_out = init.as_ref().map(outputs).transpose()?;
        let (Some(th), Some(sh)) = (hidden(&teacher.spec), hidden(&student.spec)) else {
            return Err(StageError::Other("correlate compares mlp models".into()));
        };
        if th.len() != sh.len() {
            return Err(StageError::Other(format!(
                "the teacher has {} hidden layers and the student {}",
                th.len(),
                sh.len()
            )));
        }
        if let Some(i) = &init
            && i.spec != student.spec
        {
            return Err(StageError::Input {
                role: "init".into(),
                message: "its architecture is not the student's".into(),
            });
        }
        let student_w = student.weights.masked(&student.mask);
        let mut layers: Vec<LayerMatch> = Vec::new();
        for l in 0..th.len() {
            let t = Acts {
                data: &t_out[l],
                nodes: th[l],
            };
            let s = Acts {
                data: &s_out[l],
                nodes: sh[l],
            };
            let i = i_out.as_ref().map(|o| Acts {
                data: &o[l],
                nodes: sh[l],
            });
            let fanout = fanout_norms(&student_w.params[2 * (l + 1)].data, sh[l]);
            layers.push(match_layer(l + 1, t, s, i, fanout));
        }
        ctx.write_json(
            "correlate.json",
            &json!({"samples": n, "teacher": teacher.spec, "student": student.spec, "layers": layers}),
        )?;
        ctx.set_metric("samples", n as u64);
        for m in &layers {
            let mut v = Map::new();
            let mut put = |k: &str, x: Option<f64>| {
                if let Some(x) = x.filter(|x| x.is_finite()) {
                    v.insert(k.into(), json!(x));
                }
            };
            put("best_min", Some(m.best_min));
            put("best_mean", Some(m.best_mean));
            put("best_max", Some(m.best_max));
            put("init_rank_mean", m.init_rank_mean);
            put("init_rank_lt10", m.init_rank_lt10);
            put("init_best_mean", m.init_best_mean);
            put("matched", Some(m.matched as f64));
            put("fanout_matched", m.fanout_matched);
            put("fanout_unmatched", m.fanout_unmatched);
            put("fanout_ratio", m.fanout_ratio);
            ctx.set_metric(&format!("layer{}", m.layer), Value::Object(v));
        }
        Ok(())
    }
}
