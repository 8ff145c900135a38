//! RePr (Prakash et al., CVPR 2019): rank conv filters by how much they overlap with the
//! other filters of their layer, drop the most overlapping ones for a while, then bring them
//! back orthogonal to what the network kept.
//!
//! * Overlap of filter f in a layer of J filters: flatten each filter, L2-normalise the rows
//!   (a zero filter stays zero), `P = |Ŵ Ŵᵀ − I|`, `O_f = Σ_j P[f, j] / J`. The diagonal of
//!   a non-zero filter adds nothing; a zero filter's adds 1.
//! * Ranking is global over the ranked layers: `round(p · candidates)` filters with the largest
//!   O go (half up), ties to the earlier layer, then the lower index. A filter already fully
//!   masked (pruned before) is not a candidate. A layer never loses its last candidate: a
//!   drop that would empty it is skipped and the next filter in the global order taken.
//! * Dropping masks the filter's weights, its bias and the batch-norm scale and shift that
//!   follow it ([`Mask::extra`]), so the channel outputs exactly zero while the rest trains.
//!   What reads the channel downstream is left alone (its gradient is zero while the channel
//!   is, and re-initialisation leaves it as it is, as the public re-implementation does).
//! * Re-introduction: per layer, an orthonormal basis of the null space of
//!   `[surviving filters now; dropped filters' values at drop time]` ([`qr`]); dropped
//!   filter i (ascending index) takes basis vector i, scaled by [`ReinitScale`]. When the basis
//!   has fewer vectors than dropped filters, the rest are drawn from U(±1/√fan_in) (seeded) and
//!   counted as fallbacks. Biases restart at 0; batch norm at scale 1, shift 0, running mean 0,
//!   running variance 1 (PyTorch's fresh layer).

pub mod qr;

use std::collections::BTreeSet;

use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use crate::nn::methods::repr::qr::null_space;
use crate::nn::program::{Op, Program, Shortcut};
use crate::nn::prune::removal_count;
use crate::nn::{Mask, ModelSpec, NnError, Weights};
use crate::rng::{self, Domain};

/// A convolution whose filters RePr can rank, with the parameters one of its filters owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvFilters {
    pub conv: String,
    pub filters: usize,
    /// Elements per filter: `c_in · k · k`.
    pub fan_in: usize,
    pub bias: Option<String>,
    /// The batch norm right after the conv, if any.
    pub batch_norm: Option<String>,
}

/// Every dense (non-depthwise) convolution, in program order, including those inside
/// residual blocks and projection shortcuts.
pub fn conv_layers(program: &Program) -> Vec<ConvFilters> {
    let mut out = Vec::new();
    collect_convs(&program.ops, &mut out);
    out
}

fn collect_convs(ops: &[Op], out: &mut Vec<ConvFilters>) {
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Conv {
                name,
                c_in,
                c_out,
                kernel,
                groups,
                bias,
                ..
            } if *groups == 1 => {
                let batch_norm = match ops.get(i + 1) {
                    Some(Op::BatchNorm { name: bn, .. }) => Some(bn.clone()),
                    _ => None,
                };
                out.push(ConvFilters {
                    conv: name.clone(),
                    filters: *c_out,
                    fan_in: c_in * kernel * kernel,
                    bias: bias.then(|| format!("{name}.bias")),
                    batch_norm,
                });
            }
            Op::Residual { body, shortcut, .. } => {
                collect_convs(body, out);
                if let Shortcut::Projection { ops } = shortcut {
                    collect_convs(ops, out);
                }
            }
            _ => {}
        }
    }
}

/// The overlap `O_f` of each of the `filters` rows of `weight` (row-major `[filters, fan_in]`).
pub fn orthogonality(weight: &[f32], filters: usize) -> Vec<f64> {
    let fan_in = weight.len() / filters.max(1);
    let rows: Vec<Vec<f64>> = (0..filters)
        .map(|f| {
            let r: Vec<f64> = weight[f * fan_in..(f + 1) * fan_in]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            if n > 0.0 {
                r.iter().map(|x| x / n).collect()
            } else {
                r
            }
        })
        .collect();
    (0..filters)
        .map(|f| {
            let sum: f64 = (0..filters)
                .map(|j| {
                    let d: f64 = rows[f].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
                    (d - if f == j { 1.0 } else { 0.0 }).abs()
                })
                .sum();
            sum / filters as f64
        })
        .collect()
}

