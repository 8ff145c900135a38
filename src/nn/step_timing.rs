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

/// Mean milliseconds per LeNet-300-100 Adam step (lr 1.2e-3, as in the lottery-ticket setting)
/// on `device`. Inputs are seeded standard normals with random labels: only shapes matter.
pub fn time_lenet_adam_steps(device: &DeviceSpec, timing: StepTiming) -> Result<f64, NnError> {
    if timing.batch == 0 || timing.steps == 0 {
        return Err(NnError::Shape(
            "step timing needs a batch and a step count above 0".into(),
        ));
    }
    dispatch(device, timing)
}

/// `n` MNIST-shaped samples (`[1, 28, 28]` standard normals, a random label of 10), seeded:
/// benchmark input, where only the shapes matter for time.
pub fn synthetic_split(n: usize, seed: u64) -> Split {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let images = (0..n * 784)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let labels = (0..n).map(|_| rng.random_range(0..10u8)).collect();
    Split::new(
        Inputs::f32(images, [1, 28, 28]),
        Targets::classes(labels, 10),
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
    }
}

impl BackendTask for StepTiming {
    type Output = f64;

    fn run<B: crate::nn::ops::TrainBackend>(self, device: B::Device) -> Result<f64, NnError> {
        let spec = ModelSpec::lenet_300_100();
        let weights = init_weights(&spec, InitScheme::KaimingNormal, 0);
        let cfg = bench_config(self.batch, (self.warmup + self.steps) as u64);
        let lr = cfg.lr;
        let mut session =
            TrainSession::<B>::new(&spec, &weights, &Mask::dense(&spec), &cfg, device)?;
        let (images, labels) = whole_batch(&synthetic_split(self.batch, 7));
        for _ in 0..self.warmup {
            session.step(images.clone(), &labels, lr);
        }
        // Drain the warm-up's queued work before the clock starts.
        let _ = session.step(images.clone(), &labels, lr).into_scalar();
        let read_every = self.read_every.max(1);
        let t0 = Instant::now();
        for i in 0..self.steps {
            let loss = session.step(images.clone(), &labels, lr);
            if (i + 1) % read_every == 0 || i + 1 == self.steps {
                let _ = loss.into_scalar();
            }
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3 / self.steps as f64)
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
