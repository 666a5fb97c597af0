//! Access to the f32 data behind Candle's CPU storage, for any layout.
//!
//! Custom ops receive raw storage plus a [`Layout`] that may be strided (a transposed or narrowed
//! view, a broadcast bias). Contiguous data is borrowed without a copy; anything else is gathered
//! once into a dense buffer, so every kernel can assume dense row-major NCHW.
use std::borrow::Cow;

use candle_core::{bail, CpuStorage, Device, Layout, Result, Shape, Storage, Tensor};

/// Dense row-major view of `storage` under `layout`, borrowed when already contiguous.
///
/// `what` names the argument in errors (`"conv2d: weight"`).
pub(crate) fn dense_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!(
            "{what}: expected dtype f32, found {:?}",
            candle_core::backend::BackendStorage::dtype(other)
        ),
    };
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    Ok(Cow::Owned(gather(data, layout)))
}

/// Copies a strided view into a dense buffer (odometer over the dimensions).
fn gather(data: &[f32], layout: &Layout) -> Vec<f32> {
    let dims = layout.dims();
    let strides = layout.stride();
    let n: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = dims.len();
    let mut idx = vec![0usize; rank];
    let mut offset = layout.start_offset();
    for _ in 0..n {
        out.push(data[offset]);
        // Increment the multi-index, last dimension fastest.
        for d in (0..rank).rev() {
            idx[d] += 1;
            offset += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            offset -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
    out
}

/// Runs `f` on the dense f32 data of a CPU tensor (used in `bwd`, where we hold tensors).
pub(crate) fn with_f32<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => {
            let data = dense_f32(cpu, layout, what)?;
            f(&data)
        }
        _ => bail!(
            "{what}: expected a cpu tensor, found one on {:?}",
            t.device().location()
        ),
    }
}

/// Wraps a kernel's output as a CPU tensor (untracked: gradients are not differentiated again).
pub(crate) fn cpu_tensor(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_transposed_and_narrowed_views() -> Result<()> {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((2, 3, 4))?;
        for view in [
            t.transpose(0, 2)?,
            t.narrow(2, 1, 2)?,
            t.narrow(1, 1, 2)?.transpose(1, 2)?,
            t.clone(),
        ] {
            let want: Vec<f32> = view.flatten_all()?.to_vec1()?;
            let got = with_f32(&view, "view", |d| Ok(d.to_vec()))?;
            assert_eq!(got, want);
        }
        Ok(())
    }

    #[test]
    fn rejects_other_dtypes_by_name() {
        let t = Tensor::zeros((2, 2), candle_core::DType::F64, &Device::Cpu).unwrap();
        let err = with_f32(&t, "conv2d: input", |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conv2d: input") && err.contains("F64"),
            "{err}"
        );
    }
}
