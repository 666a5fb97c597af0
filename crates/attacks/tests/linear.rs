//! Attacks against linear classifiers, whose minimal adversarial distances are closed-form:
//! `min_k (z_y - z_k) / ||w_y - w_k||_2` (L_2) and `/ ||w_y - w_k||_1` (L_inf).
mod common;

use common::{inputs, labels, Linear};
use eabs_attacks::*;
use eabs_core::host::{self, HostRead};

fn model_and_data(k: usize, seed: u64) -> (Linear, candle_core::Tensor, Vec<Vec<f32>>, Criterion) {
    let model = Linear::random(12, k, seed);
    let (xs, rows) = inputs(8, 12, 0.35, 0.65, seed + 1);
    let crit = Criterion::misclassification(labels(&model, &rows));
    (model, xs, rows, crit)
}

/// Asserts the fixed-epsilon verdicts: success when `d < 0.95 eps` (and the optimum is inside
/// the box), failure when `d > 1.05 eps`. Returns how many samples were checked each way.
fn check_threshold(
    model: &Linear,
    rows: &[Vec<f32>],
    norm: Norm,
    outs: &[Outcome],
    slack: f64,
) -> (usize, usize) {
    let (mut above, mut below) = (0, 0);
    for out in outs {
        for (i, row) in rows.iter().enumerate() {
            let (d, inside) = model.min_distance(row, norm);
            if d > out.epsilon * (1.0 + slack) {
                assert!(
                    !out.success[i],
                    "sample {i}: success at eps {} below the minimal distance {d}",
                    out.epsilon
                );
                below += 1;
            } else if d < out.epsilon * (1.0 - slack) && inside {
                assert!(
                    out.success[i],
                    "sample {i}: failed at eps {} above the minimal distance {d}",
                    out.epsilon
                );
                above += 1;
            }
        }
    }
    (above, below)
}

fn eps_grid(model: &Linear, rows: &[Vec<f32>], norm: Norm) -> Vec<f64> {
    eps_grid_spread(model, rows, norm, 0.1)
}

fn eps_grid_spread(model: &Linear, rows: &[Vec<f32>], norm: Norm, spread: f64) -> Vec<f64> {
    let ds: Vec<f64> = rows.iter().map(|r| model.min_distance(r, norm).0).collect();
    let mut e: Vec<f64> = ds
        .iter()
        .flat_map(|d| [d * (1.0 - spread), d * (1.0 + spread)])
        .collect();
    e.sort_by(f64::total_cmp);
    e
}

#[test]
fn pgd_succeeds_just_above_and_fails_below_the_minimal_distance() -> Result<()> {
    for norm in [Norm::Linf, Norm::L2] {
        let (model, xs, rows, crit) = model_and_data(2, 3);
        let pgd = Pgd::new(PgdConfig::paper(norm, 2))?;
        let outs = attack_fixed(&pgd, &model, &xs, &crit, &eps_grid(&model, &rows, norm))?;
        let (above, below) = check_threshold(&model, &rows, norm, &outs, 0.05);
        assert!(
            above >= 8 && below >= 8,
            "{norm:?}: too few informative cases ({above}, {below})"
        );
    }
    Ok(())
}

