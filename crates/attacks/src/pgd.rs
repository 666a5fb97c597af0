//! Projected gradient descent (Madry et al. 2018; Kurakin et al. 2017) in L_inf and L_2, with
//! random starts and restarts, after Foolbox 3's `gradient_descent_base.py`.
//!
//! # Differences to Foolbox
//! - Restarts are built in and the best result is kept **per sample**: the first successful
//!   restart, else the one with the highest loss. Later restarts only run on samples that are
//!   still unsuccessful, which cannot change anyone's result.
//! - Random starts come from per-sample streams (see [`crate::seeding`]), so results do not depend
//!   on the batch composition.
//! - Defaults are the paper's (Section 4.2): 80 steps, 5 or 20 random starts; Foolbox uses 40
//!   (L_inf) / 50 (L_2) steps and one start.
//!
//! # Step size
//! The paper does not give one. We keep Foolbox's relative step sizes, `0.01 / 0.3` of epsilon
//! for L_inf (Madry et al.'s MNIST setting: step 0.01 at epsilon 0.3) and `0.025` of epsilon for
//! L_2. With 80 steps the walk covers 2.7 and 2 epsilons, enough to cross the ball from a random
//! start and come back.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::base::{check_batch, Attack, FixedEpsilonAttack};
use crate::criteria::{Criterion, Loss};
use crate::error::{config_err, Error, Result};
use crate::norms::Norm;
use crate::seeding::sample_rngs;
use crate::util::{checked_logits, checked_value_and_grad, put_rows, take_rows, to_vec_f64};
use eabs_core::Differentiable;

/// Configuration of [`Pgd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgdConfig {
    /// Threat-model norm.
    pub norm: Norm,
    /// Gradient steps per start.
    pub steps: usize,
    /// Step size relative to epsilon (ignored when `abs_stepsize` is set).
    pub rel_stepsize: f64,
    /// Absolute step size, overriding `rel_stepsize`.
    pub abs_stepsize: Option<f64>,
    /// Start from a uniformly random point of the epsilon ball (else from the input).
    pub random_start: bool,
    /// Number of starts; the best per sample is kept. Needs `random_start` when > 1.
    pub restarts: usize,
    /// Loss to ascend.
    pub loss: Loss,
    /// Seed of the per-sample random streams.
    pub seed: u64,
}

impl PgdConfig {
    /// The paper's PGD (Section 4.2): 80 steps, `random_starts` random starts (5 for MNIST and
    /// Fashion-MNIST, 20 for SVHN and SuperTraffic-10: `eabs_datasets::DatasetKind::pgd_random_starts`),
    /// cross-entropy, Foolbox's relative step size for the norm.
    pub fn paper(norm: Norm, random_starts: usize) -> Self {
        Self {
            norm,
            steps: 80,
            rel_stepsize: default_rel_stepsize(norm),
            abs_stepsize: None,
            random_start: true,
            restarts: random_starts,
            loss: Loss::CrossEntropy,
            seed: 0,
        }
    }

    /// The paper's PGD at another number of `steps`, at full strength: the step size is the
    /// paper's total path (80 steps of Foolbox's relative step: 80 x 0.01/0.3 = 2.67 eps for
    /// L_inf, 80 x 0.025 = 2 eps for L_2) divided over `steps`, so that a shorter run can still
    /// cross the ball and reach its boundary (Madry et al. 2018 likewise size the step as
    /// ~2.5 eps / steps). At 80 steps this is [`PgdConfig::paper`] exactly. Keeping the
    /// 80-step size at 20 steps moves at most 0.67 eps (L_inf) / 0.5 eps (L_2), which leaves an
    /// undefended CNN looking robust.
    pub fn paper_sized(norm: Norm, steps: usize, random_starts: usize) -> Self {
        let paper = Self::paper(norm, random_starts);
        Self {
            steps,
            rel_stepsize: paper.rel_stepsize * paper.steps as f64 / steps.max(1) as f64,
            ..paper
        }
    }

    /// The total distance the iterates can travel, relative to epsilon (`steps x rel step`).
    pub fn relative_path(&self) -> f64 {
        self.steps as f64 * self.rel_stepsize
    }

    /// The paper's PGD with estimated gradients (Section 4.2, "gradient-free attacks"): 50
    /// steps, one random start; wrap the model in [`crate::EstimatedGradient`].
    ///
    /// The paper does not name the loss. We ascend the logit margin ([`Loss::Margin`]), as the
    /// SPSA attack of Uesato et al. 2018 does: finite differences of a float32 cross-entropy
    /// vanish under rounding once a sample is classified confidently (cross-entropy ~ 1e-4),
    /// while logit differences stay resolvable.
    pub fn paper_estimated(norm: Norm) -> Self {
        Self {
            steps: 50,
            restarts: 1,
            loss: Loss::Margin,
            ..Self::paper(norm, 1)
        }
    }

    /// Foolbox 3.3's `LinfPGD()` / `L2PGD()` defaults: 40 / 50 steps, one random start.
    pub fn foolbox(norm: Norm) -> Self {
        let steps = match norm {
            Norm::Linf => 40,
            Norm::L2 => 50,
        };
        Self {
            steps,
            restarts: 1,
            ..Self::paper(norm, 1)
        }
    }

