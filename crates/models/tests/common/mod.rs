//! Shared fixtures of the integration tests: a tiny architecture and a synthetic dataset.

#![allow(dead_code)]

use candle_core::Device;
use eabs_core::host;
use eabs_models::config::ConvSpec;
use eabs_models::{ArchConfig, DatasetKind, ModelConfig, ModelKind, TensorData, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn conv(channels: usize, kernel: usize, stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        channels,
        kernel,
        stride,
        padding,
    }
}

/// 1x8x8 images, 3 classes: encoder 8 -> 4 -> 2, decoder 1 -> 2 -> 4 -> 8.
pub fn tiny_arch() -> ArchConfig {
    ArchConfig {
        image_shape: (1, 8, 8),
        n_classes: 3,
        latent_dim: 4,
        encoder: vec![conv(4, 3, 2, 1), conv(8, 3, 2, 1)],
        decoder: vec![conv(8, 2, 1, 0), conv(4, 2, 2, 0), conv(1, 2, 2, 0)],
        discriminator_hidden: vec![16, 8],
        ..ArchConfig::mnist()
    }
}

pub fn tiny_config(kind: ModelKind) -> ModelConfig {
    ModelConfig {
        arch: tiny_arch(),
        ..ModelConfig::paper(DatasetKind::Mnist, kind)
    }
}

/// Class k lights up rows 2k..2k+2 (plus uniform noise), so classes are separable.
pub fn synthetic(n: usize, seed: u64, name: &str) -> TensorData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let y = (i % 3) as u32;
        labels.push(y);
        for r in 0..8 {
            for _ in 0..8 {
                let on = r / 2 == y as usize || (y == 2 && r >= 6);
                let base = if on { 0.8 } else { 0.1 };
                data.push(base + 0.1 * rng.random::<f32>());
            }
        }
    }
    let images = host::from_vec(data, (n, 1, 8, 8), &Device::Cpu).unwrap();
    TensorData::new(images, labels, name).unwrap()
}

/// A tiny run; adversarial runs use 3 PGD steps at epsilon 0.1.
pub fn tiny_train_config(kind: ModelKind, epochs: usize) -> TrainConfig {
    let smoke = TrainConfig::smoke(DatasetKind::Mnist, kind);
    let adversarial = smoke
        .adversarial
        .clone()
        .map(|a| eabs_models::AdvTrainConfig {
            steps: 3,
            epsilon: 0.1,
            ..a
        });
    TrainConfig {
        adversarial,
        preset: "test".into(),
        epochs,
        batch_size: 12,
        lr: 3e-3,
        lr_halve_every: Some(2),
        seed: 11,
        max_train_samples: Some(36),
        max_val_samples: None,
        ..smoke
    }
}
