//! Small tensor helpers shared by the attacks: row selection, per-sample noise from the streams
//! of [`crate::seeding`], and model calls with their shapes checked. Private to the crate; the
//! seeding that code outside shares is public in [`crate::seeding`].

use candle_core::{DType, Device, Tensor, D};
use eabs_core::host::{self, HostRead};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use eabs_core::{Classifier, Differentiable, LossFn};

/// Standard normal noise, `(rngs.len(), dim)`, row `i` drawn from `rngs[i]`.
pub(crate) fn normal_rows(rngs: &mut [ChaCha8Rng], dim: usize, device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(rngs.len() * dim);
    for rng in rngs.iter_mut() {
        for _ in 0..dim {
            let v: f32 = StandardNormal.sample(rng);
            data.push(v);
        }
    }
    Ok(host::from_vec(data, (rngs.len(), dim), device)?)
}

/// Uniform noise in `[lo, hi)`, `(rngs.len(), dim)`, row `i` drawn from `rngs[i]`.
pub(crate) fn uniform_rows(
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
    Ok(host::from_vec(data, (rngs.len(), dim), device)?)
}

/// `(b, 1)` column tensor of per-sample scalars, in `dtype` on `device`.
pub(crate) fn column(values: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(host::from_vec(values.to_vec(), (values.len(), 1), device)?.to_dtype(dtype)?)
}

/// A `(b,)` or `(b, 1)` tensor as `Vec<f64>`.
pub(crate) fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.host_vec1::<f64>()?)
}

/// Per-row L2 norms of a `(b, d)` tensor as a `(b, 1)` tensor.
pub(crate) fn l2_rows(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// Rows of `(b, ...)` tensors: `mask[i] ? a[i] : b[i]`.
pub(crate) fn where_rows(mask: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = a.dims().to_vec();
    let mut mshape = vec![1usize; dims.len()];
    mshape[0] = mask.len();
    let m: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    let m = host::from_vec(m, mshape, a.device())?.broadcast_as(dims)?;
    Ok(m.where_cond(a, b)?)
}

/// Selects rows `idx` of `t`.
pub(crate) fn take_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let ids = host::new(ids.as_slice(), t.device())?;
    Ok(t.index_select(&ids, 0)?)
}

/// Returns `full` with rows `idx` replaced by the rows of `sub` (in order).
pub(crate) fn put_rows(full: &Tensor, sub: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if idx.is_empty() {
        return Ok(full.clone());
    }
    let n = full.dim(0)?;
    let mut map: Vec<u32> = (0..n as u32).collect();
    for (j, &i) in idx.iter().enumerate() {
        map[i] = (n + j) as u32;
    }
    let both = Tensor::cat(&[full, sub], 0)?;
    let map = host::new(map.as_slice(), full.device())?;
    Ok(both.index_select(&map, 0)?)
}

/// Calls the model and checks that the logits are `(batch, n_classes)`.
pub(crate) fn checked_logits<M: Classifier + ?Sized>(model: &M, xs: &Tensor) -> Result<Tensor> {
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
pub(crate) fn checked_value_and_grad<M: Differentiable + ?Sized>(
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
pub(crate) fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .host_vec1::<u32>()?)
}

/// `value_and_grad` plus the logits at `xs`, saving a forward pass where possible: the loss
/// closure records the logits it is given, and if the model called it exactly once on a
/// `(batch, n_classes)` tensor (Candle autodiff, or an override such as E-ABS's eq. (8) that
/// evaluates the loss once), those logits are returned. Otherwise (EOT, estimated gradients:
/// several calls) the model's `logits` is called.
pub(crate) fn value_grad_logits<M: Differentiable + ?Sized>(
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

    /// `logits = 2 xs` on 2 features and 2 classes, counting calls of `logits`.
    struct Doubling {
        calls: std::cell::Cell<usize>,
        device: Device,
    }

    impl Classifier for Doubling {
        fn bounds(&self) -> eabs_core::Bounds {
            eabs_core::Bounds::UNIT
        }
        fn n_classes(&self) -> usize {
            2
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
            self.calls.set(self.calls.get() + 1);
            xs * 2.0
        }
    }

    impl Differentiable for Doubling {}

    #[test]
    fn logits_are_reused_only_when_the_loss_ran_once() -> Result<()> {
        let model = Doubling {
            calls: std::cell::Cell::new(0),
            device: Device::Cpu,
        };
        let xs = host::new(&[[0.25f32, 0.5], [1.0, 0.0]], &Device::Cpu)?;
        let want = vec![vec![0.5f32, 1.0], vec![2.0, 0.0]];
        let loss = |l: &Tensor| l.sum(1);
        // Plain autodiff: one loss call on the logits, which are reused (one forward pass).
        let (_, _, logits) = value_grad_logits(&model, &xs, &loss)?;
        assert_eq!(logits.host_vec2::<f32>()?, want);
        assert_eq!(model.calls.get(), 1);
        // EOT: three loss calls, so the model is asked for its logits again.
        let eot = crate::eot::Eot::new(&model, 3)?;
        model.calls.set(0);
        let (_, _, logits) = value_grad_logits(&eot, &xs, &loss)?;
        assert_eq!(logits.host_vec2::<f32>()?, want);
        assert!(model.calls.get() > 3, "{} calls", model.calls.get());
        Ok(())
    }

    #[test]
    fn row_selection_helpers() {
        let full = host::new(&[[0f32], [1.0], [2.0]], &Device::Cpu).unwrap();
        let sub = host::new(&[[9f32], [8.0]], &Device::Cpu).unwrap();
        let out = put_rows(&full, &sub, &[2, 0])
            .unwrap()
            .host_vec2::<f32>()
            .unwrap();
        assert_eq!(out, vec![vec![8.0], vec![1.0], vec![9.0]]);
        assert_eq!(
            take_rows(&full, &[2, 1])
                .unwrap()
                .host_vec2::<f32>()
                .unwrap(),
            vec![vec![2.0], vec![1.0]]
        );
        let w = where_rows(&[true, false, true], &full, &full.zeros_like().unwrap()).unwrap();
        assert_eq!(
            w.host_vec2::<f32>().unwrap(),
            vec![vec![0.0], vec![0.0], vec![2.0]]
        );
    }
}
