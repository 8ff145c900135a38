//! Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger 2016, "Deep networks with stochastic
//! depth"): during training each batch drops a random subset of residual branches (a dropped
//! block passes its shortcut on); at test time every branch is kept and scaled by its survival
//! probability. The seed document's last experiment (ResNet-110 on CIFAR-10: 5.96% vs 6.10%).
//!
//! Two rules: the paper's linear decay (block `l` of `L` survives with
//! `p_l = 1 − (l/L)(1 − p_L)`, `p_L = 0.5` in the paper) or a fixed number of kept blocks,
//! drawn uniformly per batch (each then survives with `keep/L`). The draws of iteration `t`
//! come from the stochastic-depth stream of `(seed, t)`: no other kind or role reaches it, and a
//! resumed training draws what the uninterrupted one did.
//!
//! The test-time rule is folded into the saved weights (`fold_survival`): a body ending in batch
//! norm outputs `γ·x̂ + β`, so scaling `γ` and `β` by `p_l` scales the branch exactly, in eval
//! mode. The checkpoint a stochastic-depth training saves is therefore the test-time network,
//! which every other stage (evaluate, prune, lesion, PyTorch) runs as a plain ResNet.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::nn::program::{Op, Program};
use crate::nn::{NnError, Weights};
use crate::rng::{self, Domain};

/// How a training drops residual branches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StochasticDepth {
    /// Survival probability of the last block, `p_L` (linear decay from 1 at the input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survival_last: Option<f64>,
    /// Instead: keep exactly this many blocks per batch, drawn uniformly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
}

impl StochasticDepth {
    /// Checks the rule against a model of `blocks` residual blocks.
    pub fn check(&self, blocks: usize) -> Result<(), String> {
        if blocks == 0 {
            return Err(
                "`stochastic_depth` needs a model with residual blocks (e.g. `arch: resnet`)"
                    .into(),
            );
        }
        match (self.survival_last, self.keep) {
            (Some(p), None) if p > 0.0 && p <= 1.0 => Ok(()),
            (Some(p), None) => Err(format!(
                "`stochastic_depth.survival_last` must lie in (0, 1], got {p}"
            )),
            (None, Some(k)) if (1..=blocks).contains(&k) => Ok(()),
            (None, Some(k)) => Err(format!(
                "`stochastic_depth.keep` must lie in 1..={blocks} (the model's residual blocks), got {k}"
            )),
            _ => Err(
                "`stochastic_depth` takes one of `survival_last` (e.g. 0.5, the paper's) or `keep` (blocks per batch)"
                    .into(),
            ),
        }
    }

    /// The survival probability of each of `blocks` blocks.
    pub fn survival(&self, blocks: usize) -> Vec<f64> {
        let l = blocks as f64;
        match (self.survival_last, self.keep) {
            (Some(p), _) => (1..=blocks)
                .map(|i| 1.0 - i as f64 / l * (1.0 - p))
                .collect(),
            (None, Some(k)) => vec![k as f64 / l; blocks],
            (None, None) => vec![1.0; blocks],
        }
    }

    /// Which of `blocks` blocks iteration `iteration` keeps.
    pub fn kept(&self, blocks: usize, seed: u64, iteration: u64) -> Vec<bool> {
        let mut r = rng::stream(seed, Domain::StochasticDepth, iteration);
        match self.keep {
            Some(k) => rng::choose_k(&mut r, blocks, k),
            None => self
                .survival(blocks)
                .into_iter()
                .map(|p| r.random::<f64>() < p)
                .collect(),
        }
    }
}

/// The last batch norm of each residual block's body, in block order, or the first block
/// whose body does not end in one (its branch could not be scaled exactly).
pub fn branch_norms(program: &Program) -> Result<Vec<String>, String> {
    program
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Residual { name, body, .. } => Some(match body.last() {
                Some(Op::BatchNorm { name: bn, .. }) => Ok(bn.clone()),
                _ => Err(format!(
                    "stochastic depth scales each residual branch through its last batch norm, \
                     but block `{name}` does not end in one"
                )),
            }),
            _ => None,
        })
        .collect()
}

