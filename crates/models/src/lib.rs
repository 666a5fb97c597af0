//! The models of Ju & Wagner, "E-ABS: Extending the Analysis-By-Synthesis Robust Classification
//! Model to More Complex Image Domains" (AISec 2020), in Candle, with their training.
//!
//! - Architectures of Table 9 for MNIST / Fashion-MNIST, SuperTraffic-10 and SVHN
//!   ([`ArchConfig`], [`DatasetKind`]): [`Encoder`], [`Decoder`], [`Discriminator`].
//! - Models: the CNN baseline ([`Cnn`], which implements `eabs_core::Classifier` and
//!   `Differentiable`), and the ABS family ([`AbsModel`]: ABS, A-ABS, D-ABS, E-ABS from the two
//!   flags of [`Variant`], Section 4.4).
//! - Objectives as functions of plain tensors ([`loss`]): eq. (5) ([`loss::eabs_loss`]), the
//!   ELBO's KL term, the discriminator loss of Algorithm 1 with a stable log-sigmoid.
//! - Training ([`Trainer`], [`TrainConfig`] with the `paper` / `quick` / `smoke` presets):
//!   Adam with saved state ([`Adam`]), interleaved encoder/decoder and discriminator updates,
//!   Gaussian-noise augmentation, best-by-validation checkpoints, metrics as JSON lines, and
//!   bit-exact resume.
//! - Checkpoints ([`checkpoint`]): safetensors with stable names and the configuration as JSON
//!   metadata; strict loading with errors naming file, tensor, expected and found.
//! - Adversarially trained CNNs (Adv-L_inf, Adv-L_2; Madry et al.): [`Model::adversarial_from_cnn`]
//!   then [`Trainer`] with [`TrainConfig::paper`]`(family, ModelKind::AdvCnn(norm))`, examples from
//!   `eabs-attacks`' PGD ([`train::AdvTrainConfig`]).
//!
//! # Our decisions
//! Choices the paper leaves open are marked "our decision" where they are made: dropout 0.2,
//! LeakyReLU slope 0.2 (encoder and discriminator), BatchNorm momentum 0.1 / eps 1e-5 and no conv
//! bias before BatchNorm, PyTorch-default initialisation from a seeded ChaCha stream, log-variance
//! parameterisation of `Q(Z|x)`, no activation between the decoder's linear layer and its first
//! transposed conv, the CNN's classifier on the encoder mean, Table 9's missing last SVHN decoder
//! row (`3, 1, 1, 0`), noisy inputs clipped to `[0, 1]`, A-ABS encoders run on the whole batch,
//! the same learning-rate schedule for the discriminators, Madry et al.'s PGD recipe (40 steps)
//! for adversarial training, and a validation *proxy* for ABS-family models (see
//! [`train::evaluate`]).
//!
//! ```
//! use candle_core::{Device, Tensor, DType};
//! use eabs_models::{AbsModel, DatasetKind, ModelConfig, ModelKind};
//! let cfg = ModelConfig::paper(DatasetKind::Mnist, ModelKind::E_ABS);
//! let model = AbsModel::new(&cfg, 0, &Device::Cpu).unwrap();
//! let z = Tensor::zeros((3, 10), DType::F32, &Device::Cpu).unwrap();
//! let x = model.decoders()[7].forward(&z, false).unwrap();
//! assert_eq!(x.dims(), &[3, 1, 28, 28]);
//! ```
#![warn(missing_docs)]

pub mod abs;
pub mod checkpoint;
pub mod cnn;
pub mod config;
pub mod error;
pub mod layers;
pub mod loss;
pub mod model;
pub mod modules;
pub mod params;
pub mod train;

pub use abs::{AbsModel, EncodedLatents};
pub use checkpoint::Checkpoint;
pub use cnn::Cnn;
pub use config::{AdvNorm, ArchConfig, ConvSpec, DatasetKind, ModelConfig, ModelKind, Variant};
/// Training's optimiser; the one Adam of the workspace, in `eabs-core`.
pub use eabs_core::adam::Adam;
pub use error::{Error, Result};
pub use model::Model;
pub use modules::{Decoder, Discriminator, Encoder};
pub use train::{
    AdvTrainConfig, EpochMetrics, TensorData, TrainConfig, TrainState, TrainSummary, Trainer,
    TrainingData, Validator,
};
