//! The CPU kernels against burn's generic operations ([`reference`]), forward values and
//! gradients, for the shapes the model families use.
//!
//! Errors are measured relative to the largest reference value of each tensor:
//! `max |kernel − reference| / max |reference|`. The kernels sum in a different order than
//! burn (and partly in `f64`), so they agree to `f32` rounding, not bit for bit; the bounds
//! below are a few times the largest error seen on these shapes.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Conv2dGeometry, NnBackend, reference};

type Ad = Autodiff<Flex>;

/// Convolutions (forward and every gradient); the largest error seen was 6.7e-7.
const CONV_BOUND: f32 = 2e-6;
/// Batch norm (output, statistics and gradients); the largest seen was 2e-7.
const BN_BOUND: f32 = 2e-6;
/// Average pooling sums at most a window or a plane; the largest seen was 1.1e-7. (Max
/// pooling only moves values: it must agree exactly.)
const POOL_BOUND: f32 = 5e-7;

pub(super) fn randoms(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Ad, D> {
    let data = TensorData::new(randoms(shape.iter().product(), seed), shape.to_vec());
    Tensor::from_data(data, &Default::default())
}

fn values<const D: usize>(t: Tensor<Ad, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 tensor")
}

fn inner_values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 tensor")
}

/// `max |a − b| / max |b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn assert_close(what: &str, a: &[f32], b: &[f32], bound: f32) {
    let e = rel_err(a, b);
    assert!(e <= bound, "{what}: relative error {e:e} above {bound:e}");
}

/// Output and the gradients of `Σ y·r` (a fixed random `r`) with respect to `inputs`.
fn grads_of<const D: usize, const K: usize>(
    y: Tensor<Ad, D>,
    r_seed: u64,
    inputs: [&Tensor<Ad, 4>; K],
    params: &[&Tensor<Ad, 1>],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let r = tensor(y.dims(), r_seed);
    let grads = (y.clone() * r).sum().backward();
    let mut out: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| inner_values(t.grad(&grads).expect("input gradient")))
        .collect();
    out.extend(
        params
            .iter()
            .map(|t| inner_values(t.grad(&grads).expect("parameter gradient"))),
    );
    (values(y), out)
}

struct ConvCase {
    x: [usize; 4],
    c_out: usize,
    k: usize,
    g: Conv2dGeometry,
    bias: bool,
}

fn conv(
    x: [usize; 4],
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
) -> ConvCase {
    ConvCase {
        x,
        c_out,
        k,
        g: Conv2dGeometry {
            stride,
            padding,
            groups,
        },
        bias: false,
    }
}

/// Forward values and the gradients of x, weight (and bias) of one convolution, kernel
/// against reference; also the non-autodiff forward.
fn check_conv(case: &ConvCase, seed: u64) {
    let ConvCase {
        x,
        c_out,
        k,
        g,
        bias,
    } = *case;
    let w_shape = [c_out, x[1] / g.groups, k, k];
    let make = || {
        (
            tensor(x, seed).require_grad(),
            tensor(w_shape, seed + 1).require_grad(),
            bias.then(|| tensor([c_out], seed + 2).require_grad()),
        )
    };
    let run = |kernel: bool| {
        let (xt, wt, bt) = make();
        let y = if kernel {
            Ad::nn_conv2d(xt.clone(), wt.clone(), bt.clone(), g)
        } else {
            reference::conv2d(xt.clone(), wt.clone(), bt.clone(), g)
        };
        let params: Vec<&Tensor<Ad, 1>> = bt.iter().collect();
        grads_of(y, seed + 3, [&xt, &wt], &params)
    };
    let (y, grads) = run(true);
    let (y_ref, grads_ref) = run(false);
    let what = format!("conv {x:?} → {c_out}, {k}×{k}, {g:?}");
    assert_close(&format!("{what}: output"), &y, &y_ref, CONV_BOUND);
    for (name, (a, b)) in ["dx", "dweight", "dbias"]
        .iter()
        .zip(grads.iter().zip(&grads_ref))
    {
        assert_close(&format!("{what}: {name}"), a, b, CONV_BOUND);
    }
    let (xt, wt, bt) = make();
    let inner = Flex::nn_conv2d(xt.inner(), wt.inner(), bt.map(|b| b.inner()), g);
    assert_eq!(
        inner_values(inner),
        y,
        "{what}: Flex and Autodiff<Flex> forwards differ"
    );
}

