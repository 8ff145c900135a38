//! Weight initialisation on the host, independent of backend and thread count.

use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use super::program::ParamRole;
use super::weights::{Named, Param};
use super::{ModelSpec, Weights};
use crate::rng::{self, Domain};

/// Initialisation schemes for the weights (biases are zero, except under `torch_default`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// N(0, 2 / fan_in): He et al. with the ReLU gain sqrt(2).
    KaimingNormal,
    /// U(-b, b) with b = sqrt(6 / fan_in) (ReLU gain sqrt(2)).
    KaimingUniform,
    /// N(0, 2 / (fan_in + fan_out)).
    XavierNormal,
    /// U(-b, b) with b = sqrt(6 / (fan_in + fan_out)).
    XavierUniform,
    /// PyTorch's default for `nn.Linear` and `nn.Conv2d` (`reset_parameters`): weights AND
    /// biases from U(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)). The
    /// student of Tian et al. 2019 starts this way.
    TorchDefault,
}

/// Whose weights are drawn: each purpose has its own random streams ([`crate::rng`]), so a
/// random re-initialisation never reproduces `init`'s weights, whatever the two seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitDraw {
    /// The `init` stage (and everything that asks for "the" initial weights of a seed).
    Init,
    /// `reinit`: Rethinking's random re-initialisation.
    Reinit,
    /// NetAug's extra channels of the widest network.
    NetAugWide,
}

impl InitDraw {
    fn domains(self) -> (Domain, Domain) {
        match self {
            InitDraw::Init => (Domain::InitWeights, Domain::InitBiases),
            InitDraw::Reinit => (Domain::ReinitWeights, Domain::ReinitBiases),
            InitDraw::NetAugWide => (Domain::NetAugWideWeights, Domain::NetAugWideBiases),
        }
    }
}

/// Draws fresh weights for `spec`. Prunable weight `k` (conv or linear, in program order)
/// uses its own ChaCha8 stream derived from `(seed, k)`, and values are drawn in storage
/// order (`[out, in, kh, kw]` for a conv, `[in, out]` for a linear layer), so the result
/// depends only on the arguments. Fans are PyTorch's: a conv's fan-in is `in/groups · k²`.
///
/// Biases are zero (except under [`InitScheme::TorchDefault`], which draws the bias of weight
/// `k` from U(±1/sqrt(fan_in)) on its own stream of `(seed, k)`). PyTorch's `nn.Linear` default draws them from
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the lottery-ticket reference code
/// (and most pruning work) starts them at zero, which also makes a random
/// re-initialisation differ from the original only in the weights. Batch norm starts at
/// scale 1, shift 0, running mean 0 and variance 1, as in PyTorch.
pub fn init_weights(spec: &ModelSpec, scheme: InitScheme, seed: u64) -> Weights {
    draw_weights(spec, scheme, seed, InitDraw::Init)
}

/// [`init_weights`] for the purpose `draw`, from that purpose's own streams.
pub fn draw_weights(spec: &ModelSpec, scheme: InitScheme, seed: u64, draw: InitDraw) -> Weights {
    let (weight_domain, bias_domain) = draw.domains();
    let mut k = 0u64;
    // The fan-in of the last weight: a bias follows its weight in program order.
    let mut last_fan_in = 0usize;
    let params = spec
        .params()
        .into_iter()
        .map(|p| {
            let n = p.len();
            let data = match p.role {
                ParamRole::ConvWeight | ParamRole::LinearWeight => {
                    let mut rng = rng::stream(seed, weight_domain, k);
                    k += 1;
                    last_fan_in = p.fan_in;
                    let (fi, fo) = (p.fan_in as f64, p.fan_out as f64);
                    match scheme {
                        InitScheme::KaimingNormal => normal(&mut rng, (2.0 / fi).sqrt(), n),
                        InitScheme::XavierNormal => normal(&mut rng, (2.0 / (fi + fo)).sqrt(), n),
                        InitScheme::KaimingUniform => uniform(&mut rng, (6.0 / fi).sqrt(), n),
                        InitScheme::XavierUniform => uniform(&mut rng, (6.0 / (fi + fo)).sqrt(), n),
                        InitScheme::TorchDefault => uniform(&mut rng, (1.0 / fi).sqrt(), n),
                    }
                }
                ParamRole::Bias if scheme == InitScheme::TorchDefault && last_fan_in > 0 => {
                    let mut rng = rng::stream(seed, bias_domain, k - 1);
                    uniform(&mut rng, (1.0 / last_fan_in as f64).sqrt(), n)
                }
                ParamRole::BnWeight => vec![1.0; n],
                ParamRole::Bias | ParamRole::BnBias => vec![0.0; n],
            };
            Param {
                name: p.name,
                shape: p.shape,
                role: p.role,
                data,
            }
        })
        .collect();
    Weights {
        params,
        buffers: fresh_buffers(spec),
    }
}

/// Batch-norm running statistics of a model that has seen no data: mean 0, variance 1.
pub fn fresh_buffers(spec: &ModelSpec) -> Vec<Named> {
    spec.buffer_names()
        .into_iter()
        .map(|(name, c)| Named {
            data: vec![
                if name.ends_with("running_var") {
                    1.0
                } else {
                    0.0
                };
                c
            ],
            name,
            shape: vec![c],
        })
        .collect()
}

