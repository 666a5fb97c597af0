//! The sanity checks of every table (issue 14, item 6; Carlini et al. 2019) on models whose
//! answers are known: a linear classifier, attacked with its true gradient, passes them; the
//! same classifier behind a gradient that points the wrong way (the textbook gradient-masking
//! defence) fails them. The attacks are the suite's own (`run_row_at`), not crafted outcomes,
//! except for the doubling check, whose bad case is a budget we cut on purpose.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use eabs_attacks::Norm;
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};
use eabs_datasets::DatasetKind;
use eabs_eval::ledger::{
    doubling_and_large_epsilon, gradient_free_not_stronger, ExtraRuns, Extras,
};
use eabs_eval::preset::{EvalSizes, Preset};
use eabs_eval::suite::{and_clean, clean_row, run_row_at, verdicts, AttackKind, AttackRow};
use eabs_eval::{Outcomes, RowKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const D: usize = 4;

/// `logits = x W`, two classes on `D` features.
struct Linear {
    w: Tensor,
    device: Device,
}

impl Linear {
    fn new() -> Self {
        let device = Device::Cpu;
        // Class 0 likes feature 0, class 1 feature 1; the other two features are noise.
        let w = Tensor::new(
            &[[1.0f32, -1.0], [-1.0, 1.0], [0.3, -0.2], [-0.1, 0.4]],
            &device,
        )
        .unwrap();
        Self { w, device }
    }
}

impl Classifier for Linear {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        2
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.flatten_from(1)?.matmul(&self.w)
    }
}

impl Differentiable for Linear {}

/// The same classifier, with the gradient of every loss negated: attacks that follow it walk
/// away from the boundary, while random noise still finds it.
struct Masked(Linear);

impl Classifier for Masked {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        2
    }
    fn device(&self) -> &Device {
        &self.0.device
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.logits(xs)
    }
}

impl Differentiable for Masked {
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let x = Var::from_tensor(&xs.detach())?;
        let value = loss(&self.0.logits(x.as_tensor())?)?;
        let grads = value.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .cloned()
            .unwrap_or(x.as_tensor().zeros_like()?);
        Ok((value, g.neg()?))
    }
}

/// 40 points near the boundary, in the box, with their labels.
fn data(model: &Linear) -> Result<(Tensor, Vec<u32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v: Vec<f32> = (0..40 * D)
        .map(|_| rng.random_range(0.35f32..0.65))
        .collect();
    let xs = Tensor::from_vec(v, (40, 1, 1, D), &model.device)?;
    let labels = model.predict(&xs)?.to_vec1::<u32>()?;
    Ok((xs, labels))
}

fn sizes() -> EvalSizes {
    EvalSizes {
        pgd_steps: 20,
        noise_steps: 200,
        ..EvalSizes::of(Preset::Smoke)
    }
}

fn robust(r: &[Vec<(bool, f64)>]) -> Vec<bool> {
    r[0].iter().map(|&(b, _)| b).collect()
}

/// The table's PGD and noise rows of `model`, L_2 at `eps`, as outcomes of a model `name`.
fn outcomes_of(model: &dyn Differentiable, name: &str, eps: f64) -> Result<Outcomes> {
    let lin = Linear::new();
    let (xs, labels) = data(&lin)?;
    let s = sizes();
    let ds = DatasetKind::FashionMnist;
    let clean = robust(&clean_row(model, &xs, &labels, 1)?);
    let mut o = Outcomes::new();
    o.entry(RowKey::Clean)
        .or_default()
        .insert(name.into(), clean.clone());
    for attack in [AttackKind::Pgd, AttackKind::Noise] {
        let row = AttackRow::new(Norm::L2, attack);
        let r = robust(&run_row_at(row, &s, ds, model, &xs, &labels, 1, eps)?);
        o.entry(RowKey::Attack(row))
            .or_default()
            .insert(name.into(), and_clean(&clean, &r));
    }
    Ok(o)
}

#[test]
fn gradient_free_check_passes_on_true_gradients_and_fails_on_masked_ones() -> Result<()> {
    let eps = 0.15;
    let good = outcomes_of(&Linear::new(), "linear", eps)?;
    let checks = gradient_free_not_stronger(&good, &["linear".into()])?;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].passed, "{checks:?}");
    // The setting is not vacuous: noise breaks some samples, PGD at least those.
    let noise = &good[&RowKey::Attack(AttackRow::new(Norm::L2, AttackKind::Noise))]["linear"];
    let pgd = &good[&RowKey::Attack(AttackRow::new(Norm::L2, AttackKind::Pgd))]["linear"];
    let broken = |v: &Vec<bool>| v.iter().filter(|&&r| !r).count();
    assert!(broken(noise) >= 3, "noise broke {}", broken(noise));
    assert!(broken(pgd) >= broken(noise));

    let bad = outcomes_of(&Masked(Linear::new()), "masked", eps)?;
    let checks = gradient_free_not_stronger(&bad, &["masked".into()])?;
    assert!(!checks[0].passed, "{checks:?}");
    assert!(checks[0].detail.contains("masked gradients"), "{checks:?}");
    Ok(())
}

