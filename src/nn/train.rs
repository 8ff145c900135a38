//! Training and evaluation.
//!
//! Iteration counting: the model after `i` optimiser steps is "iteration
//! `i`". A run starts at iteration `start_step` (0 for a fresh run; `k` when
//! training resumes from weights rewound to iteration `k`) and stops at
//! iteration `iterations` (absolute), taking `iterations - start_step` steps.
//! Batches, learning rates, `save_at` and evaluation points all use absolute
//! iterations, so a run resumed at `k` sees exactly the data of the original
//! run from `k` on.

use std::ops::ControlFlow;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::adam::PipeAdam;
use super::device::{BackendTask, DeviceSpec, dispatch};
use super::host::PoolFollower;
use super::methods::stochastic_depth::{StochasticDepth, fold_survival};
use super::net::{BN_MOMENTUM, BnMode, Net, Plan, buffers_to_device, from_net, to_net};
use super::objective::{EvalSums, Objective, one_hot};
use super::ops::NnBackend;
use super::optim_records::{adam_state, load_adam, load_sgd, sgd_state};
use super::schedule::{LrSchedule, lr_at};
use super::{Mask, ModelSpec, NnError, OptimState, Weights};
use crate::data::{
    Augment, AugmentStep, BatchOrder, BatchTargets, Split, gather_batch, gather_range,
};

/// Optimiser choice.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD; `momentum > 0` adds heavy-ball momentum (PyTorch semantics:
    /// dampening 0, no Nesterov).
    Sgd,
    /// Adam with betas (0.9, 0.999) and epsilon 1e-8 (the PyTorch defaults;
    /// `momentum` is ignored).
    Adam,
}

/// Training hyper-parameters. `weight_decay` is an L2 penalty added to the
/// gradient (PyTorch's `weight_decay` for both SGD and Adam).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub batch: usize,
    /// Last iteration (absolute; see the module docs).
    pub iterations: u64,
    pub schedule: LrSchedule,
    pub warmup: u64,
    /// Iterations whose weights are returned in [`TrainOutput::checkpoints`];
    /// each must lie in `start_step..=iterations`.
    pub save_at: Vec<u64>,
    /// Evaluate every this many iterations (absolute multiples); 0 = only at
    /// the start and the end.
    pub eval_every: u64,
    pub data_seed: u64,
    /// Iteration of the input weights.
    pub start_step: u64,
    /// Optimiser state to continue from (the input checkpoint's), instead of a fresh
    /// optimiser; entries the mask removes are zeroed first.
    pub resume: Option<OptimState>,
    /// Training images evaluated (eval mode, no augmentation) at every curve point, for the
    /// training error (He et al.'s Fig. 1 and 6); 0 = none. See [`probe_indices`].
    pub train_probe: usize,
    /// Drop residual branches per batch (Huang et al. 2016); the returned final weights are
    /// the test-time network (see [`super::stochastic_depth`]).
    pub stochastic_depth: Option<StochasticDepth>,
}

/// The fixed training subset of `n` images a curve measures its training error on: evenly
/// spaced over the split (image `⌊i·len/n⌋` for `i < n`), the same for every arm and seed.
pub fn probe_indices(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

/// The splits a run uses. `val` may be empty (no validation, no early stop). `augment`
/// applies to the training batches, drawn by `(data_seed, iteration)`.
pub struct TrainData<'a> {
    pub train: &'a Split,
    pub val: &'a Split,
    pub test: &'a Split,
    pub augment: Option<&'a Augment>,
}

/// One point of the learning curve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    pub iteration: u64,
    /// Mean training-batch loss over the steps since the previous point. At
    /// the first point (no steps yet) it is the loss on the run's first batch
    /// at the input weights.
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub test_loss: f64,
    pub test_acc: f64,
    /// Misclassified fraction of the fixed training subset (`train_probe`), in eval mode;
    /// absent when none was asked for (so older curves read and compare as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_error: Option<f64>,
}

/// Reported after every step. `train_loss` is the last loss read back from the
/// device (read every [`LOSS_READ_EVERY`] steps, to avoid a sync per step).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub iteration: u64,
    pub total: u64,
    pub train_loss: f64,
}

/// How often (in steps) the current batch loss is read back for [`Progress`].
pub const LOSS_READ_EVERY: u64 = 25;

/// Where a run stands after iteration `done`: everything its continuation depends on, so that
/// a run continued from it ends bit for bit where the uninterrupted run ends (a progress
/// checkpoint; see `stages::train`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Iterations done (absolute).
    pub done: u64,
    /// Weights and batch-norm running statistics after iteration `done`.
    pub weights: Weights,
    /// The optimiser's state (`None` for plain SGD).
    pub optimizer: Option<OptimState>,
    /// The curve so far, the point at `done` included when there is one.
    pub curve: Vec<EvalPoint>,
    /// The `save_at` checkpoints passed so far, and their optimiser states.
    pub checkpoints: Vec<(u64, Weights)>,
    pub checkpoint_states: Vec<Option<OptimState>>,
    /// The sum of the batch losses since the last curve point, as the device added them in
    /// `f32` (`None` right after a point), over `since_point` steps.
    pub loss_sum: Option<f32>,
    pub since_point: u64,
    /// The loss last shown in progress.
    pub last_loss: f64,
}

/// What a run does after a step, as its [`TrainHooks`] decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    Continue,
    /// Hand the state to [`TrainHooks::checkpoint`], then go on.
    Checkpoint,
    /// Stop ([`NnError::Cancelled`]).
    Stop,
    /// Hand the state over, then stop: an interrupted run that can be resumed.
    CheckpointAndStop,
}

/// What a caller of [`train`] (or of another training loop, whose resumable state is `S`)
/// hears from the run.
pub trait TrainHooks<S = TrainState> {
    /// Called after every step.
    fn after_step(&mut self, progress: &Progress) -> Directive;
    /// Called with the run's state when [`TrainHooks::after_step`] asked for it. A failure
    /// here fails the run.
    fn checkpoint(&mut self, _state: &S) -> Result<(), NnError> {
        Ok(())
    }
    /// How many threads the steps should compute on now (the stage's share of the cores,
    /// which changes as other stages start and end); `None`: the pool the run started on.
    fn cpu_threads(&self) -> Option<usize> {
        None
    }
}

/// A progress callback is the simplest hook: it may stop the run, never checkpoints.
impl<S, F: FnMut(&Progress) -> ControlFlow<()>> TrainHooks<S> for F {
    fn after_step(&mut self, progress: &Progress) -> Directive {
        match self(progress) {
            ControlFlow::Continue(()) => Directive::Continue,
            ControlFlow::Break(()) => Directive::Stop,
        }
    }
}

/// Evaluation batch size. Not the largest that fits: a batch's activations are allocated
/// afresh by every layer, and above a few MB each allocation is new zeroed pages from the
/// kernel. Evaluating 10k padded Fashion-MNIST images took (wall, 2 cores, measured on
/// 2026-12-07): ResNet-20 10.3 s at 2,000 (3.2M page faults, a third of the CPU time in the
/// kernel), 9.8 s at 1,000, 5.6–5.8 s at 128; Conv-2 6.8 s at 2,000, 5.1 s at 128; VGG-11
/// and LeNet the same at either. Every sample's logits are computed alone, so the figures do
/// not depend on it (tested below).
pub const EVAL_BATCH: usize = 128;

