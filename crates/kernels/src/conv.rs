//! `conv2d` and `conv_transpose2d` as Candle custom ops (CPU, f32) with a pruned backward.
//!
//! The backward pass of each op is written with the fast forward kernels of the other (see the
//! table in [`crate::cpu`]): conv2d's input gradient is a transposed convolution of `dL/dy`, whose
//! output size is pinned by the forward geometry, so the `output_padding` needed for e.g. a
//! stride-2, padding-2, 5x5 conv on 28x28 (28 -> 14 -> 28) is implied rather than guessed.
//! Gradients are only computed for arguments that are tracked (`Tensor::track_op`): with plain
//! weight tensors, a latent-only optimisation (E-ABS inference, Section 3.3) pays for the forward
//! pass and the input gradient, nothing else.
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::{self, ConvGeom};
use crate::storage::{cpu_tensor, dense_f32, with_f32};

fn dims4(dims: &[usize], op: &str, what: &str, expect: &str) -> Result<[usize; 4]> {
    match dims {
        &[a, b, c, d] => Ok([a, b, c, d]),
        _ => bail!("{op}: {what}: expected rank 4 {expect}, found shape {dims:?}"),
    }
}

fn check_nonzero(op: &str, what: &str, dims: &[usize], from: usize) -> Result<()> {
    if dims[from..].contains(&0) {
        bail!("{op}: {what}: every dimension after the batch must be at least 1, found shape {dims:?}");
    }
    Ok(())
}

/// Geometry of `conv2d(x, w)` with `x: (n, c_in, h, w)`, `w: (c_out, c_in, kh, kw)`.
pub(crate) fn conv2d_geom(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<ConvGeom> {
    const OP: &str = "conv2d";
    let [n, c_in, h, wd] = dims4(x, OP, "input", "(n, c_in, h, w)")?;
    let [c_out, c_in_w, kh, kw] = dims4(w, OP, "weight", "(c_out, c_in, kh, kw)")?;
    check_nonzero(OP, "input", x, 1)?;
    check_nonzero(OP, "weight", w, 0)?;
    if c_in != c_in_w {
        bail!("{OP}: weight: expected c_in = {c_in} (input channels) in (c_out, c_in, kh, kw), found shape {w:?}");
    }
    if stride == 0 {
        bail!("{OP}: stride: expected at least 1, found 0");
    }
    if h + 2 * pad < kh || wd + 2 * pad < kw {
        bail!(
            "{OP}: input: padded size ({}, {}) is smaller than the kernel ({kh}, {kw})",
            h + 2 * pad,
            wd + 2 * pad
        );
    }
    Ok(ConvGeom {
        n,
        c_big: c_in,
        h_big: h,
        w_big: wd,
        c_small: c_out,
        h_small: (h + 2 * pad - kh) / stride + 1,
        w_small: (wd + 2 * pad - kw) / stride + 1,
        kh,
        kw,
        stride,
        pad,
    })
}

/// Geometry of `conv_transpose2d(x, w)` with `x: (n, c_in, h, w)`, `w: (c_in, c_out, kh, kw)`.
pub(crate) fn conv_transpose2d_geom(
    x: &[usize],
    w: &[usize],
    stride: usize,
    pad: usize,
    out_pad: usize,
) -> Result<ConvGeom> {
    const OP: &str = "conv_transpose2d";
    let [n, c_in, h, wd] = dims4(x, OP, "input", "(n, c_in, h, w)")?;
    let [c_in_w, c_out, kh, kw] = dims4(w, OP, "weight", "(c_in, c_out, kh, kw)")?;
    check_nonzero(OP, "input", x, 1)?;
    check_nonzero(OP, "weight", w, 0)?;
    if c_in != c_in_w {
        bail!("{OP}: weight: expected c_in = {c_in} (input channels) in (c_in, c_out, kh, kw), found shape {w:?}");
    }
    if stride == 0 {
        bail!("{OP}: stride: expected at least 1, found 0");
    }
    if out_pad >= stride {
        bail!("{OP}: output_padding: expected less than the stride {stride}, found {out_pad}");
    }
    // Output side (h - 1) * stride - 2 * padding + k + output_padding, which must be positive.
    let side =
        |len: usize, k: usize| ((len - 1) * stride + k + out_pad) as isize - 2 * pad as isize;
    let (h_out, w_out) = (side(h, kh), side(wd, kw));
    if h_out < 1 || w_out < 1 {
        bail!("{OP}: padding: {pad} leaves an empty output ({h_out}, {w_out}) for input ({h}, {wd}) and kernel ({kh}, {kw})");
    }
    Ok(ConvGeom {
        n,
        c_big: c_out,
        h_big: h_out as usize,
        w_big: w_out as usize,
        c_small: c_in,
        h_small: h,
        w_small: wd,
        kh,
        kw,
        stride,
        pad,
    })
}

/// Which gradients a backward pass computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Need {
    pub input: bool,
    pub weight: bool,
    pub bias: bool,
}

/// `(dL/dx, dL/dw, dL/db)`, each present when asked for.
pub(crate) type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

fn check_grad_shape(op: &str, got: &[usize], want: [usize; 4]) -> Result<()> {
    if got != want {
        bail!("{op} backward: output gradient: expected shape {want:?} (the forward output), found {got:?}");
    }
    Ok(())
}

fn check_bias(op: &str, bias: &[usize], channels: usize) -> Result<()> {
    if bias != [channels] {
        bail!("{op}: bias: expected shape [{channels}] (output channels), found {bias:?}");
    }
    Ok(())
}

