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
}
