//! The attackable classifier (adaptive gradient of eq. (8)) and the certified bound of eq. (7) /
//! Appendix A, on toy linear decoders.

// Index loops mirror the maths (image i, class k, pixel j) in these tests.
#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::Tensor;
use common::{images, rows, LinearModel, ToyPrior};
use eabs_core::host::HostRead;
use eabs_core::{Bounds, Classifier, Differentiable};
use eabs_inference::{
    certified_radius, quantiles, AbsClassifier, AbsInference, InferenceConfig, LatentInference,
};

fn exact_cfg() -> InferenceConfig {
    InferenceConfig {
        n_candidates: 200,
        n_adam_steps: 300,
        learning_rate: 0.02,
        ..InferenceConfig::abs_reference()
    }
}

#[test]
fn adaptive_gradient_matches_finite_differences_with_z_fixed() {
    for prior in [ToyPrior::Kl, ToyPrior::Quadratic(0.4)] {
        let model = LinearModel::new(3, 5, 2, 1.0, 20, prior);
        let (xs, _, _) = images(&model, 2, 0.3, 21);
        for mode in [LatentInference::Exact, LatentInference::Variational] {
            let cfg = InferenceConfig {
                mode,
                n_candidates: 50,
                n_adam_steps: 5,
                logit_scale: 3.0,
                ..InferenceConfig::e_abs()
            };
            let clf = AbsClassifier::new(AbsInference::new(&model, cfg).unwrap(), Bounds::UNIT, 7);
            // loss = logit_1 - 0.5 logit_2 per sample.
            let loss = |l: &Tensor| (l.narrow(1, 1, 1)? - (l.narrow(1, 2, 1)? * 0.5)?)?.squeeze(1);
            let out = clf.infer(&xs).unwrap();
            let logits = clf.adaptive_logits(&xs, &out).unwrap();
            assert!(
                rows(&(logits.clone() - &out.logits).unwrap().abs().unwrap())
                    .iter()
                    .flatten()
                    .all(|&v| v < 1e-5),
                "adaptive logits equal inference's logits at x"
            );
            // f64 reference: f(x) = sum_i loss_i, logit_k = -3 (||x - G_k(z*)||^2 + prior_k) / P.
            let recs = rows(&out.reconstructions.reshape((6, 5)).unwrap());
            let prior = rows(&out.prior_terms);
            let f = |x: &[Vec<f64>]| -> f64 {
                let mut total = 0.0;
                for (i, xi) in x.iter().enumerate() {
                    let logit = |k: usize| {
                        let e: f64 = xi
                            .iter()
                            .zip(&recs[i * 3 + k])
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        -3.0 * (e + prior[i][k]) / 5.0
                    };
                    total += logit(1) - 0.5 * logit(2);
                }
                total
            };
            let x0 = rows(&xs.reshape((2, 5)).unwrap());
            // Same z* for value_and_grad: rerun with a classifier whose call counter matches.
            let clf2 = AbsClassifier::new(
                AbsInference::new(&model, clf.inference().config().clone()).unwrap(),
                Bounds::UNIT,
                7,
            );
            let (value, grad) = clf2.value_and_grad(&xs, &loss).unwrap();
            assert_eq!(value.dims(), &[2]);
            let grad = rows(&grad.reshape((2, 5)).unwrap());
            let h = 1e-4;
            for i in 0..2 {
                for j in 0..5 {
                    let (mut xp, mut xm) = (x0.clone(), x0.clone());
                    xp[i][j] += h;
                    xm[i][j] -= h;
                    let fd = (f(&xp) - f(&xm)) / (2.0 * h);
                    assert!(
                        (grad[i][j] - fd).abs() < 1e-3,
                        "{prior:?} {mode:?} [{i}][{j}]: {} vs {fd}",
                        grad[i][j]
                    );
                    // Eq. (8): d logit_k / dx = -3 * 2 (x - G_k(z*)) / P.
                    let g8 = |k: usize| -3.0 * 2.0 * (x0[i][j] - recs[i * 3 + k][j]) / 5.0;
                    assert!((grad[i][j] - (g8(1) - 0.5 * g8(2))).abs() < 1e-3);
                }
            }
        }
    }
}

