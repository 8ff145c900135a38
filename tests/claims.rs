//! Claims as code, through the real binary on a tiny two-seed MNIST pipeline
//! (tests/pipelines/tiny_claims.yaml, which includes tiny_claims_base.yaml): the lines `pipe
//! run` prints (numbers recomputed here from the recorded metrics), `--strict-claims`, the run
//! record's `claims`, `pipe claims`, and `pipe diff` after a threshold changed.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use pipe::report::fmt_float;
use serde_json::Value;

const FILE: &str = "tests/pipelines/tiny_claims.yaml";

fn pipe(cache: &Path, args: &[&str]) -> Output {
    pipe_with(Path::new(env!("CARGO_BIN_EXE_pipe")), cache, args)
}

/// The run records, oldest first.
fn records(cache: &Path) -> Vec<Value> {
    let mut paths: Vec<_> = std::fs::read_dir(cache.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// The id a `pipe run` names in its last line (`run ID: 0 ran, …`); run ids sort by the
/// second they started, so `-2`/`last` could not tell two runs of one second apart.
fn run_id(o: &Output) -> String {
    let out = stdout(o);
    let last = out.lines().rfind(|l| l.starts_with("run ")).unwrap();
    last["run ".len()..].split(':').next().unwrap().to_string()
}

fn metric(rec: &Value, stage: &str, m: &str) -> f64 {
    rec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage}"))["metrics"][m]
        .as_f64()
        .unwrap()
}

fn claim<'a>(rec: &'a Value, name: &str) -> &'a Value {
    rec["claims"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no claim {name} in {rec}"))
}