    /// Returns the config with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(config_err("PGD", "steps must be >= 1, found 0"));
        }
        if self.restarts == 0 {
            return Err(config_err("PGD", "restarts must be >= 1, found 0"));
        }
        if self.restarts > 1 && !self.random_start {
            return Err(config_err(
                "PGD",
                format!(
                    "{} restarts without random_start would repeat the same run",
                    self.restarts
                ),
            ));
        }
        let step = self.abs_stepsize.unwrap_or(self.rel_stepsize);
        if !(step.is_finite() && step > 0.0) {
            return Err(config_err(
                "PGD",
                format!("step size must be finite and > 0, found {step}"),
            ));
        }
        Ok(())
    }
}

/// Foolbox's relative step size: 0.01/0.3 for L_inf, 0.025 for L_2.
pub fn default_rel_stepsize(norm: Norm) -> f64 {
    match norm {
        Norm::Linf => 0.01 / 0.3,
        Norm::L2 => 0.025,
    }
}

/// Projected gradient descent; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pgd {
    /// Configuration.
    pub config: PgdConfig,
}

impl Pgd {
    /// Creates the attack after validating `config`.
    pub fn new(config: PgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// `Pgd::new(PgdConfig::paper(Norm::Linf, random_starts))`.
    pub fn paper_linf(random_starts: usize) -> Result<Self> {
        Self::new(PgdConfig::paper(Norm::Linf, random_starts))
    }

    /// `Pgd::new(PgdConfig::paper(Norm::L2, random_starts))`.
    pub fn paper_l2(random_starts: usize) -> Result<Self> {
        Self::new(PgdConfig::paper(Norm::L2, random_starts))
    }
}

impl Attack for Pgd {
    fn norm(&self) -> Norm {
        self.config.norm
    }
    fn name(&self) -> String {
        format!("pgd-{}", self.config.norm.name())
    }
}

/// Per-sample loss of `adv` (`(b, d)` flat) and the success verdict.
pub(crate) fn loss_and_success<M: Differentiable + ?Sized>(
    model: &M,
    adv: &Tensor,
    shape: &[usize],
    criterion: &Criterion,
    loss: Loss,
) -> Result<(Vec<f64>, Vec<bool>)> {
    let logits = checked_logits(model, &adv.reshape(shape)?)?;
    let f = loss.function(
        criterion,
        model.n_classes(),
        logits.dtype(),
        logits.device(),
    )?;
    let value = to_vec_f64(&f(&logits)?)?;
    Ok((value, criterion.is_adversarial_logits(&logits)?))
}

impl<M: Differentiable + ?Sized> FixedEpsilonAttack<M> for Pgd {
    fn run(&self, model: &M, xs: &Tensor, criterion: &Criterion, epsilon: f64) -> Result<Tensor> {
        let cfg = &self.config;
        cfg.validate()?;
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(Error::InvalidEpsilon {
                index: 0,
                value: epsilon,
                extra: "",
            });
        }
        let batch = check_batch(model, xs, criterion)?;
        let bounds = model.bounds();
        let shape = xs.dims().to_vec();
        let dim = xs.elem_count() / batch.max(1);
        let x0 = xs.flatten_from(1)?;
        let stepsize = cfg.abs_stepsize.unwrap_or(cfg.rel_stepsize * epsilon);
        let mut rngs = sample_rngs(cfg.seed, xs)?;

        let mut best = x0.clone();
        let mut best_success = vec![false; batch];
        let mut best_loss = vec![f64::NEG_INFINITY; batch];
        let mut active: Vec<usize> = (0..batch).collect();
        for _ in 0..cfg.restarts {
            if active.is_empty() {
                break;
            }
            let crit = criterion.subset(&active);
            let x0a = take_rows(&x0, &active)?;
            let mut sub_shape = shape.clone();
            sub_shape[0] = active.len();
            let mut x = if cfg.random_start {
                let mut sub_rngs: Vec<_> = active.iter().map(|&i| rngs[i].clone()).collect();
                let noise =
                    cfg.norm
                        .random_perturbation(&mut sub_rngs, dim, epsilon, xs.device())?;
                for (j, &i) in active.iter().enumerate() {
                    rngs[i] = sub_rngs[j].clone();
                }
                bounds.clip(&(&x0a + noise.to_dtype(x0a.dtype())?)?)?
            } else {
                x0a.clone()
            };
            let loss_fn = cfg
                .loss
                .function(&crit, model.n_classes(), xs.dtype(), xs.device())?;
            for _ in 0..cfg.steps {
                let (_, grad) =
                    checked_value_and_grad(model, &x.reshape(sub_shape.as_slice())?, &*loss_fn)?;
                let dir = cfg.norm.normalize(&grad.flatten_from(1)?)?;
                x = (x + (dir * stepsize)?)?;
                let delta = cfg.norm.clip_perturbation(&(&x - &x0a)?, epsilon)?;
                x = bounds.clip(&(&x0a + delta)?)?;
            }
            let (loss, success) = loss_and_success(model, &x, &sub_shape, &crit, cfg.loss)?;
            let mut upd_local = Vec::new();
            let mut upd_global = Vec::new();
            for (j, &i) in active.iter().enumerate() {
                if success[j] || loss[j] > best_loss[i] {
                    upd_local.push(j);
                    upd_global.push(i);
                    best_success[i] = success[j];
                    best_loss[i] = loss[j];
                }
            }
            if !upd_local.is_empty() {
                best = put_rows(&best, &take_rows(&x, &upd_local)?, &upd_global)?;
            }
            active.retain(|&i| !best_success[i]);
        }
        Ok(best.reshape(shape)?)
    }
}