/// `conv2d` on CPU f32. Arguments `(x, w)` ([`CustomOp2`]) or `(x, w, bias)` ([`CustomOp3`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dOp {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = conv2d_geom(x.1.dims(), w.1.dims(), self.stride, self.pad)?;
        let xs = dense_f32(x.0, x.1, "conv2d: input")?;
        let ws = dense_f32(w.0, w.1, "conv2d: weight")?;
        let bs = match b {
            Some((s, l)) => {
                check_bias("conv2d", l.dims(), g.c_small)?;
                Some(dense_f32(s, l, "conv2d: bias")?)
            }
            None => None,
        };
        let y = cpu::small_from_big(&g, &xs, &ws, bs.as_deref());
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.c_small, g.h_small, g.w_small)),
        ))
    }

    /// The gradients asked for by `need`, given `gy = dL/dy`.
    pub(crate) fn grads(&self, x: &Tensor, w: &Tensor, gy: &Tensor, need: Need) -> Result<Grads> {
        let g = conv2d_geom(x.dims(), w.dims(), self.stride, self.pad)?;
        check_grad_shape("conv2d", gy.dims(), [g.n, g.c_small, g.h_small, g.w_small])?;
        with_f32(gy, "conv2d backward: output gradient", |gys| {
            // dL/dx: a transposed convolution of dL/dy with the same weight, onto x's grid.
            let gx = if need.input {
                let v = with_f32(w, "conv2d: weight", |ws| {
                    Ok(cpu::big_from_small(&g, gys, ws, None))
                })?;
                Some(cpu_tensor(v, x.shape())?)
            } else {
                None
            };
            // dL/dw = Σ_b dL/dy_b · im2col(x_b)ᵀ.
            let gw = if need.weight {
                let v = with_f32(x, "conv2d: input", |xs| Ok(cpu::weight_grad(&g, xs, gys)))?;
                Some(cpu_tensor(v, w.shape())?)
            } else {
                None
            };
            let gb = if need.bias {
                Some(cpu_tensor(
                    cpu::channel_sum(gys, g.n, g.c_small, g.p_small()),
                    g.c_small,
                )?)
            } else {
                None
            };
            Ok((gx, gw, gb))
        })
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "eabs-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let need = Need {
            input: x.track_op(),
            weight: w.track_op(),
            bias: false,
        };
        let (gx, gw, _) = self.grads(x, w, gy, need)?;
        Ok((gx, gw))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "eabs-conv2d-bias"
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
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = Need {
            input: x.track_op(),
            weight: w.track_op(),
            bias: b.track_op(),
        };
        self.grads(x, w, gy, need)
    }
}

/// `conv_transpose2d` on CPU f32. Arguments `(x, w)` or `(x, w, bias)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvTranspose2dOp {
    pub stride: usize,
    pub pad: usize,
    pub out_pad: usize,
}

impl ConvTranspose2dOp {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<ConvGeom> {
        conv_transpose2d_geom(x, w, self.stride, self.pad, self.out_pad)
    }

    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geom(x.1.dims(), w.1.dims())?;
        let xs = dense_f32(x.0, x.1, "conv_transpose2d: input")?;
        let ws = dense_f32(w.0, w.1, "conv_transpose2d: weight")?;
        let bs = match b {
            Some((s, l)) => {
                check_bias("conv_transpose2d", l.dims(), g.c_big)?;
                Some(dense_f32(s, l, "conv_transpose2d: bias")?)
            }
            None => None,
        };
        let y = cpu::big_from_small(&g, &xs, &ws, bs.as_deref());
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, g.c_big, g.h_big, g.w_big)),
        ))
    }

    /// The gradients asked for by `need`, given `gy = dL/dy`.
    pub(crate) fn grads(&self, x: &Tensor, w: &Tensor, gy: &Tensor, need: Need) -> Result<Grads> {
        let g = self.geom(x.dims(), w.dims())?;
        check_grad_shape(
            "conv_transpose2d",
            gy.dims(),
            [g.n, g.c_big, g.h_big, g.w_big],
        )?;
        with_f32(gy, "conv_transpose2d backward: output gradient", |gys| {
            // dL/dx: a plain convolution of dL/dy with the same weight, back onto x's grid.
            let gx = if need.input {
                let v = with_f32(w, "conv_transpose2d: weight", |ws| {
                    Ok(cpu::small_from_big(&g, gys, ws, None))
                })?;
                Some(cpu_tensor(v, x.shape())?)
            } else {
                None
            };
            // dL/dw = Σ_b x_b · im2col(dL/dy_b)ᵀ.
            let gw = if need.weight {
                let v = with_f32(x, "conv_transpose2d: input", |xs| {
                    Ok(cpu::weight_grad(&g, gys, xs))
                })?;
                Some(cpu_tensor(v, w.shape())?)
            } else {
                None
            };
            let gb = if need.bias {
                Some(cpu_tensor(
                    cpu::channel_sum(gys, g.n, g.c_big, g.h_big * g.w_big),
                    g.c_big,
                )?)
            } else {
                None
            };
            Ok((gx, gw, gb))
        })
    }
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "eabs-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let need = Need {
            input: x.track_op(),
            weight: w.track_op(),
            bias: false,
        };
        let (gx, gw, _) = self.grads(x, w, gy, need)?;
        Ok((gx, gw))
    }
}

impl CustomOp3 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "eabs-conv-transpose2d-bias"
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
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = Need {
            input: x.track_op(),
            weight: w.track_op(),
            bias: b.track_op(),
        };
        self.grads(x, w, gy, need)
    }
}
