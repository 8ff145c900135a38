//! Planning (keys, hit or miss, and why) and running (the scheduler) a pipeline.

pub mod events;
mod plan;
mod scheduler;

pub use events::{BarSink, Event, EventSink, PlainSink};
pub use plan::{Plan, PlanError, PlannedStage, Why, plan};
pub use scheduler::{Engine, RunOptions, RunOutcome, execute, headline};
