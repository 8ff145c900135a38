//! The teacher–student setting of Tian et al. 2019 ("Luck Matters"): a fixed random ReLU
//! teacher MLP, Gaussian inputs labelled by it, and the MLP forward pass on the host that
//! gives both the labels and the hidden activations the correlation analysis compares.
//!
//! The teacher is drawn as the reference code draws it (luckmatter/model_gen.py `init_w`,
//! `normalize_layer`; theory_utils.py `init_separate_w`), for EVERY layer including the output
//! layer (`Model.init_w` and `Model.normalize` both visit `final_w`):
//! - each output node's weight row has entries from {−.5, −.25, 0, .25, .5}, rows distinct
//!   within a layer and never all zero;
//! - each bias is drawn from U(−.5, .5);
//! - each row is then divided by `‖row‖ + 1e-5` (the norm of the WEIGHT row, the reference's
//!   `w[i].pow(2).sum().sqrt() + 1e-5`), and so is that node's bias.

use std::collections::HashSet;

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::nn::init::fresh_buffers;
use crate::nn::program::ParamRole;
use crate::nn::weights::Param;
use crate::nn::{Mask, ModelSpec, NnError, Weights};
use crate::rng::{self, Domain};

/// The weight grid of the teacher's rows.
pub const TEACHER_GRID: [f32; 5] = [-0.5, -0.25, 0.0, 0.25, 0.5];

/// What the reference adds to a row's norm before dividing by it.
pub const TEACHER_NORM_EPS: f64 = 1e-5;

/// Why `widths` cannot make a teacher: fewer than two widths, a zero width, or a layer with
/// more nodes than there are distinct non-zero grid rows (5^fan_in − 1).
pub fn check_teacher_widths(widths: &[usize]) -> Result<(), String> {
    ModelSpec::mlp(widths.to_vec()).validate()?;
    for (k, pair) in widths.windows(2).enumerate() {
        let (fan_in, nodes) = (pair[0], pair[1]);
        // 5^fan_in − 1 distinct non-zero rows; beyond 5^27 the count exceeds u64 anyway.
        let rows = if fan_in >= 27 {
            u64::MAX
        } else {
            5u64.pow(fan_in as u32) - 1
        };
        if nodes as u64 > rows {
            return Err(format!(
                "layer fc{} has {nodes} nodes but only {rows} distinct non-zero rows of {fan_in} \
                 grid values exist; widen the layer below it or use fewer nodes",
                k + 1
            ));
        }
    }
    Ok(())
}

/// One teacher layer as drawn, before normalisation: each node's row as indices into
/// [`TEACHER_GRID`] (`rows[j][i]`: node j, input i) and each node's bias.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherDraw {
    pub rows: Vec<Vec<u8>>,
    pub bias: Vec<f64>,
}

/// The draws of every layer of the teacher of `widths` from `seed`. Layer `k` draws from its
/// own ChaCha8 stream of `(seed, k)`: first the rows (each redrawn until it is new and
/// non-zero), then the biases.
pub fn teacher_draws(widths: &[usize], seed: u64) -> Result<Vec<TeacherDraw>, NnError> {
    check_teacher_widths(widths).map_err(NnError::Invalid)?;
    Ok(widths
        .windows(2)
        .enumerate()
        .map(|(k, pair)| {
            let (d_in, d_out) = (pair[0], pair[1]);
            let mut rng = rng::stream(seed, Domain::TeacherWeights, k as u64);
            let mut seen: HashSet<Vec<u8>> = HashSet::new();
            seen.insert(vec![2; d_in]); // grid index 2 is 0: the all-zero row is excluded
            let rows = (0..d_out)
                .map(|_| {
                    loop {
                        let row: Vec<u8> = (0..d_in).map(|_| rng.random_range(0..5u8)).collect();
                        if seen.insert(row.clone()) {
                            break row;
                        }
                    }
                })
                .collect();
            let bias = (0..d_out).map(|_| rng.random_range(-0.5..0.5)).collect();
            TeacherDraw { rows, bias }
        })
        .collect())
}

