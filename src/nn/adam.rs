//! Adam as burn's optimiser computes it (PyTorch's defaults but for epsilon, which the
//! trainer sets), with each parameter's step one [`NnBackend::nn_adam_step`]: on the CPU a
//! single pass instead of burn's dozen tensor operations. The state is burn's `AdamState`,
//! so saved optimiser states read and write as before.

use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::tensor::Tensor;

use super::ops::{AdamStep, NnBackend};

/// Adam without `amsgrad`, with an optional L2 penalty added to the gradient.
#[derive(Clone, Debug)]
pub struct PipeAdam {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: Option<f32>,
}

impl PipeAdam {
    /// Betas (0.9, 0.999), PyTorch's and burn's defaults.
    pub fn new(epsilon: f32, weight_decay: Option<f32>) -> Self {
        PipeAdam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon,
            weight_decay,
        }
    }
}

impl<B: NnBackend> SimpleOptimizer<B> for PipeAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (time, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, None),
        };
        let c = AdamStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
            lr,
        };
        let (param, m1, m2) = B::nn_adam_step(tensor, grad, moments, &c);
        let state = AdamState::new(AdaptiveMomentumState::new(time, m1, m2));
        (param, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::{AdamConfig, SimpleOptimizer};
    use burn::tensor::{Tensor, TensorData};

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::PipeAdam;

    fn randoms(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn t(v: Vec<f32>) -> Tensor<Flex, 1> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, vec![n]), &Default::default())
    }

    fn bits(t: &Tensor<Flex, 1>) -> Vec<u32> {
        let v = t.clone().into_data().to_vec::<f32>().expect("f32");
        v.into_iter().map(f32::to_bits).collect()
    }

    /// Five steps from the same parameter and gradients, with and without weight decay,
    /// over more elements than one thread's share: burn's `Adam` and ours give the same bits
    /// for the parameter and both moments at every step.
    #[test]
    fn steps_are_burns_bit_for_bit() {
        let n = 40_000;
        for wd in [None, Some(5e-4f32)] {
            let burns = AdamConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(wd.map(WeightDecayConfig::new))
                .build();
            let ours = PipeAdam::new(1e-8, wd);
            let (mut p_b, mut p_o) = (t(randoms(n, 1)), t(randoms(n, 1)));
            let (mut s_b, mut s_o) = (None, None);
            for step in 0..5u64 {
                let g = randoms(n, 10 + step);
                let lr = 1e-3 * (step + 1) as f64;
                (p_b, s_b) = SimpleOptimizer::<Flex>::step(&burns, lr, p_b, t(g.clone()), s_b);
                (p_o, s_o) = SimpleOptimizer::<Flex>::step(&ours, lr, p_o, t(g), s_o);
                let (a, b) = (s_b.as_ref().unwrap(), s_o.as_ref().unwrap());
                assert_eq!(bits(&p_b), bits(&p_o), "parameter, step {step}, {wd:?}");
                assert_eq!(bits(&a.momentum.moment_1), bits(&b.momentum.moment_1));
                assert_eq!(bits(&a.momentum.moment_2), bits(&b.momentum.moment_2));
                assert_eq!(a.momentum.time, b.momentum.time);
            }
        }
    }
}
