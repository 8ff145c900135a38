//! Milliseconds per LeNet-300-100 Adam step on any device pipe supports, for comparing with
//! PyTorch on the same card (bench/gpu/bench.sh). The loop itself is
//! `pipe::nn::step_timing`, compiled in the library as `pipe`'s own training is.
//!
//!     cargo build --release --features cuda --example bench_step
//!     target/release/examples/bench_step cuda 60 1024
//!
//! Prints `BENCH step/b<batch> <ms per step> <samples per s>` per batch size: 200 warm-up
//! steps excluded, 500 timed, the loss read back every 25 steps as training does.

use pipe::nn::DeviceSpec;
use pipe::nn::host::retain_tensor_buffers;
use pipe::nn::step_timing::{StepTiming, time_lenet_adam_steps};

fn main() -> std::process::ExitCode {
    // As the `pipe` binary does, so that the step measured is the step pipelines run.
    retain_tensor_buffers();
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
        let timing = StepTiming {
            batch,
            warmup: 200,
            steps: 500,
            read_every: 25,
        };
        let ms = time_lenet_adam_steps(&device, timing)?;
        println!("BENCH step/b{batch} {ms:.4} {:.0}", batch as f64 / ms * 1e3);
    }
    Ok(())
}
