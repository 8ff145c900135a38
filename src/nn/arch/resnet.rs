//! `resnet`: the ResNets of He et al. (2016). By default the CIFAR ResNet-(6n+2) of section
//! 4.2: a 3×3 stem conv, three stages of `n` basic blocks at widths `w`, `2w`, `4w` (the 2nd
//! and 3rd stages start with stride 2), global average pooling and a linear classifier.
//! Batch norm after every conv.
//!
//! Options:
//! - `block: bottleneck`: 1×1–3×3–1×1 blocks whose output is 4× their inner width (the
//!   paper's ResNet-50/101/152); the stride sits on the 3×3 conv, as torchvision puts it.
//! - `stem: imagenet`: a 7×7/2 conv and a 3×3/2 max pool, four stages; `depth` 18, 34, 50,
//!   101 or 152 picks the paper's stage sizes (table 1), or `stages` lists them.
//! - `shortcut`: where the shape changes, option `a` subsamples and zero-pads the new
//!   channels (no parameters, the paper's CIFAR choice), `b` projects with a 1×1 conv and batch
//!   norm; `c` projects on every block; `none` removes the shortcuts altogether (the paper's
//!   "plain" networks of Fig. 1 and 6, the same layers without the additions).
//!
//! The block list is explicit: `depth` expands to the standard list, and a spec may instead
//! give `blocks` itself, so a stage that deletes or reorders blocks (lesion studies) only
//! edits the spec. Names follow the common PyTorch code: `conv1`, `bn1`,
//! `layer{s}.{i}.conv1` / `bn1` / `conv2` / `bn2` (/ `conv3` / `bn3`),
//! `layer{s}.{i}.shortcut.0` / `.1`, `fc`.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program, Shortcut};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutOption {
    /// Subsample and zero-pad channels where the shape changes.
    #[default]
    A,
    /// 1×1 conv + batch norm projection where the shape changes.
    B,
    /// 1×1 conv + batch norm projection on every block.
    C,
    /// No shortcut: the plain network.
    #[serde(rename = "none")]
    Plain,
}

/// Which residual block the stages are made of.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3 convs.
    #[default]
    Basic,
    /// 1×1 (reduce) – 3×3 – 1×1 (expand ×4).
    Bottleneck,
}

/// The layers before the first stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// One 3×3 conv at stride 1; three stages.
    #[default]
    Cifar,
    /// A 7×7 conv at stride 2, then 3×3 max pooling at stride 2; four stages.
    Imagenet,
}

/// How much wider a bottleneck block's output is than its inner convs.
pub const BOTTLENECK_EXPANSION: usize = 4;

/// One block: `c_in` → `c_out`, the first (basic) or middle (bottleneck) conv with `stride`.
/// A bottleneck block names its inner width `mid`; a basic block has none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub stride: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<usize>,
}

fn default_width() -> usize {
    16
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

// The fields added after the first release are left out of the JSON at their defaults, so an
// init stage's key (which holds this JSON) is what it was for every model written before.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResnetSpec {
    /// CIFAR stem: 6n+2 (20, 32, 44, 56, 110, …) with basic blocks, 9n+2 (164, …) with
    /// bottleneck blocks. ImageNet stem: 18, 34 (basic), 50, 101, 152 (bottleneck). Leave out
    /// when `stages` or `blocks` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Width of the stem and of the first stage's (inner) convs: 16 in the CIFAR nets, 64 in
    /// the ImageNet ones.
    #[serde(default = "default_width")]
    pub width: usize,
    #[serde(default)]
    pub shortcut: ShortcutOption,
    #[serde(default, skip_serializing_if = "is_default")]
    pub block: BlockKind,
    #[serde(default, skip_serializing_if = "is_default")]
    pub stem: Stem,
    /// Blocks per stage (instead of `depth`); stage `s` is `width·2^s` wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<usize>>,
    #[serde(default = "super::default_classes")]
    pub classes: usize,
    #[serde(default = "super::default_input")]
    pub input: [usize; 3],
    /// The blocks, explicitly (instead of `depth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockSpec>>,
}

