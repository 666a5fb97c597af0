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
//!   op's input gradient is the other op's forward kernel. The backward is also callable
//!   directly ([`conv2d_backward`], [`conv_transpose2d_backward`]).
//! - [`leaky_relu`], [`sigmoid`], [`batch_norm_train`], [`batch_norm_eval`] /
//!   [`channel_affine`]: one fused pass forward, one or two backward.
//!
//! Every backward returns `None` for an argument that is not tracked (`!Tensor::track_op()`), so
//! with plain (non-`Var`) weights a gradient with respect to the input costs the forward pass plus
//! one input-gradient kernel. Gradients are not themselves differentiable (no double backward).
//!
//! On other devices (CUDA, Metal) and other dtypes (f64, f16, ..), every op falls back to
//! Candle's own ops with identical semantics, so callers never branch (the explicit backward
//! functions are CPU/f32 only and say so in their error). Arguments are checked the
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
pub mod allocator;
mod batch_norm;
mod conv;
mod cpu;
pub mod raw;
mod storage;
pub mod threads;

pub use allocator::retain_freed_memory;
pub use threads::single_candle_thread;

/// The process settings that the long numeric jobs (xtask, the benchmarks) apply at start-up:
/// [`retain_freed_memory`] and [`single_candle_thread`]. Call it first thing in `main`.
pub fn tune_process() {
    retain_freed_memory();
    single_candle_thread();
}
use candle_core::{bail, DType, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Process-wide switch to Candle's stock ops ([`set_stock_ops`]).
static STOCK_OPS: AtomicBool = AtomicBool::new(false);

/// Routes every op of this crate through Candle's own ops (the fallback that CUDA and non-f32
/// dtypes take) when `on`, process-wide, until switched back; returns the previous setting.
///
/// For benchmarks that time a whole model "ours against stock Candle" in one run
/// (`cargo bench -p eabs-models --bench train_step`), and for users who want to rule our kernels
/// out when a result looks wrong. Results agree to float rounding either way (the tests compare
/// the two paths); only speed changes. Affects ops built after the call, on every thread.
pub fn set_stock_ops(on: bool) -> bool {
    STOCK_OPS.swap(on, Ordering::SeqCst)
}

/// Whether [`set_stock_ops`] is on.
pub fn stock_ops() -> bool {
    STOCK_OPS.load(Ordering::Relaxed)
}

/// True when the custom CPU kernels apply: every tensor on the CPU and f32, and the stock-op
/// switch off.
fn fast_path(ts: &[&Tensor]) -> bool {
    !stock_ops()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
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
            bail!(
                "{op}: bias: expected shape [{channels}] (output channels), found {:?}",
                b.dims()
            );
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
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let g = conv::conv2d_geom(x.dims(), w.dims(), stride, padding)?;
    check_bias_shape("conv2d", bias, g.c_small)?;
    let op = conv::Conv2dOp {
        stride,
        pad: padding,
    };
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
    let op = conv::ConvTranspose2dOp {
        stride,
        pad: padding,
        out_pad: output_padding,
    };
    match bias {
        Some(b) if fast_path(&[x, w, b]) => x.apply_op3(w, b, op),
        None if fast_path(&[x, w]) => x.apply_op2(w, op),
        _ => add_channel_bias(
            x.conv_transpose2d(w, padding, output_padding, stride, 1)?,
            bias,
        ),
    }
}

/// Which gradients [`conv2d_backward`] and [`conv_transpose2d_backward`] compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGrads {
    /// `dL/dx`.
    pub input: bool,
    /// `dL/dw`.
    pub weight: bool,
    /// `dL/db`.
    pub bias: bool,
}

impl ConvGrads {
    /// All three gradients (training).
    pub const ALL: Self = Self {
        input: true,
        weight: true,
        bias: true,
    };
    /// The input gradient only (attacks, latent optimisation).
    pub const INPUT: Self = Self {
        input: true,
        weight: false,
        bias: false,
    };
}

fn check_cpu_f32(op: &str, ts: &[&Tensor]) -> Result<()> {
    if !fast_path(ts) {
        bail!("{op}: expected f32 tensors on the cpu (the explicit backward has no fallback; autograd through {} does)", op.trim_end_matches("_backward"));
    }
    Ok(())
}

/// The backward pass of [`conv2d`] without autograd: `(dL/dx, dL/dw, dL/db)` for the output
/// gradient `grad_y`, each computed only when asked for in `grads` (like PyTorch's
/// `torch.nn.grad.conv2d_input` / `conv2d_weight`). These are the kernels autograd runs.
///
/// # Shapes
/// As [`conv2d`]; `grad_y` has the forward output's shape. Results have the shapes of `x`, `w`
/// and `(c_out,)`.
///
/// # Errors
/// As [`conv2d`], a `grad_y` of the wrong shape, or tensors that are not f32 on the CPU.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    grad_y: &Tensor,
    stride: usize,
    padding: usize,
    grads: ConvGrads,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    check_cpu_f32("conv2d_backward", &[x, w, grad_y])?;
    let need = conv::Need {
        input: grads.input,
        weight: grads.weight,
        bias: grads.bias,
    };
    conv::Conv2dOp {
        stride,
        pad: padding,
    }
    .grads(x, w, grad_y, need)
}

