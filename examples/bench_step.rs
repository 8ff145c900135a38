//! Milliseconds per LeNet-300-100 Adam step on any device pipe supports, for comparing with
//! PyTorch on the same card (bench/gpu/bench.sh). Synthetic inputs: only shapes matter.
//!
//!     cargo build --release --features cuda --example bench_step
//!     target/release/examples/bench_step cuda 60 1024
//!
//! Prints `BENCH step/b<batch> <ms per step> <samples per s>` per batch size. Warm-up steps
//! are excluded; the loss of the last step is read back so queued GPU work is finished
//! before the clock stops.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use pipe::nn::train::TrainSession;
use pipe::nn::{
    BackendTask, DeviceSpec, InitScheme, LrSchedule, Mask, ModelSpec, NnError, OptimizerKind,
    TrainConfig, dispatch, init_weights,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const WARMUP: usize = 200;
const STEPS: usize = 500;

struct StepBench {
    batch: usize,
}

impl BackendTask for StepBench {
    type Output = f64;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<f64, NnError> {
        let spec = ModelSpec::lenet_300_100();
        let weights = init_weights(&spec, InitScheme::KaimingNormal, 0);
        let cfg = TrainConfig {
            optimizer: OptimizerKind::Adam,
            lr: 1.2e-3,
            momentum: 0.0,
            weight_decay: 0.0,
            batch: self.batch,
            iterations: (WARMUP + STEPS) as u64,
            schedule: LrSchedule::Constant,
            warmup: 0,
            save_at: vec![],
            eval_every: 1,
            data_seed: 0,
            start_step: 0,
        };
        let mut session =
            TrainSession::<B>::new(&spec, &weights, &Mask::dense(&spec), &cfg, device)?;
        // Seeded normal inputs and random labels, as in benches/train_step.rs.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let images: Vec<f32> = (0..self.batch * 784)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let labels: Vec<u8> = (0..self.batch).map(|_| rng.random_range(0..10u8)).collect();
        for _ in 0..WARMUP {
            session.step(images.clone(), &labels, cfg.lr);
        }
        let _ = session.step(images.clone(), &labels, cfg.lr).into_scalar();
        let t0 = Instant::now();
        for i in 0..STEPS {
            let loss = session.step(images.clone(), &labels, cfg.lr);
            // Read the loss now and then, as training does (and always after the last step,
            // so that queued GPU work is finished before the clock stops).
            if i % 25 == 24 || i + 1 == STEPS {
                let _ = loss.into_scalar();
            }
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3 / STEPS as f64)
    }
}

fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let device: DeviceSpec = args.next().unwrap_or_else(|| "cpu".into()).parse()?;
    device.available()?;
    let batches: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    for batch in if batches.is_empty() {
        vec![60, 1024]
    } else {
        batches
    } {
        let ms = dispatch(&device, StepBench { batch })?;
        println!("BENCH step/b{batch} {ms:.4} {:.0}", batch as f64 / ms * 1e3);
    }
    Ok(())
}
