//! Per-class likelihood estimates by latent optimisation (Section 2 eq. (2), Section 3.3 eq. (6)).
//!
//! For each image `x` and class `k`, inference estimates
//! `l_k(x) = min_Q E_{z ~ Q}[ ||x - G_k(z)||^2 + prior term ]` in three stages:
//! 1. **start**: the best of N cached prior candidates (see [`crate::candidates`]) and, where the
//!    model has one, the encoder proposal `Q(Z|x)` (Section 3.3, "8000 + 1" starting points);
//! 2. **optimisation**: Adam on the latent mean (exact inference, ABS) or mean and log-variance
//!    (variational inference with the reparameterisation trick and one sample per step, E-ABS),
//!    all images and classes of a batch in one `(batch, K, d)` tensor, the mean projected onto an
//!    L2 ball after each update;
//! 3. **final evaluation**: the losses at the optimum (at a fresh sample of `Q*` for variational
//!    inference), the reconstructions and the logits `-loss / P` (P = number of pixel values, the
//!    reference's normalisation).
//!
//! The prior term is `-beta log D_k(z)` for AAE models (from the model) and the Gaussian KL of
//! eq. (2) otherwise: `beta/2 ||mu||^2` for exact inference (unit variance, constants dropped as
//! in the reference's `KLD(sig_q=1)`), `beta/2 sum(mu^2 + sigma^2 - log sigma^2 - 1)` for
//! variational inference.
//!
//! Eq. (6) has no entropy term: with an AAE prior nothing but the one-sample noise keeps the
//! variance from shrinking towards a point mass; with the Gaussian KL the `sigma^2 - log sigma^2`
//! part does. We implement eq. (6) as written.
//!
//! # Memory
//! Every tensor that leaves a stage is detached: the cache, the start, the gradients and Adam's
//! iterates, the outputs. A model whose evaluation-mode layers read `Var`s (BatchNorm running
//! statistics in `eabs-models`) would otherwise keep each step's autodiff graph alive through the
//! next (the MNIST benchmark grew to 23 GB before this).
//!
//! # Differences from the reference implementation
//! - The latent projection scales (`z * r / ||z||`) instead of the reference's sign-dropping
//!   `clip_to_sphere`.
//! - Variational inference (E-ABS) has no public reference; our choices: candidates are scored at
//!   their mean with unit variance, the encoder proposal keeps its own log-variance as the start,
//!   the log-variance is not clipped (Adam moves it by at most about `lr` per step).
//! - Noise for image `i` of a batch comes from stream `i` of `ChaCha8Rng::seed_from_u64(seed)`,
//!   so an image's result does not depend on the other images in its batch.

use eabs_core::host::{self, HostRead};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::candidates::{decode_checked, prior_checked, CandidateCache};
use crate::config::{FinalEvaluation, InferenceConfig, LatentInference};
use crate::error::{InferenceError, Result};
use crate::fast::FastModel;
use crate::model::LatentClassModel;
use eabs_core::adam::{AdamConfig, LrPlacement, SliceAdam, TensorAdam};

/// Inference engine: a model, its settings and its decoded candidate pool.
#[derive(Debug, Clone)]
pub struct AbsInference<M> {
    model: M,
    config: InferenceConfig,
    cache: CandidateCache,
    /// The model in the fast CPU engine's form, where it provides one and lives on the CPU.
    fast: Option<Arc<FastModel>>,
    /// Whether stage 2 may take the fast engine ([`AbsInference::set_fast_engine`]).
    fast_enabled: bool,
}

/// The gradient of `var` in `grads`, detached, or zeros shaped like `like` when the objective
/// does not depend on it.
fn grad_or_zeros(
    grads: &candle_core::backprop::GradStore,
    var: &Var,
    like: &Tensor,
) -> Result<Tensor> {
    Ok(match grads.get(var.as_tensor()) {
        Some(g) => g.detach(),
        None => like.zeros_like()?,
    })
}

