//! Process-wide settings for tensor work on the host: how the C allocator treats tensor-sized
//! buffers, and how many threads the CPU backend's arithmetic uses.
//!
//! Allocator. Every training step allocates and frees buffers of about a megabyte (a LeNet-300-100 weight
//! gradient is 784 × 300 × 4 bytes). glibc's malloc serves a buffer that large with its own
//! `mmap` and returns it to the kernel on `free`, so the next step faults every page in again.
//! glibc raises that threshold by itself once a large buffer has been freed, which is why the
//! `pipe` binary, having loaded MNIST first, mostly escapes it, but a process that starts
//! straight into training does not: on the 2-core CI machine a batch-60 Adam step measured
//! 4.1-4.5 ms with the default settings against 1.6-1.7 ms with these (`examples/bench_step`,
//! half the default run's time was system time). Fixing the thresholds at start-up makes the
//! speed independent of what the process happened to allocate first.

/// Largest allocation glibc serves from the heap rather than its own `mmap`. 32 MiB is the
/// most glibc accepts on 64-bit targets; larger buffers (a whole dataset) still get their own
/// mapping and go back to the kernel when freed.
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of the heap kept for reuse before glibc returns it to the kernel.
/// A conv net's training step frees its activations at its end (about 0.5 GiB for ResNet-20
/// at batch 128); with 128 MiB here glibc handed them back and the next step faulted every
/// page in again (10% of a ResNet-20 step was the kernel zeroing pages, bench/RESULTS.md).
/// The memory is reused by the next step, so this raises no peak, only what is kept between.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Keeps tensor-sized buffers on the heap between training steps. Call once at start-up,
/// before other threads exist. A no-op where the C library is not glibc.
pub fn retain_tensor_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two of glibc's tuning parameters; it takes plain integers,
    // and a value glibc rejects is reported by a 0 return, leaving the default in place.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 0 {
            tracing::debug!("glibc rejected M_MMAP_THRESHOLD = {MMAP_THRESHOLD}");
        }
        if libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 0 {
            tracing::debug!("glibc rejected M_TRIM_THRESHOLD = {TRIM_THRESHOLD}");
        }
    }
}

/// Threads for CPU tensor arithmetic when `jobs` stages run at once on `cores` cores: the cores
/// shared out between the stages, at least one each. What `pipe worker` processes get, which
/// cannot see each other; stages of one process share the cores as they run
/// (`exec::CoreShare`).
///
/// burn's CPU backend splits a matrix product over rayon's global pool once it exceeds
/// 192³ multiply-adds, which every LeNet-300-100 layer at batch 60 does. Two trainings
/// that each split their products over both cores of a 2-core machine wait on each other's
/// threads: the headline pipeline at `-j 2` took 422.5 s with two threads against 343.5 s
/// with one (bench/RESULTS.md). With one stage at a time (`-j 1`) the products get every core.
pub fn cpu_threads(jobs: usize, cores: usize) -> usize {
    (cores / jobs.max(1)).max(1)
}

/// Sizes rayon's global pool to `threads`: what runs outside a job (a pipeline's jobs
/// compute in pools of their own of the same size, `exec::on_own_pool`).
/// Rayon allows this once per process, before the pool is first used; a later call (a test
/// harness running several commands in one process) leaves the pool as it is.
pub fn set_cpu_threads(threads: usize) {
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
    {
        tracing::debug!("rayon's pool was already sized: {e}");
    }
}

/// Runs a training loop's steps on as many threads as its stage's share of the cores says
/// now ([`TrainHooks::cpu_threads`](super::train::TrainHooks::cpu_threads)). The loop starts
/// on its job's pool; when the share differs from that pool's size, each step runs on a
/// pool of the wanted size, made once and kept while the share stays. A step moved there
/// costs one hand-over to that pool's threads (microseconds against steps of a millisecond
/// and more); its arithmetic forks and joins among them. Results do not depend on the
/// thread count, so where a step runs changes nothing it computes.
#[derive(Default)]
pub struct PoolFollower {
    pool: Option<rayon::ThreadPool>,
}

impl PoolFollower {
    /// Runs `f` on `wanted` threads (`None`: where it is, on the pool it started on).
    pub fn run<R: Send>(&mut self, wanted: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
        let Some(n) = wanted.filter(|&n| n >= 1 && n != rayon::current_num_threads()) else {
            return f();
        };
        if self.pool.as_ref().map(|p| p.current_num_threads()) != Some(n) {
            self.pool = match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!("no pool of {n} threads ({e}); the step stays where it is");
                    None
                }
            };
        }
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_out_between_running_stages() {
        assert_eq!(cpu_threads(1, 2), 2);
        assert_eq!(cpu_threads(2, 2), 1);
        assert_eq!(cpu_threads(4, 2), 1);
        assert_eq!(cpu_threads(4, 16), 4);
        assert_eq!(cpu_threads(3, 16), 5);
        assert_eq!(cpu_threads(0, 8), 8);
    }

    #[test]
    fn a_follower_runs_each_call_on_the_threads_wanted() {
        let outer = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        outer.install(|| {
            let mut follow = PoolFollower::default();
            let sizes: Vec<usize> = [None, Some(3), Some(3), Some(1), Some(2)]
                .into_iter()
                .map(|w| follow.run(w, rayon::current_num_threads))
                .collect();
            assert_eq!(sizes, vec![2, 3, 3, 1, 2]);
        });
    }
}
