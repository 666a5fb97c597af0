//! Small tensor and randomness helpers shared by the attacks.
//!
//! # Per-sample random streams
//! Every random choice of an attack (random starts, noise, proposals, estimator directions) is
//! drawn from a ChaCha8 stream owned by one sample and seeded from `(seed, hash of the sample's
//! values)`. A sample therefore gets the same random numbers whatever its position in the batch
//! and whatever the batch size, so results do not depend on how a data set is split into batches
//! (beyond what the model itself does), and no sample index has to be threaded through the API.
//! Two bit-identical inputs get the same stream, which is harmless: they are the same question.

use candle_core::{DType, Device, Tensor, D};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use eabs_core::{Classifier, Differentiable, LossFn};

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of the random stream of one sample: `seed` mixed with a hash of the sample's f32 bits.
pub fn sample_seed(seed: u64, row: &[f32]) -> u64 {
    // FNV-1a over the bit patterns, then SplitMix with the user seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in row {
        // Normalise -0.0 to 0.0 so that equal values hash equally.
        let bits = if *v == 0.0 { 0 } else { v.to_bits() };
        h ^= u64::from(bits);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(mix(seed) ^ h)
}

/// One ChaCha8 stream per sample of `xs` (any shape with the batch first); see the module docs.
pub fn sample_rngs(seed: u64, xs: &Tensor) -> Result<Vec<ChaCha8Rng>> {
    let rows = flat_rows_f32(xs)?;
    Ok(rows
        .iter()
        .map(|r| ChaCha8Rng::seed_from_u64(sample_seed(seed, r)))
        .collect())
}

/// The rows of `xs` flattened to `Vec<f32>` each.
pub fn flat_rows_f32(xs: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(xs.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Standard normal noise, `(rngs.len(), dim)`, row `i` drawn from `rngs[i]`.
pub fn normal_rows(rngs: &mut [ChaCha8Rng], dim: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(rngs.len() * dim);
    for rng in rngs.iter_mut() {
        for _ in 0..dim {
            let v: f32 = StandardNormal.sample(rng);
            data.push(v);
        }
    }
    Ok(Tensor::from_vec(data, (rngs.len(), dim), device)?)
}

/// Uniform noise in `[lo, hi)`, `(rngs.len(), dim)`, row `i` drawn from `rngs[i]`.
pub fn uniform_rows(
    rngs: &mut [ChaCha8Rng],
    dim: usize,
    lo: f64,
    hi: f64,
    device: &Device,
) -> Result<Tensor> {
    let mut data = Vec::with_capacity(rngs.len() * dim);
    for rng in rngs.iter_mut() {
        for _ in 0..dim {
            let u: f64 = rng.random();
            data.push((lo + (hi - lo) * u) as f32);
        }
    }
    Ok(Tensor::from_vec(data, (rngs.len(), dim), device)?)
}

/// `(b, 1)` column tensor of per-sample scalars, in `dtype` on `device`.
pub fn column(values: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(values.to_vec(), (values.len(), 1), device)?.to_dtype(dtype)?)
}

/// A `(b,)` or `(b, 1)` tensor as `Vec<f64>`.
pub fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Per-row L2 norms of a `(b, d)` tensor as a `(b, 1)` tensor.
pub fn l2_rows(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// Rows of `(b, ...)` tensors: `mask[i] ? a[i] : b[i]`.
pub fn where_rows(mask: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = a.dims().to_vec();
    let mut mshape = vec![1usize; dims.len()];
    mshape[0] = mask.len();
    let m: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    let m = Tensor::from_vec(m, mshape, a.device())?.broadcast_as(dims)?;
    Ok(m.where_cond(a, b)?)
}

/// Selects rows `idx` of `t`.
pub fn take_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let ids = Tensor::new(ids.as_slice(), t.device())?;
    Ok(t.index_select(&ids, 0)?)
}

/// Returns `full` with rows `idx` replaced by the rows of `sub` (in order).
pub fn put_rows(full: &Tensor, sub: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if idx.is_empty() {
        return Ok(full.clone());
    }
    let n = full.dim(0)?;
    let mut map: Vec<u32> = (0..n as u32).collect();
    for (j, &i) in idx.iter().enumerate() {
        map[i] = (n + j) as u32;
    }
    let both = Tensor::cat(&[full, sub], 0)?;
    let map = Tensor::new(map.as_slice(), full.device())?;
    Ok(both.index_select(&map, 0)?)
}

/// Calls the model and checks that the logits are `(batch, n_classes)`.
pub fn checked_logits<M: Classifier + ?Sized>(model: &M, xs: &Tensor) -> Result<Tensor> {
    let batch = xs.dim(0)?;
    let logits = model.logits(xs)?;
    if logits.dims() != [batch, model.n_classes()] {
        return Err(Error::LogitsShape {
            found: logits.dims().to_vec(),
            batch,
            n_classes: model.n_classes(),
        });
    }
    Ok(logits)
}

/// Calls `value_and_grad` and checks both shapes: value `(batch,)` and grad shaped like `xs`.
pub fn checked_value_and_grad<M: Differentiable + ?Sized>(
    model: &M,
    xs: &Tensor,
    loss: &LossFn<'_>,
) -> Result<(Tensor, Tensor)> {
    let (value, grad) = model.value_and_grad(xs, loss)?;
    if grad.dims() != xs.dims() {
        return Err(Error::GradShape {
            found: grad.dims().to_vec(),
            expected: xs.dims().to_vec(),
        });
    }
    let batch = xs.dim(0)?;
    if value.elem_count() != batch {
        return Err(Error::Shape {
            argument: "loss value",
            found: value.dims().to_vec(),
            expected: format!("({batch},)"),
        });
    }
    Ok((value.flatten_all()?, grad))
}

/// Class indices of the largest logits, `Vec<u32>`.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?)
}

