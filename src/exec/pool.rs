//! The thread pool a job's CPU arithmetic runs on: its own, with the job on one of its
//! threads.
//!
//! Why not rayon's global pool: a job's thread was not one of that pool's workers, so every
//! parallel operation of the tensor backend (it splits most of them) handed its pieces to a
//! pool thread and slept until they came back, a wake-up on each side per operation; and the
//! jobs of a local run (`-j 2` by default on two cores, one pool thread each) queued for the
//! same workers. Running the job inside a pool of its own makes its operations fork and join
//! among that pool's threads, the job's own among them: LeNet-300-100 training steps (batch
//! 60, two threads) took 0.89–0.94 ms this way against 1.20–1.23 (bench/RESULTS.md).
//! Results do not depend on the number of threads, so nothing a job computes changes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Runs `f` on a new pool of `threads` threads (`None`: rayon's default, `RAYON_NUM_THREADS`
/// or one per core), `f` itself on one of them. If the pool cannot be made (the system
/// refuses threads) `f` runs here, on the global pool as before.
pub fn on_own_pool<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0));
    match builder.build() {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::debug!("no thread pool for the job ({e}); running on the global one");
            f()
        }
    }
}

/// The cores of this machine shared out among the jobs computing at once (`--executor local`
/// without `--threads`): each of `n` running jobs wants `cores / n` threads, the first
/// `cores % n` to start one more. A job that starts or ends changes the others' shares;
/// long stages read theirs between steps ([`CoreShare::join`]'s handle) and move to a pool
/// of the new size, so a lone stage of a chain trains on every core and a stage left running
/// when its siblings end takes their cores over. Results do not depend on the thread count.
#[derive(Debug)]
pub struct CoreShare {
    cores: usize,
    /// The running jobs' wanted thread counts, oldest first.
    running: Mutex<Vec<Arc<AtomicUsize>>>,
}

/// One job's place in a [`CoreShare`]; leaving it (dropping) gives its cores back.
#[derive(Debug)]
pub struct ShareHandle<'a> {
    share: &'a CoreShare,
    wanted: Arc<AtomicUsize>,
}

impl CoreShare {
    pub fn new(cores: usize) -> CoreShare {
        CoreShare {
            cores: cores.max(1),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Enters a job; the others' shares shrink to make room.
    pub fn join(&self) -> ShareHandle<'_> {
        let wanted = Arc::new(AtomicUsize::new(1));
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.push(wanted.clone());
        self.rebalance(&running);
        ShareHandle {
            share: self,
            wanted,
        }
    }

    fn rebalance(&self, running: &[Arc<AtomicUsize>]) {
        let n = running.len().max(1);
        for (i, wanted) in running.iter().enumerate() {
            let extra = usize::from(i < self.cores % n);
            wanted.store((self.cores / n + extra).max(1), Ordering::Relaxed);
        }
    }
}

impl ShareHandle<'_> {
    /// The threads this job should compute on now.
    pub fn threads(&self) -> usize {
        self.wanted.load(Ordering::Relaxed)
    }

    /// A reading of [`ShareHandle::threads`] that outlives the borrow, for the stage.
    pub fn reader(&self) -> Arc<AtomicUsize> {
        self.wanted.clone()
    }
}

impl Drop for ShareHandle<'_> {
    fn drop(&mut self) {
        let mut running = self.share.running.lock().unwrap_or_else(|e| e.into_inner());
        // A handle is known by its counter: the same allocation, never another job's.
        running.retain(|w| !Arc::ptr_eq(w, &self.wanted));
        self.share.rebalance(&running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_runs_inside_a_pool_of_the_threads_asked_for() {
        for threads in [1, 3] {
            let (inside, size) = on_own_pool(Some(threads), || {
                (
                    rayon::current_thread_index().is_some(),
                    rayon::current_num_threads(),
                )
            });
            assert!(inside);
            assert_eq!(size, threads);
        }
    }

    #[test]
    fn cores_follow_the_jobs_that_run() {
        let share = CoreShare::new(4);
        let a = share.join();
        assert_eq!(a.threads(), 4, "a lone job gets every core");
        let b = share.join();
        assert_eq!((a.threads(), b.threads()), (2, 2));
        let c = share.join();
        assert_eq!((a.threads(), b.threads(), c.threads()), (2, 1, 1));
        drop(a);
        assert_eq!(
            (b.threads(), c.threads()),
            (2, 2),
            "a's cores go to those left"
        );
        let (d, e, f) = (share.join(), share.join(), share.join());
        assert_eq!(
            [&b, &c, &d, &e, &f].map(|h| h.threads()),
            [1, 1, 1, 1, 1],
            "more jobs than cores: one thread each"
        );
        drop((b, c, d, e));
        assert_eq!(f.threads(), 4);
    }
}
