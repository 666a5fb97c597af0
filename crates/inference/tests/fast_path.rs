//! The fast CPU engine (`eabs_inference::fast`) against the generic Candle autodiff path, on
//! the architectures of Table 9 (MNIST, SVHN) with random and trained-like weights (the latter: every BatchNorm with a
//! non-trivial scale, shift and running statistics, so that folding is exercised).
//!
//! Tolerances: the two paths evaluate the same function in a different order of f32 operations
//! (BatchNorm folded into the weights, other GEMM shapes), so single values agree to ~1e-6
//! relative (measured: errors 2e-6, gradients 2e-5 per element, the smallest included). After
//! 49 Adam steps (the same noise draws on both paths) the latents agree to 1e-3 absolute and
//! the losses to 1e-3 relative (measured: 4.5e-4 and 2e-7). Adam divides by the root of the
//! second moment plus eps = 1e-8, so a coordinate whose gradient is of the order of eps moves
//! by a fraction of the learning rate that its rounding decides. The BatchNorm draws below keep
//! the folded scales within 0.65-1.45 per layer, as in trained decoders; with scales up to 2.7
//! per layer the sigmoid saturates, gradients of some (image, class) pairs fall to ~1e-9 and
//! those flat coordinates drift apart by up to one learning rate on both paths' rounding,
//! with the losses still equal to 3e-6.

