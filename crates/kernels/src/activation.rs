//! Leaky ReLU as one fused custom op (CPU, f32).
//!
//! Candle's `x.maximum(&(x * slope))` costs an affine pass, a max pass, and in backward two
//! comparisons, two casts, two divisions and several adds over the whole activation tensor (the
//! "five passes" of `/work/shared/perf-baseline.md`). Here forward and backward are one pass each.
//! The encoder of Section 4.3 uses Leaky ReLU after every convolution; with `slope = 0` the same
//! op is the decoder's ReLU.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::{cpu_tensor, dense_f32, with_f32};

/// Elements per rayon task for elementwise passes: large enough to amortise scheduling.
pub(crate) const ELEMWISE_CHUNK: usize = 1 << 15;

/// `f` applied to every element of `x`, in parallel chunks (into a poisoned output buffer).
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::cpu::out_buffer(x.len());
    y.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(x.par_chunks(ELEMWISE_CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = f(x);
            }
        });
    y
}

/// `f(a_i, b_i)` for every pair of elements, in parallel chunks (into a poisoned output buffer).
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = crate::cpu::out_buffer(a.len());
    y.par_chunks_mut(ELEMWISE_CHUNK)
        .zip(
            a.par_chunks(ELEMWISE_CHUNK)
                .zip(b.par_chunks(ELEMWISE_CHUNK)),
        )
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = f(a, b);
            }
        });
    y
}

/// `y = x > 0 ? x : slope * x`; `dy/dx = x > 0 ? 1 : slope` (PyTorch's convention at `x = 0`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeakyReluOp {
    pub slope: f32,
}

impl CustomOp1 for LeakyReluOp {
    fn name(&self) -> &'static str {
        "eabs-leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = dense_f32(storage, layout, "leaky_relu: input")?;
        let slope = self.slope;
        let y = map1(&x, |x| if x > 0.0 { x } else { slope * x });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let slope = self.slope;
        let gx = with_f32(arg, "leaky_relu: input", |x| {
            with_f32(grad_res, "leaky_relu backward: output gradient", |gy| {
                Ok(map2(x, gy, |x, gy| if x > 0.0 { gy } else { slope * gy }))
            })
        })?;
        Ok(Some(cpu_tensor(gx, arg.shape())?))
    }
}

/// `y = 1 / (1 + exp(-x))`; `dy/dx = y (1 - y)`, computed from the saved output. The decoder's
/// last layer (Section 4.3). For f32 the formula is stable at both ends: `exp(-x)` overflowing to
/// infinity gives exactly 0, underflowing gives exactly 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SigmoidOp;

impl CustomOp1 for SigmoidOp {
    fn name(&self) -> &'static str {
        "eabs-sigmoid"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = dense_f32(storage, layout, "sigmoid: input")?;
        let y = map1(&x, |x| 1.0 / (1.0 + (-x).exp()));
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let gx = with_f32(res, "sigmoid: output", |y| {
            with_f32(grad_res, "sigmoid backward: output gradient", |gy| {
                Ok(map2(y, gy, |y, gy| gy * y * (1.0 - y)))
            })
        })?;
        Ok(Some(cpu_tensor(gx, arg.shape())?))
    }
}
