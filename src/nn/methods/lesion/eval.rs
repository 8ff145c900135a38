//! Evaluating lesioned programs ([`crate::nn::methods::lesion`]) with a trained model's weights.
//!
//! A lesioned program names a subset of the model's parameters (deletion) or the same ones in
//! another order (reordering); its weights are picked from the trained ones by name, so one
//! checkpoint serves every lesion. Batch norm runs in evaluation mode with the trained running
//! statistics, or — when asked — with statistics re-estimated on training images through the
//! lesioned network (the cumulative average of batch statistics, as PyTorch's `momentum=None`).

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use crate::data::{BatchTargets, Split, gather_range};
use crate::nn::device::{BackendTask, DeviceSpec, dispatch};
use crate::nn::net::{BnMode, Net, Plan, buffers_to_device};
use crate::nn::ops::NnBackend;
use crate::nn::program::Program;
use crate::nn::train::eval_split;
use crate::nn::weights::{Named, Param as HostParam};
use crate::nn::{NnError, Weights};

/// Images per forward pass when re-estimating batch-norm statistics (the training batch).
pub const RECALIBRATION_BATCH: usize = 128;

/// The parameters and running statistics `program` uses, taken by name from `weights` (a
/// model whose program contains every operation of `program`), in `program`'s order.
pub fn weights_for(program: &Program, weights: &Weights) -> Result<Weights, NnError> {
    let params: HashMap<&str, &HostParam> = weights
        .params
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let buffers: HashMap<&str, &Named> = weights
        .buffers
        .iter()
        .map(|b| (b.name.as_str(), b))
        .collect();
    let mut out = Weights {
        params: Vec::new(),
        buffers: Vec::new(),
    };
    for info in program.params() {
        let p = params
            .get(info.name.as_str())
            .ok_or_else(|| NnError::Shape(format!("the model has no parameter `{}`", info.name)))?;
        if p.shape != info.shape {
            return Err(NnError::Shape(format!(
                "parameter `{}` is {:?} in the model, {:?} in the lesioned program",
                info.name, p.shape, info.shape
            )));
        }
        out.params.push((*p).clone());
    }
    for bn in program.batch_norms() {
        for what in ["running_mean", "running_var"] {
            let name = format!("{}.{what}", bn.layer);
            let b = buffers
                .get(name.as_str())
                .ok_or_else(|| NnError::Shape(format!("the model has no buffer `{name}`")))?;
            out.buffers.push((*b).clone());
        }
    }
    Ok(out)
}

/// One lesioned model to evaluate, on one split.
pub struct LesionJob<'a> {
    pub program: &'a Program,
    pub split: &'a Split,
}

/// `(loss, accuracy)` of each job. `weights` are the trained model's (masked weights
/// already zeroed); `recalibrate` re-estimates each lesioned model's batch-norm statistics
/// on that split first. `progress(done)` is called after each job; `cancelled()` stops early.
pub fn evaluate_lesions(
    jobs: &[LesionJob],
    weights: &Weights,
    recalibrate: Option<&Split>,
    device: &DeviceSpec,
    cancelled: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<(f64, f64)>, NnError> {
    struct Task<'a, 'b> {
        jobs: &'a [LesionJob<'a>],
        weights: &'a Weights,
        recalibrate: Option<&'a Split>,
        cancelled: &'a dyn Fn() -> bool,
        progress: &'b mut dyn FnMut(usize),
    }
    impl BackendTask for Task<'_, '_> {
        type Output = Vec<(f64, f64)>;
        fn run<B: crate::nn::ops::TrainBackend>(
            self,
            device: B::Device,
        ) -> Result<Self::Output, NnError> {
            let mut out = Vec::with_capacity(self.jobs.len());
            for (i, job) in self.jobs.iter().enumerate() {
                if (self.cancelled)() {
                    return Err(NnError::Cancelled);
                }
                out.push(evaluate_one::<B::InnerBackend>(
                    job,
                    self.weights,
                    self.recalibrate,
                    &device,
                )?);
                (self.progress)(i + 1);
            }
            Ok(out)
        }
    }
    dispatch(
        device,
        Task {
            jobs,
            weights,
            recalibrate,
            cancelled,
            progress,
        },
    )
}