/// The teacher MLP of `widths` (input, hidden…, output) drawn from `seed`: the draws of
/// [`teacher_draws`], each row and its bias divided by `‖row‖ + 1e-5` (see the module docs).
pub fn teacher_weights(widths: &[usize], seed: u64) -> Result<Weights, NnError> {
    let draws = teacher_draws(widths, seed)?;
    let spec = ModelSpec::mlp(widths.to_vec());
    let mut params = Vec::new();
    for (k, (pair, draw)) in widths.windows(2).zip(&draws).enumerate() {
        let (d_in, d_out) = (pair[0], pair[1]);
        // Storage is [in, out]: node j's row is the column j.
        let mut w = vec![0f32; d_in * d_out];
        let mut b = vec![0f32; d_out];
        for (j, row) in draw.rows.iter().enumerate() {
            let vals: Vec<f64> = row
                .iter()
                .map(|&g| TEACHER_GRID[g as usize] as f64)
                .collect();
            let norm = vals.iter().map(|v| v * v).sum::<f64>().sqrt() + TEACHER_NORM_EPS;
            for (i, v) in vals.iter().enumerate() {
                w[i * d_out + j] = (v / norm) as f32;
            }
            b[j] = (draw.bias[j] / norm) as f32;
        }
        let name = format!("fc{}", k + 1);
        params.push(Param {
            name: format!("{name}.weight"),
            shape: vec![d_in, d_out],
            role: ParamRole::LinearWeight,
            data: w,
        });
        params.push(Param {
            name: format!("{name}.bias"),
            shape: vec![d_out],
            role: ParamRole::Bias,
            data: b,
        });
    }
    let weights = Weights {
        params,
        buffers: fresh_buffers(&spec),
    };
    weights.check(&spec)?;
    Ok(weights)
}

/// `n` samples of `d` values from N(0, std²), row-major, from the ChaCha8 stream `stream` of
/// `seed` (so the train and eval inputs of one seed are independent).
pub fn gaussian_inputs(n: usize, d: usize, std: f64, seed: u64, stream: u64) -> Vec<f32> {
    let mut rng = rng::stream(seed, Domain::TeacherInputs, stream);
    let dist = Normal::new(0.0f64, std).expect("finite positive std");
    (0..n * d).map(|_| dist.sample(&mut rng) as f32).collect()
}

