//! Forward-pass cost of a (pruned) model.

use super::{Mask, ModelSpec};

/// Floating-point operations of one forward pass for one sample: per layer,
/// a multiply and an add per kept weight plus one add per bias.
/// Dense LeNet-300-100: 2 × 266,200 + 410 = 532,810. Activations are not counted.
pub fn forward_flops(spec: &ModelSpec, mask: &Mask) -> u64 {
    spec.layer_dims()
        .iter()
        .zip(&mask.layers)
        .map(|(&(_, out), m)| 2 * m.iter().filter(|&&k| k).count() as u64 + out as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_pruned() {
        let s = ModelSpec::lenet_300_100();
        let mut m = Mask::dense(&s);
        assert_eq!(forward_flops(&s, &m), 2 * 266_200 + 410);
        for k in m.layers[0].iter_mut().take(1000) {
            *k = false;
        }
        assert_eq!(forward_flops(&s, &m), 2 * 265_200 + 410);
    }
}
