//! `defaults` across `include:`: a file's stages see its own defaults, its includes' and its
//! includers', never a sibling's, so a file that includes several pipelines (as
//! `pipelines/seeds.yaml` does) gives each one's stages the keys they have when it runs alone.

mod common;

use std::path::Path;

use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn planned(
    cache: &Path,
    files: &[std::path::PathBuf],
    set: &[&str],
) -> Vec<(String, String, Value)> {
    common::plan(cache, files, set)
        .stages
        .into_iter()
        .map(|s| {
            (
                s.instance.name.clone(),
                s.key.clone(),
                s.instance.params.clone(),
            )
        })
        .collect()
}

fn find<'a>(p: &'a [(String, String, Value)], name: &str) -> &'a (String, String, Value) {
    p.iter()
        .find(|s| s.0 == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

const A: &str = "
defaults:
  train: {optimizer: sgd, lr: 0.1, iterations: 1}
stages:
  init_a: {kind: init, model: {arch: mlp, widths: [784, 8, 10]}, seed: 1}
  train_a: {kind: train, inputs: {model: init_a}}
";

const B: &str = "
defaults:
  train: {lr: 0.2, batch: 7, iterations: 2}
stages:
  init_b: {kind: init, model: {arch: mlp, widths: [784, 8, 10]}, seed: 2}
  train_b: {kind: train, inputs: {model: init_b}}
";

#[test]
fn siblings_do_not_see_each_others_defaults_and_keep_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", A);
    let b = write(dir.path(), "b.yaml", B);
    let top = write(dir.path(), "top.yaml", "include: [a.yaml, b.yaml]\n");
    let cache = dir.path().join("cache");

    let both = planned(&cache, std::slice::from_ref(&top), &[]);
    let ta = &find(&both, "train_a").2;
    let tb = &find(&both, "train_b").2;
    assert_eq!(ta["optimizer"], "sgd");
    assert_eq!(ta["lr"], 0.1);
    assert_eq!(
        ta["batch"], 60,
        "b.yaml's batch must not reach a.yaml's stage"
    );
    assert_eq!(ta["iterations"], 1);
    assert_eq!(
        tb["optimizer"], "adam",
        "a.yaml's optimizer must not reach b.yaml's stage"
    );
    assert_eq!(tb["lr"], 0.2);
    assert_eq!(tb["batch"], 7);

    // The same keys as when each file runs alone.
    let alone_a = planned(&cache, &[a], &[]);
    let alone_b = planned(&cache, &[b], &[]);
    assert_eq!(find(&both, "train_a").1, find(&alone_a, "train_a").1);
    assert_eq!(find(&both, "train_b").1, find(&alone_b, "train_b").1);
}

#[test]
fn includers_defaults_and_overrides_win_over_included_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", A);
    write(dir.path(), "b.yaml", B);
    write(
        dir.path(),
        "mid.yaml",
        "include: [a.yaml]\ndefaults:\n  train: {lr: 0.3}\nstages:\n  train_mid: {kind: train, inputs: {model: init_a}}\n",
    );
    let top = write(
        dir.path(),
        "top.yaml",
        "include: [mid.yaml, b.yaml]\ndefaults:\n  train: {eval_every: 3}\n",
    );
    let cache = dir.path().join("cache");
    let p = planned(&cache, std::slice::from_ref(&top), &[]);
    // a.yaml's stage: its includer mid.yaml wins on lr, the top file adds eval_every.
    let ta = &find(&p, "train_a").2;
    assert_eq!(
        (ta["lr"].as_f64(), ta["optimizer"].as_str()),
        (Some(0.3), Some("sgd"))
    );
    assert_eq!(ta["eval_every"], 3);
    // mid.yaml's own stage sees what it includes (a.yaml's optimizer) under its own lr.
    let tm = &find(&p, "train_mid").2;
    assert_eq!(
        (tm["lr"].as_f64(), tm["optimizer"].as_str()),
        (Some(0.3), Some("sgd"))
    );
    // b.yaml's stage: the top file's defaults, none of mid's or a's.
    let tb = &find(&p, "train_b").2;
    assert_eq!(
        (tb["lr"].as_f64(), tb["optimizer"].as_str()),
        (Some(0.2), Some("adam"))
    );
    assert_eq!(tb["eval_every"], 3);

    // `-S defaults.train.…` is the outermost layer: it reaches every file's stages.
    let p = planned(&cache, &[top], &["defaults.train.lr=0.5"]);
    for s in ["train_a", "train_mid", "train_b"] {
        assert_eq!(find(&p, s).2["lr"], 0.5, "{s}");
    }
}

/// `pipelines/seeds.yaml` is every paper's pipeline in one graph: each stage there has exactly
/// the key it has in its own pipeline (so a paper run alone is a cache hit afterwards, and the
/// other way round), nothing is lost or added, and every paper's claims come along.
#[test]
fn seeds_yaml_keeps_every_papers_keys_and_claims() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let all = planned(&cache, &[common::file("pipelines/seeds.yaml")], &[]);
    let papers = [
        "lottery_vs_rethinking",
        "repr",
        "netaug",
        "lesion",
        "luck_matters",
        "degradation",
        "warmup",
    ];
    let mut total = 0;
    for paper in papers {
        let own = planned(
            &cache,
            &[common::file(&format!("pipelines/{paper}.yaml"))],
            &[],
        );
        total += own.len();
        for (name, key, _) in &own {
            assert_eq!(&find(&all, name).1, key, "{paper}: {name}");
        }
    }
    assert_eq!(
        all.len(),
        total,
        "the papers share no stage name, so nothing is merged"
    );

    let reg = common::registry();
    let claims = |f: &str| -> Vec<String> {
        let p = pipe::spec::load(&[common::file(f)], &[], &reg).unwrap();
        p.claims.iter().map(|c| c.name.clone()).collect()
    };
    let mut want: Vec<String> = papers
        .iter()
        .flat_map(|p| claims(&format!("pipelines/{p}.yaml")))
        .collect();
    let mut got = claims("pipelines/seeds.yaml");
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(got.len() >= 10, "four papers state claims: {got:?}");
}
