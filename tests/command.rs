//! `command` stages: a user's program under pipe's cache, keys, reports and built-in stages
//! (issue 23). The programs are the Python scripts in tests/command/, which need only numpy
//! and safetensors (`python3 -m pip install -r python/requirements.txt`, which the README's
//! test command and `.ci/run` do), and python/pipe_torch.py, the module users import.
//!
//! Each test copies the scripts into a project folder of its own and runs the `pipe` binary
//! there, as a user runs it from their repository: `run` and `deps` are relative to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const SCRIPTS: &[&str] = &[
    "mlp_sgd.py",
    "metrics.py",
    "fail.py",
    "sleep.py",
    "bad_output.py",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A project folder with the test scripts and pipe_torch.py in `scripts/`; fails loudly when
/// python3 with numpy and safetensors is missing, saying how to get it.
fn project() -> tempfile::TempDir {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "tests/command.rs needs python3 with numpy and safetensors: run \
         `python3 -m pip install -r python/requirements.txt` (the README's test command does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    for s in SCRIPTS {
        std::fs::copy(repo().join("tests/command").join(s), scripts.join(s)).unwrap();
    }
    std::fs::copy(
        repo().join("python/pipe_torch.py"),
        scripts.join("pipe_torch.py"),
    )
    .unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        text.replace("@MNIST@", &repo().join("data/mnist").to_string_lossy()),
    )
    .unwrap();
    p
}

fn pipe(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(args)
        .current_dir(dir)
        .env_remove("PIPE_THREADS")
        .env_remove("PIPE_CACHE_DIR")
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = pipe(dir, args);
    assert!(o.status.success(), "pipe {args:?} failed:\n{}", text(&o));
    text(&o)
}

fn show(dir: &Path, stage: &str) -> Value {
    serde_json::from_str(&ok(dir, &["show", stage, "--json"])).unwrap()
}

fn metric(dir: &Path, stage: &str, name: &str) -> f64 {
    show(dir, stage)["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{stage} has no metric {name}"))
}

/// The entries in the cache (complete or not).
fn entries(dir: &Path) -> usize {
    let root = dir.join("cache/entries");
    let Ok(rd) = std::fs::read_dir(&root) else {
        return 0;
    };
    rd.flatten()
        .map(|d| std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0))
        .sum()
}

/// How many stages `pipe plan` finds in the cache.
fn hits(plan: &str) -> usize {
    plan.lines().filter(|l| l.starts_with("hit ")).count()
}

const METRICS_PIPELINE: &str = r#"
pipeline: command_metrics
stages:
  a:
    kind: command
    run: [python3, scripts/metrics.py]
    deps: [scripts/metrics.py, scripts/pipe_torch.py]
    params: {x: 1}
  b:
    kind: command
    run: [python3, scripts/metrics.py]
    deps: [scripts/metrics.py, scripts/pipe_torch.py]
    params: {x: 5}
    seed: 7
  c:
    kind: command
    shell: "python3 scripts/metrics.py"
    deps: [scripts]
    inputs: {up: a}
    params: {x: 10}
report:
  select: ["*"]
  rows: stage
  values: [score, nested.seed]
claims:
  b_beats_a:
    text: "b scores higher than a"
    left: {stages: "b", metric: score, agg: mean}
    op: ">"
    right: {stages: "a", metric: score, agg: mean}
"#;

