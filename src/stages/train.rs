//! `train`: trains the model it consumes, keeping its mask (pruned weights stay exactly zero).
//!
//! Writes the final model, checkpoints at `save_at` iterations (for late rewinding), and the
//! metrics curve; its metrics include the iteration of lowest validation loss, the lottery
//! ticket paper's early-stopping measure, and the test accuracy there.
//!
//! A long training saves a progress checkpoint every `--checkpoint-every` and when it is
//! stopped (Ctrl-C, SIGTERM from Slurm), and the next attempt at the same key continues from
//! it: the published entry is then byte for byte the one an uninterrupted run publishes.

use serde::{Deserialize, Serialize};

use super::dataset::{DataParams, Splits};
use super::evaluate::SplitName;
use super::evaluations::{self, DataIdentity, Evaluation};
use super::model_facts::{ModelFacts, check_fits};
use super::progress_checkpoints::{CheckpointClock, resume_point};
use super::teacher_data::{check_generated_fits, data_input, read_generated};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::data::generated::DATASET;
use crate::nn::methods::stochastic_depth::{StochasticDepth, branch_norms};
use crate::nn::{
    Checkpoint, Directive, LrSchedule, ModelSpec, NnError, OptimizerKind, Progress, TrainConfig,
    TrainData, TrainHooks, TrainState, load_train_state, save_train_state, train_from,
};
use crate::stats::round4;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    #[serde(default = "adam")]
    pub optimizer: OptimizerKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Optimiser steps; give this or `epochs`.
    #[serde(default)]
    pub iterations: Option<u64>,
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default = "constant")]
    pub schedule: LrSchedule,
    #[serde(default)]
    pub warmup: u64,
    /// Iterations at which to keep a checkpoint (the input's step = the weights training
    /// started from).
    #[serde(default)]
    pub save_at: Vec<u64>,
    /// Count iterations from 0 whatever step the input model is at (fine-tuning a pruned
    /// network for `iterations` more steps). By default a model saved at step k (a late
    /// rewind) continues at k: it trains iterations k..`iterations` with the batches and
    /// learning rates of those iterations, as open_lth does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
    /// Count `iterations`/`epochs` from the input model's step: a model at step k trains
    /// k..k+`iterations`, with those iterations' batches and learning rates (one phase of a
    /// longer run, e.g. RePr's cycles, which a `levels:` group repeats with one template).
    #[serde(default, skip_serializing_if = "is_false")]
    pub relative: bool,
    /// Continue with the optimiser state the input model carries (SGD's momentum, Adam's
    /// moments and step count) instead of a fresh optimiser: a resumed training then follows
    /// the uninterrupted one. Off by default, as open_lth rewinds with a fresh optimiser.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume_optimizer: bool,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Training images (a fixed, evenly spaced subset of the training split) on which every
    /// curve point also measures the training error, in eval mode without augmentation, as
    /// He et al. plot it (Fig. 1 and 6); 0 (the default) measures none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub train_error_subset: usize,
    /// Stochastic depth (Huang et al. 2016): `{survival_last: 0.5}` drops block `l` of `L`
    /// with probability `(l/L)(1 − p_L)` per batch, `{keep: K}` keeps K random blocks per
    /// batch; the saved model is the test-time network (branches scaled by their survival).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stochastic_depth: Option<StochasticDepth>,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// The dataset (ignored, and to be left out, when the `data` input is given).
    #[serde(default)]
    pub data: DataParams,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn adam() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_lr() -> f64 {
    1.2e-3
}
fn default_batch() -> usize {
    60
}
fn constant() -> LrSchedule {
    LrSchedule::Constant
}
fn default_eval_every() -> u64 {
    500
}

pub struct Train;

