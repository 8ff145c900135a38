//! Model architectures.

use serde::{Deserialize, Serialize};

/// A model architecture. Serialised with an `arch` tag, e.g.
/// `{"arch": "mlp", "widths": [784, 300, 100, 10]}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "arch", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully-connected ReLU network. `widths` includes the input and output
    /// sizes, so `n` widths give `n - 1` linear layers.
    Mlp { widths: Vec<usize> },
}

impl ModelSpec {
    /// LeNet-300-100 for MNIST, as in the lottery-ticket paper.
    pub fn lenet_300_100() -> ModelSpec {
        ModelSpec::Mlp {
            widths: vec![784, 300, 100, 10],
        }
    }

    /// `(in_dim, out_dim)` of each linear layer.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        match self {
            ModelSpec::Mlp { widths } => widths.windows(2).map(|w| (w[0], w[1])).collect(),
        }
    }

    /// Layer names `fc1`, `fc2`, ...; the last is the output layer.
    pub fn layer_names(&self) -> Vec<String> {
        (1..=self.layer_dims().len())
            .map(|i| format!("fc{i}"))
            .collect()
    }

    /// Name of the output layer.
    pub fn output_layer(&self) -> String {
        self.layer_names().pop().unwrap_or_default()
    }

    /// Input feature count.
    pub fn input_dim(&self) -> usize {
        match self {
            ModelSpec::Mlp { widths } => widths.first().copied().unwrap_or(0),
        }
    }

    /// Output (class) count.
    pub fn output_dim(&self) -> usize {
        match self {
            ModelSpec::Mlp { widths } => widths.last().copied().unwrap_or(0),
        }
    }

    /// Checks the architecture is well formed. Does not check that it fits a
    /// dataset (e.g. 784 inputs for MNIST); the caller does that.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelSpec::Mlp { widths } => {
                if widths.len() < 2 {
                    return Err(format!(
                        "an mlp needs at least 2 widths (input and output), got {widths:?}"
                    ));
                }
                if let Some(i) = widths.iter().position(|&w| w == 0) {
                    return Err(format!(
                        "mlp width {i} is 0 in {widths:?}; all widths must be > 0"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Number of weights, biases excluded (LeNet-300-100: 266,200).
    pub fn num_weights(&self) -> usize {
        self.layer_dims().iter().map(|(i, o)| i * o).sum()
    }

    /// Number of biases.
    pub fn num_biases(&self) -> usize {
        self.layer_dims().iter().map(|(_, o)| o).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet_facts() {
        let s = ModelSpec::lenet_300_100();
        assert_eq!(s.num_weights(), 266_200);
        assert_eq!(s.num_biases(), 410);
        assert_eq!(s.layer_names(), vec!["fc1", "fc2", "fc3"]);
        assert_eq!(s.output_layer(), "fc3");
        assert_eq!(s.layer_dims(), vec![(784, 300), (300, 100), (100, 10)]);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn validation_rules() {
        assert!(ModelSpec::Mlp { widths: vec![5] }.validate().is_err());
        assert!(
            ModelSpec::Mlp {
                widths: vec![5, 0, 2]
            }
            .validate()
            .unwrap_err()
            .contains("width 1 is 0")
        );
        assert_eq!(ModelSpec::Mlp { widths: vec![3, 2] }.validate(), Ok(()));
    }

    #[test]
    fn serde_shape() {
        let s = ModelSpec::lenet_300_100();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"arch":"mlp","widths":[784,300,100,10]}"#);
        assert_eq!(serde_json::from_str::<ModelSpec>(&j).unwrap(), s);
        assert!(
            serde_json::from_str::<ModelSpec>(r#"{"arch":"mlp","widths":[1,2],"x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<ModelSpec>(r#"{"arch":"cnn","widths":[1,2]}"#).is_err());
    }
}
