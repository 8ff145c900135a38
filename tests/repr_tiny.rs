//! RePr through the engine on a tiny CNN: the drop masks whole filters (weights, bias,
//! batch-norm scale and shift), the masked entries stay exactly zero through a training with
//! momentum and weight decay, and re-introduction brings the filters back orthogonal to the
//! survivors and to their own old values, with the mask removed.

mod common;

use common::*;
use pipe::exec::RunOutcome;
use pipe::nn::Weights;

fn filter(w: &Weights, conv: &str, f: usize) -> Vec<f32> {
    let p = w.param(&format!("{conv}.weight")).unwrap();
    let per = p.data.len() / p.shape[0];
    p.data[f * per..(f + 1) * per].to_vec()
}

fn value(w: &Weights, name: &str, f: usize) -> f32 {
    w.param(name).unwrap().data[f]
}

fn dropped(cache: &std::path::Path, o: &RunOutcome, stage: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(entry_dir(cache, o, stage).join("dropped.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["dropped"].as_array().unwrap();
            (
                l["conv"].as_str().unwrap().to_string(),
                d.iter().map(|x| x.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect()
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn drop_train_reinit_train_end_to_end() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path();
    let o = run(cache, &[file("tests/pipelines/tiny_repr.yaml")], &[]);
    assert_ok(&o);

    // Plain CNN: conv2 + conv3 ranked (12 filters), round(0.3 · 12) = 4 dropped; conv1 never.
    let drops = dropped(cache, &o, "drop");
    assert_eq!(
        drops.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["conv2", "conv3"]
    );
    assert_eq!(drops.iter().map(|(_, d)| d.len()).sum::<usize>(), 4);
    assert_eq!(metric(&o, "drop", "dropped_filters"), 4.0);

    let s1 = checkpoint_of(cache, &o, "s1", "model");
    let at_drop = checkpoint_of(cache, &o, "drop", "at_drop");
    assert_eq!(
        at_drop.weights, s1.weights,
        "the prune-time values are kept"
    );
    let s2 = checkpoint_of(cache, &o, "s2", "model");
    assert_eq!(s2.step, 7, "4 steps, then 3 more");
    let drop_model = checkpoint_of(cache, &o, "drop", "model");
    assert_eq!(
        s2.mask, drop_model.mask,
        "the drop's mask survives training"
    );
    for (conv, d) in &drops {
        for &f in d {
            assert!(filter(&s2.weights, conv, f).iter().all(|&x| x == 0.0));
            assert_eq!(value(&s2.weights, &format!("{conv}.bias"), f), 0.0);
            assert!(!s2.mask.extra[&format!("{conv}.bias")][f]);
        }
        // The survivors trained.
        let kept = (0..6).find(|f| !d.contains(f)).unwrap();
        assert_ne!(
            filter(&s2.weights, conv, kept),
            filter(&s1.weights, conv, kept)
        );
    }

    // Re-introduced: dense again, orthogonal to the survivors and to the old values.
    let back = checkpoint_of(cache, &o, "reinit", "model");
    assert_eq!(back.mask, s1.mask, "the mask is removed");
    assert!(back.mask.extra.is_empty());
    assert_eq!(metric(&o, "reinit", "fallback_filters"), 0.0);
    assert_eq!(metric(&o, "reinit", "reintroduced_filters"), 4.0);
    for (conv, d) in &drops {
        for &f in d {
            let new = filter(&back.weights, conv, f);
            assert!(new.iter().any(|&x| x != 0.0));
            assert_eq!(value(&back.weights, &format!("{conv}.bias"), f), 0.0);
            for g in 0..6 {
                let other = if d.contains(&g) {
                    filter(&at_drop.weights, conv, g)
                } else {
                    filter(&back.weights, conv, g)
                };
                assert!(cos(&new, &other).abs() < 1e-5, "{conv} {f} vs {g}");
            }
        }
    }
    let last = checkpoint_of(cache, &o, "s3", "model");
    assert_eq!(last.step, 9);
    assert!(metric(&o, "eval", "accuracy") >= 0.0);

    // Batch norm: conv1 ranked because `layers` lists it; round(0.5 · 10) = 5 dropped.
    let drops = dropped(cache, &o, "bn_drop");
    assert_eq!(drops.iter().map(|(_, d)| d.len()).sum::<usize>(), 5);
    let bn_s2 = checkpoint_of(cache, &o, "bn_s2", "model");
    for (conv, d) in &drops {
        let bn = conv.replace("conv", "bn");
        for &f in d {
            assert!(filter(&bn_s2.weights, conv, f).iter().all(|&x| x == 0.0));
            assert_eq!(value(&bn_s2.weights, &format!("{bn}.weight"), f), 0.0);
            assert_eq!(value(&bn_s2.weights, &format!("{bn}.bias"), f), 0.0);
        }
    }
    let bn_back = checkpoint_of(cache, &o, "bn_reinit", "model");
    assert!(bn_back.mask.extra.is_empty());
    for (conv, d) in &drops {
        let bn = conv.replace("conv", "bn");
        for &f in d {
            assert_eq!(value(&bn_back.weights, &format!("{bn}.weight"), f), 1.0);
            assert_eq!(value(&bn_back.weights, &format!("{bn}.bias"), f), 0.0);
        }
    }
    // Clamped (the default) is only nearly orthogonal; the stage says how nearly.
    assert!(metric(&o, "bn_reinit", "max_abs_cos") < 0.5);
}