/// The outputs of every layer of an `mlp` model on `x` (`n` rows of `input_dim` values), on
/// the host in f32: hidden layers after their ReLU, the output layer as it is. The mask is
/// applied to the weights first. `layers[k]` is `n × width(k+1)`, row-major.
pub fn mlp_layer_outputs(
    spec: &ModelSpec,
    weights: &Weights,
    mask: &Mask,
    x: &[f32],
) -> Result<Vec<Vec<f32>>, NnError> {
    let ModelSpec::Mlp(mlp) = spec else {
        return Err(NnError::Invalid(format!(
            "this analysis takes an `mlp` model, not `{}`",
            spec.family()
        )));
    };
    weights.check(spec)?;
    let w = weights.masked(mask);
    let widths = &mlp.widths;
    let d0 = widths[0];
    if !x.len().is_multiple_of(d0) {
        return Err(NnError::Shape(format!(
            "{} input values are not rows of {d0}",
            x.len()
        )));
    }
    let n = x.len() / d0;
    let last = widths.len() - 2;
    let mut layers: Vec<Vec<f32>> = Vec::with_capacity(widths.len() - 1);
    for (k, pair) in widths.windows(2).enumerate() {
        let (d_in, d_out) = (pair[0], pair[1]);
        let wk = &w.params[2 * k].data;
        let bk = &w.params[2 * k + 1].data;
        let input: &[f32] = if k == 0 { x } else { &layers[k - 1] };
        let mut out = vec![0f32; n * d_out];
        for (row, o) in input.chunks_exact(d_in).zip(out.chunks_exact_mut(d_out)) {
            o.copy_from_slice(bk);
            for (i, &xi) in row.iter().enumerate() {
                if xi != 0.0 {
                    let wrow = &wk[i * d_out..(i + 1) * d_out];
                    for (oj, &wij) in o.iter_mut().zip(wrow) {
                        *oj += xi * wij;
                    }
                }
            }
            if k < last {
                o.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        layers.push(out);
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_rows_are_distinct_grid_rows_of_norm_one() {
        let widths = [20, 10, 15, 20, 25, 100];
        let w = teacher_weights(&widths, 3).unwrap();
        assert_eq!(w, teacher_weights(&widths, 3).unwrap());
        assert_ne!(w, teacher_weights(&widths, 4).unwrap());
        let draws = teacher_draws(&widths, 3).unwrap();
        for (k, (pair, draw)) in widths.windows(2).zip(&draws).enumerate() {
            let (d_in, d_out) = (pair[0], pair[1]);
            // Before normalisation: grid rows, distinct, none all zero; biases in [−.5, .5).
            let distinct: HashSet<&Vec<u8>> = draw.rows.iter().collect();
            assert_eq!((draw.rows.len(), distinct.len()), (d_out, d_out));
            assert!(
                draw.rows
                    .iter()
                    .all(|r| r.len() == d_in && r.iter().all(|&g| g < 5))
            );
            assert!(draw.rows.iter().all(|r| r.iter().any(|&g| g != 2)));
            assert!(draw.bias.iter().all(|b| (-0.5..0.5).contains(b)));
            let (wk, bk) = (&w.params[2 * k].data, &w.params[2 * k + 1].data);
            for (j, row) in draw.rows.iter().enumerate() {
                let vals: Vec<f64> = row
                    .iter()
                    .map(|&g| TEACHER_GRID[g as usize] as f64)
                    .collect();
                let n = vals.iter().map(|v| v * v).sum::<f64>().sqrt() + TEACHER_NORM_EPS;
                for (i, v) in vals.iter().enumerate() {
                    assert_eq!(wk[i * d_out + j], (v / n) as f32);
                }
                assert_eq!(bk[j], (draw.bias[j] / n) as f32);
                // After it: every weight row has norm 1 (up to the reference's 1e-5).
                let norm = (0..d_in)
                    .map(|i| (wk[i * d_out + j] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "layer {k} node {j}: norm {norm}");
            }
        }
    }

    #[test]
    fn impossible_widths_are_refused() {
        // One input: only 4 non-zero rows exist.
        let e = check_teacher_widths(&[1, 5, 2]).unwrap_err();
        assert!(e.contains("fc1 has 5 nodes but only 4 distinct"), "{e}");
        assert!(check_teacher_widths(&[1, 4, 2]).is_ok());
        assert!(teacher_weights(&[3], 0).is_err());
    }

    #[test]
    fn host_forward_matches_a_hand_computation() {
        // fc1: 2 → 2 with ReLU, fc2: 2 → 1.
        let spec = ModelSpec::mlp(vec![2, 2, 1]);
        let w = Weights {
            params: vec![
                Param {
                    name: "fc1.weight".into(),
                    shape: vec![2, 2],
                    role: ParamRole::LinearWeight,
                    // [in, out]: node 0 = x0 − x1, node 1 = 2·x1
                    data: vec![1.0, 0.0, -1.0, 2.0],
                },
                Param {
                    name: "fc1.bias".into(),
                    shape: vec![2],
                    role: ParamRole::Bias,
                    data: vec![0.5, -1.0],
                },
                Param {
                    name: "fc2.weight".into(),
                    shape: vec![2, 1],
                    role: ParamRole::LinearWeight,
                    data: vec![1.0, 3.0],
                },
                Param {
                    name: "fc2.bias".into(),
                    shape: vec![1],
                    role: ParamRole::Bias,
                    data: vec![-2.0],
                },
            ],
            buffers: vec![],
        };
        let out = mlp_layer_outputs(&spec, &w, &Mask::dense(&spec), &[1.0, 2.0, 3.0, 0.0]).unwrap();
        // Sample (1, 2): h = relu(1 − 2 + .5, 4 − 1) = (0, 3); y = 9 − 2 = 7.
        // Sample (3, 0): h = relu(3.5, −1) = (3.5, 0); y = 3.5 − 2 = 1.5.
        assert_eq!(out, vec![vec![0.0, 3.0, 3.5, 0.0], vec![7.0, 1.5]]);
    }

    #[test]
    fn gaussian_inputs_are_seeded_and_scaled() {
        let a = gaussian_inputs(2000, 5, 10.0, 1, 0);
        assert_eq!(a, gaussian_inputs(2000, 5, 10.0, 1, 0));
        assert_ne!(a, gaussian_inputs(2000, 5, 10.0, 1, 1));
        let var = a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 10.0).abs() < 0.3, "std {}", var.sqrt());
    }
}