/// Full strength at any budget: PGD sized by [`PgdConfig::paper_sized`] at 5, 20 and 80 steps
/// finds every adversarial whose minimal distance is below 0.95 eps (from a random start in
/// the ball, 2 restarts), while the 80-step step size kept at 5 steps cannot even travel to a
/// boundary at 0.9 eps (its whole path is 5/80 of the paper's).
#[test]
fn sized_pgd_reaches_the_boundary_at_5_20_and_80_steps() -> Result<()> {
    for norm in [Norm::Linf, Norm::L2] {
        let (model, xs, rows, crit) = model_and_data(2, 3);
        let grid = eps_grid(&model, &rows, norm);
        for steps in [5, 20, 80] {
            let cfg = PgdConfig::paper_sized(norm, steps, 2);
            assert!(
                cfg.relative_path() >= 2.0 - 1e-9,
                "{norm:?} {steps}: {cfg:?}"
            );
            let outs = attack_fixed(&Pgd::new(cfg)?, &model, &xs, &crit, &grid)?;
            let (above, below) = check_threshold(&model, &rows, norm, &outs, 0.05);
            assert!(
                above >= 8 && below >= 8,
                "{norm:?}, {steps} steps: too few informative cases ({above}, {below})"
            );
        }
        assert_eq!(
            PgdConfig::paper_sized(norm, 80, 2),
            PgdConfig::paper(norm, 2)
        );
        // The old quick rule: 5 steps of the 80-step size. It misses samples just inside eps.
        let short = PgdConfig {
            steps: 5,
            restarts: 1,
            random_start: false,
            ..PgdConfig::paper(norm, 1)
        };
        let (ds, insides): (Vec<f64>, Vec<bool>) =
            rows.iter().map(|r| model.min_distance(r, norm)).unzip();
        let eps: Vec<f64> = ds.iter().map(|d| d / 0.9).collect();
        let mut missed = 0;
        for (i, &e) in eps.iter().enumerate() {
            if !insides[i] {
                continue;
            }
            let outs = attack_fixed(&Pgd::new(short.clone())?, &model, &xs, &crit, &[e])?;
            missed += usize::from(!outs[0].success[i]);
        }
        assert!(
            missed > 0,
            "{norm:?}: the unsized 5-step PGD should fall short"
        );
    }
    Ok(())
}

#[test]
fn apgd_ce_and_dlr_find_the_threshold() -> Result<()> {
    for (norm, loss, k) in [
        (Norm::Linf, Loss::CrossEntropy, 2),
        (Norm::L2, Loss::Dlr, 3),
        (Norm::Linf, Loss::Dlr, 3),
    ] {
        let (model, xs, rows, crit) = model_and_data(k, 11);
        let apgd = Apgd::new(ApgdConfig {
            steps: 60,
            ..ApgdConfig::autoattack(norm, loss)
        })?;
        let outs = attack_fixed(&apgd, &model, &xs, &crit, &eps_grid(&model, &rows, norm))?;
        let (above, below) = check_threshold(&model, &rows, norm, &outs, 0.1);
        assert!(
            above >= 4 && below >= 4,
            "{norm:?} {loss:?}: too few informative cases ({above}, {below})"
        );
    }
    Ok(())
}

/// Every minimisation result is at least the minimal distance away (nothing can beat it), and
/// within `factor` of it.
fn check_minimal<A: MinimizationAttack<Linear>>(
    attack: &A,
    k: usize,
    seed: u64,
    factor: f64,
) -> Result<()> {
    let (model, xs, rows, crit) = model_and_data(k, seed);
    let norm = attack.norm();
    let out = attack_min(attack, &model, &xs, &crit, &[f64::INFINITY])?.remove(0);
    for (i, row) in rows.iter().enumerate() {
        let (d, inside) = model.min_distance(row, norm);
        let found = out.distances[i];
        if out.success[i] {
            assert!(
                found >= d * (1.0 - 1e-3),
                "{}: sample {i} at {found} beats the minimum {d}",
                attack.name()
            );
        }
        if inside {
            assert!(
                out.success[i],
                "{}: sample {i} not attacked (minimal distance {d})",
                attack.name()
            );
            assert!(
                found <= d * factor + 1e-4,
                "{}: sample {i} at {found}, minimal {d}",
                attack.name()
            );
        }
    }
    Ok(())
}

#[test]
fn deepfool_finds_the_closed_form_distance() -> Result<()> {
    // One linearisation is exact: d (1 + overshoot) + 1e-4.
    check_minimal(&DeepFool::paper(Norm::L2), 2, 5, 1.021)?;
    check_minimal(&DeepFool::paper(Norm::Linf), 2, 5, 1.021)?;
    check_minimal(&DeepFool::paper(Norm::L2), 4, 6, 1.021)?;
    check_minimal(&DeepFool::paper(Norm::Linf), 4, 6, 1.021)
}

