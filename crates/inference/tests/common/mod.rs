//! Toy models with closed-form optima shared by the integration tests: linear decoders
//! `G_k(z) = A_k z + b_k`, for which exact inference is a ridge regression.

#![allow(dead_code, clippy::needless_range_loop)]

use candle_core::{Device, Result, Tensor};
use eabs_core::host::{self, HostRead};
use eabs_inference::LatentClassModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Prior terms of the toy model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ToyPrior {
    /// `None` from `prior_term`: inference adds `kl_beta / 2 ||z||^2`.
    Kl,
    /// `prior_term = weight * ||z - 0.5||^2`, a smooth non-negative stand-in for `-beta log D(z)`.
    Quadratic(f64),
}

/// A toy encoder: class and image to a latent mean.
pub type Encoder = Box<dyn Fn(usize, &[f64]) -> Vec<f64>>;

/// `K` linear decoders into `(1, 1, P)` images, weights drawn from a seeded normal.
pub struct LinearModel {
    /// `A_k` as `(P, d)` row-major f64, per class.
    pub a: Vec<Vec<f64>>,
    /// `b_k`, `(P,)` per class.
    pub b: Vec<Vec<f64>>,
    pub p: usize,
    pub d: usize,
    pub prior: ToyPrior,
    /// Encoder proposal: a function of the image per class (mean) with log-variance `enc_lv`.
    pub encoder: Option<Encoder>,
    pub enc_lv: f64,
    pub device: Device,
}

impl std::fmt::Debug for LinearModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LinearModel(K = {}, P = {}, d = {}, {:?})",
            self.a.len(),
            self.p,
            self.d,
            self.prior
        )
    }
}

impl LinearModel {
    pub fn new(k: usize, p: usize, d: usize, scale: f64, seed: u64, prior: ToyPrior) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |n: usize, s: f64| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    s * {
                        let v: f64 = StandardNormal.sample(&mut rng);
                        v
                    }
                })
                .collect::<Vec<f64>>()
        };
        let a = (0..k).map(|_| draw(p * d, scale)).collect();
        let b = (0..k).map(|_| draw(p, 1.0)).collect();
        Self {
            a,
            b,
            p,
            d,
            prior,
            encoder: None,
            enc_lv: 0.0,
            device: Device::Cpu,
        }
    }

    fn a_t(&self, class: usize) -> Result<Tensor> {
        let a: Vec<f32> = self.a[class].iter().map(|&v| v as f32).collect();
        host::from_vec(a, (self.p, self.d), &self.device)?.t()
    }

    /// `G_k(z)` in f64.
    pub fn decode_f64(&self, class: usize, z: &[f64]) -> Vec<f64> {
        (0..self.p)
            .map(|i| {
                self.b[class][i]
                    + (0..self.d)
                        .map(|j| self.a[class][i * self.d + j] * z[j])
                        .sum::<f64>()
            })
            .collect()
    }

    /// Prior term at `z` (the KL one with `beta`).
    pub fn prior_f64(&self, z: &[f64], beta: f64, use_prior: bool) -> f64 {
        if !use_prior {
            return 0.0;
        }
        match self.prior {
            ToyPrior::Kl => 0.5 * beta * z.iter().map(|v| v * v).sum::<f64>(),
            ToyPrior::Quadratic(w) => w * z.iter().map(|v| (v - 0.5) * (v - 0.5)).sum::<f64>(),
        }
    }

    /// Global minimiser and minimum of `||x - A z - b||^2 + prior(z)` (a quadratic):
    /// `(2 A^T A + 2 c I) z = 2 A^T (x - b) + 2 c m` with `prior = c ||z - m||^2`.
    pub fn optimum(&self, class: usize, x: &[f64], beta: f64, use_prior: bool) -> (Vec<f64>, f64) {
        let (c, m) = match (use_prior, self.prior) {
            (false, _) => (0.0, 0.0),
            (true, ToyPrior::Kl) => (0.5 * beta, 0.0),
            (true, ToyPrior::Quadratic(w)) => (w, 0.5),
        };
        let d = self.d;
        let a = &self.a[class];
        let mut mat = vec![vec![0.0; d + 1]; d];
        for r in 0..d {
            for col in 0..d {
                mat[r][col] = (0..self.p)
                    .map(|i| a[i * d + r] * a[i * d + col])
                    .sum::<f64>();
            }
            mat[r][r] += c;
            mat[r][d] = (0..self.p)
                .map(|i| a[i * d + r] * (x[i] - self.b[class][i]))
                .sum::<f64>()
                + c * m;
        }
        let z = solve(mat);
        let g = self.decode_f64(class, &z);
        let err: f64 = x.iter().zip(&g).map(|(u, v)| (u - v) * (u - v)).sum();
        let prior = self.prior_f64(&z, beta, use_prior);
        (z, err + prior)
    }
}

