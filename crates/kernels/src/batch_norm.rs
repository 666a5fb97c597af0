//! Training-mode batch normalisation (Ioffe & Szegedy 2015) as one fused custom op (CPU, f32).
//!
//! E-ABS puts BatchNorm after every convolution of the encoder and every transposed convolution
//! of the decoder but the last (Section 4.3). Composed from Candle ops, training-mode BatchNorm
//! takes about ten passes over the activations forward and more backward; here the statistics are
//! one pass (f64 accumulation, shifted by the channel's first value against cancellation), the
//! normalisation one pass, and the backward two (per-channel reductions, then the elementwise
//! formula).
//!
//! Backward, with `x̂ = (x - μ) / σ`, `σ = sqrt(var + eps)`, `m` values per channel:
//! `dL/dx = γ / σ · (g - mean(g) - x̂ · mean(g · x̂))`, `dL/dγ = Σ g · x̂`, `dL/dβ = Σ g`.
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::{cpu_tensor, dense_f32, with_f32};

/// `(n, c, p)`: batch, channels, values per channel and image (product of the trailing dims).
pub(crate) fn bn_dims(dims: &[usize]) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        bail!("batch_norm_train: input: expected rank >= 2 (n, c, ..), found shape {dims:?}");
    }
    let p: usize = dims[2..].iter().product();
    if dims[0] * p == 0 {
        bail!("batch_norm_train: input: expected at least one value per channel, found shape {dims:?}");
    }
    Ok((dims[0], dims[1], p))
}

/// Per-channel batch mean and biased variance (divided by `n * p`, as used for normalising).
pub(crate) fn moments(x: &[f32], n: usize, c: usize, p: usize) -> (Vec<f32>, Vec<f32>) {
    let m = (n * p) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let shift = x[ch * p] as f64;
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for b in 0..n {
                for &v in &x[(b * c + ch) * p..(b * c + ch + 1) * p] {
                    let d = v as f64 - shift;
                    s1 += d;
                    s2 += d * d;
                }
            }
            let mean = s1 / m;
            (
                (shift + mean) as f32,
                (s2 / m - mean * mean).max(0.0) as f32,
            )
        })
        .unzip()
}

/// Applies `y = x · scale[c] + shift[c]` plane by plane.
fn per_channel_affine(x: &[f32], c: usize, p: usize, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut y = crate::cpu::out_buffer(x.len());
    let planes_per_task = (crate::activation::ELEMWISE_CHUNK / p).max(1);
    y.par_chunks_mut(planes_per_task * p)
        .zip(x.par_chunks(planes_per_task * p))
        .enumerate()
        .for_each(|(task, (y, x))| {
            for (i, (y, x)) in y.chunks_mut(p).zip(x.chunks(p)).enumerate() {
                let ch = (task * planes_per_task + i) % c;
                let (a, b) = (scale[ch], shift[ch]);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * a + b;
                }
            }
        });
    y
}

