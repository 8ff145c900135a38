//! `vgg`: CIFAR VGG-11/13/16/19 with batch norm (Simonyan & Zisserman's configurations A, B,
//! D, E; the CIFAR form used by the Rethinking paper's code: 3×3 convolutions without bias,
//! each followed by batch norm and ReLU, 2×2 max pooling, then one linear classifier on the
//! last 512 channels). Names: `conv1` … `convN`, `bn1` … `bnN`, output `fc`.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program};

fn default_width() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VggSpec {
    /// 11, 13, 16 or 19.
    pub depth: usize,
    #[serde(default = "super::default_classes")]
    pub classes: usize,
    #[serde(default = "super::default_input")]
    pub input: [usize; 3],
    /// Multiplier of every conv width (rounded, at least 1), for reduced-scale runs.
    #[serde(default = "default_width", skip_serializing_if = "is_one")]
    pub width: f64,
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// Conv widths per configuration; 0 marks a 2×2 max pooling.
fn config(depth: usize) -> Option<&'static [usize]> {
    Some(match depth {
        11 => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        13 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
        ],
        16 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
        ],
        19 => &[
            64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512,
            512, 0,
        ],
        _ => return None,
    })
}

impl VggSpec {
    pub fn program(&self) -> Result<Program, String> {
        let cfg = config(self.depth)
            .ok_or_else(|| format!("vgg depth {} is not one of 11, 13, 16, 19", self.depth))?;
        if !(self.width.is_finite() && self.width > 0.0) || self.classes == 0 {
            return Err(format!(
                "vgg width {} must be > 0 and classes {} must be > 0",
                self.width, self.classes
            ));
        }
        let mut ops = Vec::new();
        let (mut c, mut k) = (self.input[0], 0);
        for &v in cfg {
            if v == 0 {
                ops.push(Op::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                });
                continue;
            }
            k += 1;
            let w = ((v as f64 * self.width).round() as usize).max(1);
            ops.push(Op::conv(format!("conv{k}"), c, w, 3, 1, 1));
            ops.push(Op::batch_norm(format!("bn{k}"), w));
            ops.push(Op::Relu);
            c = w;
        }
        let d_in = Program {
            input: self.input,
            ops: ops.clone(),
            output: String::new(),
        }
        .activation_width()?;
        ops.push(Op::Flatten);
        Ok(Program::with_classifier(
            self.input,
            ops,
            d_in,
            self.classes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;

    fn vgg(depth: usize) -> ModelSpec {
        ModelSpec::Vgg(VggSpec {
            depth,
            classes: 10,
            input: [3, 32, 32],
            width: 1.0,
        })
    }

    #[test]
    fn cifar_vgg_sizes() {
        // Conv weights of configurations A, D, E on 3×32×32 input, plus a 512×10 classifier
        // (CIFAR VGG-16 is the familiar "14.7M").
        assert_eq!(vgg(16).num_weights(), 14_710_464 + 5_120);
        assert_eq!(vgg(11).num_weights(), 9_217_728 + 5_120);
        assert_eq!(vgg(19).num_weights(), 20_018_880 + 5_120);
        let s = vgg(13);
        assert_eq!(s.output_layer(), "fc");
        assert_eq!(
            s.params()
                .iter()
                .filter(|p| p.name.starts_with("bn"))
                .count(),
            20
        );
        assert!(vgg(12).validate().unwrap_err().contains("11, 13, 16, 19"));
        // Width multiplier keeps the structure.
        let half: ModelSpec =
            serde_json::from_str(r#"{"arch":"vgg","depth":11,"width":0.25}"#).unwrap();
        assert_eq!(half.params()[0].shape, vec![16, 3, 3, 3]);
        assert_eq!(
            serde_json::to_string(&vgg(16)).unwrap(),
            r#"{"arch":"vgg","depth":16,"classes":10,"input":[3,32,32]}"#
        );
    }
}