#[test]
fn metrics_flow_into_report_claims_and_diff() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", METRICS_PIPELINE);
    let out = ok(d, &["run", "p.yaml"]);
    // Nested numbers are flattened with dots; an input's metrics reach the script.
    assert_eq!(metric(d, "a", "score"), 2.0);
    assert_eq!(metric(d, "b", "score"), 10.0);
    assert_eq!(metric(d, "b", "nested.seed"), 7.0);
    assert_eq!(metric(d, "c", "score"), 22.0, "2 * 10 + a's score 2");
    assert!(out.contains("b_beats_a"), "{out}");
    let claims = ok(d, &["claims", "last"]);
    assert!(claims.contains("b_beats_a: held  10 > 2"), "{claims}");
    let report = ok(d, &["show", "last"]);
    assert!(report.contains("nested.seed"), "{report}");
    // What the script wrote, its log and what it was given are in the entry.
    let entry = PathBuf::from(ok(d, &["show", "b", "--path"]).trim());
    assert!(entry.is_absolute(), "{}", entry.display());
    assert_eq!(
        std::fs::read_to_string(entry.join("note.txt")).unwrap(),
        r#"{"x": 5, "stage": "b"}"#
    );
    let log = std::fs::read_to_string(entry.join("command/log.txt")).unwrap();
    assert!(
        log.starts_with("metrics.py ran with x=5 seed=7 threads="),
        "{log}"
    );
    let params: Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("command/params.json")).unwrap())
            .unwrap();
    assert_eq!(params, serde_json::json!({"x": 5}));

    // A second run with b's parameter changed: diff shows the parameter and the metric.
    ok(d, &["run", "p.yaml", "-S", "stages.b.params.x=6"]);
    assert_eq!(metric(d, "b", "score"), 12.0);
    let diff = ok(d, &["diff", "-2", "last"]);
    assert!(diff.contains("score"), "{diff}");
    assert!(diff.contains("10") && diff.contains("12"), "{diff}");
}

#[test]
fn a_changed_dep_reruns_its_stage_and_what_depends_on_it_only() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", METRICS_PIPELINE);
    ok(d, &["run", "p.yaml"]);
    let plan = ok(d, &["plan", "p.yaml"]);
    assert_eq!(hits(&plan), 3, "{plan}");
    // c's deps name the whole folder: a new file in it changes c's key and nothing else...
    write(d, "scripts/helper.py", "X = 1\n");
    let plan = ok(d, &["plan", "p.yaml"]);
    assert_eq!(hits(&plan), 2, "{plan}");
    assert!(plan.contains("dep scripts/helper.py changed"), "{plan}");
    // ... while an edit of metrics.py re-keys a, b, and c (through its deps and its input a).
    let script = d.join("scripts/metrics.py");
    let mut s = std::fs::read_to_string(&script).unwrap();
    s.push_str("# an edit\n");
    std::fs::write(&script, s).unwrap();
    let plan = ok(d, &["plan", "p.yaml"]);
    assert_eq!(hits(&plan), 0, "{plan}");
    let explain = ok(d, &["explain", "p.yaml", "a"]);
    assert!(explain.contains("scripts/metrics.py"), "{explain}");
    // The byte-code Python writes beside an imported module never enters a key.
    ok(d, &["run", "p.yaml"]);
    std::fs::create_dir_all(d.join("scripts/__pycache__")).unwrap();
    write(d, "scripts/__pycache__/pipe_torch.cpython-311.pyc", "bytes");
    let plan = ok(d, &["plan", "p.yaml"]);
    assert_eq!(hits(&plan), 3, "{plan}");
}

