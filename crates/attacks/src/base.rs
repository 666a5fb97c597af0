//! The attack interface, after Foolbox 3's `attacks/base.py`: an attack only perturbs
//! ([`FixedEpsilonAttack::run`], [`MinimizationAttack::run`]); the free functions
//! [`attack_fixed`] and [`attack_min`] are the one place that validates the arguments, clips the
//! result to each epsilon ball and to the bounds, and re-checks success by running the model on
//! the clipped images (never trusting the attack's own bookkeeping).

use candle_core::Tensor;
use eabs_core::host::HostRead;

use crate::criteria::Criterion;
use crate::error::{Error, Result};
use crate::norms::Norm;
use crate::util::checked_logits;
use eabs_core::Classifier;

/// What every attack declares: the norm it minimises or is bounded in, and a name.
///
/// A non-generic supertrait so that `attack.norm()` is never ambiguous.
pub trait Attack {
    /// Norm of the threat model.
    fn norm(&self) -> Norm;
    /// Short name, e.g. `"pgd-linf"`.
    fn name(&self) -> String;
}

/// An attack that searches within a given epsilon ball (PGD, APGD, ...); run once per epsilon.
pub trait FixedEpsilonAttack<M: Classifier + ?Sized>: Attack {
    /// Returns perturbed inputs (same shape as `xs`) within the epsilon ball and the bounds.
    fn run(&self, model: &M, xs: &Tensor, criterion: &Criterion, epsilon: f64) -> Result<Tensor>;
}

/// An attack that looks for the smallest adversarial perturbation (DeepFool, DDN, CW, Boundary,
/// noise); run once, then clipped to each epsilon.
pub trait MinimizationAttack<M: Classifier + ?Sized>: Attack {
    /// Returns perturbed inputs (same shape as `xs`) within the bounds. `early_stop` is a
    /// distance below which the attack may stop refining a sample (an optimisation only).
    fn run(
        &self,
        model: &M,
        xs: &Tensor,
        criterion: &Criterion,
        early_stop: Option<f64>,
    ) -> Result<Tensor>;
}

/// Result of an attack at one epsilon.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The epsilon (`f64::INFINITY` = unbounded).
    pub epsilon: f64,
    /// What the attack returned (shared by all epsilons of a minimisation attack).
    pub raw: Tensor,
    /// `raw` projected onto the epsilon ball around `xs` and into the bounds.
    pub clipped: Tensor,
    /// Per sample: is `clipped` adversarial, by the model's verdict on `clipped`.
    pub success: Vec<bool>,
    /// Per sample: distance of `clipped` from `xs` in the attack's norm.
    pub distances: Vec<f64>,
}

impl Outcome {
    /// Fraction of samples that were successfully attacked.
    pub fn success_rate(&self) -> f64 {
        if self.success.is_empty() {
            return 0.0;
        }
        self.success.iter().filter(|&&s| s).count() as f64 / self.success.len() as f64
    }

    /// Robust accuracy: fraction of samples that survive the attack (`1 - success_rate`). For
    /// untargeted attacks this counts misclassified clean samples as attacked, as Foolbox does.
    pub fn robust_accuracy(&self) -> f64 {
        1.0 - self.success_rate()
    }
}

/// Checks `xs` against the model and criterion: batch dims, label count and range, bounds, and
/// the shape of the model's logits on `xs` (returned).
pub fn validate_inputs<M: Classifier + ?Sized>(
    model: &M,
    xs: &Tensor,
    criterion: &Criterion,
) -> Result<Tensor> {
    if xs.rank() < 2 {
        return Err(Error::Shape {
            argument: "xs",
            found: xs.dims().to_vec(),
            expected: "(batch, ...) with at least 2 dimensions".into(),
        });
    }
    let batch = xs.dim(0)?;
    if criterion.len() != batch {
        return Err(Error::LabelCount {
            expected: batch,
            found: criterion.len(),
        });
    }
    let n_classes = model.n_classes();
    if let Some((index, &label)) = criterion
        .classes()
        .iter()
        .enumerate()
        .find(|(_, &c)| c as usize >= n_classes)
    {
        return Err(Error::LabelOutOfRange {
            index,
            label,
            n_classes,
        });
    }
    check_bounds(model, xs, "xs")?;
    checked_logits(model, xs)
}

/// What every attack's `run` checks before perturbing: one label per sample and inputs within
/// the bounds. Returns the batch size. (The free functions [`attack_fixed`] / [`attack_min`]
/// validate more, see [`validate_inputs`].)
pub fn check_batch<M: Classifier + ?Sized>(
    model: &M,
    xs: &Tensor,
    criterion: &Criterion,
) -> Result<usize> {
    let batch = xs.dim(0)?;
    if criterion.len() != batch {
        return Err(Error::LabelCount {
            expected: batch,
            found: criterion.len(),
        });
    }
    check_bounds(model, xs, "xs")?;
    Ok(batch)
}

/// Errors unless every value of `xs` lies within the model bounds (tolerance 1e-6 of the width).
pub fn check_bounds<M: Classifier + ?Sized>(
    model: &M,
    xs: &Tensor,
    argument: &'static str,
) -> Result<()> {
    let b = model.bounds();
    let flat = xs.flatten_all()?.to_dtype(candle_core::DType::F64)?;
    let lo = flat.min(0)?.host_scalar::<f64>()?;
    let hi = flat.max(0)?.host_scalar::<f64>()?;
    let tol = 1e-6 * b.width();
    if !(lo >= b.min - tol && hi <= b.max + tol) {
        return Err(Error::OutOfBounds {
            argument,
            found_min: lo,
            found_max: hi,
            min: b.min,
            max: b.max,
        });
    }
    Ok(())
}

