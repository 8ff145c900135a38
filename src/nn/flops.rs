//! Forward-pass cost of a (pruned) model.

use super::{Mask, ModelSpec};

/// Floating-point operations of one forward pass for one sample: a multiply and an add per
/// kept weight application (a conv weight is applied at every output position) plus one add
/// per bias element applied; activations, batch norm and pooling are not counted (see
/// [`crate::nn::program::Program::flops`]). Dense LeNet-300-100: 2 × 266,200 + 410 = 532,810.
pub fn forward_flops(spec: &ModelSpec, mask: &Mask) -> u64 {
    let Ok(program) = spec.program() else {
        return 0;
    };
    let kept: Vec<(String, usize)> = spec
        .prunable()
        .into_iter()
        .zip(&mask.layers)
        .map(|(name, m)| (name, m.iter().filter(|&&k| k).count()))
        .collect();
    program.flops(&|name| kept.iter().find(|(n, _)| n == name).map_or(0, |(_, k)| *k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::arch::ResnetSpec;

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

    #[test]
    fn conv_weights_count_once_per_output_position() {
        // ResNet-20: 40,551,040 multiply-adds (summed by hand over its 19 convs at 32², 16²
        // and 8² positions and the 64×10 classifier), plus the classifier's 10 bias adds.
        let s = ModelSpec::Resnet(ResnetSpec::standard(20));
        let mut m = Mask::dense(&s);
        let dense = forward_flops(&s, &m);
        assert_eq!(dense, 2 * 40_551_040 + 10);
        // Removing one weight of the stem conv (applied at 32×32 positions) saves 2·1024.
        m.layers[0][0] = false;
        assert_eq!(forward_flops(&s, &m), dense - 2 * 1024);
    }
}
