//! A model as a backend-free layer program: what every architecture family compiles to.
//!
//! A family (`src/nn/arch/*.rs`) only says which layers it has and how they connect; the
//! facts every other part of `pipe` needs are derived here from the program, once, for all
//! families: the parameters with their names, shapes and roles (what pruning may touch, which
//! layer is the output), the activation shapes (so a wrong width is a plan-time error), the
//! FLOPs of a forward pass under a mask, and how output channels link to the layers that read
//! them (filter pruning). The burn interpreter (`net.rs`) runs the same program.
//!
//! Parameter names and shapes follow PyTorch (`conv1.weight` is `[out, in/groups, k, k]`,
//! `layer1.0.bn1.running_mean`), except that a linear layer's weight is held here as burn holds
//! it, `[in, out]`; checkpoints transpose it to PyTorch's `[out, in]` on the way to disk.

use serde::{Deserialize, Serialize};

/// One layer operation. Named operations own parameters `<name>.weight` (and `<name>.bias`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// 2-D convolution with a square kernel; `groups == c_in == c_out` is depthwise.
    Conv {
        name: String,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    },
    /// Batch norm over channels: parameters `weight`, `bias`; buffers `running_mean`,
    /// `running_var`, `num_batches_tracked`.
    BatchNorm {
        name: String,
        channels: usize,
    },
    Relu,
    /// min(max(x, 0), 6), MobileNetV2's activation.
    Relu6,
    /// Max pooling; `padding` (at most half the kernel) is left out of the JSON when zero, so
    /// the programs written before it existed read and hash as they did.
    MaxPool {
        kernel: usize,
        stride: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// `[n, c, h, w]` → `[n, c]`.
    GlobalAvgPool,
    /// `[n, c, h, w]` → `[n, c·h·w]` (channel-major, as `torch.flatten`).
    Flatten,
    Linear {
        name: String,
        d_in: usize,
        d_out: usize,
        bias: bool,
    },
    /// `relu?(body(x) + shortcut(x))`: a residual block. `name` is the block's prefix.
    Residual {
        name: String,
        body: Vec<Op>,
        shortcut: Shortcut,
        relu: bool,
    },
}

impl Op {
    /// A bias-free square convolution with `kernel / 2` padding, as the batch-norm families
    /// use (`groups == c_in == c_out` is depthwise).
    pub fn conv(
        name: impl Into<String>,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Op {
        Op::Conv {
            name: name.into(),
            c_in,
            c_out,
            kernel,
            stride,
            padding: kernel / 2,
            groups,
            bias: false,
        }
    }

    pub fn batch_norm(name: impl Into<String>, channels: usize) -> Op {
        Op::BatchNorm {
            name: name.into(),
            channels,
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The skip path of a residual block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shortcut {
    Identity,
    /// He et al.'s option A: subsample by `stride`, then zero-pad the new channels (no
    /// parameters).
    ZeroPad {
        c_in: usize,
        c_out: usize,
        stride: usize,
    },
    /// Option B: a projection (1×1 conv + batch norm) where the shape changes.
    Projection {
        ops: Vec<Op>,
    },
}

/// A whole model: input shape `[channels, height, width]`, the operations, and the name of
/// the output layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Program {
    pub input: [usize; 3],
    pub ops: Vec<Op>,
    pub output: String,
}

/// What a parameter is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParamRole {
    ConvWeight,
    LinearWeight,
    Bias,
    BnWeight,
    BnBias,
}

/// One trainable parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    /// Shape as held in memory (linear weights `[in, out]`).
    pub shape: Vec<usize>,
    pub role: ParamRole,
    /// The layer (operation) that owns it.
    pub layer: String,
    /// Fan-in and fan-out of the layer (initialisation).
    pub fan_in: usize,
    pub fan_out: usize,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Conv and linear weights: what pruning removes.
    pub fn is_weight(&self) -> bool {
        matches!(self.role, ParamRole::ConvWeight | ParamRole::LinearWeight)
    }
    /// The shape PyTorch uses (linear weights transposed to `[out, in]`).
    pub fn torch_shape(&self) -> Vec<usize> {
        match self.role {
            ParamRole::LinearWeight => vec![self.shape[1], self.shape[0]],
            _ => self.shape.clone(),
        }
    }
}

/// A batch-norm layer's running statistics (buffers, not trained).
#[derive(Clone, Debug, PartialEq)]
pub struct BufferInfo {
    pub layer: String,
    pub channels: usize,
}

/// Activation shape between operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Map { c: usize, h: usize, w: usize },
    Flat(usize),
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "[{c}, {h}, {w}]"),
            Shape::Flat(d) => write!(f, "[{d}]"),
        }
    }
}

fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    (size + 2 * padding)
        .checked_sub(kernel)
        .map(|s| s / stride.max(1) + 1)
}

impl Program {
    /// `ops` followed by the linear classifier `fc` (`d_in` → `classes`, with bias), which is
    /// the output layer: the ending of the CIFAR families.
    pub fn with_classifier(
        input: [usize; 3],
        mut ops: Vec<Op>,
        d_in: usize,
        classes: usize,
    ) -> Program {
        ops.push(Op::Linear {
            name: "fc".into(),
            d_in,
            d_out: classes,
            bias: true,
        });
        Program {
            input,
            ops,
            output: "fc".into(),
        }
    }

    /// Every trainable parameter, in program order (the order of [`crate::nn::ModelState`]).
    pub fn params(&self) -> Vec<ParamInfo> {
        let mut out = Vec::new();
        collect_params(&self.ops, &mut out);
        out
    }

    /// Every batch-norm layer, in program order.
    pub fn batch_norms(&self) -> Vec<BufferInfo> {
        let mut out = Vec::new();
        visit(&self.ops, &mut |op| {
            if let Op::BatchNorm { name, channels } = op {
                out.push(BufferInfo {
                    layer: name.clone(),
                    channels: *channels,
                });
            }
        });
        out
    }

    /// Checks that every operation gets the shape it expects and that the output layer
    /// exists; returns the output width.
    pub fn check(&self) -> Result<usize, String> {
        if self.input.contains(&0) {
            return Err(format!("input shape {:?} has a zero dimension", self.input));
        }
        let [c, h, w] = self.input;
        let out = shape_through(&self.ops, Shape::Map { c, h, w }, &mut |_, _, _| {})?;
        if !self
            .params()
            .iter()
            .any(|p| p.layer == self.output && p.is_weight())
        {
            return Err(format!("the output layer `{}` does not exist", self.output));
        }
        match out {
            Shape::Flat(d) => Ok(d),
            s => Err(format!(
                "the model ends with activations of shape {s}; end with a linear layer"
            )),
        }
    }

    /// Width of the activations after all operations (flattened), or the first shape error.
    pub fn activation_width(&self) -> Result<usize, String> {
        let [c, h, w] = self.input;
        Ok(
            match shape_through(&self.ops, Shape::Map { c, h, w }, &mut |_, _, _| {})? {
                Shape::Map { c, h, w } => c * h * w,
                Shape::Flat(d) => d,
            },
        )
    }

    /// FLOPs of one forward pass for one sample: a multiply and an add per kept weight
    /// application, plus one add per bias element applied; activations, batch norm and
    /// pooling are not counted (the convention of the lottery-ticket and Rethinking
    /// papers' FLOP counts, which count multiply-adds of conv and linear layers).
    /// `kept(name)` gives the number of kept weights of a weight parameter.
    pub fn flops(&self, kept: &dyn Fn(&str) -> usize) -> u64 {
        let [c, h, w] = self.input;
        let mut total = 0u64;
        let _ = shape_through(
            &self.ops,
            Shape::Map { c, h, w },
            &mut |op, _input, output| match op {
                Op::Conv { name, bias, .. } => {
                    if let Shape::Map { c, h, w } = output {
                        let positions = (h * w) as u64;
                        total += 2 * kept(&format!("{name}.weight")) as u64 * positions;
                        if *bias {
                            total += (c as u64) * positions;
                        }
                    }
                }
                Op::Linear {
                    name, d_out, bias, ..
                } => {
                    total += 2 * kept(&format!("{name}.weight")) as u64;
                    if *bias {
                        total += *d_out as u64;
                    }
                }
                _ => {}
            },
        );
        total
    }