#[test]
fn conv_kernels_match_burn_for_the_families_shapes() {
    let mut cases = vec![
        // ResNet / VGG / Conv-N: 3×3, padding 1, stride 1 and 2.
        conv([3, 8, 10, 10], 12, 3, 1, 1, 1),
        conv([3, 8, 9, 9], 16, 3, 2, 1, 1),
        // First layer: 3 input channels, with bias (convnet without batch norm).
        ConvCase {
            bias: true,
            ..conv([2, 3, 8, 8], 8, 3, 1, 1, 1)
        },
        // 1×1 (MobileNetV2 expansion and projection; stride 2 as a projection shortcut).
        conv([3, 8, 6, 6], 24, 1, 1, 0, 1),
        conv([3, 8, 7, 7], 16, 1, 2, 0, 1),
        // Depthwise 3×3, stride 1 and 2.
        conv([3, 12, 8, 8], 12, 3, 1, 1, 12),
        conv([3, 12, 9, 9], 12, 3, 2, 1, 12),
        // Grouped, neither dense nor depthwise.
        conv([2, 8, 6, 6], 12, 3, 1, 1, 4),
        // No padding, non-square input.
        conv([2, 4, 7, 5], 6, 3, 1, 0, 1),
        // Small planes, many images: several images per product.
        conv([40, 8, 4, 4], 8, 3, 1, 1, 1),
        conv([40, 8, 2, 2], 12, 1, 1, 0, 1),
        // 5×5 with padding 2: output as wide as the input, taps two columns off the edge.
        conv([2, 4, 7, 6], 5, 5, 1, 2, 1),
        conv([2, 6, 7, 6], 6, 5, 1, 2, 6),
        // Direct kernels (stride 1, outputs 8 or more wide): outputs straight into rows of
        // 16 (with and without padding), or on padded-width rows; output channels that do
        // not fill a tile of four.
        conv([2, 5, 6, 16], 6, 3, 1, 1, 1),
        conv([2, 4, 5, 18], 7, 3, 1, 0, 1),
        conv([2, 3, 9, 12], 5, 5, 1, 2, 1),
        conv([3, 16, 12, 33], 9, 3, 1, 1, 1),
        // Narrower planes with output channels in vectors of 16: pixel tiles crossing
        // images (2×2), one to three vectors of channels, pixels not filling a tile.
        conv([5, 16, 6, 6], 32, 3, 1, 1, 1),
        conv([40, 16, 2, 2], 48, 3, 1, 1, 1),
        conv([3, 4, 7, 5], 16, 3, 1, 1, 1),
        // Planes of one row and one column: every tap but the centre reads padding.
        conv([3, 6, 1, 1], 6, 3, 1, 1, 6),
        conv([3, 4, 1, 5], 6, 3, 1, 1, 1),
    ];
    cases.push(ConvCase {
        bias: true,
        ..conv([40, 6, 2, 2], 6, 3, 2, 1, 6)
    });
    cases.push(ConvCase {
        bias: true,
        ..conv([2, 3, 16, 16], 8, 3, 1, 1, 1)
    });
    for (i, case) in cases.iter().enumerate() {
        check_conv(case, 100 * i as u64);
    }
}

#[test]
fn conv_weight_gradient_is_the_same_for_every_batch_split() {
    use super::conv::{ConvDims, weight_grad, weight_grad_split};
    // Through im2col (5 wide), the direct kernels (16 wide) and the narrow-plane kernels
    // (4 wide, output channels in a vector).
    for (h, w, c_out) in [(5, 5, 6), (3, 16, 6), (4, 4, 16)] {
        let d = ConvDims::new(
            [7, 4, h, w],
            [c_out, 4, 3, 3],
            Conv2dGeometry {
                stride: 1,
                padding: 1,
                groups: 1,
            },
        );
        let x = randoms(7 * 4 * h * w, 1);
        let dy = randoms(7 * c_out * h * w, 2);
        let whole = weight_grad(&x, &dy, &d);
        // Budgets that cut the batch into 7, 3 and 1 slices: different sums, all close.
        for budget in [1, 3 * c_out * 36, 7 * c_out * 36] {
            let split = weight_grad_split(&x, &dy, &d, budget);
            assert_close(
                &format!("{w} wide, budget {budget}"),
                &split,
                &whole,
                CONV_BOUND,
            );
        }
    }
}

