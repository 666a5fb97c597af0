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

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use eabs_core::host::HostRead;
use eabs_core::seeding::{content_seed, mix};
use eabs_core::{Bounds, Classifier, Differentiable, LossFn};

use crate::config::LatentInference;
use crate::engine::{AbsInference, InferenceOutput};
use crate::error::Result;
use crate::model::LatentClassModel;

/// Distinct inputs [`AbsClassifier`] remembers before it forgets them all: a bound on memory
/// for callers that never call [`Classifier::begin_unit`] (the evaluation engine calls it
/// before every batch, far below this).
const MAX_REMEMBERED: usize = 1 << 20;

/// An ABS-style model with its inference, seen as a classifier.
///
/// Variational inference makes it stochastic. Every image of every call draws its noise from
/// its own generator, keyed by the base seed, the image's content (the attacks' rule,
/// [`eabs_core::seeding::content_seed`]) and how many times that content was seen before in
/// the current unit ([`Classifier::begin_unit`]): repeated calls on the same input (EOT's
/// draws, the verdict's draws; Section 4.2) see fresh samples, and an image's result depends
/// on neither its batch, nor its position in it, nor on other images' calls. Evaluations are
/// therefore the same whether a data set is evaluated in one batch or many, resumed after an
/// interruption, or sharded over machines. The keys cost one download of the batch's images
/// per call (not per Adam step).
#[derive(Debug)]
pub struct AbsClassifier<M> {
    inference: AbsInference<M>,
    bounds: Bounds,
    seed: u64,
    /// Calls seen per input content (its content seed) in the current unit.
    seen: Mutex<HashMap<u64, u64>>,
}

impl<M: LatentClassModel> AbsClassifier<M> {
    /// Wraps an inference engine; `bounds` is the input range (`Bounds::UNIT` for the paper's
    /// datasets), `seed` the base seed of the inference noise.
    pub fn new(inference: AbsInference<M>, bounds: Bounds, seed: u64) -> Self {
        Self {
            inference,
            bounds,
            seed,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The noise keys of the images of `xs` for this call: `period` distinct rows (the first
    /// `period`), row `i` of the batch taking the key of row `i mod period`.
    fn keys(&self, xs: &Tensor, period: usize) -> candle_core::Result<Vec<u64>> {
        let rows = xs
            .flatten_from(1)?
            .to_dtype(DType::F32)?
            .host_vec2::<f32>()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > MAX_REMEMBERED {
            seen.clear();
        }
        let period = period.clamp(1, rows.len().max(1));
        let distinct: Vec<u64> = rows[..period.min(rows.len())]
            .iter()
            .map(|row| {
                let content = content_seed(self.seed, row);
                let n = seen.entry(content).or_insert(0);
                let key = mix(content ^ mix(*n));
                *n += 1;
                key
            })
            .collect();
        Ok((0..rows.len()).map(|i| distinct[i % period]).collect())
    }

    /// Runs inference with this call's keys ([`AbsClassifier`]'s noise rule).
    pub fn infer(&self, xs: &Tensor) -> Result<InferenceOutput> {
        let b = xs.dims().first().copied().unwrap_or(0);
        let keys = self.keys(xs, b)?;
        self.inference.infer_keyed(xs, &keys)
    }

    /// The inference engine.
    pub fn inference(&self) -> &AbsInference<M> {
        &self.inference
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
        let xs = xs.detach();
        let b = xs.dims().first().copied().unwrap_or(0);
        if blocks == 0 || b % blocks != 0 {
            candle_core::bail!("{blocks} blocks do not divide the batch of {b}");
        }
        let keys = self.keys(&xs, b / blocks)?;
        Ok(self.inference.infer_keyed(&xs, &keys)?.logits)
    }

    /// Forgets how often each input was seen: the next call on any input draws as its first.
    fn begin_unit(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
