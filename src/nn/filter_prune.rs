//! Structured pruning: whole conv filters by L1 norm (Li et al. 2017, "Pruning filters for
//! efficient ConvNets", as the Rethinking paper's L1-norm baseline uses it).
//!
//! A filter is dropped by masking, not by reshaping the network: its weights, and every
//! weight that reads its channel downstream (the next conv's input slice, or the rows of a
//! linear layer that read the flattened channel), become `false` in the mask, so the channel
//! carries nothing and costs no FLOPs in [`crate::nn::forward_flops`]. Which layers those are
//! comes from the model's layer program ([`crate::nn::program::Program::channel_groups`]);
//! a conv whose output feeds a residual sum or nothing prunable keeps all its filters.
//!
//! Per conv, `round(rate × surviving filters)` filters go (half up, as in
//! [`crate::nn::prune`]); a filter survives while any of its weights is kept, and its norm is
//! the L1 norm of its kept weights. Ties go to the lower filter index first.
//!
//! The filter's bias and the batch-norm scale and shift that follow it are masked by name
//! ([`Mask::extra`]), so the channel is zero before it is read, not only where it is read.

use super::prune::removal_count;
use super::{Mask, ModelSpec, NnError, Weights};

/// Filters of one conv before and after a round of filter pruning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiltersKept {
    pub conv: String,
    pub before: usize,
    pub after: usize,
}

/// Prunes filters of every conv that can drop channels, at `rates[k]` for prunable parameter
/// `k` (the conv's weight; rates of other parameters are ignored). Returns the new mask (a
/// subset of `mask`) and the filter counts of each conv pruned.
pub fn prune_filters(
    spec: &ModelSpec,
    weights: &Weights,
    mask: &Mask,
    rates: &[f64],
) -> Result<(Mask, Vec<FiltersKept>), NnError> {
    weights.check(spec)?;
    mask.check(spec)?;
    let names = spec.prunable();
    if rates.len() != names.len() {
        return Err(NnError::Invalid(format!(
            "filter pruning needs one rate per layer ({}), got {}",
            names.len(),
            rates.len()
        )));
    }
    let program = spec.program().map_err(NnError::Invalid)?;
    let prunable: Vec<_> = weights.prunable().collect();
    let index = |param: &str| names.iter().position(|n| n == param);
    let params = spec.params();
    let lengths: std::collections::BTreeMap<&str, usize> =
        params.iter().map(|p| (p.name.as_str(), p.len())).collect();
    let mut out = mask.clone();
    let mut report = Vec::new();
    for group in program.channel_groups() {
        let Some(k) = index(&format!("{}.weight", group.conv)) else {
            continue;
        };
        let rate = rates[k];
        if !(0.0..=1.0).contains(&rate) {
            return Err(NnError::Invalid(format!(
                "pruning rate {rate} for layer {} is outside [0, 1]",
                group.conv
            )));
        }
        let per_filter = prunable[k].data.len() / group.channels;
        let filter = |j: usize| j * per_filter..(j + 1) * per_filter;
        let alive: Vec<usize> = (0..group.channels)
            .filter(|&j| out.layers[k][filter(j)].iter().any(|&keep| keep))
            .collect();
        let drop = removal_count(rate, alive.len());
        if drop == 0 {
            continue;
        }
        let norm = |j: usize| -> f64 {
            prunable[k].data[filter(j)]
                .iter()
                .zip(&out.layers[k][filter(j)])
                .filter(|(_, keep)| **keep)
                .map(|(w, _)| w.abs() as f64)
                .sum()
        };
        let mut ranked: Vec<(f64, usize)> = alive.iter().map(|&j| (norm(j), j)).collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(_, j) in &ranked[..drop] {
            for (param, axis, block) in &group.slices {
                match index(param) {
                    Some(p) => zero_slice(
                        &mut out.layers[p],
                        &prunable[p].shape,
                        *axis,
                        j * block,
                        *block,
                    ),
                    // A bias or batch-norm entry: masked by name, so the dropped channel
                    // outputs exactly zero (not a constant shift) and its entries stay 0 in
                    // the checkpoint instead of decaying under weight decay.
                    None => {
                        let len = lengths.get(param.as_str()).copied().ok_or_else(|| {
                            NnError::Invalid(format!("the model has no parameter `{param}`"))
                        })?;
                        let entry = out
                            .extra
                            .entry(param.clone())
                            .or_insert_with(|| vec![true; len]);
                        zero_slice(entry, &[len], *axis, j * block, *block);
                    }
                }
            }
        }
        report.push(FiltersKept {
            conv: group.conv.clone(),
            before: alive.len(),
            after: alive.len() - drop,
        });
    }
    Ok((out, report))
}