/// Gaussian elimination with partial pivoting on an augmented `(d, d + 1)` system.
pub fn solve(mut m: Vec<Vec<f64>>) -> Vec<f64> {
    let d = m.len();
    for col in 0..d {
        let piv = (col..d)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .unwrap();
        m.swap(col, piv);
        for r in 0..d {
            if r != col {
                let f = m[r][col] / m[col][col];
                for c in col..=d {
                    m[r][c] -= f * m[col][c];
                }
            }
        }
    }
    (0..d).map(|r| m[r][d] / m[r][r]).collect()
}

impl LatentClassModel for LinearModel {
    fn n_classes(&self) -> usize {
        self.a.len()
    }
    fn latent_dim(&self) -> usize {
        self.d
    }
    fn image_shape(&self) -> (usize, usize, usize) {
        (1, 1, self.p)
    }
    fn decode(&self, class: usize, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let b: Vec<f32> = self.b[class].iter().map(|&v| v as f32).collect();
        let b = host::from_vec(b, (1, self.p), &self.device)?;
        z.matmul(&self.a_t(class)?)?
            .broadcast_add(&b)?
            .reshape((n, 1, 1, self.p))
    }
    fn prior_term(&self, _class: usize, z: &Tensor) -> Result<Option<Tensor>> {
        match self.prior {
            ToyPrior::Kl => Ok(None),
            ToyPrior::Quadratic(w) => Ok(Some(((z - 0.5)?.sqr()?.sum(1)? * w)?)),
        }
    }
    fn encode(&self, class: usize, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some(enc) = &self.encoder else {
            return Ok(None);
        };
        let n = x.dim(0)?;
        let rows = x
            .reshape((n, self.p))?
            .to_dtype(candle_core::DType::F64)?
            .host_vec2::<f64>()?;
        let mean: Vec<f32> = rows
            .iter()
            .flat_map(|r| enc(class, r))
            .map(|v| v as f32)
            .collect();
        let mean = host::from_vec(mean, (n, self.d), &self.device)?;
        let lv = (mean.ones_like()? * self.enc_lv)?;
        Ok(Some((mean, lv)))
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// `n` images `(n, 1, 1, p)` near the decoders' outputs: `G_{k_i}(z_i) + noise`.
pub fn images(
    model: &LinearModel,
    n: usize,
    noise: f64,
    seed: u64,
) -> (Tensor, Vec<Vec<f64>>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k = model.a.len();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let class = i % k;
        let z: Vec<f64> = (0..model.d)
            .map(|_| {
                0.8 * {
                    let v: f64 = StandardNormal.sample(&mut rng);
                    v
                }
            })
            .collect();
        let g = model.decode_f64(class, &z);
        rows.push(
            g.iter()
                .map(|v| {
                    v + noise * {
                        let v: f64 = StandardNormal.sample(&mut rng);
                        v
                    }
                })
                .collect::<Vec<f64>>(),
        );
        labels.push(class);
    }
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    (
        host::from_vec(flat, (n, 1, 1, model.p), &model.device).unwrap(),
        rows,
        labels,
    )
}

/// Rows of a tensor as f64.
pub fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .host_vec2::<f64>()
        .unwrap()
}
