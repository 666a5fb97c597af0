//! Named parameters and buffers, seeded initialisation, and the seed-derivation scheme.
//!
//! Candle's `VarMap` initialises with `Tensor::randn`, which draws from the thread RNG: runs would
//! not repeat. We keep our own ordered store (names = checkpoint keys) and initialise every tensor
//! from a ChaCha stream, so a model built from a seed is bit-identical on every CPU run.

use eabs_core::host;
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Random stream purposes; mixed into [`derive_rng`] so that streams never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Weight initialisation.
    Init = 1,
    /// Per-epoch shuffling.
    Shuffle = 2,
    /// Per-batch Gaussian-noise augmentation.
    Noise = 3,
    /// Per-batch training randomness: reparameterisation, prior samples, dropout.
    Step = 4,
    /// Adversarial-example generation (PGD random starts).
    Attack = 5,
    /// Per-batch dropout masks.
    Dropout = 6,
    /// Randomness of the validator that selects checkpoints (e.g. the candidates and noise of
    /// ABS-style inference): one fixed seed for every epoch, so epochs are compared on the same
    /// draws.
    Validation = 7,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Derives a seed from `(seed, stream, epoch, batch)`. Every per-epoch / per-batch random choice
/// is drawn from its own derived stream, so a run resumed at epoch `e` draws exactly what an
/// uninterrupted run draws there (the resume guarantee).
pub fn derive_seed(seed: u64, stream: Stream, epoch: u64, batch: u64) -> u64 {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ stream as u64);
    h = splitmix64(h ^ epoch);
    splitmix64(h ^ batch)
}

/// A ChaCha8 generator seeded with [`derive_seed`].
pub fn derive_rng(seed: u64, stream: Stream, epoch: u64, batch: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, stream, epoch, batch))
}

/// `n` standard normal f32 samples.
pub fn normal_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// A tensor of standard normal samples.
pub fn randn(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.iter().product();
    host::from_vec(normal_vec(rng, n), shape, device)
}

/// Ordered store of trainable parameters and non-trainable buffers (BatchNorm running
/// statistics). Names are the checkpoint's tensor names.
#[derive(Debug, Clone)]
pub struct ParamStore {
    device: Device,
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    rng: ChaCha8Rng,
}

impl ParamStore {
    /// An empty store whose initialisations draw from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            device: device.clone(),
            params: BTreeMap::new(),
            buffers: BTreeMap::new(),
            rng: derive_rng(seed, Stream::Init, 0, 0),
        }
    }

    /// Device of every tensor.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A parameter drawn from `U(-bound, bound)`: PyTorch's default initialisation for linear and
    /// conv layers, with `bound = 1 / sqrt(fan_in)` (our decision: the authors' framework default).
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f64,
    ) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| ((self.rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
            .collect();
        self.insert_param(name, host::from_vec(data, shape, &self.device)?)
    }

    /// A parameter filled with `value`.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f64,
    ) -> candle_core::Result<Tensor> {
        let t = (Tensor::ones(shape, candle_core::DType::F32, &self.device)? * value)?;
        self.insert_param(name, t)
    }

    /// A buffer (not trained) filled with `value`; returned as the `Var` so it can be updated.
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f64) -> candle_core::Result<Var> {
        let t = (Tensor::ones(shape, candle_core::DType::F32, &self.device)? * value)?;
        if self.params.contains_key(name) || self.buffers.contains_key(name) {
            candle_core::bail!("duplicate tensor name `{name}`");
        }
        let v = Var::from_tensor(&t)?;
        self.buffers.insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn insert_param(&mut self, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
        if self.params.contains_key(name) || self.buffers.contains_key(name) {
            candle_core::bail!("duplicate tensor name `{name}`");
        }
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        self.params.insert(name.to_string(), v);
        Ok(out)
    }

    /// Trainable parameters, sorted by name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Buffers, sorted by name.
    pub fn buffers(&self) -> &BTreeMap<String, Var> {
        &self.buffers
    }

    /// Parameters whose name starts with `prefix`, sorted by name.
    pub fn params_with_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.params
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Parameters whose name does not start with `prefix`, sorted by name.
    pub fn params_without_prefix(&self, prefix: &str) -> Vec<(String, Var)> {
        self.params
            .iter()
            .filter(|(n, _)| !n.starts_with(prefix))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Every tensor (parameters and buffers), sorted by name.
    pub fn all(&self) -> BTreeMap<String, Var> {
        let mut m = self.params.clone();
        m.extend(self.buffers.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }

    /// Total number of trainable scalars.
    pub fn n_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }
}
