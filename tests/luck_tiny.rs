//! The Luck Matters pipeline in miniature (tests/pipelines/tiny_luck.yaml): teacher, its
//! Gaussian data, an MSE-trained student and the correlation analysis, end to end.

mod common;

use common::*;

fn tiny() -> Vec<std::path::PathBuf> {
    vec![file("tests/pipelines/tiny_luck.yaml")]
}

fn get<'a>(o: &'a pipe::exec::RunOutcome, name: &str) -> &'a serde_json::Value {
    &o.records
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
        .metrics
}

#[test]
fn tiny_luck_pipeline_runs_and_is_deterministic() {
    let (c1, c2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = run(c1.path(), &tiny(), &[]);
    assert_ok(&a);
    let b = run(c2.path(), &tiny(), &[]);
    let metrics = |o: &pipe::exec::RunOutcome| {
        o.records
            .iter()
            .map(|r| r.metrics.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        metrics(&a),
        metrics(&b),
        "same seeds, same numbers, bit for bit"
    );

    let data = get(&a, "data");
    assert_eq!(
        (&data["train"], &data["eval"], &data["d_in"], &data["d_out"]),
        (&512.into(), &64.into(), &4.into(), &3.into())
    );
    // MSE training lowers the held-out MSE; regression has no accuracy.
    let (before, after) = (get(&a, "eval_init"), get(&a, "eval_student"));
    let (l0, l1) = (
        before["loss"].as_f64().unwrap(),
        after["loss"].as_f64().unwrap(),
    );
    assert!(l1 < l0 * 0.5, "held-out MSE {l0} -> {l1}");
    assert!(after.get("accuracy").is_none());
    let student = get(&a, "student");
    assert_eq!(student["test_loss"].as_f64().unwrap(), l1);
    assert!(student.get("test_acc").is_none());

    // The teacher against itself: each node's best match is itself, at correlation 1 (a node
    // constant over the samples would give 0).
    let own = get(&a, "self_corr");
    for layer in ["layer1", "layer2"] {
        let max = own[layer]["best_max"].as_f64().unwrap();
        assert!((max - 1.0).abs() < 1e-6, "{layer}: {max}");
        assert_eq!(
            own[layer]["fanout_ratio"].is_null(),
            own[layer]["fanout_unmatched"].is_null()
        );
    }
    let corr = get(&a, "corr");
    for layer in ["layer1", "layer2"] {
        let m = &corr[layer];
        let (lo, mean, hi) = (
            m["best_min"].as_f64().unwrap(),
            m["best_mean"].as_f64().unwrap(),
            m["best_max"].as_f64().unwrap(),
        );
        assert!(
            -1.0 <= lo && lo <= mean && mean <= hi && hi <= 1.0 + 1e-9,
            "{m}"
        );
        assert!(m["init_rank_mean"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(corr["samples"], 64);

    // A second run is all hits.
    let again = run(c1.path(), &tiny(), &[]);
    assert!(
        again
            .records
            .iter()
            .all(|r| r.status == pipe::cache::StageStatus::Hit)
    );
}

#[test]
fn bad_luck_pipelines_fail_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let plan_files = |files: &[std::path::PathBuf], set: &[&str]| -> String {
        let reg = registry();
        match pipe::spec::load(files, &overrides(set), &reg) {
            Err(e) => e.to_string(),
            Ok(p) => {
                let store = pipe::cache::Store::open(dir.path()).unwrap();
                pipe::exec::plan(p, &reg, &store)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            }
        }
    };
    let plan_err = |set: &[&str]| plan_files(&tiny(), set);
    let e = plan_err(&["stages.data.train=600000000"]);
    assert!(e.contains("the limit is 2 GiB: use fewer samples"), "{e}");
    let e = plan_err(&["stages.init.model.widths=[5, 12, 8, 3]"]);
    assert!(
        e.contains("maps 5 inputs to 3 outputs, but `data` has 4 inputs"),
        "{e}"
    );
    // A `data:` block beside the `data` input would be ignored: refused.
    let text = std::fs::read_to_string(&tiny()[0]).unwrap().replace(
        "    eval_every: 32\n",
        "    eval_every: 32\n    data: {train_subset: 10}\n",
    );
    let both = dir.path().join("both.yaml");
    std::fs::write(&both, text).unwrap();
    let e = plan_files(&[both], &[]);
    assert!(e.contains("replaces the `data:` parameter"), "{e}");
    let e = plan_err(&["stages.teacher.widths=[1, 5, 3]"]);
    assert!(e.contains("only 4 distinct non-zero rows"), "{e}");
    let e = plan_err(&["stages.corr.samples=65"]);
    assert!(
        e.contains("`samples: 65` but `data` has 64 held-out samples"),
        "{e}"
    );
}
