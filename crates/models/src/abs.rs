//! ABS-family models: ABS (Schott et al.), the ablations A-ABS / D-ABS, and E-ABS (AD-ABS),
//! from one configuration with the two flags of [`Variant`] (Section 4.4, Table 5).
//!
//! | variant | encoders | decoders | discriminators | prior term | discriminative loss |
//! |---|---|---|---|---|---|
//! | ABS   | K (`encoders.k`) | K | 0 | KL (ELBO, eq. 1) | no |
//! | A-ABS | K | K | K (`discriminators.k`) | `-log D_k(z)` (eq. 3) | no |
//! | D-ABS | 1 (`encoder`) | K | 0 | KL | eq. (4) |
//! | E-ABS | 1 | K | 1 (`discriminator`) | `-log D(z)` | eq. (4), i.e. eq. (5) |
//!
//! Class-specific models (no D) are trained on their own class only: in a batch, the samples of
//! class `k` go through encoder `k` and decoder `k`. Classes with fewer than two samples in a batch
//! are skipped for that batch (BatchNorm needs two values per channel); at batch 512 this never
//! happens on the paper's datasets. A-ABS discriminators see latents of *all* images of the batch
//! encoded by their class's encoder (in- and out-of-distribution, Section 4.4), so encoder `k`
//! runs on the whole batch (its BatchNorm statistics are those of the whole batch: our decision,
//! it keeps one forward pass per encoder).

use candle_core::{DType, Device, Result, Tensor};
use eabs_core::host::{self, HostRead};
use rand_chacha::ChaCha8Rng;

use crate::config::{ModelConfig, ModelKind, Variant};
use crate::layers::DropoutRng;
use crate::loss::{
    abs_objective, costs_per_class, kl_to_standard_normal, reconstruction_cost, reparameterise,
    LossParts,
};
use crate::modules::{Decoder, Discriminator, Encoder};
use crate::params::{derive_seed, randn, ParamStore, Stream};

/// An ABS-family model: encoders, K class decoders, optional latent discriminators.
#[derive(Debug, Clone)]
pub struct AbsModel {
    config: ModelConfig,
    variant: Variant,
    store: ParamStore,
    rng: DropoutRng,
    encoders: Vec<Encoder>,
    decoders: Vec<Decoder>,
    discriminators: Vec<Discriminator>,
}

/// Latents that one discriminator must tell apart from prior samples.
#[derive(Debug, Clone)]
pub struct EncodedLatents {
    /// Index into [`AbsModel::discriminators`].
    pub discriminator: usize,
    /// Detached latents, `(n, latent)`.
    pub latents: Tensor,
}