/// Checks a list of epsilons: non-empty, each `>= 0` and not NaN; infinity only if allowed.
pub fn validate_epsilons(epsilons: &[f64], allow_infinite: bool) -> Result<()> {
    if epsilons.is_empty() {
        return Err(Error::NoEpsilons);
    }
    for (index, &value) in epsilons.iter().enumerate() {
        if value.is_nan() || value < 0.0 {
            return Err(Error::InvalidEpsilon {
                index,
                value,
                extra: "",
            });
        }
        if value.is_infinite() && !allow_infinite {
            return Err(Error::InvalidEpsilon {
                index,
                value,
                extra: " (a fixed-epsilon attack needs a finite epsilon)",
            });
        }
    }
    Ok(())
}

/// Projects `adv` onto the `norm` ball of radius `epsilon` around `xs`, then into the bounds.
pub fn clip_to_ball<M: Classifier + ?Sized>(
    model: &M,
    norm: Norm,
    xs: &Tensor,
    adv: &Tensor,
    epsilon: f64,
) -> Result<Tensor> {
    let x0 = xs.flatten_from(1)?;
    let delta = (adv.flatten_from(1)? - &x0)?;
    let delta = norm.clip_perturbation(&delta, epsilon)?;
    let clipped = model.bounds().clip(&(x0 + delta)?)?;
    Ok(clipped.reshape(xs.dims())?)
}

fn score<M: Classifier + ?Sized>(
    model: &M,
    norm: Norm,
    xs: &Tensor,
    criterion: &Criterion,
    raw: Tensor,
    epsilon: f64,
) -> Result<Outcome> {
    if raw.dims() != xs.dims() {
        return Err(Error::Shape {
            argument: "attack output",
            found: raw.dims().to_vec(),
            expected: format!("the input shape {:?}", xs.dims()),
        });
    }
    let clipped = clip_to_ball(model, norm, xs, &raw, epsilon)?;
    let success = criterion.is_adversarial(model, &clipped)?;
    let distances = norm.distances(&clipped, xs)?;
    Ok(Outcome {
        epsilon,
        raw,
        clipped,
        success,
        distances,
    })
}

/// Runs a fixed-epsilon attack once per epsilon (Foolbox's `FixedEpsilonAttack.__call__`).
pub fn attack_fixed<M, A>(
    attack: &A,
    model: &M,
    xs: &Tensor,
    criterion: &Criterion,
    epsilons: &[f64],
) -> Result<Vec<Outcome>>
where
    M: Classifier + ?Sized,
    A: FixedEpsilonAttack<M> + ?Sized,
{
    validate_epsilons(epsilons, false)?;
    validate_inputs(model, xs, criterion)?;
    epsilons
        .iter()
        .map(|&eps| {
            let raw = attack.run(model, xs, criterion, eps)?;
            score(model, attack.norm(), xs, criterion, raw, eps)
        })
        .collect()
}

/// Runs a minimisation attack once with `early_stop = min(epsilons)` and clips the result to
/// every epsilon (Foolbox's `MinimizationAttack.__call__`). `f64::INFINITY` means unclipped.
pub fn attack_min<M, A>(
    attack: &A,
    model: &M,
    xs: &Tensor,
    criterion: &Criterion,
    epsilons: &[f64],
) -> Result<Vec<Outcome>>
where
    M: Classifier + ?Sized,
    A: MinimizationAttack<M> + ?Sized,
{
    validate_epsilons(epsilons, true)?;
    validate_inputs(model, xs, criterion)?;
    let min_eps = epsilons.iter().copied().fold(f64::INFINITY, f64::min);
    let early_stop = min_eps.is_finite().then_some(min_eps);
    let raw = attack.run(model, xs, criterion, early_stop)?;
    epsilons
        .iter()
        .map(|&eps| score(model, attack.norm(), xs, criterion, raw.clone(), eps))
        .collect()
}

/// The paper's "ALL" row from attack *success* flags: per sample, robust only if every attack
/// failed. `successes[a][i]` is the success flag of attack `a` on sample `i` (all for the same
/// norm and epsilon), e.g. [`Outcome::success`].
///
/// Named for its input: `eabs_stats::robust_to_all` computes the same row from per-attack
/// *robust* flags (`!success`).
pub fn robust_if_all_failed(successes: &[&[bool]]) -> Result<Vec<bool>> {
    let Some(first) = successes.first() else {
        return Err(Error::InvalidConfig {
            attack: "ALL",
            message: "no attack results given".into(),
        });
    };
    let n = first.len();
    let mut robust = vec![true; n];
    for (a, s) in successes.iter().enumerate() {
        if s.len() != n {
            return Err(Error::InvalidConfig {
                attack: "ALL",
                message: format!(
                    "attack result {a} has {} samples, expected {n} like result 0",
                    s.len()
                ),
            });
        }
        for (r, &hit) in robust.iter_mut().zip(s.iter()) {
            *r &= !hit;
        }
    }
    Ok(robust)
}

/// Robust accuracy under the "ALL" combination of [`Outcome`]s (same norm and epsilon).
pub fn robust_accuracy_all(outcomes: &[&Outcome]) -> Result<f64> {
    let s: Vec<&[bool]> = outcomes.iter().map(|o| o.success.as_slice()).collect();
    let r = robust_if_all_failed(&s)?;
    Ok(if r.is_empty() {
        0.0
    } else {
        r.iter().filter(|&&v| v).count() as f64 / r.len() as f64
    })
}
