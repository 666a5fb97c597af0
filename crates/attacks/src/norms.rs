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
                let factor = n
                    .clamp(1e-12, f64::MAX)?
                    .recip()?
                    .affine(epsilon, 0.0)?
                    .clamp(0.0, 1.0)?;
                Ok(delta.broadcast_mul(&factor)?)
            }
        }
    }

    /// Projects rows onto balls of per-sample radius `epsilon` (`(b, 1)`); used by APGD/DDN.
    pub fn clip_perturbation_rows(&self, delta: &Tensor, epsilon: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => Ok(delta
                .broadcast_minimum(epsilon)?
                .broadcast_maximum(&epsilon.neg()?)?),
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
                Ok(g.broadcast_div(&n)?
                    .narrow(1, 0, dim)?
                    .affine(epsilon, 0.0)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use eabs_core::host::{self, HostRead};
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn clipping_and_normalisation() {
        let d = host::new(&[[3f32, 4.0], [0.3, -0.4]], &Device::Cpu).unwrap();
        // L2: the 5-long row is scaled to length 1, the 0.5-long row is kept.
        let c = Norm::L2
            .clip_perturbation(&d, 1.0)
            .unwrap()
            .host_vec2::<f32>()
            .unwrap();
        assert_eq!(c, vec![vec![0.6, 0.8], vec![0.3, -0.4]]);
        let c = Norm::Linf
            .clip_perturbation(&d, 0.35)
            .unwrap()
            .host_vec2::<f32>()
            .unwrap();
        assert_eq!(c, vec![vec![0.35, 0.35], vec![0.3, -0.35]]);
        let n = Norm::L2.normalize(&d).unwrap().host_vec2::<f32>().unwrap();
        assert!((n[1][0] - 0.6).abs() < 1e-6 && (n[1][1] + 0.8).abs() < 1e-6);
        assert_eq!(
            Norm::Linf
                .normalize(&d)
                .unwrap()
                .host_vec2::<f32>()
                .unwrap()[1],
            vec![1.0, -1.0]
        );
        let zero = Tensor::zeros((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            Norm::L2
                .normalize(&zero)
                .unwrap()
                .host_vec2::<f32>()
                .unwrap(),
            vec![vec![0.0; 3]]
        );
        let b = host::new(&[[0f32, 0.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(Norm::L2.distances(&d, &b).unwrap()[0], 5.0);
        assert!((Norm::Linf.distances(&d, &b).unwrap()[1] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn random_starts_lie_in_the_ball_and_fill_it() {
        let mut rngs: Vec<ChaCha8Rng> = (0..200).map(ChaCha8Rng::seed_from_u64).collect();
        for norm in [Norm::L2, Norm::Linf] {
            let p = norm
                .random_perturbation(&mut rngs, 5, 0.5, &Device::Cpu)
                .unwrap();
            let n = crate::util::to_vec_f64(&norm.rows(&p).unwrap()).unwrap();
            assert!(n.iter().all(|&v| v <= 0.5 + 1e-6));
            // Uniform in a 5-ball: P(||x|| < r/2) = 2^-5 ~ 3 %; not all on the sphere.
            assert!(n.iter().any(|&v| v < 0.4), "{norm:?}");
        }
    }
}
