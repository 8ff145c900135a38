//! Program surgery for lesion studies (Veit, Wilber & Belongie 2016, "Residual networks
//! behave like ensembles of relatively shallow networks"): delete or reorder parts of a
//! trained model's [`Program`] at test time, keeping every other weight as trained.
//!
//! The parts that may be touched are the *units* of the program — top-level operations that
//! leave the activation shape unchanged, so that the rest of the network still fits when they
//! are gone or moved:
//! - a residual block whose shortcut is the identity: deleting it drops the residual branch
//!   and keeps the skip, `y = x` (a block that downsamples changes the shape through its
//!   shortcut and cannot go);
//! - in a plain net, a convolution with as many output as input channels, stride 1 and a
//!   size-preserving padding, taken together with the batch norm and ReLU that follow it.
//!
//! Units are found by name; parameters stay bound by name too, so a lesioned program runs
//! with the original weights (see [`crate::nn::methods::lesion::eval`]).
//!
//! Veit et al.'s other measurement, the gradient each path length carries, is in
//! [`path_gradients`]; running a lesioned program with the trained weights, in [`eval`].

pub mod eval;
pub mod path_gradients;

use crate::nn::program::{Op, Program, Shape, Shortcut};

/// What kind of unit a lesion touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// A residual block with an identity shortcut.
    Block,
    /// A shape-preserving convolution with its batch norm and ReLU.
    Layer,
}

