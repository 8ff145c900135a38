//! Pure host-side pruning: turns (weights, mask) into a smaller mask.
//!
//! Semantics, shared by all methods and scopes:
//! * Only surviving weights (mask `true`) are candidates; weights removed in
//!   earlier rounds never count toward a threshold or a count.
//! * "Rate p" removes `round(p × survivors)` weights, where `round` is
//!   `f64::round`: half away from zero, i.e. half up (2.5 → 3, 0.5 → 1).
//! * Magnitude: the smallest `|w|` go first; ties are broken by position
//!   (lower layer index, then lower flat index within the layer, is removed
//!   first), so exactly the requested count is removed, deterministically.
//! * Biases are never pruned (the mask has no entries for them).
//! * The result is a subset of the input mask (masks compose across rounds).

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{Mask, NnError, Param, Weights};
use crate::rng::{self, Domain};

/// How the weights to remove are chosen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    /// Remove the surviving weights of smallest magnitude.
    Magnitude,
    /// Remove the same number of surviving weights, uniformly at random (seeded).
    Random,
    /// Structured: remove whole conv filters of smallest L1 norm, with the channels they
    /// feed (Li et al. 2017); see [`crate::nn::filter_prune`].
    Filter,
}

/// Whether counts (and magnitude thresholds) are per layer or over all layers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// Each layer loses `round(rates[l] × its survivors)`.
    Layerwise,
    /// All layers are pooled and lose `round(rates[0] × pooled survivors)`
    /// under one threshold. Exception: when the output layer's rate differs
    /// from `rates[0]` (the lottery-ticket paper prunes the output layer at
    /// half the rate), the output layer is left out of the pool and pruned
    /// layerwise at its own rate. Every other layer must have rate `rates[0]`.
    Global,
}

/// The layer a prunable parameter belongs to (`fc2` for `fc2.weight`), as users name it.
fn layer_name(p: &Param) -> &str {
    p.name.strip_suffix(".weight").unwrap_or(&p.name)
}

/// Number of survivors to remove: `round(rate × survivors)`, half up.
pub fn removal_count(rate: f64, survivors: usize) -> usize {
    ((rate * survivors as f64).round() as usize).min(survivors)
}