/// `value_and_grad` plus the logits at `xs`, saving a forward pass where possible: the loss
/// closure records the logits it is given, and if the model called it exactly once on a
/// `(batch, n_classes)` tensor (Candle autodiff, or an override such as E-ABS's eq. (8) that
/// evaluates the loss once), those logits are returned. Otherwise (EOT, estimated gradients:
/// several calls) the model's `logits` is called.
pub fn value_grad_logits<M: Differentiable + ?Sized>(
    model: &M,
    xs: &Tensor,
    loss: &LossFn<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let seen = std::cell::RefCell::new((0usize, None::<Tensor>));
    let recording = |l: &Tensor| -> candle_core::Result<Tensor> {
        let mut s = seen.borrow_mut();
        s.0 += 1;
        s.1 = Some(l.detach());
        drop(s);
        loss(l)
    };
    let (value, grad) = checked_value_and_grad(model, xs, &recording)?;
    let (calls, logits) = seen.into_inner();
    let batch = xs.dim(0)?;
    let logits = match logits {
        Some(l) if calls == 1 && l.dims() == [batch, model.n_classes()] => l,
        _ => checked_logits(model, xs)?,
    };
    Ok((value, grad, logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_on_content_not_position() {
        assert_eq!(sample_seed(1, &[0.5, 0.0]), sample_seed(1, &[0.5, -0.0]));
        assert_ne!(sample_seed(1, &[0.5, 0.0]), sample_seed(2, &[0.5, 0.0]));
        assert_ne!(sample_seed(1, &[0.5, 0.0]), sample_seed(1, &[0.0, 0.5]));
        let xs = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.4]], &Device::Cpu).unwrap();
        let swapped = Tensor::new(&[[0.3f32, 0.4], [0.1, 0.2]], &Device::Cpu).unwrap();
        let mut a = sample_rngs(7, &xs).unwrap();
        let mut b = sample_rngs(7, &swapped).unwrap();
        let na = normal_rows(&mut a, 3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let nb = normal_rows(&mut b, 3, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(na[0], nb[1]);
        assert_eq!(na[1], nb[0]);
    }

    #[test]
    fn row_selection_helpers() {
        let full = Tensor::new(&[[0f32], [1.0], [2.0]], &Device::Cpu).unwrap();
        let sub = Tensor::new(&[[9f32], [8.0]], &Device::Cpu).unwrap();
        let out = put_rows(&full, &sub, &[2, 0])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(out, vec![vec![8.0], vec![1.0], vec![9.0]]);
        assert_eq!(
            take_rows(&full, &[2, 1]).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2.0], vec![1.0]]
        );
        let w = where_rows(&[true, false, true], &full, &full.zeros_like().unwrap()).unwrap();
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![0.0], vec![0.0], vec![2.0]]
        );
    }
}