/// The starting point of the optimisation per image and class.
#[derive(Debug, Clone)]
pub struct LatentStart {
    /// Starting means, `(batch, K, d)`.
    pub means: Tensor,
    /// Starting log-variances, `(batch, K, d)` (zeros, or the encoder's where it won).
    pub log_variances: Tensor,
    /// Unnormalised loss at the starting mean, `(batch, K)`.
    pub losses: Tensor,
    /// Best cached candidate's unnormalised loss alone, `(batch, K)`.
    pub candidate_losses: Tensor,
    /// Whether the encoder proposal beat the best candidate, `(batch, K)` u8.
    pub from_encoder: Tensor,
}

/// Wall-clock time spent in each stage of one inference call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Candidate search and encoder proposal.
    pub start: Duration,
    /// Adam updates.
    pub optimisation: Duration,
    /// Final evaluation.
    pub final_evaluation: Duration,
}

/// Result of inference on a batch.
///
/// Losses follow the reference: `(||x - G_k(z*)||^2 + prior term) / P`, P the number of pixel
/// values; `reconstruction_errors` and `prior_terms` give the two parts unnormalised, as the
/// bound of eq. (7) needs them.
#[derive(Debug, Clone)]
pub struct InferenceOutput {
    /// Normalised per-class losses `l_k(x) / P`, `(batch, K)`; the prediction is their argmin.
    pub losses: Tensor,
    /// `-logit_scale * losses`, `(batch, K)`.
    pub logits: Tensor,
    /// `||x - G_k(z*)||^2`, `(batch, K)`.
    pub reconstruction_errors: Tensor,
    /// Prior term at the optimum (0 when evaluated without prior), `(batch, K)`.
    pub prior_terms: Tensor,
    /// Optimal means, `(batch, K, d)`.
    pub means: Tensor,
    /// Optimal log-variances, `(batch, K, d)`; `None` for exact inference (unit variance).
    pub log_variances: Option<Tensor>,
    /// The latent `z*` the final losses were evaluated at (the mean, or a sample of `Q*`),
    /// `(batch, K, d)`.
    pub latents: Tensor,
    /// `G_k(z*)`, `(batch, K, c, h, w)`.
    pub reconstructions: Tensor,
    /// Normalised losses at the starting point, `(batch, K)`.
    pub initial_losses: Tensor,
    /// Time per stage.
    pub timings: StageTimings,
}

impl InferenceOutput {
    /// Predicted class per image (argmin of the losses), `(batch,)` u32.
    pub fn predictions(&self) -> Result<Tensor> {
        Ok(self.losses.argmin(1)?)
    }
}

/// What one pass optimises; the bound of eq. (7) runs passes that differ from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    pub mode: LatentInference,
    pub use_prior: bool,
    pub final_evaluation: FinalEvaluation,
}

impl<M: LatentClassModel> AbsInference<M> {
    /// Validates the config, draws the candidate pool and decodes it with every class decoder
    /// (the expensive part: `K * N` decoder evaluations, done once).
    pub fn new(model: M, config: InferenceConfig) -> Result<Self> {
        config.validate()?;
        let cache = CandidateCache::build(&model, &config)?;
        let fast = Self::fast_model_of(&model)?;
        Ok(Self {
            model,
            config,
            cache,
            fast,
            fast_enabled: true,
        })
    }

    /// Uses an already built cache (e.g. shared between configs differing only in the
    /// optimisation settings). The cache must come from the same model.
    pub fn with_cache(model: M, config: InferenceConfig, cache: CandidateCache) -> Result<Self> {
        config.validate()?;
        let (n, d) = cache.latents().dims2()?;
        let (k, p) = (cache.n_classes(), cache.n_pixels());
        if d != model.latent_dim() || k != model.n_classes() || p != model.n_pixels() {
            return Err(InferenceError::InvalidArgument {
                argument: "cache",
                expected: format!(
                    "a cache for {} classes, latent dim {} and {} pixel values",
                    model.n_classes(),
                    model.latent_dim(),
                    model.n_pixels()
                ),
                found: format!(
                    "{n} candidates of dim {d} decoded for {k} classes with {p} pixel values"
                ),
            });
        }
        let fast = Self::fast_model_of(&model)?;
        Ok(Self {
            model,
            config,
            cache,
            fast,
            fast_enabled: true,
        })
    }

