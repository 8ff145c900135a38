//! `mobilenet_v2`: MobileNetV2 (Sandler et al. 2018) in its CIFAR form: inverted residual
//! blocks (1×1 expansion, 3×3 depthwise, 1×1 linear projection, each with batch norm; ReLU6
//! after the first two), residual connections where stride is 1 and widths match. The stem
//! and the second stage use stride 1 instead of 2, as CIFAR implementations do for 32×32
//! input. `width` multiplies every width (rounded to a multiple of 8, as the paper's code
//! does); `width: 0.35` is the "tiny" model NetAug augments.
//!
//! Names: `conv1`/`bn1` (stem), `blocks.{i}.conv1`/`bn1` (expansion, absent when t = 1),
//! `.conv2`/`bn2` (depthwise), `.conv3`/`bn3` (projection), `conv2`/`bn2` (last 1×1), `fc`.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program, Shortcut};

fn default_width() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MobileNetV2Spec {
    #[serde(default = "default_width")]
    pub width: f64,
    #[serde(default = "super::default_classes")]
    pub classes: usize,
    #[serde(default = "super::default_input")]
    pub input: [usize; 3],
}

/// (expansion t, width c, repeats n, first stride s) — the paper's table 2, with the CIFAR
/// change of stride 1 in the second row.
const STAGES: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// `v · width` rounded to the nearest multiple of 8, never below 8 nor more than 10% under
/// the exact value (the reference implementation's `_make_divisible`).
fn divisible(v: f64) -> usize {
    let d = 8.0;
    let mut r = ((v + d / 2.0) / d).floor() * d;
    r = r.max(d);
    if r < 0.9 * v {
        r += d;
    }
    r as usize
}

impl MobileNetV2Spec {
    pub fn program(&self) -> Result<Program, String> {
        if !(self.width.is_finite() && self.width > 0.0) || self.classes == 0 {
            return Err(format!(
                "mobilenet_v2 width {} must be > 0 and classes {} must be > 0",
                self.width, self.classes
            ));
        }
        let conv = |name: String, c_in, c_out, kernel, stride, groups| {
            Op::conv(name, c_in, c_out, kernel, stride, groups)
        };
        let bn = |name: String, channels| Op::batch_norm(name, channels);
        let stem = divisible(32.0 * self.width);
        let mut ops = vec![
            conv("conv1".into(), self.input[0], stem, 3, 1, 1),
            bn("bn1".into(), stem),
            Op::Relu6,
        ];
        let mut c = stem;
        let mut i = 0;
        for (t, width, n, s) in STAGES {
            let out = divisible(width as f64 * self.width);
            for r in 0..n {
                let stride = if r == 0 { s } else { 1 };
                let hidden = c * t;
                let p = format!("blocks.{i}");
                let mut body = Vec::new();
                if t != 1 {
                    body.extend([
                        conv(format!("{p}.conv1"), c, hidden, 1, 1, 1),
                        bn(format!("{p}.bn1"), hidden),
                        Op::Relu6,
                    ]);
                }
                body.extend([
                    conv(format!("{p}.conv2"), hidden, hidden, 3, stride, hidden),
                    bn(format!("{p}.bn2"), hidden),
                    Op::Relu6,
                    conv(format!("{p}.conv3"), hidden, out, 1, 1, 1),
                    bn(format!("{p}.bn3"), out),
                ]);
                if stride == 1 && c == out {
                    ops.push(Op::Residual {
                        name: p,
                        body,
                        shortcut: Shortcut::Identity,
                        relu: false,
                    });
                } else {
                    ops.extend(body);
                }
                c = out;
                i += 1;
            }
        }
        let last = if self.width > 1.0 {
            divisible(1280.0 * self.width)
        } else {
            1280
        };
        ops.extend([
            conv("conv2".into(), c, last, 1, 1, 1),
            bn("bn2".into(), last),
            Op::Relu6,
            Op::GlobalAvgPool,
        ]);
        Ok(Program::with_classifier(
            self.input,
            ops,
            last,
            self.classes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;

    fn net(width: f64) -> ModelSpec {
        ModelSpec::MobilenetV2(MobileNetV2Spec {
            width,
            classes: 10,
            input: [3, 32, 32],
        })
    }

    #[test]
    fn sizes_and_structure() {
        let total = |s: &ModelSpec| s.params().iter().map(|p| p.len()).sum::<usize>();
        // Width 1.0, 10 classes: 2,236,682 parameters — torchvision's ImageNet MobileNetV2
        // (3,504,872) less its 1280×1000 classifier plus a 1280×10 one; strides change no
        // parameter.
        assert_eq!(total(&net(1.0)), 2_236_682);
        let p = net(1.0).program().unwrap();
        // Residual connections: 10 of the 17 blocks keep stride 1 and width.
        assert_eq!(p.residual_blocks().len(), 10);
        // The first block has no expansion; its depthwise conv has one input per group.
        let params = net(1.0).params();
        assert_eq!(params[3].name, "blocks.0.conv2.weight");
        assert_eq!(params[3].shape, vec![32, 1, 3, 3]);
        // Tiny: widths shrink (to multiples of 8), the last conv stays 1280.
        let tiny = net(0.35).params();
        assert_eq!(tiny[0].shape, vec![16, 3, 3, 3]);
        assert_eq!(tiny.last().unwrap().shape, vec![10]);
        assert_eq!(divisible(24.0 * 0.35), 8);
        assert!(net(0.0).validate().is_err());
    }
}