#[test]
fn carlini_wagner_comes_close() -> Result<()> {
    check_minimal(&CarliniWagnerL2::paper(), 2, 7, 1.1)
}

#[test]
fn ddn_comes_close() -> Result<()> {
    check_minimal(&Ddn::paper(), 2, 8, 1.1)
}

#[test]
fn boundary_attack_converges_toward_the_minimum() -> Result<()> {
    let (model, xs, rows, crit) = model_and_data(2, 9);
    // Start from pool images of the other class, as in the paper.
    let (pool, pool_rows) = inputs(64, 12, 0.0, 1.0, 99);
    let preds = labels(&model, &pool_rows);
    let start = starting_points_from_pool(&xs, &crit, &pool, &preds, 1)?;
    let start_d = Norm::L2.distances(&start, &xs)?;
    let attack = Boundary::new(BoundaryConfig {
        steps: 3000,
        ..BoundaryConfig::paper()
    })?
    .with_starting_points(start);
    let out = attack_min(&attack, &model, &xs, &crit, &[f64::INFINITY])?.remove(0);
    for (i, row) in rows.iter().enumerate() {
        let (d, _) = model.min_distance(row, Norm::L2);
        assert!(out.success[i], "sample {i} lost its adversarial");
        assert!(out.distances[i] >= d * (1.0 - 1e-3));
        assert!(out.distances[i] < start_d[i]);
        assert!(
            out.distances[i] <= 1.25 * d,
            "sample {i}: {} vs minimal {d} (start {})",
            out.distances[i],
            start_d[i]
        );
    }
    Ok(())
}

#[test]
fn boundary_attack_initialises_itself_with_blended_noise() -> Result<()> {
    let (model, xs, _, crit) = model_and_data(2, 10);
    let attack = Boundary::new(BoundaryConfig {
        steps: 20,
        ..BoundaryConfig::paper()
    })?;
    let out = attack_min(&attack, &model, &xs, &crit, &[f64::INFINITY])?.remove(0);
    assert!(out.success.iter().all(|&s| s));
    Ok(())
}

#[test]
fn pgd_with_estimated_gradients_finds_the_threshold() -> Result<()> {
    let (model, xs, rows, crit) = model_and_data(2, 12);
    let est = EstimatedGradient::new(
        &model,
        EstimatorConfig {
            seed: 4,
            ..EstimatorConfig::paper()
        },
    )?;
    // The paper reports L_inf PGD with gradient estimation (Section 5).
    let norm = Norm::Linf;
    let pgd = Pgd::new(PgdConfig::paper_estimated(norm))?;
    // Estimated signs of small gradient coordinates are noisy: allow 25 % above the minimum.
    let outs = attack_fixed(
        &pgd,
        &est,
        &xs,
        &crit,
        &eps_grid_spread(&model, &rows, norm, 0.25),
    )?;
    let (above, below) = check_threshold(&model, &rows, norm, &outs, 0.2);
    assert!(
        above >= 4 && below >= 4,
        "too few informative cases ({above}, {below})"
    );
    Ok(())
}