/// One ranked layer: its filters' overlaps and which filters are candidates.
#[derive(Clone, Debug)]
pub struct RankedLayer {
    pub conv: String,
    pub overlap: Vec<f64>,
    pub candidate: Vec<bool>,
}

/// The filters to drop per layer (ascending indices, aligned with `layers`) and the layers
/// where a drop was skipped to keep the layer's last filter.
pub fn choose_drops(layers: &[RankedLayer], fraction: f64) -> (Vec<Vec<usize>>, Vec<String>) {
    let mut order: Vec<(f64, usize, usize)> = layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| {
            layer
                .overlap
                .iter()
                .enumerate()
                .filter(|(f, _)| layer.candidate[*f])
                .map(move |(f, &o)| (o, l, f))
        })
        .collect();
    let want = removal_count(fraction, order.len());
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut left: Vec<usize> = layers
        .iter()
        .map(|l| l.candidate.iter().filter(|&&c| c).count())
        .collect();
    let mut drops = vec![Vec::new(); layers.len()];
    let mut capped = BTreeSet::new();
    for (_, l, f) in order {
        if drops.iter().map(Vec::len).sum::<usize>() == want {
            break;
        }
        if left[l] <= 1 {
            capped.insert(layers[l].conv.clone());
            continue;
        }
        left[l] -= 1;
        drops[l].push(f);
    }
    for d in &mut drops {
        d.sort_unstable();
    }
    (drops, capped.into_iter().collect())
}

fn param_index(w: &Weights, name: &str) -> Result<usize, NnError> {
    w.params
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| NnError::Invalid(format!("the model has no parameter `{name}`")))
}

/// Index of `name` among the prunable parameters (the entries of [`Mask::layers`]).
fn mask_index(spec: &ModelSpec, name: &str) -> Result<usize, NnError> {
    spec.prunable()
        .iter()
        .position(|p| p == name)
        .ok_or_else(|| NnError::Invalid(format!("`{name}` is not a prunable parameter")))
}

/// The per-channel parameters (bias, batch-norm scale and shift) of a conv's filters.
fn channel_params(c: &ConvFilters) -> Vec<String> {
    let mut v: Vec<String> = c.bias.iter().cloned().collect();
    if let Some(bn) = &c.batch_norm {
        v.push(format!("{bn}.weight"));
        v.push(format!("{bn}.bias"));
    }
    v
}

/// `mask` with the given filters of `convs` dropped: their weights, bias and batch-norm
/// entries masked. `drops[i]` lists filters of `convs[i]`.
pub fn drop_mask(
    spec: &ModelSpec,
    mask: &Mask,
    convs: &[ConvFilters],
    drops: &[Vec<usize>],
) -> Result<Mask, NnError> {
    let mut out = mask.clone();
    let params = spec.params();
    for (c, d) in convs.iter().zip(drops) {
        if d.is_empty() {
            continue;
        }
        let k = mask_index(spec, &format!("{}.weight", c.conv))?;
        for &f in d {
            out.layers[k][f * c.fan_in..(f + 1) * c.fan_in].fill(false);
        }
        for name in channel_params(c) {
            let len = params
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.len())
                .ok_or_else(|| NnError::Invalid(format!("the model has no parameter `{name}`")))?;
            let entry = out.extra.entry(name).or_insert_with(|| vec![true; len]);
            for &f in d {
                entry[f] = false;
            }
        }
    }
    Ok(out)
}

/// How a unit null-space vector becomes a filter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReinitScale {
    /// Clamp each element to ±1/√fan_in, as the public re-implementation (siahuat0727/RePr)
    /// does. Elements of a unit vector larger than the bound are cut, so the filter is only
    /// nearly orthogonal to the others (the stage reports how nearly).
    Clamp,
    /// Multiply the unit vector so that its largest element is 1/√fan_in: the same bound as
    /// `clamp`, exact orthogonality kept.
    MaxAbs,
}

/// What re-introduction did in one layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReinitLayer {
    pub conv: String,
    pub filters: Vec<usize>,
    /// Dimension of the null space found (fan_in − rank of the stacked matrix).
    pub null_dim: usize,
    /// Filters drawn from U(±1/√fan_in) because the null space was too small.
    pub fallback: usize,
    /// Largest |cosine| between a re-introduced filter (as written) and a surviving filter
    /// or a dropped filter's old value; 0 when nothing came from the null space.
    pub max_abs_cos: f64,
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

