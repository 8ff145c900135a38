//! A [`TrainState`] (and a [`NetAugState`]) on disk: the files of a training's progress
//! checkpoint.
//!
//! ```text
//! state.safetensors, state.mask.safetensors, state.json   the weights after `done` (a checkpoint)
//! state.optim.safetensors                                  the optimiser's state, when it keeps one
//! ckpt/iter_<k>.*                                          the `save_at` checkpoints passed so far
//! progress.json                                            the rest: curve, loss sums, counters
//! ```
//!
//! A NetAug training's master model is wider than any model spec it publishes, so its state
//! is kept as plain tensors: `master.safetensors` (`param.<i>` and `momentum.<i>`, flat, in
//! program order) beside its own `progress.json`.
//!
//! Every floating-point number of `progress.json` is stored as its bits, so that a
//! continued run reads back exactly what it left (NaN included: an MSE run's accuracies).

use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    Buffer, Checkpoint, f32_bytes, f32s, format_err, load_checkpoint, read, save_checkpoint,
    serialise_with, tensor, write_atomic,
};
use super::methods::netaug::NetAugState;
use super::optim_state::{load_optim_state, save_optim_state};
use super::train::{EvalPoint, TrainState};
use super::{Mask, ModelSpec, NnError};

const STATE: &str = "state";
const PROGRESS_JSON: &str = "progress.json";
/// Bumped when the layout changes; a checkpoint of another format is not resumed.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressFile {
    format: u32,
    done: u64,
    curve: Vec<PointBits>,
    /// The `save_at` iterations passed, in order, with whether each has an optimiser state.
    checkpoints: Vec<(u64, bool)>,
    loss_sum: Option<u32>,
    since_point: u64,
    last_loss: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointBits {
    iteration: u64,
    train_loss: u64,
    val_loss: Option<u64>,
    val_acc: Option<u64>,
    test_loss: u64,
    test_acc: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_error: Option<u64>,
}

impl From<&EvalPoint> for PointBits {
    fn from(p: &EvalPoint) -> Self {
        PointBits {
            iteration: p.iteration,
            train_loss: p.train_loss.to_bits(),
            val_loss: p.val_loss.map(f64::to_bits),
            val_acc: p.val_acc.map(f64::to_bits),
            test_loss: p.test_loss.to_bits(),
            test_acc: p.test_acc.to_bits(),
            train_error: p.train_error.map(f64::to_bits),
        }
    }
}

impl From<&PointBits> for EvalPoint {
    fn from(p: &PointBits) -> Self {
        EvalPoint {
            iteration: p.iteration,
            train_loss: f64::from_bits(p.train_loss),
            val_loss: p.val_loss.map(f64::from_bits),
            val_acc: p.val_acc.map(f64::from_bits),
            test_loss: f64::from_bits(p.test_loss),
            test_acc: f64::from_bits(p.test_acc),
            train_error: p.train_error.map(f64::from_bits),
        }
    }
}

fn stem_of(k: u64) -> String {
    format!("ckpt/iter_{k}")
}

/// Writes `state` of a training of `spec` under `mask` (data seed `seed`) into `dir`.
pub fn save_train_state(
    dir: &Path,
    spec: &ModelSpec,
    mask: &Mask,
    seed: u64,
    state: &TrainState,
) -> Result<(), NnError> {
    let checkpoint = |weights: &super::Weights, step| Checkpoint {
        spec: spec.clone(),
        weights: weights.clone(),
        mask: mask.clone(),
        step,
        seed,
    };
    save_checkpoint(dir, STATE, &checkpoint(&state.weights, state.done))?;
    if let Some(o) = &state.optimizer {
        save_optim_state(dir, STATE, &state.weights, o)?;
    }
    for ((k, w), o) in state.checkpoints.iter().zip(&state.checkpoint_states) {
        let stem = stem_of(*k);
        std::fs::create_dir_all(dir.join("ckpt")).map_err(|source| NnError::CheckpointIo {
            action: "create the folder of",
            path: dir.join("ckpt"),
            source,
        })?;
        save_checkpoint(dir, &stem, &checkpoint(w, *k))?;
        if let Some(o) = o {
            save_optim_state(dir, &stem, w, o)?;
        }
    }
    let progress = ProgressFile {
        format: FORMAT,
        done: state.done,
        curve: state.curve.iter().map(PointBits::from).collect(),
        checkpoints: state
            .checkpoints
            .iter()
            .zip(&state.checkpoint_states)
            .map(|((k, _), o)| (*k, o.is_some()))
            .collect(),
        loss_sum: state.loss_sum.map(f32::to_bits),
        since_point: state.since_point,
        last_loss: state.last_loss.to_bits(),
    };
    write_progress(dir, &progress)
}

