//! A training continued from a checkpoint with `resume_optimizer: true` follows the
//! uninterrupted training bit for bit (SGD momentum travels in `*.optim.safetensors`), directly
//! and through a rewind; without it the optimiser starts fresh; a prune passes the state on
//! with the pruned entries' momentum zeroed.

mod common;

use common::*;
use pipe::exec::RunOutcome;
use pipe::nn::{Checkpoint, OptimState, load_optim_state};

fn model(cache: &std::path::Path, o: &RunOutcome, stage: &str) -> Checkpoint {
    checkpoint_of(cache, o, stage, "model")
}

fn bits(c: &Checkpoint) -> Vec<u32> {
    let w = &c.weights;
    w.params
        .iter()
        .flat_map(|p| p.data.iter())
        .chain(w.buffers.iter().flat_map(|b| b.data.iter()))
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn resumed_training_follows_the_uninterrupted_one() {
    let cache = tempfile::tempdir().unwrap();
    let o = run(
        cache.path(),
        &[file("tests/pipelines/resume_tiny.yaml")],
        &[],
    );
    assert_ok(&o);
    let c = cache.path();
    let whole = model(c, &o, "whole");
    assert_eq!(whole.step, 8);
    assert_eq!(bits(&model(c, &o, "resumed")), bits(&whole));
    assert_eq!(bits(&model(c, &o, "rewound_resumed")), bits(&whole));
    assert_ne!(
        bits(&model(c, &o, "restarted")),
        bits(&whole),
        "a fresh optimiser takes other steps"
    );
    // The state is saved beside the final model and the save_at checkpoint.
    let dir = entry_dir(c, &o, "whole");
    for stem in ["model", "ckpt/iter_4"] {
        let state = load_optim_state(&dir, stem, &whole.weights).unwrap();
        assert!(
            matches!(state, Some(OptimState::Sgd { .. })),
            "{stem}: {state:?}"
        );
    }
    // A prune hands the state on, with the momentum of what it removed set to zero.
    let pruned = model(c, &o, "pruned");
    let Some(OptimState::Sgd { momentum_buffer }) =
        load_optim_state(&entry_dir(c, &o, "pruned"), "model", &pruned.weights).unwrap()
    else {
        panic!("the pruned model carries SGD state")
    };
    let mut removed = 0;
    for (i, v) in momentum_buffer.iter().enumerate() {
        if let Some(m) = pruned.mask.of_param(&pruned.weights, i) {
            for (&keep, &x) in m.iter().zip(v) {
                if !keep {
                    assert_eq!(x, 0.0);
                    removed += 1;
                }
            }
        }
    }
    assert!(removed > 0);
    assert_eq!(model(c, &o, "pruned_resumed").step, 8);
}
