//! The executor seam: the scheduler decides what runs and when; an [`Executor`] runs one job
//! at a time from its [`JobSpec`] and reports how it ended. `local` (threads of this
//! process), `subprocess` and `ssh` (`pipe worker` child processes, here or through `ssh`)
//! and `slurm` (`sbatch`) implement it; the scheduler's code is the same for all of them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::Scope;
use std::time::Duration;

use super::job::{Finished, JobSpec, Worker};

/// An executor's name for a job it accepted: a Slurm job id, a process id, a thread number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ticket(pub String);

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job accepted by an executor.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub ticket: Ticket,
    /// The executor found the same job already in flight (submitted by an earlier, detached
    /// run) and follows it instead of starting it again.
    pub adopted: bool,
}

/// What [`Executor::wait`] reports.
#[derive(Debug)]
pub enum Report {
    /// The job began computing (remote executors; local jobs report `Start` themselves).
    Started(Ticket),
    Ended(Ticket, Finished),
}

pub trait Executor: Sync {
    fn name(&self) -> &'static str;

    /// Jobs in flight at once, at most.
    fn slots(&self) -> usize;

    /// Whether a job may be handed over while jobs it consumes are still in flight: the
    /// executor then starts it only after they succeed (Slurm's `afterok`), and the whole
    /// plan can be queued at once.
    fn orders_dependencies(&self) -> bool;

    /// Whether jobs run outside this process: their tickets are worth recording, their starts
    /// come through [`Executor::wait`], and they can outlive this process (`--detach`).
    fn remote(&self) -> bool;

    /// Starts one job. `after` holds the tickets of unfinished jobs it consumes (empty unless
    /// [`Executor::orders_dependencies`]).
    fn submit(&self, job: &JobSpec, after: &[Ticket]) -> Result<Submitted, String>;

    /// Blocks until a job starts or ends, or `timeout` passes (`None`).
    fn wait(&self, timeout: Duration) -> Option<Report>;

    /// Asks jobs to stop; each still ends through [`Executor::wait`] (as `Cancelled`, or as
    /// whatever it managed first).
    fn cancel(&self, tickets: &[Ticket]);
}

/// Runs jobs on threads of this process. Stages watch the run's cancel flag, so Ctrl-C stops
/// them; single jobs cannot be cancelled (none is ever in flight before its inputs finish).
pub struct LocalExecutor<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    worker: &'env Worker<'env>,
    slots: usize,
    next: AtomicU64,
    tx: Sender<(Ticket, Finished)>,
    rx: Mutex<Receiver<(Ticket, Finished)>>,
}

impl<'scope, 'env> LocalExecutor<'scope, 'env> {
    /// `slots` threads at most, spawned in `scope` (which outlives every job).
    pub fn new(
        scope: &'scope Scope<'scope, 'env>,
        worker: &'env Worker<'env>,
        slots: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        LocalExecutor {
            scope,
            worker,
            slots: slots.max(1),
            next: AtomicU64::new(0),
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Executor for LocalExecutor<'_, '_> {
    fn name(&self) -> &'static str {
        "local"
    }
    fn slots(&self) -> usize {
        self.slots
    }
    fn orders_dependencies(&self) -> bool {
        false
    }
    fn remote(&self) -> bool {
        false
    }

    fn submit(&self, job: &JobSpec, _after: &[Ticket]) -> Result<Submitted, String> {
        let ticket = Ticket(format!(
            "thread-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let (job, tx, worker, t) = (job.clone(), self.tx.clone(), self.worker, ticket.clone());
        self.scope.spawn(move || {
            let end = worker.run(&job);
            let _ = tx.send((t, end));
        });
        Ok(Submitted {
            ticket,
            adopted: false,
        })
    }

    fn wait(&self, timeout: Duration) -> Option<Report> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        match rx.recv_timeout(timeout) {
            Ok((t, end)) => Some(Report::Ended(t, end)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    fn cancel(&self, _tickets: &[Ticket]) {}
}
