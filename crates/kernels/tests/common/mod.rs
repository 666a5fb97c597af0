//! Shared test helpers: seeded random tensors, the layers of Table 9, and a strict comparison.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform values in `[-1, 1)` from a seeded ChaCha stream.
pub fn uniform(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Whether a layer is a convolution or a transposed convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `conv2d`, weight `(c_out, c_in, k, k)`.
    Conv,
    /// `conv_transpose2d`, weight `(c_in, c_out, k, k)`.
    ConvT,
}

/// One layer of Table 9 with the input side it sees.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub name: &'static str,
    pub kind: Kind,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_pad: usize,
    pub side: usize,
}

impl Layer {
    pub fn weight_shape(&self) -> [usize; 4] {
        match self.kind {
            Kind::Conv => [self.c_out, self.c_in, self.k, self.k],
            Kind::ConvT => [self.c_in, self.c_out, self.k, self.k],
        }
    }

    pub fn out_side(&self) -> usize {
        match self.kind {
            Kind::Conv => (self.side + 2 * self.pad - self.k) / self.stride + 1,
            Kind::ConvT => (self.side - 1) * self.stride + self.k + self.out_pad - 2 * self.pad,
        }
    }

    /// Our op.
    pub fn ours(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        match self.kind {
            Kind::Conv => eabs_kernels::conv2d(x, w, b, self.stride, self.pad),
            Kind::ConvT => {
                eabs_kernels::conv_transpose2d(x, w, b, self.stride, self.pad, self.out_pad)
            }
        }
    }

    /// Candle's own op (any dtype), bias added by broadcasting.
    pub fn candle(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = match self.kind {
            Kind::Conv => x.conv2d(w, self.pad, self.stride, 1, 1)?,
            Kind::ConvT => x.conv_transpose2d(w, self.pad, self.out_pad, self.stride, 1)?,
        };
        match b {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
            None => Ok(y),
        }
    }
}

pub const fn conv(
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    side: usize,
) -> Layer {
    Layer {
        name,
        kind: Kind::Conv,
        c_in,
        c_out,
        k,
        stride,
        pad,
        out_pad: 0,
        side,
    }
}

#[allow(clippy::too_many_arguments)]
pub const fn convt(
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out_pad: usize,
    side: usize,
) -> Layer {
    Layer {
        name,
        kind: Kind::ConvT,
        c_in,
        c_out,
        k,
        stride,
        pad,
        out_pad,
        side,
    }
}

/// Every convolution of Table 9 (encoders: 28 -> 14 -> 7 -> 4 -> 3 for MNIST, 32 -> 16 -> 8 -> 4
/// -> 1 for the colour datasets; decoders from a 1x1 latent back to the image; the last "1x1"
/// decoder layer as a transposed convolution).
pub const TABLE9: &[Layer] = &[
    conv("mnist enc1", 1, 16, 5, 2, 2, 28),
    conv("mnist enc2", 16, 32, 5, 2, 2, 14),
    conv("mnist enc3", 32, 64, 5, 2, 2, 7),
    conv("mnist enc4", 64, 64, 4, 1, 1, 4),
    convt("mnist dec1", 10, 32, 4, 1, 0, 0, 1),
    convt("mnist dec2", 32, 32, 5, 2, 0, 0, 4),
    convt("mnist dec3", 32, 16, 5, 2, 0, 0, 11),
    convt("mnist dec4", 16, 8, 4, 1, 0, 0, 25),
    convt("mnist dec5", 8, 1, 1, 1, 0, 0, 28),
    conv("svhn enc1", 3, 32, 5, 2, 2, 32),
    conv("svhn enc2", 32, 64, 5, 2, 2, 16),
    conv("svhn enc3", 64, 128, 5, 2, 2, 8),
    conv("svhn enc4", 128, 128, 4, 1, 0, 4),
    convt("svhn dec1", 40, 64, 4, 1, 0, 0, 1),
    convt("svhn dec2", 64, 64, 4, 2, 1, 0, 4),
    convt("svhn dec3", 64, 32, 4, 2, 1, 0, 8),
    convt("svhn dec4", 32, 16, 4, 2, 1, 0, 16),
    convt("svhn dec5", 16, 3, 1, 1, 0, 0, 32),
    conv("traffic enc1", 3, 16, 5, 2, 2, 32),
    conv("traffic enc2", 16, 32, 5, 2, 2, 16),
    conv("traffic enc3", 32, 64, 5, 2, 2, 8),
    conv("traffic enc4", 64, 128, 4, 1, 0, 4),
    convt("traffic dec1", 16, 64, 4, 1, 0, 0, 1),
    convt("traffic dec2", 64, 64, 4, 2, 1, 0, 4),
    convt("traffic dec3", 64, 32, 4, 2, 1, 0, 8),
    convt("traffic dec4", 32, 16, 4, 2, 1, 0, 16),
    convt("traffic dec5", 16, 3, 1, 1, 0, 0, 32),
];

/// Asserts equal shapes, all values finite (kernel outputs are NaN-poisoned in debug builds, so
/// this catches unwritten elements), and `max |a - b| / max |b| < tol`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g: Vec<f64> = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f64> = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        g.iter().all(|v| v.is_finite()),
        "{what}: non-finite value in the result (unwritten element?)"
    );
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = g
        .iter()
        .zip(&w)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err / scale < tol,
        "{what}: relative error {:.3e} >= {tol:e} (max |diff| {err:.3e}, scale {scale:.3e})",
        err / scale
    );
}