/// The backward pass of [`conv_transpose2d`] without autograd; see [`conv2d_backward`].
///
/// # Errors
/// As [`conv_transpose2d`], a `grad_y` of the wrong shape, or tensors that are not f32 on the
/// CPU.
pub fn conv_transpose2d_backward(
    x: &Tensor,
    w: &Tensor,
    grad_y: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
    grads: ConvGrads,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    check_cpu_f32("conv_transpose2d_backward", &[x, w, grad_y])?;
    let need = conv::Need {
        input: grads.input,
        weight: grads.weight,
        bias: grads.bias,
    };
    conv::ConvTranspose2dOp {
        stride,
        pad: padding,
        out_pad: output_padding,
    }
    .grads(x, w, grad_y, need)
}

/// Leaky ReLU (the encoder's activation in Section 4.3; Xu et al. 2015, the paper's reference
/// 52): `x` where `x > 0`, else `slope * x`. `slope = 0` is ReLU. The derivative at exactly 0
/// is `slope`, as in PyTorch.
///
/// # Errors
/// `slope` outside `[0, 1]` or not finite.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&slope) {
        bail!("leaky_relu: slope: expected a value in [0, 1], found {slope}");
    }
    if fast_path(&[x]) {
        x.apply_op1(activation::LeakyReluOp {
            slope: slope as f32,
        })
    } else {
        x.maximum(&(x * slope)?)
    }
}

/// Logistic sigmoid `1 / (1 + exp(-x))`, the decoder's output activation (Section 4.3), as one
/// pass forward and one backward (`dy/dx = y (1 - y)` from the saved output).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    if fast_path(&[x]) {
        x.apply_op1(activation::SigmoidOp)
    } else {
        (x.neg()?.exp()? + 1.0)?.recip()
    }
}

/// Per-channel affine map `y = x · scale[c] + shift[c]` over dimension 1, with a backward that
/// skips untracked arguments. This is eval-mode BatchNorm once folded (see
/// [`batch_norm_eval`]); Candle's `broadcast_mul`/`broadcast_add` would also reduce over the
/// whole activation for the gradient of a plain-tensor `scale`.
///
/// # Shapes
/// `x: (n, c, ..)` (rank >= 2), `scale, shift: (c,)`.
///
/// # Errors
/// Rank < 2, an empty input, or `scale`/`shift` not `(c,)`.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (_, c, _) = batch_norm::bn_dims(x.dims())
        .map_err(|e| rename(e, "batch_norm_train", "channel_affine"))?;
    for (name, t) in [("scale", scale), ("shift", shift)] {
        if t.dims() != [c] {
            bail!(
                "channel_affine: {name}: expected shape [{c}] (channels of the input), found {:?}",
                t.dims()
            );
        }
    }
    if fast_path(&[x, scale, shift]) {
        x.apply_op3(scale, shift, batch_norm::ChannelAffineOp)
    } else {
        let mut shape = vec![1; x.rank()];
        shape[1] = c;
        x.broadcast_mul(&scale.reshape(shape.clone())?)?
            .broadcast_add(&shift.reshape(shape)?)
    }
}

fn rename(e: candle_core::Error, from: &str, to: &str) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string().replace(from, to))
}

/// Eval-mode batch normalisation with running statistics: `γ (x - mean) / sqrt(var + eps) + β`,
/// folded into one [`channel_affine`] pass. The folding runs on `(c,)` tensors with Candle ops,
/// so gradients still reach `gamma` and `beta` (or any of the statistics) when they are tracked;
/// with plain tensors (inference), the backward is one elementwise pass for `x` only.
///
/// # Shapes
/// `x: (n, c, ..)`, `gamma, beta, running_mean, running_var: (c,)`.
///
/// # Errors
/// As [`channel_affine`], and `eps` negative or not finite.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("batch_norm_eval: eps: expected a finite value >= 0, found {eps}");
    }
    let (_, c, _) = batch_norm::bn_dims(x.dims())
        .map_err(|e| rename(e, "batch_norm_train", "batch_norm_eval"))?;
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        if t.dims() != [c] {
            bail!(
                "batch_norm_eval: {name}: expected shape [{c}] (channels of the input), found {:?}",
                t.dims()
            );
        }
    }
    let scale = (gamma / (running_var + eps)?.sqrt()?)?;
    let shift = (beta - (running_mean * &scale)?)?;
    channel_affine(x, &scale, &shift)
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
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
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
        let (mean, var) = storage::with_f32(x, "batch_norm_train: input", |xs| {
            Ok(batch_norm::moments(xs, n, c, p))
        })?;
        let inv_std = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
            .collect();
        let op = batch_norm::BatchNormOp {
            mean: mean.clone(),
            inv_std,
        };
        let y = x.apply_op3(gamma, beta, op)?;
        let dev = x.device();
        return Ok((
            y,
            Tensor::from_vec(mean, c, dev)?,
            Tensor::from_vec(var, c, dev)?,
        ));
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