/// Prunes `weights` under `mask` and returns the new mask (a subset of
/// `mask`). `rates` holds one rate per layer (or a single rate for all
/// layers): the fraction of the layer's *surviving* weights to remove, in
/// [0, 1]. See the module docs for the exact semantics.
///
/// Global scope ranks the hidden layers together at one rate; a hidden layer at rate 0 stays
/// out of the ranking and keeps all its weights (a stem kept dense, as open_lth's layers to
/// ignore), and the output layer (the last) is pruned with them at the same rate or on its own
/// at another.
pub fn prune(
    weights: &Weights,
    mask: &Mask,
    method: PruneMethod,
    scope: PruneScope,
    rates: &[f64],
    seed: u64,
) -> Result<Mask, NnError> {
    if method == PruneMethod::Filter {
        return Err(NnError::Invalid(
            "filter pruning removes whole channels: use nn::filter_prune::prune_filters".into(),
        ));
    }
    // The prunable parameters (conv and linear weights), aligned with the mask's entries.
    let prunable: Vec<&Param> = weights.prunable().collect();
    let n_layers = prunable.len();
    if mask.layers.len() != n_layers
        || prunable
            .iter()
            .zip(&mask.layers)
            .any(|(l, m)| l.data.len() != m.len())
    {
        return Err(NnError::Shape(format!(
            "pruning: mask layer sizes {:?} do not match weight layer sizes {:?}",
            mask.layers.iter().map(Vec::len).collect::<Vec<_>>(),
            prunable.iter().map(|l| l.data.len()).collect::<Vec<_>>()
        )));
    }
    let rates: Vec<f64> = match rates.len() {
        1 => vec![rates[0]; n_layers],
        n if n == n_layers => rates.to_vec(),
        n => {
            return Err(NnError::Invalid(format!(
                "pruning needs one rate per layer ({n_layers}) or a single rate, got {n}"
            )));
        }
    };
    if let Some((l, r)) = rates
        .iter()
        .enumerate()
        .find(|(_, r)| !(0.0..=1.0).contains(*r))
    {
        return Err(NnError::Invalid(format!(
            "pruning rate {r} for layer {} is outside [0, 1]",
            layer_name(prunable[l])
        )));
    }
    if method == PruneMethod::Magnitude {
        for l in &prunable {
            if let Some(i) = l.data.iter().position(|w| !w.is_finite()) {
                return Err(NnError::Diverged(format!(
                    "weight {i} of layer {} is {}, cannot prune by magnitude",
                    layer_name(l),
                    l.data[i]
                )));
            }
        }
    }

    // Groups of layers pruned together, each with its rate.
    let mut groups: Vec<(Vec<usize>, f64)> = Vec::new();
    match scope {
        PruneScope::Layerwise => {
            groups.extend((0..n_layers).map(|l| (vec![l], rates[l])));
        }
        PruneScope::Global if n_layers > 0 => {
            let names: Vec<String> = prunable.iter().map(|l| layer_name(l).to_string()).collect();
            let (pooled, r) = global_pool(&rates, &names).map_err(NnError::Invalid)?;
            let out = n_layers - 1;
            if rates[out] == r && !pooled.is_empty() {
                groups.push((pooled.into_iter().chain([out]).collect(), r));
            } else {
                if !pooled.is_empty() {
                    groups.push((pooled, r));
                }
                groups.push((vec![out], rates[out]));
            }
        }
        PruneScope::Global => {}
    }

    let mut result = mask.clone();
    for (layers, rate) in groups {
        // Candidates in position order: (layer, flat index).
        let mut cands: Vec<(u32, u32)> = Vec::new();
        for &l in &layers {
            cands.extend(
                mask.layers[l]
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| **k)
                    .map(|(i, _)| (l as u32, i as u32)),
            );
        }
        let k = removal_count(rate, cands.len());
        if k == 0 {
            continue;
        }
        let chosen: Vec<(u32, u32)> = match method {
            PruneMethod::Magnitude => {
                let mag = |&(l, i): &(u32, u32)| prunable[l as usize].data[i as usize].abs();
                // Total order: magnitude, then position. The first k are removed.
                let cmp = |a: &(u32, u32), b: &(u32, u32)| mag(a).total_cmp(&mag(b)).then(a.cmp(b));
                if k < cands.len() {
                    cands.select_nth_unstable_by(k - 1, cmp);
                }
                cands.truncate(k);
                cands
            }
            PruneMethod::Filter => unreachable!("rejected above"),
            PruneMethod::Random => {
                // One stream per group, named by its first layer.
                let mut rng = rng::stream(seed, Domain::RandomPrune, layers[0] as u64);
                let (picked, _) = cands.partial_shuffle(&mut rng, k);
                picked.to_vec()
            }
        };
        for (l, i) in chosen {
            result.layers[l as usize][i as usize] = false;
        }
    }
    Ok(result)
}

