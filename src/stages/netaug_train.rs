//! `netaug_train`: trains a tiny `convnet` with Network Augmentation (Cai et al., ICLR 2022;
//! the substrate is [`crate::nn::methods::netaug`]) and writes the plain base-width model, loadable by
//! `evaluate`, `train` and `prune` like any `train` output.
//!
//! `augment: false` trains the same base model alone through the same code path (SGD with
//! Nesterov momentum, label smoothing, cosine schedule, BN re-estimation before every
//! evaluation): the baseline arm of the paper's comparison.
//!
//! Like `train`, it saves a progress checkpoint every `--checkpoint-every` and when stopped,
//! and the next attempt at its key continues from it, bit for bit.

use serde::{Deserialize, Serialize};

use super::dataset::DataParams;
use super::model_facts::{ModelFacts, check_fits};
use super::progress_checkpoints::{CheckpointClock, resume_point};
use super::{MODEL, Role, Stage, StageContext, StageError, UpstreamInfo};
use crate::nn::methods::netaug::{NetAugConfig, NetAugState, netaug_train};
use crate::nn::{
    Checkpoint, Directive, LrSchedule, ModelSpec, NnError, OptimizerKind, Progress, TrainHooks,
    load_netaug_state, save_netaug_state,
};

/// Seed of the fixed BN-calibration images (the reference's constant, netaug/setup.py).
pub const CALIBRATION_SEED: u64 = 937_162_211;

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct NetAugParams {
    /// Only `sgd` (the paper's optimiser).
    #[serde(default = "sgd")]
    pub optimizer: OptimizerKind,
    /// Default 0.05 (the reduced plan's; the paper: 0.025 per 128 images per GPU).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Default 0.9.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Default true.
    #[serde(default = "yes")]
    pub nesterov: bool,
    /// L2 on conv and linear weights only (none on biases and batch norm). Default 4e-5.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Default 128.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Passes over the training set (`⌊n / batch⌋` steps each).
    pub epochs: u64,
    /// Default cosine to 0 after the warm-up.
    #[serde(default = "cosine")]
    pub schedule: LrSchedule,
    /// Linear warm-up, in epochs. Default 0.
    #[serde(default)]
    pub warmup_epochs: u64,
    /// Default 0.1.
    #[serde(default = "default_smoothing")]
    pub label_smoothing: f64,
    /// Width factors of every conv; 1 is the base. Default [1, 2, 3].
    #[serde(default = "default_factors")]
    pub factors: Vec<f64>,
    /// Fraction of the epochs (the first ones) with width augmentation; base only after.
    /// Default 0.5.
    #[serde(default = "default_stop")]
    pub stop_aug_fraction: f64,
    /// Fixed training images (seed 937162211) on which the base model's BN statistics are
    /// re-estimated before every evaluation. Default 2000.
    #[serde(default = "default_calibration")]
    pub bn_calibration_images: usize,
    /// Re-estimate BN and evaluate on the test split every this many epochs (and after the
    /// last). Default 1.
    #[serde(default = "one")]
    pub eval_every_epochs: u64,
    /// `false`: train the base model alone, everything else equal (the baseline arm).
    #[serde(default = "yes")]
    pub augment: bool,
    /// Seed of the data order, the width draws and the extra channels' initialisation.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub data: DataParams,
}

fn one() -> u64 {
    1
}
fn sgd() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_lr() -> f64 {
    0.05
}
fn default_momentum() -> f64 {
    0.9
}
fn yes() -> bool {
    true
}
fn default_wd() -> f64 {
    4e-5
}
fn default_batch() -> usize {
    128
}
fn cosine() -> LrSchedule {
    LrSchedule::Cosine { min_lr: 0.0 }
}
fn default_smoothing() -> f64 {
    0.1
}
fn default_factors() -> Vec<f64> {
    vec![1.0, 2.0, 3.0]
}
fn default_stop() -> f64 {
    0.5
}
fn default_calibration() -> usize {
    2000
}

pub struct NetAugTrain;