    /// The model's [`FastModel`] if it has one on the CPU, checked against the model.
    fn fast_model_of(model: &M) -> Result<Option<Arc<FastModel>>> {
        if !model.device().is_cpu() {
            return Ok(None);
        }
        let Some(fast) = model.fast_model()? else {
            return Ok(None);
        };
        let want = (model.n_classes(), model.latent_dim(), model.n_pixels());
        let found = (fast.n_classes(), fast.latent_dim(), fast.n_pixels());
        if want != found {
            return Err(InferenceError::Model {
                method: "fast_model",
                expected: format!("(classes, latent dim, pixels) = {want:?} as the model says"),
                found: format!("{found:?}"),
            });
        }
        Ok(Some(Arc::new(fast)))
    }

    /// Lets stage 2 (the Adam updates) take the fast CPU engine ([`crate::fast`]) when the
    /// model provides one (`true`, the default), or forces the generic Candle autodiff path
    /// (`false`): the reference the fast engine is tested against. Process-wide,
    /// [`eabs_kernels::set_stock_ops`] also forces the generic path.
    pub fn set_fast_engine(&mut self, on: bool) {
        self.fast_enabled = on;
    }

    /// The fast engine stage 2 takes now, if any.
    pub fn fast_engine(&self) -> Option<&FastModel> {
        self.fast
            .as_deref()
            .filter(|_| self.fast_enabled && !eabs_kernels::stock_ops())
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The settings.
    pub fn config(&self) -> &InferenceConfig {
        &self.config
    }

    /// The decoded candidate pool.
    pub fn cache(&self) -> &CandidateCache {
        &self.cache
    }

    pub(crate) fn default_pass(&self) -> Pass {
        Pass {
            mode: self.config.mode,
            use_prior: true,
            final_evaluation: self.config.final_evaluation,
        }
    }

    /// Runs inference on `xs: (batch, c, h, w)`. `seed` drives the reparameterisation noise of
    /// variational inference (unused by exact inference, which is deterministic).
    pub fn infer(&self, xs: &Tensor, seed: u64) -> Result<InferenceOutput> {
        self.run(xs, self.default_pass(), seed)
    }

    /// Checks `xs` against the model's image shape and flattens it to `(batch, P)` f32.
    pub(crate) fn flatten_input(&self, xs: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.model.image_shape();
        let dims = xs.dims();
        if dims.len() != 4 || dims[1..] != [c, h, w] || dims[0] == 0 {
            return Err(InferenceError::InvalidArgument {
                argument: "xs",
                expected: format!("shape (batch >= 1, {c}, {h}, {w})"),
                found: format!("{dims:?}"),
            });
        }
        if !xs.device().same_device(self.model.device()) {
            return Err(InferenceError::InvalidArgument {
                argument: "xs",
                expected: format!("a tensor on the model's device {:?}", self.model.device()),
                found: format!("{:?}", xs.device()),
            });
        }
        Ok(xs.to_dtype(DType::F32)?.reshape((dims[0], c * h * w))?)
    }

    /// Stage 1: the best cached candidate per image and class and, if configured and available,
    /// the encoder proposal where it is better. `x`: flattened `(batch, P)`.
    pub fn initial_latents(&self, xs: &Tensor) -> Result<LatentStart> {
        let xs = &xs.detach();
        let x = self.flatten_input(xs)?;
        self.start(&x, xs, true)
    }

    fn start(&self, x: &Tensor, xs_img: &Tensor, use_prior: bool) -> Result<LatentStart> {
        let choice = self.cache.search(x, use_prior)?;
        let b = x.dim(0)?;
        let k = self.model.n_classes();
        let d = self.model.latent_dim();
        let init_lv = (choice.latents.ones_like()? * self.config.initial_log_variance)?;
        let zeros = Tensor::zeros((b, k), DType::U8, x.device())?;
        if !self.config.use_encoder {
            return Ok(LatentStart {
                means: choice.latents,
                log_variances: init_lv,
                losses: choice.losses.clone(),
                candidate_losses: choice.losses,
                from_encoder: zeros,
            });
        }
        let xs_f32 = xs_img.to_dtype(DType::F32)?;
        let mut means = Vec::with_capacity(k);
        let mut lvs = Vec::with_capacity(k);
        let mut shared: Option<(Tensor, Tensor)> = None;
        for class in 0..k {
            let proposal = match (&shared, self.model.shared_encoder()) {
                (Some(p), true) => Some(p.clone()),
                _ => self.model.encode(class, &xs_f32)?,
            };
            let Some((mu, lv)) = proposal else {
                if class == 0 {
                    // No encoder at all: the candidates are the only start.
                    return Ok(LatentStart {
                        means: choice.latents,
                        log_variances: init_lv,
                        losses: choice.losses.clone(),
                        candidate_losses: choice.losses,
                        from_encoder: zeros,
                    });
                }
                return Err(InferenceError::Model {
                    method: "encode",
                    expected: "a proposal for every class or for none".into(),
                    found: format!("a proposal for class 0 but none for class {class}"),
                });
            };
            for (name, t) in [("mean", &mu), ("log-variance", &lv)] {
                if t.dims() != [b, d] {
                    return Err(InferenceError::Model {
                        method: "encode",
                        expected: format!("{name} of shape [{b}, {d}] for class {class}"),
                        found: format!("{:?}", t.dims()),
                    });
                }
            }
            let (mu, lv) = (
                mu.to_dtype(DType::F32)?.detach(),
                lv.to_dtype(DType::F32)?.detach(),
            );
            if self.model.shared_encoder() {
                shared = Some((mu.clone(), lv.clone()));
            }
            means.push(mu);
            lvs.push(lv);
        }
        let enc_means = Tensor::stack(&means, 1)?; // (b, K, d)
        let enc_lvs = Tensor::stack(&lvs, 1)?;
        let pass = Pass {
            mode: LatentInference::Exact,
            use_prior,
            final_evaluation: FinalEvaluation::Mean,
        };
        let (enc_rec, enc_prior, _) =
            self.objective(x, &enc_means, &enc_means, None, pass, false)?;
        let enc_losses = (enc_rec + enc_prior)?.detach();
        let better = enc_losses.lt(&choice.losses)?; // (b, K) u8
        let better3 = better.unsqueeze(2)?.broadcast_as((b, k, d))?;
        let means = better3.where_cond(&enc_means, &choice.latents)?;
        let enc_lvs = match self.config.mode {
            LatentInference::Variational => enc_lvs,
            LatentInference::Exact => init_lv.clone(),
        };
        let log_variances = better3.where_cond(&enc_lvs, &init_lv)?;
        let losses = better.where_cond(&enc_losses, &choice.losses)?;
        Ok(LatentStart {
            means,
            log_variances,
            losses,
            candidate_losses: choice.losses,
            from_encoder: better,
        })
    }

    /// Reconstruction errors `(b, K)`, prior terms `(b, K)` and, if asked, the K reconstructions
    /// `(b, P)` at latents `z: (b, K, d)`; `mean`/`log_var` parameterise the KL term.
    fn objective(
        &self,
        x: &Tensor,
        z: &Tensor,
        mean: &Tensor,
        log_var: Option<&Tensor>,
        pass: Pass,
        keep_reconstructions: bool,
    ) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let (b, k, _) = z.dims3()?;
        let p = x.dim(1)?;
        let mut errs = Vec::with_capacity(k);
        let mut priors = Vec::with_capacity(k);
        let mut recs = Vec::with_capacity(if keep_reconstructions { k } else { 0 });
        for class in 0..k {
            let z_k = z.narrow(1, class, 1)?.squeeze(1)?.contiguous()?;
            let rec = decode_checked(&self.model, class, &z_k)?.reshape((b, p))?;
            errs.push((x - &rec)?.sqr()?.sum(1)?);
            if pass.use_prior {
                if let Some(prior) = prior_checked(&self.model, class, &z_k)? {
                    priors.push(prior);
                } else if !priors.is_empty() {
                    return Err(InferenceError::Model {
                        method: "prior_term",
                        expected: "Some for every class or None for every class".into(),
                        found: format!("None for class {class} after Some for earlier classes"),
                    });
                }
            }
            if keep_reconstructions {
                recs.push(rec);
            }
        }
        let errs = Tensor::stack(&errs, 1)?;
        let prior = if !pass.use_prior {
            errs.zeros_like()?
        } else if priors.len() == k {
            Tensor::stack(&priors, 1)?
        } else if !priors.is_empty() {
            return Err(InferenceError::Model {
                method: "prior_term",
                expected: "Some for every class or None for every class".into(),
                found: format!("Some for {} of {k} classes", priors.len()),
            });
        } else {
            // Gaussian KL of eq. (2) against N(0, I).
            let mu_sq = mean.sqr()?;
            let kl = match log_var {
                None => mu_sq.sum(2)?,
                Some(lv) => ((mu_sq + lv.exp()?)? - lv)?.affine(1.0, -1.0)?.sum(2)?,
            };
            (kl * (0.5 * self.config.kl_beta))?
        };
        Ok((errs, prior, recs))
    }