impl ResnetSpec {
    /// ResNet-`depth` with the paper's CIFAR widths and option-A shortcuts.
    pub fn standard(depth: usize) -> ResnetSpec {
        ResnetSpec {
            depth: Some(depth),
            width: 16,
            shortcut: ShortcutOption::A,
            block: BlockKind::Basic,
            stem: Stem::Cifar,
            stages: None,
            classes: 10,
            input: [3, 32, 32],
            blocks: None,
        }
    }

    /// ResNet-`depth` as the paper's ImageNet table 1 lays it out (option B, 1000 classes).
    pub fn imagenet(depth: usize) -> ResnetSpec {
        ResnetSpec {
            width: 64,
            shortcut: ShortcutOption::B,
            block: if depth >= 50 {
                BlockKind::Bottleneck
            } else {
                BlockKind::Basic
            },
            stem: Stem::Imagenet,
            classes: 1000,
            input: [3, 224, 224],
            ..ResnetSpec::standard(depth)
        }
    }

    /// Blocks per stage, from `stages` or `depth`.
    fn stage_sizes(&self) -> Result<Vec<usize>, String> {
        let d = match (&self.stages, self.depth) {
            (Some(s), None) => return Ok(s.clone()),
            (Some(_), Some(_)) => {
                return Err("resnet: give either `depth` or `stages`, not both".into());
            }
            (None, None) => {
                return Err("resnet: give `depth` (e.g. 20), `stages` or `blocks`".into());
            }
            (None, Some(d)) => d,
        };
        match (self.stem, self.block) {
            (Stem::Cifar, BlockKind::Basic) => {
                if d < 8 || (d - 2) % 6 != 0 {
                    return Err(format!(
                        "resnet depth {d} is not 6n+2 with n ≥ 1 (20, 32, 44, 56, 110, …)"
                    ));
                }
                Ok(vec![(d - 2) / 6; 3])
            }
            (Stem::Cifar, BlockKind::Bottleneck) => {
                if d < 11 || (d - 2) % 9 != 0 {
                    return Err(format!(
                        "resnet depth {d} with bottleneck blocks is not 9n+2 with n ≥ 1 (11, 29, 56, 164, …)"
                    ));
                }
                Ok(vec![(d - 2) / 9; 3])
            }
            (Stem::Imagenet, block) => {
                let (sizes, wants) = match d {
                    18 => (vec![2, 2, 2, 2], BlockKind::Basic),
                    34 => (vec![3, 4, 6, 3], BlockKind::Basic),
                    50 => (vec![3, 4, 6, 3], BlockKind::Bottleneck),
                    101 => (vec![3, 4, 23, 3], BlockKind::Bottleneck),
                    152 => (vec![3, 8, 36, 3], BlockKind::Bottleneck),
                    _ => {
                        return Err(format!(
                            "resnet depth {d} is not one of the ImageNet depths 18, 34, 50, 101, 152 (or give `stages`)"
                        ));
                    }
                };
                if block != wants {
                    let name = if wants == BlockKind::Basic {
                        "basic"
                    } else {
                        "bottleneck"
                    };
                    return Err(format!(
                        "ResNet-{d} is made of {name} blocks: set `block: {name}` (or give `stages`)"
                    ));
                }
                Ok(sizes)
            }
        }
    }