impl Stage for NetAugTrain {
    type Params = NetAugParams;
    const KIND: &'static str = "netaug_train";
    /// 2: the widest network's extra channels come from NetAug's own random streams (version 1
    /// drew them from `init`'s streams at seed `seed ^ constant`, which an `init` seed could
    /// reach); every netaug_train key, and every key downstream of one, changed on purpose.
    const VERSION: u32 = 2;
    const ROLES: &'static [Role] = &[Role::one("model").taking(MODEL)];
    const PRODUCES: Option<&'static str> = Some(MODEL);
    const ABOUT: &'static str = "trains a convnet with Network Augmentation (Cai et al. 2022) \
        {lr, momentum, nesterov, weight_decay, batch, epochs, schedule, warmup_epochs, \
        label_smoothing, factors, stop_aug_fraction, bn_calibration_images, eval_every_epochs, augment, \
        seed, data}";
    const METRICS: &'static [&'static str] = &[
        "iterations",
        "aug_epochs",
        "test_acc",
        "test_loss",
        "train_loss",
        "val_acc",
    ];

    fn external_inputs(&self, p: &NetAugParams) -> Vec<std::path::PathBuf> {
        p.data.files()
    }

    fn key_params(&self, params: serde_json::Value) -> serde_json::Value {
        DataParams::strip_locations(params)
    }

    fn check(
        &self,
        p: &NetAugParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> Result<(), String> {
        if p.optimizer != OptimizerKind::Sgd {
            return Err(
                "netaug_train uses `optimizer: sgd` (the paper's); remove `optimizer`".into(),
            );
        }
        if p.epochs == 0 {
            return Err("`epochs` must be at least 1".into());
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err(format!("`lr` must be a positive number, got {}", p.lr));
        }
        if !(0.0..1.0).contains(&p.momentum) {
            return Err(format!("`momentum` must be in [0, 1), got {}", p.momentum));
        }
        if p.nesterov && p.momentum == 0.0 {
            return Err("`nesterov: true` needs a `momentum` above 0".into());
        }
        if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
            return Err(format!(
                "`weight_decay` must be >= 0, got {}",
                p.weight_decay
            ));
        }
        if p.batch == 0 {
            return Err("`batch` must be at least 1".into());
        }
        if p.warmup_epochs > p.epochs {
            return Err(format!(
                "`warmup_epochs` {} exceeds `epochs` {}",
                p.warmup_epochs, p.epochs
            ));
        }
        if !(0.0..1.0).contains(&p.label_smoothing) {
            return Err(format!(
                "`label_smoothing` must be in [0, 1), got {}",
                p.label_smoothing
            ));
        }
        if p.factors.is_empty()
            || p.factors.iter().any(|f| !(f.is_finite() && *f >= 1.0))
            || !p.factors.contains(&1.0)
        {
            return Err(format!(
                "`factors` {:?} must list width multipliers >= 1 including 1 (the base), e.g. [1, 2, 3]",
                p.factors
            ));
        }
        if !(0.0..=1.0).contains(&p.stop_aug_fraction) {
            return Err(format!(
                "`stop_aug_fraction` must be in [0, 1], got {}",
                p.stop_aug_fraction
            ));
        }
        if p.eval_every_epochs == 0 {
            return Err("`eval_every_epochs` must be at least 1".into());
        }
        if p.bn_calibration_images == 0 {
            return Err("`bn_calibration_images` must be at least 1".into());
        }
        p.data.check()?;
        let Some((from, facts)) = ModelFacts::input(inputs, "model") else {
            return Ok(());
        };
        if let Some(spec) = &facts.spec {
            match spec {
                ModelSpec::Convnet(c) if c.batch_norm => {}
                _ => {
                    return Err(format!(
                        "netaug_train widens a `convnet` with `batch_norm: true`; `{}` gives a `{}` model",
                        from.name,
                        spec.family()
                    ));
                }
            }
            check_fits(spec, &p.data, &from.name)?;
        }
        Ok(())
    }

    fn facts(
        &self,
        _p: &NetAugParams,
        inputs: &[(String, Vec<UpstreamInfo>)],
    ) -> serde_json::Value {
        ModelFacts {
            spec: ModelFacts::spec_of(inputs, "model"),
            checkpoints: Some(vec![]),
            length_scaled: false,
            optimizer: None,
        }
        .to_value()
    }

    fn run(&self, p: &NetAugParams, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.input("model")?.clone();
        let start = input.load_model()?;
        if start.mask.remaining_fraction() < 1.0 {
            return Err(StageError::Other(format!(
                "the input model `{}` is pruned; netaug_train trains dense models",
                input.name
            )));
        }
        let splits = ctx.data().load(&p.data)?;
        let cfg = NetAugConfig {
            lr: p.lr,
            momentum: p.momentum,
            nesterov: p.nesterov,
            weight_decay: p.weight_decay,
            batch: p.batch,
            epochs: p.epochs,
            schedule: p.schedule.clone(),
            warmup_epochs: p.warmup_epochs,
            label_smoothing: p.label_smoothing,
            factors: p.factors.clone(),
            stop_aug_fraction: p.stop_aug_fraction,
            augment: p.augment,
            calibration_images: p.bn_calibration_images,
            calibration_seed: CALIBRATION_SEED,
            seed: p.seed,
            eval_every_epochs: p.eval_every_epochs,
        };
        let device = ctx.device().clone();
        // Whether the state fits this training is checked by `netaug_train` (it knows the
        // master's shapes); one that does not makes it start over below.
        let from = resume_point(ctx, load_netaug_state, |s| s.done, |_| Ok(()));
        let ctx_ref = &*ctx;
        let attempt = |from| {
            let mut hooks = StageHooks {
                ctx: ctx_ref,
                clock: CheckpointClock::new(ctx_ref),
                total: 0,
            };
            netaug_train(
                &start.spec,
                &start.weights,
                &splits.train,
                &splits.val,
                &splits.test,
                &cfg,
                &device,
                from,
                &mut hooks,
            )
        };
        let (out, restarted) = match attempt(from) {
            // A state this training cannot continue from (checked before any step): start
            // over from the input.
            Err(NnError::Invalid(why)) if ctx_ref.resumed_at().is_some() => {
                tracing::warn!("{}: {why}; starting over", ctx_ref.name());
                (attempt(None)?, true)
            }
            other => (other?, false),
        };
        if restarted {
            ctx.unmark_resumed();
        }
        ctx.save_model(
            "model",
            &Checkpoint {
                spec: start.spec.clone(),
                weights: out.weights.clone(),
                mask: start.mask.clone(),
                step: out.iterations,
                seed: p.seed,
            },
        )?;
        ctx.write_json("curve.json", &out.curve)?;
        ctx.set_metric("iterations", out.iterations);
        ctx.set_metric("aug_epochs", cfg.aug_epochs());
        if let Some(last) = out.curve.last() {
            ctx.set_metric("test_acc", last.test_acc);
            ctx.set_metric("test_loss", last.test_loss);
            ctx.set_metric("train_loss", last.train_loss);
            if let Some(v) = last.val_acc {
                ctx.set_metric("val_acc", v);
            }
        }
        Ok(())
    }
}

/// Progress lines, the cancel flag and progress checkpoints, as for `train`.
struct StageHooks<'c, 'a> {
    ctx: &'c StageContext<'a>,
    clock: CheckpointClock,
    /// The training's length, as the last progress gave it.
    total: u64,
}

impl TrainHooks<NetAugState> for StageHooks<'_, '_> {
    fn after_step(&mut self, pr: &Progress) -> Directive {
        self.total = pr.total;
        if pr.iteration.is_multiple_of(25) || pr.iteration == pr.total {
            // The loss is the last finished epoch's mean: none during the first.
            let message = if pr.train_loss.is_finite() {
                format!("loss {:.4}", pr.train_loss)
            } else {
                "first epoch".to_string()
            };
            self.ctx.progress(pr.iteration, pr.total, &message);
        }
        self.clock.directive(self.ctx, pr)
    }

    fn cpu_threads(&self) -> Option<usize> {
        self.ctx.cpu_threads()
    }

    fn checkpoint(&mut self, state: &NetAugState) -> Result<(), NnError> {
        self.clock.save(self.ctx, state.done, self.total, |dir| {
            save_netaug_state(dir, state)
        });
        Ok(())
    }
}
