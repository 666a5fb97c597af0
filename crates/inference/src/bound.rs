//! The certified lower bound on the L2 distance to the nearest adversarial example (Section 3.4
//! eq. (7), Appendix A).
//!
//! For an image `x` of class `y`, with `l_y*(x)` the (unnormalised) exact-inference loss of the
//! true class including its prior term, `r_y = ||x - G_y(z_y*)||` its reconstruction distance,
//! and `d_k(x) = min_z ||x - G_k(z)||` the distance to the manifold of class `k` (inference
//! without the prior term), Claims 1 and 2 of Appendix A give
//! `l_y*(x + delta) <= l_y*(x) + 2 eps r_y + eps^2` and `l_k*(x + delta) >= (d_k - eps)^2`,
//! so no `||delta|| <= eps` changes the prediction to `k` while
//! `eps < (d_k^2 - l_y*) / (2 d_k + 2 r_y)`, and
//!
//! `eps* = min_{k != y} (d_k^2 - l_y*) / (2 d_k + 2 r_y)`.
//!
//! # Discrepancy in the paper
//! Section 3.4's eq. (7) writes `2 ||x - G_y(z_y*)||_2^2` (squared) in the denominator, and
//! Claim 1 as stated there also squares it; Appendix A's derivation (Cauchy-Schwarz,
//! `2 delta^T (x - G) <= 2 eps ||x - G||`) gives the plain norm. We implement Appendix A's.
//!
//! # Where it holds
//! Claim 2 needs `eps < d_k`. Since the prior term is non-negative (`-log D >= 0`, KL >= 0),
//! `eps*_k <= d_k^2 / (2 d_k) = d_k / 2 < d_k`, so the bound is always within its validity;
//! [`CertifiedBounds::within_validity`] checks it anyway. The bound assumes exact inference
//! (Appendix A.1) and the global minima `l_y*` and `d_k`; inference finds local minima, so
//! `d_k` may be overestimated and the bound is an estimate in the same sense as Schott et al.'s.
//! Samples whose bound is not positive (misclassified, or `l_y* >= d_k^2`) get 0.

use candle_core::{DType, Tensor};
use eabs_core::host::HostRead;
use serde::{Deserialize, Serialize};

use crate::config::{FinalEvaluation, LatentInference};
use crate::engine::{AbsInference, Pass};
use crate::error::{InferenceError, Result};
use crate::model::LatentClassModel;

/// `eps* = min_{k != y} (d_k^2 - l_y) / (2 d_k + 2 r_y)` for one sample (Appendix A), clamped at
/// 0, with the class attaining the minimum. `distances[k]` is `d_k`; `distances[label]` is
/// ignored. Returns `(0, None)` when there is no other class.
pub fn certified_radius(
    l_y: f64,
    r_y: f64,
    distances: &[f64],
    label: usize,
) -> (f64, Option<usize>) {
    let mut best: Option<(f64, usize)> = None;
    for (k, &d_k) in distances.iter().enumerate() {
        if k == label {
            continue;
        }
        let denom = 2.0 * d_k + 2.0 * r_y;
        let eps = if denom > 0.0 {
            (d_k * d_k - l_y) / denom
        } else {
            0.0
        };
        if best.is_none_or(|(b, _)| eps < b) {
            best = Some((eps, k));
        }
    }
    match best {
        Some((eps, k)) => (eps.max(0.0), Some(k)),
        None => (0.0, None),
    }
}

/// Certified radii of a batch and the quantities they come from (all unnormalised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertifiedBounds {
    /// `eps*` per sample (0 where nothing is certified).
    pub epsilons: Vec<f64>,
    /// Class attaining the minimum in eq. (7) per sample.
    pub nearest_class: Vec<Option<usize>>,
    /// `l_y*(x)`: exact-inference loss of the true class, prior term included.
    pub true_class_losses: Vec<f64>,
    /// `||x - G_y(z_y*)||`.
    pub true_class_distances: Vec<f64>,
    /// `d_k(x)` per sample and class (inference without the prior term).
    pub manifold_distances: Vec<Vec<f64>>,
}

/// Quantiles of the certified radii of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundSummary {
    /// Number of samples.
    pub n_samples: usize,
    /// Number with a positive radius.
    pub n_certified: usize,
    /// Mean radius.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// 25th percentile.
    pub q25: f64,
    /// Median.
    pub median: f64,
    /// 75th percentile.
    pub q75: f64,
    /// Maximum.
    pub max: f64,
}

