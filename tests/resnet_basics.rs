//! The ResNet-basics stages end to end at toy size (tests/pipelines/tiny_resnet_basics.yaml):
//! the training error a curve records, stochastic depth as a train option, `path_gradients`'
//! rows and metrics, and the plan-time refusals of models without residual blocks.

mod common;

use common::*;

fn tiny() -> Vec<std::path::PathBuf> {
    vec![file("tests/pipelines/tiny_resnet_basics.yaml")]
}

#[test]
fn curves_record_the_training_error_and_path_gradients_cover_every_length() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(cache.path(), &tiny(), &[]);
    assert_ok(&o);

    // Every curve point has a training error on the 64 probe images; the metric is the last.
    for stage in ["resnet", "plain", "resnet_sd"] {
        let curve = entry_json(cache.path(), &o, stage, "curve.json");
        let points = curve.as_array().unwrap();
        let its: Vec<u64> = points
            .iter()
            .map(|p| p["iteration"].as_u64().unwrap())
            .collect();
        assert_eq!(its, [0, 3, 6], "{stage}");
        for p in points {
            let e = p["train_error"].as_f64().unwrap();
            assert_eq!((e * 64.0).round() / 64.0, e, "{stage}: {p}");
        }
        let last = points.last().unwrap()["train_error"].as_f64().unwrap();
        assert_eq!(metric(&o, stage, "train_error"), last, "{stage}");
    }
    // The stochastic-depth arm trains other weights than the plain ResNet from the same θ0 and
    // batches (3 of 6 blocks per batch).
    assert_ne!(
        metric(&o, "resnet_sd", "test_loss"),
        metric(&o, "resnet", "test_loss")
    );

    // Path gradients: one row per length 0..=6, C(6, k) paths, shares summing to 1.
    let rows = entry_json(cache.path(), &o, "paths", "curve.json");
    let rows = rows.as_array().unwrap();
    let ks: Vec<u64> = rows.iter().map(|r| r["k"].as_u64().unwrap()).collect();
    assert_eq!(ks, [0, 1, 2, 3, 4, 5, 6]);
    let paths: Vec<f64> = rows.iter().map(|r| r["paths"].as_f64().unwrap()).collect();
    assert_eq!(paths, [1.0, 6.0, 15.0, 20.0, 15.0, 6.0, 1.0]);
    for r in rows {
        let (n, p, t) = (
            r["grad_norm"].as_f64().unwrap(),
            r["paths"].as_f64().unwrap(),
            r["total"].as_f64().unwrap(),
        );
        assert!(n > 0.0 && n.is_finite(), "{r}");
        assert_eq!(t, n * p, "{r}");
    }
    // Lengths 0 and 6 are one path each: both draws take it, so their spread is zero.
    assert_eq!(rows[0]["grad_norm_std"].as_f64().unwrap(), 0.0);
    assert_eq!(rows[6]["grad_norm_std"].as_f64().unwrap(), 0.0);
    let share: f64 = rows.iter().map(|r| r["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-5, "{share}");
    assert_eq!(metric(&o, "paths", "blocks"), 6.0);
    assert_eq!(metric(&o, "paths", "images"), 8.0);
    let short: f64 = rows[..3]
        .iter()
        .map(|r| r["total"].as_f64().unwrap())
        .sum::<f64>()
        / rows
            .iter()
            .map(|r| r["total"].as_f64().unwrap())
            .sum::<f64>();
    assert!((metric(&o, "paths", "short_share") - short).abs() < 1e-6);
    assert!(metric(&o, "paths", "log_slope").is_finite());

    // Run again in a fresh cache: the same figures, bit for bit.
    let again = tempfile::tempdir().unwrap();
    let o2 = run(again.path(), &tiny(), &[]);
    assert_eq!(metrics_summary(&o, true), metrics_summary(&o2, true));
}

fn plan_error(set: &[&str]) -> String {
    let reg = registry();
    match pipe::spec::load(&tiny(), &overrides(set), &reg) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{set:?} should be refused"),
    }
}

#[test]
fn models_without_residual_blocks_are_refused_at_plan_time() {
    // The plain twin has no residual blocks: no paths, no branches to drop.
    let e = plan_error(&["stages.paths.inputs.model=plain"]);
    assert!(e.contains("stage `paths` (path_gradients)"), "{e}");
    assert!(e.contains("has no residual block"), "{e}");
    let e = plan_error(&["stages.resnet_sd.inputs.model=plain_init"]);
    assert!(e.contains("stage `resnet_sd` (train)"), "{e}");
    assert!(
        e.contains("`stochastic_depth` needs a model with residual blocks"),
        "{e}"
    );
    let e = plan_error(&["stages.resnet_sd.stochastic_depth={keep: 7}"]);
    assert!(e.contains("must lie in 1..=6"), "{e}");
}