#[test]
fn classifier_reports_logits_and_stochasticity() {
    let model = LinearModel::new(3, 6, 2, 1.0, 22, ToyPrior::Kl);
    let (xs, _, labels) = images(&model, 6, 0.05, 23);
    let exact = AbsClassifier::new(
        AbsInference::new(&model, exact_cfg()).unwrap(),
        Bounds::new(-10.0, 10.0).unwrap(),
        0,
    );
    assert!(!exact.is_stochastic());
    assert_eq!(exact.n_classes(), 3);
    let l1 = rows(&exact.logits(&xs).unwrap());
    assert_eq!(
        l1,
        rows(&exact.logits(&xs).unwrap()),
        "exact inference is deterministic"
    );
    let pred = exact.predict(&xs).unwrap().host_vec1::<u32>().unwrap();
    // Images lie near their class manifold: the toy classifier is accurate.
    let correct = pred
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p as usize == **l)
        .count();
    assert!(correct >= 5, "{pred:?} vs {labels:?}");
    let cfg = InferenceConfig {
        mode: LatentInference::Variational,
        n_adam_steps: 5,
        ..exact_cfg()
    };
    let var = AbsClassifier::new(AbsInference::new(&model, cfg).unwrap(), Bounds::UNIT, 0);
    assert!(var.is_stochastic());
    assert_ne!(
        rows(&var.logits(&xs).unwrap()),
        rows(&var.logits(&xs).unwrap()),
        "each call draws new noise"
    );
    // Common random numbers: the same images twice in one call, as two blocks, get the same
    // noise row for row, so their logits agree; as one plain call they do not.
    let twice = Tensor::cat(&[&xs, &xs], 0).unwrap();
    let n = xs.dim(0).unwrap();
    let common = rows(&var.logits_common_noise(&twice, 2).unwrap());
    assert_eq!(common[..n], common[n..], "blocks share their noise");
    let plain = rows(&var.logits(&twice).unwrap());
    assert_ne!(plain[..n], plain[n..], "a plain call draws per row");
    assert!(var.logits_common_noise(&twice, 2 * n + 1).is_err());
}

#[test]
fn certified_radius_matches_a_hand_computation() {
    // l_y = 1, r_y = 1; d = [_, 3, 2]: class 1: (9 - 1) / (6 + 2) = 1; class 2: (4 - 1) / (4 + 2)
    // = 0.5. The minimum is 0.5 at class 2.
    assert_eq!(
        certified_radius(1.0, 1.0, &[0.0, 3.0, 2.0], 0),
        (0.5, Some(2))
    );
    // Squared-norm denominator of Section 3.4's eq. (7) would differ once r_y != 1: r_y = 2,
    // l_y = 4: class 1: (9 - 4) / (6 + 4) = 0.5 (eq. (7) as printed: 5 / 14).
    assert_eq!(
        certified_radius(4.0, 2.0, &[0.0, 3.0, 5.0], 0),
        (0.5, Some(1))
    );
    // Misclassified (l_y >= d_k^2): no certificate.
    assert_eq!(certified_radius(5.0, 2.0, &[2.0, 0.0], 1), (0.0, Some(0)));
    assert_eq!(certified_radius(1.0, 1.0, &[3.0], 0), (0.0, None));
    let q = quantiles(&[4.0, 1.0, 3.0, 2.0], &[0.0, 0.5, 1.0, 1.0 / 3.0]).unwrap();
    assert_eq!(q, vec![1.0, 2.5, 4.0, 2.0]);
    assert!(quantiles(&[], &[0.5]).is_err() && quantiles(&[1.0], &[1.5]).is_err());
}

/// Exact `l_k*(x) = min_z ||x - A_k z - b_k||^2 + beta/2 ||z||^2` prediction by the closed form.
fn predict_exact(model: &LinearModel, x: &[f64]) -> usize {
    (0..model.a.len())
        .map(|k| model.optimum(k, x, 1.0, true).1)
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0
}

