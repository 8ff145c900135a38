//! Wall-clock time of one training step, for comparing pipe with PyTorch on the same device
//! (`examples/bench_step.rs`, `bench/gpu/bench.sh`), and the synthetic inputs and settings the
//! benchmarks share (`benches/train_step.rs`). The loop drives the same
//! [`TrainSession::step`] that the `train` stage runs, on any backend [`dispatch`] offers.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::train::TrainSession;
use super::{
    BackendTask, DeviceSpec, InitScheme, LrSchedule, Mask, ModelSpec, NnError, OptimizerKind,
    TrainConfig, dispatch, init_weights,
};
use crate::data::{BatchTargets, Inputs, Split, Targets, gather_range};

/// How a step timing is taken.
#[derive(Clone, Copy, Debug)]
pub struct StepTiming {
    /// Samples per step.
    pub batch: usize,
    /// Steps run before the clock starts (kernel compilation and autotuning on a GPU).
    pub warmup: usize,
    /// Steps timed.
    pub steps: usize,
    /// Read the loss back every this many steps, as training does for its progress line.
    /// The loss of the last step is always read, so queued GPU work is done when the clock
    /// stops.
    pub read_every: usize,
}

/// What model a step timing trains, and with which optimiser.
#[derive(Clone, Debug)]
pub struct ModelTiming {
    pub spec: ModelSpec,
    /// Adam at lr 1.2e-3 (the lottery-ticket setting) or SGD with momentum 0.9 at lr 0.01
    /// (the conv families' setting).
    pub optimizer: OptimizerKind,
    pub timing: StepTiming,
}

/// Mean milliseconds per LeNet-300-100 Adam step (lr 1.2e-3, as in the lottery-ticket setting)
/// on `device`. Inputs are seeded standard normals with random labels: only shapes matter.
pub fn time_lenet_adam_steps(device: &DeviceSpec, timing: StepTiming) -> Result<f64, NnError> {
    time_train_steps(
        device,
        ModelTiming {
            spec: ModelSpec::lenet_300_100(),
            optimizer: OptimizerKind::Adam,
            timing,
        },
    )
}

/// Mean milliseconds per training step of any model on `device`, on seeded synthetic input
/// of the model's input shape.
pub fn time_train_steps(device: &DeviceSpec, job: ModelTiming) -> Result<f64, NnError> {
    if job.timing.batch == 0 || job.timing.steps == 0 {
        return Err(NnError::Shape(
            "step timing needs a batch and a step count above 0".into(),
        ));
    }
    job.spec.validate().map_err(NnError::Invalid)?;
    // As a pipeline's stages run: inside a thread pool of their own.
    crate::exec::on_own_pool(None, || dispatch(device, job))
}

/// `n` MNIST-shaped samples (`[1, 28, 28]` standard normals, a random label of 10), seeded:
/// benchmark input, where only the shapes matter for time.
pub fn synthetic_split(n: usize, seed: u64) -> Split {
    synthetic_split_shaped(n, [1, 28, 28], 10, seed)
}

/// `n` seeded standard-normal samples of `shape` with random labels below `classes`.
pub fn synthetic_split_shaped(n: usize, shape: [usize; 3], classes: usize, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d: usize = shape.iter().product();
    let images = (0..n * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let classes = classes.clamp(1, 256);
    let labels = (0..n).map(|_| rng.random_range(0..classes) as u8).collect();
    Split::new(
        Inputs::f32(images, shape),
        Targets::classes(labels, classes),
    )
    .expect("consistent synthetic split")
}

/// The whole of `split` as one batch: inputs and labels, as [`TrainSession::step`] takes them.
pub fn whole_batch(split: &Split) -> (Vec<f32>, Vec<u8>) {
    let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
    gather_range(split, 0..split.n, &mut images, &mut targets);
    (images, targets.labels().unwrap_or_default().to_vec())
}

/// The benchmarks' training settings: Adam at lr 1.2e-3 (the lottery-ticket setting), constant
/// schedule, no evaluation, nothing saved.
pub fn bench_config(batch: usize, iterations: u64) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerKind::Adam,
        lr: 1.2e-3,
        momentum: 0.0,
        weight_decay: 0.0,
        batch,
        iterations,
        schedule: LrSchedule::Constant,
        warmup: 0,
        save_at: vec![],
        eval_every: 0,
        data_seed: 1,
        start_step: 0,
        resume: None,
        train_probe: 0,
        stochastic_depth: None,
    }
}

impl BackendTask for ModelTiming {
    type Output = f64;

    fn run<B: crate::nn::ops::TrainBackend>(self, device: B::Device) -> Result<f64, NnError> {
        let ModelTiming {
            spec,
            optimizer,
            timing,
        } = self;
        let weights = init_weights(&spec, InitScheme::KaimingNormal, 0);
        let mut cfg = bench_config(timing.batch, (timing.warmup + timing.steps) as u64);
        if optimizer == OptimizerKind::Sgd {
            (cfg.optimizer, cfg.lr, cfg.momentum) = (OptimizerKind::Sgd, 0.01, 0.9);
        }
        let lr = cfg.lr;
        let mut session =
            TrainSession::<B>::new(&spec, &weights, &Mask::dense(&spec), &cfg, device)?;
        let split = synthetic_split_shaped(timing.batch, spec.input_shape(), spec.output_dim(), 7);
        let (images, labels) = whole_batch(&split);
        let StepTiming {
            warmup,
            steps,
            read_every,
            ..
        } = timing;
        for _ in 0..warmup {
            session.step(images.clone(), &labels, lr);
        }
        // Drain the warm-up's queued work before the clock starts.
        let _ = session.step(images.clone(), &labels, lr).into_scalar();
        let read_every = read_every.max(1);
        let t0 = Instant::now();
        for i in 0..steps {
            let loss = session.step(images.clone(), &labels, lr);
            if (i + 1) % read_every == 0 || i + 1 == steps {
                let _ = loss.into_scalar();
            }
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3 / steps as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(batch: usize, steps: usize) -> StepTiming {
        StepTiming {
            batch,
            warmup: 1,
            steps,
            read_every: 1,
        }
    }

    #[test]
    fn times_a_few_cpu_steps() {
        let ms = time_lenet_adam_steps(&DeviceSpec::Cpu, timing(4, 2)).unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{ms}");
    }

    #[test]
    fn times_conv_families_on_their_input_shape() {
        let spec: ModelSpec =
            serde_json::from_str(r#"{"arch":"resnet","depth":8,"width":4,"input":[3,8,8]}"#)
                .unwrap();
        let job = ModelTiming {
            spec,
            optimizer: OptimizerKind::Sgd,
            timing: timing(4, 1),
        };
        let ms = time_train_steps(&DeviceSpec::Cpu, job).unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{ms}");
    }

    #[test]
    fn zero_batch_or_steps_is_an_error() {
        for t in [timing(0, 1), timing(4, 0)] {
            let e = time_lenet_adam_steps(&DeviceSpec::Cpu, t).unwrap_err();
            assert_eq!(
                e.to_string(),
                "shape mismatch: step timing needs a batch and a step count above 0"
            );
        }
    }
}