/// The hidden layers global pruning ranks together (those at a non-zero rate) and their common
/// rate, from one rate per prunable layer named `names` (the output layer last); an error
/// names the first layer whose rate differs.
pub fn global_pool(rates: &[f64], names: &[String]) -> Result<(Vec<usize>, f64), String> {
    let out = rates.len().saturating_sub(1);
    let pooled: Vec<usize> = (0..out).filter(|&l| rates[l] != 0.0).collect();
    let r = pooled.first().map_or(0.0, |&l| rates[l]);
    if let Some(&l) = pooled.iter().find(|&&l| rates[l] != r) {
        return Err(format!(
            "global pruning ranks the hidden layers together at one rate ({r}), but layer {} has \
             rate {}; give them one rate (a layer at 0 stays out of the ranking, and the output \
             layer may differ: it is then pruned on its own)",
            names[l], rates[l]
        ));
    }
    Ok((pooled, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::program::ParamRole;

    fn weights(layers: &[&[f32]]) -> Weights {
        Weights {
            params: layers
                .iter()
                .enumerate()
                .flat_map(|(k, w)| {
                    [
                        Param {
                            name: format!("fc{}.weight", k + 1),
                            shape: vec![1, w.len()],
                            role: ParamRole::LinearWeight,
                            data: w.to_vec(),
                        },
                        Param {
                            name: format!("fc{}.bias", k + 1),
                            shape: vec![w.len()],
                            role: ParamRole::Bias,
                            data: vec![0.25; w.len()],
                        },
                    ]
                })
                .collect(),
            buffers: vec![],
        }
    }

    fn dense(w: &Weights) -> Mask {
        Mask::new(w.prunable().map(|l| vec![true; l.data.len()]).collect())
    }

    const T: bool = true;
    const F: bool = false;
    use PruneMethod::*;
    use PruneScope::*;

    #[test]
    fn layerwise_magnitude_counts_only_survivors_and_rounds_half_up() {
        // Index 3 was pruned earlier (its weight is 0 and must not be a candidate).
        let w = weights(&[&[0.5, -0.1, 0.3, 0.0, 0.2, -0.4]]);
        let m = Mask::new(vec![vec![T, T, T, F, T, T]]);
        // 5 survivors × 0.4 = 2: the two smallest survivors (|-0.1|, 0.2) go.
        let r = prune(&w, &m, Magnitude, Layerwise, &[0.4], 0).unwrap();
        assert_eq!(r.layers[0], vec![T, F, T, F, F, T]);
        // 5 × 0.5 = 2.5 rounds up to 3: 0.1, 0.2, 0.3 go.
        let r = prune(&w, &m, Magnitude, Layerwise, &[0.5], 0).unwrap();
        assert_eq!(r.layers[0], vec![T, F, F, F, F, T]);
        assert!(r.is_subset_of(&m));
        assert_eq!(removal_count(0.5, 5), 3);
        assert_eq!(removal_count(0.25, 6), 2); // 1.5 -> 2
        assert_eq!(removal_count(0.2, 12), 2); // 2.4 -> 2
        assert_eq!(removal_count(1.0, 7), 7);
    }

    #[test]
    fn ties_go_by_lower_index_first() {
        let w = weights(&[&[0.2, 0.1, -0.1, 0.1, 0.3]]);
        let r = prune(&w, &dense(&w), Magnitude, Layerwise, &[0.4], 0).unwrap();
        assert_eq!(r.layers[0], vec![T, F, F, T, T]);
        // Exactly 1 of 3 equal weights when the count needs it.
        let w = weights(&[&[0.1, 0.1, 0.1]]);
        let r = prune(&w, &dense(&w), Magnitude, Layerwise, &[0.34], 0).unwrap();
        assert_eq!(r.layers[0], vec![F, T, T]);
    }

    #[test]
    fn layerwise_rates_per_layer_and_extremes() {
        let w = weights(&[&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]]);
        let r = prune(&w, &dense(&w), Magnitude, Layerwise, &[0.5, 0.25], 0).unwrap();
        assert_eq!(r.layers, vec![vec![F, F, T, T], vec![T, T, T, F]]);
        let r = prune(&w, &dense(&w), Magnitude, Layerwise, &[0.0, 1.0], 0).unwrap();
        assert_eq!(r.layers, vec![vec![T; 4], vec![F; 4]]);
    }

    #[test]
    fn global_pools_layers_with_one_threshold() {
        let w = weights(&[&[0.1, 0.9, 0.2, 0.8], &[0.3, 0.05, 0.7, 0.6], &[0.01, 0.5]]);
        // 10 survivors × 0.5 = 5 smallest overall: 0.01, 0.05, 0.1, 0.2, 0.3.
        let r = prune(&w, &dense(&w), Magnitude, Global, &[0.5, 0.5, 0.5], 0).unwrap();
        assert_eq!(
            r.layers,
            vec![vec![F, T, F, T], vec![F, F, T, T], vec![F, T]]
        );
        // Output layer at its own rate: pooled 8 × 0.5 = 4 (0.05, 0.1, 0.2, 0.3),
        // output 2 × 0.25 = 0.5 -> 1 (0.01).
        let r = prune(&w, &dense(&w), Magnitude, Global, &[0.5, 0.5, 0.25], 0).unwrap();
        assert_eq!(
            r.layers,
            vec![vec![F, T, F, T], vec![F, F, T, T], vec![F, T]]
        );
        let r = prune(&w, &dense(&w), Magnitude, Global, &[0.5, 0.5, 0.0], 0).unwrap();
        assert_eq!(
            r.layers,
            vec![vec![F, T, F, T], vec![F, F, T, T], vec![T, T]]
        );
        // A single rate applies to all layers, pooled.
        let r1 = prune(&w, &dense(&w), Magnitude, Global, &[0.5], 0).unwrap();
        assert_eq!(
            r1,
            prune(&w, &dense(&w), Magnitude, Global, &[0.5; 3], 0).unwrap()
        );
        // Hidden layers must share one rate.
        let e = prune(&w, &dense(&w), Magnitude, Global, &[0.5, 0.3, 0.5], 0).unwrap_err();
        assert!(e.to_string().contains("layer fc2 has rate 0.3"), "{e}");
        // A hidden layer at 0 stays out of the ranking: fc2 and the output pooled, 6 × 0.5 =
        // 3 smallest of them go (0.01, 0.05, 0.3); fc1 keeps its 0.1 and 0.2.
        let r = prune(&w, &dense(&w), Magnitude, Global, &[0.0, 0.5, 0.5], 0).unwrap();
        assert_eq!(r.layers, vec![vec![T; 4], vec![F, F, T, T], vec![F, T]]);
        let e = prune(&w, &dense(&w), Magnitude, Global, &[0.0, 0.5, 0.5, 0.4], 0).unwrap_err();
        assert!(e.to_string().contains("one rate per layer"), "{e}");
    }

    #[test]
    fn global_ignores_pruned_weights() {
        let w = weights(&[&[0.0, 0.0, 0.5, 0.6], &[0.4, 0.7]]);
        let m = Mask::new(vec![vec![F, F, T, T], vec![T, T]]);
        // 4 survivors × 0.5 = 2: 0.4 and 0.5; the zeros are not candidates.
        let r = prune(&w, &m, Magnitude, Global, &[0.5, 0.5], 0).unwrap();
        assert_eq!(r.layers, vec![vec![F, F, F, T], vec![F, T]]);
    }

    #[test]
    fn random_removes_exact_counts_among_survivors() {
        let vals: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let w = weights(&[&vals, &vals[..40]]);
        let mut m = dense(&w);
        for i in 0..20 {
            m.layers[0][i * 5] = false;
        }
        let r = prune(&w, &m, Random, Layerwise, &[0.5, 0.25], 9).unwrap();
        assert!(r.is_subset_of(&m));
        assert_eq!(r.layers[0].iter().filter(|&&k| k).count(), 40); // 80 - 40
        assert_eq!(r.layers[1].iter().filter(|&&k| k).count(), 30); // 40 - 10
        assert_eq!(
            r,
            prune(&w, &m, Random, Layerwise, &[0.5, 0.25], 9).unwrap()
        );
        assert_ne!(
            r,
            prune(&w, &m, Random, Layerwise, &[0.5, 0.25], 10).unwrap()
        );
        // Not the magnitude choice.
        assert_ne!(
            r,
            prune(&w, &m, Magnitude, Layerwise, &[0.5, 0.25], 9).unwrap()
        );
        let g = prune(&w, &m, Random, Global, &[0.5], 9).unwrap();
        assert_eq!(g.kept(), 60); // 120 survivors - 60
        assert!(g.is_subset_of(&m));
    }

    #[test]
    fn invalid_inputs() {
        let w = weights(&[&[1.0, 2.0]]);
        let m = dense(&w);
        assert!(
            prune(&w, &m, Magnitude, Layerwise, &[1.5], 0)
                .unwrap_err()
                .to_string()
                .contains("outside [0, 1]")
        );
        assert!(prune(&w, &m, Magnitude, Layerwise, &[-0.1], 0).is_err());
        assert!(prune(&w, &m, Magnitude, Layerwise, &[f64::NAN], 0).is_err());
        assert!(prune(&w, &m, Magnitude, Layerwise, &[0.1, 0.2], 0).is_err());
        let bad = Mask::new(vec![vec![T]]);
        assert!(matches!(
            prune(&w, &bad, Magnitude, Layerwise, &[0.5], 0),
            Err(NnError::Shape(_))
        ));
        let nan = weights(&[&[f32::NAN, 1.0]]);
        assert!(matches!(
            prune(&nan, &m, Magnitude, Layerwise, &[0.5], 0),
            Err(NnError::Diverged(_))
        ));
    }
}