    /// Standard normal noise `(b, K, d)`, image `i` from stream `i` of the seeded generator.
    fn noise(
        rngs: &mut [ChaCha8Rng],
        k: usize,
        d: usize,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let b = rngs.len();
        Ok(host::from_vec(
            Self::noise_values(rngs, k, d),
            (b, k, d),
            device,
        )?)
    }

    /// The noise of `steps` consecutive [`Self::noise`] calls as one tensor `(steps, b, K, d)`:
    /// the same values (each image's stream is drawn in the same order), one upload.
    fn step_noise(
        rngs: &mut [ChaCha8Rng],
        steps: usize,
        k: usize,
        d: usize,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let b = rngs.len();
        let kd = k * d;
        let mut v = vec![0f32; steps * b * kd];
        for (i, rng) in rngs.iter_mut().enumerate() {
            for s in 0..steps {
                let at = (s * b + i) * kd;
                for x in &mut v[at..at + kd] {
                    *x = StandardNormal.sample(rng);
                }
            }
        }
        Ok(host::from_vec(v, (steps, b, k, d), device)?)
    }

    /// [`Self::noise`]'s values, row-major `(b, K, d)`.
    fn noise_values(rngs: &mut [ChaCha8Rng], k: usize, d: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(rngs.len() * k * d);
        for rng in rngs.iter_mut() {
            v.extend((0..k * d).map(|_| -> f32 { StandardNormal.sample(rng) }));
        }
        v
    }