fn check_bn_train(shape: [usize; 4], seed: u64) {
    let c = shape[1];
    let run = |kernel: bool| {
        let x = tensor(shape, seed).require_grad();
        let gamma = (tensor([c], seed + 1) + 1.5).require_grad();
        let beta = tensor([c], seed + 2).require_grad();
        let out = if kernel {
            Ad::nn_batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5)
        } else {
            reference::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5)
        };
        let stats = (values(out.mean), values(out.var));
        let (y, grads) = grads_of(out.output, seed + 3, [&x], &[&gamma, &beta]);
        (y, stats, grads)
    };
    let (y, (mean, var), grads) = run(true);
    let (y_ref, (mean_ref, var_ref), grads_ref) = run(false);
    let what = format!("batch norm {shape:?}");
    assert_close(&format!("{what}: output"), &y, &y_ref, BN_BOUND);
    assert_close(&format!("{what}: mean"), &mean, &mean_ref, BN_BOUND);
    assert_close(&format!("{what}: var"), &var, &var_ref, BN_BOUND);
    for (name, (a, b)) in ["dx", "dgamma", "dbeta"]
        .iter()
        .zip(grads.iter().zip(&grads_ref))
    {
        assert_close(&format!("{what}: {name}"), a, b, BN_BOUND);
    }
}

#[test]
fn batch_norm_train_matches_burn() {
    check_bn_train([4, 6, 8, 8], 1);
    check_bn_train([16, 3, 2, 2], 2);
    // Statistics far from zero: the variance is a sum of squared deviations, not E[x²]−E[x]².
    let x = tensor([4, 3, 5, 5], 9) * 0.01 + 100.0;
    let (g, b) = (tensor([3], 10), tensor([3], 11));
    let out = Ad::nn_batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
    let out_ref = reference::batch_norm_train(x, g, b, 1e-5);
    assert_close("offset var", &values(out.var), &values(out_ref.var), 1e-3);
    assert_close(
        "offset output",
        &values(out.output),
        &values(out_ref.output),
        1e-3,
    );
}

#[test]
fn batch_norm_eval_matches_burn() {
    let shape = [4, 6, 5, 5];
    let run = |kernel: bool| {
        let x = tensor(shape, 20).require_grad();
        let gamma = (tensor([6], 21) + 1.5).require_grad();
        let beta = tensor([6], 22).require_grad();
        let mean = tensor([6], 23);
        let var = tensor([6], 24).abs() + 0.5;
        let y = if kernel {
            Ad::nn_batch_norm_eval(x.clone(), gamma.clone(), beta.clone(), mean, var, 1e-5)
        } else {
            reference::batch_norm_eval(x.clone(), gamma.clone(), beta.clone(), mean, var, 1e-5)
        };
        grads_of(y, 25, [&x], &[&gamma, &beta])
    };
    let (y, grads) = run(true);
    let (y_ref, grads_ref) = run(false);
    assert_close("eval output", &y, &y_ref, BN_BOUND);
    for (name, (a, b)) in ["dx", "dgamma", "dbeta"]
        .iter()
        .zip(grads.iter().zip(&grads_ref))
    {
        assert_close(&format!("eval {name}"), a, b, BN_BOUND);
    }
}

fn check_pool(shape: [usize; 4], k: usize, stride: usize, pad: usize, max: bool) {
    let run = |kernel: bool| {
        let x = tensor(shape, 30).require_grad();
        let y = match (max, kernel) {
            (true, true) => Ad::nn_max_pool2d(x.clone(), k, stride, pad),
            (true, false) => reference::max_pool2d(x.clone(), k, stride, pad),
            (false, true) => Ad::nn_avg_pool2d(x.clone(), k, stride, pad),
            (false, false) => reference::avg_pool2d(x.clone(), k, stride, pad),
        };
        grads_of(y, 31, [&x], &[])
    };
    let (y, grads) = run(true);
    let (y_ref, grads_ref) = run(false);
    let what = format!(
        "{} pool {shape:?} k{k} s{stride} p{pad}",
        if max { "max" } else { "avg" }
    );
    let bound = if max { 0.0 } else { POOL_BOUND };
    assert_close(&format!("{what}: output"), &y, &y_ref, bound);
    assert_close(&format!("{what}: dx"), &grads[0], &grads_ref[0], bound);
}

