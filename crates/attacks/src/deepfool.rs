//! DeepFool (Moosavi-Dezfooli et al. 2016) in L_2 and L_inf, after Foolbox 3's `deepfool.py`:
//! linearise the model around the current point, step to the closest linearised boundary among
//! the `candidates` most likely classes, repeat; finally overshoot.
//!
//! Defaults are the paper's (Section 4.2): 100 steps (Foolbox: 50), overshoot 0.02, 10
//! candidate classes, the "logits" loss.
//!
//! # Details kept from Foolbox
//! - Candidate classes are the top classes of the clean input, the first being its prediction.
//! - Each step moves by `(d_k + 1e-4)` along the (normalised) gradient of the closest class `k`,
//!   the total perturbation is scaled by `1 + overshoot`, and samples that are already
//!   adversarial stop moving.
//! - Untargeted only.

use candle_core::Tensor;
use eabs_core::host::HostRead;
use serde::{Deserialize, Serialize};

use crate::base::{check_batch, Attack, MinimizationAttack};
use crate::criteria::{class_logit, cross_entropy, one_hot, Criterion};
use crate::error::{config_err, Error, Result};
use crate::norms::Norm;
use crate::util::{checked_logits, column, l2_rows, to_vec_f64, value_grad_logits, where_rows};
use eabs_core::{Differentiable, LossFn};

/// Which difference DeepFool linearises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeepFoolLoss {
    /// `z_k - z_0` (Foolbox's default, "logits").
    Logits,
    /// `CE(z, 0) - CE(z, k)` ("crossentropy").
    CrossEntropy,
}

/// Configuration of [`DeepFool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepFoolConfig {
    /// Norm.
    pub norm: Norm,
    /// Maximum number of linearisation steps.
    pub steps: usize,
    /// Number of classes considered (including the predicted one), at least 2.
    pub candidates: usize,
    /// Relative overshoot of the final perturbation.
    pub overshoot: f64,
    /// Linearised difference.
    pub loss: DeepFoolLoss,
}

impl DeepFoolConfig {
    /// The paper's DeepFool (Section 4.2): 100 steps, 10 candidates, overshoot 0.02, logits.
    pub fn paper(norm: Norm) -> Self {
        Self {
            norm,
            steps: 100,
            candidates: 10,
            overshoot: 0.02,
            loss: DeepFoolLoss::Logits,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(config_err("DeepFool", "steps must be >= 1, found 0"));
        }
        if self.candidates < 2 {
            return Err(config_err(
                "DeepFool",
                format!("candidates must be >= 2, found {}", self.candidates),
            ));
        }
        if !(self.overshoot.is_finite() && self.overshoot >= 0.0) {
            return Err(config_err(
                "DeepFool",
                format!(
                    "overshoot must be finite and >= 0, found {}",
                    self.overshoot
                ),
            ));
        }
        Ok(())
    }
}

/// DeepFool; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepFool {
    /// Configuration.
    pub config: DeepFoolConfig,
}