#[test]
fn a_missing_dep_is_a_located_plan_time_error() {
    let p = project();
    let d = p.path();
    write(
        d,
        "p.yaml",
        "pipeline: x\nstages:\n  a:\n    kind: command\n    run: [python3, scripts/metrics.py]\n    deps: [scripts/metrics.py, scripts/nowhere.py]\n    params: {x: 1}\n",
    );
    let o = pipe(d, &["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("p.yaml:6"), "{t}");
    assert!(t.contains("dep scripts/nowhere.py does not exist"), "{t}");
    assert_eq!(entries(d), 0, "nothing ran");
}

#[test]
fn a_failing_program_publishes_nothing_and_shows_its_log() {
    let p = project();
    let d = p.path();
    write(
        d,
        "p.yaml",
        "pipeline: x\nstages:\n  bad:\n    kind: command\n    run: [python3, scripts/fail.py]\n",
    );
    let o = pipe(d, &["run", "p.yaml"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("`python3` exited with status 3"), "{t}");
    assert!(t.contains("CUDA out of memory (simulated)"), "{t}");
    assert_eq!(entries(d), 0, "nothing of a failed run is published");
    // The whole log is kept aside, where the message says.
    let kept = t
        .lines()
        .find_map(|l| l.split("is kept in ").nth(1))
        .unwrap_or_else(|| panic!("{t}"));
    let log = std::fs::read_to_string(Path::new(kept.trim()).join("command/log.txt")).unwrap();
    for line in [
        "loading the data",
        "step 1 of 3",
        "CUDA out of memory (simulated)",
    ] {
        assert!(log.contains(line), "{log}");
    }
    // A program that cannot start says so.
    write(
        d,
        "q.yaml",
        "pipeline: y\nstages:\n  gone:\n    kind: command\n    run: [no-such-program-here]\n",
    );
    let t = text(&pipe(d, &["run", "q.yaml"]));
    assert!(t.contains("cannot start `no-such-program-here`"), "{t}");
}

/// The pids sleep.py wrote (itself, its child), once it has.
fn sleeper_pids(file: &Path) -> Vec<u32> {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file) {
            return t.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sleep.py never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process of `pids` is gone (within a few seconds: an orphan is reaped by init).
fn all_gone(pids: &[u32]) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let alive = pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        });
        if !alive {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

const SLEEP_PIPELINE: &str =
    "pipeline: x\nstages:\n  slow:\n    kind: command\n    run: [python3, scripts/sleep.py]\n";

#[test]
fn a_program_past_its_timeout_is_stopped_with_its_children() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", &format!("{SLEEP_PIPELINE}    timeout: 1s\n"));
    let pids_file = d.join("pids");
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", "p.yaml"])
        .current_dir(d)
        .env("SLEEP_PIDS", &pids_file)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("ran past its timeout of 1s and was stopped"),
        "{t}"
    );
    assert!(t.contains("sleeping"), "{t}");
    // The grandchild holding the output open was stopped too, or pipe would wait for it.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        all_gone(&sleeper_pids(&pids_file)),
        "a process of the program outlived it"
    );
    assert_eq!(entries(d), 0);
}

#[test]
fn ctrl_c_stops_the_program_and_publishes_nothing() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", SLEEP_PIPELINE);
    let pids_file = d.join("pids");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", "p.yaml"])
        .current_dir(d)
        .env("SLEEP_PIDS", &pids_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pids = sleeper_pids(&pids_file);
    let t0 = Instant::now();
    // SAFETY: kill(2) on the child we started; no memory is touched.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "pipe did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", text(&o));
    assert!(all_gone(&pids), "a process of the program outlived the run");
    assert_eq!(entries(d), 0, "nothing of a stopped run is published");
}