fn extra_runs(model: &dyn Differentiable, eps: f64, steps: usize) -> Result<ExtraRuns> {
    let lin = Linear::new();
    let (xs, labels) = data(&lin)?;
    let ds = DatasetKind::FashionMnist;
    let row = AttackRow::new(Norm::L2, AttackKind::Pgd);
    let mut s = sizes();
    s.pgd_steps = steps;
    let pgd = robust(&run_row_at(row, &s, ds, model, &xs, &labels, 1, eps)?);
    let mut doubled_sizes = s.clone();
    doubled_sizes.pgd_steps *= 2;
    doubled_sizes.pgd_restarts = Some(2);
    let doubled = robust(&run_row_at(
        row,
        &doubled_sizes,
        ds,
        model,
        &xs,
        &labels,
        1,
        eps,
    )?);
    let large = 4.0 * eps;
    let at_large = robust(&run_row_at(row, &s, ds, model, &xs, &labels, 2, large)?);
    Ok(ExtraRuns {
        pgd,
        doubled,
        large_epsilon: large,
        at_large,
    })
}

fn extras(name: &str, runs: ExtraRuns) -> Extras {
    let mut per = BTreeMap::new();
    per.insert("l2".to_string(), runs);
    let mut e = Extras::new();
    e.insert(name.to_string(), per);
    e
}

#[test]
fn large_epsilon_and_doubling_checks_pass_on_true_gradients() -> Result<()> {
    let runs = extra_runs(&Linear::new(), 0.15, 20)?;
    let checks = doubling_and_large_epsilon(&extras("linear", runs));
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.passed), "{checks:?}");
    Ok(())
}

#[test]
fn large_epsilon_check_fails_on_masked_gradients() -> Result<()> {
    let runs = extra_runs(&Masked(Linear::new()), 0.15, 20)?;
    assert!(runs.at_large.iter().filter(|&&r| r).count() > 2);
    let checks = doubling_and_large_epsilon(&extras("masked", runs));
    let large = checks
        .iter()
        .find(|c| c.name.contains("large epsilon"))
        .unwrap();
    assert!(!large.passed, "{checks:?}");
    Ok(())
}

#[test]
fn doubling_check_fails_when_more_budget_breaks_more() {
    // A table budget that stopped early: 10 of 20 robust, twice the budget leaves 5.
    let runs = ExtraRuns {
        pgd: (0..20).map(|i| i < 10).collect(),
        doubled: (0..20).map(|i| i < 5).collect(),
        large_epsilon: 0.6,
        at_large: vec![false; 20],
    };
    let checks = doubling_and_large_epsilon(&extras("short", runs));
    let doubling = checks.iter().find(|c| c.name.contains("doubling")).unwrap();
    assert!(!doubling.passed, "{checks:?}");
    assert!(doubling.detail.contains("not converged"), "{checks:?}");
    // One sample of twenty is within the allowance.
    let runs = ExtraRuns {
        pgd: (0..20).map(|i| i < 10).collect(),
        doubled: (0..20).map(|i| i < 9).collect(),
        large_epsilon: 0.6,
        at_large: vec![false; 20],
    };
    assert!(doubling_and_large_epsilon(&extras("fine", runs))
        .iter()
        .all(|c| c.passed));
}

/// Right on even calls, wrong on odd ones: three draws see right, wrong, right.
struct Alternating {
    inner: Linear,
    calls: AtomicU64,
}

impl Classifier for Alternating {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        2
    }
    fn device(&self) -> &Device {
        &self.inner.device
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = self.inner.logits(xs)?;
        if self.calls.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
            l.neg()
        } else {
            Ok(l)
        }
    }
    fn is_stochastic(&self) -> bool {
        true
    }
}

#[test]
fn verdicts_take_the_majority_of_fresh_draws() -> Result<()> {
    let lin = Linear::new();
    let (xs, labels) = data(&lin)?;
    let m = Alternating {
        inner: Linear::new(),
        calls: AtomicU64::new(0),
    };
    // Draws 0, 1, 2: right, wrong, right.
    assert!(verdicts(&m, &xs, &labels, 3)?.iter().all(|&v| v));
    // Draws 3, 4: wrong, right: a tie, which counts as misclassified.
    assert!(verdicts(&m, &xs, &labels, 2)?.iter().all(|&v| !v));
    // A deterministic model is asked once, whatever the draws.
    assert!(verdicts(&lin, &xs, &labels, 4)?.iter().all(|&v| v));
    Ok(())
}