/// The op: statistics are computed before it is applied (they are returned to the caller too) and
/// kept for the backward pass.
#[derive(Clone, Debug)]
pub(crate) struct BatchNormOp {
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    pub inv_std: Vec<f32>,
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "eabs-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = bn_dims(l1.dims())?;
        let x = dense_f32(s1, l1, "batch_norm_train: input")?;
        let gamma = dense_f32(s2, l2, "batch_norm_train: gamma")?;
        let beta = dense_f32(s3, l3, "batch_norm_train: beta")?;
        let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * self.inv_std[ch]).collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| beta[ch] - self.mean[ch] * scale[ch])
            .collect();
        let y = per_channel_affine(&x, c, p, &scale, &shift);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, p) = bn_dims(x.dims())?;
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        with_f32(x, "batch_norm_train: input", |xs| {
            with_f32(gy, "batch_norm_train backward: output gradient", |gys| {
                // Per channel: Σ g and Σ g · x̂, in f64.
                let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let (mu, is) = (mean[ch], inv_std[ch]);
                        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                        for b in 0..n {
                            let r = (b * c + ch) * p..(b * c + ch + 1) * p;
                            for (&g, &v) in gys[r.clone()].iter().zip(&xs[r]) {
                                sg += g as f64;
                                sgx += g as f64 * ((v - mu) * is) as f64;
                            }
                        }
                        (sg, sgx)
                    })
                    .unzip();
                let gx = if x.track_op() {
                    let gam = with_f32(gamma, "batch_norm_train: gamma", |g| Ok(g.to_vec()))?;
                    let m = (n * p) as f64;
                    let mut out = crate::cpu::out_buffer(xs.len());
                    let planes_per_task = (crate::activation::ELEMWISE_CHUNK / p).max(1);
                    out.par_chunks_mut(planes_per_task * p)
                        .enumerate()
                        .for_each(|(task, o)| {
                            for (i, o) in o.chunks_mut(p).enumerate() {
                                let plane = task * planes_per_task + i;
                                let ch = plane % c;
                                let (mu, is) = (mean[ch], inv_std[ch]);
                                let k = gam[ch] * is;
                                let mg = (sum_g[ch] / m) as f32;
                                let mgx = (sum_gx[ch] / m) as f32;
                                let r = plane * p..(plane + 1) * p;
                                for ((o, &g), &v) in o.iter_mut().zip(&gys[r.clone()]).zip(&xs[r]) {
                                    *o = k * (g - mg - (v - mu) * is * mgx);
                                }
                            }
                        });
                    Some(cpu_tensor(out, x.shape())?)
                } else {
                    None
                };
                let ggamma = if gamma.track_op() {
                    Some(cpu_tensor(
                        sum_gx.iter().map(|&v| v as f32).collect(),
                        gamma.shape(),
                    )?)
                } else {
                    None
                };
                let gbeta = if beta.track_op() {
                    Some(cpu_tensor(
                        sum_g.iter().map(|&v| v as f32).collect(),
                        beta.shape(),
                    )?)
                } else {
                    None
                };
                Ok((gx, ggamma, gbeta))
            })
        })
    }
}

/// `y = x · scale[c] + shift[c]` with a pruned backward: eval-mode BatchNorm folded into one
/// per-channel affine map. Composed from Candle's broadcast ops, its backward would also reduce
/// `dL/dy · x` over the whole activation for a `scale` that is a plain tensor; here each
/// gradient is computed only when its argument is tracked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelAffineOp;

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "eabs-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = bn_dims(l1.dims())?;
        let x = dense_f32(s1, l1, "channel_affine: input")?;
        let scale = dense_f32(s2, l2, "channel_affine: scale")?;
        let shift = dense_f32(s3, l3, "channel_affine: shift")?;
        let y = per_channel_affine(&x, c, p, &scale, &shift);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, p) = bn_dims(x.dims())?;
        with_f32(gy, "channel_affine backward: output gradient", |gys| {
            let gx = if x.track_op() {
                let s = with_f32(scale, "channel_affine: scale", |s| Ok(s.to_vec()))?;
                Some(cpu_tensor(
                    per_channel_affine(gys, c, p, &s, &vec![0.0; c]),
                    x.shape(),
                )?)
            } else {
                None
            };
            let gscale = if scale.track_op() {
                let v = with_f32(x, "channel_affine: input", |xs| {
                    Ok((0..c)
                        .into_par_iter()
                        .map(|ch| {
                            let mut acc = 0.0f64;
                            for b in 0..n {
                                let r = (b * c + ch) * p..(b * c + ch + 1) * p;
                                for (&g, &v) in gys[r.clone()].iter().zip(&xs[r]) {
                                    acc += g as f64 * v as f64;
                                }
                            }
                            acc as f32
                        })
                        .collect::<Vec<f32>>())
                })?;
                Some(cpu_tensor(v, scale.shape())?)
            } else {
                None
            };
            let gshift = if shift.track_op() {
                Some(cpu_tensor(
                    crate::cpu::channel_sum(gys, n, c, p),
                    shift.shape(),
                )?)
            } else {
                None
            };
            Ok((gx, gscale, gshift))
        })
    }
}
