//! Shared vocabulary of the eabs workspace: input [`Bounds`], the [`Classifier`] trait that every
//! attack is written against, and [`Differentiable`], its gradient hook; plus the one [`adam`]
//! optimiser, which training, inference and the Carlini-Wagner attack share.
//!
//! # Architecture invariant
//! `eabs-attacks` depends on this crate only: an attack never sees a model's layers, only
//! `logits` and `value_and_grad`. A model whose true gradient is useless to an attacker (the
//! E-ABS adaptive gradient of eq. (8) of Ju & Wagner 2020, or an estimated gradient) overrides
//! [`Differentiable::value_and_grad`]; everything else keeps the default, Candle autodiff on the
//! input. This mirrors Foolbox 3's `Model` / `BaseGradientDescent.value_and_grad` split.
#![warn(missing_docs)]

pub mod adam;
pub mod host;
pub mod seeding;

use crate::host::HostRead;
use candle_core::{Device, Result, Tensor, Var};

/// Closed interval that every input value must lie in, e.g. `[0, 1]` for images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Smallest allowed value.
    pub min: f64,
    /// Largest allowed value.
    pub max: f64,
}

impl Bounds {
    /// Images scaled to `[0, 1]`: the convention of every dataset in the E-ABS paper.
    pub const UNIT: Bounds = Bounds { min: 0.0, max: 1.0 };

    /// Creates bounds, rejecting an empty or non-finite interval.
    pub fn new(min: f64, max: f64) -> Result<Self> {
        if !(min.is_finite() && max.is_finite() && min < max) {
            candle_core::bail!("invalid bounds [{min}, {max}]: need finite min < max");
        }
        Ok(Self { min, max })
    }

    /// Clamps every element of `xs` into the bounds.
    pub fn clip(&self, xs: &Tensor) -> Result<Tensor> {
        xs.clamp(self.min, self.max)
    }

    /// Width of the interval (`max - min`).
    pub fn width(&self) -> f64 {
        self.max - self.min
    }

    /// Errors unless every element of `xs` lies within the bounds (with tolerance `tol`).
    pub fn check(&self, xs: &Tensor, tol: f64) -> Result<()> {
        let lo = xs
            .min_all()?
            .to_dtype(candle_core::DType::F64)?
            .host_scalar::<f64>()?;
        let hi = xs
            .max_all()?
            .to_dtype(candle_core::DType::F64)?
            .host_scalar::<f64>()?;
        if lo < self.min - tol || hi > self.max + tol {
            candle_core::bail!(
                "inputs lie in [{lo}, {hi}], outside the model bounds [{}, {}]",
                self.min,
                self.max
            );
        }
        Ok(())
    }
}

/// A batched image classifier.
///
/// # Shapes
/// `logits`: `(batch, ...input dims)` to `(batch, n_classes)`.
pub trait Classifier {
    /// Range of valid input values.
    fn bounds(&self) -> Bounds;

    /// Number of classes, i.e. the width of the logits.
    fn n_classes(&self) -> usize;

    /// Device that inputs must live on.
    fn device(&self) -> &Device;

    /// Unnormalised class scores for a batch; larger means more likely.
    fn logits(&self, xs: &Tensor) -> Result<Tensor>;

    /// Whether two calls of `logits` on the same input may disagree (randomised inference, e.g.
    /// E-ABS's variational inference of Section 3.3). Attacks use this to warn when no EOT is set.
    fn is_stochastic(&self) -> bool {
        false
    }

    /// Predicted class per sample, `(batch,)` u32.
    fn predict(&self, xs: &Tensor) -> Result<Tensor> {
        self.logits(xs)?.argmax(candle_core::D::Minus1)
    }

    /// Logits of `xs`, whose batch is `blocks` blocks of equal size, row `i` of every block
    /// drawing the same randomness (common random numbers). A finite difference between two
    /// blocks, such as the `+u` / `-u` probes of a gradient estimator, then measures the
    /// inputs' difference and not the noise's. A deterministic model draws nothing: the
    /// default is [`Classifier::logits`]; a randomised one overrides it.
    fn logits_common_noise(&self, xs: &Tensor, blocks: usize) -> Result<Tensor> {
        let _ = blocks;
        self.logits(xs)
    }

    /// Starts a new unit of work: the evaluation of one batch under one attack row. A
    /// randomised model whose noise is keyed by each input's content and how often that
    /// content was seen (E-ABS's [`AbsClassifier`](../eabs_inference/struct.AbsClassifier.html))
    /// forgets those counts, so a sample's draws depend only on the calls made on it within its
    /// unit: not on its batch, on what ran before, on a resume or on a shard split. Evaluation
    /// loops call it before each batch; the default does nothing.
    fn begin_unit(&self) {}
}

impl<T: Classifier + ?Sized> Classifier for &T {
    fn bounds(&self) -> Bounds {
        (**self).bounds()
    }
    fn n_classes(&self) -> usize {
        (**self).n_classes()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        (**self).logits(xs)
    }
    fn is_stochastic(&self) -> bool {
        (**self).is_stochastic()
    }
    fn logits_common_noise(&self, xs: &Tensor, blocks: usize) -> Result<Tensor> {
        (**self).logits_common_noise(xs, blocks)
    }
    fn begin_unit(&self) {
        (**self).begin_unit()
    }
}

