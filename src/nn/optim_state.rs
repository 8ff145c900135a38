//! Optimiser state as a checkpoint carries it: per parameter, the buffers PyTorch's optimisers
//! keep under the same names (`momentum_buffer` for SGD with momentum, `exp_avg` and
//! `exp_avg_sq` plus the step count for Adam), so that a training started from the
//! checkpoint can continue with its momentum instead of a fresh optimiser.
//!
//! On disk it is `<stem>.optim.safetensors` beside the checkpoint: one tensor per parameter and
//! buffer, named `<parameter>.<buffer>` in the parameter's PyTorch layout, and the optimiser
//! and Adam's step count in the file's metadata. A checkpoint without the file has no state.
//!
//! Here the state is host data in the parameters' own (burn) layout; moving it in and out of
//! burn's optimiser records is [`super::train::TrainSession`]'s job.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use super::checkpoint::{
    Buffer, f32_bytes, f32s, format_err, from_torch, read, serialise_with, tensor, to_torch,
    torch_shape, write_atomic,
};
use super::{Mask, NnError, OptimizerKind, Weights};

/// The state of one optimiser over every parameter of a model, in [`Weights::params`] order.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimState {
    /// SGD with momentum: the velocity of each parameter.
    Sgd { momentum_buffer: Vec<Vec<f32>> },
    /// Adam after `step` updates: first and second moment estimates.
    Adam {
        step: u64,
        exp_avg: Vec<Vec<f32>>,
        exp_avg_sq: Vec<Vec<f32>>,
    },
}

impl OptimState {
    pub fn optimizer(&self) -> OptimizerKind {
        match self {
            OptimState::Sgd { .. } => OptimizerKind::Sgd,
            OptimState::Adam { .. } => OptimizerKind::Adam,
        }
    }

