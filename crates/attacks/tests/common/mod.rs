//! Tiny models with closed-form answers, shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use eabs_attacks::Norm;
use eabs_core::host::{self, HostRead};
use eabs_core::{Bounds, Classifier, Differentiable};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `logits = xs @ w + b`, `w: (d, k)`.
pub struct Linear {
    pub w: Vec<Vec<f32>>, // (k, d): one weight vector per class
    pub b: Vec<f32>,
    w_t: Tensor,
    b_t: Tensor,
    device: Device,
}

impl Linear {
    pub fn new(w: Vec<Vec<f32>>, b: Vec<f32>) -> Self {
        let device = Device::Cpu;
        let k = w.len();
        let d = w[0].len();
        let flat: Vec<f32> = (0..d)
            .flat_map(|j| w.iter().map(move |row| row[j]))
            .collect();
        let w_t = host::from_vec(flat, (d, k), &device).unwrap();
        let b_t = host::new(b.as_slice(), &device).unwrap();
        Self {
            w,
            b,
            w_t,
            b_t,
            device,
        }
    }

    /// Random `k`-class model on `d` features, weights in [-1, 1], zero bias.
    pub fn random(d: usize, k: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = (0..k)
            .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        Self::new(w, vec![0.0; k])
    }

    pub fn scores(&self, x: &[f32]) -> Vec<f64> {
        self.w
            .iter()
            .zip(&self.b)
            .map(|(w, b)| {
                w.iter()
                    .zip(x)
                    .map(|(a, c)| f64::from(*a) * f64::from(*c))
                    .sum::<f64>()
                    + f64::from(*b)
            })
            .collect()
    }

    pub fn predict_row(&self, x: &[f32]) -> u32 {
        let s = self.scores(x);
        let mut best = 0;
        for (i, v) in s.iter().enumerate() {
            if *v > s[best] {
                best = i;
            }
        }
        best as u32
    }

    /// Minimal distance to another class (ignoring the box) and whether the optimal
    /// perturbation stays inside `[0, 1]`:
    /// `min_k (z_y - z_k) / ||w_y - w_k||_*` with the dual norm (L_2 for L_2, L_1 for L_inf).
    pub fn min_distance(&self, x: &[f32], norm: Norm) -> (f64, bool) {
        let y = self.predict_row(x) as usize;
        let s = self.scores(x);
        let mut best = (f64::INFINITY, true);
        for k in 0..self.w.len() {
            if k == y {
                continue;
            }
            let diff: Vec<f64> = self.w[k]
                .iter()
                .zip(&self.w[y])
                .map(|(a, b)| f64::from(*a) - f64::from(*b))
                .collect();
            let dual = match norm {
                Norm::L2 => diff.iter().map(|v| v * v).sum::<f64>().sqrt(),
                Norm::Linf => diff.iter().map(|v| v.abs()).sum::<f64>(),
            };
            let d = (s[y] - s[k]) / dual;
            if d < best.0 {
                let delta: Vec<f64> = match norm {
                    Norm::L2 => diff.iter().map(|v| d * v / dual).collect(),
                    Norm::Linf => diff.iter().map(|v| d * v.signum()).collect(),
                };
                let inside = x.iter().zip(&delta).all(|(a, b)| {
                    let v = f64::from(*a) + b;
                    (0.0..=1.0).contains(&v)
                });
                best = (d, inside);
            }
        }
        best
    }
}

impl Classifier for Linear {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        self.w.len()
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.flatten_from(1)?
            .matmul(&self.w_t)?
            .broadcast_add(&self.b_t)
    }
}
impl Differentiable for Linear {}

/// `n` inputs of `d` features, uniform in `[lo, hi]`.
pub fn inputs(n: usize, d: usize, lo: f32, hi: f32, seed: u64) -> (Tensor, Vec<Vec<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..d).map(|_| rng.random_range(lo..hi)).collect())
        .collect();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    (host::from_vec(flat, (n, d), &Device::Cpu).unwrap(), rows)
}

pub fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    t.flatten_from(1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .host_vec2::<f32>()
        .unwrap()
}

pub fn labels(model: &Linear, rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter().map(|r| model.predict_row(r)).collect()
}