/// One deletable, reorderable part of a program.
#[derive(Clone, Debug, PartialEq)]
pub struct Unit {
    /// The block's or the convolution's name (`layer1.2`, `conv5`).
    pub name: String,
    pub kind: UnitKind,
    /// Index of its first operation in `Program::ops`.
    pub start: usize,
    /// Number of operations it spans (1 for a block; conv, batch norm, ReLU for a layer).
    pub len: usize,
    /// The activation shape it takes and gives; units of the same shape may swap places.
    pub shape: Shape,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LesionError {
    #[error("the model's program is malformed: {0}")]
    Program(String),
    #[error("`{name}` cannot be deleted or moved: {why}")]
    NotDeletable { name: String, why: String },
    #[error("the model has no unit named `{name}`; its deletable units are: {units}")]
    Unknown { name: String, units: String },
    #[error("cannot place `{moved}` where `{slot}` was: it takes {got}, the slot takes {want}")]
    ShapeMismatch {
        moved: String,
        slot: String,
        got: Shape,
        want: Shape,
    },
    #[error("a reordering must be a permutation of the {units} deletable units, got {order:?}")]
    NotAPermutation { units: usize, order: Vec<usize> },
}

/// What a user is told the deletable units are, when a model has none.
pub const DELETABLE_KINDS: &str = "residual blocks whose shortcut is the identity (not the \
     downsampling ones) and convolutions with equal input and output channels, stride 1 and \
     size-preserving padding (with their batch norm and ReLU)";

/// The deletable units of `program`, in program order.
pub fn units(program: &Program) -> Result<Vec<Unit>, LesionError> {
    Ok(scan(program)?.0)
}

/// `(name, why)` of a top-level block or conv that is not a unit.
type Refusal = (String, String);

/// The units, and for each top-level block or conv that is *not* one, why not.
fn scan(program: &Program) -> Result<(Vec<Unit>, Vec<Refusal>), LesionError> {
    let shapes = program.top_level_shapes().map_err(LesionError::Program)?;
    let (mut units, mut refused) = (Vec::new(), Vec::new());
    let ops = &program.ops;
    for (i, op) in ops.iter().enumerate() {
        let (input, output) = (shapes[i], shapes[i + 1]);
        match op {
            Op::Residual { name, shortcut, .. } => {
                if matches!(shortcut, Shortcut::Identity) && input == output {
                    units.push(Unit {
                        name: name.clone(),
                        kind: UnitKind::Block,
                        start: i,
                        len: 1,
                        shape: input,
                    });
                } else {
                    refused.push((
                        name.clone(),
                        format!(
                            "it is a downsampling block (its shortcut maps {input} to {output}); \
                             only blocks with an identity shortcut can be deleted"
                        ),
                    ));
                }
            }
            Op::Conv { name, .. } => {
                if input != output {
                    refused.push((
                        name.clone(),
                        format!(
                            "it maps {input} to {output}; only convolutions that keep the shape \
                             can be deleted"
                        ),
                    ));
                    continue;
                }
                // The batch norm and ReLU that belong to it go with it.
                let mut len = 1;
                if matches!(ops.get(i + len), Some(Op::BatchNorm { .. })) {
                    len += 1;
                }
                if matches!(ops.get(i + len), Some(Op::Relu | Op::Relu6)) {
                    len += 1;
                }
                units.push(Unit {
                    name: name.clone(),
                    kind: UnitKind::Layer,
                    start: i,
                    len,
                    shape: input,
                });
            }
            _ => {}
        }
    }
    Ok((units, refused))
}

fn find<'a>(program: &Program, all: &'a [Unit], name: &str) -> Result<&'a Unit, LesionError> {
    if let Some(u) = all.iter().find(|u| u.name == name) {
        return Ok(u);
    }
    let (_, refused) = scan(program)?;
    if let Some((_, why)) = refused.iter().find(|(n, _)| n == name) {
        return Err(LesionError::NotDeletable {
            name: name.into(),
            why: why.clone(),
        });
    }
    Err(LesionError::Unknown {
        name: name.into(),
        units: if all.is_empty() {
            format!("none ({DELETABLE_KINDS})")
        } else {
            all.iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// `program` without the named units (a block leaves its identity skip, a layer leaves its
/// input unchanged).
pub fn delete(program: &Program, names: &[&str]) -> Result<Program, LesionError> {
    let all = units(program)?;
    let mut drop = vec![false; program.ops.len()];
    for name in names {
        let u = find(program, &all, name)?;
        drop[u.start..u.start + u.len].fill(true);
    }
    Ok(Program {
        input: program.input,
        ops: program
            .ops
            .iter()
            .zip(&drop)
            .filter(|(_, d)| !**d)
            .map(|(op, _)| op.clone())
            .collect(),
        output: program.output.clone(),
    })
}

/// `program` with its units reordered: the slot of unit `j` (in [`units`] order) runs unit
/// `order[j]`. Every unit must land in a slot of its own shape.
pub fn reorder(program: &Program, order: &[usize]) -> Result<Program, LesionError> {
    let all = units(program)?;
    let mut seen = vec![false; all.len()];
    let permutation = order.len() == all.len()
        && order
            .iter()
            .all(|&j| j < all.len() && !std::mem::replace(&mut seen[j], true));
    if !permutation {
        return Err(LesionError::NotAPermutation {
            units: all.len(),
            order: order.to_vec(),
        });
    }
    for (slot, &j) in order.iter().enumerate() {
        if all[j].shape != all[slot].shape {
            return Err(LesionError::ShapeMismatch {
                moved: all[j].name.clone(),
                slot: all[slot].name.clone(),
                got: all[j].shape,
                want: all[slot].shape,
            });
        }
    }
    let mut ops = Vec::with_capacity(program.ops.len());
    let mut i = 0;
    while i < program.ops.len() {
        match all.iter().position(|u| u.start == i) {
            Some(slot) => {
                let u = &all[order[slot]];
                ops.extend_from_slice(&program.ops[u.start..u.start + u.len]);
                i += all[slot].len;
            }
            None => {
                ops.push(program.ops[i].clone());
                i += 1;
            }
        }
    }
    Ok(Program {
        input: program.input,
        ops,
        output: program.output.clone(),
    })
}

/// `program` with units `a` and `b` swapped, and the resulting order of its units.
pub fn swap(program: &Program, a: &str, b: &str) -> Result<(Program, Vec<usize>), LesionError> {
    let all = units(program)?;
    let ia = all.iter().position(|u| u.name == a);
    let ib = all.iter().position(|u| u.name == b);
    let (ia, ib) = match (ia, ib) {
        (Some(ia), Some(ib)) => (ia, ib),
        (None, _) => return Err(find(program, &all, a).unwrap_err()),
        (_, None) => return Err(find(program, &all, b).unwrap_err()),
    };
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.swap(ia, ib);
    Ok((reorder(program, &order)?, order))
}

/// Kendall's τ between `order` (a permutation of `0..n`) and the identity:
/// (concordant − discordant pairs) / (n(n−1)/2). 1 for the original order, −1 reversed.
pub fn kendall_tau(order: &[usize]) -> f64 {
    let n = order.len();
    if n < 2 {
        return 1.0;
    }
    let mut score = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            score += if order[i] < order[j] { 1 } else { -1 };
        }
    }
    score as f64 / (n * (n - 1) / 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;
    use crate::nn::arch::{ConvnetSpec, ResnetSpec};

    fn resnet8() -> Program {
        // n = 2: layer2.0 and layer3.0 downsample, the other four blocks are identities.
        let mut s = ResnetSpec::standard(14);
        s.width = 4;
        s.input = [1, 8, 8];
        ModelSpec::Resnet(s).program().unwrap()
    }

    #[test]
    fn resnet_units_are_the_identity_blocks() {
        let p = resnet8();
        let names: Vec<_> = units(&p).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]);
        let err = delete(&p, &["layer2.0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`layer2.0` cannot be deleted or moved: it is a downsampling block (its shortcut \
             maps [4, 8, 8] to [8, 4, 4]); only blocks with an identity shortcut can be deleted"
        );
        assert!(matches!(
            delete(&p, &["layer9.0"]).unwrap_err(),
            LesionError::Unknown { .. }
        ));
    }

    #[test]
    fn deleting_a_block_removes_exactly_that_block() {
        let p = resnet8();
        let d = delete(&p, &["layer1.1", "layer3.1"]).unwrap();
        assert_eq!(d.ops.len(), p.ops.len() - 2);
        assert_eq!(
            d.residual_blocks(),
            ["layer1.0", "layer2.0", "layer2.1", "layer3.0"]
        );
        assert_eq!(d.check(), p.check());
    }

    #[test]
    fn swaps_stay_within_a_stage() {
        let p = resnet8();
        let (q, order) = swap(&p, "layer1.0", "layer1.1").unwrap();
        assert_eq!(order, [1, 0, 2, 3]);
        assert_eq!(
            q.residual_blocks(),
            [
                "layer1.1", "layer1.0", "layer2.0", "layer2.1", "layer3.0", "layer3.1"
            ]
        );
        assert_eq!(q.params().len(), p.params().len());
        assert!(matches!(
            swap(&p, "layer1.0", "layer2.1").unwrap_err(),
            LesionError::ShapeMismatch { .. }
        ));
        assert!(matches!(
            reorder(&p, &[0, 0, 1, 2]).unwrap_err(),
            LesionError::NotAPermutation { .. }
        ));
    }

    #[test]
    fn kendall_tau_of_known_permutations() {
        assert_eq!(kendall_tau(&[0, 1, 2, 3, 4]), 1.0);
        assert_eq!(kendall_tau(&[4, 3, 2, 1, 0]), -1.0);
        // One adjacent swap of n: one discordant pair of n(n−1)/2, τ = 1 − 4/(n(n−1)) =
        // (10 − 2)/10 for n = 5.
        assert_eq!(kendall_tau(&[0, 2, 1, 3, 4]), 8.0 / 10.0);
        assert_eq!(kendall_tau(&[1, 0]), -1.0);
        assert_eq!(kendall_tau(&[0]), 1.0);
    }

    #[test]
    fn plain_net_units_are_shape_preserving_convs_with_bn_and_relu() {
        let spec: ConvnetSpec = serde_json::from_value(serde_json::json!({
            "layers": [4, 4, "M", 8, 8, 8], "batch_norm": true, "input": [1, 8, 8]
        }))
        .unwrap();
        let p = ModelSpec::Convnet(spec).program().unwrap();
        let u = units(&p).unwrap();
        let names: Vec<_> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["conv2", "conv4", "conv5"]);
        assert!(u.iter().all(|u| u.len == 3 && u.kind == UnitKind::Layer));
        let d = delete(&p, &["conv4"]).unwrap();
        assert_eq!(d.ops.len(), p.ops.len() - 3);
        assert!(
            d.params()
                .iter()
                .all(|q| q.layer != "conv4" && q.layer != "bn4")
        );
        assert_eq!(d.check(), p.check());
        assert!(
            delete(&p, &["conv3"])
                .unwrap_err()
                .to_string()
                .contains("it maps [4, 4, 4] to [8, 4, 4]")
        );
        // conv4 and conv5 may swap; the order of all three units says which moved.
        let (q, order) = swap(&p, "conv4", "conv5").unwrap();
        assert_eq!(order, [0, 2, 1]);
        assert_eq!(q.check(), p.check());
    }
}