#[test]
fn estimated_gradient_approximates_the_true_gradient() -> Result<()> {
    use eabs_core::Differentiable;
    let (model, xs, _, crit) = model_and_data(3, 13);
    let loss = Loss::CrossEntropy.function(
        &crit,
        3,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let (v_true, g_true) = model.value_and_grad(&xs, &*loss)?;
    let est = EstimatedGradient::new(
        &model,
        EstimatorConfig {
            samples: 2000,
            sigma: 1e-2,
            clip: false,
            seed: 1,
            common_noise: true,
        },
    )?;
    let (v_est, g_est) = est.value_and_grad(&xs, &*loss)?;
    assert_eq!(v_true.host_vec1::<f32>()?, v_est.host_vec1::<f32>()?);
    // Cosine similarity per sample: NES with 1000 pairs in 12 dimensions is accurate.
    let dot = (&g_true * &g_est)?.sum(1)?.host_vec1::<f32>()?;
    let n1 = g_true.sqr()?.sum(1)?.sqrt()?.host_vec1::<f32>()?;
    let n2 = g_est.sqr()?.sum(1)?.sqrt()?.host_vec1::<f32>()?;
    for i in 0..dot.len() {
        let cos = dot[i] / (n1[i] * n2[i]);
        assert!(cos > 0.95, "sample {i}: cosine {cos}");
    }
    Ok(())
}

/// The linear model with Gaussian noise (std 1) added to its logits at every call; rows of the
/// blocks of a `logits_common_noise` call share theirs.
struct NoisyLinear {
    inner: Linear,
    calls: std::sync::atomic::AtomicU64,
}

impl NoisyLinear {
    fn noise(&self, rows: usize, period: usize, k: usize) -> Result<candle_core::Tensor> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let call = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut v = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(call * 1_000_003 + (r % period) as u64);
            v.extend((0..k).map(|_| -> f32 { rand_distr::StandardNormal.sample(&mut rng) }));
        }
        Ok(host::from_vec(v, (rows, k), &candle_core::Device::Cpu)?)
    }
}