#[test]
fn certified_bound_holds_against_brute_force_search() {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    // 1-D class manifolds (lines) in R^3: affine decoders, exact global optima by least squares.
    let model = LinearModel::new(3, 3, 1, 1.0, 24, ToyPrior::Kl);
    let (xs, xrows, labels) = images(&model, 6, 0.1, 25);
    let inf = AbsInference::new(&model, exact_cfg()).unwrap();
    let bounds = inf.certified_bounds(&xs, &labels).unwrap();
    assert!(bounds.within_validity());
    let summary = bounds.summary().unwrap();
    assert!(summary.n_certified >= 3, "{summary:?}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(26);
    for (i, x) in xrows.iter().enumerate() {
        let y = labels[i];
        // The inputs of the bound match the closed forms.
        let (_, l_y) = model.optimum(y, x, 1.0, true);
        assert!((bounds.true_class_losses[i] - l_y).abs() < 1e-3 * (1.0 + l_y));
        for k in 0..3 {
            let (_, d2) = model.optimum(k, x, 1.0, false);
            assert!((bounds.manifold_distances[i][k] - d2.sqrt()).abs() < 2e-3);
        }
        let eps = bounds.epsilons[i];
        if eps == 0.0 {
            continue;
        }
        assert_eq!(
            predict_exact(&model, x),
            y,
            "a certified sample is correctly classified"
        );
        // Brute force: along 400 directions (random, and towards each class's best
        // reconstruction), the smallest step that changes the prediction is >= eps*.
        let mut dirs: Vec<Vec<f64>> = (0..400)
            .map(|_| (0..3).map(|_| StandardNormal.sample(&mut rng)).collect())
            .collect();
        for k in 0..3 {
            let (z, _) = model.optimum(k, x, 1.0, false);
            dirs.push(
                model
                    .decode_f64(k, &z)
                    .iter()
                    .zip(x)
                    .map(|(g, v)| g - v)
                    .collect(),
            );
        }
        let mut smallest = f64::INFINITY;
        for dir in dirs {
            let n = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
            let step =
                |t: f64| -> Vec<f64> { x.iter().zip(&dir).map(|(v, d)| v + t * d / n).collect() };
            let mut t = 0.0;
            while t < 10.0 * eps.max(0.1) && predict_exact(&model, &step(t)) == y {
                t += eps / 50.0;
            }
            if predict_exact(&model, &step(t)) != y {
                smallest = smallest.min(t);
            }
        }
        assert!(
            smallest >= eps * (1.0 - 1e-3),
            "sample {i}: adversarial at {smallest} < bound {eps}"
        );
    }
    assert_eq!(bounds.quantiles(&[0.0]).unwrap()[0], summary.min);
}

#[test]
fn several_losses_share_one_inference_and_match_single_calls() {
    // Exact inference is deterministic, so the batched gradients must equal one call per loss.
    let model = LinearModel::new(3, 6, 2, 1.0, 24, ToyPrior::Kl);
    let (xs, _, _) = images(&model, 4, 0.05, 25);
    let clf = AbsClassifier::new(
        AbsInference::new(&model, exact_cfg()).unwrap(),
        Bounds::new(-10.0, 10.0).unwrap(),
        0,
    );
    let first = |l: &Tensor| l.narrow(1, 0, 1)?.squeeze(1);
    let margin = |l: &Tensor| (l.narrow(1, 2, 1)? - l.narrow(1, 1, 1)?)?.squeeze(1);
    let both = clf.values_and_grads(&xs, &[&first, &margin]).unwrap();
    for (i, loss) in [&first as &eabs_core::LossFn<'_>, &margin]
        .iter()
        .enumerate()
    {
        let (v, g) = clf.value_and_grad(&xs, loss).unwrap();
        let dv = (v - &both[i].0).unwrap().abs().unwrap().max(0).unwrap();
        let dg = (g - &both[i].1)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(dv.host_scalar::<f32>().unwrap() < 1e-5 && dg.host_scalar::<f32>().unwrap() < 1e-5);
    }
}

/// The noise of variational inference is keyed per image (its content and how often it was
/// seen in the unit): an image's logits do not depend on its batch, its position or the other
/// images' calls, so that batching, resuming and sharding an evaluation change nothing; and
/// repeated calls on one input draw fresh noise until `begin_unit` starts over.
#[test]
fn variational_noise_is_keyed_per_image_not_per_batch() {
    let model = LinearModel::new(3, 5, 2, 1.0, 30, ToyPrior::Kl);
    let (xs, _, _) = images(&model, 4, 0.3, 31);
    let cfg = InferenceConfig {
        mode: LatentInference::Variational,
        n_candidates: 50,
        n_adam_steps: 5,
        ..InferenceConfig::e_abs()
    };
    let new = || {
        AbsClassifier::new(
            AbsInference::new(&model, cfg.clone()).unwrap(),
            Bounds::UNIT,
            7,
        )
    };
    let row = |t: &Tensor, i: usize| rows(t)[i].clone();
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);

    let clf = new();
    let all = clf.logits(&xs).unwrap();
    // Image 2 alone, and image 2 first in a reordered batch, on fresh classifiers.
    let alone = new().logits(&xs.narrow(0, 2, 1).unwrap()).unwrap();
    let order = eabs_core::host::new(&[2u32, 0, 3, 1], xs.device()).unwrap();
    let reordered = new().logits(&xs.index_select(&order, 0).unwrap()).unwrap();
    assert!(close(&row(&all, 2), &row(&alone, 0)), "batch of 4 vs alone");
    assert!(close(&row(&all, 2), &row(&reordered, 0)), "position 2 vs 0");
    // Other images' calls in between change nothing for image 2's second draw.
    let second = clf.logits(&xs).unwrap();
    assert!(
        !close(&row(&all, 2), &row(&second, 2)),
        "a repeated call draws fresh noise"
    );
    let other = new();
    other.logits(&xs.narrow(0, 0, 2).unwrap()).unwrap(); // images 0 and 1 only
    other.logits(&xs.narrow(0, 2, 1).unwrap()).unwrap();
    let second_alone = other.logits(&xs.narrow(0, 2, 1).unwrap()).unwrap();
    assert!(
        close(&row(&second, 2), &row(&second_alone, 0)),
        "second draw of image 2"
    );
    // A new unit starts the counts over.
    clf.begin_unit();
    assert!(
        close(&row(&all, 2), &row(&clf.logits(&xs).unwrap(), 2)),
        "after begin_unit"
    );
    // Common random numbers: row i of every block draws as row i of the first.
    let pair = Tensor::cat(
        &[&xs.narrow(0, 0, 2).unwrap(), &xs.narrow(0, 0, 2).unwrap()],
        0,
    )
    .unwrap();
    let crn = new().logits_common_noise(&pair, 2).unwrap();
    assert!(close(&row(&crn, 0), &row(&crn, 2)) && close(&row(&crn, 1), &row(&crn, 3)));
}