    fn project(&self, mu: Tensor) -> Result<Tensor> {
        match self.config.latent_radius {
            None => Ok(mu),
            Some(r) => {
                // scale = min(1, r / ||mu||); ||mu|| = 0 gives r / 0 = inf, min 1: unchanged.
                let scale = (mu.sqr()?.sum_keepdim(2)?.sqrt()?.recip()? * r)?.minimum(1.0)?;
                Ok(mu.broadcast_mul(&scale)?)
            }
        }
    }

    /// The Adam of the latent updates (both engines): the configured betas and eps, the
    /// learning rate applied after the division, as in the reference.
    fn latent_adam(&self) -> AdamConfig {
        let c = &self.config;
        AdamConfig::new(
            c.adam_beta1,
            c.adam_beta2,
            c.adam_eps,
            LrPlacement::AfterDivision,
        )
    }

    /// Stage 2 on Candle's autodiff graph: the reference path, and the one every device and
    /// model takes where [`Self::fast_engine`] gives none.
    fn optimise_autodiff(
        &self,
        x: &Tensor,
        start: &LatentStart,
        pass: Pass,
        rngs: &mut [ChaCha8Rng],
    ) -> Result<(Tensor, Tensor)> {
        let mut mu = start.means.clone();
        let mut lv = start.log_variances.clone();
        let c = &self.config;
        let variational = pass.mode == LatentInference::Variational;
        let (k, d) = (self.model.n_classes(), self.model.latent_dim());
        let device = x.device().clone();
        let n_pixels = x.dim(1)? as f64;
        // One state per latent tensor: Adam is element-wise, so this equals one optimiser per
        // image and class (the reference's `auto_batch` runs one per chunk of 500 images).
        let adam = self.latent_adam();
        let mut adam_mu = TensorAdam::new(adam, c.learning_rate, &mu)?;
        let mut adam_lv = TensorAdam::new(adam, c.learning_rate, &lv)?;
        // Every step's noise in one upload, `(steps, b, K, d)`: one host-to-device copy per
        // inference instead of one per step (`tests/host_transfers.rs`).
        let all_eps = if variational {
            Some(Self::step_noise(rngs, c.n_adam_steps, k, d, &device)?)
        } else {
            None
        };
        for step in 0..c.n_adam_steps {
            let mu_var = Var::from_tensor(&mu)?;
            if let Some(all_eps) = &all_eps {
                let lv_var = Var::from_tensor(&lv)?;
                let eps = all_eps.get(step)?;
                let z = (mu_var.as_tensor() + (lv_var.as_tensor() * 0.5)?.exp()?.mul(&eps)?)?;
                let (rec, prior, _) = self.objective(
                    x,
                    &z,
                    mu_var.as_tensor(),
                    Some(lv_var.as_tensor()),
                    pass,
                    false,
                )?;
                let total = ((rec + prior)?.sum_all()? / n_pixels)?;
                let grads = total.backward()?;
                let g_mu = grad_or_zeros(&grads, &mu_var, &mu)?;
                let g_lv = grad_or_zeros(&grads, &lv_var, &lv)?;
                mu = self.project(adam_mu.step(&mu, &g_mu)?)?.detach();
                lv = adam_lv.step(&lv, &g_lv)?.detach();
            } else {
                let (rec, prior, _) =
                    self.objective(x, mu_var.as_tensor(), mu_var.as_tensor(), None, pass, false)?;
                let total = ((rec + prior)?.sum_all()? / n_pixels)?;
                let grads = total.backward()?;
                let g_mu = grad_or_zeros(&grads, &mu_var, &mu)?;
                mu = self.project(adam_mu.step(&mu, &g_mu)?)?.detach();
            }
        }
        Ok((mu, lv))
    }

