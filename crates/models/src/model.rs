//! [`Model`]: any trained model of the paper behind one type, with checkpoint save / load.

use std::path::Path;

use candle_core::Device;

use crate::abs::AbsModel;
use crate::checkpoint::{model_metadata, save_tensors, store_tensors, Checkpoint};
use crate::cnn::Cnn;
use crate::config::{DatasetKind, ModelConfig, ModelKind};
use crate::error::{Error, Result};
use crate::layers::DropoutRng;
use crate::params::ParamStore;

/// A CNN (plain or adversarially trained) or an ABS-family model.
#[derive(Debug, Clone)]
pub enum Model {
    /// CNN or Adv-CNN.
    Cnn(Cnn),
    /// ABS, A-ABS, D-ABS or E-ABS.
    Abs(AbsModel),
}

impl Model {
    /// A freshly initialised model of `config.kind`, weights drawn from `seed`.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Ok(match config.kind {
            ModelKind::Cnn | ModelKind::AdvCnn(_) => Model::Cnn(Cnn::new(config, seed, device)?),
            ModelKind::Abs(_) => Model::Abs(AbsModel::new(config, seed, device)?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Cnn(m) => m.config(),
            Model::Abs(m) => m.config(),
        }
    }

    /// Parameters and buffers.
    pub fn store(&self) -> &ParamStore {
        match self {
            Model::Cnn(m) => m.store(),
            Model::Abs(m) => m.store(),
        }
    }

    /// The dropout mask source.
    pub fn dropout_rng(&self) -> &DropoutRng {
        match self {
            Model::Cnn(m) => m.dropout_rng(),
            Model::Abs(m) => m.dropout_rng(),
        }
    }

    /// Writes a model checkpoint (no optimiser state) atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(
            path,
            &store_tensors(self.store()),
            model_metadata(self.config()),
        )
    }

    /// Loads a checkpoint, rebuilding the architecture from its metadata.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_checked(path, device, |_| Ok(()))
    }

    /// Reads `path`, lets `check` vet the configuration its metadata describes, then builds
    /// that architecture and loads the tensors into it.
    fn load_checked(
        path: &Path,
        device: &Device,
        check: impl FnOnce(&ModelConfig) -> Result<()>,
    ) -> Result<Self> {
        let ckpt = Checkpoint::read(path, device)?;
        let config = ckpt.model_config()?;
        check(&config)?;
        let model = Model::new(&config, 0, device).map_err(|e| Error::BadMetadata {
            path: path.into(),
            key: crate::checkpoint::KEY_CONFIG.into(),
            message: e.to_string(),
        })?;
        ckpt.load_into(model.store())?;
        Ok(model)
    }

    /// Loads a checkpoint that must hold a `kind` model for `family` (any architecture the
    /// metadata describes); otherwise [`Error::WrongModel`] naming both. What `eval
    /// --checkpoint` uses, so that an E-ABS file is never evaluated (and labelled) as a CNN, nor
    /// an MNIST model on Fashion-MNIST.
    pub fn load_as(
        path: &Path,
        family: DatasetKind,
        kind: ModelKind,
        device: &Device,
    ) -> Result<Self> {
        Self::load_checked(path, device, |found| {
            check_identity(path, found, family, kind)
        })
    }

    /// Loads a checkpoint that must hold exactly the model `expected` describes; otherwise
    /// [`Error::WrongModel`] (another kind or dataset) or [`Error::ConfigMismatch`] (another
    /// architecture), or a tensor error if the metadata lies about the tensors.
    pub fn load_expecting(path: &Path, expected: &ModelConfig, device: &Device) -> Result<Self> {
        Self::load_checked(path, device, |found| {
            check_identity(path, found, expected.family, expected.kind)?;
            if found != expected {
                return Err(Error::ConfigMismatch {
                    path: path.into(),
                    expected: expected.to_json(),
                    found: found.to_json(),
                });
            }
            Ok(())
        })
    }

    /// The starting point of an adversarially trained CNN (Section 4.3: "we use the pre-trained
    /// CNN model and retrain"): loads a CNN checkpoint and relabels it `AdvCnn(norm)`.
    pub fn adversarial_from_cnn(
        path: &Path,
        norm: crate::config::AdvNorm,
        device: &Device,
    ) -> Result<Self> {
        match Model::load(path, device)? {
            Model::Cnn(mut cnn) if cnn.config().kind == ModelKind::Cnn => {
                cnn.set_kind(ModelKind::AdvCnn(norm))?;
                Ok(Model::Cnn(cnn))
            }
            other => Err(Error::InvalidConfig(format!(
                "{}: adversarial training starts from a CNN checkpoint, this one holds a {}",
                path.display(),
                other.config().kind.name()
            ))),
        }
    }

    /// The CNN inside, if any.
    pub fn as_cnn(&self) -> Option<&Cnn> {
        match self {
            Model::Cnn(m) => Some(m),
            Model::Abs(_) => None,
        }
    }

    /// The ABS-family model inside, if any.
    pub fn as_abs(&self) -> Option<&AbsModel> {
        match self {
            Model::Abs(m) => Some(m),
            Model::Cnn(_) => None,
        }
    }
}

/// [`Error::WrongModel`] unless `found` is a `kind` model for `family`.
fn check_identity(
    path: &Path,
    found: &ModelConfig,
    family: DatasetKind,
    kind: ModelKind,
) -> Result<()> {
    if found.kind != kind || found.family != family {
        return Err(Error::WrongModel {
            path: path.into(),
            expected_kind: kind.name().into(),
            expected_family: family.name().into(),
            found_kind: found.kind.name().into(),
            found_family: found.family.name().into(),
        });
    }
    Ok(())
}