    /// Whether a residual block has a projection shortcut (conv + batch norm on the skip).
    pub fn has_projection(&self) -> bool {
        self.ops.iter().any(|op| {
            matches!(
                op,
                Op::Residual {
                    shortcut: Shortcut::Projection { .. },
                    ..
                }
            )
        })
    }

    /// The name of every residual block, in order (what a lesion may delete or reorder).
    pub fn residual_blocks(&self) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Residual { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// The activation shape entering each top-level operation, then the shape after the
    /// last one (`ops.len() + 1` shapes), or the first shape error. Lesions use it to tell
    /// which operations keep the shape (and so may be deleted or swapped).
    pub fn top_level_shapes(&self) -> Result<Vec<Shape>, String> {
        let [c, h, w] = self.input;
        let mut shape = Shape::Map { c, h, w };
        let mut out = Vec::with_capacity(self.ops.len() + 1);
        out.push(shape);
        for op in &self.ops {
            shape = shape_of(op, shape, &mut |_, _, _| {})?;
            out.push(shape);
        }
        Ok(out)
    }

    /// For filter pruning: each convolution whose output channels may be dropped, with the
    /// parameters a dropped channel `j` zeroes. See [`ChannelGroup`].
    pub fn channel_groups(&self) -> Vec<ChannelGroup> {
        let mut groups = Vec::new();
        let [c, h, w] = self.input;
        channel_groups_in(&self.ops, Shape::Map { c, h, w }, &mut groups);
        groups
    }
}

/// What dropping output channel `j` of `conv` zeroes: the filter (`conv.weight[j]`), its bias,
/// the batch-norm entries that follow it, and in the next layer the slice that reads channel
/// `j` (a conv's input channel, or a linear layer's `spatial` inputs after flattening).
/// Depthwise convolutions pass a channel through, so their filter `j` and their batch-norm
/// entries are zeroed too and the chain continues to the next dense layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelGroup {
    pub conv: String,
    pub channels: usize,
    /// `(parameter, axis, block)`: zero indices `j·block .. (j+1)·block` along `axis`.
    pub slices: Vec<(String, usize, usize)>,
}

fn visit(ops: &[Op], f: &mut dyn FnMut(&Op)) {
    for op in ops {
        f(op);
        if let Op::Residual { body, shortcut, .. } = op {
            visit(body, f);
            if let Shortcut::Projection { ops } = shortcut {
                visit(ops, f);
            }
        }
    }
}

fn collect_params(ops: &[Op], out: &mut Vec<ParamInfo>) {
    for op in ops {
        match op {
            Op::Conv {
                name,
                c_in,
                c_out,
                kernel,
                groups,
                bias,
                ..
            } => {
                let per_group = c_in / groups.max(&1);
                let fan_in = per_group * kernel * kernel;
                let fan_out = c_out / groups.max(&1) * kernel * kernel;
                out.push(ParamInfo {
                    name: format!("{name}.weight"),
                    shape: vec![*c_out, per_group, *kernel, *kernel],
                    role: ParamRole::ConvWeight,
                    layer: name.clone(),
                    fan_in,
                    fan_out,
                });
                if *bias {
                    out.push(ParamInfo {
                        name: format!("{name}.bias"),
                        shape: vec![*c_out],
                        role: ParamRole::Bias,
                        layer: name.clone(),
                        fan_in,
                        fan_out,
                    });
                }
            }
            Op::Linear {
                name,
                d_in,
                d_out,
                bias,
            } => {
                out.push(ParamInfo {
                    name: format!("{name}.weight"),
                    shape: vec![*d_in, *d_out],
                    role: ParamRole::LinearWeight,
                    layer: name.clone(),
                    fan_in: *d_in,
                    fan_out: *d_out,
                });
                if *bias {
                    out.push(ParamInfo {
                        name: format!("{name}.bias"),
                        shape: vec![*d_out],
                        role: ParamRole::Bias,
                        layer: name.clone(),
                        fan_in: *d_in,
                        fan_out: *d_out,
                    });
                }
            }
            Op::BatchNorm { name, channels } => {
                for (suffix, role) in [("weight", ParamRole::BnWeight), ("bias", ParamRole::BnBias)]
                {
                    out.push(ParamInfo {
                        name: format!("{name}.{suffix}"),
                        shape: vec![*channels],
                        role,
                        layer: name.clone(),
                        fan_in: 1,
                        fan_out: 1,
                    });
                }
            }
            Op::Residual { body, shortcut, .. } => {
                collect_params(body, out);
                if let Shortcut::Projection { ops } = shortcut {
                    collect_params(ops, out);
                }
            }
            _ => {}
        }
    }
}

