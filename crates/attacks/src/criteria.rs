//! What counts as adversarial ([`Criterion`], after Foolbox's `criteria.py`) and the per-sample
//! losses that gradient attacks ascend ([`Loss`]: cross-entropy, AutoAttack's DLR, the
//! Carlini-Wagner margin).

use candle_core::{DType, Device, Tensor, D};
use eabs_core::host::{self, HostRead};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::{argmax_rows, checked_logits};
use eabs_core::{Classifier, LossFn};

/// Goal of an attack, with one class per sample.
///
/// An enum rather than a trait object because gradient attacks branch on exactly these two
/// (the sign of the loss in PGD and DDN, the margin in CW), as Foolbox's `isinstance` checks do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// Adversarial when the predicted class differs from `labels[i]`.
    Misclassification {
        /// True class per sample.
        labels: Vec<u32>,
    },
    /// Adversarial when the predicted class equals `targets[i]`.
    TargetedMisclassification {
        /// Target class per sample.
        targets: Vec<u32>,
    },
}

impl Criterion {
    /// Untargeted criterion from the true labels.
    pub fn misclassification(labels: impl Into<Vec<u32>>) -> Self {
        Criterion::Misclassification {
            labels: labels.into(),
        }
    }

    /// Targeted criterion from the target classes.
    pub fn targeted(targets: impl Into<Vec<u32>>) -> Self {
        Criterion::TargetedMisclassification {
            targets: targets.into(),
        }
    }

    /// Untargeted criterion from a `(batch,)` integer tensor of labels.
    pub fn misclassification_from_tensor(labels: &Tensor) -> Result<Self> {
        if labels.rank() != 1 {
            return Err(Error::Shape {
                argument: "labels",
                found: labels.dims().to_vec(),
                expected: "(batch,)".into(),
            });
        }
        Ok(Self::misclassification(
            labels.to_dtype(DType::U32)?.host_vec1::<u32>()?,
        ))
    }

    /// The labels (untargeted) or targets (targeted).
    pub fn classes(&self) -> &[u32] {
        match self {
            Criterion::Misclassification { labels } => labels,
            Criterion::TargetedMisclassification { targets } => targets,
        }
    }

    /// Whether this is [`Criterion::TargetedMisclassification`].
    pub fn is_targeted(&self) -> bool {
        matches!(self, Criterion::TargetedMisclassification { .. })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.classes().len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.classes().is_empty()
    }

    /// The criterion restricted to the samples `idx` (in that order).
    pub fn subset(&self, idx: &[usize]) -> Self {
        let pick = |v: &[u32]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
        match self {
            Criterion::Misclassification { labels } => Self::misclassification(pick(labels)),
            Criterion::TargetedMisclassification { targets } => Self::targeted(pick(targets)),
        }
    }

    /// Verdict from logits `(batch, n_classes)`: argmax != label, or argmax == target.
    pub fn is_adversarial_logits(&self, logits: &Tensor) -> Result<Vec<bool>> {
        let pred = argmax_rows(logits)?;
        if pred.len() != self.len() {
            return Err(Error::LabelCount {
                expected: pred.len(),
                found: self.len(),
            });
        }
        Ok(match self {
            Criterion::Misclassification { labels } => {
                pred.iter().zip(labels).map(|(p, l)| p != l).collect()
            }
            Criterion::TargetedMisclassification { targets } => {
                pred.iter().zip(targets).map(|(p, t)| p == t).collect()
            }
        })
    }

    /// Runs the model on `xs` and returns the verdict per sample.
    pub fn is_adversarial<M: Classifier + ?Sized>(
        &self,
        model: &M,
        xs: &Tensor,
    ) -> Result<Vec<bool>> {
        self.is_adversarial_logits(&checked_logits(model, xs)?)
    }

    /// Human-readable name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Criterion::Misclassification { .. } => "untargeted misclassification",
            Criterion::TargetedMisclassification { .. } => "targeted misclassification",
        }
    }
}

/// One-hot `(b, n_classes)` matrix of `classes` in `dtype`.
pub fn one_hot(classes: &[u32], n_classes: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; classes.len() * n_classes];
    for (i, &c) in classes.iter().enumerate() {
        data[i * n_classes + c as usize] = 1.0;
    }
    Ok(host::from_vec(data, (classes.len(), n_classes), device)?.to_dtype(dtype)?)
}

