//! Training throughput of LeNet-300-100 on the CPU (burn Flex backend).
//!
//! * `train_step/adam_b60`   one Adam step at batch 60 (the lottery-ticket setting)
//! * `train_step/adam_b1024` one Adam step at batch 1024
//! * `train_epoch/adam_b60`  one full epoch (60,000 synthetic samples, 1,000 steps)
//!   through `pipe::nn::train`, including batch gathering
//!
//! Inputs are seeded random normals with random labels: only the shapes matter
//! for time. `bench/compare.sh` runs this and `bench/pytorch_lenet.py`.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Duration;

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use criterion::{Criterion, criterion_group, criterion_main};
use pipe::data::Split;
use pipe::nn::step_timing::{bench_config, synthetic_split, whole_batch};
use pipe::nn::train::TrainSession;
use pipe::nn::{DeviceSpec, InitScheme, Mask, ModelSpec, TrainData, init_weights, train};

fn steps(c: &mut Criterion) {
    // As the `pipe` binary does at start-up (see pipe::nn::host).
    pipe::nn::host::retain_tensor_buffers();
    let spec = ModelSpec::lenet_300_100();
    let init = init_weights(&spec, InitScheme::KaimingNormal, 0);
    let mask = Mask::dense(&spec);
    let mut group = c.benchmark_group("train_step");
    for batch in [60usize, 1024] {
        let (images, labels) = whole_batch(&synthetic_split(batch, 7));
        let mut session = TrainSession::<Autodiff<Flex>>::new(
            &spec,
            &init,
            &mask,
            &bench_config(batch, 1),
            FlexDevice,
        )
        .unwrap();
        group.bench_function(format!("adam_b{batch}"), |b| {
            b.iter(|| black_box(session.step(images.clone(), &labels, 1.2e-3)))
        });
    }
    group.finish();
}

fn epoch(c: &mut Criterion) {
    let spec = ModelSpec::lenet_300_100();
    let init = init_weights(&spec, InitScheme::KaimingNormal, 0);
    let mask = Mask::dense(&spec);
    let train_set = synthetic_split(60_000, 1);
    let test = synthetic_split(10, 2);
    let val = Split::empty();
    let cfg = bench_config(60, 1000);
    let mut group = c.benchmark_group("train_epoch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function("adam_b60", |b| {
        b.iter(|| {
            let data = TrainData {
                train: &train_set,
                val: &val,
                test: &test,
                augment: None,
            };
            let out = train(
                &spec,
                &init,
                &mask,
                &data,
                &cfg,
                &DeviceSpec::Cpu,
                &mut |_: &pipe::nn::Progress| ControlFlow::Continue(()),
            )
            .unwrap();
            black_box(out.weights)
        })
    });
    group.finish();
}

criterion_group!(benches, steps, epoch);
criterion_main!(benches);
