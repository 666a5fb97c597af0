//! The raw f32 kernels behind the Candle ops, on plain slices, for hand-written loops that do
//! not go through Candle's autodiff graph (the fast ABS-style inference of `eabs-inference`:
//! forward through the decoders and a backward to the latent only, 49 times per image).
//!
//! Each call is self-contained: it checks the slice lengths against the geometry and returns an
//! error naming what is wrong, it never panics on bad lengths. The work inside a call runs on
//! the rayon pool of the caller (a caller that parallelises over classes gets nested, not
//! oversubscribed, parallelism).

use candle_core::{bail, Result};
use gemm::Parallelism;

use crate::cpu::{self, ConvGeom};

/// A 2-D transposed convolution (`output_padding` 0, dilation 1, groups 1) on NCHW f32 slices,
/// weights in Candle's and PyTorch's `(c_in, c_out, k, k)` layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransposedConv {
    geom: ConvGeom,
}

impl TransposedConv {
    /// The geometry of `conv_transpose2d` on `(c_in, h_in, w_in)` inputs with `(c_in, c_out,
    /// kernel, kernel)` weights; the output side is `(h_in - 1) stride - 2 padding + kernel`.
    ///
    /// # Errors
    /// A zero dimension or stride, or a padding that leaves an empty output.
    pub fn new(
        (c_in, h_in, w_in): (usize, usize, usize),
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let geom = crate::conv::conv_transpose2d_geom(
            &[1, c_in, h_in, w_in],
            &[c_in, c_out, kernel, kernel],
            stride,
            padding,
            0,
        )?;
        Ok(Self { geom })
    }

    /// `(c_in, h_in, w_in)`.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        let g = &self.geom;
        (g.c_small, g.h_small, g.w_small)
    }

    /// `(c_out, h_out, w_out)`.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        let g = &self.geom;
        (g.c_big, g.h_big, g.w_big)
    }

    /// Elements of one input image.
    pub fn input_len(&self) -> usize {
        self.geom.small_len()
    }

    /// Elements of one output image.
    pub fn output_len(&self) -> usize {
        self.geom.big_len()
    }

    /// Elements of the weight, `c_in * c_out * k * k`.
    pub fn weight_len(&self) -> usize {
        self.geom.c_small * self.geom.k_cols()
    }

    /// Multiply-adds of one image's forward pass (the input gradient costs the same).
    pub fn macs_per_image(&self) -> usize {
        self.weight_len() * self.geom.p_small()
    }

    fn batch(&self, n: usize) -> ConvGeom {
        ConvGeom { n, ..self.geom }
    }

    fn check(&self, what: &str, n: usize, x: &[f32], x_len: usize, w: &[f32]) -> Result<()> {
        if x.len() != n * x_len {
            bail!(
                "TransposedConv::{what}: input of {} floats, expected {n} images of {x_len}",
                x.len()
            );
        }
        if w.len() != self.weight_len() {
            bail!(
                "TransposedConv::{what}: weight of {} floats, expected {} (c_in, c_out, k, k) = {:?}",
                w.len(),
                self.weight_len(),
                (self.geom.c_small, self.geom.c_big, self.geom.kh, self.geom.kw)
            );
        }
        Ok(())
    }

    /// `y = conv_transpose2d(x, w) + bias` for `n` images: `x: (n, c_in, h_in, w_in)`, result
    /// `(n, c_out, h_out, w_out)`.
    ///
    /// # Errors
    /// Slice lengths that do not match the geometry (or a bias not of `c_out` values).
    pub fn forward(
        &self,
        n: usize,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let mut y = cpu::out_buffer(n * self.output_len());
        self.forward_into(n, x, w, bias, &mut y)?;
        Ok(y)
    }

    /// [`TransposedConv::forward`] into `y` (`n` output images; every element overwritten), for
    /// loops that allocate their buffers once.
    ///
    /// # Errors
    /// As [`TransposedConv::forward`], or a `y` of the wrong length.
    pub fn forward_into(
        &self,
        n: usize,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        self.check("forward", n, x, self.input_len(), w)?;
        self.check_out("forward", n, y, self.output_len())?;
        if let Some(b) = bias {
            if b.len() != self.geom.c_big {
                bail!(
                    "TransposedConv::forward: bias of {} floats, expected c_out = {}",
                    b.len(),
                    self.geom.c_big
                );
            }
        }
        if n > 0 {
            cpu::big_from_small_into(&self.batch(n), x, w, bias, y);
        }
        Ok(())
    }

    /// The gradient with respect to the input, `dL/dx = conv2d(dL/dy, w)`: `gy: (n, c_out,
    /// h_out, w_out)`, result `(n, c_in, h_in, w_in)`.
    ///
    /// # Errors
    /// Slice lengths that do not match the geometry.
    pub fn input_grad(&self, n: usize, gy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let mut gx = cpu::out_buffer(n * self.input_len());
        self.input_grad_into(n, gy, w, &mut gx)?;
        Ok(gx)
    }

    /// [`TransposedConv::input_grad`] into `gx` (`n` input images; every element overwritten).
    ///
    /// # Errors
    /// As [`TransposedConv::input_grad`], or a `gx` of the wrong length.
    pub fn input_grad_into(&self, n: usize, gy: &[f32], w: &[f32], gx: &mut [f32]) -> Result<()> {
        self.check("input_grad", n, gy, self.output_len(), w)?;
        self.check_out("input_grad", n, gx, self.input_len())?;
        if n > 0 {
            cpu::small_from_big_into(&self.batch(n), gy, w, None, gx);
        }
        Ok(())
    }

    fn check_out(&self, what: &str, n: usize, out: &[f32], len: usize) -> Result<()> {
        if out.len() != n * len {
            bail!(
                "TransposedConv::{what}: output buffer of {} floats, expected {n} images of {len}",
                out.len()
            );
        }
        Ok(())
    }
}

