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

const WARMUP: usize = 20;
const STEPS: usize = 200;

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
        // A deterministic pseudo-random batch (the values do not affect the time).
        let images: Vec<f32> = (0..self.batch * 784)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let labels: Vec<u8> = (0..self.batch).map(|i| (i % 10) as u8).collect();
        for _ in 0..WARMUP {
            session.step(images.clone(), &labels, cfg.lr);
        }
        let _ = session.step(images.clone(), &labels, cfg.lr).into_scalar();
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..STEPS {
            last = Some(session.step(images.clone(), &labels, cfg.lr));
        }
        let _ = last.expect("at least one step").into_scalar();
        Ok(t0.elapsed().as_secs_f64() * 1e3 / STEPS as f64)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