/// Sets to `false` the elements whose coordinate along `axis` is in `start..start + len`.
fn zero_slice(mask: &mut [bool], shape: &[usize], axis: usize, start: usize, len: usize) {
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let along = shape[axis];
    for o in 0..outer {
        let base = (o * along + start) * inner;
        mask[base..base + len * inner].fill(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, init_weights};

    /// conv1 (1→4, 3×3) → pool → conv2 (4→2) → flatten (2×2×2) → fc (8→3).
    fn net() -> (ModelSpec, Weights) {
        let spec: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[4,"M",2],"fc":[],"classes":3,"input":[1,4,4]}"#,
        )
        .unwrap();
        let mut w = init_weights(&spec, InitScheme::KaimingNormal, 0);
        // conv1 filter j has every weight equal to (j + 1) · sign: L1 norms 9, 18, 27, 36,
        // except filter 2, made the smallest.
        for (j, v) in [1.0f32, 2.0, 0.1, 4.0].iter().enumerate() {
            w.params[0].data[j * 9..(j + 1) * 9].fill(if j % 2 == 0 { *v } else { -*v });
        }
        (spec, w)
    }

    #[test]
    fn drops_the_smallest_filters_and_what_reads_them() {
        let (spec, w) = net();
        let names = spec.prunable();
        assert_eq!(names, ["conv1.weight", "conv2.weight", "fc1.weight"]);
        let dense = Mask::dense(&spec);
        let (m, report) = prune_filters(&spec, &w, &dense, &[0.5, 0.5, 0.5]).unwrap();
        // conv1 loses filters 2 (L1 0.9) and 0 (L1 9); conv2 loses its smaller filter.
        let kept_filters = |k: usize, per: usize| -> Vec<bool> {
            m.layers[k]
                .chunks(per)
                .map(|f| f.iter().any(|&x| x))
                .collect()
        };
        assert_eq!(kept_filters(0, 9), [false, true, false, true]);
        let kept = |conv: &str, before, after| FiltersKept {
            conv: conv.into(),
            before,
            after,
        };
        assert_eq!(report[0], kept("conv1", 4, 2));
        // conv2 weight [2, 4, 3, 3]: input channels 0 and 2 cut for both outputs.
        for o in 0..2 {
            for c in 0..4 {
                let slice = &m.layers[1][(o * 4 + c) * 9..(o * 4 + c + 1) * 9];
                let conv2_filter_dropped = !kept_filters(1, 36)[o];
                let want = !(c == 0 || c == 2 || conv2_filter_dropped);
                assert!(slice.iter().all(|&x| x == want), "o {o} c {c}");
            }
        }
        assert_eq!(kept_filters(1, 36).iter().filter(|&&x| x).count(), 1);
        // fc1 weight [8, 3] (burn layout): the dropped conv2 channel's 4 rows are cut.
        let dropped = kept_filters(1, 36).iter().position(|&x| !x).unwrap();
        for row in 0..8 {
            let cut = row / 4 == dropped;
            assert!(
                m.layers[2][row * 3..row * 3 + 3].iter().all(|&x| x != cut),
                "row {row}"
            );
        }
        // The dropped filters' biases are masked by name; nothing else is.
        assert_eq!(m.extra["conv1.bias"], [false, true, false, true]);
        assert_eq!(m.extra["conv2.bias"], kept_filters(1, 36));
        assert_eq!(m.extra.len(), 2);
        assert!(m.is_subset_of(&dense));
        // A second round counts only surviving filters: 2 of conv1 → 1.
        let (m2, report2) = prune_filters(&spec, &w, &m, &[0.5, 0.0, 0.0]).unwrap();
        assert_eq!(report2[0], kept("conv1", 2, 1));
        assert!(m2.is_subset_of(&m));
        // FLOPs fall with the dropped channels.
        assert!(crate::nn::forward_flops(&spec, &m2) < crate::nn::forward_flops(&spec, &m));
    }

    #[test]
    fn residual_outputs_keep_their_filters() {
        // In ResNet-8 only each block's first conv can drop filters (the second feeds a sum).
        let spec = ModelSpec::Resnet(crate::nn::arch::ResnetSpec::standard(8));
        let w = init_weights(&spec, InitScheme::KaimingNormal, 1);
        let rates = vec![0.5; spec.prunable().len()];
        let (m, report) = prune_filters(&spec, &w, &Mask::dense(&spec), &rates).unwrap();
        let pruned: Vec<&str> = report.iter().map(|r| r.conv.as_str()).collect();
        assert_eq!(
            pruned,
            ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
        );
        assert_eq!(m.density()[0], 1.0, "the stem feeds the first residual sum");
        assert_eq!(m.density()[1], 0.5);
        assert_eq!(
            m.density()[2],
            0.5,
            "the next conv loses the dropped input channels"
        );
        // Each pruned conv's batch norm loses the same channels, scale and shift alike.
        let masked: Vec<(&str, usize)> = m
            .extra
            .iter()
            .map(|(name, keep)| (name.as_str(), keep.iter().filter(|&&k| !k).count()))
            .collect();
        assert_eq!(
            masked,
            [
                ("layer1.0.bn1.bias", 8),
                ("layer1.0.bn1.weight", 8),
                ("layer2.0.bn1.bias", 16),
                ("layer2.0.bn1.weight", 16),
                ("layer3.0.bn1.bias", 32),
                ("layer3.0.bn1.weight", 32),
            ]
        );
        assert_eq!(m.extra["layer1.0.bn1.weight"], m.extra["layer1.0.bn1.bias"]);
    }
}