impl Stage for Train {
    type Params = TrainParams;
    const KIND: &'static str = "train";
    /// 2: a model saved at step k continues at k (late rewinding trains k..T) instead of
    /// restarting the count at 0; every train key changed with it, on purpose.
    const VERSION: u32 = 2;
    /// `data` (optional): a generated dataset (`teacher_data`) to train on instead of the
    /// `data:` parameter: its training split, its held-out split for validation and test, and
    /// the MSE objective (its targets are regression values).
    const ROLES: &'static [Role] = &[
        Role::one("model").taking(MODEL),
        Role::optional("data").taking(DATASET),
    ];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "trains a (masked) model {optimizer, lr, batch, iterations|epochs, schedule, save_at, data; off by default: restart, relative, resume_optimizer, train_error_subset, stochastic_depth}; inputs: model, data (optional: a generated dataset, trained with MSE)";
    const METRICS: &'static [&'static str] = &[
        "iterations",
        "remaining_pct",
        "test_acc",
        "test_loss",
        "val_acc",
        "early_stop_iteration",
        "early_stop_test_acc",
        "train_error",
    ];

    fn external_inputs(&self, p: &TrainParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    fn key_params(&self, params: serde_json::Value) -> serde_json::Value {
        DataParams::strip_locations(params)
    }

    fn check(&self, p: &TrainParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> Result<(), String> {
        match (p.iterations, p.epochs) {
            (Some(_), Some(_)) => return Err("give `iterations` or `epochs`, not both".into()),
            (None, None) => return Err("give `iterations` (optimiser steps) or `epochs`".into()),
            (Some(0), _) | (_, Some(0)) => return Err("training length must be at least 1".into()),
            _ => {}
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err(format!("`lr` must be a positive number, got {}", p.lr));
        }
        if p.batch == 0 {
            return Err("`batch` must be at least 1".into());
        }
        if p.eval_every == 0 {
            return Err("`eval_every` must be at least 1".into());
        }
        if p.restart && p.relative {
            return Err(
                "`restart` (count from 0) and `relative` (count from the input's step) exclude \
                 each other; keep one"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&p.momentum) {
            return Err(format!("`momentum` must be in [0, 1), got {}", p.momentum));
        }
        p.data.check()?;
        if p.resume_optimizer && p.optimizer == OptimizerKind::Sgd && p.momentum == 0.0 {
            return Err(
                "`resume_optimizer: true` with plain SGD (momentum 0), which keeps no state; \
                 set `momentum` or drop `resume_optimizer`"
                    .into(),
            );
        }
        let Some((from, facts)) = ModelFacts::input(inputs, "model") else {
            return Ok(());
        };
        if p.resume_optimizer && facts.optimizer != Some(p.optimizer) {
            return Err(match facts.optimizer {
                Some(other) => format!(
                    "`resume_optimizer: true`, but `{}` carries {other:?} state and this training \
                     uses {:?}; use the same optimiser or drop `resume_optimizer`",
                    from.name, p.optimizer
                ),
                None => format!(
                    "`resume_optimizer: true`, but `{}` (kind `{}`) carries no optimiser \
                     state: only a training with momentum or Adam saves it (and a rewind to one \
                     of its checkpoints after step 0, or a prune of it)",
                    from.name, from.kind
                ),
            });
        }
        if let (Some(sd), Some(spec)) = (&p.stochastic_depth, &facts.spec) {
            let program = spec.program()?;
            sd.check(program.residual_blocks().len())?;
            branch_norms(&program)?;
        }
        if data_input(inputs) {
            check_generated_fits(&p.data, facts.spec.as_ref(), &from.name, inputs)?;
        } else if let Some(spec) = &facts.spec {
            check_fits(spec, &p.data, &from.name)?;
        }
        if let (Some(n), false, false) = (p.iterations, facts.length_scaled, p.relative)
            && let Some(&k) = p.save_at.iter().find(|&&k| k > n)
        {
            return Err(format!(
                "`save_at` has iteration {k}, past the end of training ({n} iterations)"
            ));
        }
        Ok(())
    }

    fn facts(&self, p: &TrainParams, inputs: &[(String, Vec<UpstreamInfo>)]) -> serde_json::Value {
        let keeps_state = p.optimizer == OptimizerKind::Adam || p.momentum > 0.0;
        ModelFacts {
            spec: ModelFacts::spec_of(inputs, "model"),
            checkpoints: Some(p.save_at.clone()),
            length_scaled: false,
            optimizer: keeps_state.then_some(p.optimizer),
        }
        .to_value()
    }

    fn run(&self, p: &TrainParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.clone();
        let start = input.load_model()?;
        if let Some(sd) = &p.stochastic_depth {
            // Again here: a model that `plan` could not see (a script's) is checked now.
            let program = start.spec.program().map_err(StageError::Other)?;
            sd.check(program.residual_blocks().len())
                .and_then(|()| branch_norms(&program).map(|_| ()))
                .map_err(StageError::Other)?;
        }
        let splits = match ctx.inputs("data") {
            [] => ctx.data().load(&p.data)?,
            _ => {
                let g = read_generated(ctx.input("data")?, true)?;
                let train = g.train.expect("asked for the training split");
                std::sync::Arc::new(Splits {
                    train,
                    val: g.eval.clone(),
                    test: g.eval,
                })
            }
        };
        let per_epoch = (splits.train.n / p.batch).max(1) as u64;
        let mut iterations = match (p.iterations, p.epochs) {
            (Some(i), _) => i,
            (None, Some(e)) => e * per_epoch,
            (None, None) => return Err(StageError::Other("no training length".into())),
        };
        // Rethinking's Scratch-B: a `reinit` with `budget: same_flops` scales the length.
        if let Some(scale) = input.metrics.get("budget_scale").and_then(|v| v.as_f64()) {
            iterations = (iterations as f64 * scale).round() as u64;
        }
        let start_step = if p.restart { 0 } else { start.step };
        if p.relative {
            iterations += start_step;
        }
        if start_step > iterations {
            return Err(StageError::Other(format!(
                "the input model `{}` is at step {start_step}, past the end of this training \
                 ({iterations} iterations); raise `iterations`, or set `restart: true` to train \
                 it for {iterations} more steps",
                input.name
            )));
        }
        for &k in &p.save_at {
            if k > iterations || k < start_step {
                return Err(StageError::Other(format!(
                    "save_at {k} is outside this training's iterations {start_step}..={iterations}"
                )));
            }
        }
        let resume = if p.resume_optimizer {
            Some(resumed_state(&input, &start)?)
        } else {
            None
        };
        let cfg = TrainConfig {
            optimizer: p.optimizer,
            lr: p.lr,
            momentum: p.momentum,
            weight_decay: p.weight_decay,
            batch: p.batch,
            iterations,
            schedule: p.schedule.clone(),
            warmup: p.warmup,
            save_at: p.save_at.clone(),
            eval_every: p.eval_every,
            data_seed: p.seed,
            start_step,
            resume,
            train_probe: p.train_error_subset,
            stochastic_depth: p.stochastic_depth.clone(),
        };
        let data = TrainData {
            train: &splits.train,
            val: &splits.val,
            test: &splits.test,
            augment: p.data.augment.as_ref(),
        };
        let device = ctx.device().clone();
        let from = resume_point(
            ctx,
            load_train_state,
            |s| s.done,
            |s| {
                if (cfg.start_step..=cfg.iterations).contains(&s.done) {
                    Ok(())
                } else {
                    Err(format!(
                        "outside this training's {}..={}",
                        cfg.start_step, cfg.iterations
                    ))
                }
            },
        );
        let out = {
            let mut hooks = StageHooks {
                ctx: &*ctx,
                clock: CheckpointClock::new(ctx),
                total: cfg.iterations,
                spec: &start.spec,
                mask: &start.mask,
                seed: p.seed,
            };
            train_from(
                &start.spec,
                &start.weights,
                &start.mask,
                &data,
                &cfg,
                &device,
                from,
                &mut hooks,
            )?
        };
        for ((k, w), state) in out.checkpoints.iter().zip(&out.checkpoint_states) {
            let stem = format!("ckpt/iter_{k}");
            ctx.save_model(
                &stem,
                &Checkpoint {
                    spec: start.spec.clone(),
                    weights: w.clone(),
                    mask: start.mask.clone(),
                    step: *k,
                    seed: p.seed,
                },
            )?;
            if let Some(state) = state {
                ctx.save_optimizer(&stem, w, state)?;
            }
        }
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: start.spec.clone(),
                weights: out.weights.clone(),
                mask: start.mask.clone(),
                step: iterations,
                seed: p.seed,
            },
        )?;
        if let Some(state) = &out.optimizer {
            ctx.save_optimizer("model", &out.weights, state)?;
        }
        ctx.write_json("curve.json", &out.curve)?;
        record_final_evaluations(ctx, p, &out.curve, iterations)?;
        ctx.set_metric("iterations", iterations);
        ctx.set_metric(
            "remaining_pct",
            round4(start.mask.remaining_fraction() * 100.0),
        );
        // Under MSE there is no accuracy (NaN): those metrics are left out.
        if let Some(last) = out.curve.last() {
            if last.test_acc.is_finite() {
                ctx.set_metric("test_acc", last.test_acc);
            }
            ctx.set_metric("test_loss", last.test_loss);
            if let Some(v) = last.val_acc.filter(|v| v.is_finite()) {
                ctx.set_metric("val_acc", v);
            }
            if let Some(e) = last.train_error.filter(|v| v.is_finite()) {
                ctx.set_metric("train_error", e);
            }
        }
        if let Some(es) = &out.early_stop {
            ctx.set_metric("early_stop_iteration", es.iteration);
            if es.test_acc.is_finite() {
                ctx.set_metric("early_stop_test_acc", es.test_acc);
            }
        }
        Ok(())
    }
}

