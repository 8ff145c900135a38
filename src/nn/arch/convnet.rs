//! `convnet`: plain VGG-style conv nets — 3×3 convolutions (padding 1) with ReLU, 2×2 max
//! pooling where the list says `M`, then fully-connected layers. One family covers the
//! lottery-ticket paper's Conv-2/4/6 (`layers: [64, 64, M]`, `[64, 64, M, 128, 128, M]`,
//! `[64, 64, M, 128, 128, M, 256, 256, M]`, `fc: [256, 256]`) and the RePr paper's small
//! CNNs (e.g. `layers: [32, M, 32, M, 32, M]`, `fc: []`).
//!
//! A layer entry may also be `{conv: 8, stride: 2}` (a strided 3×3 convolution), and
//! `global_pool: true` ends the convolutions with a global average pool instead of a flatten:
//! together they express NetAug's tiny CNN (`layers: [4, {conv: 8, stride: 2},
//! {conv: 16, stride: 2}, 16]`, `global_pool: true`, `fc: []`).
//!
//! Names: `conv1` … `convN` (with `bn1` … when `batch_norm`), `fc1` … `fcK`, output
//! `fc{K+1}`.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program};

/// One entry of `layers`: a conv width, `"M"` (2×2 max pooling, stride 2), or
/// `{conv: WIDTH, stride: S}` (a strided conv).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum ConvLayer {
    Conv(usize),
    Pool(String),
    Strided(StridedConv),
}

/// A 3×3 convolution (padding 1) with a stride.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StridedConv {
    pub conv: usize,
    pub stride: usize,
}

