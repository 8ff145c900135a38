//! The papers' methods, built on the substrate of [`crate::nn`] (programs, nets, training,
//! checkpoints) and used by their stage kinds in [`crate::stages`]. One module per method:
//! what a method needs and nobody else does lives beside it (RePr's QR, the lesion evaluator).

pub mod lesion;
pub mod luck;
pub mod netaug;
pub mod repr;
pub mod stochastic_depth;
