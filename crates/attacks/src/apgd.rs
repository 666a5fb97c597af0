//! Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
//! of diverse parameter-free attacks"; AutoAttack's `autopgd_base.py`), L_inf and L_2, with the
//! cross-entropy or DLR loss. Beyond the paper: robustness claims today are judged by it.
//!
//! The algorithm, per sample:
//! - start at a random point on the epsilon sphere (L_inf: `eps * t / ||t||_inf` with `t`
//!   uniform in `[-1, 1]^d`; L_2: `eps * g / ||g||_2`, `g` Gaussian), step size `eta = 2 eps`;
//! - `z = P(x_k + eta * normalize(grad))`, then the momentum step
//!   `x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))` with `a = 0.75` (1 at the first step);
//! - at checkpoints `w_j = ceil(p_j N)`, `p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`
//!   (the code's `k = max(k - size_decr, n_iter_min)` form), halve `eta` and restart from the
//!   best point if fewer than `rho = 0.75` of the steps since the last checkpoint increased the
//!   loss, or if `eta` was not halved at the last checkpoint and the best loss did not improve.
//!
//! Returns the first adversarial iterate found, else the highest-loss iterate; restarts keep the
//! best per sample. Random starts use per-sample streams ([`crate::seeding`]).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::base::{check_batch, Attack, FixedEpsilonAttack};
use crate::criteria::{Criterion, Loss};
use crate::error::{config_err, Error, Result};
use crate::norms::Norm;
use crate::seeding::sample_rngs;
use crate::util::{
    column, l2_rows, normal_rows, put_rows, take_rows, to_vec_f64, uniform_rows, value_grad_logits,
    where_rows,
};
use eabs_core::Differentiable;

/// Configuration of [`Apgd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApgdConfig {
    /// Norm.
    pub norm: Norm,
    /// Iterations per restart (AutoAttack: 100).
    pub steps: usize,
    /// Restarts; the best per sample is kept (AutoAttack "standard": 1 for APGD-CE).
    pub restarts: usize,
    /// Loss: [`Loss::CrossEntropy`] (APGD-CE) or [`Loss::Dlr`] (APGD-DLR).
    pub loss: Loss,
    /// Fraction of improving steps required between checkpoints (0.75).
    pub rho: f64,
    /// Momentum weight `a` (0.75).
    pub momentum: f64,
    /// Seed of the per-sample streams.
    pub seed: u64,
}

