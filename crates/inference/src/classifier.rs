//! [`AbsClassifier`]: inference as an [`eabs_core::Classifier`] that attacks can run against, with
//! the adaptive gradient of eq. (8) (Section 4.2).
//!
//! The true gradient of the logits would have to be differentiated through 49 Adam updates (and
//! through the non-differentiable choice of the best candidate); Ju & Wagner instead hold the
//! optimum `z*` fixed and differentiate `l(x, z*) = ||x - G_k(z*)||^2 + prior(z*)`, whose
//! gradient `2 (x - G_k(z*))` (eq. (8)) points where the bound of Appendix A says it should.
//! [`AbsClassifier::value_and_grad`] runs inference without a graph, then autodiffs the cheap
//! expression `logits(x) = -s (||x - G_k(z*)||^2 + prior_k(z*)) / P` with the same scaling as
//! the logits, so any loss of the logits gets the adaptive gradient.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};

use crate::config::LatentInference;
use crate::engine::{AbsInference, InferenceOutput};
use crate::error::Result;
use crate::model::LatentClassModel;

/// An ABS-style model with its inference, seen as a classifier.
///
/// Variational inference makes it stochastic: every call of `logits` / `value_and_grad` draws
/// fresh noise from a seed derived from the base seed and a call counter, so a run of an attack
/// is reproducible from the base seed, and repeated calls (EOT, Section 4.2) see different
/// samples.
#[derive(Debug)]
pub struct AbsClassifier<M> {
    inference: AbsInference<M>,
    bounds: Bounds,
    seed: u64,
    calls: AtomicU64,
}

/// SplitMix64 finaliser: decorrelates `(seed, call)` pairs into seeds for ChaCha.
fn mix(seed: u64, call: u64) -> u64 {
    let mut z = seed ^ call.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<M: LatentClassModel> AbsClassifier<M> {
    /// Wraps an inference engine; `bounds` is the input range (`Bounds::UNIT` for the paper's
    /// datasets), `seed` the base seed of the inference noise.
    pub fn new(inference: AbsInference<M>, bounds: Bounds, seed: u64) -> Self {
        Self {
            inference,
            bounds,
            seed,
            calls: AtomicU64::new(0),
        }
    }

    /// The inference engine.
    pub fn inference(&self) -> &AbsInference<M> {
        &self.inference
    }

    /// Seed of the next call (advances the call counter).
    fn next_seed(&self) -> u64 {
        mix(self.seed, self.calls.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs inference with the next seed.
    pub fn infer(&self, xs: &Tensor) -> Result<InferenceOutput> {
        self.inference.infer(xs, self.next_seed())
    }

    /// Logits as a differentiable function of `xs` with the optimum of `output` held fixed:
    /// `-s (||x - G_k(z*)||^2 + prior_k(z*)) / P`, `(batch, K)`. Its gradient is eq. (8) scaled
    /// by `-s / P`. `output` must come from inference on the same batch size.
    pub fn adaptive_logits(&self, xs: &Tensor, output: &InferenceOutput) -> Result<Tensor> {
        let x = self.inference.flatten_input(xs)?; // (b, P), keeps the graph of xs
        let (b, p) = x.dims2()?;
        let k = self.inference.model().n_classes();
        let recs = output.reconstructions.reshape((b, k, p))?.detach();
        let err = recs.broadcast_sub(&x.unsqueeze(1)?)?.sqr()?.sum(2)?; // (b, K)
        let loss = ((err + output.prior_terms.detach())? / p as f64)?;
        Ok((loss * -self.inference.config().logit_scale)?)
    }
}

impl<M: LatentClassModel> Classifier for AbsClassifier<M> {
    fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn n_classes(&self) -> usize {
        self.inference.model().n_classes()
    }

    fn device(&self) -> &Device {
        self.inference.model().device()
    }

    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.infer(&xs.detach())?.logits)
    }

    fn is_stochastic(&self) -> bool {
        self.inference.config().mode == LatentInference::Variational
    }

    /// One draw of the call counter for the whole batch, row `i` of every block on the same
    /// noise stream.
    fn logits_common_noise(&self, xs: &Tensor, blocks: usize) -> candle_core::Result<Tensor> {
        Ok(self
            .inference
            .infer_common_noise(&xs.detach(), self.next_seed(), blocks)?
            .logits)
    }
}

impl<M: LatentClassModel> Differentiable for AbsClassifier<M> {
    /// The adaptive gradient of eq. (8): inference without a graph, then the gradient of
    /// `loss(adaptive_logits(x))` with `z*` fixed. The value is the loss of the adaptive logits,
    /// which at `x` equal the logits inference returned.
    fn value_and_grad(
        &self,
        xs: &Tensor,
        loss: &LossFn<'_>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut out = self.values_and_grads(xs, &[loss])?;
        Ok(out.remove(0))
    }

    /// One inference for all `losses`: the adaptive gradient of eq. (8) of any loss of the
    /// logits follows from the same optimum `z*` (one sample of `Q*` shared by every loss, as
    /// one forward pass of a randomised model would be). DeepFool's per-class gradients then
    /// cost one inference per step instead of one per candidate class.
    fn values_and_grads(
        &self,
        xs: &Tensor,
        losses: &[&LossFn<'_>],
    ) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        let xs = xs.detach();
        let output = self.infer(&xs)?;
        losses
            .iter()
            .map(|loss| {
                let xs_var = Var::from_tensor(&xs)?;
                let logits = self.adaptive_logits(xs_var.as_tensor(), &output)?;
                let value = loss(&logits)?;
                let grads = value.sum_all()?.backward()?;
                let grad = match grads.get(xs_var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => candle_core::bail!(
                        "no gradient reached the input: the loss ignores the logits"
                    ),
                };
                Ok((value.detach(), grad))
            })
            .collect()
    }
}
