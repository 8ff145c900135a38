//! Teacher–student node matching (Tian et al. 2019): for each hidden layer and each teacher
//! node, the student node whose post-ReLU activation correlates best with it over a set of
//! inputs; the rank that winner had at initialisation (the "luck" diagnostic of the
//! reference's `compareCorrIndices`); and the fan-out norms of matched and unmatched student
//! nodes.
//!
//! Correlation is Pearson's over samples (the reference's `act2corrMat`): both activations are
//! mean-subtracted and the inner product divided by both norms. A node whose activation is
//! constant over the samples (a dead ReLU) has norm 0 and correlation 0 with everything (the
//! reference adds 1e-10 to the squared norms, which gives the same 0). Sums are in f64.

use serde::Serialize;

/// Activations of one layer: `n` samples × `nodes` values, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Acts<'a> {
    pub data: &'a [f32],
    pub nodes: usize,
}

impl Acts<'_> {
    fn samples(&self) -> usize {
        self.data.len().checked_div(self.nodes).unwrap_or(0)
    }
}

/// Mean-subtracted, unit-norm columns (`nodes` vectors of `n` values); a constant column
/// stays all zero.
fn standardised(a: Acts) -> Vec<Vec<f64>> {
    let n = a.samples();
    (0..a.nodes)
        .map(|j| {
            let col: Vec<f64> = (0..n).map(|s| a.data[s * a.nodes + j] as f64).collect();
            let mean = col.iter().sum::<f64>() / n.max(1) as f64;
            let centred: Vec<f64> = col.iter().map(|v| v - mean).collect();
            let norm = centred.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                centred.iter().map(|v| v / norm).collect()
            } else {
                vec![0.0; n]
            }
        })
        .collect()
}