/// `dst (m, n) = lhs (m, k) · rhs (k, n)`, row-major, overwriting `dst`; `lhs_t` / `rhs_t` read
/// the stored matrix transposed (`lhs` stored `(k, m)`, `rhs` stored `(n, k)`). Single-threaded:
/// for the small dense layers (a decoder's first layer, a discriminator) inside a loop that is
/// parallel already.
///
/// # Errors
/// Slices shorter than the shapes.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
) -> Result<()> {
    if dst.len() < m * n || lhs.len() < m * k || rhs.len() < k * n {
        bail!(
            "matmul: ({m}, {k}) x ({k}, {n}) needs {} / {} / {} floats, found lhs {}, rhs {}, dst {}",
            m * k,
            k * n,
            m * n,
            lhs.len(),
            rhs.len(),
            dst.len()
        );
    }
    cpu::sgemm(m, n, k, dst, lhs, lhs_t, rhs, rhs_t, Parallelism::None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn transposed_conv_matches_the_candle_op_and_its_input_gradient() {
        let dev = Device::Cpu;
        // The MNIST decoder's second layer (Table 9): 32 -> 32 channels, 4x4 -> 11x11.
        let tc = TransposedConv::new((32, 4, 4), 32, 5, 2, 0).unwrap();
        assert_eq!(tc.output_shape(), (32, 11, 11));
        let x = Tensor::randn(0f32, 1., (3, 32, 4, 4), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (32, 32, 5, 5), &dev).unwrap();
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = tc.forward(3, &xv, &wv, None).unwrap();
        let want = x.conv_transpose2d(&w, 0, 0, 2, 1).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "forward differs by {err}");
        let gy = Tensor::randn(0f32, 1., (3, 32, 11, 11), &dev).unwrap();
        let gyv = gy.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gx = tc.input_grad(3, &gyv, &wv).unwrap();
        let want = gy.conv2d(&w, 0, 2, 1, 1).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = gx
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "input gradient differs by {err}");
        let bad = tc.forward(2, &xv, &wv, None).unwrap_err().to_string();
        assert!(bad.contains("expected 2 images"), "{bad}");
        // Into a reused buffer: the same values, whatever the buffer held before.
        let mut buf = vec![f32::NAN; y.len()];
        tc.forward_into(3, &xv, &wv, None, &mut buf).unwrap();
        assert_eq!(buf, y);
        let mut gbuf = vec![7.0; gx.len()];
        tc.input_grad_into(3, &gyv, &wv, &mut gbuf).unwrap();
        assert_eq!(gbuf, gx);
        let bad = tc
            .forward_into(3, &xv, &wv, None, &mut buf[1..])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("output buffer"), "{bad}");
    }

    #[test]
    fn matmul_reads_transposes_and_checks_lengths() {
        // (2, 3) x (3, 2), rhs stored transposed as (2, 3).
        let lhs = [1., 2., 3., 4., 5., 6.];
        let rhs_t = [1., 0., 1., 0., 1., 0.];
        let mut dst = [0f32; 4];
        matmul((2, 2, 3), &mut dst, &lhs, false, &rhs_t, true).unwrap();
        assert_eq!(dst, [4., 2., 10., 5.]);
        assert!(matmul((2, 2, 4), &mut dst, &lhs, false, &rhs_t, true).is_err());
    }
}
