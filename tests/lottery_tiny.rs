//! The lottery-vs-rethinking graph, tiny (784-32-16-10 MLP, 600 training images, 30
//! iterations per training), really trained on MNIST on the CPU: the numbers are deterministic
//! and pinned by a snapshot, and the cache behaves on real stages as on toy ones.

mod common;

use common::*;
use pipe::cache::StageStatus;

fn tiny() -> Vec<std::path::PathBuf> {
    vec![file("tests/pipelines/tiny_lottery.yaml")]
}

#[test]
fn tiny_lottery_pipeline_is_deterministic_and_pinned() {
    let c1 = tempfile::tempdir().unwrap();
    let c2 = tempfile::tempdir().unwrap();
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
        "same seed, same numbers, bit for bit"
    );
    insta::assert_snapshot!(metrics_summary(&a, true));

    // The IMP chain's training and the ticket branch at the same learning rate are one job.
    let chain = a.records.iter().find(|r| r.name == "imp.1.train").unwrap();
    let ticket = a
        .records
        .iter()
        .find(|r| r.name == "imp.1.ticket[lr=1.2e-3]")
        .unwrap();
    assert_eq!(chain.key, ticket.key);
    assert_eq!(chain.metrics, ticket.metrics);

    // Pruning: level k keeps 50% of the hidden layers' and 75% of the output layer's survivors.
    let d1 = &a
        .records
        .iter()
        .find(|r| r.name == "imp.1.prune")
        .unwrap()
        .metrics;
    let d2 = &a
        .records
        .iter()
        .find(|r| r.name == "imp.2.prune")
        .unwrap()
        .metrics;
    assert_eq!(d1["density_fc1"], 0.5);
    assert_eq!(d1["density_fc3"], 0.75);
    assert_eq!(d2["density_fc1"], 0.25);
    assert_eq!(d2["density_fc2"], 0.25);
    // fc1 784×32 and fc2 32×16 at 25%; fc3 16×10: 160 → 120 → 90.
    assert_eq!(d2["weights_remaining"], 784 * 32 / 4 + 32 * 16 / 4 + 90);

    // A second run is all hits.
    let again = run(c1.path(), &tiny(), &[]);
    assert!(again.records.iter().all(|r| r.status == StageStatus::Hit));
    assert_eq!(metrics(&again), metrics(&a));
}

#[test]
fn late_rewinding_reuses_the_dense_prefix_of_another_pipeline() {
    let cache = tempfile::tempdir().unwrap();
    let small = [
        "defaults.train.iterations=20",
        "defaults.train.data.train_subset=300",
        "defaults.train.data.test_subset=200",
        "defaults.evaluate.data.test_subset=200",
        "stages.dense.save_at=[0, 10]",
    ];
    let set: Vec<&str> = small
        .iter()
        .copied()
        .chain([
            "levels.imp.count=1",
            "levels.imp.stages.late_init.iteration=10",
        ])
        .collect();
    let first = run(
        cache.path(),
        &[file("pipelines/lottery_vs_rethinking.yaml")],
        &set,
    );
    assert_ok(&first);
    let set2: Vec<&str> = small
        .iter()
        .copied()
        .chain([
            "levels.late.count=1",
            "levels.late.stages.rewound.iteration=10",
        ])
        .collect();
    let second = run(
        cache.path(),
        &[file("pipelines/late_rewinding.yaml")],
        &set2,
    );
    assert_ok(&second);
    for shared in ["init", "dense", "eval_dense"] {
        assert_eq!(status_of(&second, shared), StageStatus::Hit, "{shared}");
    }
    // late.1.prune prunes the same dense network with the same settings as imp.1.prune.
    assert_eq!(status_of(&second, "late.1.prune"), StageStatus::Hit);
    assert_eq!(
        status_of(&second, "late.1.train"),
        StageStatus::Hit,
        "same as imp.1.late[lr=1.2e-3]"
    );
}

#[test]
fn scratch_b_trains_for_the_same_flops_as_the_dense_network() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &tiny(),
        &[
            "levels.imp.count=1",
            "levels.imp.stages.random_init.budget=same_flops",
            "levels.imp.stages.random.matrix.lr=[1.2e-3]",
        ],
    );
    assert_ok(&o);
    let reinit = &o
        .records
        .iter()
        .find(|r| r.name == "imp.1.random_init")
        .unwrap()
        .metrics;
    // 784-32-16-10: 2 × 25,760 dense weights + 58 biases; level 1 keeps 12,920 weights.
    assert_eq!(reinit["flops_dense"], 2 * 25760 + 58);
    assert_eq!(reinit["flops_pruned"], 2 * 12920 + 58);
    let random = &o
        .records
        .iter()
        .find(|r| r.name == "imp.1.random[lr=1.2e-3]")
        .unwrap()
        .metrics;
    // Scratch-B: 30 × 51,578 / 25,898 = 59.75 → 60 iterations; Scratch-E keeps 30.
    assert_eq!(random["iterations"], 60);
    assert_eq!(
        o.records
            .iter()
            .find(|r| r.name == "imp.1.ticket[lr=1.2e-3]")
            .unwrap()
            .metrics["iterations"],
        30
    );
}