/// Records the final curve point's test (and validation) figures as evaluations of `model`,
/// so that an `evaluate` of it on the same data reads them (see [`evaluations`]). They are the
/// final weights' figures: the loop evaluates after its last step, and `nn::train`'s tests
/// check that the point equals `nn::evaluate` of the saved model bit for bit.
fn record_final_evaluations(
    ctx: &StageContext,
    p: &TrainParams,
    curve: &[crate::nn::EvalPoint],
    iterations: u64,
) -> Result<(), StageError> {
    let Some(last) = curve.last().filter(|l| l.iteration == iterations) else {
        return Ok(());
    };
    let test = (last.test_loss, last.test_acc);
    let val = last.val_loss.zip(last.val_acc);
    let records = match ctx.inputs("data") {
        // Generated data evaluates on its held-out split for both.
        [dataset, ..] => vec![Evaluation::new(
            "model",
            DataIdentity::of_generated(dataset, false),
            test,
        )],
        [] => {
            let mut r = vec![Evaluation::new(
                "model",
                DataIdentity::of_params(&p.data, SplitName::Test),
                test,
            )];
            if let Some(val) = val {
                r.push(Evaluation::new(
                    "model",
                    DataIdentity::of_params(&p.data, SplitName::Val),
                    val,
                ));
            }
            r
        }
    };
    evaluations::record(ctx, &records)
}