/// A loss of the logits, one value per sample: `(batch, n_classes)` to `(batch,)`.
pub type LossFn<'a> = dyn Fn(&Tensor) -> Result<Tensor> + 'a;

/// A classifier that gives gradients of a loss of its logits with respect to its input.
pub trait Differentiable: Classifier {
    /// Per-sample loss `(batch,)` and `d sum(loss) / d xs` (shape of `xs`).
    ///
    /// The default differentiates `loss(self.logits(xs))` with Candle's autodiff. Override it
    /// where the model's own gradient is not what an attacker should follow (the adaptive
    /// gradient of eq. (8)), or where no autodiff graph exists (estimated gradients).
    fn value_and_grad(&self, xs: &Tensor, loss: &LossFn<'_>) -> Result<(Tensor, Tensor)> {
        let xs = Var::from_tensor(&xs.detach())?;
        let value = loss(&self.logits(xs.as_tensor())?)?;
        let grads = value.sum_all()?.backward()?;
        let grad = match grads.get(xs.as_tensor()) {
            Some(g) => g.clone(),
            None => candle_core::bail!("no gradient reached the input: logits do not depend on it"),
        };
        Ok((value.detach(), grad))
    }

    /// [`Differentiable::value_and_grad`] for several losses of the same input, in order.
    ///
    /// The default calls `value_and_grad` once per loss, so it honours every override. A model
    /// whose forward pass is expensive but whose gradients for different losses share it
    /// overrides this to run the pass once: E-ABS inference optimises the latents of every class
    /// in one go, and the adaptive gradient of eq. (8) of any loss of the logits then follows
    /// from the same optimum. DeepFool, which needs one gradient per candidate class, calls it.
    fn values_and_grads(
        &self,
        xs: &Tensor,
        losses: &[&LossFn<'_>],
    ) -> Result<Vec<(Tensor, Tensor)>> {
        losses
            .iter()
            .map(|loss| self.value_and_grad(xs, loss))
            .collect()
    }
}

impl<T: Differentiable + ?Sized> Differentiable for &T {
    fn value_and_grad(&self, xs: &Tensor, loss: &LossFn<'_>) -> Result<(Tensor, Tensor)> {
        (**self).value_and_grad(xs, loss)
    }
    fn values_and_grads(
        &self,
        xs: &Tensor,
        losses: &[&LossFn<'_>],
    ) -> Result<Vec<(Tensor, Tensor)>> {
        (**self).values_and_grads(xs, losses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;
    use candle_core::DType;

    /// logits = xs @ w for a 2-feature, 2-class linear model.
    struct Linear {
        w: Tensor,
        device: Device,
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
        fn logits(&self, xs: &Tensor) -> Result<Tensor> {
            xs.matmul(&self.w)
        }
    }
    impl Differentiable for Linear {}

    #[test]
    fn default_gradient_is_autodiff_on_the_input() -> Result<()> {
        let device = Device::Cpu;
        // w = [[1, 2], [3, 4]]; loss = logit_0 = x0 + 3 x1, so d loss / dx = (1, 3) for every row.
        let w = host::new(&[[1f32, 2.], [3., 4.]], &device)?;
        let model = Linear {
            w,
            device: device.clone(),
        };
        let xs = host::new(&[[0.5f32, 0.25], [0.0, 1.0]], &device)?;
        let loss = |l: &Tensor| l.narrow(1, 0, 1)?.squeeze(1);
        let (value, grad) = model.value_and_grad(&xs, &loss)?;
        assert_eq!(value.host_vec1::<f32>()?, vec![1.25, 3.0]);
        assert_eq!(
            grad.host_vec2::<f32>()?,
            vec![vec![1.0, 3.0], vec![1.0, 3.0]]
        );
        assert_eq!(
            model
                .predict(&xs)?
                .to_dtype(DType::U32)?
                .host_vec1::<u32>()?,
            vec![1, 1]
        );
        Ok(())
    }

    #[test]
    fn several_losses_default_to_one_call_each() -> Result<()> {
        let device = Device::Cpu;
        let w = host::new(&[[1f32, 2.], [3., 4.]], &device)?;
        let model = Linear {
            w,
            device: device.clone(),
        };
        let xs = host::new(&[[0.5f32, 0.25]], &device)?;
        let first = |l: &Tensor| l.narrow(1, 0, 1)?.squeeze(1);
        let second = |l: &Tensor| l.narrow(1, 1, 1)?.squeeze(1);
        let out = model.values_and_grads(&xs, &[&first, &second])?;
        // logit_1 = 2 x0 + 4 x1: gradient (2, 4).
        assert_eq!(out[1].0.host_vec1::<f32>()?, vec![2.0]);
        assert_eq!(out[1].1.host_vec2::<f32>()?, vec![vec![2.0, 4.0]]);
        assert_eq!(out[0].1.host_vec2::<f32>()?, vec![vec![1.0, 3.0]]);
        Ok(())
    }

    #[test]
    fn bounds_validate_and_check() -> Result<()> {
        assert!(Bounds::new(1.0, 0.0).is_err());
        assert!(Bounds::new(0.0, f64::NAN).is_err());
        let xs = host::new(&[0.0f32, 1.5], &Device::Cpu)?;
        assert!(Bounds::UNIT.check(&xs, 1e-6).is_err());
        assert_eq!(Bounds::UNIT.clip(&xs)?.host_vec1::<f32>()?, vec![0.0, 1.0]);
        Ok(())
    }
}
