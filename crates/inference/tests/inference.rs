//! Inference on toy linear decoders with closed-form optima: the optimiser finds them, the
//! stages never make the loss worse, the cached candidate search equals decoding every
//! candidate, and the inputs are validated.

// Index loops mirror the maths (image i, class k, pixel j) in these tests.
#![allow(clippy::needless_range_loop)]

mod common;

use candle_core::{Device, Tensor};
use common::{images, rows, LinearModel, ToyPrior};
use eabs_core::host::{self, HostRead};
use eabs_inference::{
    draw_candidates, AbsInference, InferenceConfig, InferenceError, LatentClassModel,
    LatentInference,
};

/// Few candidates and a fine Adam schedule, to converge on a quadratic.
fn converging(mode: LatentInference) -> InferenceConfig {
    InferenceConfig {
        mode,
        n_candidates: 200,
        n_adam_steps: 400,
        learning_rate: 0.02,
        use_encoder: false,
        ..InferenceConfig::e_abs()
    }
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(u, v)| (u - v) * (u - v))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn exact_inference_finds_the_closed_form_optimum() {
    for prior in [ToyPrior::Kl, ToyPrior::Quadratic(0.3)] {
        let model = LinearModel::new(3, 6, 3, 1.0, 1, prior);
        let (xs, xrows, _) = images(&model, 5, 0.3, 2);
        let inf = AbsInference::new(&model, converging(LatentInference::Exact)).unwrap();
        let out = inf.infer(&xs, 0).unwrap();
        let losses = rows(&out.losses);
        let means = out
            .means
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .host_vec3::<f64>()
            .unwrap();
        for (i, x) in xrows.iter().enumerate() {
            for k in 0..3 {
                let (z_opt, l_opt) = model.optimum(k, x, 1.0, true);
                let l = losses[i][k] * 6.0;
                assert!(
                    (l - l_opt).abs() <= 1e-3 * (1.0 + l_opt),
                    "{prior:?} img {i} class {k}: {l} vs {l_opt}"
                );
                assert!(
                    dist(&means[i][k], &z_opt) < 2e-2,
                    "{prior:?}: {:?} vs {z_opt:?}",
                    means[i][k]
                );
            }
        }
        // Exact inference is deterministic and ignores the seed.
        let again = inf.infer(&xs, 99).unwrap();
        assert_eq!(rows(&again.losses), losses);
        assert!(out.log_variances.is_none());
    }
}

#[test]
fn optimised_beats_best_candidate_beats_random_candidate() {
    let model = LinearModel::new(4, 8, 2, 1.0, 3, ToyPrior::Kl);
    let (xs, xrows, _) = images(&model, 6, 0.5, 4);
    let cfg = InferenceConfig {
        n_candidates: 300,
        use_encoder: false,
        ..InferenceConfig::abs_reference()
    };
    let inf = AbsInference::new(&model, cfg).unwrap();
    let out = inf.infer(&xs, 0).unwrap();
    let (final_l, init_l) = (rows(&out.losses), rows(&out.initial_losses));
    let cands = rows(inf.cache().latents());
    for (i, x) in xrows.iter().enumerate() {
        for k in 0..4 {
            assert!(
                final_l[i][k] <= init_l[i][k] + 1e-6,
                "optimisation made it worse"
            );
            for z in cands.iter().step_by(37) {
                let g = model.decode_f64(k, z);
                let l = (dist(x, &g).powi(2) + model.prior_f64(z, 1.0, true)) / 8.0;
                assert!(
                    init_l[i][k] <= l + 1e-5,
                    "best candidate worse than a random one"
                );
            }
        }
    }
}

