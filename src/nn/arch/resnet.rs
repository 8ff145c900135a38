//! `resnet`: CIFAR ResNet-(6n+2) of He et al. (2016, section 4.2): a 3×3 stem conv, three
//! stages of `n` basic blocks at widths `w`, `2w`, `4w` (the 2nd and 3rd stages start with
//! stride 2), global average pooling and a linear classifier. Batch norm after every conv.
//!
//! Shortcuts where the shape changes: option `a` subsamples and zero-pads the new channels
//! (no parameters, the paper's CIFAR choice), option `b` projects with a 1×1 conv and batch
//! norm. The block list is explicit: `depth` expands to the standard list, and a spec may
//! instead give `blocks` itself, so a stage that deletes or reorders blocks (lesion studies)
//! only edits the spec. Names follow the common PyTorch CIFAR code: `conv1`, `bn1`,
//! `layer{s}.{i}.conv1` / `bn1` / `conv2` / `bn2`, `layer{s}.{i}.shortcut.0` / `.1`, `fc`.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program, Shortcut};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutOption {
    /// Subsample and zero-pad channels.
    #[default]
    A,
    /// 1×1 conv + batch norm projection.
    B,
}

/// One basic block: two 3×3 convs, `c_in` → `c_out`, the first with `stride`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub stride: usize,
}