/// Scales each residual branch by its survival probability (the paper's test-time rule) by
/// scaling its last batch norm's weight and bias.
pub fn fold_survival(
    program: &Program,
    weights: &mut Weights,
    survival: &[f64],
) -> Result<(), NnError> {
    let norms = branch_norms(program).map_err(NnError::Invalid)?;
    for (bn, &p) in norms.iter().zip(survival) {
        for suffix in ["weight", "bias"] {
            let name = format!("{bn}.{suffix}");
            let param = weights
                .params
                .iter_mut()
                .find(|q| q.name == name)
                .ok_or_else(|| NnError::Invalid(format!("no parameter `{name}` to scale")))?;
            for v in &mut param.data {
                *v = (*v as f64 * p) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::arch::{BlockKind, ResnetSpec};
    use crate::nn::net::{BnMode, Plan, buffers_to_device, to_net};
    use crate::nn::{InitScheme, Mask, ModelSpec, init_weights};
    use burn::backend::Flex;
    use burn::backend::flex::FlexDevice;
    use burn::tensor::{Tensor, TensorData};

    fn linear(p: f64) -> StochasticDepth {
        StochasticDepth {
            survival_last: Some(p),
            keep: None,
        }
    }

    fn keep(k: usize) -> StochasticDepth {
        StochasticDepth {
            survival_last: None,
            keep: Some(k),
        }
    }

    #[test]
    fn survival_decays_linearly_or_is_the_kept_fraction() {
        assert_eq!(linear(0.5).survival(4), [0.875, 0.75, 0.625, 0.5]);
        assert_eq!(keep(3).survival(4), [0.75; 4]);
        assert!(linear(0.0).check(4).unwrap_err().contains("(0, 1]"));
        assert!(keep(5).check(4).unwrap_err().contains("1..=4"));
        assert!(
            linear(0.5)
                .check(0)
                .unwrap_err()
                .contains("residual blocks")
        );
        let both = StochasticDepth {
            survival_last: Some(0.5),
            keep: Some(2),
        };
        assert!(both.check(4).unwrap_err().contains("one of"));
    }

    #[test]
    fn draws_are_fixed_by_seed_and_iteration_and_follow_the_survival() {
        let sd = linear(0.5);
        assert_eq!(sd.kept(27, 3, 10), sd.kept(27, 3, 10));
        assert_ne!(sd.kept(27, 3, 10), sd.kept(27, 3, 11));
        assert_ne!(sd.kept(27, 3, 10), sd.kept(27, 4, 10));
        // 4,000 draws: each block's kept fraction within 0.03 of its survival.
        let n = 4000;
        let mut counts = [0usize; 4];
        for it in 0..n {
            for (c, k) in counts.iter_mut().zip(sd.kept(4, 0, it)) {
                *c += usize::from(k);
            }
        }
        for (c, p) in counts.iter().zip(sd.survival(4)) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.03, "{counts:?}");
        }
        // A fixed number: exactly K every time.
        for it in 0..50 {
            assert_eq!(keep(3).kept(9, 1, it).iter().filter(|k| **k).count(), 3);
        }
    }

    fn resnet(blocks: Option<Vec<crate::nn::arch::resnet::BlockSpec>>) -> ModelSpec {
        ModelSpec::Resnet(ResnetSpec {
            depth: None,
            stages: blocks.is_none().then(|| vec![3]),
            blocks,
            block: BlockKind::Basic,
            width: 4,
            input: [1, 6, 6],
            ..ResnetSpec::standard(20)
        })
    }

    fn eval(spec: &ModelSpec, w: &crate::nn::Weights, keep: Option<&[bool]>) -> Vec<f32> {
        let plan = Plan::new(&spec.program().unwrap());
        let plan = match keep {
            Some(k) => plan.with_kept_blocks(k),
            None => plan,
        };
        let net = to_net::<Flex>(spec, w, &Mask::dense(spec), &FlexDevice).unwrap();
        let running = buffers_to_device::<Flex>(w, &FlexDevice);
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(
                (0..72).map(|v| (v as f32 * 0.37).sin()).collect(),
                [2, 1, 6, 6],
            ),
            &FlexDevice,
        );
        let (y, _) = net.forward(&plan, x, &BnMode::Running(&running));
        y.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_dropped_block_passes_its_shortcut_and_a_zero_survival_folds_to_the_same() {
        let spec = resnet(None);
        let w = init_weights(&spec, InitScheme::KaimingNormal, 2);
        // The same net without blocks 1 and 2 (identity shortcuts; the stem ends in a ReLU,
        // so the block's closing ReLU of a non-negative input changes nothing).
        let ModelSpec::Resnet(r) = &spec else {
            unreachable!()
        };
        let mut blocks = r.block_list().unwrap();
        blocks.truncate(1);
        let shorter = resnet(Some(blocks));
        let mut w_short = w.clone();
        w_short
            .params
            .retain(|p| !p.name.starts_with("layer1.1") && !p.name.starts_with("layer1.2"));
        w_short
            .buffers
            .retain(|p| !p.name.starts_with("layer1.1") && !p.name.starts_with("layer1.2"));
        let dropped = eval(&spec, &w, Some(&[true, false, false]));
        assert_eq!(dropped, eval(&shorter, &w_short, None));
        assert_ne!(dropped, eval(&spec, &w, None));
        // Folding survival 0 into blocks 1 and 2 zeroes their branches exactly.
        let mut folded = w.clone();
        fold_survival(&spec.program().unwrap(), &mut folded, &[1.0, 0.0, 0.0]).unwrap();
        assert_eq!(eval(&spec, &folded, None), dropped);
        // Survival 1 changes nothing; 0.5 halves the last norm's weight and bias.
        let mut same = w.clone();
        fold_survival(&spec.program().unwrap(), &mut same, &[1.0; 3]).unwrap();
        assert_eq!(same, w);
        let mut half = w.clone();
        fold_survival(&spec.program().unwrap(), &mut half, &[1.0, 1.0, 0.5]).unwrap();
        let get = |w: &crate::nn::Weights, n: &str| {
            w.params.iter().find(|p| p.name == n).unwrap().data.clone()
        };
        let want: Vec<f32> = get(&w, "layer1.2.bn2.weight")
            .iter()
            .map(|v| v * 0.5)
            .collect();
        assert_eq!(get(&half, "layer1.2.bn2.weight"), want);
        assert_eq!(
            get(&half, "layer1.1.bn2.weight"),
            get(&w, "layer1.1.bn2.weight")
        );
    }
}
