//! Per-sample random streams: how every attack seeds its randomness, public so that code around
//! the attacks (e.g. picking Boundary starting points for an evaluation) draws the same way.
//!
//! Every random choice of an attack (random starts, noise, proposals, estimator directions) is
//! drawn from a ChaCha8 stream owned by one sample and seeded from `(seed, hash of the sample's
//! values)`. A sample therefore gets the same random numbers whatever its position in the batch
//! and whatever the batch size, so results do not depend on how a data set is split into batches
//! (beyond what the model itself does), and no sample index has to be threaded through the API.
//! Two bit-identical inputs get the same stream, which is harmless: they are the same question.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use eabs_attacks::seeding::{flat_rows_f32, sample_seed, sample_seeds};
//!
//! let xs = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.4]], &Device::Cpu)?; // (batch 2, 2 values)
//! let swapped = Tensor::new(&[[0.3f32, 0.4], [0.1, 0.2]], &Device::Cpu)?;
//! let (a, b) = (sample_seeds(7, &xs)?, sample_seeds(7, &swapped)?);
//! assert_eq!((a[0], a[1]), (b[1], b[0])); // a sample's seed follows its values
//! assert_eq!(a[1], sample_seed(7, &flat_rows_f32(&xs)?[1]));
//! # Ok::<(), eabs_attacks::Error>(())
//! ```

use candle_core::{DType, Tensor};
use eabs_core::host::HostRead;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// Seed of the random stream of one sample: `seed` mixed with a hash of the sample's f32 bits
/// (`-0.0` hashes as `0.0`). `row` is the sample flattened, as [`flat_rows_f32`] gives it.
/// The rule is [`eabs_core::seeding::content_seed`], which the randomised inference of ABS-like
/// models shares.
pub fn sample_seed(seed: u64, row: &[f32]) -> u64 {
    eabs_core::seeding::content_seed(seed, row)
}

/// [`sample_seed`] of every sample of `xs` (any shape with the batch first): `(batch,)` seeds.
pub fn sample_seeds(seed: u64, xs: &Tensor) -> Result<Vec<u64>> {
    Ok(flat_rows_f32(xs)?
        .iter()
        .map(|row| sample_seed(seed, row))
        .collect())
}

/// One ChaCha8 stream per sample of `xs` (any shape with the batch first), seeded by
/// [`sample_seeds`].
pub fn sample_rngs(seed: u64, xs: &Tensor) -> Result<Vec<ChaCha8Rng>> {
    Ok(sample_seeds(seed, xs)?
        .into_iter()
        .map(ChaCha8Rng::seed_from_u64)
        .collect())
}

/// The samples of `xs` (any shape with the batch first) flattened, as f32: the values that
/// [`sample_seed`] hashes, whatever the dtype of `xs`.
pub fn flat_rows_f32(xs: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(xs
        .flatten_from(1)?
        .to_dtype(DType::F32)?
        .host_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::normal_rows;
    use candle_core::Device;
    use eabs_core::host;

    #[test]
    fn streams_depend_on_content_not_position() -> Result<()> {
        assert_eq!(sample_seed(1, &[0.5, 0.0]), sample_seed(1, &[0.5, -0.0]));
        assert_ne!(sample_seed(1, &[0.5, 0.0]), sample_seed(2, &[0.5, 0.0]));
        assert_ne!(sample_seed(1, &[0.5, 0.0]), sample_seed(1, &[0.0, 0.5]));
        let xs = host::new(&[[0.1f32, 0.2], [0.3, 0.4]], &Device::Cpu)?;
        let swapped = host::new(&[[0.3f32, 0.4], [0.1, 0.2]], &Device::Cpu)?;
        let mut a = sample_rngs(7, &xs)?;
        let mut b = sample_rngs(7, &swapped)?;
        let na = normal_rows(&mut a, 3, &Device::Cpu)?.host_vec2::<f32>()?;
        let nb = normal_rows(&mut b, 3, &Device::Cpu)?.host_vec2::<f32>()?;
        assert_eq!(na[0], nb[1]);
        assert_eq!(na[1], nb[0]);
        Ok(())
    }
}