#[test]
fn malformed_outputs_fail_naming_the_file() {
    let p = project();
    let d = p.path();
    let cases = [
        (
            "string_metric",
            "none",
            "metrics.json (written by the program in PIPE_OUT) is malformed: `accuracy` is a string (\"0.9\")",
        ),
        (
            "not_json",
            "none",
            "metrics.json (written by the program in PIPE_OUT) is malformed: not JSON",
        ),
        (
            "nothing",
            "model",
            "the stage declares `produces: model`, but the program did not write model.safetensors and model.json in PIPE_OUT",
        ),
    ];
    for (what, produces, expected) in cases {
        write(
            d,
            "p.yaml",
            &format!(
                "pipeline: x\nstages:\n  s:\n    kind: command\n    run: [python3, scripts/bad_output.py]\n    params: {{what: {what}}}\n    produces: {produces}\n"
            ),
        );
        let o = pipe(d, &["run", "p.yaml"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {t}");
        assert!(t.contains(expected), "{what}: {t}");
        assert_eq!(entries(d), 0, "{what}");
    }
}

const MODEL_PIPELINE: &str = r#"
pipeline: command_model
defaults:
  evaluate:
    data: &data {dataset: mnist, dir: "@MNIST@", val_size: 0, train_subset: 2000, test_subset: 1000}
stages:
  splits: {kind: data_splits, data: *data}
  init:
    kind: init
    model: {arch: mlp, widths: [784, 32, 10]}
    seed: 3
  trained:
    kind: command
    run: [python3, scripts/mlp_sgd.py]
    deps: [scripts/mlp_sgd.py, scripts/pipe_torch.py]
    inputs: {model: init, data: splits}
    params: {lr: 0.1, iterations: 150, batch: 32}
    produces: model
  eval_trained: {kind: evaluate, inputs: {model: trained}}
  pruned:
    kind: prune
    inputs: {model: trained}
    method: magnitude
    scope: layerwise
    fraction: 0.5
  retrained:
    kind: command
    run: [python3, scripts/mlp_sgd.py]
    deps: [scripts/mlp_sgd.py, scripts/pipe_torch.py]
    inputs: {model: pruned, data: splits}
    params: {lr: 0.05, iterations: 60, batch: 32}
    produces: model
  eval_retrained: {kind: evaluate, inputs: {model: retrained}}
"#;

#[test]
fn a_model_trained_by_a_program_is_pruned_and_evaluated_by_pipe() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", MODEL_PIPELINE);
    ok(d, &["run", "p.yaml"]);
    let n = show(d, "splits")["metrics"].clone();
    assert_eq!(
        (n["train_n"].as_u64(), n["test_n"].as_u64()),
        (Some(2000), Some(1000))
    );
    // The script's own test accuracy and pipe's, on the same 1,000 samples, agree within 0.1
    // point: the same bytes, normalised the same way, through the same network.
    for (script, pipes) in [("trained", "eval_trained"), ("retrained", "eval_retrained")] {
        let own = metric(d, script, "accuracy");
        let theirs = metric(d, pipes, "accuracy");
        assert!(own > 0.5, "{script} learned something: {own}");
        assert!(
            (own - theirs).abs() * 100.0 <= 0.1,
            "{script}: the script says {own}, pipe's evaluate says {theirs}"
        );
    }
    // The retraining kept the pruned weights at zero: pipe reads the mask it was handed back.
    assert_eq!(metric(d, "eval_retrained", "remaining_pct"), 50.0);
    assert_eq!(metric(d, "eval_trained", "remaining_pct"), 100.0);
    // pipe rewrote the script's model in its own form: the side-car lists every layer.
    let entry = PathBuf::from(ok(d, &["show", "retrained", "--path"]).trim());
    let side: Value =
        serde_json::from_str(&std::fs::read_to_string(entry.join("model.json")).unwrap()).unwrap();
    assert_eq!(side["step"], 210);
    assert_eq!(side["layers"].as_array().map(Vec::len), Some(2));
    assert!(entry.join("model.mask.safetensors").is_file());
    assert!(entry.join("curve.json").is_file());
}

#[test]
fn command_stages_run_under_the_subprocess_executor_as_locally() {
    let p = project();
    let d = p.path();
    write(d, "p.yaml", METRICS_PIPELINE);
    ok(d, &["run", "p.yaml", "--executor", "subprocess"]);
    let remote: Vec<(String, f64)> = ["a", "b", "c"]
        .iter()
        .map(|s| {
            (
                show(d, s)["key"].as_str().unwrap().to_string(),
                metric(d, s, "score"),
            )
        })
        .collect();
    std::fs::remove_dir_all(d.join("cache")).unwrap();
    ok(d, &["run", "p.yaml"]);
    let local: Vec<(String, f64)> = ["a", "b", "c"]
        .iter()
        .map(|s| {
            (
                show(d, s)["key"].as_str().unwrap().to_string(),
                metric(d, s, "score"),
            )
        })
        .collect();
    assert_eq!(remote, local);
}
