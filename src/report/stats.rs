//! Replicates aggregated as mean ± standard deviation with their count.

use serde::Serialize;

/// Mean, sample standard deviation (n − 1 in the denominator; 0 for one value) and n.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agg {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Agg {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Agg> {
        Some(Agg {
            mean: crate::stats::mean(values)?,
            std: crate::stats::sample_std(values)?,
            n: values.len(),
        })
    }

    /// `97.12` for one value, `97.12 ± 0.15 (3)` for replicates; `fmt` formats each number.
    pub fn display(&self, fmt: impl Fn(f64) -> String) -> String {
        if self.n == 1 {
            fmt(self.mean)
        } else {
            format!("{} ± {} ({})", fmt(self.mean), fmt(self.std), self.n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sample_std_and_n() {
        let a = Agg::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(a.mean, 2.5);
        assert!((a.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(a.n, 4);
        assert_eq!(a.display(|x| format!("{x:.2}")), "2.50 ± 1.29 (4)");
        let one = Agg::of(&[0.5]).unwrap();
        assert_eq!(
            (one.std, one.display(|x| format!("{x}"))),
            (0.0, "0.5".to_string())
        );
        assert_eq!(Agg::of(&[]), None);
    }
}
