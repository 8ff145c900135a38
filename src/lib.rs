//! `pipe`: a declarative pipeline engine for neural-network pruning and training-dynamics
//! research.
//!
//! Data flows one way: YAML ([`spec`]) → stage instances with stable names → DAG
//! ([`graph`]) → provenance keys and a plan ([`exec::plan`]) → the scheduler runs what is
//! missing ([`exec::execute`]) → entries are published atomically into the cache ([`cache`]) →
//! a run record and reports ([`report`]). Everything that touches burn lives in [`nn`]; the
//! science is in [`stages`], one file per stage kind.

pub mod cache;
pub mod cli;
pub mod clock;
pub mod data;
pub mod exec;
pub mod graph;
pub mod nn;
pub mod panic_text;
pub mod report;
pub mod rng;
pub mod serde_fields;
pub mod spec;
pub mod stages;
pub mod stats;
