//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use pipe::cache::{StageStatus, Store};
use pipe::exec::{self, PlainSink, RunOptions, RunOutcome, ThreadPolicy};
use pipe::nn::DeviceSpec;
use pipe::spec::{self, Override};
use pipe::stages::{Registry, Runtime};
use serde_json::Value;

#[path = "../../examples/custom_stage/toy.rs"]
pub mod toy;

pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register(toy::Toy);
    r
}

/// The `pipe` binary plus the test-only `toy` kind (examples/custom_stage), built once per
/// test process: always through cargo (a no-op when it is fresh), so that a test run after an
/// edit of the library never uses a stale example binary.
pub fn toy_pipe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipe"));
            let dir = bin.parent().unwrap();
            let mut args = vec!["build", "--example", "custom_stage"];
            if dir.ends_with("release") {
                args.push("--release");
            }
            let status = std::process::Command::new(env!("CARGO"))
                .args(&args)
                .current_dir(root())
                .status()
                .unwrap();
            assert!(status.success());
            dir.join("examples").join("custom_stage")
        })
        .clone()
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn file(rel: &str) -> PathBuf {
    root().join(rel)
}

pub fn overrides(set: &[&str]) -> Vec<Override> {
    set.iter()
        .map(|s| s.parse().expect("valid override"))
        .collect()
}

pub fn plan(cache: &Path, files: &[PathBuf], set: &[&str]) -> exec::Plan {
    let reg = registry();
    let p = spec::load(files, &overrides(set), &reg).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(cache).expect("cache");
    exec::plan(p, &reg, &store).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs in-process, as `pipe run` does, without writing a run record.
pub fn run(cache: &Path, files: &[PathBuf], set: &[&str]) -> RunOutcome {
    run_with(cache, files, set, false)
}

pub fn run_with(cache: &Path, files: &[PathBuf], set: &[&str], keep_going: bool) -> RunOutcome {
    let reg = registry();
    let plan = plan(cache, files, set);
    let store = Store::open(cache).expect("cache");
    let cancel = AtomicBool::new(false);
    let opts = RunOptions {
        jobs: 2,
        keep_going,
        device: DeviceSpec::Cpu.to_string(),
        detach: false,
        // As `pipe run` by default: the cores re-shared as jobs start and end.
        threads: ThreadPolicy::FollowWork { cores: 2 },
        checkpoint_every: None,
    };
    let (sink, runtime) = (PlainSink::new(true), Runtime::new(DeviceSpec::Cpu));
    let env = exec::Engine {
        registry: &reg,
        store: &store,
        opts: &opts,
        sink: &sink,
        cancel: &cancel,
        runtime: &runtime,
    };
    exec::execute(&plan, env)
}

pub fn statuses(o: &RunOutcome) -> Vec<(String, StageStatus)> {
    o.records
        .iter()
        .map(|r| (r.name.clone(), r.status))
        .collect()
}

pub fn status_of(o: &RunOutcome, name: &str) -> StageStatus {
    o.records
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
        .status
}

/// Asserts that every stage ran or hit, showing the stages' errors otherwise.
pub fn assert_ok(o: &RunOutcome) {
    assert!(
        o.ok(),
        "{:?}",
        o.records
            .iter()
            .filter_map(|r| r.error.as_deref())
            .collect::<Vec<_>>()
    );
}

pub fn metric(o: &RunOutcome, name: &str, m: &str) -> f64 {
    o.records
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
        .metrics[m]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric {m} on {name}"))
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// One line per stage: name (and, with `keys`, the key's first 12 characters) and metrics,
/// fractional numbers rounded to 4 decimals for readability (determinism is checked bit for
/// bit by the tests themselves).
pub fn metrics_summary(o: &RunOutcome, keys: bool) -> String {
    o.records
        .iter()
        .map(|r| {
            let mut m = r.metrics.clone();
            if let Some(obj) = m.as_object_mut() {
                for v in obj.values_mut() {
                    if let Some(f) = v.as_f64().filter(|f| f.fract() != 0.0) {
                        *v = serde_json::json!((f * 1e4).round() / 1e4);
                    }
                }
            }
            if keys {
                format!("{} {} {}", r.name, &r.key[..12], m)
            } else {
                format!("{} {}", r.name, m)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the binary `bin` on `cache` from the repository root (ignoring `PIPE_CACHE_DIR`).
pub fn pipe_with(bin: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(root())
        .env_remove("PIPE_CACHE_DIR")
        .output()
        .unwrap()
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cache folder of the entry stage `stage` of `o` published.
pub fn entry_dir(cache: &Path, o: &RunOutcome, stage: &str) -> PathBuf {
    let r = o
        .records
        .iter()
        .find(|r| r.name == stage)
        .unwrap_or_else(|| panic!("no stage `{stage}` in the run"));
    cache.join("entries").join(&r.key[..2]).join(&r.key)
}

/// The checkpoint `stem` (`model`, `ckpt/iter_4`, …) of stage `stage` of `o`.
pub fn checkpoint_of(
    cache: &Path,
    o: &RunOutcome,
    stage: &str,
    stem: &str,
) -> pipe::nn::Checkpoint {
    pipe::nn::load_checkpoint(&entry_dir(cache, o, stage), stem)
        .unwrap_or_else(|e| panic!("{stage}: {e}"))
}

/// A JSON file of stage `stage` of `o`.
pub fn entry_json(cache: &Path, o: &RunOutcome, stage: &str, file: &str) -> Value {
    let path = entry_dir(cache, o, stage).join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