/// Re-introduces the dropped filters of `now` (the model trained while they were dropped):
/// new values from the null space of `[survivors now; old values in at_drop]`, bias 0, batch
/// norm reset. `seed` draws the fallback filters. The mask is not touched here.
pub fn reintroduce(
    now: &Weights,
    at_drop: &Weights,
    convs: &[ConvFilters],
    drops: &[Vec<usize>],
    scale: ReinitScale,
    seed: u64,
) -> Result<(Weights, Vec<ReinitLayer>), NnError> {
    let mut out = now.clone();
    let mut report = Vec::new();
    for (l, (c, d)) in convs.iter().zip(drops).enumerate() {
        if d.is_empty() {
            continue;
        }
        let k = param_index(now, &format!("{}.weight", c.conv))?;
        let row = |w: &Weights, f: usize| -> Vec<f64> {
            w.params[k].data[f * c.fan_in..(f + 1) * c.fan_in]
                .iter()
                .map(|&x| x as f64)
                .collect()
        };
        let mut rows: Vec<Vec<f64>> = (0..c.filters)
            .filter(|f| !d.contains(f))
            .map(|f| row(now, f))
            .collect();
        rows.extend(d.iter().map(|&f| row(at_drop, f)));
        let basis = null_space(&rows, c.fan_in);
        let bound = 1.0 / (c.fan_in as f64).sqrt();
        let mut rng = rng::stream(seed, Domain::ReprFilters, l as u64);
        let uniform = Uniform::new_inclusive(-bound, bound).expect("a positive bound");
        let mut fallback = 0;
        let mut max_abs_cos = 0.0f64;
        for (i, &f) in d.iter().enumerate() {
            let values: Vec<f64> = match basis.get(i) {
                Some(v) => {
                    let v: Vec<f64> = match scale {
                        ReinitScale::Clamp => v.iter().map(|x| x.clamp(-bound, bound)).collect(),
                        ReinitScale::MaxAbs => {
                            let m = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                            v.iter().map(|x| x * bound / m).collect()
                        }
                    };
                    let u = unit(&v);
                    for r in &rows {
                        let cos: f64 = u.iter().zip(&unit(r)).map(|(a, b)| a * b).sum();
                        max_abs_cos = max_abs_cos.max(cos.abs());
                    }
                    v
                }
                None => {
                    fallback += 1;
                    (0..c.fan_in).map(|_| uniform.sample(&mut rng)).collect()
                }
            };
            for (dst, x) in out.params[k].data[f * c.fan_in..(f + 1) * c.fan_in]
                .iter_mut()
                .zip(values)
            {
                *dst = x as f32;
            }
        }
        if let Some(b) = &c.bias {
            let bi = param_index(now, b)?;
            for &f in d {
                out.params[bi].data[f] = 0.0;
            }
        }
        if let Some(bn) = &c.batch_norm {
            for (suffix, value) in [("weight", 1.0), ("bias", 0.0)] {
                let i = param_index(now, &format!("{bn}.{suffix}"))?;
                for &f in d {
                    out.params[i].data[f] = value;
                }
            }
            for (suffix, value) in [("running_mean", 0.0), ("running_var", 1.0)] {
                let name = format!("{bn}.{suffix}");
                if let Some(b) = out.buffers.iter_mut().find(|b| b.name == name) {
                    for &f in d {
                        b.data[f] = value;
                    }
                }
            }
        }
        report.push(ReinitLayer {
            conv: c.conv.clone(),
            filters: d.clone(),
            null_dim: basis.len(),
            fallback,
            max_abs_cos,
        });
    }
    Ok((out, report))
}

