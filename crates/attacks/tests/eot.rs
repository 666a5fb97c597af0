//! Expectation over transformation on a randomised toy model where it matters.
//!
//! The model classifies like a fixed linear model (plus a little logit noise), but each call of
//! its gradient multiplies the true gradient by a random factor: -1 with probability 0.7, +5
//! with probability 0.3. One call therefore points the wrong way 70 % of the time, while the
//! expected gradient, `(-0.7 + 1.5) = 0.8` times the true one, points the right way. Sign-based
//! L_inf PGD without EOT drifts away from the boundary (mean sign -0.4 per step); averaged
//! over 5 calls (the paper's EOT) the sign is right unless all 5 factors are -1
//! (p = 0.7^5 = 0.17), a drift of +0.66 per step.
mod common;

use eabs_core::host::{self, HostRead};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use common::{inputs, labels, Linear};
use eabs_attacks::*;
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Randomised {
    inner: Linear,
    rng: Mutex<ChaCha8Rng>,
}

impl Classifier for Randomised {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        self.inner.n_classes()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = self.inner.logits(xs)?;
        let noise: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap();
            (0..l.elem_count())
                .map(|_| rng.random_range(-1e-3f32..1e-3))
                .collect()
        };
        &l + host::from_vec(noise, l.dims(), l.device())?
    }
    fn is_stochastic(&self) -> bool {
        true
    }
}

impl Differentiable for Randomised {
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (v, g) = self.inner.value_and_grad(xs, loss)?;
        let b = xs.dim(0)?;
        let factors: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap();
            (0..b)
                .map(|_| if rng.random::<f64>() < 0.7 { -1.0 } else { 5.0 })
                .collect()
        };
        let f = host::from_vec(factors, (b, 1), xs.device())?;
        Ok((v, g.broadcast_mul(&f)?))
    }
}

fn setup() -> (Randomised, Tensor, Vec<Vec<f32>>, Criterion, Vec<f64>) {
    let inner = Linear::random(10, 2, 31);
    let (xs, rows) = inputs(8, 10, 0.4, 0.6, 32);
    let crit = Criterion::misclassification(labels(&inner, &rows));
    let ds = rows
        .iter()
        .map(|r| inner.min_distance(r, Norm::Linf).0)
        .collect();
    (
        Randomised {
            inner,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(7)),
        },
        xs,
        rows,
        crit,
        ds,
    )
}

#[test]
fn pgd_without_eot_is_fooled_and_with_eot_is_not() -> Result<()> {
    let (model, xs, _, crit, ds) = setup();
    // Twice the largest minimal distance: every sample is attackable.
    let eps = 2.0 * ds.iter().copied().fold(0.0, f64::max);
    assert!(eps < 0.2, "keep the ball inside the box: eps = {eps}");
    let pgd = Pgd::new(PgdConfig::paper(Norm::Linf, 1))?;

    let plain = attack_fixed(&pgd, &model, &xs, &crit, &[eps])?.remove(0);
    let eot = Eot::paper(&model);
    let averaged = attack_fixed(&pgd, &eot, &xs, &crit, &[eps])?.remove(0);

    assert!(
        plain.success_rate() <= 0.25,
        "without EOT PGD should mostly fail: {:?}",
        plain.success
    );
    assert!(
        averaged.success.iter().all(|&s| s),
        "with EOT PGD should always succeed: {:?}",
        averaged.success
    );
    Ok(())
}

#[test]
fn eot_of_a_deterministic_model_is_the_model() -> Result<()> {
    let inner = Linear::random(6, 3, 1);
    let (xs, rows) = inputs(4, 6, 0.0, 1.0, 2);
    let crit = Criterion::misclassification(labels(&inner, &rows));
    let eot = Eot::new(&inner, 3)?;
    let a = inner.logits(&xs)?.host_vec2::<f32>()?;
    let b = eot.logits(&xs)?.host_vec2::<f32>()?;
    for (r, s) in a.iter().zip(&b) {
        for (x, y) in r.iter().zip(s) {
            assert!((x - y).abs() < 1e-5);
        }
    }
    let loss = Loss::CrossEntropy.function(&crit, 3, candle_core::DType::F32, &Device::Cpu)?;
    let (_, g1) = inner.value_and_grad(&xs, &*loss)?;
    let (_, g2) = eot.value_and_grad(&xs, &*loss)?;
    let diff = (g1 - g2)?.abs()?.max_all()?.host_scalar::<f32>()?;
    assert!(diff < 1e-5);
    assert!(Eot::new(&inner, 0).is_err());
    Ok(())
}

/// A deterministic model whose `values_and_grads` runs one "forward pass" for all losses, as
/// E-ABS inference does, and counts them. DeepFool must use it (one pass per step for the other
/// candidates instead of one per candidate), and EOT must average it pass by pass.
struct Counting {
    inner: Linear,
    passes: Mutex<usize>,
}

impl Classifier for Counting {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        self.inner.n_classes()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.logits(xs)
    }
}

impl Differentiable for Counting {
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        *self.passes.lock().unwrap() += 1;
        self.inner.value_and_grad(xs, loss)
    }
    fn values_and_grads(
        &self,
        xs: &Tensor,
        losses: &[&LossFn<'_>],
    ) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        *self.passes.lock().unwrap() += 1;
        losses
            .iter()
            .map(|l| self.inner.value_and_grad(xs, l))
            .collect()
    }
}

#[test]
fn deepfool_and_eot_share_one_pass_among_candidate_gradients() -> Result<()> {
    let inner = Linear::random(12, 6, 40);
    let (xs, rows) = inputs(4, 12, 0.35, 0.65, 41);
    let crit = Criterion::misclassification(labels(&inner, &rows));
    let model = Counting {
        inner,
        passes: Mutex::new(0),
    };
    let steps = 2;
    let cfg = DeepFoolConfig {
        steps,
        ..DeepFoolConfig::paper(Norm::L2)
    };
    let _ = DeepFool::new(cfg)?.run(&model, &xs, &crit, None)?;
    // At most 2 passes per step (first candidate + all others), not 5 (one per candidate).
    assert!(
        *model.passes.lock().unwrap() <= 2 * steps,
        "{} passes",
        model.passes.lock().unwrap()
    );

    // EOT over a deterministic model: the averaged gradients equal the single ones.
    let eot = Eot::new(&model, 3)?;
    let first = |l: &Tensor| l.narrow(1, 0, 1)?.squeeze(1);
    let second = |l: &Tensor| l.narrow(1, 1, 1)?.squeeze(1);
    *model.passes.lock().unwrap() = 0;
    let both = eot.values_and_grads(&xs, &[&first, &second])?;
    assert_eq!(
        *model.passes.lock().unwrap(),
        3,
        "one pass per EOT sample, for both losses"
    );
    let (_, g2) = model.inner.value_and_grad(&xs, &second)?;
    let diff = (both[1].1.clone() - g2)?
        .abs()?
        .max_all()?
        .host_scalar::<f32>()?;
    assert!(diff < 1e-6);
    Ok(())
}
