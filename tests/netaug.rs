//! `netaug_train` end to end on a tiny pipeline (tests/pipelines/tiny_netaug.yaml): NetAug and
//! its baseline arm train, and their base-width checkpoints load in `evaluate` and `train`.

mod common;

use common::*;

#[test]
fn netaug_trains_and_writes_a_plain_base_width_model() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &[file("tests/pipelines/tiny_netaug.yaml")],
        &[],
    );
    assert_ok(&o);
    // Width augmentation in the first half of the 2 epochs; none in the baseline arm.
    assert_eq!(metric(&o, "netaug", "aug_epochs"), 1.0);
    assert_eq!(metric(&o, "base", "aug_epochs"), 0.0);
    // 256 images at batch 32: 8 steps per epoch.
    assert_eq!(metric(&o, "netaug", "iterations"), 16.0);
    for (train, eval) in [("netaug", "eval_netaug"), ("base", "eval_base")] {
        // `evaluate` reads the checkpoint (base width, calibrated BN statistics) and gets the
        // accuracy the training measured after its last calibration, to the bit.
        assert_eq!(metric(&o, eval, "accuracy"), metric(&o, train, "test_acc"));
        // conv 1→4, 4→8, 8→16, 16→16 (3×3) and FC 16→10: the base width, not the master's.
        assert_eq!(
            metric(&o, eval, "weights_remaining"),
            (9 * (4 + 32 + 128 + 256) + 160) as f64
        );
        let acc = metric(&o, eval, "accuracy");
        assert!(acc > 0.2, "{train}: accuracy {acc} after 2 epochs");
    }
    // The arms differ only by the augmentation, so they train different models.
    assert_ne!(
        metric(&o, "netaug", "test_loss"),
        metric(&o, "base", "test_loss")
    );
    assert_eq!(metric(&o, "more", "iterations"), 3.0);
}
