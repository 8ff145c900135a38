//! Moving [`OptimState`] in and out of burn's optimisers, through their records (burn's own
//! mechanism for saving an optimiser): `to_record` gives each parameter's state by
//! [`burn::module::ParamId`], `load_record` takes it back. Ids are not stable across processes,
//! so the host state is indexed by parameter position and re-keyed with the ids of the model
//! being trained.
//!
//! SGD's velocity is private to burn's `MomentumState`; it is read from the state's serialised
//! record item (MessagePack through `rmp_serde`, burn's own record format), and written back
//! with the public constructor.

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::momentum::MomentumState;
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamState, AdaptiveMomentumState, Optimizer, Sgd, SgdState};
use burn::record::{FullPrecisionSettings, Record};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use serde::Deserialize;

use super::adam::PipeAdam;
use super::net::{Net, tensor1};
use super::ops::NnBackend;
use super::{NnError, OptimState};

type SgdOptim<B> = OptimizerAdaptor<Sgd<<B as AutodiffBackend>::InnerBackend>, Net<B>, B>;
type AdamOptim<B> = OptimizerAdaptor<PipeAdam, Net<B>, B>;

/// The serialised shape of burn's `SgdState` record item.
#[derive(Deserialize)]
struct SgdItem {
    momentum: Option<MomentumItem>,
}

#[derive(Deserialize)]
struct MomentumItem {
    velocity: TensorData,
}

fn host(data: TensorData) -> Vec<f32> {
    data.to_vec::<f32>().expect("f32 optimiser state")
}

/// SGD's velocities, one per parameter of `net`; `None` before the first step or without
/// momentum (plain SGD keeps no state).
pub fn sgd_state<B: AutodiffBackend>(optim: &SgdOptim<B>, net: &Net<B>) -> Option<OptimState> {
    let records = optim.to_record();
    let mut momentum_buffer = Vec::with_capacity(net.params.len());
    for p in &net.params {
        let state: SgdState<B::InnerBackend, 1> = records.get(&p.id)?.clone().into_state();
        let item = state.into_item::<FullPrecisionSettings>();
        let bytes = rmp_serde::to_vec_named(&item).expect("optimiser records serialise");
        let item: SgdItem = rmp_serde::from_slice(&bytes).expect("burn's SgdState record layout");
        momentum_buffer.push(host(item.momentum?.velocity));
    }
    Some(OptimState::Sgd { momentum_buffer })
}

/// Adam's moments and step count; `None` before the first step.
pub fn adam_state<B: AutodiffBackend<InnerBackend: NnBackend>>(
    optim: &AdamOptim<B>,
    net: &Net<B>,
) -> Option<OptimState> {
    let records = optim.to_record();
    let (mut step, mut exp_avg, mut exp_avg_sq) = (0, Vec::new(), Vec::new());
    for p in &net.params {
        let state: AdamState<B::InnerBackend, 1> = records.get(&p.id)?.clone().into_state();
        let m = state.momentum;
        step = m.time as u64;
        exp_avg.push(host(m.moment_1.into_data()));
        exp_avg_sq.push(host(m.moment_2.into_data()));
    }
    Some(OptimState::Adam {
        step,
        exp_avg,
        exp_avg_sq,
    })
}

/// `optim` continuing from `state` for the parameters of `net`.
pub fn load_sgd<B: AutodiffBackend<InnerBackend: NnBackend>>(
    optim: SgdOptim<B>,
    net: &Net<B>,
    state: &OptimState,
    device: &B::Device,
) -> Result<SgdOptim<B>, NnError> {
    let OptimState::Sgd { momentum_buffer } = state else {
        return Err(mismatch(state, "sgd"));
    };
    let records: <SgdOptim<B> as Optimizer<Net<B>, B>>::Record = net
        .params
        .iter()
        .zip(momentum_buffer)
        .map(|(p, v)| {
            let s = SgdState::new(Some(MomentumState::new(tensor1(v.clone(), device))));
            (p.id, AdaptorRecord::from_state::<1>(s))
        })
        .collect();
    Ok(optim.load_record(records))
}

/// `optim` continuing from `state` for the parameters of `net`.
pub fn load_adam<B: AutodiffBackend<InnerBackend: NnBackend>>(
    optim: AdamOptim<B>,
    net: &Net<B>,
    state: &OptimState,
    device: &B::Device,
) -> Result<AdamOptim<B>, NnError> {
    let OptimState::Adam {
        step,
        exp_avg,
        exp_avg_sq,
    } = state
    else {
        return Err(mismatch(state, "adam"));
    };
    let records: <AdamOptim<B> as Optimizer<Net<B>, B>>::Record = net
        .params
        .iter()
        .zip(exp_avg.iter().zip(exp_avg_sq))
        .map(|(p, (m1, m2))| {
            let moments = AdaptiveMomentumState::new(
                *step as usize,
                tensor1(m1.clone(), device),
                tensor1(m2.clone(), device),
            );
            (
                p.id,
                AdaptorRecord::from_state::<1>(AdamState::new(moments)),
            )
        })
        .collect();
    Ok(optim.load_record(records))
}

fn mismatch(state: &OptimState, training: &str) -> NnError {
    NnError::Invalid(format!(
        "the optimiser state is {:?}'s, but this training uses {training}",
        state.optimizer()
    ))
}
