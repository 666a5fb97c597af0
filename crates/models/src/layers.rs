//! Layers with explicit state: linear, conv, transposed conv, BatchNorm with running statistics,
//! seeded dropout, numerically stable log-sigmoid.
//!
//! Every convolution goes through `eabs_kernels` so that the models speed up with the kernels.
//! Parameters are tensors of [`crate::params::ParamStore`] `Var`s; [`Linear::frozen`] and friends
//! give copies holding plain (detached) tensors that share storage, so that inference-time
//! backward passes track only their inputs (STYLE.md §2).

use eabs_core::host;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor, Var, D};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::params::ParamStore;

/// Source of dropout masks, shared by all modules of one model. The trainer reseeds it for every
/// batch from `(seed, epoch, batch)`; masks are then a pure function of the seed and call order.
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<ChaCha8Rng>>);

impl DropoutRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    /// Restarts the stream at `seed`.
    pub fn reseed(&self, seed: u64) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g = ChaCha8Rng::seed_from_u64(seed);
    }

    /// Inverted dropout: zeroes each element with probability `p`, scales the rest by
    /// `1 / (1 - p)`. Identity when `!train` or `p == 0`.
    pub fn dropout(&self, xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
        if !train || p <= 0.0 {
            return Ok(xs.clone());
        }
        let n = xs.elem_count();
        let scale = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = {
            let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            (0..n)
                .map(|_| if g.random::<f64>() < p { 0.0 } else { scale })
                .collect()
        };
        let mask = host::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs.mul(&mask)
    }
}

/// Fully connected layer, `y = x W^T + b`, `W: (out, in)` (PyTorch layout).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `(out, in)`.
    pub weight: Tensor,
    /// `(out,)`.
    pub bias: Tensor,
}

impl Linear {
    /// Creates `prefix.weight` and `prefix.bias`, U(-1/sqrt(in), 1/sqrt(in)).
    pub fn new(store: &mut ParamStore, prefix: &str, n_in: usize, n_out: usize) -> Result<Self> {
        let bound = 1.0 / (n_in as f64).sqrt();
        let weight = store.uniform(&format!("{prefix}.weight"), &[n_out, n_in], bound)?;
        let bias = store.uniform(&format!("{prefix}.bias"), &[n_out], bound)?;
        Ok(Self { weight, bias })
    }

    /// `(b, in) -> (b, out)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }

    /// A copy with detached parameters.
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
        }
    }
}

/// 2-D convolution without bias (always followed by BatchNorm, which makes a bias redundant:
/// our decision).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `(c_out, c_in, k, k)`.
    pub weight: Tensor,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
}

impl Conv2d {
    /// Creates `prefix.weight`, U(-1/sqrt(fan_in), ..) with `fan_in = c_in k^2`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let weight = store.uniform(&format!("{prefix}.weight"), &[c_out, c_in, k, k], bound)?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    /// `(n, c_in, h, w) -> (n, c_out, h', w')`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        eabs_kernels::conv2d(xs, &self.weight, None, self.stride, self.padding)
    }

    /// A copy with detached parameters.
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            ..self.clone()
        }
    }
}

/// 2-D transposed convolution; bias only where no BatchNorm follows.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    /// `(c_in, c_out, k, k)` (Candle's and PyTorch's layout).
    pub weight: Tensor,
    /// `(c_out,)`, present on the last layer only.
    pub bias: Option<Tensor>,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
}

