//! Expectation over transformation (Athalye et al. 2018): logits and gradients averaged over `n`
//! stochastic forward passes. The paper uses `n = 5` against E-ABS's randomised inference
//! (Section 4.2; Appendix B.1, Table 6).
//!
//! [`Eot`] is a model wrapper implementing [`Differentiable`], so every gradient attack can use
//! it unchanged: `Pgd::run(&Eot::new(model, 5)?, ...)`. The randomness belongs to the wrapped
//! model; `Eot` only calls it `n` times.

use candle_core::{Device, Tensor};

use crate::error::{config_err, Result};
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};

/// A model whose logits and `value_and_grad` are means over `n` calls of the inner model.
#[derive(Debug, Clone)]
pub struct Eot<M> {
    model: M,
    n: usize,
}

impl<M: Classifier> Eot<M> {
    /// Wraps `model`, averaging over `n >= 1` passes.
    pub fn new(model: M, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(config_err(
                "EOT",
                "the number of passes must be >= 1, found 0",
            ));
        }
        Ok(Self { model, n })
    }

    /// The paper's setting, `n = 5` ([`crate::paper::EOT_SAMPLES`]).
    pub fn paper(model: M) -> Self {
        Self {
            model,
            n: crate::paper::EOT_SAMPLES,
        }
    }

    /// Number of passes averaged.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.model
    }
}

impl<M: Classifier> Classifier for Eot<M> {
    fn bounds(&self) -> Bounds {
        self.model.bounds()
    }
    fn n_classes(&self) -> usize {
        self.model.n_classes()
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    /// Mean logits over `n` passes.
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut acc = self.model.logits(xs)?;
        for _ in 1..self.n {
            acc = (acc + self.model.logits(xs)?)?;
        }
        acc / self.n as f64
    }
    /// The mean is still random, only less so.
    fn is_stochastic(&self) -> bool {
        self.model.is_stochastic()
    }
    /// Mean logits over `n` passes, each pass sharing its noise across the blocks.
    fn logits_common_noise(&self, xs: &Tensor, blocks: usize) -> candle_core::Result<Tensor> {
        let mut acc = self.model.logits_common_noise(xs, blocks)?;
        for _ in 1..self.n {
            acc = (acc + self.model.logits_common_noise(xs, blocks)?)?;
        }
        acc / self.n as f64
    }
    fn begin_unit(&self) {
        self.model.begin_unit()
    }
}

impl<M: Differentiable> Differentiable for Eot<M> {
    /// Mean loss and mean gradient over `n` passes of the inner `value_and_grad` (so an
    /// overridden gradient, e.g. E-ABS's eq. (8), is averaged, not replaced).
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (mut v, mut g) = self.model.value_and_grad(xs, loss)?;
        for _ in 1..self.n {
            let (v2, g2) = self.model.value_and_grad(xs, loss)?;
            v = (v + v2)?;
            g = (g + g2)?;
        }
        Ok(((v / self.n as f64)?, (g / self.n as f64)?))
    }

    /// The same average for several losses: each of the `n` passes serves every loss.
    fn values_and_grads(
        &self,
        xs: &Tensor,
        losses: &[&LossFn<'_>],
    ) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        let mut acc = self.model.values_and_grads(xs, losses)?;
        for _ in 1..self.n {
            let next = self.model.values_and_grads(xs, losses)?;
            for ((v, g), (v2, g2)) in acc.iter_mut().zip(next) {
                *v = (&*v + v2)?;
                *g = (&*g + g2)?;
            }
        }
        acc.into_iter()
            .map(|(v, g)| Ok(((v / self.n as f64)?, (g / self.n as f64)?)))
            .collect()
    }
}
