//! Perturbation norms: distances, projection onto the epsilon ball, gradient normalisation and
//! random starts, the three places where Foolbox's `LinfBaseGradientDescent` and
//! `L2BaseGradientDescent` differ (`gradient_descent_base.py`).
//!
//! All functions work on flattened `(batch, dim)` tensors.

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::util::{l2_rows, normal_rows, to_vec_f64, uniform_rows};

/// Norm in which a perturbation is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Norm {
    /// Euclidean norm.
    L2,
    /// Largest absolute value.
    Linf,
}

impl Norm {
    /// Per-row norms of a `(b, d)` tensor as a `(b, 1)` tensor.
    pub fn rows(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Norm::L2 => l2_rows(t),
            Norm::Linf => Ok(t.abs()?.max_keepdim(1)?),
        }
    }

    /// Per-sample distances between two batches of any (equal) shape.
    pub fn distances(&self, a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
        let d = (a.flatten_from(1)? - b.flatten_from(1)?)?;
        to_vec_f64(&self.rows(&d)?)
    }

    /// Projects a flat perturbation `(b, d)` onto the ball of radius `epsilon`: clamping for
    /// L_inf, rescaling rows that are too long for L_2. An infinite epsilon returns `delta`.
    pub fn clip_perturbation(&self, delta: &Tensor, epsilon: f64) -> Result<Tensor> {
        if epsilon.is_infinite() {
            return Ok(delta.clone());
        }
        match self {
            Norm::Linf => Ok(delta.clamp(-epsilon, epsilon)?),
            Norm::L2 => {
                let n = l2_rows(delta)?;
                // factor = min(1, eps / max(n, 1e-12)) as in Foolbox's `clip_lp_norms`.
                let factor = n.clamp(1e-12, f64::MAX)?.recip()?.affine(epsilon, 0.0)?.clamp(0.0, 1.0)?;
                Ok(delta.broadcast_mul(&factor)?)
            }
        }
    }

    /// Projects rows onto balls of per-sample radius `epsilon` (`(b, 1)`); used by APGD/DDN.
    pub fn clip_perturbation_rows(&self, delta: &Tensor, epsilon: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => Ok(delta.broadcast_minimum(epsilon)?.broadcast_maximum(&epsilon.neg()?)?),
            Norm::L2 => {
                let n = l2_rows(delta)?.clamp(1e-12, f64::MAX)?;
                let factor = epsilon.broadcast_div(&n)?.clamp(0.0, 1.0)?;
                Ok(delta.broadcast_mul(&factor)?)
            }
        }
    }

    /// Steepest-ascent direction of unit norm for a gradient (sign for L_inf, `g / ||g||_2` for
    /// L_2 with Foolbox's 1e-12 floor, so a zero gradient gives a zero step).
    pub fn normalize(&self, grad: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => Ok(grad.sign()?),
            Norm::L2 => {
                let n = l2_rows(grad)?.clamp(1e-12, f64::MAX)?;
                Ok(grad.broadcast_div(&n)?)
            }
        }
    }

    /// A random perturbation drawn uniformly from the ball of radius `epsilon`, one row per
    /// stream: uniform in the cube for L_inf; for L_2 the first `d` coordinates of a uniform
    /// point on the sphere in `d + 2` dimensions, which is uniform in the `d`-ball (Foolbox's
    /// `uniform_l2_n_balls`, after Voelker et al. 2017).
    pub fn random_perturbation(
        &self,
        rngs: &mut [ChaCha8Rng],
        dim: usize,
        epsilon: f64,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        match self {
            Norm::Linf => uniform_rows(rngs, dim, -epsilon, epsilon, device),
            Norm::L2 => {
                let g = normal_rows(rngs, dim + 2, device)?;
                let n = l2_rows(&g)?.clamp(1e-12, f64::MAX)?;
                Ok(g.broadcast_div(&n)?.narrow(1, 0, dim)?.affine(epsilon, 0.0)?)
            }
        }
    }

    /// Lower-case name, as in result files (`"l2"`, `"linf"`).
    pub fn name(&self) -> &'static str {
        match self {
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        }
    }
}