fn evaluate_one<B: NnBackend>(
    job: &LesionJob,
    weights: &Weights,
    recalibrate: Option<&Split>,
    device: &B::Device,
) -> Result<(f64, f64), NnError> {
    job.program.check().map_err(NnError::Invalid)?;
    if job.split.n == 0 {
        return Err(NnError::Invalid("cannot evaluate on an empty split".into()));
    }
    let w = weights_for(job.program, weights)?;
    let plan = Plan::new(job.program);
    let net = Net::<B> {
        params: w
            .params
            .iter()
            .map(|p| Param::from_tensor(tensor1(p.data.clone(), device)))
            .collect(),
        masks: vec![None; w.params.len()],
    };
    let running = match recalibrate {
        Some(split) if split.n > 0 => recalibrated(&net, &plan, split, device),
        _ => buffers_to_device::<B>(&w, device),
    };
    Ok(eval_split(&net, &plan, &running, job.split, device))
}

fn tensor1<B: NnBackend>(data: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

/// Running statistics re-estimated on `split`: every batch norm normalises with its batch's
/// statistics (training mode), and the running mean and (unbiased) variance are the averages
/// of the batches', weighted by batch size.
fn recalibrated<B: NnBackend>(
    net: &Net<B>,
    plan: &Plan,
    split: &Split,
    device: &B::Device,
) -> Vec<Tensor<B, 1>> {
    let [c, h, w] = plan.input();
    let mut sums: Vec<Option<Tensor<B, 1>>> = vec![None; 2 * plan.batch_norms()];
    let (mut images, mut targets) = (Vec::new(), BatchTargets::default());
    for start in (0..split.n).step_by(RECALIBRATION_BATCH) {
        let end = (start + RECALIBRATION_BATCH).min(split.n);
        let weight = (end - start) as f64 / split.n as f64;
        gather_range(split, start..end, &mut images, &mut targets);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(std::mem::take(&mut images), [end - start, c, h, w]),
            device,
        );
        let (_, stats) = net.forward(plan, x, &BnMode::Batch);
        for (k, st) in stats.into_iter().enumerate() {
            let unbias = st.count as f64 / (st.count.max(2) - 1) as f64;
            for (slot, value) in [
                (2 * k, st.mean * weight),
                (2 * k + 1, st.var * (unbias * weight)),
            ] {
                sums[slot] = Some(match sums[slot].take() {
                    Some(s) => s + value,
                    None => value,
                });
            }
        }
    }
    sums.into_iter()
        .map(|s| s.expect("every batch norm reports its statistics"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Inputs, Targets};
    use crate::nn::arch::ResnetSpec;
    use crate::nn::methods::lesion::{delete, swap};
    use crate::nn::net::to_net;
    use crate::nn::{InitScheme, Mask, ModelSpec, init_weights};
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;

    fn tiny() -> (ModelSpec, Weights) {
        let mut s = ResnetSpec::standard(14);
        s.width = 4;
        s.input = [1, 8, 8];
        let spec = ModelSpec::Resnet(s);
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 3);
        // Non-trivial batch norms, so that a wrong binding shows.
        for (i, b) in w.buffers.iter_mut().enumerate() {
            for (j, v) in b.data.iter_mut().enumerate() {
                *v = if i % 2 == 0 {
                    0.1 * ((i + j) % 5) as f32 - 0.2
                } else {
                    0.5 + 0.1 * ((i * j) % 7) as f32
                };
            }
        }
        for p in w.params.iter_mut().filter(|p| !p.is_prunable()) {
            for (j, v) in p.data.iter_mut().enumerate() {
                *v += 0.05 * (j % 3) as f32;
            }
        }
        (spec, w)
    }

    fn images(n: usize) -> Tensor<Flex, 4> {
        let data: Vec<f32> = (0..n * 64)
            .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(data, [n, 1, 8, 8]), &FlexDevice)
    }

    fn logits(program: &Program, w: &Weights) -> Vec<f32> {
        let spec_free = weights_for(program, w).unwrap();
        let net = Net::<Flex> {
            params: spec_free
                .params
                .iter()
                .map(|p| Param::from_tensor(tensor1(p.data.clone(), &FlexDevice)))
                .collect(),
            masks: vec![None; spec_free.params.len()],
        };
        let running = buffers_to_device::<Flex>(&spec_free, &FlexDevice);
        net.forward(&Plan::new(program), images(3), &BnMode::Running(&running))
            .0
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    /// The same ResNet written without `layer1.1` from the start: a model with its own
    /// block list, and the trained weights of every other layer.
    #[test]
    fn deleting_a_block_equals_a_model_built_without_it() {
        let (spec, w) = tiny();
        let program = spec.program().unwrap();
        let lesioned = delete(&program, &["layer1.1"]).unwrap();
        let ModelSpec::Resnet(s) = &spec else {
            unreachable!()
        };
        let mut by_hand = s.clone();
        let mut blocks = s.block_list().unwrap();
        blocks.retain(|b| b.name != "layer1.1");
        by_hand.depth = None;
        by_hand.blocks = Some(blocks);
        let by_hand = ModelSpec::Resnet(by_hand);
        let hand_w = weights_for(&by_hand.program().unwrap(), &w).unwrap();
        let net: Net<Flex> = to_net(&by_hand, &hand_w, &Mask::dense(&by_hand), &FlexDevice)
            .expect("the hand-built model takes the picked weights");
        let running = buffers_to_device::<Flex>(&hand_w, &FlexDevice);
        let want = net
            .forward(
                &Plan::new(&by_hand.program().unwrap()),
                images(3),
                &BnMode::Running(&running),
            )
            .0
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(logits(&lesioned, &w), want);
        assert_ne!(logits(&program, &w), want);
        // Swapping a block with itself twice over is the original model.
        let (twice, _) = swap(
            &swap(&program, "layer1.0", "layer1.1").unwrap().0,
            "layer1.1",
            "layer1.0",
        )
        .unwrap();
        assert_eq!(logits(&twice, &w), logits(&program, &w));
    }

    #[test]
    fn evaluation_and_recalibration_run_on_lesioned_programs() {
        let (spec, w) = tiny();
        let program = spec.program().unwrap();
        let lesioned = delete(&program, &["layer1.0", "layer3.1"]).unwrap();
        let labels: Vec<u8> = (0..20).map(|i| (i % 10) as u8).collect();
        let data: Vec<f32> = (0..20 * 64)
            .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let split = Split::new(Inputs::f32(data, [1, 8, 8]), Targets::classes(labels, 10)).unwrap();
        let jobs = [
            LesionJob {
                program: &program,
                split: &split,
            },
            LesionJob {
                program: &lesioned,
                split: &split,
            },
        ];
        let mut seen = Vec::new();
        let plain = evaluate_lesions(&jobs, &w, None, &DeviceSpec::Cpu, &|| false, &mut |d| {
            seen.push(d)
        })
        .unwrap();
        assert_eq!(seen, [1, 2]);
        assert_eq!(plain.len(), 2);
        let recal = evaluate_lesions(
            &jobs,
            &w,
            Some(&split),
            &DeviceSpec::Cpu,
            &|| false,
            &mut |_| {},
        )
        .unwrap();
        // New statistics change the loss; accuracy is a multiple of 1/20 either way.
        assert_ne!(recal[1].0, plain[1].0);
        assert!(
            recal
                .iter()
                .all(|(l, a)| l.is_finite() && (a * 20.0 - (a * 20.0).round()).abs() < 1e-9)
        );
        assert!(matches!(
            evaluate_lesions(&jobs, &w, None, &DeviceSpec::Cpu, &|| true, &mut |_| {}),
            Err(NnError::Cancelled)
        ));
    }
}