impl DeepFool {
    /// Creates the attack after validating `config`.
    pub fn new(config: DeepFoolConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The paper's DeepFool for `norm`.
    pub fn paper(norm: Norm) -> Self {
        Self {
            config: DeepFoolConfig::paper(norm),
        }
    }
}

impl Attack for DeepFool {
    fn norm(&self) -> Norm {
        self.config.norm
    }
    fn name(&self) -> String {
        format!("deepfool-{}", self.config.norm.name())
    }
}

impl<M: Differentiable + ?Sized> MinimizationAttack<M> for DeepFool {
    fn run(
        &self,
        model: &M,
        xs: &Tensor,
        criterion: &Criterion,
        _early_stop: Option<f64>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        cfg.validate()?;
        if criterion.is_targeted() {
            return Err(Error::UnsupportedCriterion {
                attack: "DeepFool",
                criterion: criterion.name(),
            });
        }
        let batch = check_batch(model, xs, criterion)?;
        let n_classes = model.n_classes();
        let candidates = cfg.candidates.min(n_classes);
        if candidates < 2 {
            return Err(config_err(
                "DeepFool",
                format!("the model has {n_classes} classes, need at least 2"),
            ));
        }
        let shape = xs.dims().to_vec();
        let (dtype, device) = (xs.dtype(), xs.device().clone());
        let x0 = xs.flatten_from(1)?;
        let logits0 = checked_logits(model, xs)?;
        let order: Vec<Vec<u32>> = logits0.arg_sort_last_dim(false)?.host_vec2::<u32>()?;
        let class_k = |k: usize| order.iter().map(|r| r[k]).collect::<Vec<u32>>();
        let oh0 = one_hot(&class_k(0), n_classes, dtype, &device)?;
        let ohs: Vec<Tensor> = (1..candidates)
            .map(|k| one_hot(&class_k(k), n_classes, dtype, &device))
            .collect::<Result<_>>()?;

        let bounds = model.bounds();
        let mut p_total = x0.zeros_like()?;
        let mut x = x0.clone();
        'steps: for _ in 0..cfg.steps {
            let mut is_adv = vec![false; batch];
            // Per candidate k: loss (b,), grad (b, d), distance (b,).
            let mut best_dist = vec![f64::INFINITY; batch];
            let mut best_grad = x0.zeros_like()?;
            let losses: Vec<Box<LossFn<'_>>> = ohs
                .iter()
                .map(|ohk| -> Box<LossFn<'_>> {
                    let oh0 = &oh0;
                    Box::new(move |l: &Tensor| match cfg.loss {
                        DeepFoolLoss::Logits => class_logit(l, ohk)? - class_logit(l, oh0)?,
                        DeepFoolLoss::CrossEntropy => {
                            cross_entropy(l, oh0)? - cross_entropy(l, ohk)?
                        }
                    })
                })
                .collect();
            let xr = x.reshape(shape.as_slice())?;
            // As Foolbox: the first candidate's pass also gives the logits that decide which
            // samples are already adversarial.
            let (v0, g0, logits) = value_grad_logits(model, &xr, losses[0].as_ref())?;
            is_adv = criterion.is_adversarial_logits(&logits)?;
            if is_adv.iter().all(|&a| a) {
                break 'steps;
            }
            // The other candidates in one call, so a model with an expensive forward pass
            // (E-ABS inference) runs it once for all of them.
            let rest: Vec<&LossFn<'_>> = losses[1..].iter().map(|l| l.as_ref()).collect();
            let mut results = vec![(v0, g0)];
            for (value, grad) in model.values_and_grads(&xr, &rest)? {
                if grad.dims() != xr.dims() {
                    return Err(Error::GradShape {
                        found: grad.dims().to_vec(),
                        expected: xr.dims().to_vec(),
                    });
                }
                results.push((value.flatten_all()?, grad));
            }
            for (value, grad) in results {
                let grad = grad.flatten_from(1)?;
                let gnorm = match cfg.norm {
                    Norm::L2 => to_vec_f64(&l2_rows(&grad)?)?,
                    Norm::Linf => to_vec_f64(&grad.abs()?.sum_keepdim(1)?)?, // dual norm: L1
                };
                let value = to_vec_f64(&value)?;
                let mut better = vec![false; batch];
                for i in 0..batch {
                    let d = value[i].abs() / (gnorm[i] + 1e-8);
                    if d < best_dist[i] {
                        best_dist[i] = d;
                        better[i] = true;
                    }
                }
                best_grad = where_rows(&better, &grad, &best_grad)?;
            }
            let dist = column(
                &best_dist.iter().map(|d| d + 1e-4).collect::<Vec<_>>(),
                dtype,
                &device,
            )?;
            let step = match cfg.norm {
                Norm::L2 => {
                    best_grad.broadcast_div(&l2_rows(&best_grad)?.clamp(1e-12, f64::MAX)?)?
                }
                Norm::Linf => best_grad.sign()?,
            }
            .broadcast_mul(&dist)?;
            p_total = where_rows(&is_adv, &p_total, &(&p_total + step)?)?;
            x = bounds.clip(&(&x0 + (&p_total * (1.0 + cfg.overshoot))?)?)?;
        }
        Ok(x.reshape(shape)?)
    }
}