/// What a run returns.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// Final weights (masked weights are exactly zero).
    pub weights: Weights,
    /// `(iteration, weights)` for each `save_at` iteration, ascending;
    /// `start_step` gives the (masked) input weights.
    pub checkpoints: Vec<(u64, Weights)>,
    /// The optimiser state at each of `checkpoints` (`None` where the optimiser keeps none
    /// yet: before its first step, or plain SGD).
    pub checkpoint_states: Vec<Option<OptimState>>,
    /// The optimiser state at the end.
    pub optimizer: Option<OptimState>,
    pub curve: Vec<EvalPoint>,
    /// The curve point with the lowest validation loss (the first on ties);
    /// `None` when the validation split is empty.
    pub early_stop: Option<EvalPoint>,
}

enum Opt<B: AutodiffBackend<InnerBackend: NnBackend>> {
    Adam(OptimizerAdaptor<PipeAdam, Net<B>, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, Net<B>, B>),
}

/// A model and its optimiser on one backend: the low-level training API
/// ([`train`] drives it; benchmarks use it directly).
pub struct TrainSession<B: AutodiffBackend<InnerBackend: NnBackend>> {
    model: Option<Net<B>>,
    plan: Plan,
    /// Batch-norm running statistics `[mean₀, var₀, …]`, updated after every step.
    running: Vec<Tensor<B::InnerBackend, 1>>,
    optim: Opt<B>,
    device: B::Device,
    spec: ModelSpec,
    classes: usize,
    objective: Objective,
    /// Stochastic depth: the residual blocks the next step keeps (all when `None`).
    kept: Option<Vec<bool>>,
}

impl<B: AutodiffBackend<InnerBackend: NnBackend> + NnBackend> TrainSession<B> {
    /// Builds the masked model and the optimiser of `cfg` on `device`.
    pub fn new(
        spec: &ModelSpec,
        weights: &Weights,
        mask: &Mask,
        cfg: &TrainConfig,
        device: B::Device,
    ) -> Result<Self, NnError> {
        let model = to_net::<B>(spec, weights, mask, &device)?;
        let plan = Plan::new(&spec.program().map_err(NnError::Invalid)?);
        let running = buffers_to_device::<B::InnerBackend>(weights, &device);
        let wd = (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32));
        let mut optim = match cfg.optimizer {
            OptimizerKind::Adam => Opt::Adam(OptimizerAdaptor::from(PipeAdam::new(
                1e-8,
                wd.map(|w| w.penalty),
            ))),
            OptimizerKind::Sgd => {
                let momentum = (cfg.momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(cfg.momentum)
                        .with_dampening(0.0)
                        .with_nesterov(false)
                });
                Opt::Sgd(
                    SgdConfig::new()
                        .with_weight_decay(wd)
                        .with_momentum(momentum)
                        .init::<B, Net<B>>(),
                )
            }
        };
        if let Some(state) = &cfg.resume {
            state.check(weights).map_err(NnError::Invalid)?;
            let state = state.masked(weights, mask);
            optim = match optim {
                Opt::Adam(o) => Opt::Adam(load_adam(o, &model, &state, &device)?),
                Opt::Sgd(_) if cfg.momentum == 0.0 => {
                    return Err(NnError::Invalid(
                        "plain SGD (momentum 0) keeps no optimiser state to continue from".into(),
                    ));
                }
                Opt::Sgd(o) => Opt::Sgd(load_sgd(o, &model, &state, &device)?),
            };
        }
        Ok(TrainSession {
            model: Some(model),
            plan,
            running,
            optim,
            device,
            spec: spec.clone(),
            classes: spec.output_dim(),
            objective: Objective::CrossEntropy,
            kept: None,
        })
    }

    /// The residual blocks the following steps keep (stochastic depth); `None` keeps all.
    pub fn keep_blocks(&mut self, kept: Option<Vec<bool>>) {
        self.kept = kept;
    }

    /// The same session minimising `objective` (cross-entropy unless set).
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// The current model.
    pub fn model(&self) -> &Net<B> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The current weights, on the host.
    pub fn weights(&self) -> Weights {
        from_net(&self.model().valid(), &self.running, &self.spec)
    }

    /// The optimiser's state, on the host; `None` before the first step and for plain SGD.
    pub fn optimizer_state(&self) -> Option<OptimState> {
        match &self.optim {
            Opt::Adam(o) => adam_state(o, self.model()),
            Opt::Sgd(o) => sgd_state(o, self.model()),
        }
    }

    /// One optimiser step on a batch (`images` row-major `[labels.len(), in]`)
    /// at learning rate `lr`. Returns the batch's mean cross-entropy (before
    /// the step) as a device scalar; reading it is up to the caller.
    pub fn step(&mut self, images: Vec<f32>, labels: &[u8], lr: f64) -> Tensor<B::InnerBackend, 1> {
        let y = Tensor::<B, 2>::from_data(one_hot(labels, self.classes), &self.device);
        self.step_on(images, labels.len(), y, Objective::CrossEntropy, lr)
    }

    /// One optimiser step of the session's objective on a batch of `targets` (class labels
    /// or regression values, as the objective expects; the splits are checked for that before
    /// training). Returns the batch's mean loss as [`TrainSession::step`] does.
    pub fn step_targets(
        &mut self,
        images: Vec<f32>,
        targets: &BatchTargets,
        lr: f64,
    ) -> Tensor<B::InnerBackend, 1> {
        let objective = self.objective;
        let y = objective
            .targets::<B>(targets, self.classes, &self.device)
            .expect("the splits' targets were checked against the objective");
        let n = y.dims()[0];
        self.step_on(images, n, y, objective, lr)
    }

    fn step_on(
        &mut self,
        images: Vec<f32>,
        n: usize,
        y: Tensor<B, 2>,
        objective: Objective,
        lr: f64,
    ) -> Tensor<B::InnerBackend, 1> {
        let model = self.model.take().expect("model present between steps");
        let [c, h, w] = self.plan.input();
        let x = Tensor::<B, 4>::from_data(TensorData::new(images, [n, c, h, w]), &self.device);
        let gated;
        let plan = match &self.kept {
            Some(keep) => {
                gated = self.plan.with_kept_blocks(keep);
                &gated
            }
            None => &self.plan,
        };
        let (logits, stats) = model.forward(plan, x, &BnMode::Batch);
        let loss = objective.loss(logits, y);
        // Running statistics as PyTorch keeps them: the unbiased batch variance, momentum 0.1.
        // By the norm's index: a block that stochastic depth dropped reports nothing, and its
        // norms keep their statistics (as PyTorch's, which are not run either).
        for st in stats {
            let k = st.index;
            let unbias = st.count as f64 / (st.count.max(2) - 1) as f64;
            let m = BN_MOMENTUM;
            let mean = self.running[2 * k].clone() * (1.0 - m) + st.mean.inner() * m;
            let var = self.running[2 * k + 1].clone() * (1.0 - m) + st.var.inner() * (m * unbias);
            self.running[2 * k] = mean;
            self.running[2 * k + 1] = var;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = match &mut self.optim {
            Opt::Adam(o) => o.step(lr, model, grads),
            Opt::Sgd(o) => o.step(lr, model, grads),
        };
        self.model = Some(model.reapply_masks());
        loss.inner()
    }
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

/// Mean loss and accuracy of `model` on `split`, in batches of [`EVAL_BATCH`]. Outputs come
/// back to the host and the loss is computed there in f64 (a numerically stable log-sum-exp
/// for cross-entropy). Under MSE the accuracy is `NaN`.
pub(crate) fn eval_split<B: NnBackend>(
    model: &Net<B>,
    plan: &Plan,
    running: &[Tensor<B, 1>],
    split: &Split,
    device: &B::Device,
) -> (f64, f64) {
    eval_split_in(model, plan, running, split, device, EVAL_BATCH)
}

/// [`eval_split`] in batches of `batch`.
fn eval_split_in<B: NnBackend>(
    model: &Net<B>,
    plan: &Plan,
    running: &[Tensor<B, 1>],
    split: &Split,
    device: &B::Device,
    batch: usize,
) -> (f64, f64) {
    let [c, h, w] = plan.input();
    let objective = Objective::of(split);
    let mut sums = EvalSums::default();
    let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
    for start in (0..split.n).step_by(batch) {
        let end = (start + batch).min(split.n);
        gather_range(split, start..end, &mut images, &mut targets);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(std::mem::take(&mut images), [end - start, c, h, w]),
            device,
        );
        let logits = model
            .forward(plan, x, &BnMode::Running(running))
            .0
            .into_data()
            .to_vec::<f32>()
            .expect("f32 logits");
        objective.accumulate(&logits, &targets, &mut sums);
    }
    sums.finish(objective, split.n)
}

