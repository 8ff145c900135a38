//! The `lesion` kind end to end on toy models (tests/pipelines/tiny_lesion.yaml): the rows it
//! writes, its metrics and curve, and the plan-time refusal of a model with nothing to delete.

mod common;

use common::*;
use serde_json::Value;

fn count(rows: &[Value], lesion: &str, k: u64) -> usize {
    rows.iter()
        .filter(|r| r["lesion"] == lesion && r["k"] == k)
        .count()
}

#[test]
fn train_then_lesion_writes_every_row() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &[file("tests/pipelines/tiny_lesion.yaml")],
        &[],
    );
    assert_ok(&o);

    let res = entry_json(cache.path(), &o, "lesion_resnet", "lesion.json");
    let units: Vec<&str> = res["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]);
    let rows = res["rows"].as_array().unwrap();
    // 2 unlesioned (whole split, subset), 4 singles, k ∈ {1, 2, 3} × 2 draws (9 > 4 is
    // skipped), swaps: the 1 same-shape pair (layer1.0, layer1.1) allows only 1 swap.
    assert_eq!(count(rows, "none", 0), 2);
    assert_eq!(count(rows, "single", 1), 4);
    for k in 1..=3 {
        assert_eq!(count(rows, "delete", k), 2);
    }
    assert_eq!(count(rows, "delete", 9), 0);
    assert_eq!(count(rows, "swap", 1), 2);
    assert_eq!(count(rows, "swap", 2), 0);
    assert_eq!(rows.len(), 2 + 4 + 6 + 2);
    for r in rows {
        let images =
            if r["lesion"] == "single" || r.get("subset").is_none() && r["lesion"] == "none" {
                100
            } else {
                50
            };
        assert_eq!(r["images"], images, "{r}");
        let e = r["error"].as_f64().unwrap();
        assert_eq!((e * images as f64).round() / images as f64, e, "{r}");
    }
    for r in rows.iter().filter(|r| r["lesion"] == "delete") {
        assert_eq!(
            r["deleted"].as_array().unwrap().len() as u64,
            r["k"].as_u64().unwrap()
        );
    }
    // The one possible swap is an adjacent pair of 4 units: one discordant pair of 6,
    // τ = (5 − 1)/6.
    for r in rows.iter().filter(|r| r["lesion"] == "swap") {
        assert_eq!(
            r["order"],
            serde_json::json!(["layer1.1", "layer1.0", "layer2.1", "layer3.1"])
        );
        assert_eq!(r["tau"].as_f64().unwrap(), 4.0 / 6.0);
    }

    let single_max = metric(&o, "lesion_resnet", "single.max_delta_error");
    let e0 = metric(&o, "lesion_resnet", "error");
    let worst = rows
        .iter()
        .filter(|r| r["lesion"] == "single")
        .map(|r| r["error"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    assert!((single_max - (worst - e0)).abs() < 1e-6);
    assert_eq!(metric(&o, "lesion_resnet", "deletable"), 4.0);
    let curve = entry_json(cache.path(), &o, "lesion_resnet", "curve.json");
    let ks: Vec<u64> = curve
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["k"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, [0, 1, 2, 3]);

    // The plain net: conv2 (4 → 4) and conv4 (8 → 8) are its deletable layers.
    let plain = entry_json(cache.path(), &o, "lesion_plain", "lesion.json");
    let units: Vec<&str> = plain["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["conv2", "conv4"]);
    let rows = plain["rows"].as_array().unwrap();
    assert_eq!(count(rows, "single", 1), 2);
    assert_eq!(count(rows, "delete", 3), 0);
    assert_eq!(count(rows, "swap", 1), 0, "conv2 and conv4 differ in shape");

    // Recalibrated batch norm (the unlesioned model re-estimated too): singles only.
    let recal = entry_json(cache.path(), &o, "lesion_resnet_recal", "lesion.json");
    assert_eq!(recal["recalibrate"], 64);
    assert_eq!(recal["rows"].as_array().unwrap().len(), 2 + 4);
}

#[test]
fn a_model_without_deletable_units_is_refused_at_plan_time() {
    let reg = registry();
    let set = overrides(&["stages.plain_init.model.layers=[4, M, 8, M]"]);
    let err = match pipe::spec::load(&[file("tests/pipelines/tiny_lesion.yaml")], &set, &reg) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a plain net with no 4 → 4 or 8 → 8 conv has nothing to delete"),
    };
    assert!(err.contains("stage `lesion_plain` (lesion)"), "{err}");
    assert!(
        err.contains(
            "has no deletable unit; a lesion deletes residual blocks whose shortcut is the identity"
        ),
        "{err}"
    );
    assert!(err.contains("convnet"), "{err}");
}