/// Propagates the activation shape through `ops`, calling `f(op, input, output)` for each
/// operation (residual bodies and projections included).
fn shape_through(
    ops: &[Op],
    mut shape: Shape,
    f: &mut dyn FnMut(&Op, Shape, Shape),
) -> Result<Shape, String> {
    for op in ops {
        let next = shape_of(op, shape, f)?;
        f(op, shape, next);
        shape = next;
    }
    Ok(shape)
}

fn shape_of(op: &Op, shape: Shape, f: &mut dyn FnMut(&Op, Shape, Shape)) -> Result<Shape, String> {
    let map = |what: &str| match shape {
        Shape::Map { c, h, w } => Ok((c, h, w)),
        Shape::Flat(_) => Err(format!(
            "{what} needs image-shaped input but gets flat activations of shape {shape}"
        )),
    };
    Ok(match op {
        Op::Conv {
            name,
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            groups,
            ..
        } => {
            let (c, h, w) = map(&format!("conv `{name}`"))?;
            if c != *c_in {
                return Err(format!(
                    "conv `{name}` expects {c_in} input channels but gets {c} (shape {shape})"
                ));
            }
            if *groups == 0 || c_in % groups != 0 || c_out % groups != 0 || *stride == 0 {
                return Err(format!(
                    "conv `{name}`: groups {groups} must divide {c_in} and {c_out}, stride must be ≥ 1"
                ));
            }
            match (
                conv_out(h, *kernel, *stride, *padding),
                conv_out(w, *kernel, *stride, *padding),
            ) {
                (Some(h), Some(w)) if h > 0 && w > 0 => Shape::Map { c: *c_out, h, w },
                _ => {
                    return Err(format!(
                        "conv `{name}`: a {kernel}×{kernel} kernel does not fit input {shape}"
                    ));
                }
            }
        }
        Op::BatchNorm { name, channels } => {
            let (c, _, _) = map(&format!("batch norm `{name}`"))?;
            if c != *channels {
                return Err(format!(
                    "batch norm `{name}` has {channels} channels but gets {c}"
                ));
            }
            shape
        }
        Op::Relu | Op::Relu6 => shape,
        Op::MaxPool {
            kernel,
            stride,
            padding,
        } => {
            let (c, h, w) = map("max pooling")?;
            match (
                conv_out(h, *kernel, *stride, *padding),
                conv_out(w, *kernel, *stride, *padding),
            ) {
                (Some(h), Some(w)) if h > 0 && w > 0 && *stride > 0 && 2 * padding <= *kernel => {
                    Shape::Map { c, h, w }
                }
                _ => {
                    return Err(format!(
                        "max pooling {kernel}×{kernel} does not fit activations of shape {shape}"
                    ));
                }
            }
        }
        Op::GlobalAvgPool => Shape::Flat(map("global average pooling")?.0),
        Op::Flatten => match shape {
            Shape::Map { c, h, w } => Shape::Flat(c * h * w),
            flat => flat,
        },
        Op::Linear {
            name, d_in, d_out, ..
        } => {
            let d = match shape {
                Shape::Flat(d) => d,
                Shape::Map { c, h, w } => c * h * w,
            };
            if d != *d_in {
                return Err(format!(
                    "linear layer `{name}` expects {d_in} inputs but gets {d} (shape {shape})"
                ));
            }
            Shape::Flat(*d_out)
        }
        Op::Residual {
            name,
            body,
            shortcut,
            ..
        } => {
            let out = shape_through(body, shape, f)?;
            let skip = match shortcut {
                Shortcut::Identity => shape,
                Shortcut::ZeroPad {
                    c_in,
                    c_out,
                    stride,
                } => {
                    let (c, h, w) = map(&format!("the shortcut of `{name}`"))?;
                    if c != *c_in || c_out < c_in || *stride == 0 {
                        return Err(format!(
                            "the zero-padding shortcut of `{name}` maps {c_in} → {c_out} channels but gets {c}"
                        ));
                    }
                    Shape::Map {
                        c: *c_out,
                        h: h.div_ceil(*stride),
                        w: w.div_ceil(*stride),
                    }
                }
                Shortcut::Projection { ops } => shape_through(ops, shape, f)?,
            };
            if out != skip {
                return Err(format!(
                    "residual block `{name}`: its body gives {out} but its shortcut gives {skip}"
                ));
            }
            out
        }
    })
}