fn default_width() -> usize {
    16
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResnetSpec {
    /// 6n+2: 20, 32, 44, 56, 110, … Leave out when `blocks` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Width of the first stage (16 in the paper).
    #[serde(default = "default_width")]
    pub width: usize,
    #[serde(default)]
    pub shortcut: ShortcutOption,
    #[serde(default = "super::default_classes")]
    pub classes: usize,
    #[serde(default = "super::default_input")]
    pub input: [usize; 3],
    /// The blocks, explicitly (instead of `depth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockSpec>>,
}

impl ResnetSpec {
    /// ResNet-`depth` with the paper's widths and option-A shortcuts.
    pub fn standard(depth: usize) -> ResnetSpec {
        ResnetSpec {
            depth: Some(depth),
            width: 16,
            shortcut: ShortcutOption::A,
            classes: 10,
            input: [3, 32, 32],
            blocks: None,
        }
    }

    /// The block list: `blocks` as given, or the standard one for `depth`.
    pub fn block_list(&self) -> Result<Vec<BlockSpec>, String> {
        match (&self.blocks, self.depth) {
            (Some(b), None) => Ok(b.clone()),
            (Some(_), Some(_)) => Err("resnet: give either `depth` or `blocks`, not both".into()),
            (None, None) => Err("resnet: give `depth` (6n+2, e.g. 20) or `blocks`".into()),
            (None, Some(d)) => {
                if d < 8 || (d - 2) % 6 != 0 {
                    return Err(format!(
                        "resnet depth {d} is not 6n+2 with n ≥ 1 (20, 32, 44, 56, 110, …)"
                    ));
                }
                let n = (d - 2) / 6;
                let mut blocks = Vec::new();
                let mut c = self.width;
                for s in 0..3 {
                    let w = self.width << s;
                    for i in 0..n {
                        blocks.push(BlockSpec {
                            name: format!("layer{}.{i}", s + 1),
                            c_in: c,
                            c_out: w,
                            stride: if s > 0 && i == 0 { 2 } else { 1 },
                        });
                        c = w;
                    }
                }
                Ok(blocks)
            }
        }
    }

    pub fn program(&self) -> Result<Program, String> {
        if self.width == 0 || self.classes == 0 {
            return Err("resnet `width` and `classes` must be > 0".into());
        }
        let blocks = self.block_list()?;
        let conv = |name: String, c_in, c_out, kernel, stride| {
            Op::conv(name, c_in, c_out, kernel, stride, 1)
        };
        let mut ops = vec![
            conv("conv1".into(), self.input[0], self.width, 3, 1),
            Op::batch_norm("bn1", self.width),
            Op::Relu,
        ];
        let mut last = self.width;
        for b in &blocks {
            if b.c_in == 0 || b.c_out == 0 || b.stride == 0 {
                return Err(format!(
                    "resnet block `{}` has a zero size or stride",
                    b.name
                ));
            }
            let n = &b.name;
            let body = vec![
                conv(format!("{n}.conv1"), b.c_in, b.c_out, 3, b.stride),
                Op::batch_norm(format!("{n}.bn1"), b.c_out),
                Op::Relu,
                conv(format!("{n}.conv2"), b.c_out, b.c_out, 3, 1),
                Op::batch_norm(format!("{n}.bn2"), b.c_out),
            ];
            let shortcut = if b.stride == 1 && b.c_in == b.c_out {
                Shortcut::Identity
            } else {
                match self.shortcut {
                    ShortcutOption::A => Shortcut::ZeroPad {
                        c_in: b.c_in,
                        c_out: b.c_out,
                        stride: b.stride,
                    },
                    ShortcutOption::B => Shortcut::Projection {
                        ops: vec![
                            conv(format!("{n}.shortcut.0"), b.c_in, b.c_out, 1, b.stride),
                            Op::batch_norm(format!("{n}.shortcut.1"), b.c_out),
                        ],
                    },
                }
            };
            ops.push(Op::Residual {
                name: n.clone(),
                body,
                shortcut,
                relu: true,
            });
            last = b.c_out;
        }
        ops.push(Op::GlobalAvgPool);
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

    fn total_params(s: &ModelSpec) -> usize {
        s.params().iter().map(|p| p.len()).sum()
    }

    #[test]
    fn resnet_20_matches_the_reference_size() {
        // ResNet-20 with option A: 269,722 trainable parameters ("0.27M" in He et al. 2016,
        // table 6).
        let s = ModelSpec::Resnet(ResnetSpec::standard(20));
        assert_eq!(total_params(&s), 269_722);
        assert_eq!(s.output_dim(), 10);
        let p = s.program().unwrap();
        assert_eq!(p.residual_blocks().len(), 9);
        assert_eq!(p.residual_blocks()[3], "layer2.0");
        let names: Vec<_> = s.params().into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"layer3.2.bn2.bias".to_string()));
        assert_eq!(names.last().unwrap(), "fc.bias");
        // 56 and 110: 3n blocks each.
        let blocks = |d| ResnetSpec::standard(d).block_list().unwrap().len();
        assert_eq!((blocks(32), blocks(56), blocks(110)), (15, 27, 54));
    }

    #[test]
    fn option_b_adds_projections_only_where_the_shape_changes() {
        let mut spec = ResnetSpec::standard(20);
        spec.shortcut = ShortcutOption::B;
        let s = ModelSpec::Resnet(spec);
        let proj: Vec<_> = s
            .params()
            .into_iter()
            .filter(|p| p.name.contains("shortcut"))
            .map(|p| p.name)
            .collect();
        assert_eq!(
            proj,
            [
                "layer2.0.shortcut.0.weight",
                "layer2.0.shortcut.1.weight",
                "layer2.0.shortcut.1.bias",
                "layer3.0.shortcut.0.weight",
                "layer3.0.shortcut.1.weight",
                "layer3.0.shortcut.1.bias"
            ]
        );
        // 16·32 + 32·64 projection weights, 2·(32 + 64) batch-norm parameters.
        assert_eq!(
            total_params(&s),
            269_722 + 16 * 32 + 32 * 64 + 2 * (32 + 64)
        );
    }

    #[test]
    fn explicit_blocks_can_be_deleted() {
        let full = ResnetSpec::standard(20);
        let mut blocks = full.block_list().unwrap();
        blocks.remove(4); // layer2.1: identity block, shapes still fit
        let lesioned = ResnetSpec {
            depth: None,
            blocks: Some(blocks.clone()),
            ..full.clone()
        };
        let p = lesioned.program().unwrap();
        assert_eq!(p.residual_blocks().len(), 8);
        assert!(!p.residual_blocks().contains(&"layer2.1".to_string()));
        // Deleting a block that changes the shape breaks the chain: a clear error.
        let mut broken = full.block_list().unwrap();
        broken.remove(3);
        let e = ModelSpec::Resnet(ResnetSpec {
            depth: None,
            blocks: Some(broken),
            ..full.clone()
        })
        .validate()
        .unwrap_err();
        assert!(e.contains("layer2.1"), "{e}");
        assert!(
            ResnetSpec {
                blocks: Some(blocks),
                ..full
            }
            .program()
            .unwrap_err()
            .contains("not both")
        );
        assert!(
            ResnetSpec::standard(21)
                .program()
                .unwrap_err()
                .contains("6n+2")
        );
    }
}
