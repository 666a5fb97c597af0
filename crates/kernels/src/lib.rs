//! Fast CPU kernels for the E-ABS architectures (Ju & Wagner 2020, Table 9) as Candle custom ops.
//!
//! Candle 0.11's CPU `conv_transpose2d` is a plain loop over kernel taps (2-7 GFLOP/s on the
//! decoder's layers), its `conv2d` runs 2-19 GFLOP/s at these small channel counts, and its
//! backward pass computes the gradient of every argument, weights included, even when only the
//! latent needs one (E-ABS inference, Section 3.3). This crate replaces, on CPU and for f32:
//!
//! - [`conv2d`] and [`conv_transpose2d`]: im2col / col2im around one large GEMM (the `gemm` crate
//!   Candle itself uses) per cache-sized chunk of images, the batch folded into the GEMM's `N`,
//!   chunks in parallel with rayon. Forward and backward (input, weight and bias gradients); each
//!   op's input gradient is the other op's forward kernel.
//! - [`leaky_relu`] and [`batch_norm_train`]: one fused pass forward, one or two backward.
//!
//! Every backward returns `None` for an argument that is not tracked (`!Tensor::track_op()`), so
//! with plain (non-`Var`) weights a gradient with respect to the input costs the forward pass plus
//! one input-gradient kernel. Gradients are not themselves differentiable (no double backward).
//!
//! On other devices (CUDA, Metal) and other dtypes (f64, f16, ..), every function falls back to
//! Candle's own ops with identical semantics, so callers never branch. Arguments are checked the
//! same way on every path: bad shapes give an error naming the function, the argument, what was
//! expected and what was found.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! // MNIST encoder, first layer of Table 9: 16 channels, kernel 5, stride 2, padding 2.
//! let x = Tensor::randn(0f32, 1., (8, 1, 28, 28), &dev)?;
//! let w = Tensor::randn(0f32, 0.1, (16, 1, 5, 5), &dev)?;
//! let b = Tensor::zeros(16, candle_core::DType::F32, &dev)?;
//! let h = eabs_kernels::conv2d(&x, &w, Some(&b), 2, 2)?;
//! assert_eq!(h.dims(), &[8, 16, 14, 14]);
//! // Back up to 28x28: output_padding 1 resolves the stride-2 ambiguity (27 or 28).
//! let wt = Tensor::randn(0f32, 0.1, (16, 1, 5, 5), &dev)?;
//! let y = eabs_kernels::conv_transpose2d(&eabs_kernels::leaky_relu(&h, 0.2)?, &wt, None, 2, 2, 1)?;
//! assert_eq!(y.dims(), &[8, 1, 28, 28]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod activation;
mod batch_norm;
mod conv;
mod cpu;
mod storage;

use candle_core::{bail, DType, Result, Tensor};

/// True when the custom CPU kernels apply: every tensor on the CPU and f32.
fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}

fn check_bias_shape(op: &str, bias: Option<&Tensor>, channels: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.dims() != [channels] {
            bail!("{op}: bias: expected shape [{channels}] (output channels), found {:?}", b.dims());
        }
    }
    Ok(())
}

/// 2-D convolution (cross-correlation, as in PyTorch and Candle).
///
/// # Shapes
/// `x: (n, c_in, h, w)`, `w: (c_out, c_in, kh, kw)`, optional `bias: (c_out,)`; result
/// `(n, c_out, (h + 2 padding - kh) / stride + 1, (w + 2 padding - kw) / stride + 1)`.
/// Inputs may be strided views; dilation and groups are 1.
///
/// # Errors
/// Wrong ranks, mismatched channels, a kernel larger than the padded input, stride 0, a bias of
/// the wrong shape, or mixed devices/dtypes.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let g = conv::conv2d_geom(x.dims(), w.dims(), stride, padding)?;
    check_bias_shape("conv2d", bias, g.c_small)?;
    let op = conv::Conv2dOp { stride, pad: padding };
    match bias {
        Some(b) if fast_path(&[x, w, b]) => x.apply_op3(w, b, op),
        None if fast_path(&[x, w]) => x.apply_op2(w, op),
        _ => add_channel_bias(x.conv2d(w, padding, stride, 1, 1)?, bias),
    }
}

