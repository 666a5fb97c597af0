//! Gradient estimation from logits alone: antithetic finite differences along Gaussian
//! directions (the NES estimator of Ilyas et al. 2018; Foolbox's `es_gradient_estimator` in
//! `gradient_estimators.py`). The paper runs PGD with estimated gradients for 50 steps
//! (Section 4.2) to check E-ABS for obfuscated gradients.
//!
//! [`EstimatedGradient`] wraps any [`Classifier`] and implements [`Differentiable`], so every
//! gradient attack (PGD, APGD, DeepFool, DDN, CW) can run on estimated gradients.
//!
//! # Differences to Foolbox
//! - The sum is divided by the number of directions as well as by `2 sigma`, so the result
//!   estimates the gradient itself (Foolbox divides by `2 sigma` only; for the sign or the
//!   normalised gradient that PGD uses this makes no difference).
//! - Directions come from a per-sample stream seeded by `(seed, hash of the current input)`, so
//!   a sample gets the same estimate whatever batch it is in, and a new one at every new point.
//! - Each antithetic pair costs one model call on a `2 * batch` batch, in which the `+u` and
//!   `-u` probes of a sample share the model's randomness
//!   ([`Classifier::logits_common_noise`], common random numbers): for a randomised model
//!   (E-ABS) their difference is then the loss's change along `u`, not two independent noise
//!   draws, whose difference would swamp it at `sigma = 0.01`.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{config_err, Result};
use crate::seeding::sample_rngs;
use crate::util::normal_rows;
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};

/// Configuration of [`EstimatedGradient`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorConfig {
    /// Number of directions; must be even (antithetic pairs `+u`, `-u`).
    pub samples: usize,
    /// Finite-difference scale, in input units.
    pub sigma: f64,
    /// Clip the probes `x +- sigma u` into the bounds (as Foolbox's `clip=True`).
    pub clip: bool,
    /// Seed of the per-sample streams.
    pub seed: u64,
    /// Whether each `+u` / `-u` pair shares the model's randomness (common random numbers,
    /// [`Classifier::logits_common_noise`]; no effect on a deterministic model).
    #[serde(default)]
    pub common_noise: bool,
}

impl EstimatorConfig {
    /// Our default for the paper's estimated-gradient PGD, which gives no estimator settings:
    /// 100 directions (50 antithetic pairs) at `sigma = 0.01` of a `[0, 1]` input range, large
    /// enough to step over float32 rounding of logits, small against the epsilons of the paper.
    pub fn paper() -> Self {
        Self {
            samples: 100,
            sigma: 0.01,
            clip: true,
            seed: 0,
            common_noise: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.samples == 0 || self.samples % 2 != 0 {
            return Err(config_err(
                "gradient estimator",
                format!(
                    "samples must be even and >= 2 (antithetic pairs), found {}",
                    self.samples
                ),
            ));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(config_err(
                "gradient estimator",
                format!("sigma must be finite and > 0, found {}", self.sigma),
            ));
        }
        Ok(())
    }
}

/// A classifier whose `value_and_grad` is estimated from logits; see the module docs.
#[derive(Debug, Clone)]
pub struct EstimatedGradient<M> {
    model: M,
    config: EstimatorConfig,
}

impl<M: Classifier> EstimatedGradient<M> {
    /// Wraps `model`.
    pub fn new(model: M, config: EstimatorConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { model, config })
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.model
    }

    /// The configuration.
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    fn estimate(&self, xs: &Tensor, loss: &LossFn<'_>) -> crate::Result<(Tensor, Tensor)> {
        let batch = xs.dim(0)?;
        let shape = xs.dims().to_vec();
        let dim = xs.elem_count() / batch.max(1);
        let value = loss(&self.model.logits(xs)?)?;
        let mut rngs = sample_rngs(self.config.seed, xs)?;
        let x = xs.flatten_from(1)?;
        let mut grad = x.zeros_like()?;
        let bounds = self.model.bounds();
        let sigma = self.config.sigma;
        for _ in 0..self.config.samples / 2 {
            let u = normal_rows(&mut rngs, dim, xs.device())?.to_dtype(xs.dtype())?;
            let mut pos = (&x + (&u * sigma)?)?;
            let mut neg = (&x - (&u * sigma)?)?;
            if self.config.clip {
                pos = bounds.clip(&pos)?;
                neg = bounds.clip(&neg)?;
            }
            let both = Tensor::cat(&[pos, neg], 0)?;
            let mut both_shape = shape.clone();
            both_shape[0] = 2 * batch;
            // One model call for both probes; the loss is per sample of the original batch, so
            // it is applied to each half separately.
            let both = both.reshape(both_shape)?;
            let logits = if self.config.common_noise {
                self.model.logits_common_noise(&both, 2)?
            } else {
                self.model.logits(&both)?
            };
            let lp = loss(&logits.narrow(0, 0, batch)?)?.flatten_all()?;
            let ln = loss(&logits.narrow(0, batch, batch)?)?.flatten_all()?;
            let diff = (lp - ln)?.reshape((batch, 1))?;
            grad = (grad + u.broadcast_mul(&diff)?)?;
        }
        let grad = (grad / (sigma * self.config.samples as f64))?;
        Ok((value, grad.reshape(shape)?))
    }
}

impl<M: Classifier> Classifier for EstimatedGradient<M> {
    fn bounds(&self) -> Bounds {
        self.model.bounds()
    }
    fn n_classes(&self) -> usize {
        self.model.n_classes()
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.model.logits(xs)
    }
    fn is_stochastic(&self) -> bool {
        self.model.is_stochastic()
    }
    fn logits_common_noise(&self, xs: &Tensor, blocks: usize) -> candle_core::Result<Tensor> {
        self.model.logits_common_noise(xs, blocks)
    }
    fn begin_unit(&self) {
        self.model.begin_unit()
    }
}

impl<M: Classifier> Differentiable for EstimatedGradient<M> {
    /// `sum_k (L(x + s u_k) - L(x - s u_k)) u_k / (2 s K/2)` over `K/2` antithetic pairs.
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        self.estimate(xs, loss).map_err(|e| match e {
            crate::Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}