use candle_core::{Device, Tensor, Var};
use eabs_core::host::{self, HostRead};
use eabs_inference::fast::ClassWorkspace;
use eabs_inference::{
    AbsInference, FrozenAbsModel, InferenceConfig, LatentClassModel, LatentInference,
};
use eabs_models::{AbsModel, DatasetKind, ModelConfig, ModelKind, Variant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Builds a model of an architecture and variant from a seed.
type MakeModel = fn(DatasetKind, Variant, u64) -> FrozenAbsModel;

/// A freshly initialised model (random weights, BatchNorm at its identity statistics).
fn random_init(family: DatasetKind, variant: Variant, seed: u64) -> FrozenAbsModel {
    let cfg = ModelConfig::paper(family, ModelKind::Abs(variant));
    FrozenAbsModel::new(&AbsModel::new(&cfg, seed, &Device::Cpu).unwrap())
}

/// A model of `family`'s architecture whose parameters and BatchNorm statistics are drawn away
/// from their initial values.
fn trained_like(family: DatasetKind, variant: Variant, seed: u64) -> FrozenAbsModel {
    let cfg = ModelConfig::paper(family, ModelKind::Abs(variant));
    let model = AbsModel::new(&cfg, seed, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in model.store().params().iter().chain(model.store().buffers()) {
        let t = var.as_tensor();
        let n = t.elem_count();
        let vals: Vec<f32> = if name.contains(".bn") && name.ends_with(".weight") {
            (0..n).map(|_| rng.random_range(0.8..1.2)).collect()
        } else if name.ends_with("running_var") {
            (0..n).map(|_| rng.random_range(0.7..1.5)).collect()
        } else if name.ends_with("running_mean")
            || (name.contains(".bn") && name.ends_with(".bias"))
        {
            (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
        } else {
            continue;
        };
        var.set(&host::from_vec(vals, t.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    FrozenAbsModel::new(&model)
}

/// `(n, d)` latents from a seeded standard normal (Candle's own `randn` is not seeded, and a
/// draw near a ReLU kink can put the two float orders on different sides of it).
fn latents(n: usize, d: usize, seed: u64) -> Tensor {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * d)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    host::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

fn images(family: DatasetKind, n: usize, seed: u64) -> Tensor {
    let (c, h, w) = ModelConfig::paper(family, ModelKind::Abs(Variant::ABS))
        .arch
        .image_shape;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    host::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().host_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3))
        .fold(0.0, f32::max)
}

/// Errors, prior terms and gradients of one class's objective: the fast engine's against the
/// model's own `decode` / `prior_term` differentiated by Candle, on random (freshly
/// initialised) and trained-like weights.
#[test]
fn objective_and_latent_gradient_match_autodiff() {
    let weights: [(&str, MakeModel); 2] = [("random", random_init), ("trained-like", trained_like)];
    for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
        for (variant, (kind, make)) in [Variant::ABS, Variant::E_ABS]
            .into_iter()
            .flat_map(|v| weights.map(|w| (v, w)))
        {
            let model = make(family, variant, 7);
            let fast = model
                .fast_model()
                .unwrap()
                .expect("FrozenAbsModel has a fast model");
            let n = 3;
            let x = images(family, n, 1);
            let p = model.n_pixels();
            let xf = x.reshape((n, p)).unwrap();
            let d = model.latent_dim();
            let z = latents(n, d, 3);
            let scale = 1.0 / p as f32;
            for class in [0, 9] {
                let zv = Var::from_tensor(&z).unwrap();
                let rec = model
                    .decode(class, zv.as_tensor())
                    .unwrap()
                    .reshape((n, p))
                    .unwrap();
                let err = (&xf - &rec).unwrap().sqr().unwrap().sum(1).unwrap();
                let prior = model.prior_term(class, zv.as_tensor()).unwrap();
                let total = match &prior {
                    Some(pr) => (&err + pr).unwrap(),
                    None => err.clone(),
                };
                let total = (total.sum_all().unwrap() * scale as f64).unwrap();
                let grads = total.backward().unwrap();
                let want_grad = flat(grads.get(zv.as_tensor()).unwrap());
                let got = fast
                    .class_objective(
                        class,
                        &flat(&xf),
                        &flat(&z),
                        true,
                        scale,
                        &mut ClassWorkspace::default(),
                    )
                    .unwrap();
                let what = format!("{family:?} {variant:?} {kind} weights, class {class}");
                let e = max_rel_diff(&got.errors, &flat(&err));
                assert!(
                    e < 1e-5,
                    "{what}: reconstruction errors differ by {e} (relative)"
                );
                match (&got.prior, &prior) {
                    (Some(a), Some(b)) => {
                        let e = max_rel_diff(a, &flat(b));
                        assert!(e < 1e-5, "{what}: prior terms differ by {e} (relative)");
                    }
                    (None, None) => {}
                    (a, b) => panic!(
                        "{what}: prior {} on the fast path, {} on Candle's",
                        a.is_some(),
                        b.is_some()
                    ),
                }
                let scale_g = want_grad.iter().map(|v| v.abs()).fold(0.0, f32::max);
                let e = max_abs_diff(&got.grad, &want_grad) / scale_g;
                assert!(
                    e < 1e-4,
                    "{what}: gradients differ by {e} of their largest entry"
                );
            }
        }
    }
}

fn run_both(
    model: &FrozenAbsModel,
    cfg: InferenceConfig,
    xs: &Tensor,
) -> (
    eabs_inference::InferenceOutput,
    eabs_inference::InferenceOutput,
) {
    let mut inference = AbsInference::new(model, cfg).unwrap();
    assert!(inference.fast_engine().is_some());
    let fast = inference.infer(xs, 11).unwrap();
    inference.set_fast_engine(false);
    assert!(inference.fast_engine().is_none());
    let slow = inference.infer(xs, 11).unwrap();
    (fast, slow)
}

/// The whole inference, 49 Adam steps: exact (ABS) and variational (E-ABS) inference, with and
/// without the encoder proposal, MNIST and SVHN architectures.
#[test]
fn optimum_after_49_steps_matches_autodiff() {
    let cases = [
        (
            DatasetKind::Mnist,
            Variant::ABS,
            LatentInference::Exact,
            false,
        ),
        (
            DatasetKind::Mnist,
            Variant::E_ABS,
            LatentInference::Variational,
            true,
        ),
        (
            DatasetKind::Mnist,
            Variant::E_ABS,
            LatentInference::Variational,
            false,
        ),
        (
            DatasetKind::Mnist,
            Variant::E_ABS,
            LatentInference::Exact,
            true,
        ),
        (
            DatasetKind::Svhn,
            Variant::E_ABS,
            LatentInference::Variational,
            true,
        ),
        (
            DatasetKind::Svhn,
            Variant::ABS,
            LatentInference::Variational,
            false,
        ),
    ];
    for (family, variant, mode, use_encoder) in cases {
        let model = trained_like(family, variant, 3);
        let cfg = InferenceConfig {
            n_candidates: 64,
            n_adam_steps: 49,
            use_encoder,
            ..model.inference_config(mode)
        };
        let n = if family == DatasetKind::Svhn { 2 } else { 4 };
        let xs = images(family, n, 2);
        let (fast, slow) = run_both(&model, cfg.clone(), &xs);
        let start = AbsInference::new(&model, cfg)
            .unwrap()
            .initial_latents(&xs)
            .unwrap()
            .means;
        let what = format!("{family:?} {variant:?} {mode:?} encoder {use_encoder}");
        let e = max_rel_diff(&flat(&fast.losses), &flat(&slow.losses));
        assert!(e < 1e-3, "{what}: final losses differ by {e} (relative)");
        let e = max_abs_diff(&flat(&fast.means), &flat(&slow.means));
        assert!(e < 1e-3, "{what}: optimal means differ by {e}");
        if let (Some(a), Some(b)) = (&fast.log_variances, &slow.log_variances) {
            let e = max_abs_diff(&flat(a), &flat(b));
            assert!(e < 1e-3, "{what}: optimal log-variances differ by {e}");
        }
        assert_eq!(
            fast.predictions().unwrap().host_vec1::<u32>().unwrap(),
            slow.predictions().unwrap().host_vec1::<u32>().unwrap(),
            "{what}: predictions"
        );
        // The optimisation did move the latents (the comparison is not of two starts).
        let moved = max_abs_diff(&flat(&fast.means), &flat(&start));
        assert!(
            moved > 0.1,
            "{what}: 49 steps moved the means by {moved} only"
        );
    }
    // The stock-op switch (the process-wide "is it our kernels?" test) rules the fast engine
    // out. Checked here, after the comparisons, as the switch is process-wide.
    let model = trained_like(DatasetKind::Mnist, Variant::E_ABS, 5);
    let inference =
        AbsInference::new(&model, model.inference_config(LatentInference::Exact)).unwrap();
    let before = eabs_kernels::set_stock_ops(true);
    let off = inference.fast_engine().is_none();
    eabs_kernels::set_stock_ops(before);
    assert!(off && inference.fast_engine().is_some());
}

/// The adaptive gradient of eq. (8), what every attack on an ABS-like model follows, is the
/// same with either engine: the classifier's inference runs on the fast engine by default, and
/// its gradient with respect to the input (built on the optimum `z*`) agrees with the one the
/// autodiff engine's optimum gives. A sampled loss (a margin of two logits) on MNIST E-ABS with
/// trained-like weights, variational inference with the same noise draws.
#[test]
fn adaptive_gradient_is_the_same_on_both_engines() {
    use eabs_core::{Bounds, Differentiable};
    use eabs_inference::AbsClassifier;
    let model = trained_like(DatasetKind::Mnist, Variant::E_ABS, 5);
    let cfg = InferenceConfig {
        n_candidates: 64,
        n_adam_steps: 10,
        ..model.inference_config(LatentInference::Variational)
    };
    let xs = images(DatasetKind::Mnist, 3, 4);
    let margin = |logits: &Tensor| -> candle_core::Result<Tensor> {
        logits.narrow(1, 3, 1)? - logits.narrow(1, 8, 1)?
    };
    let grad = |fast: bool| {
        let mut inference = AbsInference::new(&model, cfg.clone()).unwrap();
        inference.set_fast_engine(fast);
        assert_eq!(inference.fast_engine().is_some(), fast);
        let clf = AbsClassifier::new(inference, Bounds::UNIT, 9);
        let (value, g) = clf.value_and_grad(&xs, &margin).unwrap();
        (flat(&value), flat(&g))
    };
    let (v_fast, g_fast) = grad(true);
    let (v_slow, g_slow) = grad(false);
    let e = max_rel_diff(&v_fast, &v_slow);
    assert!(e < 1e-3, "margins differ by {e} (relative)");
    let largest = g_slow.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(largest > 0.0, "the gradient vanished");
    let e = max_abs_diff(&g_fast, &g_slow) / largest;
    assert!(
        e < 1e-3,
        "input gradients differ by {e} of their largest entry"
    );
}
