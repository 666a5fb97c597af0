//! Adam on a plain latent tensor, as PyTorch's `torch.optim.Adam` (which the reference uses):
//! bias-corrected moments and `eps` added to the square root of the second moment.
//!
//! One state covers the whole `(batch, K, d)` latent tensor: all classes and images of a batch
//! are optimised together. Adam is element-wise, so this equals one optimiser per image and
//! class (the reference's `auto_batch` runs one per chunk of 500 images, which is the same).

use candle_core::{Result, Tensor};

/// State of Adam for one tensor parameter.
#[derive(Debug, Clone)]
pub struct LatentAdam {
    m: Tensor,
    v: Tensor,
    t: i32,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl LatentAdam {
    /// Zero moments shaped like `param`.
    pub fn new(param: &Tensor, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        Ok(Self {
            m: param.zeros_like()?,
            v: param.zeros_like()?,
            t: 0,
            lr,
            beta1,
            beta2,
            eps,
        })
    }

    /// One update: returns `param - lr * m_hat / (sqrt(v_hat) + eps)`.
    pub fn step(&mut self, param: &Tensor, grad: &Tensor) -> Result<Tensor> {
        self.t += 1;
        self.m = ((&self.m * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
        self.v = ((&self.v * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
        let m_hat = (&self.m / (1.0 - self.beta1.powi(self.t)))?;
        let v_hat = (&self.v / (1.0 - self.beta2.powi(self.t)))?;
        let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
        param - (update * self.lr)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() -> Result<()> {
        // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
        let p = Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
        let g = Tensor::new(&[4f32, -0.5, 0.0], &Device::Cpu)?;
        let mut adam = LatentAdam::new(&p, 0.1, 0.9, 0.999, 1e-8)?;
        let p1 = adam.step(&p, &g)?.to_vec1::<f32>()?;
        assert!((p1[0] - 0.9).abs() < 1e-6 && (p1[1] + 1.9).abs() < 1e-6 && p1[2] == 0.5);
        Ok(())
    }

    #[test]
    fn minimises_a_quadratic() -> Result<()> {
        // f(p) = sum (p - 3)^2, gradient 2 (p - 3).
        let mut p = Tensor::new(&[0f32, 10.0], &Device::Cpu)?;
        let mut adam = LatentAdam::new(&p, 0.1, 0.9, 0.999, 1e-8)?;
        for _ in 0..500 {
            let g = ((&p - 3.0)? * 2.0)?;
            p = adam.step(&p, &g)?;
        }
        for v in p.to_vec1::<f32>()? {
            assert!((v - 3.0).abs() < 1e-2, "{v}");
        }
        Ok(())
    }
}
