//! Planning (keys, hit or miss, and why) and running (the scheduler, and the executors that
//! run its jobs: in this process, as `pipe worker` child processes, over ssh, or on Slurm).

pub mod events;
mod executor;
mod job;
mod plan;
mod pool;
pub mod remote;
mod scheduler;
pub mod slurm;
pub mod ssh;
pub mod subprocess;

pub use events::{BarSink, Event, EventSink, PlainSink};
pub use executor::{Executor, LocalExecutor, Report, Submitted, Ticket};
pub use job::{Finished, JOB_FORMAT, JobFileError, JobInput, JobRole, JobSpec, JobThreads, Worker};
pub use plan::{Plan, PlanError, PlannedStage, Why, plan};
pub use pool::{CoreShare, ShareHandle, on_own_pool};
pub use scheduler::{
    Engine, RunOptions, RunOutcome, Scheduling, ThreadPolicy, execute, headline, schedule,
};
