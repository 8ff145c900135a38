//! Every seeded random draw pipe makes, and the one place their streams are told apart.
//!
//! A draw comes from a ChaCha8 generator whose 256-bit key is `(seed, domain)` and whose
//! stream number says which layer, epoch, iteration or split it is for. A domain belongs to
//! one purpose of one kind (the initial weights of `init`, the fresh weights of `reinit`, the
//! batch order of `train`, …), so no choice of seeds makes two purposes draw the same numbers:
//! a control can always differ from its treatment. Adding a purpose is adding a variant here;
//! the test below refuses two variants with the same tag.
//!
//! Results depend only on the seeds and the stream numbers, never on the platform, backend
//! or thread count.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is drawn for. The tags are eight ASCII letters, kept as they were when each
/// purpose was introduced: changing one would change every result drawn from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// `init`: prunable weights, one stream per weight in program order.
    InitWeights,
    /// `init` under `torch_default`: the biases, one stream per weight they follow.
    InitBiases,
    /// `reinit` (Rethinking's control): its fresh weights, never `init`'s.
    ReinitWeights,
    /// `reinit` under `torch_default`: its fresh biases.
    ReinitBiases,
    /// `prune` with `method: random`: one stream per group of layers.
    RandomPrune,
    /// `repr_reinit`: the re-introduced filters, one stream per layer.
    ReprFilters,
    /// `teacher`: the teacher network's rows, one stream per layer.
    TeacherWeights,
    /// `teacher_data`: the Gaussian inputs, one stream per split.
    TeacherInputs,
    /// `netaug_train`: the widths sampled per step.
    NetAugWidths,
    /// `netaug_train`: the extra channels of the widest network.
    NetAugWideWeights,
    /// `netaug_train` under `torch_default`: the extra channels' biases.
    NetAugWideBiases,
    /// `netaug_train`: the batches that re-estimate batch-norm statistics of a sub-network.
    NetAugCalibration,
    /// Training-time augmentation (crops, flips), one stream per iteration.
    Augment,
    /// The validation split held out of a training set.
    Validation,
    /// The batch order, one stream per epoch.
    Batches,
    /// A class-balanced subset, one stream per class.
    BalancedSubset,
    /// `lesion`: which blocks each random deletion or swap takes.
    LesionDraws,
    /// `train` with `stochastic_depth`: the residual blocks each iteration keeps.
    StochasticDepth,
    /// `path_gradients`: the blocks whose branch each sampled path takes.
    PathDraws,
}

impl Domain {
    /// Every domain, for the uniqueness test and for audits.
    pub const ALL: [Domain; 19] = [
        Domain::InitWeights,
        Domain::InitBiases,
        Domain::ReinitWeights,
        Domain::ReinitBiases,
        Domain::RandomPrune,
        Domain::ReprFilters,
        Domain::TeacherWeights,
        Domain::TeacherInputs,
        Domain::NetAugWidths,
        Domain::NetAugWideWeights,
        Domain::NetAugWideBiases,
        Domain::NetAugCalibration,
        Domain::Augment,
        Domain::Validation,
        Domain::Batches,
        Domain::BalancedSubset,
        Domain::LesionDraws,
        Domain::StochasticDepth,
        Domain::PathDraws,
    ];

    /// The domain's half of the generator's key.
    pub const fn tag(self) -> u64 {
        match self {
            Domain::InitWeights => 0x494e_4954_5745_4947, // "INITWEIG"
            Domain::InitBiases => 0x494e_4954_4249_4153,  // "INITBIAS"
            Domain::ReinitWeights => 0x5245_494e_5745_4947, // "REINWEIG"
            Domain::ReinitBiases => 0x5245_494e_4249_4153, // "REINBIAS"
            Domain::RandomPrune => 0x5052_554e_4552_4e44, // "PRUNERND"
            Domain::ReprFilters => 0x5245_5052_494e_4954, // "REPRINIT"
            Domain::TeacherWeights => 0x5445_4143_4845_5221, // "TEACHER!"
            Domain::TeacherInputs => 0x4741_5553_5349_414e, // "GAUSSIAN"
            Domain::NetAugWidths => 0x4e45_5441_5547_5744, // "NETAUGWD"
            Domain::NetAugWideWeights => 0x4e45_5441_5557_4957, // "NETAUWIW"
            Domain::NetAugWideBiases => 0x4e45_5441_5557_4942, // "NETAUWIB"
            Domain::NetAugCalibration => 0x4e45_5441_5547_424e, // "NETAUGBN"
            Domain::Augment => 0x4155_474d_454e_5421,     // "AUGMENT!"
            Domain::Validation => 0x5641_4c49_4441_5445,  // "VALIDATE"
            Domain::Batches => 0x4241_5443_4845_5321,     // "BATCHES!"
            Domain::BalancedSubset => 0x4241_4c53_5542_5345, // "BALSUBSE"
            Domain::LesionDraws => 0x4c45_5349_4f4e_5321, // "LESIONS!"
            Domain::StochasticDepth => 0x5354_4f43_4844_4550, // "STOCHDEP"
            Domain::PathDraws => 0x5041_5448_4452_4157,   // "PATHDRAW"
        }
    }
}

/// A uniformly random choice of `k` of `n` items as a mask (`true` = chosen): the first `k` of
/// a shuffled `0..n` (stochastic depth's kept blocks, a sampled path's branches).
pub fn choose_k(r: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<bool> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(r);
    let mut chosen = vec![false; n];
    for &i in &order[..k.min(n)] {
        chosen[i] = true;
    }
    chosen
}

/// The generator for `(seed, domain)` on stream `stream`: one independent stream per layer
/// (or epoch, iteration, split) from a single user seed.
pub fn stream(seed: u64, domain: Domain, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&domain.tag().to_le_bytes());
    let mut r = ChaCha8Rng::from_seed(key);
    r.set_stream(stream);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn every_domain_has_its_own_tag() {
        let mut tags: Vec<u64> = Domain::ALL.iter().map(|d| d.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), Domain::ALL.len());
    }

    #[test]
    fn the_same_seed_draws_differently_in_every_domain() {
        let firsts: Vec<u64> = Domain::ALL
            .iter()
            .map(|&d| stream(0, d, 0).random::<u64>())
            .collect();
        for (i, a) in firsts.iter().enumerate() {
            for b in &firsts[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    /// The key layout is part of every cached result: pin it.
    #[test]
    fn key_layout_is_seed_then_tag() {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&7u64.to_le_bytes());
        key[8..16].copy_from_slice(&Domain::Batches.tag().to_le_bytes());
        let mut r = ChaCha8Rng::from_seed(key);
        r.set_stream(3);
        assert_eq!(
            stream(7, Domain::Batches, 3).random::<u64>(),
            r.random::<u64>()
        );
    }
}