#[test]
fn cached_search_equals_decoding_every_candidate() {
    for prior in [ToyPrior::Kl, ToyPrior::Quadratic(0.2)] {
        let model = LinearModel::new(3, 5, 2, 1.5, 5, prior);
        let (xs, xrows, _) = images(&model, 4, 0.4, 6);
        // A search chunk that does not divide N exercises the chunk boundary.
        let cfg = InferenceConfig {
            n_candidates: 250,
            search_chunk: 64,
            decode_chunk: 30,
            ..InferenceConfig::abs_reference()
        };
        let inf = AbsInference::new(&model, cfg).unwrap();
        let choice = inf
            .cache()
            .search(&xs.reshape((4, 5)).unwrap(), true)
            .unwrap();
        let idx = choice.indices.host_vec2::<u32>().unwrap();
        let got = rows(&choice.losses);
        let cands = rows(inf.cache().latents());
        for (i, x) in xrows.iter().enumerate() {
            for k in 0..3 {
                let naive: Vec<f64> = cands
                    .iter()
                    .map(|z| {
                        dist(x, &model.decode_f64(k, z)).powi(2) + model.prior_f64(z, 1.0, true)
                    })
                    .collect();
                let best = (0..naive.len())
                    .min_by(|&a, &b| naive[a].total_cmp(&naive[b]))
                    .unwrap();
                assert_eq!(idx[i][k] as usize, best, "{prior:?} image {i} class {k}");
                assert!((got[i][k] - naive[best]).abs() < 1e-3 * (1.0 + naive[best]));
            }
        }
        // The start without encoder is the cached choice.
        let start = inf.initial_latents(&xs).unwrap();
        assert_eq!(rows(&start.losses), got);
    }
}