impl eabs_core::Classifier for NoisyLinear {
    fn bounds(&self) -> eabs_core::Bounds {
        self.inner.bounds()
    }
    fn n_classes(&self) -> usize {
        self.inner.n_classes()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    fn logits(&self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let b = xs.dim(0)?;
        let n = self
            .noise(b, b, self.n_classes())
            .map_err(candle_core::Error::wrap)?;
        self.inner.logits(xs)? + n
    }
    fn logits_common_noise(
        &self,
        xs: &candle_core::Tensor,
        blocks: usize,
    ) -> candle_core::Result<candle_core::Tensor> {
        let b = xs.dim(0)?;
        let n = self
            .noise(b, b / blocks, self.n_classes())
            .map_err(candle_core::Error::wrap)?;
        self.inner.logits(xs)? + n
    }
    fn is_stochastic(&self) -> bool {
        true
    }
}

#[test]
fn common_random_numbers_keep_the_estimate_of_a_noisy_model() -> Result<()> {
    use eabs_core::Differentiable;
    let (model, xs, _, crit) = model_and_data(3, 13);
    // The margin of the logits: additive logit noise cancels in a difference of two probes
    // only when both probes drew the same noise.
    let loss =
        Loss::Margin.function(&crit, 3, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let (_, g_true) = model.value_and_grad(&xs, &*loss)?;
    let noisy = NoisyLinear {
        inner: model,
        calls: std::sync::atomic::AtomicU64::new(0),
    };
    let cosines = |common_noise: bool| -> Result<Vec<f32>> {
        let est = EstimatedGradient::new(
            &noisy,
            EstimatorConfig {
                samples: 200,
                sigma: 1e-2,
                clip: false,
                seed: 1,
                common_noise,
            },
        )?;
        let (_, g) = est.value_and_grad(&xs, &*loss)?;
        let dot = (&g_true * &g)?.sum(1)?.host_vec1::<f32>()?;
        let n1 = g_true.sqr()?.sum(1)?.sqrt()?.host_vec1::<f32>()?;
        let n2 = g.sqr()?.sum(1)?.sqrt()?.host_vec1::<f32>()?;
        Ok((0..dot.len()).map(|i| dot[i] / (n1[i] * n2[i])).collect())
    };
    let with = cosines(true)?;
    let without = cosines(false)?;
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    // 100 pairs in 12 dimensions, as accurate as on the noise-free model.
    assert!(mean(&with) > 0.8, "common noise: {with:?}");
    assert!(
        mean(&without) < 0.5,
        "independent noise should swamp the differences: {without:?}"
    );
    Ok(())
}

#[test]
fn gaussian_noise_never_beats_the_minimum_and_succeeds_eventually() -> Result<()> {
    let (model, xs, rows, crit) = model_and_data(2, 14);
    let out = attack_min(
        &AdditiveGaussianNoise::paper(),
        &model,
        &xs,
        &crit,
        &[f64::INFINITY],
    )?
    .remove(0);
    for (i, row) in rows.iter().enumerate() {
        let (d, _) = model.min_distance(row, Norm::L2);
        assert!(out.success[i]);
        assert!(out.distances[i] >= d * (1.0 - 1e-3));
    }
    Ok(())
}

#[test]
fn gaussian_noise_measured_in_linf_never_beats_the_linf_minimum() -> Result<()> {
    // The same noise search, measured and clipped in L_inf (the "Noise" row among the L_inf
    // attacks of Tables 1-4): distances are L_inf norms, bounded below by the closed form.
    let (model, xs, rows, crit) = model_and_data(2, 16);
    let noise = AdditiveGaussianNoise::new(AdditiveNoiseConfig {
        norm: Norm::Linf,
        ..AdditiveNoiseConfig::paper()
    })?;
    assert_eq!(noise.norm(), Norm::Linf);
    let out = attack_min(&noise, &model, &xs, &crit, &[f64::INFINITY, 0.01])?;
    for (i, row) in rows.iter().enumerate() {
        let (d, _) = model.min_distance(row, Norm::Linf);
        assert!(out[0].success[i]);
        assert!(out[0].distances[i] >= d * (1.0 - 1e-3));
        // Clipped to an L_inf ball of 0.01: every coordinate moved by at most 0.01.
        assert!(out[1].distances[i] <= 0.01 + 1e-6);
    }
    Ok(())
}

#[test]
fn minimisation_results_are_clipped_per_epsilon() -> Result<()> {
    let (model, xs, rows, crit) = model_and_data(2, 15);
    let ds: Vec<f64> = rows
        .iter()
        .map(|r| model.min_distance(r, Norm::L2).0)
        .collect();
    let small = ds.iter().copied().fold(f64::INFINITY, f64::min) * 0.5;
    let outs = attack_min(
        &DeepFool::paper(Norm::L2),
        &model,
        &xs,
        &crit,
        &[small, 10.0],
    )?;
    assert!(
        outs[0].success.iter().all(|&s| !s),
        "nothing is adversarial below half the minimum"
    );
    assert!(outs[0].distances.iter().all(|&d| d <= small * (1.0 + 1e-5)));
    assert!(outs[1].success.iter().all(|&s| s));
    assert_eq!(
        outs[0].raw.host_vec2::<f32>()?,
        outs[1].raw.host_vec2::<f32>()?,
        "one run, clipped twice"
    );
    Ok(())
}

#[test]
fn targeted_pgd_reaches_the_target() -> Result<()> {
    let model = Linear::random(12, 4, 21);
    let (xs, rows) = inputs(6, 12, 0.35, 0.65, 22);
    let y = labels(&model, &rows);
    let targets: Vec<u32> = y.iter().map(|c| (c + 1) % 4).collect();
    let crit = Criterion::targeted(targets.clone());
    let pgd = Pgd::new(PgdConfig::paper(Norm::L2, 1))?;
    let out = attack_fixed(&pgd, &model, &xs, &crit, &[3.0])?.remove(0);
    let pred = common::rows_of(&out.clipped)
        .iter()
        .map(|r| model.predict_row(r))
        .collect::<Vec<_>>();
    for i in 0..6 {
        assert_eq!(out.success[i], pred[i] == targets[i]);
    }
    assert!(out.success_rate() > 0.5);
    Ok(())
}

#[test]
fn all_combination_is_per_sample() -> Result<()> {
    let r = robust_if_all_failed(&[&[true, false, false], &[false, false, true]])?;
    assert_eq!(r, vec![false, true, false]);
    assert!(robust_if_all_failed(&[&[true], &[true, false]]).is_err());
    assert!(robust_if_all_failed(&[]).is_err());
    Ok(())
}