/// `mask` (the trained model's) with the dropped filters' entries put back as `before` (the
/// mask at drop time) had them; per-channel entries that end up all kept are removed, so a
/// model dense before the drop is dense again.
pub fn restore_mask(
    spec: &ModelSpec,
    mask: &Mask,
    before: &Mask,
    convs: &[ConvFilters],
    drops: &[Vec<usize>],
) -> Result<Mask, NnError> {
    let mut out = mask.clone();
    for (c, d) in convs.iter().zip(drops) {
        let k = mask_index(spec, &format!("{}.weight", c.conv))?;
        for &f in d {
            let r = f * c.fan_in..(f + 1) * c.fan_in;
            out.layers[k][r.clone()].copy_from_slice(&before.layers[k][r]);
        }
        for name in channel_params(c) {
            if let Some(entry) = out.extra.get_mut(&name) {
                for &f in d {
                    entry[f] = before.extra.get(&name).is_none_or(|b| b[f]);
                }
            }
        }
    }
    out.extra.retain(|_, m| m.iter().any(|&keep| !keep));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{InitScheme, init_weights};

    fn close(a: &[f64], b: &[f64]) -> bool {
        // f32 inputs: equal to f32 rounding.
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7)
    }

    #[test]
    fn overlap_of_orthogonal_and_identical_filters() {
        // Three orthogonal filters in R^3 (scaled differently): no overlap at all.
        let w = [2.0f32, 0.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.5];
        assert!(close(&orthogonality(&w, 3), &[0.0, 0.0, 0.0]));
        // Filters 0 and 1 identical, filter 2 orthogonal to both: P[0,1] = P[1,0] = 1, so
        // O = (1/3, 1/3, 0).
        let w = [1.0f32, 1.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 7.0];
        assert!(close(&orthogonality(&w, 3), &[1.0 / 3.0, 1.0 / 3.0, 0.0]));
        // At 60°: cos = 1/2 between filters 0 and 1 of two.
        let w = [1.0f32, 0.0, 0.5, 0.75f32.sqrt()];
        assert!(close(&orthogonality(&w, 2), &[0.25, 0.25]));
        // A zero filter: its own diagonal |0 − 1| = 1, nothing with the others.
        let w = [0.0f32, 0.0, 1.0, 0.0];
        assert!(close(&orthogonality(&w, 2), &[0.5, 0.0]));
    }

    fn layer(conv: &str, overlap: Vec<f64>) -> RankedLayer {
        let n = overlap.len();
        RankedLayer {
            conv: conv.into(),
            overlap,
            candidate: vec![true; n],
        }
    }

    #[test]
    fn global_ranking_takes_the_largest_overlaps() {
        let layers = [
            layer("conv2", vec![0.1, 0.9, 0.3, 0.8]),
            layer("conv3", vec![0.85, 0.2, 0.9, 0.05]),
        ];
        // round(0.3 · 8) = 2: the two 0.9s, the earlier layer first on the tie.
        let (d, capped) = choose_drops(&layers, 0.3);
        assert_eq!(d, vec![vec![1], vec![2]]);
        assert!(capped.is_empty());
        // round(0.5 · 8) = 4: 0.9, 0.9, 0.85, 0.8.
        let (d, _) = choose_drops(&layers, 0.5);
        assert_eq!(d, vec![vec![1, 3], vec![0, 2]]);
        // Non-candidates never go, and do not count.
        let mut l = layers.clone();
        l[0].candidate[1] = false;
        let (d, _) = choose_drops(&l, 0.3);
        assert_eq!(
            d,
            vec![vec![], vec![0, 2]],
            "round(0.3 · 7) = 2 → 0.9, 0.85"
        );
    }

    #[test]
    fn a_layer_keeps_its_last_filter() {
        let layers = [layer("a", vec![0.9, 0.8]), layer("b", vec![0.1, 0.2, 0.3])];
        // round(0.6 · 5) = 3 would take both of `a`: its second is skipped, b's 0.3 taken.
        let (d, capped) = choose_drops(&layers, 0.6);
        assert_eq!(d, vec![vec![0], vec![1, 2]]);
        assert_eq!(capped, ["a"]);
    }

    fn cnn() -> (ModelSpec, Weights) {
        let spec: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[4,"M",3,6],"fc":[],"classes":3,"input":[1,4,4],"batch_norm":true}"#,
        )
        .unwrap();
        let w = init_weights(&spec, InitScheme::KaimingNormal, 3);
        (spec, w)
    }

    #[test]
    fn conv_layers_know_their_channel_parameters() {
        let (spec, _) = cnn();
        let convs = conv_layers(&spec.program().unwrap());
        let names: Vec<(&str, usize, usize)> = convs
            .iter()
            .map(|c| (c.conv.as_str(), c.filters, c.fan_in))
            .collect();
        assert_eq!(names, [("conv1", 4, 9), ("conv2", 3, 36), ("conv3", 6, 27)]);
        assert_eq!(convs[1].batch_norm.as_deref(), Some("bn2"));
    }

    #[test]
    fn null_space_reinit_is_orthogonal_and_falls_back_when_too_small() {
        let (spec, w) = cnn();
        let convs = conv_layers(&spec.program().unwrap());
        let before = Mask::dense(&spec);
        // conv1: fan-in 9, 4 filters, drop 2 → 4 rows, null space 5: enough.
        // conv3: fan-in 27, 6 filters, drop 3 → 6 rows, null space 21: enough.
        // conv2 (fan-in 36 ≥ 3 rows) is not touched.
        let drops = vec![vec![0, 2], vec![], vec![1, 4, 5]];
        let mask = drop_mask(&spec, &before, &convs, &drops).unwrap();
        let dropped = w.masked(&mask);
        assert!(dropped.params[0].data[..9].iter().all(|&x| x == 0.0));
        // Pretend training moved the survivors.
        let mut now = dropped.clone();
        for p in &mut now.params {
            for x in &mut p.data {
                if *x != 0.0 {
                    *x *= 1.5;
                }
            }
        }
        for scale in [ReinitScale::MaxAbs, ReinitScale::Clamp] {
            let (out, report) = reintroduce(&now, &w, &convs, &drops, scale, 7).unwrap();
            assert_eq!(report.len(), 2);
            assert!(report.iter().all(|r| r.fallback == 0));
            assert_eq!((report[0].null_dim, report[1].null_dim), (5, 21));
            if scale == ReinitScale::MaxAbs {
                assert!(report.iter().all(|r| r.max_abs_cos < 1e-5), "{report:?}");
            }
            for (c, d) in convs.iter().zip(&drops) {
                let k = out
                    .params
                    .iter()
                    .position(|p| p.name == format!("{}.weight", c.conv));
                let data = &out.params[k.unwrap()].data;
                let row = |src: &[f32], f: usize| -> Vec<f64> {
                    src[f * c.fan_in..(f + 1) * c.fan_in]
                        .iter()
                        .map(|&x| x as f64)
                        .collect()
                };
                let bound = 1.0 / (c.fan_in as f64).sqrt() + 1e-7;
                for &f in d {
                    let new = row(data, f);
                    assert!(new.iter().all(|x| x.abs() <= bound));
                    if scale == ReinitScale::MaxAbs {
                        // Orthogonal to every survivor now and to every dropped filter's
                        // value at drop time.
                        let old = &w.params[k.unwrap()].data;
                        let u = unit(&new);
                        let mut others: Vec<Vec<f64>> = (0..c.filters)
                            .filter(|g| !d.contains(g))
                            .map(|g| row(data, g))
                            .collect();
                        others.extend(d.iter().map(|&g| row(old, g)));
                        for o in &others {
                            let cos: f64 = u.iter().zip(&unit(o)).map(|(a, b)| a * b).sum();
                            assert!(cos.abs() < 1e-5, "{} filter {f}: cos {cos}", c.conv);
                        }
                    }
                }
            }
            // Batch norm of the re-introduced filters restarts at 1 / 0.
            let bn3w = out.params.iter().find(|p| p.name == "bn3.weight").unwrap();
            let bn3b = out.params.iter().find(|p| p.name == "bn3.bias").unwrap();
            for f in [1, 4, 5] {
                assert_eq!((bn3w.data[f], bn3b.data[f]), (1.0, 0.0));
            }
        }
        // A layer too narrow for a null space: conv1 with fan-in 9 and 12 filters (more rows
        // than dimensions, like RePr's conv1 with fan-in 27 and 32 filters).
        let spec: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[12,"M",3],"fc":[],"classes":3,"input":[1,4,4]}"#,
        )
        .unwrap();
        let w = init_weights(&spec, InitScheme::KaimingNormal, 5);
        let convs = conv_layers(&spec.program().unwrap());
        let drops = vec![vec![0, 5, 11], vec![]];
        let mask = drop_mask(&spec, &Mask::dense(&spec), &convs, &drops).unwrap();
        let now = w.masked(&mask);
        let (out, report) = reintroduce(&now, &w, &convs, &drops, ReinitScale::Clamp, 1).unwrap();
        // 12 rows in R^9: the null space is empty, every dropped filter falls back to U(±1/3).
        assert_eq!((report[0].null_dim, report[0].fallback), (0, 3));
        for f in [0, 5, 11] {
            let r = &out.params[0].data[f * 9..(f + 1) * 9];
            assert!(r.iter().all(|x| x.abs() <= 1.0 / 3.0 + 1e-7) && r.iter().any(|&x| x != 0.0));
        }
        assert_eq!(
            out.params[1].data[0], 0.0,
            "bias of a re-introduced filter is 0"
        );
        // The mask comes back dense.
        let back = restore_mask(&spec, &mask, &Mask::dense(&spec), &convs, &drops).unwrap();
        assert_eq!(back, Mask::dense(&spec));
    }
}