#[test]
fn candidates_are_the_most_probable_prior_draws() {
    let dev = Device::Cpu;
    let a = draw_candidates(90, 100, 3, 7, &dev).unwrap();
    let b = draw_candidates(90, 100, 3, 7, &dev).unwrap();
    let all = draw_candidates(100, 100, 3, 7, &dev).unwrap();
    assert_eq!(rows(&a), rows(&b), "same seed, same pool");
    assert_ne!(
        rows(&a),
        rows(&draw_candidates(90, 100, 3, 8, &dev).unwrap())
    );
    let norm = |r: &Vec<f64>| r.iter().map(|v| v * v).sum::<f64>();
    let all = rows(&all);
    let kept = rows(&a);
    let mut norms: Vec<f64> = all.iter().map(norm).collect();
    norms.sort_by(f64::total_cmp);
    let max_kept = kept.iter().map(norm).fold(0.0, f64::max);
    assert!(
        (max_kept - norms[89]).abs() < 1e-9,
        "kept the 90 shortest of 100 draws"
    );
    // Kept rows appear in draw order.
    let pos: Vec<usize> = kept
        .iter()
        .map(|r| all.iter().position(|s| s == r).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(InferenceConfig::e_abs().n_prior_draws(), 8888);
}

#[test]
fn latent_mean_stays_in_the_ball_with_its_sign() {
    let model = LinearModel::new(2, 4, 2, 1.0, 8, ToyPrior::Kl);
    let (xs, xrows, _) = images(&model, 3, 0.1, 9);
    let xs = (xs * 4.0).unwrap(); // far away: the unconstrained optimum lies outside radius 0.5
    let cfg = InferenceConfig {
        latent_radius: Some(0.5),
        n_candidates: 50,
        ..converging(LatentInference::Exact)
    };
    let out = AbsInference::new(&model, cfg)
        .unwrap()
        .infer(&xs, 0)
        .unwrap();
    let means = out
        .means
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec3::<f64>()
        .unwrap();
    for (i, x) in xrows.iter().enumerate() {
        let x4: Vec<f64> = x.iter().map(|v| 4.0 * v).collect();
        for k in 0..2 {
            let n = means[i][k].iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(n <= 0.5 + 1e-5, "norm {n}");
            let (z_opt, _) = model.optimum(k, &x4, 1.0, true);
            if z_opt.iter().map(|v| v * v).sum::<f64>().sqrt() > 0.6 {
                // The projected optimum of a quadratic points into the same half-space.
                let dot: f64 = z_opt.iter().zip(&means[i][k]).map(|(a, b)| a * b).sum();
                assert!(
                    dot > 0.0,
                    "projection flipped the latent: {:?} vs {z_opt:?}",
                    means[i][k]
                );
            }
        }
    }
}

#[test]
fn variational_inference_is_seeded_and_batch_independent() {
    let model = LinearModel::new(3, 6, 2, 1.0, 10, ToyPrior::Kl);
    let (xs, _, _) = images(&model, 3, 0.3, 11);
    let cfg = InferenceConfig {
        n_candidates: 100,
        n_adam_steps: 20,
        ..InferenceConfig::e_abs()
    };
    let inf = AbsInference::new(&model, cfg).unwrap();
    let a = inf.infer(&xs, 5).unwrap();
    let b = inf.infer(&xs, 5).unwrap();
    let c = inf.infer(&xs, 6).unwrap();
    assert_eq!(rows(&a.losses), rows(&b.losses));
    assert_ne!(rows(&a.losses), rows(&c.losses));
    assert!(a.log_variances.is_some());
    // Image 0 gets the same result whatever the rest of its batch.
    let other = Tensor::cat(
        &[
            xs.narrow(0, 0, 1).unwrap(),
            (xs.narrow(0, 1, 2).unwrap() * 0.5).unwrap(),
        ],
        0,
    )
    .unwrap();
    let d = inf.infer(&other, 5).unwrap();
    assert_eq!(rows(&a.losses)[0], rows(&d.losses)[0]);
    // The final loss is evaluated at the returned sample z*.
    let z = a
        .latents
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec3::<f64>()
        .unwrap();
    let mu = a
        .means
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec3::<f64>()
        .unwrap();
    assert_ne!(z, mu, "the final evaluation samples Q*");
    let recs = rows(&a.reconstructions.reshape((9, 6)).unwrap());
    for i in 0..3 {
        for k in 0..3 {
            let g = model.decode_f64(k, &z[i][k]);
            let r = &recs[i * 3 + k];
            assert!(dist(&g, r) < 1e-4);
        }
    }
}

#[test]
fn variational_inference_finds_mean_and_variance_optimum() {
    // E_{z ~ N(mu, diag s)} ||x - A z - b||^2 + beta KL = ||x - A mu - b||^2 + sum_j s_j (A^T A)_jj
    // + beta/2 sum_j (mu_j^2 + s_j - log s_j - 1): the mean optimum equals exact inference's and
    // s_j = (beta/2) / ((A^T A)_jj + beta/2).
    let model = LinearModel::new(2, 6, 2, 0.7, 12, ToyPrior::Kl);
    let (xs, xrows, _) = images(&model, 2, 0.2, 13);
    let cfg = InferenceConfig {
        n_adam_steps: 1500,
        learning_rate: 0.01,
        ..converging(LatentInference::Variational)
    };
    let out = AbsInference::new(&model, cfg)
        .unwrap()
        .infer(&xs, 1)
        .unwrap();
    let mu = out
        .means
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec3::<f64>()
        .unwrap();
    let lv = out
        .log_variances
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec3::<f64>()
        .unwrap();
    for (i, x) in xrows.iter().enumerate() {
        for k in 0..2 {
            let (z_opt, _) = model.optimum(k, x, 1.0, true);
            assert!(
                dist(&mu[i][k], &z_opt) < 0.1,
                "mean {:?} vs {z_opt:?}",
                mu[i][k]
            );
            for j in 0..2 {
                let ata: f64 = (0..6).map(|r| model.a[k][r * 2 + j].powi(2)).sum();
                let s_opt: f64 = 0.5 / (ata + 0.5);
                assert!(
                    (lv[i][k][j] - s_opt.ln()).abs() < 0.3,
                    "log-var {} vs {}",
                    lv[i][k][j],
                    s_opt.ln()
                );
            }
        }
    }
}

#[test]
fn encoder_proposal_is_used_when_it_is_better() {
    let mut model = LinearModel::new(2, 5, 2, 1.0, 14, ToyPrior::Kl);
    let (xs, xrows, _) = images(&model, 3, 0.3, 15);
    // An oracle encoder proposing the exact optimum wins over every candidate.
    let oracle = LinearModel::new(2, 5, 2, 1.0, 14, ToyPrior::Kl);
    model.encoder = Some(Box::new(move |k, x| oracle.optimum(k, x, 1.0, true).0));
    model.enc_lv = -1.0;
    let cfg = InferenceConfig {
        n_candidates: 20,
        n_adam_steps: 0,
        ..InferenceConfig::e_abs()
    };
    let inf = AbsInference::new(&model, cfg.clone()).unwrap();
    let start = inf.initial_latents(&xs).unwrap();
    assert!(start
        .from_encoder
        .host_vec2::<u8>()
        .unwrap()
        .iter()
        .flatten()
        .all(|&b| b == 1));
    assert!(start
        .log_variances
        .host_vec3::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .flatten()
        .all(|&v| v == -1.0));
    let l = rows(&start.losses);
    for (i, x) in xrows.iter().enumerate() {
        for k in 0..2 {
            assert!((l[i][k] - model.optimum(k, x, 1.0, true).1).abs() < 1e-3);
        }
    }
    // An encoder proposing a far-away latent never wins.
    model.encoder = Some(Box::new(|_, _| vec![30.0, -30.0]));
    let inf = AbsInference::new(&model, cfg).unwrap();
    let start = inf.initial_latents(&xs).unwrap();
    assert!(start
        .from_encoder
        .host_vec2::<u8>()
        .unwrap()
        .iter()
        .flatten()
        .all(|&b| b == 0));
    assert_eq!(rows(&start.losses), rows(&start.candidate_losses));
}

#[test]
fn bad_inputs_and_configs_are_named() {
    let model = LinearModel::new(2, 4, 2, 1.0, 16, ToyPrior::Kl);
    let cfg = InferenceConfig {
        n_candidates: 10,
        ..InferenceConfig::abs_reference()
    };
    let inf = AbsInference::new(&model, cfg).unwrap();
    let wrong = Tensor::zeros((2, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = inf.infer(&wrong, 0).unwrap_err();
    assert!(
        matches!(err, InferenceError::InvalidArgument { argument: "xs", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("(batch >= 1, 1, 1, 4)"), "{err}");
    let xs = Tensor::zeros((2, 1, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = inf.certified_bounds(&xs, &[0, 2]).unwrap_err();
    assert!(err.to_string().contains("label 2 at index 1"), "{err}");
    assert!(inf.certified_bounds(&xs, &[0]).is_err());

    for (cfg, field) in [
        (
            InferenceConfig {
                n_candidates: 0,
                ..InferenceConfig::e_abs()
            },
            "n_candidates",
        ),
        (
            InferenceConfig {
                fraction_to_dismiss: 1.0,
                ..InferenceConfig::e_abs()
            },
            "fraction_to_dismiss",
        ),
        (
            InferenceConfig {
                learning_rate: -1.0,
                ..InferenceConfig::e_abs()
            },
            "learning_rate",
        ),
        (
            InferenceConfig {
                latent_radius: Some(f64::NAN),
                ..InferenceConfig::e_abs()
            },
            "latent_radius",
        ),
        (
            InferenceConfig {
                search_chunk: 0,
                ..InferenceConfig::e_abs()
            },
            "search_chunk",
        ),
    ] {
        match AbsInference::new(&model, cfg) {
            Err(InferenceError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidConfig for {field}, got {:?}", other.err()),
        }
    }
}

/// A model whose decoder breaks the shape contract.
#[derive(Debug)]
struct Broken(Device);
impl LatentClassModel for Broken {
    fn n_classes(&self) -> usize {
        2
    }
    fn latent_dim(&self) -> usize {
        2
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (1, 2, 2)
    }
    fn decode(&self, _: usize, z: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::zeros((z.dim(0)?, 1, 2, 3), candle_core::DType::F32, &self.0)
    }
    fn prior_term(&self, _: usize, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    fn encode(&self, _: usize, _: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }
    fn device(&self) -> &Device {
        &self.0
    }
}

#[test]
fn model_contract_violations_are_reported() {
    let cfg = InferenceConfig {
        n_candidates: 10,
        ..InferenceConfig::abs_reference()
    };
    let err = AbsInference::new(Broken(Device::Cpu), cfg).unwrap_err();
    assert!(
        matches!(
            err,
            InferenceError::Model {
                method: "decode",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("[10, 1, 2, 2]") && err.to_string().contains("[10, 1, 2, 3]"),
        "{err}"
    );
}

#[test]
fn a_cache_is_shared_between_configs_of_the_same_model_only() {
    let model = LinearModel::new(2, 4, 2, 1.0, 30, ToyPrior::Kl);
    let (xs, _, _) = images(&model, 2, 0.2, 31);
    let exact = InferenceConfig {
        n_candidates: 40,
        n_adam_steps: 3,
        ..InferenceConfig::abs_reference()
    };
    let first = AbsInference::new(&model, exact.clone()).unwrap();
    let variational = InferenceConfig {
        mode: LatentInference::Variational,
        ..exact
    };
    let second = AbsInference::with_cache(&model, variational, first.cache().clone()).unwrap();
    // Same cached candidates, so the same starting point.
    let (a, b) = (
        first.initial_latents(&xs).unwrap(),
        second.initial_latents(&xs).unwrap(),
    );
    assert_eq!(rows(&a.losses), rows(&b.losses));
    let other = LinearModel::new(3, 4, 2, 1.0, 30, ToyPrior::Kl);
    let err = AbsInference::with_cache(
        &other,
        InferenceConfig::abs_reference(),
        first.cache().clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("3 classes"), "{err}");
}

/// A linear model whose decoder reads a `Var` (as BatchNorm running statistics are in
/// `eabs-models`): every decoder output then carries an autodiff graph.
#[derive(Debug)]
struct VarDecoder {
    w: candle_core::Var,
    device: Device,
}
impl LatentClassModel for VarDecoder {
    fn n_classes(&self) -> usize {
        2
    }
    fn latent_dim(&self) -> usize {
        2
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (1, 1, 3)
    }
    fn decode(&self, class: usize, z: &Tensor) -> candle_core::Result<Tensor> {
        let w = (self.w.as_tensor() * (class as f64 + 1.0))?;
        z.matmul(&w)?.reshape((z.dim(0)?, 1, 1, 3))
    }
    fn prior_term(&self, _: usize, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
    fn encode(&self, _: usize, x: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let m = x
            .reshape((x.dim(0)?, 3))?
            .narrow(1, 0, 2)?
            .matmul(&self.w.as_tensor().narrow(1, 0, 2)?)?;
        Ok(Some((m.clone(), m.zeros_like()?)))
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

#[test]
fn outputs_carry_no_graph_even_for_models_with_var_weights() {
    // Without detaching, the cache would keep every intermediate of every decoder call alive
    // and each Adam step would chain onto the previous step's graph (memory grows per step).
    let w = candle_core::Var::new(&[[1f32, 0.5, -0.5], [0.0, 1.0, 2.0]], &Device::Cpu).unwrap();
    let model = VarDecoder {
        w,
        device: Device::Cpu,
    };
    let cfg = InferenceConfig {
        n_candidates: 30,
        n_adam_steps: 3,
        ..InferenceConfig::e_abs()
    };
    let inf = AbsInference::new(&model, cfg).unwrap();
    assert!(!inf.cache().images(0).unwrap().track_op());
    let xs = host::new(&[[[[0.5f32, 0.2, -1.0]]]], &Device::Cpu).unwrap();
    let out = inf.infer(&xs, 0).unwrap();
    for t in [
        &out.losses,
        &out.logits,
        &out.reconstructions,
        &out.means,
        &out.latents,
        &out.prior_terms,
    ] {
        assert!(!t.track_op(), "an output still holds an autodiff graph");
    }
    assert!(!out.log_variances.unwrap().track_op());
}