#[test]
fn pooling_matches_burn() {
    for max in [true, false] {
        // The families' 2×2 stride 2, an odd size that drops the last row and column,
        // overlapping 3×3 stride 2 windows with padding.
        check_pool([3, 4, 8, 8], 2, 2, 0, max);
        check_pool([2, 3, 7, 7], 2, 2, 0, max);
        check_pool([2, 3, 9, 9], 3, 2, 1, max);
    }
    let run = |kernel: bool| {
        let x = tensor([5, 7, 6, 6], 40).require_grad();
        let y = if kernel {
            Ad::nn_global_avg_pool(x.clone())
        } else {
            reference::global_avg_pool(x.clone())
        };
        grads_of(y, 41, [&x], &[])
    };
    let (y, grads) = run(true);
    let (y_ref, grads_ref) = run(false);
    assert_close("global avg pool: output", &y, &y_ref, POOL_BOUND);
    assert_close("global avg pool: dx", &grads[0], &grads_ref[0], POOL_BOUND);
}

/// ReLU6: the forward pass is burn's `clamp(0, 6)` bit for bit (NaN included); the gradient
/// flows where `0 < x < 6` only, as in PyTorch, where burn's also flows at exactly 0 and 6.
#[test]
fn relu6_matches_burn_except_for_the_gradient_at_its_bounds() {
    let mut xs: Vec<f32> = randoms(4 * 3 * 5 * 5, 60).iter().map(|v| 8.0 * v).collect();
    xs[..5].copy_from_slice(&[0.0, 6.0, -0.0, f32::NAN, 6.5]);
    let x = || {
        let data = TensorData::new(xs.clone(), vec![4, 3, 5, 5]);
        Tensor::<Ad, 4>::from_data(data, &Default::default()).require_grad()
    };
    let (x_ours, x_burn) = (x(), x());
    let (y, grads) = grads_of(Ad::nn_relu6(x_ours.clone()), 61, [&x_ours], &[]);
    let (y_ref, grads_ref) = grads_of(reference::relu6(x_burn.clone()), 61, [&x_burn], &[]);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&y_ref));
    assert_eq!(bits(&y[..3]), bits(&[0.0, 6.0, -0.0]));
    assert!(y[3].is_nan());
    assert_eq!(y[4], 6.0);
    // The gradient of Σ y·r is r where 0 < x < 6, else 0.
    let r = randoms(xs.len(), 61);
    let expected: Vec<f32> = xs
        .iter()
        .zip(&r)
        .map(|(&x, &r)| if x > 0.0 && x < 6.0 { r } else { 0.0 })
        .collect();
    assert_eq!(bits(&grads[0]), bits(&expected));
    // burn's differs at exactly 0 and 6 (and for NaN, which its masks let through).
    for (i, (a, b)) in grads[0].iter().zip(&grads_ref[0]).enumerate() {
        if i >= 4 {
            assert_eq!(a.to_bits(), b.to_bits(), "dx[{i}]");
        }
    }
    assert_eq!(grads_ref[0][..2], r[..2]);
    assert_eq!(grads[0][..2], [0.0, 0.0]);
    // Rank 2 and the inference backend give the same values.
    let flat = Tensor::<Flex, 2>::from_data(
        TensorData::new(xs.clone(), vec![12, 25]),
        &Default::default(),
    );
    assert_eq!(bits(&inner_values(Flex::nn_relu6(flat))), bits(&y_ref));
}