pub(crate) fn check_split(spec: &ModelSpec, split: &Split, what: &str) -> Result<(), NnError> {
    if split.n == 0 {
        return Ok(());
    }
    split.check()?;
    let flattens = matches!(
        spec.program().ok().and_then(|p| p.ops.first().cloned()),
        Some(crate::nn::program::Op::Flatten)
    );
    if !flattens && split.input_shape() != spec.input_shape() {
        return Err(NnError::Shape(format!(
            "{what} split has samples of shape {:?}; the model expects {:?} (set the model's \
             `input`, or the dataset's `pad_to`)",
            split.input_shape(),
            spec.input_shape()
        )));
    }
    if split.dim() != spec.input_dim() {
        return Err(NnError::Shape(format!(
            "{what} split has samples of shape {:?} ({} values); the model expects {} \
             features per sample",
            split.input_shape(),
            split.dim(),
            spec.input_dim()
        )));
    }
    Objective::check(split, spec.output_dim(), what)
}

fn check_config(cfg: &TrainConfig) -> Result<(), NnError> {
    let bad = |m: String| Err(NnError::Invalid(m));
    if cfg.start_step > cfg.iterations {
        return bad(format!(
            "start_step {} is after the last iteration {}",
            cfg.start_step, cfg.iterations
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
        return bad(format!("learning rate {} must be finite and >= 0", cfg.lr));
    }
    if !(cfg.momentum.is_finite() && (0.0..1.0).contains(&cfg.momentum)) {
        return bad(format!("momentum {} must be in [0, 1)", cfg.momentum));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return bad(format!(
            "weight decay {} must be finite and >= 0",
            cfg.weight_decay
        ));
    }
    if let Some(s) = cfg
        .save_at
        .iter()
        .find(|&&s| s < cfg.start_step || s > cfg.iterations)
    {
        return bad(format!(
            "save_at iteration {s} is outside this run's iterations {}..={}",
            cfg.start_step, cfg.iterations
        ));
    }
    Ok(())
}

/// Trains `init` (masked by `mask`) on `data.train`. See the module docs for
/// iteration counting; evaluation points are at `start_step`, every
/// `eval_every` iterations and at the end (no duplicates). `hooks` hear after
/// every step (a progress closure is one); stopping ends the run with
/// [`NnError::Cancelled`]. Deterministic on the CPU for the same inputs.
pub fn train(
    spec: &ModelSpec,
    init: &Weights,
    mask: &Mask,
    data: &TrainData,
    cfg: &TrainConfig,
    device: &DeviceSpec,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutput, NnError> {
    train_from(spec, init, mask, data, cfg, device, None, hooks)
}

/// [`train`], continued from `from` (a state an earlier attempt of the same run handed to
/// its hooks) when given: the output is bit for bit that of the uninterrupted run.
#[allow(clippy::too_many_arguments)]
pub fn train_from(
    spec: &ModelSpec,
    init: &Weights,
    mask: &Mask,
    data: &TrainData,
    cfg: &TrainConfig,
    device: &DeviceSpec,
    from: Option<TrainState>,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutput, NnError> {
    spec.validate().map_err(NnError::Invalid)?;
    init.check(spec)?;
    mask.check(spec)?;
    check_config(cfg)?;
    check_split(spec, data.train, "training")?;
    check_split(spec, data.val, "validation")?;
    check_split(spec, data.test, "test")?;
    let objective = Objective::of(data.train);
    for (split, what) in [(data.val, "validation"), (data.test, "test")] {
        if split.n > 0 && Objective::of(split) != objective {
            return Err(NnError::Invalid(format!(
                "the {what} split's targets are not of the training split's kind (class \
                 labels or regression values)"
            )));
        }
    }
    if data.test.n == 0 {
        return Err(NnError::Invalid("the test split is empty".into()));
    }
    // Also validates the batch size against the training set.
    BatchOrder::new(data.train.n, cfg.batch, cfg.data_seed, cfg.start_step)?;
    if let Some(f) = &from {
        check_state(f, spec, cfg)?;
    }
    dispatch(
        device,
        TrainTask {
            spec,
            init,
            mask,
            data,
            cfg,
            from,
            hooks,
        },
    )
}

/// Whether `state` can continue the run of `cfg` on `spec`.
fn check_state(state: &TrainState, spec: &ModelSpec, cfg: &TrainConfig) -> Result<(), NnError> {
    state.weights.check(spec)?;
    if !(cfg.start_step..=cfg.iterations).contains(&state.done) {
        return Err(NnError::Invalid(format!(
            "a state at iteration {} cannot continue a run of iterations {}..={}",
            state.done, cfg.start_step, cfg.iterations
        )));
    }
    if let Some(o) = &state.optimizer {
        o.check(&state.weights).map_err(NnError::Invalid)?;
    }
    if state.curve.is_empty() || state.checkpoints.len() != state.checkpoint_states.len() {
        return Err(NnError::Invalid(
            "a state without its curve or with unmatched checkpoints".into(),
        ));
    }
    Ok(())
}

struct TrainTask<'a, 'b> {
    spec: &'a ModelSpec,
    init: &'a Weights,
    mask: &'a Mask,
    data: &'a TrainData<'a>,
    cfg: &'a TrainConfig,
    from: Option<TrainState>,
    hooks: &'b mut dyn TrainHooks,
}

impl BackendTask for TrainTask<'_, '_> {
    type Output = TrainOutput;

    fn run<B: crate::nn::ops::TrainBackend>(
        self,
        device: B::Device,
    ) -> Result<TrainOutput, NnError> {
        let TrainTask {
            spec,
            init,
            mask,
            data,
            cfg,
            from,
            hooks,
        } = self;
        let objective = Objective::of(data.train);
        // Continuing a state: its weights and optimiser in place of the input's.
        let continued;
        let (start, weights, session_cfg) = match &from {
            Some(f) => {
                continued = TrainConfig {
                    resume: f.optimizer.clone(),
                    ..cfg.clone()
                };
                (f.done, &f.weights, &continued)
            }
            None => (cfg.start_step, init, cfg),
        };
        let mut session = TrainSession::<B>::new(spec, weights, mask, session_cfg, device.clone())?
            .with_objective(objective);
        let mut order = BatchOrder::new(data.train.n, cfg.batch, cfg.data_seed, start)?;
        let mut save_at = cfg.save_at.clone();
        save_at.sort_unstable();
        save_at.dedup();
        let mut checkpoints = Vec::new();
        let mut checkpoint_states = Vec::new();
        if from.is_none() && save_at.first() == Some(&cfg.start_step) {
            checkpoints.push((cfg.start_step, init.masked(mask)));
            checkpoint_states.push(cfg.resume.as_ref().map(|s| s.masked(init, mask)));
        }

        let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
        let augment = |iteration| {
            data.augment.map(|augment| AugmentStep {
                augment,
                seed: cfg.data_seed,
                iteration,
            })
        };
        let probe = (cfg.train_probe > 0).then(|| {
            data.train
                .take(&probe_indices(data.train.n, cfg.train_probe))
        });
        let survival = cfg
            .stochastic_depth
            .as_ref()
            .map(|sd| sd.survival(session.plan.residual_blocks()));
        let program = spec.program().map_err(NnError::Invalid)?;
        // The weights as the test-time network has them: stochastic depth's branches scaled.
        let test_time = |mut w: Weights| -> Result<Weights, NnError> {
            if let Some(s) = &survival {
                fold_survival(&program, &mut w, s)?;
            }
            Ok(w)
        };
        let point = |session: &TrainSession<B>, iteration: u64, train_loss: f64| {
            let folded = match &survival {
                Some(_) => {
                    let w = test_time(session.weights())?;
                    let net = to_net::<B::InnerBackend>(spec, &w, mask, &device)?;
                    Some((net, buffers_to_device::<B::InnerBackend>(&w, &device)))
                }
                None => None,
            };
            let (inner, running) = match folded {
                Some((net, running)) => (net, std::borrow::Cow::Owned(running)),
                None => (
                    session.model().valid(),
                    std::borrow::Cow::Borrowed(&session.running),
                ),
            };
            let (plan, running) = (&session.plan, running.as_slice());
            let (val_loss, val_acc) = if data.val.n > 0 {
                let (l, a) = eval_split(&inner, plan, running, data.val, &device);
                (Some(l), Some(a))
            } else {
                (None, None)
            };
            let (test_loss, test_acc) = eval_split(&inner, plan, running, data.test, &device);
            let train_error = probe
                .as_ref()
                .map(|p| 1.0 - eval_split(&inner, plan, running, p, &device).1);
            Ok::<_, NnError>(EvalPoint {
                iteration,
                train_loss,
                val_loss,
                val_acc,
                test_loss,
                test_acc,
                train_error,
            })
        };

        let total = cfg.iterations;
        let mut last_loss;
        let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut since_point = 0u64;
        let mut curve;
        if let Some(f) = from {
            checkpoints = f.checkpoints;
            checkpoint_states = f.checkpoint_states;
            curve = f.curve;
            last_loss = f.last_loss;
            since_point = f.since_point;
            loss_sum = f
                .loss_sum
                .map(|v| Tensor::from_data(TensorData::new(vec![v], [1]), &device));
        } else {
            // Loss of the first batch at the input weights (forward only).
            let first_loss = {
                let mut peek = order.clone();
                gather_batch(
                    data.train,
                    peek.next_batch(),
                    augment(cfg.start_step),
                    &mut images,
                    &mut targets,
                );
                let inner = session.model().valid();
                let [c, h, w] = session.plan.input();
                let y = objective
                    .targets(&targets, spec.output_dim(), &device)
                    .expect("the splits' targets were checked against the objective");
                let n = y.dims()[0];
                let x = Tensor::from_data(
                    TensorData::new(std::mem::take(&mut images), [n, c, h, w]),
                    &device,
                );
                // Batch statistics, as the training step sees them (not recorded).
                let (logits, _) = inner.forward(&session.plan, x, &BnMode::Batch);
                scalar(objective.loss(logits, y))
            };
            curve = vec![point(&session, cfg.start_step, first_loss)?];
            last_loss = first_loss;
        }

        let mut next_save = save_at.iter().copied().filter(|&s| s > start).peekable();
        let mut threads = PoolFollower::default();
        for it in start..total {
            gather_batch(
                data.train,
                order.next_batch(),
                augment(it),
                &mut images,
                &mut targets,
            );
            let lr = lr_at(cfg.lr, &cfg.schedule, cfg.warmup, it, total);
            if let Some(sd) = &cfg.stochastic_depth {
                let blocks = session.plan.residual_blocks();
                session.keep_blocks(Some(sd.kept(blocks, cfg.data_seed, it)));
            }
            let batch = std::mem::take(&mut images);
            let loss = threads.run(hooks.cpu_threads(), || {
                session.step_targets(batch, &targets, lr)
            });
            let done = it + 1;
            since_point += 1;
            if done % LOSS_READ_EVERY == 0 {
                last_loss = scalar(loss.clone());
            }
            loss_sum = Some(match loss_sum {
                Some(s) => s + loss,
                None => loss,
            });
            if next_save.peek() == Some(&done) {
                next_save.next();
                checkpoints.push((done, session.weights()));
                checkpoint_states.push(session.optimizer_state());
            }
            if (cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == total {
                let mean = scalar(loss_sum.take().expect("at least one step")) / since_point as f64;
                since_point = 0;
                if !mean.is_finite() {
                    return Err(NnError::Diverged(format!(
                        "the mean training loss before iteration {done} is {mean}"
                    )));
                }
                last_loss = mean;
                curve.push(threads.run(hooks.cpu_threads(), || point(&session, done, mean))?);
            }
            let progress = Progress {
                iteration: done,
                total,
                train_loss: last_loss,
            };
            let directive = hooks.after_step(&progress);
            if matches!(
                directive,
                Directive::Checkpoint | Directive::CheckpointAndStop
            ) {
                hooks.checkpoint(&TrainState {
                    done,
                    weights: session.weights(),
                    optimizer: session.optimizer_state(),
                    curve: curve.clone(),
                    checkpoints: checkpoints.clone(),
                    checkpoint_states: checkpoint_states.clone(),
                    loss_sum: loss_sum.clone().map(|t| scalar(t) as f32),
                    since_point,
                    last_loss,
                })?;
            }
            if matches!(directive, Directive::Stop | Directive::CheckpointAndStop) {
                return Err(NnError::Cancelled);
            }
        }

        let early_stop = if data.val.n > 0 {
            curve
                .iter()
                .filter(|p| p.val_loss.is_some_and(f64::is_finite))
                .fold(None::<&EvalPoint>, |best, p| match best {
                    Some(b) if b.val_loss <= p.val_loss => Some(b),
                    _ => Some(p),
                })
                .cloned()
        } else {
            None
        };
        Ok(TrainOutput {
            weights: test_time(session.weights())?,
            optimizer: session.optimizer_state(),
            checkpoints,
            checkpoint_states,
            curve,
            early_stop,
        })
    }
}

/// Mean loss and accuracy (in [0, 1]) of `weights` under `mask` on `split`, on the
/// non-autodiff backend of `device`. The loss is the split's objective (cross-entropy for
/// class labels; MSE for regression targets, whose accuracy is `NaN`).
pub fn evaluate(
    spec: &ModelSpec,
    weights: &Weights,
    mask: &Mask,
    split: &Split,
    device: &DeviceSpec,
) -> Result<(f64, f64), NnError> {
    spec.validate().map_err(NnError::Invalid)?;
    check_split(spec, split, "evaluation")?;
    if split.n == 0 {
        return Err(NnError::Invalid("cannot evaluate on an empty split".into()));
    }
    struct EvalTask<'a> {
        spec: &'a ModelSpec,
        weights: &'a Weights,
        mask: &'a Mask,
        split: &'a Split,
    }
    impl BackendTask for EvalTask<'_> {
        type Output = (f64, f64);
        fn run<B: crate::nn::ops::TrainBackend>(
            self,
            device: B::Device,
        ) -> Result<(f64, f64), NnError> {
            let model = to_net::<B::InnerBackend>(self.spec, self.weights, self.mask, &device)?;
            let plan = Plan::new(&self.spec.program().map_err(NnError::Invalid)?);
            let running = buffers_to_device::<B::InnerBackend>(self.weights, &device);
            Ok(eval_split(&model, &plan, &running, self.split, &device))
        }
    }
    dispatch(
        device,
        EvalTask {
            spec,
            weights,
            mask,
            split,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Inputs, Targets};
    use crate::nn::objective::cross_entropy;
    use crate::nn::program::ParamRole;
    use crate::nn::weights::Param as HostParam;
    use crate::nn::{InitScheme, init_weights};
    use burn::backend::flex::FlexDevice;
    use burn::backend::{Autodiff, Flex};
    use rand::{Rng, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// `n` samples of `d` features with labels from a fixed linear teacher.
    fn toy_split(n: usize, d: usize, classes: usize, seed: u64) -> Split {
        let (images, labels) = toy_data(n, d, classes, seed);
        Split::new(
            Inputs::f32(images, [d, 1, 1]),
            Targets::classes(labels, classes),
        )
        .unwrap()
    }

    fn toy_data(n: usize, d: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let teacher: Vec<f32> = (0..d * classes)
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let images: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let labels = images
            .chunks(d)
            .map(|x| {
                let score = |c: usize| (0..d).map(|i| x[i] * teacher[i * classes + c]).sum::<f32>();
                (0..classes).fold(0, |b, c| if score(c) > score(b) { c } else { b }) as u8
            })
            .collect();
        (images, labels)
    }

    fn cfg(optimizer: OptimizerKind, iterations: u64) -> TrainConfig {
        TrainConfig {
            optimizer,
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
            batch: 20,
            iterations,
            schedule: LrSchedule::Constant,
            warmup: 0,
            save_at: vec![],
            eval_every: 0,
            data_seed: 5,
            start_step: 0,
            resume: None,
            train_probe: 0,
            stochastic_depth: None,
        }
    }

    struct Fixture {
        spec: ModelSpec,
        init: Weights,
        train: Split,
        val: Split,
        test: Split,
    }

    fn fixture() -> Fixture {
        let spec = ModelSpec::mlp(vec![8, 16, 4]);
        Fixture {
            init: init_weights(&spec, InitScheme::KaimingNormal, 3),
            spec,
            train: toy_split(200, 8, 4, 1),
            val: toy_split(60, 8, 4, 2),
            test: toy_split(100, 8, 4, 3),
        }
    }

    fn run(f: &Fixture, mask: &Mask, c: &TrainConfig) -> Result<TrainOutput, NnError> {
        let data = TrainData {
            train: &f.train,
            val: &f.val,
            test: &f.test,
            augment: None,
        };
        train(
            &f.spec,
            &f.init,
            mask,
            &data,
            c,
            &DeviceSpec::Cpu,
            &mut |_: &Progress| ControlFlow::Continue(()),
        )
    }

    fn bits(w: &Weights) -> Vec<u32> {
        w.params
            .iter()
            .flat_map(|p| p.data.iter())
            .map(|x| x.to_bits())
            .collect()
    }

    #[test]
    fn stochastic_depth_is_deterministic_and_saves_the_test_time_network() {
        use crate::nn::arch::ResnetSpec;
        use crate::nn::methods::stochastic_depth::StochasticDepth;
        let spec = ModelSpec::Resnet(ResnetSpec {
            depth: None,
            stages: Some(vec![4]),
            width: 4,
            classes: 4,
            input: [8, 1, 1],
            ..ResnetSpec::standard(20)
        });
        let base = fixture();
        let f = Fixture {
            init: init_weights(&spec, InitScheme::KaimingNormal, 3),
            spec,
            ..base
        };
        let mask = Mask::dense(&f.spec);
        let mut c = cfg(OptimizerKind::Adam, 20);
        c.eval_every = 10;
        let plain = run(&f, &mask, &c).unwrap();
        // Keeping every block is plain training, bit for bit.
        c.stochastic_depth = Some(StochasticDepth {
            survival_last: None,
            keep: Some(4),
        });
        let all = run(&f, &mask, &c).unwrap();
        assert_eq!(bits(&all.weights), bits(&plain.weights));
        assert_eq!(all.curve, plain.curve);
        c.stochastic_depth = Some(StochasticDepth {
            survival_last: Some(0.5),
            keep: None,
        });
        let a = run(&f, &mask, &c).unwrap();
        let b = run(&f, &mask, &c).unwrap();
        assert_eq!(bits(&a.weights), bits(&b.weights));
        assert_eq!(a.curve, b.curve);
        assert_ne!(bits(&a.weights), bits(&plain.weights));
        // The curve's last point is the saved (folded) network's evaluation.
        let last = a.curve.last().unwrap();
        let (loss, acc) = evaluate(&f.spec, &a.weights, &mask, &f.test, &DeviceSpec::Cpu).unwrap();
        assert_eq!((last.test_loss, last.test_acc), (loss, acc));
    }

    #[test]
    fn the_training_error_is_measured_on_a_fixed_evenly_spaced_subset() {
        assert_eq!(probe_indices(10, 4), [0, 2, 5, 7]);
        assert_eq!(probe_indices(3, 8), [0, 1, 2]);
        let f = fixture();
        let mask = Mask::dense(&f.spec);
        let mut c = cfg(OptimizerKind::Adam, 20);
        c.eval_every = 10;
        let without = run(&f, &mask, &c).unwrap();
        assert!(without.curve.iter().all(|p| p.train_error.is_none()));
        c.train_probe = 50;
        let with = run(&f, &mask, &c).unwrap();
        // Measuring changes nothing else.
        assert_eq!(bits(&with.weights), bits(&without.weights));
        let strip = |c: &[EvalPoint]| {
            c.iter()
                .map(|p| EvalPoint {
                    train_error: None,
                    ..p.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&with.curve), without.curve);
        // The last point's figure is the final model's error on images 0, 4, 8, …, 196.
        let probe = f.train.take(&(0..50).map(|i| i * 4).collect::<Vec<_>>());
        let (_, acc) = evaluate(&f.spec, &with.weights, &mask, &probe, &DeviceSpec::Cpu).unwrap();
        assert_eq!(with.curve.last().unwrap().train_error, Some(1.0 - acc));
        assert!(with.curve.iter().all(|p| p.train_error.is_some()));
    }

    #[test]
    fn deterministic_learns_and_reports_points() {
        let f = fixture();
        let mask = Mask::dense(&f.spec);
        let mut c = cfg(OptimizerKind::Adam, 30);
        c.eval_every = 10;
        c.save_at = vec![30, 0, 10];
        let a = run(&f, &mask, &c).unwrap();
        let b = run(&f, &mask, &c).unwrap();
        assert_eq!(bits(&a.weights), bits(&b.weights));
        assert_eq!(a.curve, b.curve);
        let its: Vec<u64> = a.curve.iter().map(|p| p.iteration).collect();
        assert_eq!(its, vec![0, 10, 20, 30]);
        let saved: Vec<u64> = a.checkpoints.iter().map(|c| c.0).collect();
        assert_eq!(saved, vec![0, 10, 30]);
        assert_eq!(a.checkpoints[0].1, f.init);
        assert_eq!(a.checkpoints[2].1, a.weights);
        let (first, last) = (&a.curve[0], &a.curve[3]);
        assert!(
            last.test_loss < first.test_loss * 0.8,
            "{first:?} -> {last:?}"
        );
        assert!(last.test_acc > first.test_acc);
        assert!(
            a.curve
                .iter()
                .all(|p| p.val_loss.is_some() && p.val_acc.is_some())
        );
        // The recorded test metrics equal a separate evaluation of the final weights.
        let (l, acc) = evaluate(&f.spec, &a.weights, &mask, &f.test, &DeviceSpec::Cpu).unwrap();
        assert_eq!((l, acc), (last.test_loss, last.test_acc));
        let best = a
            .curve
            .iter()
            .map(|p| p.val_loss.unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(a.early_stop.as_ref().unwrap().val_loss, Some(best));
    }

    /// A hook whose share of the cores changes at every step.
    struct Reshared {
        step: usize,
    }

    impl TrainHooks for Reshared {
        fn after_step(&mut self, _: &Progress) -> Directive {
            self.step += 1;
            Directive::Continue
        }
        fn cpu_threads(&self) -> Option<usize> {
            Some([1, 2, 3][self.step % 3])
        }
    }

    #[test]
    fn steps_follow_the_share_of_the_cores_and_compute_the_same_bits() {
        // Products of 60 × 784 × 300 multiply-adds: large enough for the backend to split.
        let spec = ModelSpec::mlp(vec![784, 300, 10]);
        let f = Fixture {
            init: init_weights(&spec, InitScheme::KaimingNormal, 3),
            spec,
            train: toy_split(240, 784, 10, 1),
            val: toy_split(0, 784, 10, 2),
            test: toy_split(60, 784, 10, 3),
        };
        let mask = Mask::dense(&f.spec);
        let mut c = cfg(OptimizerKind::Adam, 9);
        c.batch = 60;
        c.eval_every = 3;
        let fixed = run(&f, &mask, &c).unwrap();
        let data = TrainData {
            train: &f.train,
            val: &f.val,
            test: &f.test,
            augment: None,
        };
        let mut hooks = Reshared { step: 0 };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let moved = pool
            .install(|| {
                train(
                    &f.spec,
                    &f.init,
                    &mask,
                    &data,
                    &c,
                    &DeviceSpec::Cpu,
                    &mut hooks,
                )
            })
            .unwrap();
        assert_eq!(hooks.step, 9);
        assert_eq!(bits(&moved.weights), bits(&fixed.weights));
        assert_eq!(moved.curve, fixed.curve);
    }

    #[test]
    fn eval_points_have_no_duplicates() {
        let f = fixture();
        let mask = Mask::dense(&f.spec);
        let its = |every: u64, total: u64| -> Vec<u64> {
            let mut c = cfg(OptimizerKind::Sgd, total);
            c.eval_every = every;
            run(&f, &mask, &c)
                .unwrap()
                .curve
                .iter()
                .map(|p| p.iteration)
                .collect()
        };
        assert_eq!(its(5, 12), vec![0, 5, 10, 12]);
        assert_eq!(its(4, 8), vec![0, 4, 8]);
        assert_eq!(its(0, 7), vec![0, 7]);
        assert_eq!(its(3, 0), vec![0]);
    }

    #[test]
    fn empty_validation_gives_no_early_stop() {
        let mut f = fixture();
        f.val = Split::empty();
        let out = run(&f, &Mask::dense(&f.spec), &cfg(OptimizerKind::Sgd, 3)).unwrap();
        assert!(out.early_stop.is_none());
        assert!(out.curve.iter().all(|p| p.val_loss.is_none()));
    }

    fn half_mask(spec: &ModelSpec) -> Mask {
        let mut m = Mask::dense(spec);
        for (k, layer) in m.layers.iter_mut().enumerate() {
            for (i, keep) in layer.iter_mut().enumerate() {
                *keep = (i * 31 + k * 7) % 5 >= 2;
            }
        }
        m
    }

    #[test]
    fn masked_weights_stay_exactly_zero() {
        let f = fixture();
        let mask = half_mask(&f.spec);
        for (opt, momentum, wd) in [
            (OptimizerKind::Adam, 0.0, 1e-3),
            (OptimizerKind::Sgd, 0.9, 1e-3),
        ] {
            let mut c = cfg(opt, 25);
            c.momentum = momentum;
            c.weight_decay = wd;
            c.save_at = vec![0, 12];
            let out = run(&f, &mask, &c).unwrap();
            let all = std::iter::once(&out.weights).chain(out.checkpoints.iter().map(|c| &c.1));
            for w in all {
                for (l, m) in w.prunable().zip(&mask.layers) {
                    for (x, &keep) in l.data.iter().zip(m) {
                        if !keep {
                            assert_eq!(x.to_bits() & 0x7fff_ffff, 0, "masked weight {x}");
                        }
                    }
                }
            }
            // Kept weights did move.
            assert_ne!(
                out.weights.params[0].data,
                f.init.masked(&mask).params[0].data
            );
        }
    }

    #[test]
    fn masked_gradients_are_exactly_zero() {
        let f = fixture();
        let mask = half_mask(&f.spec);
        let model = to_net::<Ad>(&f.spec, &f.init, &mask, &FlexDevice).unwrap();
        let plan = Plan::new(&f.spec.program().unwrap());
        let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
        gather_range(&f.train, 0..20, &mut images, &mut targets);
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(images, [20, 1, 1, 8]), &FlexDevice);
        let y = Tensor::<Ad, 2>::from_data(one_hot(targets.labels().unwrap(), 4), &FlexDevice);
        let grads = cross_entropy(model.forward(&plan, x, &BnMode::Batch).0, y).backward();
        let prunable = [0, 2];
        for (&i, m) in prunable.iter().zip(&mask.layers) {
            let g = model.params[i]
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(g.len(), m.len());
            let mut nonzero_kept = 0;
            for (gv, &keep) in g.iter().zip(m) {
                if keep {
                    nonzero_kept += usize::from(*gv != 0.0);
                } else {
                    assert_eq!(*gv, 0.0);
                }
            }
            assert!(nonzero_kept > 0);
        }
    }

    /// The SGD velocity of parameter `i` of the session's model (`None` before any step or
    /// without momentum), read through the optimiser's record.
    fn sgd_velocity(session: &TrainSession<Ad>, i: usize) -> Option<Vec<f32>> {
        use burn::record::{FullPrecisionSettings, Record};
        let Opt::Sgd(o) = &session.optim else {
            panic!("an SGD session")
        };
        let id = session.model().params[i].id;
        let state = o.to_record().get(&id)?.clone().into_state::<1>();
        let item = serde_json::to_value(state.into_item::<FullPrecisionSettings>()).unwrap();
        let bytes = item
            .pointer("/momentum/velocity/bytes")?
            .as_array()?
            .clone();
        let bytes: Vec<u8> = bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect();
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    #[test]
    fn filter_masks_keep_biases_batch_norm_and_momentum_at_zero() {
        // conv1 (1→4) with batch norm, conv2 (4→3) with a bias: a RePr-style filter mask drops
        // conv1's filter 2 (weights, bn1 scale and shift) and conv2's filter 0 (weights, bias).
        let spec: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[4,"M"],"fc":[],"classes":3,"input":[1,4,4],"batch_norm":true}"#,
        )
        .unwrap();
        let spec2: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[4,"M",3],"fc":[],"classes":3,"input":[1,4,4]}"#,
        )
        .unwrap();
        for spec in [spec, spec2] {
            let init = init_weights(&spec, InitScheme::KaimingNormal, 4);
            let mut mask = Mask::dense(&spec);
            let names: Vec<String> = init.params.iter().map(|p| p.name.clone()).collect();
            let mut masked_params = Vec::new();
            if names.contains(&"bn1.weight".to_string()) {
                mask.layers[0][2 * 9..3 * 9].fill(false);
                for n in ["bn1.weight", "bn1.bias"] {
                    mask.extra.insert(n.into(), vec![true, true, false, true]);
                }
                masked_params.extend([0, 1, 2]);
            } else {
                mask.layers[1][0..36].fill(false);
                mask.extra
                    .insert("conv2.bias".into(), vec![false, true, true]);
                masked_params.extend([2, 3]);
            }
            let mut c = cfg(OptimizerKind::Sgd, 6);
            c.momentum = 0.9;
            c.weight_decay = 1e-2;
            c.lr = 0.1;
            let mut session = TrainSession::<Ad>::new(&spec, &init, &mask, &c, FlexDevice).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            for _ in 0..6 {
                let images: Vec<f32> = (0..8 * 16)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                let labels: Vec<u8> = (0..8).map(|i| (i % 3) as u8).collect();
                session.step(images, &labels, 0.1);
            }
            let w = session.weights();
            for &i in &masked_params {
                let m = mask.of_param(&init, i).unwrap().to_vec();
                let v = sgd_velocity(&session, i).expect("momentum state after 6 steps");
                let (mut moved, mut velocity_kept) = (false, false);
                for (k, &keep) in m.iter().enumerate() {
                    if keep {
                        moved |= w.params[i].data[k] != init.params[i].data[k];
                        velocity_kept |= v[k] != 0.0;
                    } else {
                        assert_eq!(w.params[i].data[k], 0.0, "{} [{k}]", names[i]);
                        assert_eq!(v[k], 0.0, "velocity of {} [{k}]", names[i]);
                    }
                }
                assert!(moved && velocity_kept, "{} trained", names[i]);
            }
        }
    }

    #[test]
    fn resuming_at_start_step_reproduces_plain_sgd() {
        let f = fixture();
        let mask = half_mask(&f.spec);
        let mut c = cfg(OptimizerKind::Sgd, 20);
        c.lr = 0.05;
        c.save_at = vec![13];
        let full = run(&f, &mask, &c).unwrap();
        // Plain SGD has no state, so resuming from iteration 13 with the same
        // absolute batch order must land on the same weights, bit for bit.
        let mid = Fixture {
            init: full.checkpoints[0].1.clone(),
            ..fixture()
        };
        let mut c2 = cfg(OptimizerKind::Sgd, 20);
        c2.lr = 0.05;
        c2.start_step = 13;
        let rest = run(&mid, &mask, &c2).unwrap();
        assert_eq!(bits(&rest.weights), bits(&full.weights));
        assert_eq!(rest.curve.first().unwrap().iteration, 13);
    }

    #[test]
    fn resuming_with_the_optimiser_state_reproduces_the_uninterrupted_run() {
        let f = fixture();
        let mask = half_mask(&f.spec);
        for (optimizer, momentum) in [(OptimizerKind::Sgd, 0.9), (OptimizerKind::Adam, 0.0)] {
            let mut c = cfg(optimizer, 20);
            c.momentum = momentum;
            c.weight_decay = 1e-3;
            c.save_at = vec![13];
            let full = run(&f, &mask, &c).unwrap();
            let state = full.checkpoint_states[0]
                .clone()
                .expect("state at iteration 13");
            assert_eq!(state.optimizer(), optimizer);
            if let OptimState::Adam { step, .. } = &state {
                assert_eq!(*step, 13);
            }
            // Masked weights have no momentum to carry.
            if let OptimState::Sgd { momentum_buffer } = &state {
                let m = mask.of_param(&f.init, 0).unwrap();
                assert!(
                    m.iter()
                        .zip(&momentum_buffer[0])
                        .all(|(&k, &v)| k || v == 0.0)
                );
                assert!(momentum_buffer[0].iter().any(|&v| v != 0.0));
            }
            let mid = Fixture {
                init: full.checkpoints[0].1.clone(),
                ..fixture()
            };
            let mut c2 = c.clone();
            c2.save_at = vec![];
            c2.start_step = 13;
            let fresh = run(&mid, &mask, &c2).unwrap();
            assert_ne!(
                bits(&fresh.weights),
                bits(&full.weights),
                "{optimizer:?}: a fresh optimiser takes other steps"
            );
            c2.resume = Some(state);
            let resumed = run(&mid, &mask, &c2).unwrap();
            assert_eq!(
                bits(&resumed.weights),
                bits(&full.weights),
                "{optimizer:?}: resumed run equals the uninterrupted one, bit for bit"
            );
            assert_eq!(resumed.optimizer, full.optimizer);
        }
        // A state of the other optimiser, or for plain SGD, is refused.
        let mut c = cfg(OptimizerKind::Sgd, 4);
        c.momentum = 0.9;
        c.save_at = vec![2];
        let sgd_state = run(&f, &mask, &c).unwrap().checkpoint_states[0].clone();
        let mut adam = cfg(OptimizerKind::Adam, 4);
        adam.resume = sgd_state.clone();
        let e = run(&f, &mask, &adam).unwrap_err().to_string();
        assert!(
            e.contains("the optimiser state is Sgd's, but this training uses adam"),
            "{e}"
        );
        let mut plain = cfg(OptimizerKind::Sgd, 4);
        plain.resume = sgd_state;
        let e = run(&f, &mask, &plain).unwrap_err().to_string();
        assert!(
            e.contains("plain SGD (momentum 0) keeps no optimiser state"),
            "{e}"
        );
    }

    #[test]
    fn augmented_training_resumes_with_the_same_draws() {
        let f = fixture();
        let mask = Mask::dense(&f.spec);
        // On these [8, 1, 1] samples a crop with padding 1 keeps or zeroes each sample.
        let aug = Augment {
            crop_padding: 1,
            flip: false,
        };
        let run_aug = |f: &Fixture, c: &TrainConfig, augment| {
            let data = TrainData {
                train: &f.train,
                val: &f.val,
                test: &f.test,
                augment,
            };
            let mut go = |_: &Progress| ControlFlow::Continue(());
            train(&f.spec, &f.init, &mask, &data, c, &DeviceSpec::Cpu, &mut go).unwrap()
        };
        let mut c = cfg(OptimizerKind::Sgd, 20);
        c.lr = 0.05;
        c.save_at = vec![13];
        let full = run_aug(&f, &c, Some(&aug));
        assert_ne!(bits(&full.weights), bits(&run_aug(&f, &c, None).weights));
        let mid = Fixture {
            init: full.checkpoints[0].1.clone(),
            ..fixture()
        };
        c.save_at = vec![];
        c.start_step = 13;
        let rest = run_aug(&mid, &c, Some(&aug));
        assert_eq!(bits(&rest.weights), bits(&full.weights));
    }

    #[test]
    fn progress_and_cancel() {
        let f = fixture();
        let data = TrainData {
            train: &f.train,
            val: &f.val,
            test: &f.test,
            augment: None,
        };
        let mut seen = Vec::new();
        let r = train(
            &f.spec,
            &f.init,
            &Mask::dense(&f.spec),
            &data,
            &cfg(OptimizerKind::Adam, 10),
            &DeviceSpec::Cpu,
            &mut |p: &Progress| {
                seen.push((p.iteration, p.total));
                if p.iteration == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        assert!(matches!(r, Err(NnError::Cancelled)));
        assert_eq!(seen, vec![(1, 10), (2, 10), (3, 10)]);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let f = fixture();
        let mask = Mask::dense(&f.spec);
        let mut c = cfg(OptimizerKind::Sgd, 10);
        c.save_at = vec![11];
        assert!(
            run(&f, &mask, &c)
                .unwrap_err()
                .to_string()
                .contains("save_at iteration 11")
        );
        let mut c = cfg(OptimizerKind::Sgd, 10);
        c.batch = 201;
        assert!(matches!(run(&f, &mask, &c), Err(NnError::Data(_))));
        let mut c = cfg(OptimizerKind::Sgd, 10);
        c.start_step = 11;
        assert!(run(&f, &mask, &c).is_err());
        let mut c = cfg(OptimizerKind::Sgd, 10);
        c.lr = f64::NAN;
        assert!(run(&f, &mask, &c).is_err());
        let mut bad = fixture();
        let (images, mut labels) = toy_data(100, 8, 4, 3);
        labels[0] = 4;
        bad.test = Split::new(Inputs::f32(images, [8, 1, 1]), Targets::classes(labels, 5)).unwrap();
        assert!(
            run(&bad, &mask, &cfg(OptimizerKind::Sgd, 1))
                .unwrap_err()
                .to_string()
                .contains("label 4")
        );
        assert!(matches!(
            train(
                &f.spec,
                &f.init,
                &mask,
                &TrainData {
                    train: &f.train,
                    val: &f.val,
                    test: &f.test,
                    augment: None,
                },
                &cfg(OptimizerKind::Sgd, 1),
                &DeviceSpec::Cuda(0),
                &mut |_: &Progress| ControlFlow::Continue(())
            ),
            Err(NnError::CudaNotCompiled)
        ));
    }

    #[test]
    fn evaluate_exact_values() {
        // One layer, identity weights: logits = x.
        let spec = ModelSpec::mlp(vec![2, 2]);
        let w = Weights {
            params: vec![
                HostParam {
                    name: "fc1.weight".into(),
                    shape: vec![2, 2],
                    role: ParamRole::LinearWeight,
                    data: vec![1.0, 0.0, 0.0, 1.0],
                },
                HostParam {
                    name: "fc1.bias".into(),
                    shape: vec![2],
                    role: ParamRole::Bias,
                    data: vec![0.0, 0.0],
                },
            ],
            buffers: vec![],
        };
        let split = Split::new(
            Inputs::f32(vec![1.0, 0.0, 0.0, 2.0, 3.0, 0.0], [2, 1, 1]),
            Targets::classes(vec![0, 1, 1], 2),
        )
        .unwrap();
        let (loss, acc) =
            evaluate(&spec, &w, &Mask::dense(&spec), &split, &DeviceSpec::Cpu).unwrap();
        let ce = |a: f64, b: f64, y: usize| -> f64 { (a.exp() + b.exp()).ln() - [a, b][y] };
        let want = (ce(1.0, 0.0, 0) + ce(0.0, 2.0, 1) + ce(3.0, 0.0, 1)) / 3.0;
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
        assert_eq!(acc, 2.0 / 3.0);
        // Masking the diagonal makes every logit 0: loss ln 2, ties predict class 0.
        let m = Mask::new(vec![vec![false, true, true, false]]);
        let (loss, acc) = evaluate(&spec, &w, &m, &split, &DeviceSpec::Cpu).unwrap();
        assert!((loss - 2f64.ln()).abs() < 1e-9);
        assert_eq!(acc, 1.0 / 3.0);
        assert!(evaluate(&spec, &w, &m, &Split::empty(), &DeviceSpec::Cpu).is_err());
    }

    #[test]
    fn evaluation_figures_do_not_depend_on_the_batch_size() {
        // A ResNet with batch norms in running mode and a remainder batch: every sample's
        // logits are computed alone, so EVAL_BATCH can change without changing a result.
        let mut r = crate::nn::arch::ResnetSpec::standard(8);
        r.width = 4;
        r.input = [1, 8, 8];
        let spec = ModelSpec::Resnet(r);
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 5);
        for (i, b) in w.buffers.iter_mut().enumerate() {
            for (j, v) in b.data.iter_mut().enumerate() {
                *v = 0.3 + 0.1 * ((i + j) % 5) as f32;
            }
        }
        let split = crate::nn::step_timing::synthetic_split_shaped(37, [1, 8, 8], 10, 9);
        let device = FlexDevice;
        let net = to_net::<Flex>(&spec, &w, &Mask::dense(&spec), &device).unwrap();
        let plan = Plan::new(&spec.program().unwrap());
        let running = buffers_to_device::<Flex>(&w, &device);
        let at = |batch| {
            let (l, a) = eval_split_in(&net, &plan, &running, &split, &device, batch);
            (l.to_bits(), a.to_bits())
        };
        let whole = at(37);
        for batch in [1, 5, 16, EVAL_BATCH] {
            assert_eq!(at(batch), whole, "batch {batch}");
        }
    }
}

/// End-to-end check on real MNIST (slow: one LeNet-300-100 epoch).
/// Run with `cargo test --lib -- --ignored lenet_mnist`.
#[cfg(test)]
mod mnist_smoke {
    use super::*;
    use crate::data::{load_mnist, split_validation};
    use crate::nn::{InitScheme, init_weights};

    #[test]
    #[ignore]
    fn lenet_mnist_one_epoch() {
        let dir =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/mnist"));
        let m = load_mnist(dir, true).unwrap();
        let (train_set, val) = split_validation(&m.train, 5000, 0).unwrap();
        let spec = ModelSpec::lenet_300_100();
        let init = init_weights(&spec, InitScheme::KaimingNormal, 0);
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Adam,
            lr: 1.2e-3,
            momentum: 0.0,
            weight_decay: 0.0,
            batch: 60,
            iterations: 916,
            schedule: LrSchedule::Constant,
            warmup: 0,
            save_at: vec![],
            eval_every: 458,
            data_seed: 0,
            start_step: 0,
            resume: None,
            train_probe: 0,
            stochastic_depth: None,
        };
        let data = TrainData {
            train: &train_set,
            val: &val,
            test: &m.test,
            augment: None,
        };
        let t = std::time::Instant::now();
        let out = train(
            &spec,
            &init,
            &Mask::dense(&spec),
            &data,
            &cfg,
            &DeviceSpec::Cpu,
            &mut |_: &Progress| ControlFlow::Continue(()),
        )
        .unwrap();
        eprintln!("one epoch: {:?}; curve {:#?}", t.elapsed(), out.curve);
        assert!(out.curve.last().unwrap().test_acc > 0.95);
    }
}
