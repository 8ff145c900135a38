//! Model architectures: one file per family, each compiling its parameters to a
//! [`Program`]. Everything else (parameters, shapes, FLOPs, prunable and output layers,
//! channel links) is derived from the program, so a family is only its layer list.
//!
//! Adding a family is one file here and one variant of [`ModelSpec`].

pub mod convnet;
pub mod mlp;
pub mod mobilenet_v2;
pub mod resnet;
pub mod vgg;

use serde::{Deserialize, Serialize};

use super::program::{ParamInfo, Program};

pub use convnet::ConvnetSpec;
pub use mlp::MlpSpec;
pub use mobilenet_v2::MobileNetV2Spec;
pub use resnet::{BlockKind, ResnetSpec, ShortcutOption, Stem};
pub use vgg::VggSpec;

/// One model family as `pipe kinds init` lists it.
pub struct Family {
    /// The `arch` value.
    pub arch: &'static str,
    pub about: &'static str,
    /// Every field the family accepts (from its spec struct).
    pub fields: Vec<&'static str>,
    /// A model of the family, as a user writes it (checked by a test to be valid).
    pub example: &'static str,
}

/// Every family, in the order of [`ModelSpec`]'s variants.
pub fn families() -> Vec<Family> {
    use crate::serde_fields::field_names;
    vec![
        Family {
            arch: "mlp",
            about: "fully-connected ReLU network (LeNet-300-100): `widths` from input to classes",
            fields: field_names::<MlpSpec>(),
            example: r#"{"arch": "mlp", "widths": [784, 300, 100, 10]}"#,
        },
        Family {
            arch: "convnet",
            about: "plain conv net (Conv-2/4/6, RePr's CNN, NetAug's tiny CNN): 3×3 convs, `M` = 2×2 max pool, `{conv: N, stride: 2}`, then `fc` widths",
            fields: field_names::<ConvnetSpec>(),
            example: r#"{"arch": "convnet", "layers": [64, 64, "M"], "fc": [256, 256], "input": [1, 28, 28]}"#,
        },
        Family {
            arch: "vgg",
            about: "CIFAR VGG-11/13/16/19 with batch norm (`depth`), channels scaled by `width`",
            fields: field_names::<VggSpec>(),
            example: r#"{"arch": "vgg", "depth": 11, "width": 0.25}"#,
        },
        Family {
            arch: "resnet",
            about: "ResNet: CIFAR (6n+2 basic, 9n+2 `block: bottleneck`) or `stem: imagenet` (18…152); base `width`; `shortcut` a, b, c or none (the plain net); or `stages` / an explicit `blocks` list",
            fields: field_names::<ResnetSpec>(),
            example: r#"{"arch": "resnet", "depth": 20, "shortcut": "a"}"#,
        },
        Family {
            arch: "mobilenet_v2",
            about: "MobileNetV2 with a `width` multiplier",
            fields: field_names::<MobileNetV2Spec>(),
            example: r#"{"arch": "mobilenet_v2", "width": 0.35}"#,
        },
    ]
}

/// The input every family defaults to: CIFAR's `[3, 32, 32]`.
pub(crate) fn default_input() -> [usize; 3] {
    [3, 32, 32]
}

/// The output width every family defaults to: 10 classes.
pub(crate) fn default_classes() -> usize {
    10
}

/// A model architecture, serialised with an `arch` tag, e.g.
/// `{"arch": "mlp", "widths": [784, 300, 100, 10]}` or `{"arch": "resnet", "depth": 20}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "arch", rename_all = "snake_case")]
pub enum ModelSpec {
    /// Fully-connected ReLU network (LeNet-300-100).
    Mlp(MlpSpec),
    /// Plain conv nets: Conv-2/4/6 of the lottery-ticket paper, RePr's 3-layer CNN.
    Convnet(ConvnetSpec),
    /// CIFAR VGG-11/13/16/19 with batch norm.
    Vgg(VggSpec),
    /// CIFAR ResNet-(6n+2) with an explicit block list.
    Resnet(ResnetSpec),
    /// MobileNetV2 with a width multiplier (and a tiny variant).
    MobilenetV2(MobileNetV2Spec),
}

impl ModelSpec {
    /// LeNet-300-100 for MNIST, as in the lottery-ticket paper.
    pub fn lenet_300_100() -> ModelSpec {
        ModelSpec::Mlp(MlpSpec {
            widths: vec![784, 300, 100, 10],
        })
    }