impl CertifiedBounds {
    /// Quantiles (each `q` in `[0, 1]`) of the radii, linear interpolation between order
    /// statistics (NumPy's default). Errors on an empty set or a `q` outside `[0, 1]`.
    pub fn quantiles(&self, qs: &[f64]) -> Result<Vec<f64>> {
        quantiles(&self.epsilons, qs)
    }

    /// Distribution summary of the radii.
    pub fn summary(&self) -> Result<BoundSummary> {
        let q = self.quantiles(&[0.0, 0.25, 0.5, 0.75, 1.0])?;
        let n = self.epsilons.len();
        Ok(BoundSummary {
            n_samples: n,
            n_certified: self.epsilons.iter().filter(|&&e| e > 0.0).count(),
            mean: self.epsilons.iter().sum::<f64>() / n as f64,
            min: q[0],
            q25: q[1],
            median: q[2],
            q75: q[3],
            max: q[4],
        })
    }

    /// Whether every radius satisfies Claim 2's condition `eps* < d_k` for its nearest class.
    pub fn within_validity(&self) -> bool {
        self.epsilons
            .iter()
            .zip(&self.nearest_class)
            .zip(&self.manifold_distances)
            .all(|((e, k), d)| match k {
                Some(k) => *e == 0.0 || *e < d[*k],
                None => true,
            })
    }
}

/// Linear-interpolation quantiles of `values`.
pub fn quantiles(values: &[f64], qs: &[f64]) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Err(InferenceError::InvalidArgument {
            argument: "values",
            expected: "at least one value".into(),
            found: "none".into(),
        });
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    qs.iter()
        .map(|&q| {
            if !(0.0..=1.0).contains(&q) {
                return Err(InferenceError::InvalidArgument {
                    argument: "qs",
                    expected: "quantiles in [0, 1]".into(),
                    found: format!("{q}"),
                });
            }
            let pos = q * (sorted.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            Ok(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
        })
        .collect()
}

fn to_rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.host_vec2::<f64>()?)
}

impl<M: LatentClassModel> AbsInference<M> {
    /// Certified radii (eq. (7), Appendix A form) of `xs: (batch, c, h, w)` with true `labels`.
    ///
    /// Runs exact inference twice with this engine's candidates and Adam settings: with the prior
    /// term (for `l_y*` and `r_y`) and without it (for `d_k`), whatever the configured mode, as
    /// Appendix A assumes exact inference.
    pub fn certified_bounds(&self, xs: &Tensor, labels: &[usize]) -> Result<CertifiedBounds> {
        let b = xs.dims().first().copied().unwrap_or(0);
        let k = self.model().n_classes();
        if labels.len() != b {
            return Err(InferenceError::InvalidArgument {
                argument: "labels",
                expected: format!("{b} labels (one per image)"),
                found: format!("{}", labels.len()),
            });
        }
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= k) {
            return Err(InferenceError::InvalidArgument {
                argument: "labels",
                expected: format!("classes in 0..{k}"),
                found: format!("label {y} at index {i}"),
            });
        }
        let exact = |use_prior| Pass {
            mode: LatentInference::Exact,
            use_prior,
            final_evaluation: FinalEvaluation::Mean,
        };
        let with_prior = self.run(xs, exact(true), 0)?;
        let without_prior = self.run(xs, exact(false), 0)?;
        let rec = to_rows(&with_prior.reconstruction_errors)?;
        let prior = to_rows(&with_prior.prior_terms)?;
        let dist_sq = to_rows(&without_prior.reconstruction_errors)?;
        let mut out = CertifiedBounds {
            epsilons: Vec::with_capacity(b),
            nearest_class: Vec::with_capacity(b),
            true_class_losses: Vec::with_capacity(b),
            true_class_distances: Vec::with_capacity(b),
            manifold_distances: Vec::with_capacity(b),
        };
        for (i, &y) in labels.iter().enumerate() {
            let l_y = rec[i][y] + prior[i][y];
            let r_y = rec[i][y].max(0.0).sqrt();
            let d: Vec<f64> = dist_sq[i].iter().map(|v| v.max(0.0).sqrt()).collect();
            let (eps, nearest) = certified_radius(l_y, r_y, &d, y);
            out.epsilons.push(eps);
            out.nearest_class.push(nearest);
            out.true_class_losses.push(l_y);
            out.true_class_distances.push(r_y);
            out.manifold_distances.push(d);
        }
        Ok(out)
    }
}