/// Reads the state [`save_train_state`] wrote into `dir`.
pub fn load_train_state(dir: &Path) -> Result<TrainState, NnError> {
    let path = dir.join(PROGRESS_JSON);
    let bytes = std::fs::read(&path).map_err(|source| NnError::CheckpointIo {
        action: "read",
        path: path.clone(),
        source,
    })?;
    let p: ProgressFile =
        serde_json::from_slice(&bytes).map_err(|e| NnError::CheckpointFormat {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    if p.format != FORMAT {
        return Err(NnError::CheckpointFormat {
            path,
            problem: format!("format {}, this pipe reads {FORMAT}", p.format),
        });
    }
    let weights = load_checkpoint(dir, STATE)?.weights;
    let optimizer = load_optim_state(dir, STATE, &weights)?;
    let mut checkpoints = Vec::new();
    let mut checkpoint_states = Vec::new();
    for &(k, has_state) in &p.checkpoints {
        let stem = stem_of(k);
        let w = load_checkpoint(dir, &stem)?.weights;
        let o = if has_state {
            let o = load_optim_state(dir, &stem, &w)?;
            if o.is_none() {
                return Err(NnError::CheckpointFormat {
                    path: dir.join(format!("{stem}.optim.safetensors")),
                    problem: "missing, though progress.json lists it".into(),
                });
            }
            o
        } else {
            None
        };
        checkpoints.push((k, w));
        checkpoint_states.push(o);
    }
    Ok(TrainState {
        done: p.done,
        weights,
        optimizer,
        curve: p.curve.iter().map(EvalPoint::from).collect(),
        checkpoints,
        checkpoint_states,
        loss_sum: p.loss_sum.map(f32::from_bits),
        since_point: p.since_point,
        last_loss: f64::from_bits(p.last_loss),
    })
}

const MASTER: &str = "master.safetensors";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetAugProgressFile {
    format: u32,
    done: u64,
    /// The length of each master parameter, in order.
    lengths: Vec<usize>,
    curve: Vec<PointBits>,
    loss_sum: u32,
    last_loss: u64,
}

fn write_progress(dir: &Path, progress: &impl Serialize) -> Result<(), NnError> {
    let path = dir.join(PROGRESS_JSON);
    let text = serde_json::to_vec_pretty(progress).expect("progress serialises");
    std::fs::write(&path, text).map_err(|source| NnError::CheckpointIo {
        action: "write",
        path,
        source,
    })
}

/// Writes a NetAug training's `state` into `dir`.
pub fn save_netaug_state(dir: &Path, state: &NetAugState) -> Result<(), NnError> {
    let path = dir.join(MASTER);
    let flat = |prefix: &str, v: &[Vec<f32>]| -> Vec<Buffer> {
        v.iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    format!("{prefix}.{i}"),
                    vec![t.len()],
                    Dtype::F32,
                    f32_bytes(t),
                )
            })
            .collect()
    };
    let mut buffers = flat("param", &state.params);
    buffers.extend(flat("momentum", &state.momentum));
    write_atomic(&path, &serialise_with(&path, &buffers, Default::default())?)?;
    write_progress(
        dir,
        &NetAugProgressFile {
            format: FORMAT,
            done: state.done,
            lengths: state.params.iter().map(Vec::len).collect(),
            curve: state.curve.iter().map(PointBits::from).collect(),
            loss_sum: state.loss_sum.to_bits(),
            last_loss: state.last_loss.to_bits(),
        },
    )
}

/// Reads the state [`save_netaug_state`] wrote into `dir`.
pub fn load_netaug_state(dir: &Path) -> Result<NetAugState, NnError> {
    let path = dir.join(PROGRESS_JSON);
    let p: NetAugProgressFile =
        serde_json::from_slice(&read(&path)?).map_err(|e| format_err(&path, e.to_string()))?;
    if p.format != FORMAT {
        return Err(format_err(
            &path,
            format!("format {}, this pipe reads {FORMAT}", p.format),
        ));
    }
    let path = dir.join(MASTER);
    let bytes = read(&path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(&path, format!("cannot parse: {e}")))?;
    let tensors = |prefix: &str| -> Result<Vec<Vec<f32>>, NnError> {
        p.lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| tensor(&st, &path, &format!("{prefix}.{i}"), Dtype::F32, &[n]).map(f32s))
            .collect()
    };
    Ok(NetAugState {
        done: p.done,
        params: tensors("param")?,
        momentum: tensors("momentum")?,
        curve: p.curve.iter().map(EvalPoint::from).collect(),
        loss_sum: f32::from_bits(p.loss_sum),
        last_loss: f64::from_bits(p.last_loss),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netaug_state_reads_back_bit_for_bit() {
        let dir = std::env::temp_dir().join(format!("pipe-netaug-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = NetAugState {
            done: 7,
            params: vec![vec![1.5, -0.0, f32::MIN_POSITIVE], vec![3.25]],
            momentum: vec![vec![0.1, 0.2, 0.3], vec![-1e-30]],
            curve: vec![EvalPoint {
                iteration: 5,
                train_loss: 1.234_567_890_123_456_7,
                val_loss: None,
                val_acc: None,
                test_loss: 0.1 + 0.2,
                test_acc: 0.75,
                train_error: Some(0.125),
            }],
            loss_sum: 12.345_678,
            last_loss: f64::NAN,
        };
        save_netaug_state(&dir, &state).unwrap();
        let back = load_netaug_state(&dir).unwrap();
        assert_eq!(back.done, 7);
        assert_eq!(back.params, state.params);
        assert_eq!(back.momentum, state.momentum);
        assert_eq!(back.curve, state.curve);
        assert_eq!(back.loss_sum.to_bits(), state.loss_sum.to_bits());
        assert!(back.last_loss.is_nan());
        // A second write of the same state gives the same bytes.
        let first = std::fs::read(dir.join(MASTER)).unwrap();
        save_netaug_state(&dir, &state).unwrap();
        assert_eq!(std::fs::read(dir.join(MASTER)).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