/// What the training loop hears back from the stage: progress lines, the cancel flag, and
/// when to hand over its state for a progress checkpoint.
struct StageHooks<'c, 'a> {
    ctx: &'c StageContext<'a>,
    clock: CheckpointClock,
    total: u64,
    spec: &'c ModelSpec,
    mask: &'c crate::nn::Mask,
    seed: u64,
}

impl TrainHooks for StageHooks<'_, '_> {
    fn after_step(&mut self, pr: &Progress) -> Directive {
        // Reported every 25 steps (the loss is only read that often) so the per-step
        // callback stays a flag check on the hot path.
        if pr.iteration.is_multiple_of(25) || pr.iteration == pr.total {
            self.ctx.progress(
                pr.iteration,
                pr.total,
                &format!("loss {:.4}", pr.train_loss),
            );
        }
        self.clock.directive(self.ctx, pr)
    }

    fn cpu_threads(&self) -> Option<usize> {
        self.ctx.cpu_threads()
    }

    fn checkpoint(&mut self, state: &TrainState) -> Result<(), NnError> {
        let (spec, mask, seed) = (self.spec, self.mask, self.seed);
        self.clock.save(self.ctx, state.done, self.total, |dir| {
            save_train_state(dir, spec, mask, seed, state)
        });
        Ok(())
    }
}

/// The optimiser state `input` carries beside its model, for `resume_optimizer`.
fn resumed_state(
    input: &super::InputEntry,
    start: &Checkpoint,
) -> Result<crate::nn::OptimState, StageError> {
    input
        .load_optimizer("model", &start.weights)?
        .ok_or_else(|| StageError::Input {
            role: "model".into(),
            message: format!(
                "`resume_optimizer: true`, but `{}` has no optimiser state (its cache entry \
                 predates pipe saving it, or its optimiser had not stepped yet); remove its \
                 entry (`pipe explain` gives its key) and run again, or drop `resume_optimizer`",
                input.name
            ),
        })
}
