//! `mlp`: a fully-connected ReLU network, e.g. LeNet-300-100 (`widths: [784, 300, 100, 10]`).
//! Layers are `fc1` … `fcN`; the last is the output layer. The input is flattened, so any
//! image shape with `c·h·w == widths[0]` fits.

use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Input width, hidden widths, output width: `n` widths give `n − 1` layers.
    pub widths: Vec<usize>,
}

impl MlpSpec {
    pub fn program(&self) -> Result<Program, String> {
        let w = &self.widths;
        if w.len() < 2 {
            return Err(format!(
                "an mlp needs at least 2 widths (input and output), got {w:?}"
            ));
        }
        if let Some(i) = w.iter().position(|&x| x == 0) {
            return Err(format!(
                "mlp width {i} is 0 in {w:?}; all widths must be > 0"
            ));
        }
        let n = w.len() - 1;
        let mut ops = vec![Op::Flatten];
        for (k, pair) in w.windows(2).enumerate() {
            ops.push(Op::Linear {
                name: format!("fc{}", k + 1),
                d_in: pair[0],
                d_out: pair[1],
                bias: true,
            });
            if k + 1 < n {
                ops.push(Op::Relu);
            }
        }
        Ok(Program {
            // Flat input: the interpreter flattens whatever image it is given.
            input: [1, 1, w[0]],
            ops,
            output: format!("fc{n}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rules() {
        let spec = |w: Vec<usize>| MlpSpec { widths: w }.program();
        assert!(spec(vec![5]).unwrap_err().contains("at least 2 widths"));
        assert!(spec(vec![5, 0, 2]).unwrap_err().contains("width 1 is 0"));
        let p = spec(vec![3, 2]).unwrap();
        assert_eq!(p.check(), Ok(2));
        assert_eq!(p.output, "fc1");
    }
}
