//! Host <-> device copies, counted.
//!
//! On a GPU, every read of a tensor's values into host memory (`to_vec1`, `to_scalar`, ...) and
//! every tensor built from host values (`Tensor::new`, `from_vec`, `from_slice`) is a
//! synchronising transfer. One per batch is free; one per step of a hot loop (the 49 Adam
//! updates of ABS-style inference, the steps of PGD) stalls the device every step. Candle has no
//! hook to observe them, so the crates with hot loops (`eabs-core`, `eabs-models`,
//! `eabs-inference`, `eabs-attacks`) make every such copy through this module, which counts
//! them; `clippy.toml` bans the direct Candle calls there (`clippy::disallowed_methods`), so no
//! copy escapes the count. Tests then run a loop with few and with many steps, on the CPU, and
//! require equal counts (`crates/inference/tests/host_transfers.rs`): a loop that copied per
//! step on the CPU would do so on a GPU too, since the code path is the same.
//!
//! The counters are process-wide and relaxed atomics (a few nanoseconds per copy); read them
//! with [`transfers`] before and after the code of interest, in a test binary that runs nothing
//! else concurrently.
#![allow(clippy::disallowed_methods)] // the one place the counted calls are made

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, NdArray, Result, Shape, Tensor, WithDType};

static DOWNLOADS: AtomicU64 = AtomicU64::new(0);
static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// Copies made so far by this process, through this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfers {
    /// Reads of tensor values into host memory.
    pub downloads: u64,
    /// Tensors built from host values.
    pub uploads: u64,
}

impl Transfers {
    /// Copies made between `earlier` and `self`.
    pub fn since(self, earlier: Transfers) -> Transfers {
        Transfers {
            downloads: self.downloads - earlier.downloads,
            uploads: self.uploads - earlier.uploads,
        }
    }

    /// Downloads plus uploads.
    pub fn total(self) -> u64 {
        self.downloads + self.uploads
    }
}

/// The counts so far.
pub fn transfers() -> Transfers {
    Transfers {
        downloads: DOWNLOADS.load(Ordering::Relaxed),
        uploads: UPLOADS.load(Ordering::Relaxed),
    }
}

fn download() {
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
}

fn upload() {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
}

/// Counted reads of a tensor's values: Candle's `to_vec1`, `to_vec2`, `to_vec3` and
/// `to_scalar` under `host_` names.
pub trait HostRead {
    /// `Tensor::to_vec1`, counted.
    fn host_vec1<T: WithDType>(&self) -> Result<Vec<T>>;
    /// `Tensor::to_vec2`, counted.
    fn host_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>>;
    /// `Tensor::to_vec3`, counted.
    fn host_vec3<T: WithDType>(&self) -> Result<Vec<Vec<Vec<T>>>>;
    /// `Tensor::to_scalar`, counted.
    fn host_scalar<T: WithDType>(&self) -> Result<T>;
}

impl HostRead for Tensor {
    fn host_vec1<T: WithDType>(&self) -> Result<Vec<T>> {
        download();
        self.to_vec1()
    }
    fn host_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        download();
        self.to_vec2()
    }
    fn host_vec3<T: WithDType>(&self) -> Result<Vec<Vec<Vec<T>>>> {
        download();
        self.to_vec3()
    }
    fn host_scalar<T: WithDType>(&self) -> Result<T> {
        download();
        self.to_scalar()
    }
}

/// `Tensor::new`, counted.
pub fn new<A: NdArray>(array: A, device: &Device) -> Result<Tensor> {
    upload();
    Tensor::new(array, device)
}

/// `Tensor::from_vec`, counted.
pub fn from_vec<S: Into<Shape>, D: WithDType>(
    data: Vec<D>,
    shape: S,
    device: &Device,
) -> Result<Tensor> {
    upload();
    Tensor::from_vec(data, shape, device)
}

/// `Tensor::from_slice`, counted.
pub fn from_slice<S: Into<Shape>, D: WithDType>(
    data: &[D],
    shape: S,
    device: &Device,
) -> Result<Tensor> {
    upload();
    Tensor::from_slice(data, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_is_counted_once() -> Result<()> {
        let before = transfers();
        let t = from_vec(vec![1f32, 2.0, 3.0], 3, &Device::Cpu)?;
        let s = new(2f32, &Device::Cpu)?;
        let m = from_slice(&[1f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu)?;
        assert_eq!(t.host_vec1::<f32>()?, [1.0, 2.0, 3.0]);
        assert_eq!(s.host_scalar::<f32>()?, 2.0);
        assert_eq!(m.host_vec2::<f32>()?, [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(m.unsqueeze(0)?.host_vec3::<f32>()?.len(), 1);
        let d = transfers().since(before);
        // Other tests of this binary may copy concurrently: at least ours are counted.
        assert!(d.uploads >= 3 && d.downloads >= 4, "{d:?}");
        Ok(())
    }
}