/// Per-sample log-sum-exp of `(b, k)` logits, `(b,)`; the max shift is a constant for autodiff.
fn log_sum_exp(logits: &Tensor) -> candle_core::Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let s = logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?;
    (s + m)?.squeeze(D::Minus1)
}

/// Per-sample cross-entropy `-log softmax(logits)[class]`, `(b,)`; `one_hot` is `(b, k)`.
pub fn cross_entropy(logits: &Tensor, one_hot: &Tensor) -> candle_core::Result<Tensor> {
    let picked = (logits * one_hot)?.sum(D::Minus1)?;
    log_sum_exp(logits)? - picked
}

/// Largest logit among the classes other than the one-hot class, `(b,)` (differentiable).
pub fn best_other_logit(logits: &Tensor, one_hot: &Tensor) -> candle_core::Result<Tensor> {
    let mask = one_hot.gt(0.5)?;
    let low = Tensor::full(f32::MIN, logits.dims(), logits.device())?.to_dtype(logits.dtype())?;
    mask.where_cond(&low, logits)?.max(D::Minus1)
}

/// The logit of the one-hot class, `(b,)`.
pub fn class_logit(logits: &Tensor, one_hot: &Tensor) -> candle_core::Result<Tensor> {
    (logits * one_hot)?.sum(D::Minus1)
}

/// A boxed per-sample loss of the logits, as `Differentiable::value_and_grad` takes it.
pub type BoxedLoss<'a> = Box<LossFn<'a>>;

/// Loss that a gradient attack maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loss {
    /// Cross-entropy of the label (untargeted), or minus cross-entropy of the target (targeted),
    /// as Foolbox's PGD.
    CrossEntropy,
    /// Difference of Logits Ratio of Croce & Hein 2020 (AutoAttack), invariant to shifts and
    /// rescaling of the logits. Untargeted: `-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`.
    /// Targeted (our generalisation, the criterion carries no true label): with `o` the best
    /// class other than the target, `-(z_o - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`.
    Dlr,
    /// Margin of Carlini & Wagner: `max_{i != y} z_i - z_y` (untargeted), `z_t - max_{i != t} z_i`
    /// (targeted); positive exactly when adversarial.
    Margin,
}

impl Loss {
    /// Builds the per-sample loss function for `criterion` (restricted to the current batch).
    pub fn function<'a>(
        &self,
        criterion: &Criterion,
        n_classes: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<BoxedLoss<'a>> {
        let oh = one_hot(criterion.classes(), n_classes, dtype, device)?;
        let targeted = criterion.is_targeted();
        if *self == Loss::Dlr && n_classes < if targeted { 4 } else { 3 } {
            return Err(Error::InvalidConfig {
                attack: "loss",
                message: format!(
                    "the DLR loss needs at least {} classes, the model has {n_classes}",
                    if targeted { 4 } else { 3 }
                ),
            });
        }
        Ok(match (self, targeted) {
            (Loss::CrossEntropy, false) => Box::new(move |l: &Tensor| cross_entropy(l, &oh)),
            (Loss::CrossEntropy, true) => Box::new(move |l: &Tensor| cross_entropy(l, &oh)?.neg()),
            (Loss::Margin, false) => {
                Box::new(move |l: &Tensor| best_other_logit(l, &oh)? - class_logit(l, &oh)?)
            }
            (Loss::Margin, true) => {
                Box::new(move |l: &Tensor| class_logit(l, &oh)? - best_other_logit(l, &oh)?)
            }
            (Loss::Dlr, false) => Box::new(move |l: &Tensor| {
                let sorted = sorted_desc(l)?;
                let num = (class_logit(l, &oh)? - best_other_logit(l, &oh)?)?;
                let den = (sorted.narrow(1, 0, 1)? - sorted.narrow(1, 2, 1)?)?
                    .squeeze(1)?
                    .affine(1.0, 1e-12)?;
                num.div(&den)?.neg()
            }),
            (Loss::Dlr, true) => Box::new(move |l: &Tensor| {
                let sorted = sorted_desc(l)?;
                let num = (best_other_logit(l, &oh)? - class_logit(l, &oh)?)?;
                let third_fourth = ((sorted.narrow(1, 2, 1)? + sorted.narrow(1, 3, 1)?)? * 0.5)?;
                let den = (sorted.narrow(1, 0, 1)? - third_fourth)?
                    .squeeze(1)?
                    .affine(1.0, 1e-12)?;
                num.div(&den)?.neg()
            }),
        })
    }
}