impl ConvTranspose2d {
    /// Creates `prefix.weight` (and `prefix.bias`), U(-1/sqrt(fan_in), ..) with PyTorch's
    /// `fan_in = c_out k^2` for transposed convolutions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_out * k * k) as f64).sqrt();
        let weight = store.uniform(&format!("{prefix}.weight"), &[c_in, c_out, k, k], bound)?;
        let bias = if bias {
            Some(store.uniform(&format!("{prefix}.bias"), &[c_out], bound)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `(n, c_in, h, w) -> (n, c_out, (h-1) s - 2p + k, ..)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        eabs_kernels::conv_transpose2d(
            xs,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            0,
        )
    }

    /// A copy with detached parameters.
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(|b| b.detach()),
            ..self.clone()
        }
    }
}

/// BatchNorm over `(n, c, h, w)` (Ioffe & Szegedy), per-channel affine, running statistics.
///
/// Training mode normalises with the batch's biased variance and updates the running mean and
/// the running *unbiased* variance with `momentum`, as PyTorch does.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    /// Scale, `(c,)`.
    pub weight: Tensor,
    /// Shift, `(c,)`.
    pub bias: Tensor,
    /// Running mean buffer, `(c,)`.
    pub running_mean: Var,
    /// Running variance buffer, `(c,)`.
    pub running_var: Var,
    /// Momentum of the running statistics.
    pub momentum: f64,
    /// Added to the variance.
    pub eps: f64,
}

impl BatchNorm2d {
    /// Creates `prefix.{weight, bias, running_mean, running_var}` (1, 0, 0, 1).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        c: usize,
        momentum: f64,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: store.constant(&format!("{prefix}.weight"), &[c], 1.0)?,
            bias: store.constant(&format!("{prefix}.bias"), &[c], 0.0)?,
            running_mean: store.buffer(&format!("{prefix}.running_mean"), &[c], 0.0)?,
            running_var: store.buffer(&format!("{prefix}.running_var"), &[c], 1.0)?,
            momentum,
            eps,
        })
    }

    /// Normalises `xs: (n, c, h, w)`; in training mode with batch statistics (and updates the
    /// running ones), otherwise with the running statistics.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (n, _c, h, w) = xs.dims4()?;
        if train {
            let count = n * h * w;
            if count < 2 {
                candle_core::bail!("BatchNorm in training mode needs more than one value per channel, got input {:?}", xs.dims());
            }
            // Fused kernel (eabs-kernels): normalised output plus the detached batch statistics
            // (biased variance, the one that normalises).
            let (ys, batch_mean, batch_var) =
                eabs_kernels::batch_norm_train(xs, &self.weight, &self.bias, self.eps)?;
            let m = self.momentum;
            let unbias = count as f64 / (count as f64 - 1.0);
            let batch_var = (batch_var * unbias)?;
            self.running_mean
                .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (batch_mean * m)?)?)?;
            self.running_var
                .set(&((self.running_var.as_tensor() * (1.0 - m))? + (batch_var * m)?)?)?;
            Ok(ys)
        } else {
            // One fused pass (eabs-kernels): `gamma (x - mean) / sqrt(var + eps) + beta`. The
            // running statistics are buffers, never differentiated: detached (sharing storage),
            // so a backward pass through an evaluation-mode layer (inference, attacks) computes
            // no gradient for them.
            eabs_kernels::batch_norm_eval(
                xs,
                &self.weight,
                &self.bias,
                &self.running_mean.as_tensor().detach(),
                &self.running_var.as_tensor().detach(),
                self.eps,
            )
        }
    }

    /// A copy with detached affine parameters (running statistics stay shared).
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            ..self.clone()
        }
    }
}

/// `log sigmoid(l) = min(l, 0) - log(1 + exp(-|l|))`: finite for every finite `l`, unlike
/// `sigmoid(l).log()` (which candle-nn's BCE-with-logits computes), which is `-inf` once
/// `sigmoid` underflows.
pub fn log_sigmoid(logits: &Tensor) -> Result<Tensor> {
    let neg_abs = logits.abs()?.neg()?;
    let softplus_tail = neg_abs.exp()?.affine(1.0, 1.0)?.log()?;
    logits.minimum(0.0)?.sub(&softplus_tail)
}

/// ReLU.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    xs.relu()
}

/// Sigmoid, `1 / (1 + exp(-x))` (one fused pass forward and backward, eabs-kernels).
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    eabs_kernels::sigmoid(xs)
}

/// Row-wise log-softmax over the last dimension (max-shifted, stable).
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(xs, D::Minus1)
}

/// Picks `xs[b, labels[b]]` from `(b, k)`: `(b,)`.
pub fn pick(xs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    xs.gather(&labels, 1)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use eabs_core::host::HostRead;

    #[test]
    fn log_sigmoid_is_stable_and_correct() -> Result<()> {
        let l = host::new(&[-200f32, -1.0, 0.0, 2.0, 200.0], &Device::Cpu)?;
        let got = log_sigmoid(&l)?.host_vec1::<f32>()?;
        // Reference in f64: log sigmoid(x) = -log1p(e^{-x}) for x >= 0, x - log1p(e^x) otherwise.
        let want: Vec<f32> = [-200f64, -1.0, 0.0, 2.0, 200.0]
            .iter()
            .map(|&x| {
                (if x >= 0.0 {
                    -(-x).exp().ln_1p()
                } else {
                    x - x.exp().ln_1p()
                }) as f32
            })
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert!(got.iter().all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn batchnorm_normalises_and_tracks_statistics() -> Result<()> {
        let dev = Device::Cpu;
        let mut store = ParamStore::new(0, &dev);
        let bn = BatchNorm2d::new(&mut store, "bn", 1, 0.5, 0.0)?;
        // Values 1, 3 in one channel: mean 2, biased var 1, unbiased var 2.
        let xs = host::new(&[1f32, 3.0], &dev)?.reshape((2, 1, 1, 1))?;
        let ys = bn.forward(&xs, true)?.flatten_all()?.host_vec1::<f32>()?;
        assert_eq!(ys, vec![-1.0, 1.0]);
        assert_eq!(bn.running_mean.as_tensor().host_vec1::<f32>()?, vec![1.0]);
        assert_eq!(bn.running_var.as_tensor().host_vec1::<f32>()?, vec![1.5]);
        // Eval: (x - 1) / sqrt(1.5).
        let e = bn.forward(&xs, false)?.flatten_all()?.host_vec1::<f32>()?;
        assert!((e[1] - 2.0 / 1.5f32.sqrt()).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scaled() -> Result<()> {
        let xs = Tensor::ones((4, 100), DType::F32, &Device::Cpu)?;
        let a = DropoutRng::new(7)
            .dropout(&xs, 0.5, true)?
            .host_vec2::<f32>()?;
        let b = DropoutRng::new(7)
            .dropout(&xs, 0.5, true)?
            .host_vec2::<f32>()?;
        assert_eq!(a, b);
        assert!(a.iter().flatten().all(|&v| v == 0.0 || v == 2.0));
        let same = DropoutRng::new(7)
            .dropout(&xs, 0.5, false)?
            .host_vec2::<f32>()?;
        assert!(same.iter().flatten().all(|&v| v == 1.0));
        Ok(())
    }
}