impl ConvLayer {
    /// `(width, stride)` of a conv entry; `None` for pooling.
    pub fn conv(&self) -> Option<(usize, usize)> {
        match self {
            ConvLayer::Conv(w) => Some((*w, 1)),
            ConvLayer::Strided(s) => Some((s.conv, s.stride)),
            ConvLayer::Pool(_) => None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConvnetSpec {
    /// Conv widths and `M` pooling markers, in order.
    pub layers: Vec<ConvLayer>,
    /// Hidden fully-connected widths after flattening.
    #[serde(default)]
    pub fc: Vec<usize>,
    #[serde(default = "super::default_classes")]
    pub classes: usize,
    /// Input `[channels, height, width]`.
    #[serde(default = "super::default_input")]
    pub input: [usize; 3],
    /// Batch norm after every convolution (then the convolutions have no bias).
    #[serde(default)]
    pub batch_norm: bool,
    /// End the convolutions with a global average pool (the fully-connected layers then read
    /// one value per channel) instead of flattening the last feature map.
    #[serde(default, skip_serializing_if = "is_false")]
    pub global_pool: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ConvnetSpec {
    /// The width of every conv entry, in order.
    pub fn conv_widths(&self) -> Vec<usize> {
        self.layers
            .iter()
            .filter_map(|l| l.conv().map(|c| c.0))
            .collect()
    }

    /// The same net with conv `k` of width `widths[k]` (strides and pooling kept); `widths`
    /// has one entry per conv.
    pub fn with_conv_widths(&self, widths: &[usize]) -> ConvnetSpec {
        let mut next = widths.iter();
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                ConvLayer::Conv(_) => ConvLayer::Conv(*next.next().expect("one width per conv")),
                ConvLayer::Strided(s) => ConvLayer::Strided(StridedConv {
                    conv: *next.next().expect("one width per conv"),
                    stride: s.stride,
                }),
                ConvLayer::Pool(m) => ConvLayer::Pool(m.clone()),
            })
            .collect();
        ConvnetSpec {
            layers,
            ..self.clone()
        }
    }

    pub fn program(&self) -> Result<Program, String> {
        let mut ops = Vec::new();
        let mut c = self.input[0];
        let mut k = 0;
        for (i, l) in self.layers.iter().enumerate() {
            match l {
                ConvLayer::Conv(0) | ConvLayer::Strided(StridedConv { conv: 0, .. }) => {
                    return Err(format!("convnet layers[{i}] has width 0"));
                }
                ConvLayer::Strided(StridedConv { stride: 0, .. }) => {
                    return Err(format!(
                        "convnet layers[{i}] has stride 0; write a stride of at least 1"
                    ));
                }
                ConvLayer::Conv(_) | ConvLayer::Strided(_) => {
                    let (w, stride) = l.conv().expect("a conv entry");
                    k += 1;
                    ops.push(Op::Conv {
                        name: format!("conv{k}"),
                        c_in: c,
                        c_out: w,
                        kernel: 3,
                        stride,
                        padding: 1,
                        groups: 1,
                        bias: !self.batch_norm,
                    });
                    if self.batch_norm {
                        ops.push(Op::BatchNorm {
                            name: format!("bn{k}"),
                            channels: w,
                        });
                    }
                    ops.push(Op::Relu);
                    c = w;
                }
                ConvLayer::Pool(m) if m == "M" => ops.push(Op::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                }),
                ConvLayer::Pool(other) => {
                    return Err(format!(
                        "convnet layers[{i}] is `{other}`; write a conv width (e.g. 64) or `M` for max pooling"
                    ));
                }
            }
        }
        if k == 0 {
            return Err("a convnet needs at least one conv width in `layers`".into());
        }
        if self.classes == 0 || self.fc.contains(&0) {
            return Err("convnet `fc` widths and `classes` must be > 0".into());
        }
        // Flattened width: from the program's own shape inference (check() reports a bad
        // input size with the layer that breaks).
        let probe = Program {
            input: self.input,
            ops: ops.clone(),
            output: String::new(),
        };
        let mut d = probe.activation_width()?;
        if self.global_pool {
            d = c;
            ops.push(Op::GlobalAvgPool);
        } else {
            ops.push(Op::Flatten);
        }
        let widths: Vec<usize> = self.fc.iter().copied().chain([self.classes]).collect();
        for (j, &w) in widths.iter().enumerate() {
            ops.push(Op::Linear {
                name: format!("fc{}", j + 1),
                d_in: d,
                d_out: w,
                bias: true,
            });
            if j + 1 < widths.len() {
                ops.push(Op::Relu);
            }
            d = w;
        }
        Ok(Program {
            input: self.input,
            ops,
            output: format!("fc{}", widths.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;

    fn conv_n(blocks: &[usize]) -> ModelSpec {
        let mut layers = Vec::new();
        for &w in blocks {
            layers.extend([
                ConvLayer::Conv(w),
                ConvLayer::Conv(w),
                ConvLayer::Pool("M".into()),
            ]);
        }
        ModelSpec::Convnet(ConvnetSpec {
            layers,
            fc: vec![256, 256],
            classes: 10,
            input: [3, 32, 32],
            batch_norm: false,
            global_pool: false,
        })
    }

    #[test]
    fn lottery_ticket_conv_nets_have_the_papers_weight_counts() {
        // Frankle & Carbin (2019), figure 2: Conv-2 4.3M, Conv-4 2.4M, Conv-6 1.7M weights.
        assert_eq!(conv_n(&[64]).num_weights(), 4_300_992);
        assert_eq!(conv_n(&[64, 128]).num_weights(), 2_425_024);
        // The paper's table lists Conv-6 as 1.7M; its layer list (the one given above,
        // 4×4×256 flattened into FC 256) gives 2,261,184.
        assert_eq!(conv_n(&[64, 128, 256]).num_weights(), 2_261_184);
        let s = conv_n(&[64]);
        assert_eq!(s.output_layer(), "fc3");
        assert_eq!(s.input_shape(), [3, 32, 32]);
        let names: Vec<_> = s.params().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names[..4],
            ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
        );
    }

    #[test]
    fn yaml_form_and_mistakes() {
        let s: ModelSpec = serde_json::from_str(
            r#"{"arch":"convnet","layers":[8,"M"],"fc":[],"input":[1,28,28],"batch_norm":true}"#,
        )
        .unwrap();
        assert_eq!(s.output_dim(), 10);
        assert_eq!(s.num_weights(), 8 * 9 + 8 * 14 * 14 * 10);
        let bad = |json: &str| {
            serde_json::from_str::<ModelSpec>(json)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert!(bad(r#"{"arch":"convnet","layers":[8,"P"]}"#).contains("`P`"));
        assert!(bad(r#"{"arch":"convnet","layers":["M"]}"#).contains("at least one conv"));
        assert!(
            bad(r#"{"arch":"convnet","layers":[8,"M","M","M","M","M","M"],"input":[1,28,28]}"#)
                .contains("max pooling")
        );
    }
}