    /// `(buffer name, per-parameter values)` of every buffer the optimiser keeps.
    fn buffers(&self) -> Vec<(&'static str, &Vec<Vec<f32>>)> {
        match self {
            OptimState::Sgd { momentum_buffer } => vec![("momentum_buffer", momentum_buffer)],
            OptimState::Adam {
                exp_avg,
                exp_avg_sq,
                ..
            } => vec![("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
        }
    }

    fn buffers_mut(&mut self) -> Vec<&mut Vec<Vec<f32>>> {
        match self {
            OptimState::Sgd { momentum_buffer } => vec![momentum_buffer],
            OptimState::Adam {
                exp_avg,
                exp_avg_sq,
                ..
            } => vec![exp_avg, exp_avg_sq],
        }
    }

    /// The state with every entry that `mask` removes set to 0: a pruned weight must not
    /// keep moving on the momentum it had while it was alive.
    pub fn masked(&self, weights: &Weights, mask: &Mask) -> OptimState {
        let mut out = self.clone();
        for buffer in out.buffers_mut() {
            for (i, values) in buffer.iter_mut().enumerate() {
                if let Some(m) = mask.of_param(weights, i) {
                    for (v, &keep) in values.iter_mut().zip(m) {
                        if !keep {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
        out
    }

    /// Checks that the state has one buffer of the right size per parameter of `weights`.
    pub fn check(&self, weights: &Weights) -> Result<(), String> {
        for (name, buffer) in self.buffers() {
            if buffer.len() != weights.params.len() {
                return Err(format!(
                    "{name} has {} tensors for {} parameters",
                    buffer.len(),
                    weights.params.len()
                ));
            }
            for (values, p) in buffer.iter().zip(&weights.params) {
                if values.len() != p.data.len() {
                    return Err(format!(
                        "{name} of `{}` has {} values for the parameter's {}",
                        p.name,
                        values.len(),
                        p.data.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

fn path_of(dir: &Path, stem: &str) -> std::path::PathBuf {
    dir.join(format!("{stem}.optim.safetensors"))
}

/// Writes `state` for a model whose parameters are `weights` as `dir/<stem>.optim.safetensors`.
pub fn save_optim_state(
    dir: &Path,
    stem: &str,
    weights: &Weights,
    state: &OptimState,
) -> Result<(), NnError> {
    let path = path_of(dir, stem);
    state.check(weights).map_err(|e| format_err(&path, e))?;
    let mut tensors: Vec<Buffer> = Vec::new();
    for (buffer, values) in state.buffers() {
        for (v, p) in values.iter().zip(&weights.params) {
            tensors.push((
                format!("{}.{buffer}", p.name),
                torch_shape(p.role, &p.shape),
                Dtype::F32,
                f32_bytes(&to_torch(p.role, &p.shape, v)),
            ));
        }
    }
    let mut meta = HashMap::from([(
        "optimizer".to_string(),
        match state.optimizer() {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
        .to_string(),
    )]);
    if let OptimState::Adam { step, .. } = state {
        meta.insert("step".into(), step.to_string());
    }
    let bytes = serialise_with(&path, &tensors, meta)?;
    write_atomic(&path, &bytes)
}

/// Reads the state saved beside checkpoint `dir/<stem>`, `None` when there is none.
pub fn load_optim_state(
    dir: &Path,
    stem: &str,
    weights: &Weights,
) -> Result<Option<OptimState>, NnError> {
    let path = path_of(dir, stem);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read(&path)?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| format_err(&path, format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(&path, format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let per_param = |buffer: &str| -> Result<Vec<Vec<f32>>, NnError> {
        weights
            .params
            .iter()
            .map(|p| {
                let shape = torch_shape(p.role, &p.shape);
                let raw = tensor(
                    &st,
                    &path,
                    &format!("{}.{buffer}", p.name),
                    Dtype::F32,
                    &shape,
                )?;
                Ok(from_torch(p.role, &p.shape, &f32s(raw)))
            })
            .collect()
    };
    let state = match meta.get("optimizer").map(String::as_str) {
        Some("sgd") => OptimState::Sgd {
            momentum_buffer: per_param("momentum_buffer")?,
        },
        Some("adam") => {
            let step = meta
                .get("step")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format_err(&path, "Adam state without a `step` in its metadata"))?;
            OptimState::Adam {
                step,
                exp_avg: per_param("exp_avg")?,
                exp_avg_sq: per_param("exp_avg_sq")?,
            }
        }
        other => {
            return Err(format_err(
                &path,
                format!("unknown optimiser {other:?} in the metadata (expected sgd or adam)"),
            ));
        }
    };
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, ModelSpec, init_weights};

    fn model() -> (ModelSpec, Weights) {
        let spec: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[2,"M"],"fc":[3],"classes":2,"input":[1,4,4],"batch_norm":true}"#,
        )
        .unwrap();
        let w = init_weights(&spec, InitScheme::KaimingNormal, 3);
        (spec, w)
    }

    fn counting(w: &Weights, offset: f32) -> Vec<Vec<f32>> {
        w.params
            .iter()
            .map(|p| (0..p.data.len()).map(|i| i as f32 + offset).collect())
            .collect()
    }

    #[test]
    fn round_trips_in_pytorch_layout() {
        let (_, w) = model();
        let dir = tempfile::tempdir().unwrap();
        let adam = OptimState::Adam {
            step: 17,
            exp_avg: counting(&w, 0.5),
            exp_avg_sq: counting(&w, 0.25),
        };
        save_optim_state(dir.path(), "model", &w, &adam).unwrap();
        assert_eq!(
            load_optim_state(dir.path(), "model", &w).unwrap(),
            Some(adam)
        );
        let sgd = OptimState::Sgd {
            momentum_buffer: counting(&w, -1.0),
        };
        save_optim_state(dir.path(), "m2", &w, &sgd).unwrap();
        // The linear layer's buffer is stored as PyTorch's [out, in]: fc1 is [32 → 3] in
        // burn's [in, out], so torch element (o=1, i=0) is burn element (i=0, o=1) = 1 - 1.
        let bytes = std::fs::read(dir.path().join("m2.optim.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let fc = st.tensor("fc1.weight.momentum_buffer").unwrap();
        assert_eq!(fc.shape(), [3, 8]);
        assert_eq!(f32s(fc.data())[8], 0.0);
        assert_eq!(f32s(fc.data())[1], 2.0);
        assert_eq!(load_optim_state(dir.path(), "m2", &w).unwrap(), Some(sgd));
        assert_eq!(load_optim_state(dir.path(), "none", &w).unwrap(), None);
    }

    #[test]
    fn masking_zeroes_removed_entries_only() {
        let (spec, w) = model();
        let mut mask = Mask::dense(&spec);
        mask.layers[0][1] = false;
        mask.extra.insert("bn1.weight".into(), vec![true, false]);
        let s = OptimState::Sgd {
            momentum_buffer: counting(&w, 1.0),
        }
        .masked(&w, &mask);
        let OptimState::Sgd { momentum_buffer: m } = s else {
            unreachable!()
        };
        assert_eq!(m[0][..3], [1.0, 0.0, 3.0]);
        let bn = w
            .params
            .iter()
            .position(|p| p.name == "bn1.weight")
            .unwrap();
        assert_eq!(m[bn], [1.0, 0.0]);
        assert_eq!(
            m.last().unwrap(),
            &counting(&w, 1.0).last().unwrap().clone()
        );
    }

    #[test]
    fn a_state_of_another_model_is_refused() {
        let (_, w) = model();
        let mut short = counting(&w, 0.0);
        short[1].pop();
        let e = OptimState::Sgd {
            momentum_buffer: short,
        }
        .check(&w)
        .unwrap_err();
        assert_eq!(
            e,
            "momentum_buffer of `bn1.weight` has 1 values for the parameter's 2"
        );
    }
}
