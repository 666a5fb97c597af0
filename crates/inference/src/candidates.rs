//! The random starting points of inference: a fixed pool of prior latents, decoded once by every
//! class decoder and cached, and the search for the best of them per image and class.
//!
//! ABS (Schott et al. 2019) and E-ABS (Section 3.3) start the latent optimisation from the best
//! of 8000 random latents. The pool depends only on the model and the seed, so decoding it for
//! every image (8000 decoder passes per class per image) would repeat the same work thousands of
//! times per attack. Like the reference (`sampling.py::GaussianSamples`, `GM.th_images`), we
//! decode it once. Picking the best candidate for a batch is then a matrix product:
//! `||x - G||^2 = ||x||^2 - 2 x.G + ||G||^2`, one `(batch, P) x (P, chunk)` product per class and
//! chunk of candidates.

use candle_core::{DType, Device, Tensor, D};
use eabs_core::host;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::InferenceConfig;
use crate::error::{InferenceError, Result};
use crate::model::LatentClassModel;

/// Draws the candidate latents: `n_prior_draws` samples of `N(0, I_d)` from
/// `ChaCha8Rng::seed_from_u64(seed)` (row-major, one row per sample), of which the `n`
/// most probable (smallest norm; ties by draw order) are kept, in draw order. This is the
/// reference's `get_gaussian_samples` with `fraction_to_dismiss`. Returns `(n, d)` f32.
pub fn draw_candidates(
    n: usize,
    n_prior_draws: usize,
    latent_dim: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    if n == 0 || n_prior_draws < n || latent_dim == 0 {
        return Err(InferenceError::InvalidArgument {
            argument: "n / n_prior_draws / latent_dim",
            expected: "1 <= n <= n_prior_draws and latent_dim >= 1".into(),
            found: format!("n = {n}, n_prior_draws = {n_prior_draws}, latent_dim = {latent_dim}"),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let draws: Vec<f32> = (0..n_prior_draws * latent_dim)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let sq_norm = |i: usize| -> f64 {
        draws[i * latent_dim..(i + 1) * latent_dim]
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum()
    };
    let norms: Vec<f64> = (0..n_prior_draws).map(sq_norm).collect();
    let mut order: Vec<usize> = (0..n_prior_draws).collect();
    // Density of N(0, I) is monotone in the norm: the most probable are the shortest.
    order.sort_by(|&a, &b| norms[a].total_cmp(&norms[b]).then(a.cmp(&b)));
    let mut kept = order[..n].to_vec();
    kept.sort_unstable();
    let mut out = Vec::with_capacity(n * latent_dim);
    for i in kept {
        out.extend_from_slice(&draws[i * latent_dim..(i + 1) * latent_dim]);
    }
    Ok(host::from_vec(out, (n, latent_dim), device)?)
}

/// The candidate pool decoded by every class decoder, with what the search needs precomputed.
///
/// Memory: `K * N * P` f32 values (MNIST: 10 x 8000 x 784, 251 MB; SVHN: 10 x 8000 x 3072,
/// 983 MB), stored per class and searched in chunks of `search_chunk` candidates.
#[derive(Debug, Clone)]
pub struct CandidateCache {
    latents: Tensor,
    /// Per class: decoded candidates, `(N, P)`.
    images: Vec<Tensor>,
    /// Per class: `||G_k(z_i)||^2`, `(1, N)`.
    sq_norms: Vec<Tensor>,
    /// Per class: prior term of each candidate (unit variance at the candidate mean), `(1, N)`:
    /// the model's `prior_term`, or `kl_beta / 2 ||z||^2` with the build config's `kl_beta`.
    prior_terms: Vec<Tensor>,
    search_chunk: usize,
}

/// The best cached candidate per image and class.
#[derive(Debug, Clone)]
pub struct CandidateChoice {
    /// Index into the pool, `(batch, K)` u32.
    pub indices: Tensor,
    /// Unnormalised loss `||x - G_k(z)||^2 (+ prior term)` of the chosen candidate, `(batch, K)`.
    pub losses: Tensor,
    /// The chosen latents, `(batch, K, d)`.
    pub latents: Tensor,
}

impl CandidateCache {
    /// Draws the pool (see [`draw_candidates`]) and decodes it with every class decoder in
    /// chunks of `config.decode_chunk`.
    pub fn build<M: LatentClassModel + ?Sized>(
        model: &M,
        config: &InferenceConfig,
    ) -> Result<Self> {
        config.validate()?;
        let latents = draw_candidates(
            config.n_candidates,
            config.n_prior_draws(),
            model.latent_dim(),
            config.candidate_seed,
            model.device(),
        )?;
        Self::from_latents(model, latents, config)
    }

    /// Decodes a given pool `(N, d)` with every class decoder.
    pub fn from_latents<M: LatentClassModel + ?Sized>(
        model: &M,
        latents: Tensor,
        config: &InferenceConfig,
    ) -> Result<Self> {
        config.validate()?;
        let d = model.latent_dim();
        let (n, found_d) = latents
            .dims2()
            .map_err(|_| InferenceError::InvalidArgument {
                argument: "latents",
                expected: format!("(n_candidates, {d})"),
                found: format!("{:?}", latents.dims()),
            })?;
        if found_d != d || n == 0 {
            return Err(InferenceError::InvalidArgument {
                argument: "latents",
                expected: format!("(n_candidates >= 1, {d})"),
                found: format!("{:?}", latents.dims()),
            });
        }
        let latents = latents.to_dtype(DType::F32)?.contiguous()?;
        let n_pixels = model.n_pixels();
        let mut images = Vec::with_capacity(model.n_classes());
        let mut sq_norms = Vec::with_capacity(model.n_classes());
        let mut prior_terms = Vec::with_capacity(model.n_classes());
        let kl = (latents.sqr()?.sum(1)? * (0.5 * config.kl_beta))?;
        for class in 0..model.n_classes() {
            let mut chunks = Vec::new();
            let mut priors = Vec::new();
            let mut start = 0;
            while start < n {
                let len = config.decode_chunk.min(n - start);
                let z = latents.narrow(0, start, len)?;
                let rec = decode_checked(model, class, &z)?;
                // Detached: a model whose eval-mode layers read `Var`s (e.g. BatchNorm running
                // statistics) would otherwise keep every intermediate of every chunk alive.
                chunks.push(rec.reshape((len, n_pixels))?.detach());
                if let Some(p) = prior_checked(model, class, &z)? {
                    priors.push(p.detach());
                }
                start += len;
            }
            let class_images = Tensor::cat(&chunks, 0)?.contiguous()?;
            let prior = if priors.is_empty() {
                kl.clone()
            } else {
                Tensor::cat(&priors, 0)?
            };
            sq_norms.push(class_images.sqr()?.sum(1)?.unsqueeze(0)?);
            prior_terms.push(prior.unsqueeze(0)?);
            images.push(class_images);
        }
        Ok(Self {
            latents,
            images,
            sq_norms,
            prior_terms,
            search_chunk: config.search_chunk,
        })
    }

    /// The candidate latents, `(N, d)`.
    pub fn latents(&self) -> &Tensor {
        &self.latents
    }

    /// Number of candidates N.
    pub fn len(&self) -> usize {
        self.latents.dim(0).unwrap_or(0)
    }

    /// Number of classes K the pool was decoded for.
    pub fn n_classes(&self) -> usize {
        self.images.len()
    }

    /// Number of pixel values P per decoded candidate.
    pub fn n_pixels(&self) -> usize {
        self.images.first().and_then(|t| t.dim(1).ok()).unwrap_or(0)
    }

    /// Whether the pool is empty (never, for a built cache).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decoded candidates of class `class`, `(N, P)`.
    pub fn images(&self, class: usize) -> Option<&Tensor> {
        self.images.get(class)
    }

    /// Prior terms of the candidates of class `class`, `(1, N)`.
    pub fn prior_terms(&self, class: usize) -> Option<&Tensor> {
        self.prior_terms.get(class)
    }

    /// Best candidate per image and class for flattened images `x: (batch, P)`, by
    /// `||x||^2 - 2 x.G_k(z_i) + ||G_k(z_i)||^2 (+ prior_k(z_i) if use_prior)`.
    pub fn search(&self, x: &Tensor, use_prior: bool) -> Result<CandidateChoice> {
        let Ok((b, p)) = x.dims2() else {
            return Err(InferenceError::InvalidArgument {
                argument: "x",
                expected: "flattened images of shape (batch, n_pixels)".into(),
                found: format!("{:?}", x.dims()),
            });
        };
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let x_sq = x.sqr()?.sum_keepdim(1)?; // (b, 1)
        let n = self.len();
        let d = self.latents.dim(1)?;
        let mut best_losses = Vec::with_capacity(self.images.len());
        let mut best_indices = Vec::with_capacity(self.images.len());
        for (class, images) in self.images.iter().enumerate() {
            if images.dim(1)? != p {
                return Err(InferenceError::InvalidArgument {
                    argument: "xs",
                    expected: format!("{} values per image", images.dim(1)?),
                    found: format!("{p}"),
                });
            }
            let mut scores = Vec::new();
            let mut start = 0;
            while start < n {
                let len = self.search_chunk.min(n - start);
                let g = images.narrow(0, start, len)?;
                let cross = x.matmul(&g.t()?)?; // (b, len)
                let mut s = (cross * -2.0)?
                    .broadcast_add(&x_sq)?
                    .broadcast_add(&self.sq_norms[class].narrow(1, start, len)?)?;
                if use_prior {
                    s = s.broadcast_add(&self.prior_terms[class].narrow(1, start, len)?)?;
                }
                scores.push(s);
                start += len;
            }
            let scores = Tensor::cat(&scores, 1)?; // (b, N)
            best_indices.push(scores.argmin_keepdim(1)?);
            best_losses.push(scores.min_keepdim(1)?);
        }
        let indices = Tensor::cat(&best_indices, 1)?; // (b, K)
        let losses = Tensor::cat(&best_losses, 1)?;
        let k = self.images.len();
        let latents = self
            .latents
            .index_select(&indices.flatten_all()?, 0)?
            .reshape((b, k, d))?;
        Ok(CandidateChoice {
            indices,
            losses,
            latents,
        })
    }
}

/// Calls `decode` and checks the `(n, c, h, w)` contract.
pub(crate) fn decode_checked<M: LatentClassModel + ?Sized>(
    model: &M,
    class: usize,
    z: &Tensor,
) -> Result<Tensor> {
    let n = z.dim(0)?;
    let (c, h, w) = model.image_shape();
    let rec = model.decode(class, z)?;
    if rec.dims() != [n, c, h, w] {
        return Err(InferenceError::Model {
            method: "decode",
            expected: format!("shape [{n}, {c}, {h}, {w}] for class {class}"),
            found: format!("{:?}", rec.dims()),
        });
    }
    Ok(rec.to_dtype(DType::F32)?)
}

/// Calls `prior_term` and checks the `(n,)` contract.
pub(crate) fn prior_checked<M: LatentClassModel + ?Sized>(
    model: &M,
    class: usize,
    z: &Tensor,
) -> Result<Option<Tensor>> {
    let n = z.dim(0)?;
    match model.prior_term(class, z)? {
        None => Ok(None),
        Some(p) => {
            let p = if p.dims() == [n, 1] {
                p.squeeze(D::Minus1)?
            } else {
                p
            };
            if p.dims() != [n] {
                return Err(InferenceError::Model {
                    method: "prior_term",
                    expected: format!("shape [{n}] for class {class}"),
                    found: format!("{:?}", p.dims()),
                });
            }
            Ok(Some(p.to_dtype(DType::F32)?))
        }
    }
}