impl ApgdConfig {
    /// AutoAttack's settings: 100 iterations, 1 restart, rho = momentum = 0.75.
    pub fn autoattack(norm: Norm, loss: Loss) -> Self {
        Self {
            norm,
            steps: 100,
            restarts: 1,
            loss,
            rho: 0.75,
            momentum: 0.75,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.restarts == 0 {
            return Err(config_err(
                "APGD",
                format!(
                    "steps and restarts must be >= 1, found {} and {}",
                    self.steps, self.restarts
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.rho) || !(0.0..=1.0).contains(&self.momentum) {
            return Err(config_err(
                "APGD",
                format!(
                    "rho and momentum must lie in [0, 1], found {} and {}",
                    self.rho, self.momentum
                ),
            ));
        }
        Ok(())
    }
}

/// Auto-PGD; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Apgd {
    /// Configuration.
    pub config: ApgdConfig,
}

impl Apgd {
    /// Creates the attack after validating `config`.
    pub fn new(config: ApgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }
}

impl Attack for Apgd {
    fn norm(&self) -> Norm {
        self.config.norm
    }
    fn name(&self) -> String {
        let loss = match self.config.loss {
            Loss::CrossEntropy => "ce",
            Loss::Dlr => "dlr",
            Loss::Margin => "margin",
        };
        format!("apgd-{loss}-{}", self.config.norm.name())
    }
}

struct Run {
    adv: Tensor,
    success: Vec<bool>,
    best_loss: Vec<f64>,
}

impl Apgd {
    /// One APGD run on the samples of `x0` (flat `(b, d)`).
    #[allow(clippy::too_many_arguments)]
    fn single_run<M: Differentiable + ?Sized>(
        &self,
        model: &M,
        x0: &Tensor,
        shape: &[usize],
        criterion: &Criterion,
        epsilon: f64,
        rngs: &mut [rand_chacha::ChaCha8Rng],
    ) -> Result<Run> {
        let cfg = &self.config;
        let (dtype, device) = (x0.dtype(), x0.device().clone());
        let (batch, dim) = x0.dims2()?;
        let bounds = model.bounds();
        let loss_fn = cfg
            .loss
            .function(criterion, model.n_classes(), dtype, &device)?;
        let project = |x: &Tensor| -> Result<Tensor> {
            let d = cfg.norm.clip_perturbation(&(x - x0)?, epsilon)?;
            Ok(bounds.clip(&(x0 + d)?)?)
        };
        let start = match cfg.norm {
            Norm::Linf => {
                let t = uniform_rows(rngs, dim, -1.0, 1.0, &device)?.to_dtype(dtype)?;
                let n = t.abs()?.max_keepdim(1)?.clamp(1e-12, f64::MAX)?;
                t.broadcast_div(&n)?
            }
            Norm::L2 => {
                let g = normal_rows(rngs, dim, &device)?.to_dtype(dtype)?;
                g.broadcast_div(&l2_rows(&g)?.clamp(1e-12, f64::MAX)?)?
            }
        };
        let mut x = bounds.clip(&(x0 + (start * epsilon)?)?)?;
        let eval = |x: &Tensor| -> Result<(Vec<f64>, Tensor, Vec<bool>)> {
            let xr = x.reshape(shape)?;
            let (value, grad, logits) = value_grad_logits(model, &xr, &*loss_fn)?;
            let adv = criterion.is_adversarial_logits(&logits)?;
            Ok((to_vec_f64(&value)?, grad.flatten_from(1)?, adv))
        };
        let (loss0, mut grad, adv0) = eval(&x)?;
        let mut success = adv0.clone();
        let mut x_best_adv = x.clone();
        let mut x_best = x.clone();
        let mut grad_best = grad.clone();
        let mut loss_best = loss0.clone();
        // loss_steps[j] = loss after iteration j - 1 (loss_steps[0] = at the start).
        let mut loss_steps: Vec<Vec<f64>> = vec![loss0];
        let mut step_size = vec![2.0 * epsilon; batch];
        let mut x_old = x.clone();
        let n_iter_2 = ((0.22 * cfg.steps as f64) as usize).max(1);
        let n_iter_min = ((0.06 * cfg.steps as f64) as usize).max(1);
        let size_decr = ((0.03 * cfg.steps as f64) as usize).max(1);
        let mut k = n_iter_2;
        let mut counter3 = 0;
        let mut loss_best_last_check = loss_best.clone();
        let mut reduced_last_check = vec![true; batch];
        for i in 0..cfg.steps {
            let grad2 = (&x - &x_old)?;
            x_old = x.clone();
            let a = if i > 0 { cfg.momentum } else { 1.0 };
            let eta = column(&step_size, dtype, &device)?;
            let z = project(&(&x + cfg.norm.normalize(&grad)?.broadcast_mul(&eta)?)?)?;
            let moved = ((&x + ((z - &x)? * a)?)? + (grad2 * (1.0 - a))?)?;
            x = project(&moved)?;
            let (loss, g, adv) = eval(&x)?;
            grad = g;
            let newly: Vec<bool> = (0..batch).map(|j| adv[j] && !success[j]).collect();
            x_best_adv = where_rows(&newly, &x, &x_best_adv)?;
            for j in 0..batch {
                success[j] |= adv[j];
            }
            let improved: Vec<bool> = (0..batch).map(|j| loss[j] > loss_best[j]).collect();
            x_best = where_rows(&improved, &x, &x_best)?;
            grad_best = where_rows(&improved, &grad, &grad_best)?;
            for j in 0..batch {
                if improved[j] {
                    loss_best[j] = loss[j];
                }
            }
            loss_steps.push(loss);
            counter3 += 1;
            if counter3 == k {
                // Oscillation check over the last k steps (AutoAttack's check_oscillation).
                let last = loss_steps.len() - 1;
                let mut reduce = vec![false; batch];
                for j in 0..batch {
                    let ups = (0..k)
                        .filter(|&c| {
                            last > c && loss_steps[last - c][j] > loss_steps[last - c - 1][j]
                        })
                        .count();
                    let oscillating = (ups as f64) <= k as f64 * cfg.rho;
                    let no_progress =
                        !reduced_last_check[j] && loss_best_last_check[j] >= loss_best[j];
                    reduce[j] = oscillating || no_progress;
                    if reduce[j] {
                        step_size[j] /= 2.0;
                    }
                }
                reduced_last_check = reduce.clone();
                loss_best_last_check = loss_best.clone();
                x = where_rows(&reduce, &x_best, &x)?;
                grad = where_rows(&reduce, &grad_best, &grad)?;
                k = k.saturating_sub(size_decr).max(n_iter_min);
                counter3 = 0;
            }
        }
        let adv = where_rows(&success, &x_best_adv, &x_best)?;
        Ok(Run {
            adv,
            success,
            best_loss: loss_best,
        })
    }
}

impl<M: Differentiable + ?Sized> FixedEpsilonAttack<M> for Apgd {
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
        let shape = xs.dims().to_vec();
        let x0 = xs.flatten_from(1)?;
        let mut rngs = sample_rngs(cfg.seed, xs)?;
        let mut best = x0.clone();
        let mut best_success = vec![false; batch];
        let mut best_loss = vec![f64::NEG_INFINITY; batch];
        let mut active: Vec<usize> = (0..batch).collect();
        for _ in 0..cfg.restarts {
            if active.is_empty() {
                break;
            }
            let mut sub_rngs: Vec<_> = active.iter().map(|&i| rngs[i].clone()).collect();
            let mut sub_shape = shape.clone();
            sub_shape[0] = active.len();
            let run = self.single_run(
                model,
                &take_rows(&x0, &active)?,
                &sub_shape,
                &criterion.subset(&active),
                epsilon,
                &mut sub_rngs,
            )?;
            let (mut loc, mut glob) = (Vec::new(), Vec::new());
            for (j, &i) in active.iter().enumerate() {
                rngs[i] = sub_rngs[j].clone();
                if run.success[j] || run.best_loss[j] > best_loss[i] {
                    best_success[i] = run.success[j];
                    best_loss[i] = run.best_loss[j];
                    loc.push(j);
                    glob.push(i);
                }
            }
            if !loc.is_empty() {
                best = put_rows(&best, &take_rows(&run.adv, &loc)?, &glob)?;
            }
            active.retain(|&i| !best_success[i]);
        }
        Ok(best.reshape(shape)?)
    }
}