    /// An MLP with these widths.
    pub fn mlp(widths: Vec<usize>) -> ModelSpec {
        ModelSpec::Mlp(MlpSpec { widths })
    }

    /// `(in_dim, out_dim)` of each linear layer (what format-1 checkpoints list).
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        self.params()
            .iter()
            .filter(|p| p.role == crate::nn::program::ParamRole::LinearWeight)
            .map(|p| (p.shape[0], p.shape[1]))
            .collect()
    }

    /// Names of the prunable layers (convs and linear layers), in order: `fc1`, `conv1`,
    /// `layer1.0.conv2`, … (one per [`crate::nn::Mask`] entry).
    pub fn layer_names(&self) -> Vec<String> {
        self.params()
            .iter()
            .filter(|p| p.is_weight())
            .map(|p| p.layer.clone())
            .collect()
    }

    /// Flattened input width.
    pub fn input_dim(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// The family's name as written in `arch:`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::Convnet(_) => "convnet",
            ModelSpec::Vgg(_) => "vgg",
            ModelSpec::Resnet(_) => "resnet",
            ModelSpec::MobilenetV2(_) => "mobilenet_v2",
        }
    }

    /// The layer program, or why the parameters do not describe a model.
    pub fn program(&self) -> Result<Program, String> {
        let p = match self {
            ModelSpec::Mlp(s) => s.program()?,
            ModelSpec::Convnet(s) => s.program()?,
            ModelSpec::Vgg(s) => s.program()?,
            ModelSpec::Resnet(s) => s.program()?,
            ModelSpec::MobilenetV2(s) => s.program()?,
        };
        p.check()
            .map_err(|e| format!("{} model: {e}", self.family()))?;
        Ok(p)
    }

    /// Checks the architecture is well formed (not that it fits a dataset).
    pub fn validate(&self) -> Result<(), String> {
        self.program().map(|_| ())
    }

    /// The parameters, in program order (empty for an invalid spec).
    pub fn params(&self) -> Vec<ParamInfo> {
        self.program().map(|p| p.params()).unwrap_or_default()
    }

    /// Input shape `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.program().map(|p| p.input).unwrap_or([0; 3])
    }

    /// Output width (classes, or regression outputs).
    pub fn output_dim(&self) -> usize {
        self.program().and_then(|p| p.check()).unwrap_or(0)
    }

    /// Name of the output layer (e.g. `fc3`, `fc`).
    pub fn output_layer(&self) -> String {
        self.program().map(|p| p.output).unwrap_or_default()
    }

    /// Number of conv and linear weights (biases and batch norm excluded; LeNet-300-100:
    /// 266,200).
    pub fn num_weights(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.is_weight())
            .map(ParamInfo::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_listed_with_a_valid_example_and_its_fields() {
        let fams = families();
        let archs: Vec<&str> = fams.iter().map(|f| f.arch).collect();
        assert_eq!(archs, ["mlp", "convnet", "vgg", "resnet", "mobilenet_v2"]);
        for f in &fams {
            let spec: ModelSpec =
                serde_json::from_str(f.example).unwrap_or_else(|e| panic!("{}: {e}", f.arch));
            assert_eq!(spec.family(), f.arch);
            spec.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", f.arch));
            assert!(!f.fields.is_empty(), "{}", f.arch);
        }
        assert_eq!(fams[0].fields, ["widths"]);
        assert!(
            fams[1].fields.contains(&"global_pool"),
            "{:?}",
            fams[1].fields
        );
    }

    #[test]
    fn serde_shape_is_unchanged_for_mlp() {
        // The init stage's key holds this JSON: it must not change.
        let s = ModelSpec::lenet_300_100();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"arch":"mlp","widths":[784,300,100,10]}"#);
        assert_eq!(serde_json::from_str::<ModelSpec>(&j).unwrap(), s);
        assert!(
            serde_json::from_str::<ModelSpec>(r#"{"arch":"mlp","widths":[1,2],"x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<ModelSpec>(r#"{"arch":"cnn","widths":[1,2]}"#).is_err());
    }

    #[test]
    fn lenet_facts() {
        let s = ModelSpec::lenet_300_100();
        assert_eq!(s.num_weights(), 266_200);
        assert_eq!(s.output_layer(), "fc3");
        assert_eq!(s.output_dim(), 10);
        assert_eq!(s.input_shape(), [1, 1, 784]);
        let names: Vec<_> = s.params().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias",
                "fc3.weight",
                "fc3.bias"
            ]
        );
    }
}