    /// The block list: `blocks` as given, or the standard one for `depth` / `stages`.
    pub fn block_list(&self) -> Result<Vec<BlockSpec>, String> {
        if let Some(b) = &self.blocks {
            if self.depth.is_some() || self.stages.is_some() {
                return Err("resnet: give either `depth`/`stages` or `blocks`, not both".into());
            }
            return Ok(b.clone());
        }
        let sizes = self.stage_sizes()?;
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(format!(
                "resnet `stages` {sizes:?} must list at least one stage, each of at least one block"
            ));
        }
        let mut blocks = Vec::new();
        let mut c = self.width;
        for (s, &n) in sizes.iter().enumerate() {
            let inner = self.width << s;
            let (c_out, mid) = match self.block {
                BlockKind::Basic => (inner, None),
                BlockKind::Bottleneck => (inner * BOTTLENECK_EXPANSION, Some(inner)),
            };
            for i in 0..n {
                blocks.push(BlockSpec {
                    name: format!("layer{}.{i}", s + 1),
                    c_in: c,
                    c_out,
                    // Every stage but the first halves the resolution in its first block (the
                    // ImageNet stem has already halved it twice before the first).
                    stride: if s > 0 && i == 0 { 2 } else { 1 },
                    mid,
                });
                c = c_out;
            }
        }
        Ok(blocks)
    }

    fn stem_ops(&self) -> Vec<Op> {
        match self.stem {
            Stem::Cifar => vec![
                Op::conv("conv1", self.input[0], self.width, 3, 1, 1),
                Op::batch_norm("bn1", self.width),
                Op::Relu,
            ],
            Stem::Imagenet => vec![
                Op::conv("conv1", self.input[0], self.width, 7, 2, 1),
                Op::batch_norm("bn1", self.width),
                Op::Relu,
                Op::MaxPool {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                },
            ],
        }
    }

    fn shortcut(&self, b: &BlockSpec) -> Shortcut {
        let same_shape = b.stride == 1 && b.c_in == b.c_out;
        let projection = || Shortcut::Projection {
            ops: vec![
                Op::conv(
                    format!("{}.shortcut.0", b.name),
                    b.c_in,
                    b.c_out,
                    1,
                    b.stride,
                    1,
                ),
                Op::batch_norm(format!("{}.shortcut.1", b.name), b.c_out),
            ],
        };
        match self.shortcut {
            ShortcutOption::C => projection(),
            _ if same_shape => Shortcut::Identity,
            ShortcutOption::B => projection(),
            ShortcutOption::A | ShortcutOption::Plain => Shortcut::ZeroPad {
                c_in: b.c_in,
                c_out: b.c_out,
                stride: b.stride,
            },
        }
    }

    pub fn program(&self) -> Result<Program, String> {
        if self.width == 0 || self.classes == 0 {
            return Err("resnet `width` and `classes` must be > 0".into());
        }
        let blocks = self.block_list()?;
        let mut ops = self.stem_ops();
        let mut last = self.width;
        for b in &blocks {
            if b.c_in == 0 || b.c_out == 0 || b.stride == 0 || b.mid == Some(0) {
                return Err(format!(
                    "resnet block `{}` has a zero size or stride",
                    b.name
                ));
            }
            let n = &b.name;
            let body = match b.mid {
                None => vec![
                    Op::conv(format!("{n}.conv1"), b.c_in, b.c_out, 3, b.stride, 1),
                    Op::batch_norm(format!("{n}.bn1"), b.c_out),
                    Op::Relu,
                    Op::conv(format!("{n}.conv2"), b.c_out, b.c_out, 3, 1, 1),
                    Op::batch_norm(format!("{n}.bn2"), b.c_out),
                ],
                Some(m) => vec![
                    Op::conv(format!("{n}.conv1"), b.c_in, m, 1, 1, 1),
                    Op::batch_norm(format!("{n}.bn1"), m),
                    Op::Relu,
                    Op::conv(format!("{n}.conv2"), m, m, 3, b.stride, 1),
                    Op::batch_norm(format!("{n}.bn2"), m),
                    Op::Relu,
                    Op::conv(format!("{n}.conv3"), m, b.c_out, 1, 1, 1),
                    Op::batch_norm(format!("{n}.bn3"), b.c_out),
                ],
            };
            if self.shortcut == ShortcutOption::Plain {
                // The plain twin: the same layers, nothing added back.
                ops.extend(body);
                ops.push(Op::Relu);
            } else {
                ops.push(Op::Residual {
                    name: n.clone(),
                    body,
                    shortcut: self.shortcut(b),
                    relu: true,
                });
            }
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

    #[test]
    fn the_imagenet_layouts_have_the_papers_sizes() {
        // torchvision's resnet18 and resnet50 (He et al. 2016, table 1: "25.6M" for ResNet-50)
        // count 11,689,512 and 25,557,032 parameters, batch norm included.
        let r50 = ModelSpec::Resnet(ResnetSpec::imagenet(50));
        assert_eq!(total_params(&r50), 25_557_032);
        assert_eq!(
            total_params(&ModelSpec::Resnet(ResnetSpec::imagenet(18))),
            11_689_512
        );
        let p = r50.program().unwrap();
        assert_eq!(p.residual_blocks().len(), 3 + 4 + 6 + 3);
        let names: Vec<_> = r50.params().into_iter().map(|p| p.name).collect();
        for n in [
            "layer1.0.conv3.weight",
            "layer1.0.shortcut.0.weight",
            "layer4.2.bn3.bias",
        ] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        // Only the first block of each stage changes shape, so only it projects (option B).
        assert!(!names.contains(&"layer1.1.shortcut.0.weight".to_string()));
        let shape = |n: &str| {
            r50.params()
                .into_iter()
                .find(|p| p.name == n)
                .unwrap()
                .shape
        };
        // The stride sits on the 3×3 conv; the 1×1 convs reduce to 64 and expand to 256.
        assert_eq!(shape("layer1.0.conv1.weight"), [64, 64, 1, 1]);
        assert_eq!(shape("layer1.0.conv3.weight"), [256, 64, 1, 1]);
        assert_eq!(shape("fc.weight"), [2048, 1000]);
        // A basic-block depth with bottleneck blocks (or the reverse) says what to change.
        let wrong = ResnetSpec {
            block: BlockKind::Basic,
            ..ResnetSpec::imagenet(50)
        };
        assert!(wrong.program().unwrap_err().contains("block: bottleneck"));
        assert!(
            ResnetSpec::imagenet(51)
                .program()
                .unwrap_err()
                .contains("18, 34, 50, 101, 152")
        );
    }

    #[test]
    fn cifar_bottleneck_nets_are_9n_plus_2_deep() {
        // ResNet-164 of He et al. (2016b): 18 bottleneck blocks a stage, 1.7M parameters.
        let spec = ResnetSpec {
            block: BlockKind::Bottleneck,
            ..ResnetSpec::standard(164)
        };
        assert_eq!(spec.block_list().unwrap().len(), 54);
        let s = ModelSpec::Resnet(spec);
        let n = total_params(&s);
        assert!((1_650_000..1_750_000).contains(&n), "{n}");
        assert_eq!(s.output_dim(), 10);
        assert!(
            ResnetSpec {
                block: BlockKind::Bottleneck,
                ..ResnetSpec::standard(21)
            }
            .program()
            .unwrap_err()
            .contains("9n+2")
        );
    }

    #[test]
    fn option_c_projects_on_every_block_and_none_removes_the_shortcuts() {
        let with = |shortcut| {
            ModelSpec::Resnet(ResnetSpec {
                shortcut,
                ..ResnetSpec::standard(20)
            })
        };
        let c = with(ShortcutOption::C);
        let proj = c
            .params()
            .into_iter()
            .filter(|p| p.name.ends_with("shortcut.0.weight"))
            .count();
        assert_eq!(proj, 9);
        // Every block's projection: 3 blocks at 16·16, one 16·32, two 32·32, one 32·64,
        // two 64·64; batch norm 2·(3·16 + 3·32 + 3·64).
        let conv = 3 * 16 * 16 + 16 * 32 + 2 * 32 * 32 + 32 * 64 + 2 * 64 * 64;
        assert_eq!(
            total_params(&c),
            269_722 + conv + 2 * (3 * 16 + 3 * 32 + 3 * 64)
        );

        // The plain twin has the same layers and parameters as option A, and no block adds
        // anything back.
        let plain = with(ShortcutOption::Plain);
        let names = |s: &ModelSpec| s.params().into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(&plain), names(&with(ShortcutOption::A)));
        let p = plain.program().unwrap();
        assert!(p.residual_blocks().is_empty());
        assert!(!p.ops.iter().any(|o| matches!(o, Op::Residual { .. })));
        assert_eq!(
            serde_json::to_value(ShortcutOption::Plain).unwrap(),
            serde_json::json!("none")
        );
    }

    #[test]
    fn the_json_of_a_cifar_resnet_is_unchanged() {
        // An init stage's key holds this JSON: the fields added for bottlenecks and the
        // ImageNet stem must not appear at their defaults.
        let j = serde_json::to_string(&ModelSpec::Resnet(ResnetSpec::standard(20))).unwrap();
        assert_eq!(
            j,
            r#"{"arch":"resnet","depth":20,"width":16,"shortcut":"a","classes":10,"input":[3,32,32]}"#
        );
    }
}