impl AbsModel {
    /// A freshly initialised model; `config.kind` must be `ModelKind::Abs(_)`.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> crate::Result<Self> {
        config.validate()?;
        let ModelKind::Abs(variant) = config.kind else {
            return Err(crate::Error::InvalidConfig(format!(
                "AbsModel::new called with model kind {}",
                config.kind.name()
            )));
        };
        let a = &config.arch;
        let k = a.n_classes;
        let mut store = ParamStore::new(seed, device);
        let rng = DropoutRng::new(derive_seed(seed, Stream::Step, u64::MAX, 0));
        let encoders = if variant.shared_encoder() {
            vec![Encoder::new(a, &mut store, "encoder", true, &rng)?]
        } else {
            (0..k)
                .map(|i| Encoder::new(a, &mut store, &format!("encoders.{i}"), true, &rng))
                .collect::<Result<_>>()?
        };
        let decoders = (0..k)
            .map(|i| Decoder::new(a, &mut store, &format!("decoders.{i}"), &rng))
            .collect::<Result<_>>()?;
        let discriminators = match variant.n_discriminators(k) {
            0 => Vec::new(),
            1 => vec![Discriminator::new(a, &mut store, "discriminator")?],
            n => (0..n)
                .map(|i| Discriminator::new(a, &mut store, &format!("discriminators.{i}")))
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            config: config.clone(),
            variant,
            store,
            rng,
            encoders,
            decoders,
            discriminators,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Which ablation variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Number of classes K.
    pub fn n_classes(&self) -> usize {
        self.decoders.len()
    }

    /// Parameters and buffers.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The dropout mask source (reseeded per batch by the trainer).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    /// The K class decoders `G_1..G_K`, uniformly for every variant.
    pub fn decoders(&self) -> &[Decoder] {
        &self.decoders
    }

    /// All encoders: one (shared, D variants) or K (class-specific).
    pub fn encoders(&self) -> &[Encoder] {
        &self.encoders
    }

    /// All discriminators: none (VAE variants), one (E-ABS) or K (A-ABS).
    pub fn discriminators(&self) -> &[Discriminator] {
        &self.discriminators
    }

    /// The encoder that proposes latents for class `k` (the shared one for D variants).
    ///
    /// # Panics
    /// If `k >= n_classes()`, like indexing [`AbsModel::decoders`].
    pub fn encoder_for(&self, k: usize) -> &Encoder {
        assert!(
            k < self.n_classes(),
            "class {k} out of range: the model has {} classes",
            self.n_classes()
        );
        if self.encoders.len() == 1 {
            &self.encoders[0]
        } else {
            &self.encoders[k]
        }
    }

    /// The discriminator that scores latents of class `k` (`None` for VAE variants).
    ///
    /// # Panics
    /// If `k >= n_classes()`, like indexing [`AbsModel::decoders`].
    pub fn discriminator_for(&self, k: usize) -> Option<&Discriminator> {
        assert!(
            k < self.n_classes(),
            "class {k} out of range: the model has {} classes",
            self.n_classes()
        );
        match self.discriminators.len() {
            0 => None,
            1 => self.discriminators.first(),
            _ => self.discriminators.get(k),
        }
    }

    /// A copy whose layers hold detached tensors (sharing storage), for inference.
    pub fn frozen(&self) -> Self {
        Self {
            encoders: self.encoders.iter().map(Encoder::frozen).collect(),
            decoders: self.decoders.iter().map(Decoder::frozen).collect(),
            discriminators: self
                .discriminators
                .iter()
                .map(Discriminator::frozen)
                .collect(),
            ..self.clone()
        }
    }

    fn prior_term(
        &self,
        disc: usize,
        mean: &Tensor,
        logvar: &Tensor,
        z: &Tensor,
    ) -> Result<Tensor> {
        if self.variant.adversarial {
            self.discriminators[disc].log_d(z)?.neg()
        } else {
            kl_to_standard_normal(mean, logvar)
        }
    }

    /// The encoder/decoder loss of one training batch (train mode), and the detached latents each
    /// discriminator must be trained on. `rng` supplies the reparameterisation noise.
    ///
    /// Shared encoder (D variants): eq. (5) with every decoder applied to every latent. Without
    /// D: the class-wise ELBO / AAE objective, summed over classes and divided by the batch size.
    pub fn training_loss(
        &self,
        xs: &Tensor,
        labels: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Result<(LossParts, Vec<EncodedLatents>)> {
        let cfg = &self.config;
        let b = xs.dim(0)?;
        let m = cfg.arch.latent_dim;
        let dev = xs.device();
        if self.variant.shared_encoder() {
            let (mean, logvar) = self.encoders[0].forward(xs, true)?;
            let eps = randn(rng, &[b, m], dev)?;
            let z = reparameterise(&mean, &logvar, &eps)?;
            let recons = self
                .decoders
                .iter()
                .map(|d| d.forward(&z, true))
                .collect::<Result<Vec<_>>>()?;
            let costs = costs_per_class(xs, &recons)?;
            let prior = self.prior_term(0, &mean, &logvar, &z)?;
            let parts = abs_objective(&costs, labels, &prior, cfg.beta, cfg.gamma)?;
            let lat = if self.variant.adversarial {
                vec![EncodedLatents {
                    discriminator: 0,
                    latents: z.detach(),
                }]
            } else {
                Vec::new()
            };
            return Ok((parts, lat));
        }
        let labels_v = labels.to_dtype(DType::U32)?.host_vec1::<u32>()?;
        let mut rec_sum = Tensor::zeros((), DType::F32, dev)?;
        let mut prior_sum = Tensor::zeros((), DType::F32, dev)?;
        let mut lat = Vec::new();
        for k in 0..self.n_classes() {
            let members: Vec<u32> = labels_v
                .iter()
                .enumerate()
                .filter(|(_, &y)| y as usize == k)
                .map(|(i, _)| i as u32)
                .collect();
            if self.variant.adversarial {
                // Encoder k sees the whole batch; its discriminator gets every latent.
                let (mean, logvar) = self.encoders[k].forward(xs, true)?;
                let eps = randn(rng, &[b, m], dev)?;
                let z_all = reparameterise(&mean, &logvar, &eps)?;
                lat.push(EncodedLatents {
                    discriminator: k,
                    latents: z_all.detach(),
                });
                if members.len() < 2 {
                    continue;
                }
                let idx = host::from_vec(members.clone(), members.len(), dev)?;
                let z = z_all.index_select(&idx, 0)?;
                let x_k = xs.index_select(&idx, 0)?;
                let rec = reconstruction_cost(&x_k, &self.decoders[k].forward(&z, true)?)?;
                let prior = self.discriminators[k].log_d(&z)?.neg()?;
                rec_sum = (rec_sum + rec.sum_all()?)?;
                prior_sum = (prior_sum + prior.sum_all()?)?;
            } else {
                if members.len() < 2 {
                    continue;
                }
                let idx = host::from_vec(members.clone(), members.len(), dev)?;
                let x_k = xs.index_select(&idx, 0)?;
                let (mean, logvar) = self.encoders[k].forward(&x_k, true)?;
                let eps = randn(rng, &[members.len(), m], dev)?;
                let z = reparameterise(&mean, &logvar, &eps)?;
                let rec = reconstruction_cost(&x_k, &self.decoders[k].forward(&z, true)?)?;
                let prior = self.prior_term(k, &mean, &logvar, &z)?;
                rec_sum = (rec_sum + rec.sum_all()?)?;
                prior_sum = (prior_sum + prior.sum_all()?)?;
            }
        }
        let rec = (rec_sum / b as f64)?;
        let prior = (prior_sum / b as f64)?;
        let total = (&rec + (&prior * cfg.beta)?)?;
        let zero = Tensor::zeros((), DType::F32, dev)?;
        Ok((
            LossParts {
                total,
                reconstruction: rec,
                prior,
                discriminative: zero,
            },
            lat,
        ))
    }

    /// Discriminator loss of Algorithm 1 summed over discriminators, each against the same prior
    /// samples `z~ ~ N(0, I)` (`n_prior` of them, drawn from `rng`). `None` for VAE variants.
    pub fn discriminator_loss(
        &self,
        latents: &[EncodedLatents],
        n_prior: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Tensor>> {
        if self.discriminators.is_empty() || latents.is_empty() {
            return Ok(None);
        }
        let dev = latents[0].latents.device();
        let prior = randn(rng, &[n_prior.max(1), self.config.arch.latent_dim], dev)?;
        let mut total: Option<Tensor> = None;
        for l in latents {
            let d = &self.discriminators[l.discriminator];
            let loss = crate::loss::discriminator_loss(
                &d.logit(&prior)?,
                &d.logit(&l.latents)?,
                self.config.beta,
            )?;
            total = Some(match total {
                None => loss,
                Some(t) => (t + loss)?,
            });
        }
        Ok(total)
    }

    /// Validation proxy (documented as such; full inference lives in `eabs-inference`):
    /// `c(x, G_k(mean_k(x)))` for every class, evaluation mode, `(b, K)`, where `mean_k` is the
    /// mean proposed by the encoder of class `k`. The proxy prediction is the argmin over k.
    pub fn proxy_costs(&self, xs: &Tensor) -> Result<Tensor> {
        let shared = if self.encoders.len() == 1 {
            Some(self.encoders[0].forward_mean(xs, false)?)
        } else {
            None
        };
        let mut recons = Vec::with_capacity(self.n_classes());
        for (k, d) in self.decoders.iter().enumerate() {
            let z = match &shared {
                Some(z) => z.clone(),
                None => self.encoders[k].forward_mean(xs, false)?,
            };
            recons.push(d.forward(&z, false)?);
        }
        costs_per_class(xs, &recons)
    }
}
