//! The binary as a user runs it: exit codes, SIGKILL in the middle of a stage, two concurrent
//! runs sharing a stage, and the `runs` / `diff` / `show` / `explain` / `gc` commands.
//!
//! These use examples/custom_stage (the `pipe` binary plus the test-only `toy` kind); the
//! shipped binary registers only real stage kinds.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn pipe(cache: &Path, args: &[&str]) -> Output {
    pipe_with(&toy_pipe(), cache, args)
}

#[test]
fn exit_codes_distinguish_bad_input_from_failed_stages() {
    let cache = tempfile::tempdir().unwrap();
    let bad = pipe(cache.path(), &["run", "tests/malformed/unknown_kind.yaml"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("tests/malformed/unknown_kind.yaml:3:17"));
    // Nothing ran, so no run record either.
    assert_eq!(
        std::fs::read_dir(cache.path().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    let failed = pipe(
        cache.path(),
        &[
            "run",
            "tests/pipelines/toy_chain.yaml",
            "-S",
            "stages.c.fail=true",
        ],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("FAILED  c: failed on purpose"));
    let ok = pipe(cache.path(), &["run", "tests/pipelines/toy_chain.yaml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let usage = pipe(cache.path(), &["run"]);
    assert_eq!(usage.status.code(), Some(2));
    let device = pipe(
        cache.path(),
        &["run", "tests/pipelines/toy_chain.yaml", "--device", "tpu"],
    );
    assert_eq!(device.status.code(), Some(2));
    assert!(
        stderr(&device).contains("unknown device `tpu`"),
        "{}",
        stderr(&device)
    );
}

/// Starts `pipe run` on toy_chain with `-j 1` and stage `b` sleeping for 20 s, and returns
/// once `b` is being written (its temporary folder exists), so the caller can interrupt it.
#[cfg(unix)]
fn start_with_b_writing(cache: &Path) -> std::process::Child {
    let child = Command::new(toy_pipe())
        .arg("--cache-dir")
        .arg(cache)
        .args([
            "run",
            "tests/pipelines/toy_chain.yaml",
            "-j",
            "1",
            "-S",
            "stages.b.sleep_ms=20000",
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // b's own unfinished folder (`tmp/<key>.…`), not a's, which is there first for a moment
    // (`sleep_ms` stays out of the key, so the plan without the override has b's key).
    let b_key = plan(cache, &[file("tests/pipelines/toy_chain.yaml")], &[])
        .stages
        .iter()
        .find(|s| s.instance.name == "b")
        .map(|s| s.key.clone())
        .unwrap();
    let tmp = cache.join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&tmp).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&b_key))
    }) {
        assert!(Instant::now() < deadline, "stage b never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[cfg(unix)]
#[test]
fn sigkill_in_the_middle_of_a_stage_leaves_nothing_finished_and_the_next_run_completes() {
    let cache = tempfile::tempdir().unwrap();
    let mut child = start_with_b_writing(cache.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let p = plan(cache.path(), &[file("tests/pipelines/toy_chain.yaml")], &[]);
    let cached: Vec<(&str, bool)> = p
        .stages
        .iter()
        .map(|s| (s.instance.name.as_str(), s.cached()))
        .collect();
    assert!(cached[0] == ("a", true));
    assert!(cached[1] == ("b", false) && cached[2] == ("c", false));
    let again = pipe(cache.path(), &["run", "tests/pipelines/toy_chain.yaml"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stderr(&again).contains("hit     a"));
    assert!(stderr(&again).contains("run     b"));
    // The killed writer's folder is garbage now, and gc says so.
    let gc = pipe(cache.path(), &["gc", "--dry-run"]);
    assert!(stdout(&gc).contains("partial"), "{}", stdout(&gc));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_keeps_finished_stages_and_the_next_run_resumes() {
    let cache = tempfile::tempdir().unwrap();
    let child = start_with_b_writing(cache.path());
    let tmp = cache.path().join("tmp");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // b's unfinished folder was removed; a, finished before, is kept; the run is recorded.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let ids = run_ids(cache.path());
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cache.path().join("runs").join(format!("{}.json", ids[0])))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["outcome"], "interrupted");
    let status: Vec<&str> = rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(status[0], "ran");
    assert_eq!(status[1], "not_run");
    let again = pipe(cache.path(), &["run", "tests/pipelines/toy_chain.yaml"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(stderr(&again).contains("hit     a"));
}

#[test]
fn concurrent_runs_sharing_a_stage_compute_it_once() {
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("log");
    let set_log = format!("defaults.toy.log={}", log.display());
    let spawn = || {
        Command::new(toy_pipe())
            .arg("--cache-dir")
            .arg(cache.path())
            .args([
                "run",
                "tests/pipelines/toy_chain.yaml",
                "-S",
                &set_log,
                "-S",
                "defaults.toy.sleep_ms=300",
            ])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    let second = spawn();
    let o1 = first.wait_with_output().unwrap();
    let o2 = second.wait_with_output().unwrap();
    assert!(o1.status.success() && o2.status.success());
    let mut computed = lines(&log);
    computed.sort();
    assert_eq!(
        computed,
        vec!["a", "b", "c", "d"],
        "each stage computed exactly once"
    );
    let both = format!("{}{}", stderr(&o1), stderr(&o2));
    assert_eq!(both.matches("run     a").count(), 1);
    assert_eq!(both.matches("hit     a").count(), 1);
}

fn run_ids(cache: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(cache.join("runs"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ids.sort();
    ids
}

/// Runs toy_chain, then again with one override, a second apart (run ids have 1 s resolution).
fn two_runs(cache: &Path, second: &str) {
    assert!(
        pipe(cache, &["run", "tests/pipelines/toy_chain.yaml"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        pipe(
            cache,
            &["run", "tests/pipelines/toy_chain.yaml", "-S", second]
        )
        .status
        .success()
    );
}

#[test]
fn runs_diff_show_and_explain() {
    let cache = tempfile::tempdir().unwrap();
    two_runs(cache.path(), "stages.b.value=5");
    let ids = run_ids(cache.path());
    assert_eq!(ids.len(), 2);
    let records = pipe::cache::runs::list(cache.path()).unwrap();
    let (time_a, time_b) = (&records[0].started_at, &records[1].started_at);
    let redact = |s: String| {
        s.replace(&ids[0], "RUN_A")
            .replace(&ids[1], "RUN_B")
            .replace(time_a.as_str(), "TIME_A")
            .replace(time_b.as_str(), "TIME_B")
    };
    let d = pipe(cache.path(), &["diff", &ids[0], &ids[1]]);
    insta::assert_snapshot!("diff_text", redact(stdout(&d)));
    assert_eq!(stderr(&d), "", "older first: no warning");
    // Newer first: the same Change column (B − A), and a warning that says which is newer.
    let reversed = pipe(cache.path(), &["diff", "last", "-2"]);
    assert!(
        stdout(&reversed).contains("b     params.value   5"),
        "{}",
        stdout(&reversed)
    );
    assert_eq!(
        redact(stderr(&reversed)).trim_end(),
        "warning: A (RUN_B, TIME_B) is newer than B (RUN_A, TIME_A): Change is B − A, the older minus the newer; `pipe diff RUN_A RUN_B` puts the older first"
    );
    assert_eq!(
        redact(stdout(&pipe(cache.path(), &["diff", "-2", "last"]))),
        redact(stdout(&d)),
        "`-2 last` is the two runs, older first"
    );
    let md = pipe(cache.path(), &["diff", &ids[0], "last", "--md"]);
    insta::assert_snapshot!("diff_md", redact(stdout(&md)));
    let json = pipe(cache.path(), &["diff", &ids[0], &ids[1], "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["path"], "b");
    assert_eq!(rows[0]["name"], "params.value");
    assert_eq!(rows[0]["change"], 3.0);
    let runs = pipe(cache.path(), &["runs"]);
    assert_eq!(stdout(&runs).lines().count(), 4);
    let show = pipe(cache.path(), &["show", "c"]);
    assert!(stdout(&show).contains("total   9"), "{}", stdout(&show));
    let explain = pipe(
        cache.path(),
        &[
            "explain",
            "tests/pipelines/toy_chain.yaml",
            "b",
            "-S",
            "stages.b.value=7",
        ],
    );
    insta::assert_snapshot!("explain_changed", stdout(&explain));
    let nostage = pipe(
        cache.path(),
        &["explain", "tests/pipelines/toy_chain.yaml", "bb"],
    );
    assert_eq!(nostage.status.code(), Some(2));
    assert!(stderr(&nostage).contains("did you mean `b`?"));
}

#[test]
fn gc_dry_run_then_collect() {
    let cache = tempfile::tempdir().unwrap();
    two_runs(cache.path(), "stages.a.value=2");
    let dry = pipe(cache.path(), &["gc", "--keep-last", "1", "--dry-run"]);
    assert!(
        stdout(&dry).contains("would remove 5 item(s)"),
        "{}",
        stdout(&dry)
    );
    let real = pipe(cache.path(), &["gc", "--keep-last", "1"]);
    assert!(
        stdout(&real).contains("removed 5 item(s)"),
        "{}",
        stdout(&real)
    );
    assert!(stdout(&real).contains("kept 4 entries"));
    let again = pipe(
        cache.path(),
        &[
            "run",
            "tests/pipelines/toy_chain.yaml",
            "-S",
            "stages.a.value=2",
        ],
    );
    assert!(
        stderr(&again)
            .lines()
            .filter(|l| l.starts_with("hit"))
            .count()
            == 4,
        "{}",
        stderr(&again)
    );
}

/// The stages' results recorded by the only run in `cache`, by stage name: key and metrics.
fn recorded_results(cache: &Path) -> Vec<(String, String, serde_json::Value)> {
    let records = pipe::cache::runs::list(cache).unwrap();
    assert_eq!(records.len(), 1);
    records[0]
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.key.clone(), s.metrics.clone()))
        .collect()
}

/// `--threads` is a scheduling choice like `-j`: a LeNet-300-100 training at batch 60, whose
/// matrix products are large enough for burn to split over threads, gives the same keys and
/// bit-identical metrics with one thread, with two, and with the default share of the cores.
#[test]
fn thread_count_changes_neither_keys_nor_results() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("lenet.yaml");
    std::fs::write(
        &yaml,
        format!(
            "pipeline: threads\n\
             defaults:\n  train: {{batch: 60, iterations: 20, eval_every: 10, data: &d {{dir: {data}, train_subset: 1200, test_subset: 500, val_size: 500}}}}\n  evaluate: {{data: *d}}\n\
             stages:\n  init: {{kind: init, seed: 3}}\n  dense: {{kind: train, inputs: {{model: init}}}}\n  eval: {{kind: evaluate, inputs: {{model: dense}}}}\n",
            data = root().join("data/mnist").display()
        ),
    )
    .unwrap();
    let yaml = yaml.to_str().unwrap();
    let mut results = Vec::new();
    for threads in ["1", "2"] {
        let cache = dir.path().join(format!("cache{threads}"));
        let o = pipe(&cache, &["run", yaml, "-j", "1", "--threads", threads]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        results.push(recorded_results(&cache));
    }
    assert_eq!(results[0].len(), 3);
    assert!(
        results[0][1].2["test_acc"].as_f64().unwrap() > 0.5,
        "{:?}",
        results[0]
    );
    assert_eq!(results[0], results[1]);
    // Default flags: the cores follow the stages (the training alone on both, then shared).
    let cache = dir.path().join("cache-default");
    let o = pipe(&cache, &["run", yaml]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(recorded_results(&cache), results[0]);

    let zero = pipe(&dir.path().join("cache0"), &["run", yaml, "--threads", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(stderr(&zero).contains("--threads"), "{}", stderr(&zero));
}

/// An `evaluate` of a trained model on the data its training evaluated reads the training's
/// final figures instead of running the model again, for the test and the validation split;
/// on other data it evaluates. (That the figures are the same bits as an evaluation of the
/// saved model is `nn::train`'s `deterministic_learns_and_reports_points` test.)
#[test]
fn evaluate_reuses_the_training_s_final_evaluation_of_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("reuse.yaml");
    std::fs::write(
        &yaml,
        format!(
            "pipeline: reuse\n\
             defaults:\n  train: {{batch: 60, iterations: 20, eval_every: 10, data: &d {{dir: {data}, train_subset: 1200, test_subset: 500, val_size: 500}}}}\n  evaluate: {{data: *d}}\n\
             stages:\n  init: {{kind: init, seed: 3}}\n  dense: {{kind: train, inputs: {{model: init}}}}\n\
             \x20 same: {{kind: evaluate, inputs: {{model: dense}}}}\n\
             \x20 same_val: {{kind: evaluate, inputs: {{model: dense}}, split: val}}\n\
             \x20 unverified: {{kind: evaluate, inputs: {{model: dense}}, data: {{dir: {data}, train_subset: 1200, test_subset: 500, val_size: 500, verify: false}}}}\n\
             \x20 other: {{kind: evaluate, inputs: {{model: dense}}, data: {{dir: {data}, train_subset: 1200, test_subset: 400, val_size: 500}}}}\n",
            data = root().join("data/mnist").display()
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let o = pipe(&cache, &["-v", "run", yaml.to_str().unwrap(), "-j", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reused: Vec<&str> = ["same", "same_val", "unverified", "other"]
        .into_iter()
        .filter(|s| {
            stderr(&o).contains(&format!("{s}: loss and accuracy as `dense` recorded them"))
        })
        .collect();
    // `unverified` names the same samples (`verify` only skips the files' check), and its
    // key is `same`'s: one computation.
    assert_eq!(reused, ["same", "same_val"], "{}", stderr(&o));
    let results = recorded_results(&cache);
    let metric = |stage: &str, m: &str| {
        let (_, _, metrics) = results.iter().find(|(n, _, _)| n == stage).unwrap();
        metrics[m].as_f64().unwrap().to_bits()
    };
    assert_eq!(metric("same", "accuracy"), metric("dense", "test_acc"));
    assert_eq!(metric("same", "loss"), metric("dense", "test_loss"));
    assert_eq!(metric("unverified", "loss"), metric("dense", "test_loss"));
    assert_eq!(metric("same_val", "accuracy"), metric("dense", "val_acc"));
    assert_ne!(metric("other", "loss"), metric("dense", "test_loss"));
}

#[test]
fn a_run_named_by_place_counts_within_the_other_runs_pipeline() {
    let cache = tempfile::tempdir().unwrap();
    two_runs(cache.path(), "stages.b.value=5");
    assert!(
        pipe(cache.path(), &["run", "tests/pipelines/toy_sweep.yaml"])
            .status
            .success()
    );
    let ids = run_ids(cache.path());
    // `-2` counts among toy_chain's runs: the first run, not the second.
    let d = pipe(cache.path(), &["diff", "-2", &ids[1]]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert!(
        stdout(&d).starts_with(&format!("A = {} (", ids[0])),
        "{}",
        stdout(&d)
    );
    // The newest pipeline ran once: `-2 last` has nothing to compare, and says why.
    let d = pipe(cache.path(), &["diff", "-2", "last"]);
    assert_eq!(d.status.code(), Some(2));
    assert!(
        stderr(&d).contains(
            "`-2`: there is only 1 run of pipeline `toy_sweep` (`--any-pipeline` counts every run)"
        ),
        "{}",
        stderr(&d)
    );
    // Across pipelines, on request, with a first line that says so.
    let d = pipe(cache.path(), &["diff", "-2", "last", "--any-pipeline"]);
    assert!(
        stdout(&d)
            .starts_with("A and B are runs of different pipelines (`toy_chain` and `toy_sweep`)"),
        "{}",
        stdout(&d)
    );
}

/// `pipe kinds KIND` lists every parameter of the kind's struct (with `data.*` spelt out), its
/// inputs and metrics; `pipe kinds init` every model family with an example.
#[test]
fn kinds_lists_every_parameter_metric_and_model_family() {
    let cache = tempfile::tempdir().unwrap();
    for kind in ["train", "init", "netaug_train", "lesion", "prune"] {
        let o = pipe(cache.path(), &["kinds", kind]);
        assert!(o.status.success(), "{kind}: {}", stderr(&o));
        insta::assert_snapshot!(format!("kinds_{kind}"), stdout(&o));
    }
    // Every kind describes itself (a kind with a required field included).
    let list = stdout(&pipe(cache.path(), &["kinds"]));
    for line in list.lines().skip(2) {
        let kind = line.split_whitespace().next().unwrap();
        let o = pipe(cache.path(), &["kinds", kind]);
        assert!(o.status.success(), "{kind}: {}", stderr(&o));
        assert!(stdout(&o).contains("\nmetrics: "), "{kind}: {}", stdout(&o));
    }
}

/// `pipe new NAME` writes the starter pipeline under that name, which plans as it is; it never
/// overwrites a file and refuses a name that is not one.
#[test]
fn new_writes_the_starter_pipeline_once() {
    let dir = tempfile::tempdir().unwrap();
    let new = |name: &str| {
        std::process::Command::new(toy_pipe())
            .args(["new", name])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let o = new("my_first");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end(),
        "wrote my_first.yaml: `pipe plan my_first.yaml` shows what it would run, `pipe run my_first.yaml` runs it"
    );
    let path = dir.path().join("my_first.yaml");
    let written = std::fs::read_to_string(&path).unwrap();
    let shipped = std::fs::read_to_string(file("pipelines/first.yaml")).unwrap();
    assert_eq!(
        written,
        shipped.replacen("pipeline: first", "pipeline: my_first", 1)
    );
    let cache = tempfile::tempdir().unwrap();
    let p = plan(cache.path(), std::slice::from_ref(&path), &[]);
    assert_eq!(p.pipeline.name, "my_first");
    assert_eq!(p.pipeline.instances.len(), 9);
    assert_eq!(p.pipeline.claims.len(), 1);

    let again = new("my_first.yaml");
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("my_first.yaml exists already"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    let bad = new("../up");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("`../up` is not a pipeline name"),
        "{}",
        stderr(&bad)
    );
}