fn normal(rng: &mut ChaCha8Rng, std: f64, n: usize) -> Vec<f32> {
    let d = Normal::new(0.0f64, std).expect("finite positive std");
    (0..n).map(|_| d.sample(rng) as f32).collect()
}

fn uniform(rng: &mut ChaCha8Rng, bound: f64, n: usize) -> Vec<f32> {
    let d = Uniform::new_inclusive(-bound, bound).expect("finite bound");
    (0..n).map(|_| d.sample(rng) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_of(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let s = ModelSpec::mlp(vec![50, 40, 10]);
        let a = init_weights(&s, InitScheme::KaimingNormal, 3);
        assert_eq!(a, init_weights(&s, InitScheme::KaimingNormal, 3));
        assert_ne!(a, init_weights(&s, InitScheme::KaimingNormal, 4));
        assert_eq!(a.params[2].name, "fc2.weight");
        assert_eq!(a.params[0].data.len(), 2000);
        assert!(
            a.params
                .iter()
                .filter(|p| !p.is_prunable())
                .all(|p| p.data.iter().all(|&b| b == 0.0))
        );
        // Layer streams are independent: a deeper net shares the first layer.
        let deeper = ModelSpec::mlp(vec![50, 40, 30, 10]);
        assert_eq!(
            init_weights(&deeper, InitScheme::KaimingNormal, 3).params[0],
            a.params[0]
        );
    }

    #[test]
    fn scales_match_the_schemes() {
        let s = ModelSpec::mlp(vec![400, 200]);
        let fan_in = 400f64;
        let fan_sum = 600f64;
        let check = |scheme, want: f64| {
            let w = init_weights(&s, scheme, 1);
            let got = std_of(&w.params[0].data);
            assert!(
                (got / want - 1.0).abs() < 0.02,
                "{scheme:?}: std {got}, want {want}"
            );
            w
        };
        check(InitScheme::KaimingNormal, (2.0 / fan_in).sqrt());
        check(InitScheme::XavierNormal, (2.0 / fan_sum).sqrt());
        // U(-b, b) has std b / sqrt(3).
        let ku = check(
            InitScheme::KaimingUniform,
            (6.0 / fan_in).sqrt() / 3f64.sqrt(),
        );
        let b = (6.0 / fan_in).sqrt() as f32;
        assert!(ku.params[0].data.iter().all(|x| x.abs() <= b));
        check(
            InitScheme::XavierUniform,
            (6.0 / fan_sum).sqrt() / 3f64.sqrt(),
        );
    }

    #[test]
    fn torch_default_draws_weights_and_biases_within_one_over_sqrt_fan_in() {
        let s = ModelSpec::mlp(vec![400, 100, 10]);
        let w = init_weights(&s, InitScheme::TorchDefault, 7);
        assert_eq!(w, init_weights(&s, InitScheme::TorchDefault, 7));
        for (p, fan_in) in w.params.iter().zip([400f64, 400.0, 100.0, 100.0]) {
            let b = (1.0 / fan_in).sqrt();
            assert!(p.data.iter().all(|&x| (x as f64).abs() <= b), "{}", p.name);
            // U(-b, b) has std b / sqrt(3); 100 biases are a rough sample.
            let tol = if p.data.len() >= 1000 { 0.03 } else { 0.25 };
            let got = std_of(&p.data) / (b / 3f64.sqrt());
            assert!((got - 1.0).abs() < tol, "{}: {got}", p.name);
        }
        // Other schemes keep the biases at zero.
        let ku = init_weights(&s, InitScheme::KaimingUniform, 7);
        assert!(ku.params[1].data.iter().all(|&x| x == 0.0));
        assert!(w.params[1].data.iter().all(|&x| x != 0.0));
        assert_eq!(
            serde_json::to_string(&InitScheme::TorchDefault).unwrap(),
            "\"torch_default\""
        );
    }

    /// Rethinking's control must be able to differ from the ticket: for every pair of seeds,
    /// `reinit`'s weights share no tensor with `init`'s (nor do NetAug's extra channels).
    #[test]
    fn reinit_never_reproduces_init_whatever_the_seeds() {
        let s = ModelSpec::mlp(vec![30, 20, 10]);
        for scheme in [InitScheme::KaimingNormal, InitScheme::TorchDefault] {
            let draws = |d| -> Vec<Weights> {
                (0..=20)
                    .map(|seed| draw_weights(&s, scheme, seed, d))
                    .collect()
            };
            let (init, reinit, wide) = (
                draws(InitDraw::Init),
                draws(InitDraw::Reinit),
                draws(InitDraw::NetAugWide),
            );
            for (i, a) in init.iter().enumerate() {
                for (j, b) in reinit.iter().chain(&wide).enumerate() {
                    for (pa, pb) in a.params.iter().zip(&b.params) {
                        let drawn = pa.is_prunable() || scheme == InitScheme::TorchDefault;
                        if drawn {
                            assert_ne!(
                                pa.data, pb.data,
                                "{scheme:?} init seed {i}, other {j}: {}",
                                pa.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&InitScheme::KaimingNormal).unwrap(),
            "\"kaiming_normal\""
        );
        assert_eq!(
            serde_json::from_str::<InitScheme>("\"xavier_uniform\"").unwrap(),
            InitScheme::XavierUniform
        );
    }
}