/// One training-shaped pass through every kernel (conv on a wide and on a narrow plane,
/// batch norm, max pool, depthwise, global pool), gradients included, in a pool of
/// `threads` threads.
fn pass_bits(threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| {
        let dense = Conv2dGeometry {
            stride: 1,
            padding: 1,
            groups: 1,
        };
        let depthwise = Conv2dGeometry {
            stride: 2,
            padding: 1,
            groups: 16,
        };
        let x = tensor([6, 3, 12, 16], 50).require_grad();
        let w1 = tensor([8, 3, 3, 3], 51).require_grad();
        let w2 = tensor([16, 1, 3, 3], 52).require_grad();
        let w3 = tensor([16, 8, 3, 3], 56).require_grad();
        let gamma = tensor([8], 53).require_grad();
        let beta = tensor([8], 54).require_grad();
        let y = Ad::nn_conv2d(x.clone(), w1.clone(), None, dense);
        let bn = Ad::nn_batch_norm_train(y, gamma.clone(), beta.clone(), 1e-5);
        let y = Ad::nn_max_pool2d(bn.output, 2, 2, 0);
        let y = Ad::nn_conv2d(y, w3.clone(), None, dense);
        let y = Ad::nn_conv2d(y, w2.clone(), None, depthwise);
        let y = Ad::nn_global_avg_pool(y);
        let (out, grads) = grads_of(y, 55, [&x, &w1, &w3, &w2], &[&gamma, &beta]);
        let mut all = out;
        all.extend(values(bn.mean));
        all.extend(values(bn.var));
        all.extend(grads.into_iter().flatten());
        all.into_iter().map(f32::to_bits).collect()
    })
}

#[test]
fn kernels_give_the_same_bits_with_any_thread_count() {
    let one = pass_bits(1);
    assert_eq!(pass_bits(2), one);
    assert_eq!(pass_bits(5), one);
}

/// Losses of `steps` SGD steps (momentum 0.9, lr 0.05) of `spec` on a fixed batch of 16,
/// with the kernels or with burn's generic operations.
fn losses(spec: &str, steps: usize, reference_ops: bool) -> Vec<f32> {
    use crate::nn::step_timing::{bench_config, synthetic_split_shaped, whole_batch};
    use crate::nn::train::TrainSession;
    use crate::nn::{InitScheme, Mask, ModelSpec, OptimizerKind, init_weights};
    let run = || {
        let spec: ModelSpec = serde_json::from_str(spec).expect("model spec");
        let weights = init_weights(&spec, InitScheme::KaimingNormal, 0);
        let mut cfg = bench_config(16, steps as u64);
        (cfg.optimizer, cfg.lr, cfg.momentum) = (OptimizerKind::Sgd, 0.05, 0.9);
        let mut session = TrainSession::<Ad>::new(
            &spec,
            &weights,
            &Mask::dense(&spec),
            &cfg,
            Default::default(),
        )
        .expect("session");
        let split = synthetic_split_shaped(16, spec.input_shape(), spec.output_dim(), 7);
        let (images, labels) = whole_batch(&split);
        (0..steps)
            .map(|_| session.step(images.clone(), &labels, cfg.lr).into_scalar())
            .collect()
    };
    if reference_ops {
        super::with_reference_ops(run)
    } else {
        run()
    }
}

/// Whole models: training steps with the kernels follow burn's generic operations to
/// rounding, for as many steps as the model is well-conditioned. The tiny MobileNetV2 is
/// not after two steps: there burn's own operations with the learning rate changed by one
/// part in a million moved the third loss from 1.63996 to 1.63876 and the fourth from 1.411
/// to 1.509 (the kernels gave 1.63800 and 1.483), so only its first two are compared.
#[test]
fn training_with_the_kernels_follows_burns_ops() {
    let models = [
        (
            r#"{"arch":"resnet","depth":8,"width":4,"input":[3,8,8]}"#,
            4,
        ),
        (
            r#"{"arch":"convnet","layers":[8,"M",8,"M"],"fc":[16],"input":[1,12,12],"batch_norm":true}"#,
            4,
        ),
        (
            r#"{"arch":"mobilenet_v2","width":0.1,"input":[1,28,28]}"#,
            2,
        ),
    ];
    for (spec, steps) in models {
        let ours = losses(spec, steps, false);
        let theirs = losses(spec, steps, true);
        assert_eq!(ours.len(), steps);
        for (step, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let e = (a - b).abs() / b.abs();
            assert!(
                e <= 2e-6,
                "{spec} step {step}: loss {a} with the kernels, {b} with burn's ops"
            );
        }
    }
}