#[test]
fn claims_are_evaluated_printed_recorded_diffed_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    // 1. A plain run: one claim fails, the exit code stays 0.
    let first = pipe(&cache, &["run", FILE]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let out = stdout(&first);
    let rec = records(&cache).pop().unwrap();
    let acc = [0, 1].map(|s| metric(&rec, &format!("eval_dense[seed={s}]"), "accuracy"));
    let mean = (acc[0] + acc[1]) / 2.0;
    let std = ((acc[0] - mean).powi(2) + (acc[1] - mean).powi(2)).sqrt(); // n − 1 = 1
    let listed = format!(
        "eval_dense[seed=0] {}, eval_dense[seed=1] {}",
        fmt_float(acc[0]),
        fmt_float(acc[1])
    );
    let held_line = format!(
        "claim accuracy_is_a_fraction: held  {m} >= 0  (left = mean of accuracy over 2 stages `eval_dense*`: {listed}; {m} ± {s} (n=2); right = 0)",
        m = fmt_float(mean),
        s = fmt_float(std)
    );
    let max = acc[0].max(acc[1]);
    let failed_line = format!(
        "claim accuracy_above_two: FAILED  {m} > 2  (left = max of accuracy over 2 stages `eval_dense*`: {listed}; {m} (n=2); right = 2)",
        m = fmt_float(max)
    );
    assert!(out.contains(&held_line), "{held_line}\nnot in\n{out}");
    // Replicates: the two seeds are one report cell, mean ± sample std (n), as fractions like
    // the claim's numbers.
    let cell = format!("{mean:.4} ± {std:.4} (2)");
    assert!(out.contains(&cell), "{cell}\nnot in\n{out}");
    assert!(out.contains(&failed_line), "{failed_line}\nnot in\n{out}");

    // The claim of the included file is stated too; the median of two is their mean.
    let init_acc = [0, 1].map(|s| metric(&rec, &format!("eval_init[seed={s}]"), "accuracy"));
    let median = (init_acc[0] + init_acc[1]) / 2.0;
    let included = claim(&rec, "untrained_is_far_from_perfect");
    assert_eq!(
        included["outcome"],
        if median < 0.9 { "held" } else { "failed" }
    );
    assert_eq!(included["left"]["value"].as_f64(), Some(median));
    assert_eq!(included["left"]["agg"], "median");

    // `wins` pairs the stages on their seed and counts where a beats b (lower loss).
    let loss = |stage: &str, s: i32| metric(&rec, &format!("{stage}[seed={s}]"), "loss");
    let wins = [0, 1]
        .iter()
        .filter(|&&s| loss("eval_dense", s) < loss("eval_init", s))
        .count();
    let w = &claim(&rec, "training_never_hurts")["left"];
    assert_eq!(w["value"].as_f64(), Some(wins as f64));
    assert_eq!(w["n"], 2);
    let pairs: Vec<(String, String)> = w["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["a"].as_str().unwrap().into(),
                p["b"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [0, 1].map(|s| (
            format!("eval_dense[seed={s}]"),
            format!("eval_init[seed={s}]")
        ))
    );

    // The record: every claim, in the order written (included file first), with its outcome.
    let names: Vec<(&str, &str)> = rec["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            (
                "untrained_is_far_from_perfect",
                included["outcome"].as_str().unwrap()
            ),
            ("accuracy_is_a_fraction", "held"),
            ("accuracy_above_two", "failed"),
            ("training_never_hurts", "held"),
        ]
    );
    let held = claim(&rec, "accuracy_is_a_fraction");
    assert_eq!(held["left"]["value"].as_f64(), Some(mean));
    assert_eq!(held["left"]["n"], 2);
    assert_eq!(held["left"]["std"].as_f64(), Some(std));
    assert_eq!(held["right"]["value"].as_f64(), Some(0.0));
    assert_eq!(held["op"], ">=");
    assert_eq!(held["source"], "tests/claims.rs (built to hold)");

    // `pipe claims` prints the last run's lines again.
    let again = stdout(&pipe(&cache, &["claims"]));
    assert!(
        again.contains(&held_line) && again.contains(&failed_line),
        "{again}"
    );
    assert_eq!(again.lines().count(), 4, "{again}");

    // 2. --strict-claims: all cache hits, the failed claim makes the exit code 1.
    let strict = pipe(&cache, &["run", "-q", FILE, "--strict-claims"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stdout(&strict));
    assert!(
        stderr(&strict).contains("error: claim `accuracy_above_two` failed (--strict-claims)"),
        "{}",
        stderr(&strict)
    );
    assert!(stdout(&strict).contains("0 ran, 8 cached, 0 failed"));

    // 3. A lower threshold changes no key: all hits, and the claim now holds.
    let lowered = pipe(
        &cache,
        &[
            "run",
            "-q",
            FILE,
            "--strict-claims",
            "-S",
            "claims.accuracy_above_two.right=0",
        ],
    );
    assert_eq!(lowered.status.code(), Some(0), "{}", stderr(&lowered));
    assert!(stdout(&lowered).contains("0 ran, 8 cached, 0 failed"));
    assert!(stdout(&lowered).contains(&format!(
        "claim accuracy_above_two: held  {} > 0  (",
        fmt_float(max)
    )));

    // `pipe diff` shows the claim whose outcome and right side changed, and nothing else.
    let (a, b) = (run_id(&strict), run_id(&lowered));
    let diff = pipe(&cache, &["diff", &a, &b, "--json"]);
    let rows: Value = serde_json::from_slice(&diff.stdout).unwrap();
    let rows: Vec<(&str, &str, &Value, &Value)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                &r["a"],
                &r["b"],
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "claim accuracy_above_two",
                "outcome",
                &Value::from("failed"),
                &Value::from("held")
            ),
            (
                "claim accuracy_above_two",
                "right",
                &Value::from(2.0),
                &Value::from(0.0)
            ),
        ]
    );
    let text = stdout(&pipe(&cache, &["diff", &a, &b]));
    assert!(
        text.lines().any(|l| l.contains("claim accuracy_above_two")
            && l.contains("outcome")
            && l.contains("failed")
            && l.contains("held")),
        "{text}"
    );
    let md = stdout(&pipe(&cache, &["diff", &a, &b, "--md"]));
    assert!(
        md.contains("| claim accuracy_above_two | right | 2 | 0 | -2 |"),
        "{md}"
    );
}

#[test]
fn plan_lists_the_claims_a_run_will_check() {
    let cache = tempfile::tempdir().unwrap();
    let o = pipe(cache.path(), &["plan", FILE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().last().unwrap(),
        "4 claims checked after `pipe run`: untrained_is_far_from_perfect, \
         accuracy_is_a_fraction, accuracy_above_two, training_never_hurts"
    );
    // A pipeline without claims ends with its counts, as before.
    let o = pipe(cache.path(), &["plan", "pipelines/late_rewinding.yaml"]);
    assert!(stdout(&o).lines().last().unwrap().contains(" stages: "));
}