/// 2-D transposed convolution (the gradient of [`conv2d`] with respect to its input).
///
/// # Shapes
/// `x: (n, c_in, h, w)`, `w: (c_in, c_out, kh, kw)` (Candle's and PyTorch's layout), optional
/// `bias: (c_out,)`; result side `(h - 1) * stride - 2 * padding + kh + output_padding` (same for
/// the width). `output_padding < stride` selects among the input sizes a stride-`stride` conv2d
/// maps to `h` (e.g. 1 for the 14 -> 28 layers of the MNIST decoder).
///
/// # Errors
/// Wrong ranks, mismatched channels, `output_padding >= stride`, an empty output, stride 0, a
/// bias of the wrong shape, or mixed devices/dtypes.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    let g = conv::conv_transpose2d_geom(x.dims(), w.dims(), stride, padding, output_padding)?;
    check_bias_shape("conv_transpose2d", bias, g.c_big)?;
    let op = conv::ConvTranspose2dOp { stride, pad: padding, out_pad: output_padding };
    match bias {
        Some(b) if fast_path(&[x, w, b]) => x.apply_op3(w, b, op),
        None if fast_path(&[x, w]) => x.apply_op2(w, op),
        _ => add_channel_bias(x.conv_transpose2d(w, padding, output_padding, stride, 1)?, bias),
    }
}

/// Leaky ReLU (Maas et al. 2013; the encoder's activation in Section 4.3): `x` where `x > 0`,
/// else `slope * x`. `slope = 0` is ReLU. The derivative at exactly 0 is `slope`, as in PyTorch.
///
/// # Errors
/// `slope` outside `[0, 1]` or not finite.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&slope) {
        bail!("leaky_relu: slope: expected a value in [0, 1], found {slope}");
    }
    if fast_path(&[x]) {
        x.apply_op1(activation::LeakyReluOp { slope: slope as f32 })
    } else {
        x.maximum(&(x * slope)?)
    }
}

/// Training-mode batch normalisation over every dimension but the channel dimension 1.
///
/// Returns `(y, batch_mean, batch_var)`: `y = γ (x - μ) / sqrt(σ² + eps) + β`, and the per-channel
/// statistics `(c,)` used for it, detached. `batch_var` is the *biased* variance (divided by the
/// number of values `m` per channel), the one that normalises; PyTorch's running-variance update
/// uses the unbiased `batch_var * m / (m - 1)`, Candle-nn's `BatchNorm` the biased one: the caller
/// chooses. Gradients flow to `x`, `gamma` and `beta` (whichever are tracked).
///
/// # Shapes
/// `x: (n, c, ..)` (rank >= 2, e.g. `(n, c, h, w)` or `(n, c)`), `gamma, beta: (c,)`.
///
/// # Errors
/// Rank < 2, no values per channel, `gamma`/`beta` not `(c,)`, `eps` negative or not finite.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, p) = batch_norm::bn_dims(x.dims())?;
    for (name, t) in [("gamma", gamma), ("beta", beta)] {
        if t.dims() != [c] {
            bail!("batch_norm_train: {name}: expected shape [{c}] (channels of the input), found {:?}", t.dims());
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("batch_norm_train: eps: expected a finite value >= 0, found {eps}");
    }
    if fast_path(&[x, gamma, beta]) {
        let (mean, var) = storage::with_f32(x, "batch_norm_train: input", |xs| Ok(batch_norm::moments(xs, n, c, p)))?;
        let inv_std = var.iter().map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32).collect();
        let op = batch_norm::BatchNormOp { mean: mean.clone(), inv_std };
        let y = x.apply_op3(gamma, beta, op)?;
        let dev = x.device();
        return Ok((y, Tensor::from_vec(mean, c, dev)?, Tensor::from_vec(var, c, dev)?));
    }
    let x3 = x.reshape((n, c, p))?;
    let mean = x3.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = x3.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&gamma.reshape((1, c, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?
        .reshape(x.shape())?;
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}