fn channel_groups_in(ops: &[Op], input: Shape, out: &mut Vec<ChannelGroup>) {
    // Shapes before each op, to know a linear layer's spatial block after flattening.
    let mut shapes = Vec::with_capacity(ops.len() + 1);
    let mut s = input;
    shapes.push(s);
    for op in ops {
        s = match shape_of(op, s, &mut |_, _, _| {}) {
            Ok(s) => s,
            Err(_) => return,
        };
        shapes.push(s);
    }
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Conv {
                name,
                c_out,
                groups,
                bias,
                ..
            } if *groups == 1 => {
                let mut slices = vec![(format!("{name}.weight"), 0, 1)];
                if *bias {
                    slices.push((format!("{name}.bias"), 0, 1));
                }
                if follow_channel(&ops[i + 1..], &shapes[i + 1..], *c_out, &mut slices) {
                    out.push(ChannelGroup {
                        conv: name.clone(),
                        channels: *c_out,
                        slices,
                    });
                }
            }
            Op::Residual { body, .. } => {
                // Inside a block, every conv but the one feeding the sum can drop channels.
                channel_groups_in(body, shapes[i], out);
            }
            _ => {}
        }
    }
}

/// Walks from a conv's output to the next dense layer that reads its channels, collecting
/// what a dropped channel zeroes. False if the channel reaches something that cannot drop it
/// (a residual sum, the end of the program).
fn follow_channel(
    rest: &[Op],
    shapes: &[Shape],
    channels: usize,
    slices: &mut Vec<(String, usize, usize)>,
) -> bool {
    for (k, op) in rest.iter().enumerate() {
        match op {
            Op::BatchNorm { name, .. } => {
                slices.push((format!("{name}.weight"), 0, 1));
                slices.push((format!("{name}.bias"), 0, 1));
            }
            Op::Relu | Op::Relu6 | Op::MaxPool { .. } | Op::Flatten => {}
            Op::Conv {
                name,
                c_in,
                groups,
                bias,
                ..
            } if *groups == *c_in && *c_in == channels && *groups > 1 => {
                // Depthwise: channel j in, channel j out.
                slices.push((format!("{name}.weight"), 0, 1));
                if *bias {
                    slices.push((format!("{name}.bias"), 0, 1));
                }
            }
            Op::Conv { name, groups, .. } if *groups == 1 => {
                slices.push((format!("{name}.weight"), 1, 1));
                return true;
            }
            Op::GlobalAvgPool => {
                // The next linear layer reads one input per channel.
                return match rest[k + 1..].iter().find(|o| !matches!(o, Op::Flatten)) {
                    Some(Op::Linear { name, .. }) => {
                        slices.push((format!("{name}.weight"), 0, 1));
                        true
                    }
                    _ => false,
                };
            }
            Op::Linear { name, .. } => {
                // Flattened channel-major: channel j is inputs j·h·w .. (j+1)·h·w, which
                // are rows of the [in, out] weight.
                let block = match shapes[k] {
                    Shape::Map { h, w, .. } => h * w,
                    Shape::Flat(d) => d / channels.max(1),
                };
                slices.push((format!("{name}.weight"), 0, block));
                return true;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(name: &str, c_in: usize, c_out: usize, stride: usize) -> Op {
        Op::Conv {
            name: name.into(),
            c_in,
            c_out,
            kernel: 3,
            stride,
            padding: 1,
            groups: 1,
            bias: false,
        }
    }

    fn small() -> Program {
        Program {
            input: [3, 8, 8],
            ops: vec![
                conv("conv1", 3, 4, 1),
                Op::BatchNorm {
                    name: "bn1".into(),
                    channels: 4,
                },
                Op::Relu,
                Op::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                },
                Op::Flatten,
                Op::Linear {
                    name: "fc".into(),
                    d_in: 64,
                    d_out: 10,
                    bias: true,
                },
            ],
            output: "fc".into(),
        }
    }

    #[test]
    fn params_shapes_and_flops() {
        let p = small();
        assert_eq!(p.check(), Ok(10));
        let names: Vec<_> = p.params().iter().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "bn1.weight",
                "bn1.bias",
                "fc.weight",
                "fc.bias"
            ]
        );
        assert_eq!(p.params()[0].shape, vec![4, 3, 3, 3]);
        assert_eq!(p.params()[3].torch_shape(), vec![10, 64]);
        let all = |n: &str| p.params().iter().find(|q| q.name == n).unwrap().len();
        // conv: 2·108 weights·64 positions; fc: 2·640 + 10.
        assert_eq!(p.flops(&all), 2 * 108 * 64 + 2 * 640 + 10);
        assert_eq!(p.batch_norms().len(), 1);
    }

    #[test]
    fn shape_errors_name_the_layer() {
        let mut p = small();
        if let Op::Linear { d_in, .. } = &mut p.ops[5] {
            *d_in = 63;
        }
        assert_eq!(
            p.check().unwrap_err(),
            "linear layer `fc` expects 63 inputs but gets 64 (shape [64])"
        );
        let mut p = small();
        p.output = "nope".into();
        assert!(p.check().unwrap_err().contains("`nope` does not exist"));
    }

    #[test]
    fn channel_group_reaches_the_flattened_linear_layer() {
        let g = small().channel_groups();
        assert_eq!(g.len(), 1);
        assert_eq!(
            g[0].slices,
            vec![
                ("conv1.weight".into(), 0, 1),
                ("bn1.weight".into(), 0, 1),
                ("bn1.bias".into(), 0, 1),
                ("fc.weight".into(), 0, 16),
            ]
        );
    }

    #[test]
    fn residual_shapes_must_agree() {
        let block = |shortcut| Program {
            input: [4, 8, 8],
            ops: vec![
                Op::Residual {
                    name: "layer1.0".into(),
                    body: vec![conv("layer1.0.conv1", 4, 8, 2)],
                    shortcut,
                    relu: true,
                },
                Op::GlobalAvgPool,
                Op::Linear {
                    name: "fc".into(),
                    d_in: 8,
                    d_out: 2,
                    bias: true,
                },
            ],
            output: "fc".into(),
        };
        assert!(
            block(Shortcut::Identity)
                .check()
                .unwrap_err()
                .contains("its body gives [8, 4, 4] but its shortcut gives [4, 8, 8]")
        );
        let ok = block(Shortcut::ZeroPad {
            c_in: 4,
            c_out: 8,
            stride: 2,
        });
        assert_eq!(ok.check(), Ok(2));
        assert_eq!(ok.residual_blocks(), vec!["layer1.0"]);
        // The conv feeding the residual sum cannot drop channels.
        assert!(ok.channel_groups().is_empty());
    }
}
