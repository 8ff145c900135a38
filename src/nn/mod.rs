//! Neural-network side of the pipeline: architectures, host-side weights and
//! masks, initialisation, pruning, checkpoints, and burn-based training (the substrate every
//! stage kind shares); the papers' own methods (RePr, NetAug, lesions and path gradients, the
//! teacher–student analysis, stochastic depth) are in [`methods`], one folder or file each.
//!
//! Weights and masks flow between pipeline stages as plain host data
//! ([`Weights`], [`Mask`]); burn tensors exist only inside [`train`] and
//! [`evaluate`], on whichever backend [`DeviceSpec`] selects.

pub mod adam;
pub mod arch;
pub mod checkpoint;
pub mod device;
pub mod filter_prune;
pub mod flops;
pub mod host;
pub mod init;
pub mod methods;
pub mod net;
pub mod objective;
pub mod ops;
pub mod optim_records;
pub mod optim_state;
pub mod program;
pub mod prune;
pub mod schedule;
pub mod step_timing;
pub mod train;
pub mod train_state;
pub mod weights;

use std::path::PathBuf;

pub use arch::ModelSpec;
pub use checkpoint::{Checkpoint, load_checkpoint, load_foreign, save_checkpoint};
pub use device::{BackendTask, DeviceSpec, dispatch};
pub use flops::forward_flops;
pub use init::{InitDraw, InitScheme, draw_weights, init_weights};
pub use net::{Net, Plan, from_net, to_net};
pub use optim_state::{OptimState, load_optim_state, save_optim_state};
pub use prune::{PruneMethod, PruneScope, prune};
pub use schedule::{LrSchedule, lr_at};
pub use train::{
    Directive, EvalPoint, OptimizerKind, Progress, TrainConfig, TrainData, TrainHooks, TrainOutput,
    TrainState, evaluate, train, train_from,
};
pub use train_state::{load_netaug_state, load_train_state, save_netaug_state, save_train_state};
pub use weights::{Mask, Named, Param, Weights};

use crate::data::DataError;

/// Errors of the `nn` module.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Data(#[from] DataError),

    #[error("shape mismatch: {0}")]
    Shape(String),

    #[error(
        "cannot {action} checkpoint file {path}: {source}; check the path, its permissions and free disk space"
    )]
    CheckpointIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "checkpoint file {path} is invalid: {problem}; delete it and re-run the stage that wrote it"
    )]
    CheckpointFormat { path: PathBuf, problem: String },

    #[error("unknown device `{0}`; valid forms are `cpu`, `cuda` (= `cuda:0`) and `cuda:N`")]
    UnknownDevice(String),

    #[error(
        "pipe was built without CUDA support; rebuild with `cargo build --release --features cuda`"
    )]
    CudaNotCompiled,

    #[error("device {device} is not available: {reason}; use `cpu` or check the GPU driver")]
    DeviceUnavailable { device: String, reason: String },

    #[error("invalid setting: {0}")]
    Invalid(String),

    #[error("training diverged: {0}; lower the learning rate")]
    Diverged(String),

    #[error("cancelled")]
    Cancelled,
}
