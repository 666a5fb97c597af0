//! The CNN baseline of Section 4.3: the E-ABS encoder followed by a linear classification layer,
//! trained with cross-entropy; also the architecture of the adversarially trained CNNs.
//!
//! Our decision on "the encoder followed by a linear layer": the classifier reads the encoder's
//! deterministic output, the mean head (`features -> latent -> K`); the variance head is not
//! built, since a CNN has no use for it (no unused parameters in the checkpoint).

use candle_core::{Device, Result, Tensor};
use eabs_core::{Bounds, Classifier, Differentiable};

use crate::config::{ModelConfig, ModelKind};
use crate::layers::{DropoutRng, Linear};
use crate::modules::Encoder;
use crate::params::{derive_seed, ParamStore, Stream};

/// CNN classifier: `encoder.*` (conv body + mean head) and `classifier.*`.
///
/// Implements `eabs_core::Classifier` (evaluation-mode logits) and `Differentiable` (autodiff).
/// Give attacks [`Cnn::frozen`]: with detached weights the backward pass computes the input
/// gradient only.
///
/// # Shapes
/// `(b, c, h, w) -> (b, K)` logits.
#[derive(Debug, Clone)]
pub struct Cnn {
    config: ModelConfig,
    store: ParamStore,
    rng: DropoutRng,
    /// Convolutional encoder (mean head only).
    pub encoder: Encoder,
    /// Linear classification layer, `latent -> K`.
    pub classifier: Linear,
}

impl Cnn {
    /// A freshly initialised CNN; `config.kind` must be `Cnn` or `AdvCnn`.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> crate::Result<Self> {
        config.validate()?;
        if !matches!(config.kind, ModelKind::Cnn | ModelKind::AdvCnn(_)) {
            return Err(crate::Error::InvalidConfig(format!(
                "Cnn::new called with model kind {}",
                config.kind.name()
            )));
        }
        let a = &config.arch;
        let mut store = ParamStore::new(seed, device);
        let rng = DropoutRng::new(derive_seed(seed, Stream::Step, u64::MAX, 0));
        let encoder = Encoder::new(a, &mut store, "encoder", false, &rng)?;
        let classifier = Linear::new(&mut store, "classifier", a.latent_dim, a.n_classes)?;
        Ok(Self {
            config: config.clone(),
            store,
            rng,
            encoder,
            classifier,
        })
    }

    /// Logits; `train` turns on dropout and batch-statistics BatchNorm.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.classifier
            .forward(&self.encoder.forward_mean(xs, train)?)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Parameters and buffers.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The dropout mask source (reseeded per batch by the trainer).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.rng
    }

    /// A copy whose layers hold detached tensors (sharing storage): gradients then reach only
    /// the input, which is what attacks need.
    pub fn frozen(&self) -> Self {
        Self {
            encoder: self.encoder.frozen(),
            classifier: self.classifier.frozen(),
            ..self.clone()
        }
    }

    /// Relabels the model kind (a trained CNN becomes the starting point of an adversarially
    /// trained one; the tensors are identical).
    pub fn set_kind(&mut self, kind: ModelKind) -> crate::Result<()> {
        if !matches!(kind, ModelKind::Cnn | ModelKind::AdvCnn(_)) {
            return Err(crate::Error::InvalidConfig(format!(
                "a CNN cannot become a {}",
                kind.name()
            )));
        }
        self.config.kind = kind;
        Ok(())
    }
}

impl Classifier for Cnn {
    fn bounds(&self) -> Bounds {
        Bounds::UNIT
    }
    fn n_classes(&self) -> usize {
        self.config.arch.n_classes
    }
    fn device(&self) -> &Device {
        self.store.device()
    }
    /// Evaluation-mode logits (running BatchNorm statistics, no dropout).
    fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward(xs, false)
    }
}

impl Differentiable for Cnn {}