/// Logits sorted in decreasing order per row, differentiable (gather with detached indices).
fn sorted_desc(logits: &Tensor) -> candle_core::Result<Tensor> {
    let idx = logits.detach().arg_sort_last_dim(false)?;
    logits.contiguous()?.gather(&idx, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(loss: Loss, crit: &Criterion, logits: &[f32]) -> f32 {
        let k = logits.len();
        let t = host::from_vec(logits.to_vec(), (1, k), &Device::Cpu).unwrap();
        let f = loss.function(crit, k, DType::F32, &Device::Cpu).unwrap();
        f(&t).unwrap().host_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn losses_match_hand_computed_values() {
        let y0 = Criterion::misclassification(vec![0]);
        // CE of [0, ln 3] at class 0: log(1 + 3) - 0 = ln 4.
        assert!((eval(Loss::CrossEntropy, &y0, &[0.0, 3f32.ln()]) - 4f32.ln()).abs() < 1e-6);
        // Targeted CE is minus the CE of the target.
        let t1 = Criterion::targeted(vec![1]);
        assert!(
            (eval(Loss::CrossEntropy, &t1, &[0.0, 3f32.ln()]) + (4f32 / 3.0).ln()).abs() < 1e-6
        );
        // DLR of [3, 2, 1, 0] at label 0: -(3 - 2) / (3 - 1) = -0.5.
        assert!((eval(Loss::Dlr, &y0, &[3.0, 2.0, 1.0, 0.0]) + 0.5).abs() < 1e-6);
        // Targeted DLR, target 3: -(3 - 0) / (3 - (1 + 0) / 2) = -1.2.
        assert!(
            (eval(
                Loss::Dlr,
                &Criterion::targeted(vec![3]),
                &[3.0, 2.0, 1.0, 0.0]
            ) + 1.2)
                .abs()
                < 1e-6
        );
        // Margin: best other minus label, 2 - 3 = -1; targeted at 1: 2 - 3 = -1.
        assert_eq!(eval(Loss::Margin, &y0, &[3.0, 2.0, 1.0]), -1.0);
        assert_eq!(eval(Loss::Margin, &t1, &[3.0, 2.0, 1.0]), -1.0);
    }

    #[test]
    fn dlr_is_differentiable_through_the_sort() {
        // d DLR / d z for [3, 2, 1] at label 0: DLR = -(z0 - z1) / (z0 - z2);
        // d/dz0 = -[(z0 - z2) - (z0 - z1)] / (z0 - z2)^2 = -1/4, d/dz1 = 1/2, d/dz2 = -1/4.
        let z = candle_core::Var::new(&[[3f32, 2.0, 1.0]], &Device::Cpu).unwrap();
        let f = Loss::Dlr
            .function(
                &Criterion::misclassification(vec![0]),
                3,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let g = f(z.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(z.as_tensor()).unwrap().host_vec2::<f32>().unwrap();
        for (a, b) in g[0].iter().zip([-0.25f32, 0.5, -0.25]) {
            assert!((a - b).abs() < 1e-6, "{:?}", g);
        }
    }

    #[test]
    fn criteria_verdicts() {
        let logits = host::new(&[[0f32, 1.0], [2.0, 1.0]], &Device::Cpu).unwrap();
        assert_eq!(
            Criterion::misclassification(vec![0, 0])
                .is_adversarial_logits(&logits)
                .unwrap(),
            vec![true, false]
        );
        assert_eq!(
            Criterion::targeted(vec![1, 1])
                .is_adversarial_logits(&logits)
                .unwrap(),
            vec![true, false]
        );
        assert_eq!(
            Criterion::targeted(vec![4, 5, 6]).subset(&[2, 0]).classes(),
            &[6, 4]
        );
    }
}
