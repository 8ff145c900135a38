//! Householder QR with column pivoting, in f64, and the null space it reveals.
//!
//! RePr re-introduces dropped filters orthogonal to a set of vectors (the surviving filters and
//! the dropped filters' old values). Those directions are the orthogonal complement of the
//! rows' span: with `Aᵀ P = Q R` (A's rows are the vectors, P a column permutation that puts
//! the largest remaining column first, so that R's diagonal falls and reveals the rank r), the
//! columns `r..n` of the full `Q` are an orthonormal basis of that complement. Householder
//! reflections keep `Q` orthogonal to rounding error whatever the conditioning, which plain
//! Gram–Schmidt does not.

/// Orthonormal basis of the orthogonal complement of `span(rows)` in `R^dim`, as `dim - rank`
/// vectors of length `dim`. A row of another length is a programming error (panics).
///
/// The rank counts diagonal entries of R above `max(dim, rows) · ε · |R₀₀|` (NumPy's
/// `matrix_rank` tolerance), so rows that are numerically dependent count once.
pub fn null_space(rows: &[Vec<f64>], dim: usize) -> Vec<Vec<f64>> {
    let k = rows.len();
    for r in rows {
        assert_eq!(r.len(), dim, "null_space: row length");
    }
    // Aᵀ, column-major: column j is row j of A.
    let mut cols: Vec<Vec<f64>> = rows.to_vec();
    let mut reflectors: Vec<Vec<f64>> = Vec::new();
    let steps = k.min(dim);
    let mut first_diag = 0.0f64;
    let tol_factor = dim.max(k) as f64 * f64::EPSILON;
    let mut rank = 0;
    for j in 0..steps {
        // Pivot: the column with the largest norm below row j.
        let norm_below = |c: &Vec<f64>| c[j..].iter().map(|x| x * x).sum::<f64>();
        let (p, best) = (j..k)
            .map(|c| (c, norm_below(&cols[c])))
            .fold((j, -1.0), |a, b| if b.1 > a.1 { b } else { a });
        cols.swap(j, p);
        let alpha_abs = best.max(0.0).sqrt();
        if j == 0 {
            first_diag = alpha_abs;
        }
        if alpha_abs <= tol_factor * first_diag || alpha_abs == 0.0 {
            break;
        }
        // v = x + sign(x₀)‖x‖e₀ (no cancellation), H = I − 2vvᵀ/vᵀv.
        let x = &cols[j][j..];
        let sign = if x[0] >= 0.0 { 1.0 } else { -1.0 };
        let mut v = x.to_vec();
        v[0] += sign * alpha_abs;
        let vv: f64 = v.iter().map(|a| a * a).sum();
        for c in cols.iter_mut().skip(j) {
            reflect(&mut c[j..], &v, vv);
        }
        let mut full = vec![0.0; dim];
        full[j..].copy_from_slice(&v);
        reflectors.push(full);
        rank += 1;
    }
    // Q = H₀ H₁ … H_{r−1}; its column i is Q eᵢ, built by applying the reflectors in reverse.
    (rank..dim)
        .map(|i| {
            let mut e = vec![0.0; dim];
            e[i] = 1.0;
            for v in reflectors.iter().rev() {
                let vv: f64 = v.iter().map(|a| a * a).sum();
                reflect(&mut e, v, vv);
            }
            e
        })
        .collect()
}

/// `x ← (I − 2vvᵀ/vᵀv) x`.
fn reflect(x: &mut [f64], v: &[f64], vv: f64) {
    let dot: f64 = x.iter().zip(v).map(|(a, b)| a * b).sum();
    let s = 2.0 * dot / vv;
    for (a, b) in x.iter_mut().zip(v) {
        *a -= s * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// A deterministic pseudo-random row.
    fn row(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    fn check_basis(rows: &[Vec<f64>], basis: &[Vec<f64>]) {
        for (i, a) in basis.iter().enumerate() {
            for (j, b) in basis.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot(a, b) - want).abs() < 1e-12, "basis {i}·{j}");
            }
            for r in rows {
                assert!(dot(a, r).abs() < 1e-12, "basis {i} not orthogonal to a row");
            }
        }
    }

    #[test]
    fn complement_of_independent_rows() {
        let rows: Vec<Vec<f64>> = (0..5).map(|s| row(s, 12)).collect();
        let basis = null_space(&rows, 12);
        assert_eq!(basis.len(), 7);
        check_basis(&rows, &basis);
    }

    #[test]
    fn dependent_rows_count_once() {
        let a = row(1, 6);
        let b = row(2, 6);
        let c: Vec<f64> = a.iter().zip(&b).map(|(x, y)| 2.0 * x - 3.0 * y).collect();
        let rows = vec![a.clone(), b, c, a];
        let basis = null_space(&rows, 6);
        assert_eq!(basis.len(), 4, "rank 2 in R^6");
        check_basis(&rows, &basis);
    }

    #[test]
    fn axis_rows_and_edge_cases() {
        // e0 and e2 in R^3: the complement is ±e1.
        let basis = null_space(&[vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 5.0]], 3);
        assert_eq!(basis.len(), 1);
        assert!((basis[0][1].abs() - 1.0).abs() < 1e-15);
        // More rows than dimensions: nothing is left.
        let rows: Vec<Vec<f64>> = (0..5).map(|s| row(s, 4)).collect();
        assert!(null_space(&rows, 4).is_empty());
        // No rows, or only zero rows: the whole space.
        assert_eq!(null_space(&[], 3).len(), 3);
        let basis = null_space(&[vec![0.0; 3]], 3);
        assert_eq!(basis.len(), 3);
        check_basis(&[], &basis);
    }
}
