//! The statistics pipe computes over a handful of values — claims' aggregates, a report's
//! replicates, a lesion study's summaries — in one place, so that a mean is the same sum in
//! the same order wherever it is shown, and the rounding of stored metrics in one spelling.

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The sample standard deviation (n − 1 in the denominator), 0 for one value; `None` for none.
pub fn sample_std(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    let n = values.len();
    Some(if n < 2 {
        0.0
    } else {
        (values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    })
}

/// A metric rounded to 4 decimals (weights remaining, densities).
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// A metric rounded to 6 decimals (lesion errors).
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_median_and_sample_std() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 4.0]), Some(2.5));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(sample_std(&[2.0, 4.0]), Some(2f64.sqrt()));
        assert_eq!(sample_std(&[7.0]), Some(0.0));
        assert_eq!(
            (mean(&[]), median(&[]), sample_std(&[])),
            (None, None, None)
        );
        assert_eq!(round4(0.123_456), 0.1235);
        assert_eq!(round6(0.123_456_78), 0.123_457);
    }
}
