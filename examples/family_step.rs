//! Milliseconds per training step of one model of every family, for comparing with PyTorch
//! on the same machine (`bench/compare_families.sh`, which runs the identical models through
//! `bench/torch_family_step.py`).
//!
//!     cargo run --release --example family_step -- OUT_DIR [BATCH] [STEPS]
//!
//! For each model prints `BENCH <name> <ms per step> <parameters> <forward FLOPs>` and writes
//! `OUT_DIR/<name>.json` (the layer program), from which the PyTorch side builds the same
//! network. SGD with momentum 0.9 (Adam for LeNet), 2 warm-up steps, then `STEPS` timed.

use std::path::PathBuf;

use pipe::nn::host::retain_tensor_buffers;
use pipe::nn::step_timing::{ModelTiming, StepTiming, time_train_steps};
use pipe::nn::{DeviceSpec, Mask, ModelSpec, OptimizerKind, forward_flops};

/// The models timed: each family at a size the papers use, on CIFAR-shaped input, and the
/// small nets also on Fashion-MNIST-shaped input.
const MODELS: &[(&str, &str)] = &[
    ("lenet_28", r#"{"arch":"mlp","widths":[784,300,100,10]}"#),
    (
        "conv4_28",
        r#"{"arch":"convnet","layers":[64,64,"M",128,128,"M"],"fc":[256,256],"input":[1,28,28]}"#,
    ),
    (
        "conv4_32",
        r#"{"arch":"convnet","layers":[64,64,"M",128,128,"M"],"fc":[256,256]}"#,
    ),
    ("vgg11_32", r#"{"arch":"vgg","depth":11}"#),
    (
        "resnet20_28",
        r#"{"arch":"resnet","depth":20,"input":[1,28,28]}"#,
    ),
    ("resnet20_32", r#"{"arch":"resnet","depth":20}"#),
    ("mobilenet_v2_32", r#"{"arch":"mobilenet_v2"}"#),
    // NetAug's tiny base (width 0.35).
    (
        "mobilenet_v2_tiny_32",
        r#"{"arch":"mobilenet_v2","width":0.35}"#,
    ),
];

fn main() -> std::process::ExitCode {
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
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: family_step OUT_DIR [BATCH] [STEPS]")?,
    );
    let batch: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let steps: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let only: Option<String> = std::env::var("ONLY").ok();
    std::fs::create_dir_all(&out)?;
    for (name, json) in MODELS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == *name))
        {
            continue;
        }
        let spec: ModelSpec = serde_json::from_str(json)?;
        let program = spec.program()?;
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_vec(&program)?,
        )?;
        let optimizer = match spec {
            ModelSpec::Mlp(_) => OptimizerKind::Adam,
            _ => OptimizerKind::Sgd,
        };
        let params: usize = spec.params().iter().map(|p| p.len()).sum();
        let flops = forward_flops(&spec, &Mask::dense(&spec));
        let timing = StepTiming {
            batch,
            warmup: 2,
            steps,
            read_every: 1,
        };
        let ms = time_train_steps(
            &DeviceSpec::Cpu,
            ModelTiming {
                spec,
                optimizer,
                timing,
            },
        )?;
        println!("BENCH {name} {ms:.2} {params} {flops}");
    }
    Ok(())
}
