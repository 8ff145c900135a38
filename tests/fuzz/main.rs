//! A property-based fuzz harness (proptest, stable Rust) for what reads user-controlled bytes:
//! the YAML front end (located parser, includes, overrides, expansion, then planning) and the
//! cache's readers (manifests, `COMPLETE` seals, run records, `names/`).
//!
//! Inputs are generated pipelines (a small grammar over stages, sweeps, level groups, defaults,
//! reports, includes, anchors) and the shipped and malformed pipelines as seeds, both then
//! mutated at the byte and line level; cache files are mutated as bytes or as JSON, sometimes
//! re-sealed so that the checks behind the seal are reached too. The invariants:
//!
//! - no panic, no hang (a watchdog aborts a case that runs longer than [`HANG`]), bounded memory
//!   (a counting allocator refuses to grow past [`MEMORY_LIMIT`], and each case must stay under
//!   [`CASE_MEMORY`]);
//! - every rejection has a location: a diagnostic points at a line and column of a file that
//!   was read (or names the file, or the `-S` override); a cache error names the file or key;
//! - a tampered cache entry is never used: running over a mutated cache gives the clean
//!   results (unless an edited manifest was re-sealed, as a deliberate forger would);
//! - what is well formed is accepted: a clean generated pipeline, unmutated, is planned.
//!
//! `cargo test` runs a short budget (a few seconds) with a fixed seed. `scripts/fuzz-long.sh`
//! runs a long one: `PIPE_FUZZ_CASES` cases per property, from `PIPE_FUZZ_SEED`, with
//! `PIPE_FUZZ_SAVE` (a folder) where each case's input is written before it runs, so that an
//! abort leaves it behind.
//!
//! The files: this one holds the bounds and the bookkeeping of a case; [`mutate`] the byte,
//! line and JSON mutations; [`pipelines`] the pipeline generator; [`front_end`] and [`cache`]
//! the properties.

mod cache;
#[path = "../common/mod.rs"]
mod common;
mod front_end;
mod mutate;
mod pipelines;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

// ---------------------------------------------------------------------------------------------
// Bounded memory: a counting allocator.

/// No allocation may take the process past this; the allocation fails (and the process aborts
/// with "memory allocation failed"), which the script reports with the saved input.
const MEMORY_LIMIT: usize = 2 << 30;
/// What one case may add to the peak.
const CASE_MEMORY: usize = 256 << 20;
/// A case running longer than this is a hang.
const HANG: Duration = Duration::from_secs(20);

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > MEMORY_LIMIT {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Budget, case bookkeeping and the watchdog.

fn cases(default: u32) -> u32 {
    std::env::var("PIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn runner(default_cases: u32) -> TestRunner {
    // Inside `cargo test` the same cases every time; the long script picks (and prints) a seed.
    let seed = std::env::var("PIPE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

/// Cases run one at a time (the allocator's peak is process-wide), each announced to the
/// watchdog with a description of its input.
static CASE: Mutex<()> = Mutex::new(());
static CURRENT: Mutex<Option<(Instant, String)>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t0, what)) = cur.as_ref()
                    && t0.elapsed() > HANG
                {
                    eprintln!("fuzz: a case ran longer than {HANG:?} (a hang):\n{what}");
                    std::process::abort();
                }
            }
        });
    });
}

/// Runs one case under the watchdog and the memory bound; `what` describes the input.
pub(crate) fn case<T>(
    what: impl Fn() -> String,
    body: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    watchdog();
    let _one = CASE.lock().unwrap_or_else(|e| e.into_inner());
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let description = what();
    if let Some(dir) = std::env::var_os("PIPE_FUZZ_SAVE") {
        // Written before the case runs: an abort (out of memory, hang) leaves it behind.
        let _ = std::fs::write(Path::new(&dir).join("current-case.txt"), &description);
    }
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), description));
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = body();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if n > 0 && n.is_multiple_of(5000) {
        eprintln!("fuzz: {n} cases");
    }
    prop_assert!(
        grew < CASE_MEMORY,
        "the case took {} MiB at its peak",
        grew >> 20
    );
    Ok(out)
}

/// How a property's cases ended, printed at its end (`--nocapture` shows it; the long script
/// keeps it): a harness whose inputs are all rejected by the parser tests little past it.
#[derive(Default)]
pub(crate) struct Tally(Mutex<BTreeMap<&'static str, usize>>);

impl Tally {
    pub(crate) fn add(&self, outcome: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    pub(crate) fn report(&self, property: &str, t0: Instant) {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "fuzz: {property}: {} cases in {:.1}s: {t:?}",
            t.values().sum::<usize>(),
            t0.elapsed().as_secs_f64()
        );
    }
}