/// Pearson correlations `corr[k][j]` of teacher node `k` with student node `j` over the
/// samples (both [`Acts`] hold the same samples).
pub fn correlations(teacher: Acts, student: Acts) -> Vec<Vec<f64>> {
    let t = standardised(teacher);
    let s = standardised(student);
    t.iter()
        .map(|tk| {
            s.iter()
                .map(|sj| tk.iter().zip(sj).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

/// The best student node of a row of correlations and its correlation (the first on ties).
pub fn best(row: &[f64]) -> (usize, f64) {
    row.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bj, bv), (j, &v)| {
            if v > bv { (j, v) } else { (bj, bv) }
        })
}

/// The 0-based rank of student node `j` when the row is sorted by descending correlation
/// (ties broken by index, as a stable sort would).
pub fn rank(row: &[f64], j: usize) -> usize {
    row.iter()
        .enumerate()
        .filter(|&(i, &v)| v > row[j] || (v == row[j] && i < j))
        .count()
}

/// The L2 norm of each input node's outgoing weights in a linear layer stored `[in, out]`
/// (`nodes` = in).
pub fn fanout_norms(next_weight: &[f32], nodes: usize) -> Vec<f64> {
    let out = next_weight.len().checked_div(nodes).unwrap_or(0);
    (0..nodes)
        .map(|j| {
            next_weight[j * out..(j + 1) * out]
                .iter()
                .map(|&w| (w as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// One teacher node's match.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeMatch {
    pub teacher: usize,
    /// The best-correlated student node after training.
    pub student: usize,
    pub corr: f64,
    /// That student node's rank (0 = best) among all student nodes by correlation with this
    /// teacher node at initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_rank: Option<usize>,
    /// Its correlation at initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_corr: Option<f64>,
    /// The best correlation any student node had with this teacher node at initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_best: Option<f64>,
}

/// One hidden layer's matches and summaries.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerMatch {
    /// 1 = the lowest hidden layer.
    pub layer: usize,
    pub teacher_nodes: usize,
    pub student_nodes: usize,
    pub nodes: Vec<NodeMatch>,
    pub best_min: f64,
    pub best_mean: f64,
    pub best_max: f64,
    /// Mean of [`NodeMatch::init_rank`], and the fraction of winners ranked below 10 at init.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_rank_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_rank_lt10: Option<f64>,
    /// Mean over teacher nodes of the best correlation at initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_best_mean: Option<f64>,
    /// Distinct student nodes that win some teacher node.
    pub matched: usize,
    /// Mean fan-out norm (outgoing weights in the next layer) of the matched and of the
    /// other student nodes, and matched / unmatched (`None` when a side is empty).
    pub fanout_matched: Option<f64>,
    pub fanout_unmatched: Option<f64>,
    pub fanout_ratio: Option<f64>,
    /// Every student node's fan-out norm.
    pub student_fanout: Vec<f64>,
}

/// Matches one hidden layer. `init` holds the student's activations at initialisation on the
/// same samples; `fanout` the student's fan-out norms after training.
pub fn match_layer(
    layer: usize,
    teacher: Acts,
    student: Acts,
    init: Option<Acts>,
    fanout: Vec<f64>,
) -> LayerMatch {
    let corr = correlations(teacher, student);
    let init_corr = init.map(|i| correlations(teacher, i));
    let nodes: Vec<NodeMatch> = corr
        .iter()
        .enumerate()
        .map(|(k, row)| {
            let (j, c) = best(row);
            let at_init = init_corr.as_ref().map(|ic| &ic[k]);
            NodeMatch {
                teacher: k,
                student: j,
                corr: c,
                init_rank: at_init.map(|r| rank(r, j)),
                init_corr: at_init.map(|r| r[j]),
                init_best: at_init.map(|r| best(r).1),
            }
        })
        .collect();
    let t = nodes.len().max(1) as f64;
    let mean_of = |f: &dyn Fn(&NodeMatch) -> Option<f64>| -> Option<f64> {
        let v: Option<Vec<f64>> = nodes.iter().map(f).collect();
        v.map(|v| v.iter().sum::<f64>() / t)
    };
    let mut is_matched = vec![false; student.nodes];
    nodes.iter().for_each(|m| is_matched[m.student] = true);
    let side = |want: bool| -> Option<f64> {
        let v: Vec<f64> = fanout
            .iter()
            .zip(&is_matched)
            .filter(|&(_, &m)| m == want)
            .map(|(&f, _)| f)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (fm, fu) = (side(true), side(false));
    LayerMatch {
        layer,
        teacher_nodes: teacher.nodes,
        student_nodes: student.nodes,
        best_min: nodes.iter().map(|m| m.corr).fold(f64::INFINITY, f64::min),
        best_mean: nodes.iter().map(|m| m.corr).sum::<f64>() / t,
        best_max: nodes
            .iter()
            .map(|m| m.corr)
            .fold(f64::NEG_INFINITY, f64::max),
        init_rank_mean: mean_of(&|m| m.init_rank.map(|r| r as f64)),
        init_rank_lt10: mean_of(&|m| m.init_rank.map(|r| f64::from(u8::from(r < 10)))),
        init_best_mean: mean_of(&|m| m.init_best),
        matched: is_matched.iter().filter(|&&m| m).count(),
        fanout_matched: fm,
        fanout_unmatched: fu,
        fanout_ratio: fm.zip(fu).filter(|&(_, u)| u > 0.0).map(|(m, u)| m / u),
        student_fanout: fanout,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Teacher: 3 nodes over 4 samples; node 2 is constant (a dead unit).
    const TEACHER: [f32; 12] = [
        1.0, 0.0, 5.0, //
        2.0, 3.0, 5.0, //
        0.0, 1.0, 5.0, //
        4.0, 0.0, 5.0,
    ];

    #[test]
    fn permuted_duplicated_copy_matches_exactly() {
        // Student columns: [t1, 2·t0 + 1, t0, t2, 7 (constant)].
        let cols = |s: usize| {
            let t = &TEACHER[s * 3..s * 3 + 3];
            [t[1], 2.0 * t[0] + 1.0, t[0], t[2], 7.0]
        };
        let student: Vec<f32> = (0..4).flat_map(cols).collect();
        let t = Acts {
            data: &TEACHER,
            nodes: 3,
        };
        let s = Acts {
            data: &student,
            nodes: 5,
        };
        let c = correlations(t, s);
        // Teacher node 0 is student 1 (an affine copy) and student 2: both correlate 1; the
        // first wins.
        assert!((c[0][1] - 1.0).abs() < 1e-12 && (c[0][2] - 1.0).abs() < 1e-12);
        let fanout = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let m = match_layer(1, t, s, Some(s), fanout);
        assert_eq!(m.nodes[0].student, 1);
        assert!((m.nodes[0].corr - 1.0).abs() < 1e-6);
        assert_eq!(m.nodes[1].student, 0);
        assert!((m.nodes[1].corr - 1.0).abs() < 1e-6);
        // A constant teacher node correlates 0 with everything: the first student wins at 0.
        assert_eq!((m.nodes[2].student, m.nodes[2].corr), (0, 0.0));
        // Constant student columns correlate 0 too.
        assert_eq!(c[0][4], 0.0);
        assert_eq!(c[1][3], 0.0);
        // Init = final: every winner ranked first.
        assert!(m.nodes.iter().all(|n| n.init_rank == Some(0)));
        assert_eq!(m.init_rank_lt10, Some(1.0));
        // Matched students {0, 1}: fan-out (1 + 2)/2 against (3 + 4 + 5)/3.
        assert_eq!(m.matched, 2);
        assert_eq!(m.fanout_matched, Some(1.5));
        assert_eq!(m.fanout_unmatched, Some(4.0));
        assert_eq!(m.fanout_ratio, Some(0.375));
        assert_eq!(m.best_min, 0.0);
        assert!((m.best_max - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ranks_and_fanout_norms() {
        assert_eq!(rank(&[0.1, 0.9, 0.5, 0.9], 3), 1);
        assert_eq!(rank(&[0.1, 0.9, 0.5, 0.9], 1), 0);
        assert_eq!(rank(&[0.1, 0.9, 0.5, 0.9], 0), 3);
        assert_eq!(best(&[0.1, 0.9, 0.5, 0.9]), (1, 0.9));
        // [in = 2, out = 2]: node 0's outgoing weights (3, 4), node 1's (0, 0).
        assert_eq!(fanout_norms(&[3.0, 4.0, 0.0, 0.0], 2), vec![5.0, 0.0]);
    }
}