    /// Stage 2 on the fast CPU engine ([`crate::fast`]): the same objective, noise, Adam
    /// (`SliceAdam`, the tensor Adam's arithmetic) and projection as
    /// [`Self::optimise_autodiff`], on plain buffers, with the gradient with respect to the
    /// latents from the hand-written backward.
    fn optimise_fast(
        &self,
        fast: &FastModel,
        x: &Tensor,
        start: &LatentStart,
        pass: Pass,
        rngs: &mut [ChaCha8Rng],
    ) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        let variational = pass.mode == LatentInference::Variational;
        let (b, p) = x.dims2()?;
        let (k, d) = (self.model.n_classes(), self.model.latent_dim());
        let device = x.device().clone();
        let scale = 1.0 / p as f32;
        let xv = x.flatten_all()?.host_vec1::<f32>()?;
        let mut mu = start.means.flatten_all()?.host_vec1::<f32>()?;
        let mut lv = start.log_variances.flatten_all()?.host_vec1::<f32>()?;
        let adam = self.latent_adam();
        let mut adam_mu = SliceAdam::new(adam, c.learning_rate, mu.len());
        let mut adam_lv = SliceAdam::new(adam, c.learning_rate, lv.len());
        // The Gaussian KL of eq. (2) where the model has no discriminator (see `objective`).
        let kl = pass.use_prior && !fast.has_discriminators();
        let beta = c.kl_beta as f32;
        let mut z = vec![0f32; mu.len()];
        let mut sigma = vec![0f32; mu.len()];
        let mut g_mu = vec![0f32; mu.len()];
        let mut g_lv = vec![0f32; lv.len()];
        // Activation and gradient buffers of the ten decoders, allocated by the first step.
        let mut workspaces = fast.workspaces();
        for _ in 0..c.n_adam_steps {
            let eps = if variational {
                let eps = Self::noise_values(rngs, k, d);
                for i in 0..mu.len() {
                    sigma[i] = (lv[i] * 0.5).exp();
                    z[i] = mu[i] + sigma[i] * eps[i];
                }
                Some(eps)
            } else {
                z.copy_from_slice(&mu);
                None
            };
            let objectives = fast.objectives(&xv, &z, pass.use_prior, scale, &mut workspaces)?;
            for (class, o) in objectives.iter().enumerate() {
                for i in 0..b {
                    let at = (i * k + class) * d;
                    g_mu[at..at + d].copy_from_slice(&o.grad[i * d..(i + 1) * d]);
                }
            }
            if let Some(eps) = &eps {
                // z = mu + exp(lv / 2) eps: dz/dlv = eps exp(lv / 2) / 2.
                for i in 0..lv.len() {
                    g_lv[i] = g_mu[i] * (eps[i] * sigma[i] * 0.5);
                }
            }
            if kl {
                // beta/2 sum(mu^2 [+ exp(lv) - lv - 1]) / P.
                for i in 0..mu.len() {
                    g_mu[i] += beta * mu[i] * scale;
                    if variational {
                        g_lv[i] += 0.5 * beta * (lv[i].exp() - 1.0) * scale;
                    }
                }
            }
            adam_mu.step(&mut mu, &g_mu)?;
            if let Some(r) = c.latent_radius {
                // As `project`: scale = min(1, r / ||mu||).
                for row in mu.chunks_mut(d) {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let s = (norm.recip() * r as f32).min(1.0);
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
            if variational {
                adam_lv.step(&mut lv, &g_lv)?;
            }
        }
        Ok((
            host::from_vec(mu, (b, k, d), &device)?,
            host::from_vec(lv, (b, k, d), &device)?,
        ))
    }

    /// [`AbsInference::infer`] on a batch of `blocks` equal blocks whose row `i` of every block
    /// draws the same noise (stream `i mod (batch / blocks)`): common random numbers for the
    /// probes of a gradient estimator.
    pub fn infer_common_noise(
        &self,
        xs: &Tensor,
        seed: u64,
        blocks: usize,
    ) -> Result<InferenceOutput> {
        let b = xs.dims().first().copied().unwrap_or(0);
        if blocks == 0 || b % blocks != 0 {
            return Err(InferenceError::InvalidArgument {
                argument: "blocks",
                expected: format!("a divisor of the batch size {b}"),
                found: blocks.to_string(),
            });
        }
        self.run_streams(xs, self.default_pass(), seed, (b / blocks).max(1))
    }

    /// [`AbsInference::infer`] with image `i`'s noise from its own generator seeded with
    /// `keys[i]` (`keys.len()` must be the batch size): what
    /// [`AbsClassifier`](crate::AbsClassifier) uses, with keys derived from each image's
    /// content, so that an image's result depends on neither its batch nor its position.
    pub fn infer_keyed(&self, xs: &Tensor, keys: &[u64]) -> Result<InferenceOutput> {
        let b = xs.dims().first().copied().unwrap_or(0);
        if keys.len() != b {
            return Err(InferenceError::InvalidArgument {
                argument: "keys",
                expected: format!("one key per image of the batch ({b})"),
                found: format!("{} keys", keys.len()),
            });
        }
        let rngs = keys.iter().map(|&k| ChaCha8Rng::seed_from_u64(k)).collect();
        self.run_rngs(xs, self.default_pass(), rngs)
    }

    pub(crate) fn run(&self, xs: &Tensor, pass: Pass, seed: u64) -> Result<InferenceOutput> {
        let b = xs.dims().first().copied().unwrap_or(0);
        self.run_streams(xs, pass, seed, b.max(1))
    }

    /// Inference with image `i`'s noise from stream `i mod period`.
    fn run_streams(
        &self,
        xs: &Tensor,
        pass: Pass,
        seed: u64,
        period: usize,
    ) -> Result<InferenceOutput> {
        let b = xs.dims().first().copied().unwrap_or(0);
        let rngs = (0..b)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream((i % period) as u64);
                rng
            })
            .collect();
        self.run_rngs(xs, pass, rngs)
    }

    /// Inference with image `i`'s noise from `rngs[i]`.
    fn run_rngs(
        &self,
        xs: &Tensor,
        pass: Pass,
        mut rngs: Vec<ChaCha8Rng>,
    ) -> Result<InferenceOutput> {
        // Nothing in inference is differentiated with respect to the input (eq. (8) is built
        // afterwards by `AbsClassifier`); detaching also drops any graph the caller's tensor has.
        let xs = &xs.detach();
        let x = self.flatten_input(xs)?;
        let (b, p) = x.dims2()?;
        let k = self.model.n_classes();
        let d = self.model.latent_dim();
        let device = x.device().clone();
        let n_pixels = p as f64;

        let t0 = Instant::now();
        let start = self.start(&x, xs, pass.use_prior)?;
        let t1 = Instant::now();

        let variational = pass.mode == LatentInference::Variational;
        let (mu, lv) = match self.fast_engine() {
            Some(fast) => self.optimise_fast(fast, &x, &start, pass, &mut rngs)?,
            None => self.optimise_autodiff(&x, &start, pass, &mut rngs)?,
        };
        let t2 = Instant::now();

        let (z, log_var) = match (variational, pass.final_evaluation) {
            (true, FinalEvaluation::Sample) => {
                let eps = Self::noise(&mut rngs, k, d, &device)?;
                (((&lv * 0.5)?.exp()?.mul(&eps)? + &mu)?, Some(&lv))
            }
            (true, FinalEvaluation::Mean) => (mu.clone(), Some(&lv)),
            (false, _) => (mu.clone(), None),
        };
        let (rec_err, prior, recs) = self.objective(&x, &z, &mu, log_var, pass, true)?;
        let (rec_err, prior) = (rec_err.detach(), prior.detach());
        let losses = ((&rec_err + &prior)? / n_pixels)?;
        let logits = (&losses * -self.config.logit_scale)?;
        let (ch, h, w) = self.model.image_shape();
        let reconstructions = Tensor::stack(&recs, 1)?.reshape((b, k, ch, h, w))?.detach();
        let t3 = Instant::now();
        Ok(InferenceOutput {
            losses,
            logits,
            reconstruction_errors: rec_err,
            prior_terms: prior,
            means: mu,
            log_variances: if variational { Some(lv) } else { None },
            latents: z,
            reconstructions,
            initial_losses: (start.losses / n_pixels)?,
            timings: StageTimings {
                start: t1 - t0,
                optimisation: t2 - t1,
                final_evaluation: t3 - t2,
            },
        })
    }
}
